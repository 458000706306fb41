"""Uploads from terminals: verify each event chain across batches, store each record once, acknowledge.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import json
import logging

from central.db import MAX_PENDING_BYTES, MAX_PENDING_GAP, PURSE_SIGN, IngestResult, PlatformError
from central.sql import bytes_length, insert_rows
from common import money_records as mr
from common import sync_protocol as p
from common.events import event_hash
from common.logs import log_event
from common.money_records import CARD_ACTION_FAILED, check_action_failed_detail

log = logging.getLogger("platform")

# What MAX_PENDING_BYTES counts of a waiting record (plus 128 bytes for its seq and hashes).
_SIZED_COLUMNS = ("time", "kind", "coalesce(asn, '')", "reason_code", "message", "detail")
_WIRE_COLUMNS = "seq, time, kind, asn, reason_code, message, detail, prev_hash, hash"
DRAIN_CHUNK = 1000  # waiting records read at once when a gap is filled


def _size(e: p.WireEvent) -> int:
    return sum(
        len(x.encode()) for x in (e.time, e.kind, e.asn or "", e.reason_code, e.message, e.detail, e.prev_hash, e.hash)
    )


class Ingest:
    def ingest(self, terminal_id: str, events: list[p.WireEvent]) -> IngestResult:
        """Store a batch once, verifying the chain across batches; answer the highest contiguous seq.

        Records at or below the contiguous seq are duplicates (redelivery, resend) and change nothing, unless
        their hash differs from the stored one: a rewritten record, which raises a divergence alarm. Records
        past a gap wait in pending_events until the gap is filled, within MAX_PENDING_GAP seqs and
        MAX_PENDING_BYTES bytes per terminal; anything beyond is refused (reason in the ack) and resent later.
        """
        with self._txn():
            row = self.conn.execute(
                "SELECT contiguous_seq, head_hash, chain_problem, enterprise_id, kind, "
                "EXISTS (SELECT 1 FROM pending_events WHERE pending_events.terminal_id = terminals.terminal_id) "
                "FROM terminals WHERE terminal_id = ?",
                (terminal_id,),
            ).fetchone()
            if row is None:
                raise PlatformError(
                    f"terminal {terminal_id} is not registered; add it with `onecard platform add-terminal`"
                )
            contiguous, head, problem = row[:3]
            # What the money checks ask of the terminal, read once per batch; and the new events, stored together
            # (one round trip for the batch on PostgreSQL) before the transaction ends.
            self._batch_terminal = (terminal_id, row[3], row[4])
            self._new_events: list[tuple] = []
            start_seq = contiguous
            # Nothing waiting behind a gap, and nothing put there by this batch: no pending record to move or count.
            waiting = bool(row[5])
            self._open_purse_batch(events, contiguous)
            reason = "chain_broken" if problem else ""
            refusal = None  # (reason, text) of this batch's refused or diverging records
            dups = new = 0
            stored = {}
            if events and events[0].seq <= contiguous:
                stored = dict(
                    self.conn.execute(
                        "SELECT seq, hash FROM events WHERE terminal_id = ? AND seq BETWEEN ? AND ?",
                        (terminal_id, events[0].seq, min(events[-1].seq, contiguous)),
                    )
                )
            held_rows = None  # {seq: (hash, size)} of this terminal's waiting records, read once when needed
            pending_bytes = 0
            to_wait: list[tuple] = []  # this batch's records that wait behind the gap, stored together
            for e in events:
                if e.seq <= contiguous:
                    if e.seq in stored and stored[e.seq] != e.hash:
                        text = (
                            f"seq {e.seq} was acknowledged with hash {stored[e.seq][:16]}… and is now sent "
                            f"with hash {e.hash[:16]}…: the terminal's log was rewritten; keep its files"
                        )
                        self._diverged(terminal_id, e, text)
                        refusal = refusal or ("diverged", text)
                    else:
                        dups += 1
                elif e.seq == contiguous + 1 and not problem:
                    problem = self._append(terminal_id, e, head)
                    if problem:
                        reason = "chain_broken"
                        self._evidence(terminal_id, "chain_broken", e)
                        self._alarm(terminal_id, "chain_broken", e.seq, problem)
                        break
                    contiguous, head, new = e.seq, e.hash, new + 1
                else:
                    if e.seq - contiguous > MAX_PENDING_GAP:
                        refusal = refusal or (
                            "pending_gap",
                            f"seq {e.seq} is more than {MAX_PENDING_GAP} records "
                            f"ahead of the contiguous seq {contiguous}; refused, resend it later",
                        )
                        break
                    if held_rows is None:
                        held_rows = self._held_rows(terminal_id)
                        pending_bytes = sum(size for _, size in held_rows.values())
                    if e.seq in held_rows:
                        held = held_rows[e.seq][0]
                        if held != e.hash:  # two different records for one seq: keep both, trust neither silently
                            text = (
                                f"seq {e.seq} is waiting with hash {held[:16]}… and was sent again with hash "
                                f"{e.hash[:16]}…: the terminal's log was rewritten; keep its files"
                            )
                            self._diverged(terminal_id, e, text)
                            refusal = refusal or ("diverged", text)
                        continue
                    size = _size(e)
                    if pending_bytes + size > MAX_PENDING_BYTES:
                        refusal = refusal or (
                            "pending_bytes",
                            f"seq {e.seq} would take the records waiting behind "
                            f"the gap after seq {contiguous} past {MAX_PENDING_BYTES} bytes; "
                            "refused, resend it later",
                        )
                        break
                    to_wait.append(
                        (
                            terminal_id,
                            e.seq,
                            e.time,
                            e.kind,
                            e.asn,
                            e.reason_code,
                            e.message,
                            e.detail,
                            e.prev_hash,
                            e.hash,
                        )
                    )
                    held_rows[e.seq] = (e.hash, size)
                    pending_bytes += size
                    waiting = True
            # One statement for the batch's waiting records (on PostgreSQL one round trip, not one a record). The
            # rows were read in this transaction, so none is stored yet; a concurrent worker storing the same one
            # first aborts this transaction (23505), which runs again and then finds it (central.store._retrying).
            insert_rows(self.conn, "pending_events", to_wait)
            while waiting and not problem:
                # The waiting records that now follow the chain, read in order a chunk at a time, not one a query.
                rows = self.conn.execute(
                    f"SELECT {_WIRE_COLUMNS} FROM pending_events WHERE terminal_id = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (terminal_id, contiguous, DRAIN_CHUNK),
                ).fetchall()
                for row in rows:
                    e = p.WireEvent(*row)
                    if e.seq != contiguous + 1:
                        break
                    problem = self._append(terminal_id, e, head)
                    if problem:
                        reason = "chain_broken"
                        self._alarm(terminal_id, "chain_broken", e.seq, problem)
                        break
                    contiguous, head, new = e.seq, e.hash, new + 1
                else:
                    if len(rows) == DRAIN_CHUNK:
                        continue  # the whole chunk followed on: read the next one
                break
            self._close_purse_batch()
            insert_rows(self.conn, "events", self._new_events)
            self._new_events = []
            self._batch_terminal = None
            pending = 0
            if waiting:
                self.conn.execute(
                    "DELETE FROM pending_events WHERE terminal_id = ? AND seq <= ?", (terminal_id, contiguous)
                )
                pending = self.conn.execute(
                    "SELECT count(*) FROM pending_events WHERE terminal_id = ?", (terminal_id,)
                ).fetchone()[0]
            self.conn.execute(
                "UPDATE terminals SET contiguous_seq = ?, head_hash = ?, duplicates = duplicates + ?, "
                "chain_problem = ? WHERE terminal_id = ?",
                (contiguous, head, dups, problem, terminal_id),
            )
            if contiguous > start_seq:
                self._publish_meal_usage(terminal_id, start_seq, contiguous)
        text = problem or ""
        if refusal and not problem:
            reason, text = refusal
        elif refusal:
            text = f"{problem}; also: {refusal[1]}"
        return IngestResult(terminal_id, contiguous, head, new, dups, pending, text, reason if text else "")

    def _held_rows(self, terminal_id: str) -> dict[int, tuple[str, int]]:
        """{seq: (hash, size)} of the records waiting behind this terminal's gap; size as MAX_PENDING_BYTES counts."""
        size = " + ".join(bytes_length(c, self.backend) for c in _SIZED_COLUMNS)
        return {
            seq: (hash_, size_)
            for seq, hash_, size_ in self.conn.execute(
                f"SELECT seq, hash, {size} + 128 FROM pending_events WHERE terminal_id = ?", (terminal_id,)
            )
        }

    def _alarm(self, terminal_id: str, kind: str, seq: int | None, text: str) -> None:
        """Inside a transaction: an alarm an administrator must look at (`onecard platform terminal ID`)."""
        self.conn.execute(
            "INSERT INTO terminal_alarms (terminal_id, at, kind, seq, text) VALUES (?, ?, ?, ?, ?)",
            (terminal_id, self._now(), kind, seq, text),
        )
        log_event(log, f"platform.{kind}", logging.ERROR, terminal=terminal_id, seq=seq, text=text)

    def _diverged(self, terminal_id: str, e: p.WireEvent, text: str) -> None:
        """Keep the other record and alarm, once per distinct record (a resend adds nothing)."""
        if (
            self.conn.execute(
                "SELECT 1 FROM chain_evidence WHERE terminal_id = ? AND seq = ? AND hash = ? AND why = 'diverged'",
                (terminal_id, e.seq, e.hash),
            ).fetchone()
            is None
        ):
            self._evidence(terminal_id, "diverged", e)
            self._alarm(terminal_id, "diverged", e.seq, text)

    def _evidence(self, terminal_id: str, why: str, e: p.WireEvent) -> None:
        self.conn.execute(
            f"INSERT INTO chain_evidence (terminal_id, at, why, {_WIRE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                terminal_id,
                self._now(),
                why,
                e.seq,
                e.time,
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail,
                e.prev_hash,
                e.hash,
            ),
        )

    def reanchor(self, terminal_id: str, at_seq: int, reason: str) -> IngestResult:
        """After a chain break has been investigated: accept the terminal's chain again from record `at_seq`.

        The record at `at_seq` must be waiting in pending_events (the agent keeps sending it) and hash correctly;
        its prev_hash becomes the platform's head. Every pending record below `at_seq` and the record that broke
        the chain stay in chain_evidence; seqs between the old contiguous seq and `at_seq` are never stored as
        events. The re-anchor itself (who/why, old and new head) is kept in `reanchors`.
        """
        if not reason.strip():
            raise PlatformError("--reason must say what the investigation found (it is kept with the evidence)")
        with self._txn():
            row = self.conn.execute(
                "SELECT contiguous_seq, head_hash, chain_problem FROM terminals WHERE terminal_id = ?", (terminal_id,)
            ).fetchone()
            if row is None:
                raise PlatformError(f"terminal {terminal_id} is not registered")
            contiguous, head, problem = row
            if at_seq <= contiguous:
                raise PlatformError(
                    f"seq {at_seq} is not after the verified chain (contiguous seq {contiguous}); "
                    f"re-anchor at a seq above {contiguous}"
                )
            nxt = self.conn.execute(
                f"SELECT {_WIRE_COLUMNS} FROM pending_events WHERE terminal_id = ? AND seq = ?", (terminal_id, at_seq)
            ).fetchone()
            if nxt is None:
                waiting = self.conn.execute(
                    "SELECT min(seq), max(seq) FROM pending_events WHERE terminal_id = ?", (terminal_id,)
                ).fetchone()
                where = f"seqs {waiting[0]}..{waiting[1]} are" if waiting[0] else "no record is"
                raise PlatformError(
                    f"record {at_seq} of terminal {terminal_id} has not been received ({where} "
                    "waiting); let the agent upload it, then re-anchor at a waiting seq"
                )
            e = p.WireEvent(*nxt)
            computed = event_hash(
                e.seq, e.time, terminal_id, e.kind, e.asn, e.reason_code, e.message, e.detail, e.prev_hash
            )
            if computed != e.hash:
                raise PlatformError(
                    f"record {at_seq} does not hash to its own hash ({computed[:16]}…, not "
                    f"{e.hash[:16]}…); it cannot anchor anything: choose a later seq"
                )
            now = self._now()
            self.conn.execute(
                f"INSERT INTO chain_evidence (terminal_id, at, why, {_WIRE_COLUMNS}) "
                f"SELECT terminal_id, ?, 'reanchor', {_WIRE_COLUMNS} FROM pending_events "
                "WHERE terminal_id = ? AND seq < ?",
                (now, terminal_id, at_seq),
            )
            self.conn.execute("DELETE FROM pending_events WHERE terminal_id = ? AND seq < ?", (terminal_id, at_seq))
            self.conn.execute(
                "INSERT INTO reanchors (terminal_id, at, old_seq, old_hash, at_seq, new_prev_hash, "
                "chain_problem, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (terminal_id, now, contiguous, head, at_seq, e.prev_hash, problem, reason),
            )
            self.conn.execute(
                "UPDATE terminals SET contiguous_seq = ?, head_hash = ?, chain_problem = NULL WHERE terminal_id = ?",
                (at_seq - 1, e.prev_hash, terminal_id),
            )
            self._alarm(
                terminal_id,
                "reanchored",
                at_seq,
                f"chain re-anchored at seq {at_seq} by an administrator (was verified to seq {contiguous}): {reason}",
            )
            result = self.ingest(terminal_id, [])
            # The agent hears of it without waiting for its next resend (worker 0 publishes the queue).
            self._queue(p.terminal_topic(terminal_id, p.DOWN_ACK), self.ack_message(result))
            return result

    def ack_message(self, result: IngestResult) -> bytes:
        body = {"acked_seq": result.acked_seq, "acked_hash": result.acked_hash}
        if result.problem:
            body["problem"] = result.problem[: p.MAX_PROBLEM_CHARS]
            body["reason"] = result.reason or "chain_broken"
        return self.seal("ack", f"t:{result.terminal_id}", body)

    def totals(self) -> dict[str, int]:
        """Stored events per kind over all terminals (each terminal record counted once)."""
        return dict(self.conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())

    def _append(self, terminal_id: str, e: p.WireEvent, head: str) -> str | None:
        if e.prev_hash != head:
            return (
                f"chain broken at seq {e.seq}: prev_hash {e.prev_hash[:16]}… is not the hash of seq {e.seq - 1} "
                f"({head[:16]}…)"
            )
        computed = event_hash(
            e.seq, e.time, terminal_id, e.kind, e.asn, e.reason_code, e.message, e.detail, e.prev_hash
        )
        if computed != e.hash:
            return f"chain broken at seq {e.seq}: its content hashes to {computed[:16]}…, not {e.hash[:16]}…"
        self._new_events.append((terminal_id, e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail, e.hash))
        if e.kind in PURSE_SIGN:
            self._account(terminal_id, e)
        elif e.kind in mr.SUBSIDY_EXTRA:
            self._account_subsidy(terminal_id, e)
        elif e.kind in ("card.rights", CARD_ACTION_FAILED):
            self._card_action_report(terminal_id, e)
        elif e.kind == "door.grant":
            self._relay_passage(terminal_id, e)  # anti-passback at the area's other terminals
        return None

    def _terminal_facts(self, terminal_id: str) -> tuple[str | None, str | None]:
        """(enterprise, kind) of a terminal: from the batch being ingested, else from the database."""
        batch = getattr(self, "_batch_terminal", None)
        if batch is not None and batch[0] == terminal_id:
            return batch[1], batch[2]
        return self.terminal_enterprise(terminal_id), self.terminal_kind(terminal_id)

    def _card_action_report(self, terminal_id: str, e: p.WireEvent) -> None:
        """A terminal wrote a card action onto the card (`card.rights`; a top-up's record is `topup.load` with
        its action_id), or the card refused it (`card_action.failed`): the action is done or failed, and is no
        longer offered. Only a report from a terminal of the action's enterprise, for the action's card, counts."""
        try:
            if e.kind == CARD_ACTION_FAILED:
                d = check_action_failed_detail(e.detail)
            else:
                d = json.loads(e.detail)
                if not isinstance(d, dict) or not isinstance(d.get("action_id"), str):
                    raise p.ProtocolError("card.rights detail has no action_id")
        except (p.ProtocolError, json.JSONDecodeError, RecursionError) as exc:
            log_event(
                log,
                "platform.card_action_report_refused",
                logging.WARNING,
                terminal=terminal_id,
                seq=e.seq,
                text=f"{e.kind} record refused as a protocol error: {exc}",
            )
            return
        row = self.conn.execute(
            "SELECT status, enterprise_id, asn FROM card_actions WHERE action_id = ?", (d["action_id"],)
        ).fetchone()
        if self._terminal_facts(terminal_id)[1] != "topup":
            why = f"only a top-up terminal carries out card actions, terminal {terminal_id} is not one"
        elif row is None or row[1] != self._terminal_facts(terminal_id)[0] or row[2] != e.asn:
            why = "it names no card action of this terminal's enterprise for this card"
        else:
            why = None
        if why:
            log_event(
                log,
                "platform.card_action_report_refused",
                logging.WARNING,
                terminal=terminal_id,
                seq=e.seq,
                action_id=d["action_id"],
                text=f"{e.kind} record ignored: {why}",
            )
            return
        if e.kind == CARD_ACTION_FAILED:
            if row[0] != "pending":
                return  # done or cancelled already: the report changes nothing
            note = f"refused at terminal {terminal_id}: {d['reason_code']}" + (f" (SW {d['sw']})" if d["sw"] else "")
            self.conn.execute(
                "UPDATE card_actions SET status = 'failed', status_note = ? WHERE action_id = ?", (note, d["action_id"])
            )
            self._history(e.asn, "card_action_failed", f"card action {d['action_id']} failed: {note}")
            log_event(
                log,
                "platform.card_action_failed",
                logging.WARNING,
                terminal=terminal_id,
                action_id=d["action_id"],
                asn=e.asn,
                reason_code=d["reason_code"],
                sw=d["sw"],
                text=f"card action failed ({note}); no longer pending",
            )
        else:
            self.conn.execute("UPDATE card_actions SET status = 'done' WHERE action_id = ?", (d["action_id"],))
