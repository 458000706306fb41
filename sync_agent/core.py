"""The agent's decisions as plain objects: upload batching/ack/resend, throttling, what to do with a downlink.

No I/O and no clock: every method takes `now` (seconds, monotonic) or the values it decides on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from common.sync_protocol import Epoch


@dataclass(frozen=True)
class Batch:
    first_seq: int
    last_seq: int
    sent_at: float


class Uploader:
    """At-least-once, in-order upload of seqs acked_seq+1..head in batches, with a window and a rate limit.

    The platform acks the highest contiguous seq it holds; anything past it is re-sent when the
    connection comes back or when no ack made progress for `ack_timeout` seconds, so a batch lost
    by the broker (restart, QoS 1 in flight) or dropped by the platform is never lost for good.
    """

    def __init__(
        self,
        acked_seq: int,
        *,
        batch_size: int = 500,
        max_inflight: int = 4,
        max_events_per_s: float = 10_000.0,
        ack_timeout: float = 10.0,
        linger: float = 0.0,
    ) -> None:
        if batch_size < 1 or max_inflight < 1 or max_events_per_s <= 0 or ack_timeout <= 0:
            raise ValueError("batch_size, max_inflight, max_events_per_s and ack_timeout must be positive")
        if linger < 0:
            raise ValueError("linger must be 0 or more seconds")
        self.acked_seq = acked_seq
        # A batch that is not full waits for more records (fewer, fuller messages for the broker and the platform,
        # whose cost is per message more than per record), but no new record waits more than `linger` seconds
        # after the uploader first held it back; what was sent before and is sent again (a new session, an ack
        # timeout) never waits.
        self.linger = float(linger)
        self._held_since: float | None = None  # when a short batch was first held back
        self._sent_up_to = acked_seq  # the highest seq ever planned
        self.next_seq = acked_seq + 1
        self.batch_size = batch_size
        self.max_inflight = max_inflight
        self.rate = float(max_events_per_s)
        self.ack_timeout = ack_timeout
        self.inflight: deque[Batch] = deque()
        # Burst of one second's worth (at least a full batch, or a slow rate would never send one).
        self._bucket_cap = max(self.rate, float(batch_size))
        self._tokens = self._bucket_cap
        self._refilled_at: float | None = None
        self._progress_at: float | None = None
        self.resends = 0

    def backlog(self, head_seq: int) -> int:
        return max(0, head_seq - self.acked_seq)

    def on_connected(self, now: float) -> None:
        """A new session: whatever was in flight may be gone with the old one, so resend from the ack."""
        self.next_seq = self.acked_seq + 1
        self.inflight.clear()
        self._progress_at = now

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            self._tokens = min(self._bucket_cap, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now

    def plan(self, now: float, head_seq: int) -> list[tuple[int, int]]:
        """(first_seq, last_seq) ranges to publish now, in order; they are recorded as in flight."""
        self._refill(now)
        if self.inflight and self._progress_at is not None and now - self._progress_at >= self.ack_timeout:
            self.resends += 1
            self.next_seq = self.acked_seq + 1
            self.inflight.clear()
        out = []
        while len(self.inflight) < self.max_inflight and self.next_seq <= head_seq:
            n = min(self.batch_size, head_seq - self.next_seq + 1)
            if self._lingering(now, n):
                break
            if self._tokens < n:
                # Send a short batch now rather than wait for a full one's worth of tokens.
                n = int(self._tokens)
                if n < 1:
                    break
            first, last = self.next_seq, self.next_seq + n - 1
            self._tokens -= n
            if not self.inflight:
                self._progress_at = now  # the ack clock starts when something is outstanding
            self.inflight.append(Batch(first, last, now))
            out.append((first, last))
            self.next_seq = last + 1
            self._sent_up_to = max(self._sent_up_to, last)
        if self.next_seq > head_seq:
            self._held_since = None  # nothing left unsent; the next short batch starts a new clock
        return out

    def _lingering(self, now: float, n: int) -> bool:
        """True while a short batch of new records waits for more (see `linger`); starts its clock. With no linger
        the clock starts and has already run out."""
        if n >= self.batch_size or self.next_seq <= self._sent_up_to:
            return False
        if self._held_since is None:
            self._held_since = now
        return now - self._held_since < self.linger

    def ready(self, now: float, head_seq: int) -> bool:
        """Whether plan() would publish something now if the rate allowed (the agent polls fast only then)."""
        if len(self.inflight) >= self.max_inflight or self.next_seq > head_seq:
            return False
        n = min(self.batch_size, head_seq - self.next_seq + 1)
        if n >= self.batch_size or self.linger <= 0 or self.next_seq <= self._sent_up_to:
            return True
        return self._held_since is not None and now - self._held_since >= self.linger

    def shrink_last(self, last_seq: int) -> None:
        """The newest planned batch holds fewer records than planned (e.g. some were unreadable)."""
        b = self.inflight.pop()
        self.inflight.append(Batch(b.first_seq, last_seq, b.sent_at))
        self.next_seq = last_seq + 1

    def on_ack(self, now: float, acked_seq: int) -> bool:
        """Record the platform's highest contiguous seq; True when it moved forward."""
        if acked_seq <= self.acked_seq:
            return False
        self.acked_seq = acked_seq
        while self.inflight and self.inflight[0].last_seq <= acked_seq:
            self.inflight.popleft()
        if self.inflight and self.inflight[0].first_seq <= acked_seq:
            b = self.inflight.popleft()
            self.inflight.appendleft(Batch(acked_seq + 1, b.last_seq, b.sent_at))
        if self.next_seq <= acked_seq:
            self.next_seq = acked_seq + 1
        self._progress_at = now
        return True


# --------------------------------------------------------------------------------------------
# Downlink decisions
# --------------------------------------------------------------------------------------------

APPLY, IGNORE, REJECT, REQUEST_SNAPSHOT = "apply", "ignore", "reject", "request_snapshot"


@dataclass(frozen=True)
class Decision:
    action: str  # apply | ignore | reject | request_snapshot
    reason: str  # short code for the log: rollback, replay, gap, already_held, wrong_target, ...
    text: str  # the sentence for the log


def target_decision(target: str, terminal_id: str, enterprise_id: str) -> Decision | None:
    """A message for another terminal or enterprise is refused (a copy replayed onto our topic)."""
    if target in (f"t:{terminal_id}", f"e:{enterprise_id}"):
        return None
    return Decision(REJECT, "wrong_target", f"message addressed to {target}, not to this terminal or its enterprise")


def blacklist_decision(
    type_: str, body: dict[str, Any], held_version: int, enterprise_id: str, held_epoch: Epoch | None = None
) -> Decision:
    """Whether to apply a checked blacklist body to the list held (version and platform epoch).

    Within one epoch versions only move forward. A snapshot from a newer epoch (the platform was restored and
    re-based its lists) replaces the list whatever its version, and only then; an older epoch, or another
    platform instance's list of the same generation, is refused.
    """
    if body["enterprise_id"] != enterprise_id:
        return Decision(
            REJECT,
            "wrong_enterprise",
            f"blacklist of enterprise {body['enterprise_id']}, this terminal serves {enterprise_id}",
        )
    epoch = Epoch(body["epoch"]["generation"], body["epoch"]["instance"])
    if held_epoch is not None and epoch.generation < held_epoch.generation:
        return Decision(
            REJECT,
            "old_epoch",
            f"{type_} of platform epoch {epoch.generation} is older than the held "
            f"epoch {held_epoch.generation} (rollback)",
        )
    if held_epoch is not None and epoch.generation == held_epoch.generation and epoch.instance != held_epoch.instance:
        return Decision(
            REJECT,
            "epoch_conflict",
            f"{type_} of epoch {epoch.generation} comes from platform "
            f"instance {epoch.instance}, the list held from "
            f"{held_epoch.instance}",
        )
    newer_epoch = held_epoch is None or epoch.generation > held_epoch.generation
    if type_ == "blacklist.snapshot":
        v = body["version"]
        if newer_epoch and held_version > 0:
            return Decision(
                APPLY,
                "rebase",
                f"snapshot version {v} of platform epoch {epoch.generation} replaces "
                f"version {held_version} of epoch "
                f"{held_epoch.generation if held_epoch else 'none'}",
            )
        if v < held_version:
            return Decision(REJECT, "rollback", f"snapshot version {v} is older than the held version {held_version}")
        if v == held_version and not newer_epoch:
            return Decision(IGNORE, "already_held", f"snapshot version {v} is the version already held")
        return Decision(APPLY, "newer", f"snapshot version {v} replaces version {held_version}")
    base, v = body["base_version"], body["version"]
    if newer_epoch and not (held_epoch is None and held_version == 0 and base == 0):  # a first list may be a delta
        return Decision(
            REQUEST_SNAPSHOT,
            "new_epoch",
            f"delta {base}->{v} of platform epoch {epoch.generation} does "
            "not apply to a list of another epoch; asking for a snapshot",
        )
    if v <= held_version:
        return Decision(
            REJECT,
            "rollback",
            f"delta to version {v} does not move past the held version {held_version} (replay or rollback)",
        )
    if base != held_version:
        return Decision(
            REQUEST_SNAPSHOT,
            "gap",
            f"delta {base}->{v} does not start at the held version {held_version}; asking for a snapshot",
        )
    return Decision(APPLY, "next", f"delta {base}->{v} applies to the held version")


def config_decision(body: dict[str, Any], held_version: int, enterprise_id: str) -> Decision:
    if body["enterprise_id"] != enterprise_id:
        return Decision(REJECT, "wrong_enterprise", f"configuration of enterprise {body['enterprise_id']}")
    v = body["version"]
    if v <= held_version:
        return Decision(REJECT, "rollback", f"configuration version {v} is not newer than the held {held_version}")
    return Decision(APPLY, "newer", f"configuration version {v} replaces version {held_version}")


def clock_drift_seconds(platform_time: float, local_time: float) -> float:
    """Positive when the terminal clock is ahead of the platform (both in epoch seconds)."""
    return local_time - platform_time
