"""A terminal application: one tap in, one decision out, logged before the door moves.

`Terminal.handle_tap` is the whole tap path; `Terminal.run` is the loop around a reader. Time and the
nonce source are passed in so tests and the simulator can drive it deterministically.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable

from onecard.logs import log_event
from sam.interface import Sam
from terminal.attendance import CLOCK_KINDS, decide_attendance
from terminal.authenticate import authenticate_card
from terminal.config import Config
from terminal.decision import Decision, Refusal
from terminal.door import decide_door
from terminal.outputs import Outputs, present
from terminal.reader import CardConnection, CardRemoved, Reader

log = logging.getLogger("onecard.terminal")


class Terminal:
    def __init__(self, config: Config, sam: Sam, event_log, blacklist, outputs: Outputs,
                 nonce_source: Callable[[int], bytes] = os.urandom):
        self.config = config
        self.sam = sam
        self.event_log = event_log
        self.blacklist = blacklist
        self.outputs = outputs
        self.nonce_source = nonce_source

    def decide(self, conn: CardConnection, now: dt.datetime) -> Decision:
        """Talk to the card and decide; raises CardRemoved if the card leaves before a decision."""
        t = self.config.terminal
        try:
            card = authenticate_card(conn.transmit, self.sam, t.enterprise_id, t.id_bytes, self.nonce_source(8))
            entry = self.blacklist.lookup(card.info.asn)
            if t.kind == "door":
                return decide_door(card, entry, self.config.door, self.config.time_profiles, now.astimezone(t.timezone))
            last = self.event_log.last_event(card.info.asn_hex, CLOCK_KINDS)
            return decide_attendance(card, entry, last.kind if last else None, last.time if last else None,
                                     self.config.attendance, now, t.timezone)
        except Refusal as r:
            return Decision(accepted=False, kind=f"{t.kind}.deny", reason_code=r.reason_code, message=r.message,
                            asn=r.asn, detail=r.detail)

    def handle_tap(self, conn: CardConnection, now: dt.datetime) -> Decision:
        """Decide, log durably, then drive the outputs. A failed log write keeps the door shut."""
        try:
            decision = self.decide(conn, now)
        except CardRemoved:
            decision = Decision(accepted=False, kind="tap.incomplete", reason_code="removed",
                                message="Card removed too soon: tap again and hold it still", logged=False)
        if decision.logged:
            try:
                logged = self.event_log.append(now, decision.kind, asn=decision.asn, reason_code=decision.reason_code,
                                               message=decision.message, detail=decision.detail)
            except Exception as exc:
                log_event(log, "log.write_failed", logging.ERROR, error=str(exc),
                          msg="could not write the event log; refusing the tap")
                decision = Decision(accepted=False, kind=decision.kind, reason_code="log_unavailable",
                                    message="Terminal fault: cannot record, access refused. Call maintenance",
                                    asn=decision.asn, logged=False)
            else:
                decision.detail["seq"] = logged.seq
        log_event(log, "tap.decided", terminal=self.config.terminal.id, kind=decision.kind, asn=decision.asn,
                  reason=decision.reason_code, msg=decision.message)
        relay = self.config.door.open_seconds if self.config.terminal.kind == "door" else None
        present(decision, self.outputs, relay)
        return decision

    def run(self, reader: Reader, clock: Callable[[], dt.datetime], stop: threading.Event,
            poll_seconds: float = 0.5) -> None:
        """Serve taps until `stop` is set. Each card is handled once per presentation."""
        log_event(log, "terminal.started", terminal=self.config.terminal.id, kind=self.config.terminal.kind,
                  reader=reader.name, msg="terminal ready for taps")
        while not stop.is_set():
            conn = reader.wait_for_card(poll_seconds)
            if conn is None:
                continue
            try:
                self.handle_tap(conn, clock())
            finally:
                conn.close()
            while not stop.is_set() and not reader.wait_for_removal(poll_seconds):
                pass
        log_event(log, "terminal.stopped", terminal=self.config.terminal.id, msg="terminal stopped")
