"""Uploads from terminals: verify each event chain across batches, store each record once, acknowledge.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""
from __future__ import annotations

import json
import logging

from central.db import PURSE_SIGN, IngestResult, PlatformError
from common import sync_protocol as p
from common.events import event_hash
from common.logs import log_event
from common.money_records import CARD_ACTION_FAILED, check_action_failed_detail

log = logging.getLogger("platform")


class Ingest:
    def ingest(self, terminal_id: str, events: list[p.WireEvent]) -> IngestResult:
        """Store a batch once, verifying the chain across batches; answer the highest contiguous seq.

        Records at or below the contiguous seq are duplicates (redelivery, resend) and change nothing;
        records past a gap wait in pending_events until the gap is filled.
        """
        with self._txn():
            row = self.conn.execute("SELECT contiguous_seq, head_hash, chain_problem FROM terminals "
                                    "WHERE terminal_id = ?", (terminal_id,)).fetchone()
            if row is None:
                raise PlatformError(f"terminal {terminal_id} is not registered; add it with "
                                    "`onecard platform add-terminal`")
            contiguous, head, problem = row
            dups = new = 0
            for e in events:
                if e.seq <= contiguous:
                    dups += 1
                elif e.seq == contiguous + 1 and not problem:
                    problem = self._append(terminal_id, e, head)
                    if problem:
                        break
                    contiguous, head, new = e.seq, e.hash, new + 1
                else:
                    self.conn.execute("INSERT OR IGNORE INTO pending_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                      (terminal_id, e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail,
                                       e.prev_hash, e.hash))
            while not problem:
                nxt = self.conn.execute("SELECT seq, time, kind, asn, reason_code, message, detail, prev_hash, hash "
                                        "FROM pending_events WHERE terminal_id = ? AND seq = ?",
                                        (terminal_id, contiguous + 1)).fetchone()
                if nxt is None:
                    break
                e = p.WireEvent(*nxt)
                problem = self._append(terminal_id, e, head)
                if not problem:
                    contiguous, head, new = e.seq, e.hash, new + 1
            self.conn.execute("DELETE FROM pending_events WHERE terminal_id = ? AND seq <= ?", (terminal_id, contiguous))
            pending = self.conn.execute("SELECT count(*) FROM pending_events WHERE terminal_id = ?",
                                        (terminal_id,)).fetchone()[0]
            self.conn.execute("UPDATE terminals SET contiguous_seq = ?, head_hash = ?, duplicates = duplicates + ?, "
                              "chain_problem = ? WHERE terminal_id = ?", (contiguous, head, dups, problem, terminal_id))
        return IngestResult(terminal_id, contiguous, head, new, dups, pending, problem or "")

    def _append(self, terminal_id: str, e: p.WireEvent, head: str) -> str | None:
        if e.prev_hash != head:
            return (f"chain broken at seq {e.seq}: prev_hash {e.prev_hash[:16]}… is not the hash of seq {e.seq - 1} "
                    f"({head[:16]}…)")
        computed = event_hash(e.seq, e.time, terminal_id, e.kind, e.asn, e.reason_code, e.message, e.detail,
                              e.prev_hash)
        if computed != e.hash:
            return f"chain broken at seq {e.seq}: its content hashes to {computed[:16]}…, not {e.hash[:16]}…"
        self.conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (terminal_id, e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail, e.hash))
        if e.kind in PURSE_SIGN:
            self._account(terminal_id, e)
        elif e.kind in ("card.rights", CARD_ACTION_FAILED):
            self._card_action_report(terminal_id, e)
        return None

    def ack_message(self, result: IngestResult) -> bytes:
        body = {"acked_seq": result.acked_seq, "acked_hash": result.acked_hash}
        if result.problem:
            body["problem"] = result.problem
        return self.seal("ack", f"t:{result.terminal_id}", body)

    def totals(self) -> dict[str, int]:
        """Stored events per kind over all terminals (each terminal record counted once)."""
        return dict(self.conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())

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
            log_event(log, "platform.card_action_report_refused", logging.WARNING, terminal=terminal_id, seq=e.seq,
                      text=f"{e.kind} record refused as a protocol error: {exc}")
            return
        row = self.conn.execute("SELECT status, enterprise_id, asn FROM card_actions WHERE action_id = ?",
                                (d["action_id"],)).fetchone()
        if self.terminal_kind(terminal_id) != "topup":
            why = f"only a top-up terminal carries out card actions, terminal {terminal_id} is not one"
        elif row is None or row[1] != self.terminal_enterprise(terminal_id) or row[2] != e.asn:
            why = "it names no card action of this terminal's enterprise for this card"
        else:
            why = None
        if why:
            log_event(log, "platform.card_action_report_refused", logging.WARNING, terminal=terminal_id, seq=e.seq,
                      action_id=d["action_id"], text=f"{e.kind} record ignored: {why}")
            return
        if e.kind == CARD_ACTION_FAILED:
            if row[0] != "pending":
                return  # done or cancelled already: the report changes nothing
            note = f"refused at terminal {terminal_id}: {d['reason_code']}" + (f" (SW {d['sw']})"
                                                                             if d["sw"] else "")
            self.conn.execute("UPDATE card_actions SET status = 'failed', status_note = ? WHERE action_id = ?",
                              (note, d["action_id"]))
            self._history(e.asn, "card_action_failed", f"card action {d['action_id']} failed: {note}")
            log_event(log, "platform.card_action_failed", logging.WARNING, terminal=terminal_id,
                      action_id=d["action_id"], asn=e.asn, reason_code=d["reason_code"], sw=d["sw"],
                      text=f"card action failed ({note}); no longer pending")
        else:
            self.conn.execute("UPDATE card_actions SET status = 'done' WHERE action_id = ?", (d["action_id"],))
