"""The sync agent: uploads the event log, installs signed downlinks; meets the terminal only through SQLite files.

Decisions come from sync_agent.core and common.sync_protocol; this module wires them to paho, SQLite and the clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from common import sync_protocol as p
from common.config import SyncSection
from common.events import format_time as log_time
from common.logs import log_event
from common.mqtt import CONNECTED, DISCONNECTED, MESSAGE, MqttLink, TlsFiles
from sync_agent import core
from sync_agent.store import SyncStore
from terminal.blacklist import Blacklist, BlacklistVersionError
from terminal.event_log import EventLog

log = logging.getLogger("sync.agent")

SEEN_RETENTION = timedelta(days=30)
SNAPSHOT_REQUEST_RETRY = 10.0  # seconds before asking again for a snapshot that has not come


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class TrustError(Exception):
    """The platform public key file cannot be used; the message names the setting and the fix."""


def load_platform_key(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise TrustError(
            f"cannot read the platform public key {path} ({exc.strerror}); fix [sync].platform_public_key"
        ) from None
    except ValueError:
        raise TrustError(
            f"{path} is not a PEM public key; put the platform's Ed25519 public key "
            "(onecard platform init writes it) at [sync].platform_public_key"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"{path} is not an Ed25519 key; the platform signs with Ed25519")
    return key


class SyncAgent:
    """One terminal's agent. `start()`, then `step()` in a loop (or `run(stop)`), then `close()`."""

    def __init__(
        self,
        terminal_id: str,
        enterprise_id: str,
        settings: SyncSection,
        event_log: EventLog,
        blacklist: Blacklist,
        store: SyncStore,
        platform_key: Ed25519PublicKey,
        *,
        wall_clock=utc_now,
        monotonic=time.monotonic,
        events: queue.Queue | None = None,
    ) -> None:
        self.tid, self.eid = terminal_id, enterprise_id
        self.s = settings
        self.event_log, self.blacklist, self.store = event_log, blacklist, store
        self.key = platform_key
        self.wall, self.mono = wall_clock, monotonic
        acked_seq, acked_hash = store.acked()
        self.uploader = core.Uploader(
            acked_seq,
            batch_size=settings.batch_size,
            max_inflight=settings.max_inflight_batches,
            max_events_per_s=settings.max_events_per_s,
            ack_timeout=settings.ack_timeout_seconds,
            linger=settings.upload_linger_seconds,
        )
        self.acked_hash = acked_hash
        self.link = MqttLink(
            terminal_id,
            settings.addresses[0][0],
            settings.addresses[0][1],
            TlsFiles(settings.ca_file, settings.cert_file, settings.key_file),
            alternates=settings.addresses[1:],
            subscriptions=[
                p.terminal_topic(terminal_id, p.DOWN_ACK),
                p.terminal_topic(terminal_id, p.DOWN_MSG),
                p.enterprise_topic(enterprise_id),
            ],
            will=(
                p.terminal_topic(terminal_id, p.UP_STATUS),
                p.encode_status(terminal_id, "offline", None, "connection lost"),
            ),
            keepalive=settings.keepalive_seconds,
            protocol=settings.mqtt_version,
            max_inflight=max(20, settings.max_inflight_batches * 2),
            events=events,
        )
        self.online = False
        self._next_heartbeat = 0.0
        self._snapshot_asked_at: float | None = None
        self._next_prune = 0.0
        self.rejected: list[tuple[str, str]] = []  # (reason, text) of refused downlinks, newest last
        self.applied_versions: list[int] = []

    @classmethod
    def from_config(cls, config, **kwargs) -> SyncAgent:
        """Open the terminal's files and the trust file named in firmware.toml."""
        s = config.sync
        t = config.terminal
        for path in (t.database, t.blacklist, s.database):
            path.parent.mkdir(parents=True, exist_ok=True)
        key = load_platform_key(s.platform_public_key)
        return cls(
            t.id,
            t.enterprise_id.hex(),
            s,
            EventLog.open(t.database, t.id),
            Blacklist.open(t.blacklist),
            SyncStore.open(s.database, t.id),
            key,
            **kwargs,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.link.start()

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self, graceful: bool = True) -> None:
        if graceful:
            self.link.stop(
                final=(
                    p.terminal_topic(self.tid, p.UP_STATUS),
                    p.encode_status(self.tid, "offline", self.wall(), "agent stopped"),
                )
            )
        else:
            self.link.kill()
        for thing in (self.event_log, self.blacklist, self.store):
            thing.close()

    # -- the loop --------------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> None:
        """Handle what arrived (waiting up to `timeout`), then upload and heartbeat as due."""
        self.link.poll()
        busy = self.online and self.uploader.ready(self.mono(), self.event_log.last_seq())
        wait = timeout if timeout is not None else (0.002 if busy else 0.1)
        try:
            item = self.link.events.get(timeout=wait)
        except queue.Empty:
            item = None
        while item is not None:
            self._handle(item)
            try:
                item = self.link.events.get_nowait()
            except queue.Empty:
                item = None
        if self.online:
            now = self.mono()
            self._upload(now)
            if now >= self._next_heartbeat:
                self._heartbeat(now)
        if self.mono() >= self._next_prune:
            self._next_prune = self.mono() + 3600
            self.store.prune_seen(p.format_time(self.wall() - SEEN_RETENTION))

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == CONNECTED:
            self.online = True
            now = self.mono()
            self.uploader.on_connected(now)
            log_event(
                log,
                "sync.connected",
                terminal=self.tid,
                protocol=item[1],
                resume_after_seq=self.uploader.acked_seq,
                text=f"connected to the broker; uploading from seq {self.uploader.acked_seq + 1}",
            )
            self.link.publish(
                p.terminal_topic(self.tid, p.UP_STATUS),
                p.encode_status(self.tid, "online", self.wall()),
                qos=1,
                retain=True,
            )
            self._request("sync")
            self._next_heartbeat = now  # first heartbeat right away: the platform sees the backlog
        elif kind == DISCONNECTED:
            if self.online:
                log_event(
                    log,
                    "sync.disconnected",
                    logging.WARNING,
                    terminal=self.tid,
                    reason=item[1],
                    backlog=self.uploader.backlog(self.event_log.last_seq()),
                    text="lost the broker; the terminal keeps deciding and logging, upload resumes on reconnect",
                )
            self.online = False
        elif kind == MESSAGE:
            self._on_message(item[1], item[2])

    # -- uplink ----------------------------------------------------------------------------

    def _request(self, want: str) -> None:
        req = p.Request(self.tid, want, self.blacklist.version(), self.store.config_version(), self.blacklist.epoch())
        self.link.publish(p.terminal_topic(self.tid, p.UP_REQUEST), p.encode_request(req), qos=1)
        if want == "blacklist.snapshot":
            self._snapshot_asked_at = self.mono()

    def _upload(self, now: float) -> None:
        head = self.event_log.last_seq()
        for first, last in self.uploader.plan(now, head):
            events = self.event_log.events(after_seq=first - 1, limit=last - first + 1)
            if not events or events[0].seq != first:
                log_event(
                    log,
                    "sync.outbox_hole",
                    logging.ERROR,
                    terminal=self.tid,
                    seq=first,
                    text=f"record seq {first} is missing from the event log; run `onecard log verify`",
                )
                self.uploader.inflight.pop()
                self.uploader.next_seq = first
                return
            if events[-1].seq != last:
                self.uploader.shrink_last(events[-1].seq)
            wire = [
                p.WireEvent(
                    e.seq, log_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
                )
                for e in events
            ]
            payload = p.encode_events(self.tid, wire)
            if self.s.compress_uploads:
                payload = p.compress_upload(payload)
            self.link.publish(p.terminal_topic(self.tid, p.UP_EVENTS), payload, qos=1)

    def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + self.s.heartbeat_seconds
        head = self.event_log.last_seq()
        newest = self.event_log.events(after_seq=head - 1, limit=1) if head else []
        hb = p.Heartbeat(
            self.tid,
            p.format_time(self.wall()),
            head,
            self.uploader.acked_seq,
            self.uploader.backlog(head),
            self.blacklist.version(),
            self.store.config_version(),
            log_time(newest[0].time) if newest else None,
            self.blacklist.epoch(),
            self.blacklist.digest(),
        )
        self.link.publish(p.terminal_topic(self.tid, p.UP_HEARTBEAT), p.encode_heartbeat(hb), qos=0)

    # -- downlink --------------------------------------------------------------------------

    def _reject(self, reason: str, text: str, **fields) -> None:
        self.rejected.append((reason, text))
        del self.rejected[:-100]
        log_event(log, "sync.message_rejected", logging.WARNING, terminal=self.tid, reason=reason, text=text, **fields)

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            env = p.open_envelope(payload, self.key)
        except p.SignatureError as exc:
            return self._reject("bad_signature", f"{exc}; not applied", topic=topic)
        except p.ProtocolError as exc:
            return self._reject("malformed", f"{exc}; not applied", topic=topic)
        wrong = core.target_decision(env.target, self.tid, self.eid)
        if wrong:
            return self._reject(wrong.reason, f"{env.type} {env.id}: {wrong.text}; not applied", topic=topic)
        if env.type == "ack":
            return self._on_ack(env)
        if self.store.seen(env.id):
            return self._reject("replay", f"{env.type} {env.id} was already received; replay not applied")
        received = p.format_time(self.wall())
        issued = p.format_time(env.issued_at)
        if env.type in ("blacklist.snapshot", "blacklist.delta"):
            self._on_blacklist(env, issued, received)
        elif env.type == "config":
            d = core.config_decision(env.body, self.store.config_version(), self.eid)
            if d.action != core.APPLY:
                return self._reject(d.reason, f"config {env.id}: {d.text}; not stored")
            self.store.store_config(
                env.body["version"], env.body["enterprise_id"], env.body["document"], env.id, issued, received
            )
            log_event(
                log,
                "sync.config_stored",
                terminal=self.tid,
                version=env.body["version"],
                text=f"configuration version {env.body['version']} stored in the inbox for the terminal",
            )
        elif env.type == "card_action":
            if self.store.store_card_action(env.body, env.id, issued, received):
                log_event(
                    log,
                    "sync.card_action_stored",
                    terminal=self.tid,
                    action_id=env.body["action_id"],
                    asn=env.body["asn"],
                    action=env.body["action"],
                    text="pending card action stored in the inbox; it runs at the card's next tap",
                )
            else:
                self._reject("duplicate_action", f"card action {env.body['action_id']} is already in the inbox")
        elif env.type == "meal_usage":
            cards = self.store.store_meal_usage(env.body, env.id, issued, received)
            log_event(
                log,
                "sync.meal_usage_stored",
                terminal=self.tid,
                day=env.body["day"],
                cards=cards,
                text="canteen usage confirmed by the platform stored for the tills' meal limits",
            )
        elif env.type == "subsidy_allowances":
            if env.body["enterprise_id"] != self.eid:
                return self._reject(
                    "wrong_enterprise", f"subsidy_allowances {env.id} is for another enterprise; not stored"
                )
            newer = self.store.store_subsidy_allowances(env.body, env.id, issued, received)
            log_event(
                log,
                "sync.subsidy_allowances_stored" if newer else "sync.subsidy_allowances_older",
                logging.INFO if newer else logging.DEBUG,
                terminal=self.tid,
                allowances=len(env.body["allowances"]),
                text="subsidy allowances stored for collection at the next tap"
                if newer
                else "subsidy allowance list older than the one held; ignored",
            )
        elif env.type == "passage":
            if env.body["enterprise_id"] != self.eid:
                return self._reject("wrong_enterprise", f"passage {env.id} is for another enterprise; not stored")
            newer = self.store.store_passage(env.body, env.id, issued, received)
            log_event(
                log,
                "sync.passage_stored" if newer else "sync.passage_older",
                logging.INFO if newer else logging.DEBUG,
                terminal=self.tid,
                asn=env.body["asn"],
                area=env.body["area"],
                direction=env.body["direction"],
                text="passage stored for anti-passback" if newer else "passage older than the one held; ignored",
            )
        elif env.type == "card_action.cancel":
            before = self.store.cancel_card_action(env.body, env.id, issued, received)
            log_event(
                log,
                "sync.card_action_cancelled",
                terminal=self.tid,
                action_id=env.body["action_id"],
                asn=env.body["asn"],
                was=before,
                text="card action cancelled by the platform; the terminal will not run it",
            )
        elif env.type == "time":
            last = self.store.last_time_message()
            if last is not None and issued <= last:
                # Two platform workers may answer out of order; an older time says nothing new, and a
                # replayed one must not move the drift estimate. Not an attack by itself: debug only.
                log_event(
                    log,
                    "sync.time_stale",
                    logging.DEBUG,
                    terminal=self.tid,
                    issued_at=issued,
                    text=f"time message issued at {issued} is not newer than {last}; ignored",
                )
                return
            self.store.mark_seen(env.id, env.type, issued, received)
            platform = p.parse_time(env.body["platform_time"], "time").timestamp()
            drift = core.clock_drift_seconds(platform, self.wall().timestamp())
            if abs(drift) > self.s.clock_tolerance_seconds:
                log_event(
                    log,
                    "sync.clock_drift",
                    logging.WARNING,
                    terminal=self.tid,
                    drift_s=round(drift, 3),
                    tolerance_s=self.s.clock_tolerance_seconds,
                    text=f"terminal clock is {abs(drift):.1f} s {'ahead of' if drift > 0 else 'behind'} the "
                    "platform; fix the terminal's time source (NTP)",
                )

    def _on_ack(self, env: p.Envelope) -> None:
        seq, hash_ = env.body["acked_seq"], env.body["acked_hash"]
        if env.body.get("problem"):
            # Nothing is dropped from the upload queue: records past the ack are resent until acknowledged.
            log_event(
                log,
                "sync.upload_refused"
                if env.body["reason"] in ("pending_gap", "pending_bytes")
                else "sync.platform_problem",
                logging.ERROR if env.body["reason"] in ("chain_broken", "diverged") else logging.WARNING,
                terminal=self.tid,
                seq=seq,
                reason=env.body["reason"],
                text=f"the platform reports: {env.body['problem']}",
            )
        if seq <= self.uploader.acked_seq:
            return
        head = self.event_log.last_seq()
        if seq > head:
            return self._reject("ack_ahead", f"ack for seq {seq} but the log ends at seq {head}; ignored")
        mine = self.event_log.events(after_seq=seq - 1, limit=1)
        if not mine or mine[0].hash != hash_:
            return self._reject(
                "ack_diverged",
                f"the platform acknowledged seq {seq} with hash {hash_[:16]}…, which "
                "is not this log's record; the chain diverged, keep the file",
            )
        self.uploader.on_ack(self.mono(), seq)
        self.store.set_acked(seq, hash_, p.format_time(self.wall()))
        self.acked_hash = hash_
        self._maybe_compact(seq)

    def _maybe_compact(self, acked: int) -> None:
        anchor_seq = self.event_log.anchor()[0]
        # Compact in steps of at least 1,000 records: each compaction is one write transaction on the
        # terminal's log, so doing it per ack would contend with taps for nothing.
        target = acked - self.s.compact_keep
        if target - anchor_seq >= 1000:
            deleted = self.event_log.compact(target)
            log_event(
                log,
                "sync.compacted",
                terminal=self.tid,
                up_to_seq=target,
                deleted=deleted,
                text=f"removed {deleted} acknowledged records up to seq {target}; the chain anchor keeps "
                "`log verify` working",
            )

    def _on_blacklist(self, env: p.Envelope, issued: str, received: str) -> None:
        held = self.blacklist.version()
        d = core.blacklist_decision(env.type, env.body, held, self.eid, self.blacklist.epoch())
        if d.action == core.REJECT:
            return self._reject(d.reason, f"{env.type} {env.id}: {d.text}; not applied")
        if d.action == core.IGNORE:
            self.store.mark_seen(env.id, env.type, issued, received)
            self._snapshot_asked_at = None
            return
        if d.action == core.REQUEST_SNAPSHOT:
            log_event(
                log,
                "sync.blacklist_gap",
                logging.WARNING,
                terminal=self.tid,
                held=held,
                base=env.body["base_version"],
                version=env.body["version"],
                text=d.text,
            )
            asked = self._snapshot_asked_at
            if asked is None or self.mono() - asked >= SNAPSHOT_REQUEST_RETRY:
                self._request("blacklist.snapshot")
            return
        try:
            epoch = p.parse_epoch(env.body["epoch"], env.type)
            if env.type == "blacklist.snapshot":
                count = self.blacklist.apply_snapshot(env.body["version"], p.snapshot_entries(env.body), epoch)
                self._snapshot_asked_at = None
            else:
                added = [(bytes.fromhex(a["asn"]), a["reason"], a["listed_in_version"]) for a in env.body["added"]]
                removed = [bytes.fromhex(r) for r in env.body["removed"]]
                count = self.blacklist.apply_delta(env.body["base_version"], env.body["version"], added, removed, epoch)
        except BlacklistVersionError as exc:
            return self._reject("version", f"{env.type} {env.id}: {exc}")
        except (ValueError, p.ProtocolError) as exc:
            return self._reject("malformed", f"{env.type} {env.id}: {exc}; not applied")
        self.store.mark_seen(env.id, env.type, issued, received)
        self.applied_versions.append(env.body["version"])
        del self.applied_versions[:-100]
        log_event(
            log,
            "sync.blacklist_applied",
            logging.WARNING if d.reason == "rebase" else logging.INFO,
            terminal=self.tid,
            kind=env.type,
            version=env.body["version"],
            epoch=epoch.generation,
            decision=d.reason,
            entries=count,
            text=f"blacklist now at version {env.body['version']} of platform epoch {epoch.generation} with "
            f"{count} cards" + (f" ({d.text})" if d.reason == "rebase" else ""),
        )
