"""A terminal application: one tap in, one decision out, logged before the door moves.

`Terminal.handle_tap` is the whole tap path; `Terminal.run` is the loop around a reader. Time and the
nonce source are passed in so tests and the simulator can drive it deterministically.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable

from common.config import Config, ConfigError, apply_platform_document
from common.door_events import NORMALLY_OPEN_END, NORMALLY_OPEN_KINDS, NORMALLY_OPEN_START
from common.logs import log_event
from common.money import format_yuan
from sam.interface import Sam, SamError, SamSwapped
from terminal.attendance import CLOCK_KINDS, decide_attendance
from terminal.authenticate import authenticate_card
from terminal.canteen import no_other_tills
from terminal.card_deadline import CommandDeadline
from terminal.decision import Decision, Refusal
from terminal.door import Passage, PassbackView, decide_door, normally_open
from terminal.inbox import Inbox
from terminal.keypad import (
    Balance,
    Cancel,
    Charge,
    Keypad,
    Load,
    PinEntered,
    PinTyped,
    Rejected,
    Request,
    SignIn,
    SignOut,
    Typed,
    Undo,
)
from terminal.meal_rules import fixed_price
from terminal.outputs import Outputs, present
from terminal.purse_flow import LOG_UNAVAILABLE, Incomplete, PurseTerminal, Unrecorded, cannot_record_message
from terminal.reader import CardConnection, CardRemoved, CardUnresponsive, Reader, ReaderError
from terminal.screens import entry_screen, idle_screen, notice_screen, pin_screen, prompt_screen

log = logging.getLogger("onecard.terminal")
PURSE_KINDS = ("pos", "topup")
CONFIG_REFRESH_SECONDS = 5.0  # how often an idle terminal looks for a newer platform configuration
READER_UNAVAILABLE = "Reader unavailable: door locked, waiting for the reader"
CONFIG_REJECTED = "config.rejected"  # event kind: a platform configuration document this terminal refused
RESULT_SECONDS = 4.0  # a decision stays on the display this long before the idle screen returns


class Terminal:
    def __init__(
        self,
        config: Config,
        sam: Sam,
        event_log,
        blacklist,
        outputs: Outputs,
        nonce_source: Callable[[int], bytes] = os.urandom,
        synced_seq: Callable[[], int] = lambda: 0,
        outbox_pressure: Callable[[], float] = lambda: 0.0,
        inbox: Inbox | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        printer=None,
    ):
        self.config = config
        self.printer = printer  # a python-escpos printer for receipts ([printer]), or None
        self.firmware_config = config  # firmware.toml as read: each platform document is laid over this, not stacked
        self.sam = sam
        self.event_log = event_log
        self.blacklist = blacklist
        self.outputs = outputs
        self.nonce_source = nonce_source
        self.inbox = inbox
        self.clock = clock  # stamps records not caused by a tap (a refused platform configuration)
        self.config_version = 0  # the platform configuration applied over firmware.toml (0: none)
        self.deadline = CommandDeadline(config.reader.command_timeout_ms / 1000)
        self.reader_problem: str | None = None  # why the reader is unavailable now (None: it works)
        self._idle_shown = None  # the minute the idle screen shows, or None when something else is on it
        self._screen_since = 0.0
        self._idle_checked = 0.0
        self.reader_status = {"name": "", "state": "not started"}  # for the status page (another thread reads it)
        self.purse = (
            PurseTerminal(
                config,
                sam,
                event_log,
                blacklist,
                synced_seq,
                outbox_pressure,
                inbox.pending_actions if inbox is not None else None,
                inbox.other_tills(config.terminal.id) if inbox is not None else no_other_tills,
                inbox.pending_allowances if inbox is not None else None,
            )
            if config.terminal.kind in PURSE_KINDS
            else None
        )
        # Normally open: whether this process holds the strike unlocked (never at start: a restart begins locked),
        # whether the log says a period is open, and when its first card started it (first_card_unlock).
        self.holding_open = False
        self._hold_logged = False
        self._hold_started: dt.datetime | None = None
        self._hold_first_card: str | None = None
        if config.terminal.kind == "door":
            last = event_log.last_event_of(NORMALLY_OPEN_KINDS)
            if last is not None and last.kind == NORMALLY_OPEN_START:
                self._hold_logged = True
                self._hold_started = last.time.astimezone(config.terminal.timezone)

    def normally_open_configured(self) -> bool:
        """A door with a normally-open schedule, or one whose period is still open (held, or open in the log)."""
        door = self.config.door
        return self.config.terminal.kind == "door" and bool(
            door.normally_open_profile or self.holding_open or self._hold_logged
        )

    def update_normally_open(self, now: dt.datetime) -> None:
        """Hold the strike unlocked or release it as the door's normally-open schedule says now, logging each
        change. Called on every turn of the tap loop and after each grant."""
        door, tz = self.config.door, self.config.terminal.timezone
        if self.config.terminal.kind != "door":
            return
        local = now.astimezone(tz)
        want = normally_open(door, self.config.time_profiles, local, self._hold_started, self.config.holidays)
        if want != self._hold_logged:
            kind = NORMALLY_OPEN_START if want else NORMALLY_OPEN_END
            detail: dict = {"profile": door.normally_open_profile}
            if want and self._hold_first_card is not None:
                detail["first_card"] = self._hold_first_card
            if not want and not self.holding_open:
                detail["after_restart"] = True
            try:
                self.event_log.append(
                    now,
                    kind,
                    asn=None,
                    reason_code="normally_open" if want else "normally_open_end",
                    message="Door normally open" if want else "Normally-open period over: door locked",
                    detail=detail,
                )
            except Exception as exc:
                log_event(log, "log.write_failed", logging.ERROR, error=str(exc), kind=kind, msg="door stays locked")
                want = False  # nothing unlocks a door that the log cannot record
            else:
                self._hold_logged = want
                log_event(log, kind, terminal=self.config.terminal.id, msg="normally open" if want else "locked")
        self._hold_first_card = None  # (a first card's start counts only in its own window: see normally_open)
        if want != self.holding_open:
            hold = getattr(self.outputs, "hold_open", None)
            if hold is not None:
                hold(want)
            self.holding_open = want
            log_event(
                log,
                "door.hold",
                terminal=self.config.terminal.id,
                on=want,
                msg="strike held unlocked (normally open)" if want else "strike back to normal (locked)",
            )

    def _first_card(self, decision: Decision, now: dt.datetime) -> None:
        """A grant that may open a first_card_unlock period."""
        door = self.config.door
        if not door.first_card_unlock or self.holding_open or decision.kind != "door.grant" or not decision.accepted:
            return
        local = now.astimezone(self.config.terminal.timezone)
        if normally_open(door, self.config.time_profiles, local, local, self.config.holidays):
            self._hold_started, self._hold_first_card = local, decision.asn
            self.update_normally_open(now)

    def passback_view(self, asn: str, now: dt.datetime) -> PassbackView:
        """This card's latest passage in the door's area: the newer of this terminal's own log and what the platform
        relayed from the area's other terminals (the sync agent's inbox). Current when there is no agent (this
        terminal's log is the whole area) or the agent heard the platform within passback_fresh_seconds."""
        from common.sync_protocol import ProtocolError, parse_time

        door, tz = self.config.door, self.config.terminal.timezone
        passage = None
        last = self.event_log.last_event(asn, ("door.grant",))
        if last is not None:
            detail = last.detail
            if detail.get("area") == door.area and detail.get("direction") in ("entry", "exit"):
                passage = Passage(detail["direction"], last.time.astimezone(tz), self.config.terminal.id)
        if self.inbox is None:
            return PassbackView(passage, current=True)
        relayed = self.inbox.last_passage(asn, door.area)
        if relayed is not None:
            try:
                when = parse_time(relayed[1], "passage time").astimezone(tz)
            except ProtocolError:
                when = None
            if when is not None and (passage is None or when > passage.time):
                passage = Passage(relayed[0], when, relayed[2])
        heard = self.inbox.last_heard()
        try:
            heard_at = parse_time(heard, "heard") if heard is not None else None
        except ProtocolError:
            heard_at = None
        current = heard_at is not None and abs((now - heard_at).total_seconds()) <= door.passback_fresh_seconds
        return PassbackView(passage, current=current)

    def refresh_config(self) -> None:
        """Apply a newer platform configuration from the inbox, if any; a bad one is logged and ignored."""
        if self.inbox is None or self.inbox.config_version() <= self.config_version:
            return
        version, document = self.inbox.latest_config()
        try:
            config = apply_platform_document(self.firmware_config, version, document)
        except ConfigError as exc:
            log_event(
                log,
                "config.rejected",
                logging.WARNING,
                version=version,
                error=str(exc),
                msg="platform configuration not applied; the terminal keeps its current settings",
            )
            # Into the event log as well: the agent uploads it, so the platform learns why its document was refused.
            try:
                self.event_log.append(
                    self.clock(),
                    CONFIG_REJECTED,
                    asn=None,
                    reason_code="invalid_config",
                    message=f"Platform configuration version {version} not applied",
                    detail={"version": version, "error": str(exc)},
                )
            except Exception as write_exc:  # e.g. a full disk: the rejection still holds, the next start reports it
                log_event(
                    log,
                    "log.write_failed",
                    logging.ERROR,
                    error=str(write_exc),
                    msg="could not record the configuration rejection",
                )
                return
        else:
            self.config = config
            if self.purse is not None:
                self.purse.config = config
            log_event(log, "config.applied", version=version, msg="platform configuration applied")
        self.config_version = version

    def decide(
        self, conn: CardConnection, now: dt.datetime, request: Request | None = None, direction: str | None = None
    ) -> Decision:
        """Talk to the card and decide; raises CardRemoved if the card leaves before a decision."""
        t = self.config.terminal
        try:
            if self.purse is not None:
                return self._purse_decision(conn, now, request)
            card = authenticate_card(conn.transmit, self.sam, t.enterprise_id, t.id_bytes, self.nonce_source(8))
            entry = self.blacklist.lookup(card.info.asn)
            if t.kind == "door":
                door = self.config.door
                return decide_door(
                    card,
                    entry,
                    door,
                    self.config.time_profiles,
                    now.astimezone(t.timezone),
                    holidays=self.config.holidays,
                    direction=direction,
                    passback=self.passback_view(card.info.asn_hex, now) if door.anti_passback == "on" else None,
                )
            last = self.event_log.last_event(card.info.asn_hex, CLOCK_KINDS)
            return decide_attendance(
                card,
                entry,
                last.kind if last else None,
                last.time if last else None,
                self.config.attendance,
                now,
                t.timezone,
            )
        except Refusal as r:
            return Decision(
                accepted=False,
                kind=f"{t.kind}.deny",
                reason_code=r.reason_code,
                message=r.message,
                asn=r.asn,
                detail=r.detail,
                logged=r.reason_code != LOG_UNAVAILABLE,
            )
        except SamSwapped as exc:
            # Not the PSAM this terminal started with (checked at every reconnect): a refusal with its reason, logged.
            # Any other SAM failure is handled in handle_tap (sam_unavailable).
            log_event(
                log,
                "sam.swapped",
                logging.ERROR,
                error=str(exc),
                msg="the SAM in the slot is not the one this terminal started with; the tap is refused",
            )
            return Decision(
                accepted=False,
                kind=f"{t.kind}.deny",
                reason_code="sam_swapped",
                message="Terminal fault: the SAM is not this terminal's, "
                + ("access refused" if self.purse is None else "nothing charged")
                + ". Call maintenance",
                detail={"problem": str(exc)},
            )

    def _purse_decision(self, conn: CardConnection, now: dt.datetime, request: Request | None) -> Decision:
        transmit = conn.transmit
        try:
            if isinstance(request, Charge):
                return self.purse.purchase(transmit, request.amount, now, request.item)
            if isinstance(request, Load):
                return self.purse.top_up(transmit, request.amount, now)
            if isinstance(request, Undo):
                return self.purse.undo_last(transmit, now)
            return self.purse.balance_inquiry(transmit, now)
        except Unrecorded as exc:
            self.purse.sale_intent_seq = None  # a later sale to this card must not be answered with this one
            return Decision(
                accepted=True,
                kind=exc.op,
                reason_code="unrecorded",
                message=exc.message,
                asn=exc.asn,
                logged=False,
                detail={"why": exc.why},
            )
        except Incomplete as exc:
            return Decision(
                accepted=False,
                kind="tap.incomplete",
                reason_code="unconfirmed",
                message=f"{exc.op.split('.')[-1].capitalize()} not confirmed: tap the card again",
                logged=False,
                detail={"why": exc.why},
            )

    def handle_tap(
        self, conn: CardConnection, now: dt.datetime, request: Request | None = None, direction: str | None = None
    ) -> Decision:
        """Decide, log durably, then drive the outputs. A failed log write keeps the door shut.
        direction: which reader of a two-reader door the card was tapped on (None: the [reader])."""
        purse = self.purse is not None
        try:
            decision = self.decide(self.deadline.wrap(conn), now, request, direction)
        except CardUnresponsive as exc:
            # Late, silent or broken answer: what a purse command did is settled at the card's next tap.
            log_event(
                log,
                "card.unresponsive",
                logging.WARNING,
                error=str(exc),
                msg="card missed its command deadline or answered without status bytes; tap refused",
            )
            again = "tap again to finish" if purse else "access refused, tap again"
            decision = Decision(
                accepted=False,
                kind="tap.incomplete",
                reason_code="card_timeout",
                message=f"Card did not answer in time: {again}",
                logged=False,
                detail={"why": str(exc)},
            )
        except CardRemoved:
            again = "to finish" if purse else "and hold it still"
            decision = Decision(
                accepted=False,
                kind="tap.incomplete",
                reason_code="removed",
                message=f"Card removed too soon: tap again {again}",
                logged=False,
            )
        except ReaderError as exc:
            self._reader_unavailable(str(exc))
            decision = Decision(
                accepted=False,
                kind="tap.incomplete",
                reason_code="reader_unavailable",
                message=READER_UNAVAILABLE,
                logged=False,
                detail={"why": str(exc)},
            )
        except SamError as exc:
            # The SAM (a PSAM pulled out or failing) broke off; an open intent is settled at the next tap.
            log_event(
                log,
                "sam.failed",
                logging.ERROR,
                error=str(exc),
                msg="the terminal's SAM failed during a tap; tap refused",
            )
            what = "payment not confirmed, tap again when the terminal is repaired" if purse else "access refused"
            decision = Decision(
                accepted=False,
                kind="tap.incomplete",
                reason_code="sam_unavailable",
                message=f"Terminal fault (security module): {what}. Call maintenance",
                logged=False,
                detail={"why": str(exc)},
            )
        if decision.logged:
            try:
                logged = self.event_log.append(
                    now,
                    decision.kind,
                    asn=decision.asn,
                    reason_code=decision.reason_code,
                    message=decision.message,
                    detail=decision.detail,
                )
            except Exception as exc:
                log_event(
                    log,
                    "log.write_failed",
                    logging.ERROR,
                    error=str(exc),
                    msg="could not write the event log; refusing the tap",
                )
                message = (
                    "Terminal fault: cannot record, access refused. Call maintenance"
                    if self.purse is None
                    else cannot_record_message(
                        {"pos": "pos.purchase", "topup": "topup.load"}[self.config.terminal.kind]
                    )
                )
                decision = Decision(
                    accepted=False,
                    kind=decision.kind,
                    reason_code=LOG_UNAVAILABLE,
                    message=message,
                    asn=decision.asn,
                    logged=False,
                )
            else:
                decision.detail["seq"] = logged.seq
        log_event(
            log,
            "tap.decided",
            terminal=self.config.terminal.id,
            kind=decision.kind,
            asn=decision.asn,
            reason=decision.reason_code,
            msg=decision.message,
        )
        relay = self.config.door.open_seconds if self.config.terminal.kind == "door" else None
        if decision.logged and relay is not None:
            self._first_card(decision, now)
        present(decision, self.outputs, relay)
        self._shown()
        self.print_receipt(decision, now)
        return decision

    def print_receipt(self, decision: Decision, now: dt.datetime) -> None:
        """A receipt for money that moved; a printer fault (paper out, cable) is logged, the sale stands."""
        if self.printer is None:
            return
        from terminal.receipt import print_receipt, receipt_lines, reopen_later

        lines = receipt_lines(decision, self.config, now.astimezone(self.config.terminal.timezone))
        if not lines:
            return
        try:
            print_receipt(self.printer, lines)
        except Exception as exc:  # noqa: BLE001 - any printer failure; the money record is already logged
            log_event(
                log,
                "printer.failed",
                logging.WARNING,
                error=f"{type(exc).__name__}: {exc}",
                msg="receipt not printed; the transaction itself is recorded",
            )
            reopen_later(self.printer)

    def handle_shift(self, request: SignIn | SignOut, now: dt.datetime) -> Decision:
        """签到/签退 on the keypad: no card involved. Logged before it is shown; a sign-in that cannot be logged
        did not happen (sales would otherwise carry a batch the log never opened)."""
        canteen = self.purse.canteen
        if isinstance(request, SignIn):
            decision = canteen.sign_in(self.config, request.operator, request.password, now)
        else:
            decision = canteen.sign_out(now)
        try:
            self.event_log.append(
                now,
                decision.kind,
                asn=None,
                reason_code=decision.reason_code,
                message=decision.message,
                detail=decision.detail,
            )
        except Exception as exc:
            log_event(log, "log.write_failed", logging.ERROR, error=str(exc), msg="could not record a sign-in/out")
            decision = Decision(
                False, "pos.deny", LOG_UNAVAILABLE, "Terminal fault: cannot record, not signed in or out", logged=False
            )
        log_event(log, "shift.changed", kind=decision.kind, reason=decision.reason_code, msg=decision.message)
        present(decision, self.outputs, None)
        self._shown()
        return decision

    def live_status(self) -> dict:
        """What only the running terminal knows, for the status page."""
        status = dict(self.reader_status)
        if self.reader_problem is not None:
            status["state"] = f"unavailable: {self.reader_problem}"
        return {"reader": status}

    def _shown(self) -> None:
        self._idle_shown, self._screen_since = None, time.monotonic()

    def show(self, screen) -> None:
        self.outputs.show(screen)
        self._shown()

    def idle(self, clock: Callable[[], dt.datetime]) -> None:
        """The idle screen (time and terminal name), once the last result has been on long enough; looked at
        once a second, and not at all for outputs without a screen of their own (the console)."""
        if not getattr(self.outputs, "shows_idle", True) or time.monotonic() - self._idle_checked < 1:
            return
        if getattr(self.outputs, "door_alarm", None) is not None or self.reader_problem is not None:
            return  # an open alarm or a reader fault stays on the display
        self._idle_checked = time.monotonic()
        local = clock().astimezone(self.config.terminal.timezone)
        minute = local.replace(second=0, microsecond=0)
        if self._idle_shown == minute or time.monotonic() - self._screen_since < RESULT_SECONDS:
            return
        self.outputs.show(idle_screen(self.config.terminal.name, local))
        self._idle_shown = minute

    def log_door_events(self) -> None:
        """Door events (REX, alarms, door closed) from the door hardware, into the log from this thread."""
        take = getattr(self.outputs, "take_door_events", None)
        for when, event in take() if take is not None else []:
            try:
                self.event_log.append(
                    when,
                    event.kind,
                    asn=None,
                    reason_code=event.kind.split(".")[-1],
                    message=event.message,
                    detail=event.detail,
                )
            except Exception as exc:
                log_event(
                    log,
                    "log.write_failed",
                    logging.ERROR,
                    error=str(exc),
                    kind=event.kind,
                    msg="could not write a door event to the log",
                )
            self._shown()  # the alarm screen the door hardware just put up
            level = logging.WARNING if event.kind in ("door.held_open", "door.forced_open") else logging.INFO
            log_event(log, event.kind, level, terminal=self.config.terminal.id, msg=event.message, **event.detail)

    def entry_refusal(self, request: Request) -> str | None:
        """Limits known before any card is tapped: refused as the amount is entered, not after the tap."""
        if isinstance(request, (SignIn, SignOut)) and self.config.terminal.kind != "pos":
            return "Sign-in is for canteen tills"
        if isinstance(request, Charge):
            pos = self.config.pos
            if pos.operators and self.purse is not None and self.purse.canteen.shift() is None:
                return "No cashier signed in: sign in first (s NUMBER PASSWORD)"
            if request.amount > pos.max_purchase:
                return (
                    f"{format_yuan(request.amount)} is over the limit of {format_yuan(pos.max_purchase)} per "
                    "purchase: enter a smaller amount"
                )
            if request.amount > pos.offline_limit:
                return (
                    f"{format_yuan(request.amount)} is over the offline limit of "
                    f"{format_yuan(pos.offline_limit)} per card: enter a smaller amount"
                )
        if isinstance(request, Load) and request.amount > self.config.topup.max_load:
            return (
                f"{format_yuan(request.amount)} is over the top-up limit of "
                f"{format_yuan(self.config.topup.max_load)}: enter a smaller amount"
            )
        return None

    def _reader_unavailable(self, why: str) -> None:
        """Show and log an outage once; the door stays shut (nothing is granted without a reader)."""
        if self.reader_problem is None:
            log_event(
                log,
                "reader.unavailable",
                logging.ERROR,
                terminal=self.config.terminal.id,
                error=why,
                msg="card reader unavailable: door kept shut, waiting for the reader to come back",
            )
            self.outputs.light("red")
            self.outputs.display(READER_UNAVAILABLE)
        self.reader_problem = why

    def _reader_available(self, reader: Reader) -> None:
        if self.reader_problem is not None:
            log_event(
                log,
                "reader.available",
                terminal=self.config.terminal.id,
                reader=reader.name,
                msg="card reader available again: serving taps",
            )
            self.outputs.light("off")
            self.outputs.display("Ready: tap your card")
            self.reader_problem = None

    def _wait_for_card(self, reader: Reader, poll: float, stop: threading.Event) -> CardConnection | None:
        """reader.wait_for_card, but an unavailable reader is shown, logged and waited for instead of raising."""
        try:
            conn = reader.wait_for_card(poll)
        except ReaderError as exc:
            self._reader_unavailable(str(exc))
            stop.wait(poll)
            return None
        self._reader_available(reader)
        if conn is None:
            try:
                self.event_log.checkpoint_if_due()  # no card: the moment for the log's checkpoint fsyncs
            except Exception as exc:  # noqa: BLE001 - a failed checkpoint loses nothing; the next append says more
                log_event(
                    log,
                    "log.checkpoint_failed",
                    logging.WARNING,
                    error=str(exc),
                    msg="could not checkpoint the event log; retried when next idle",
                )
        return conn

    def _serve_card(
        self,
        reader: Reader,
        conn: CardConnection,
        clock,
        stop: threading.Event,
        poll: float,
        request: Request | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> Decision:
        conn = self.deadline.wrap(conn)  # the same wrapper handle_tap uses: close() knows of a late command
        try:
            decision = self.handle_tap(conn, clock(), request, getattr(reader, "direction", None))
        finally:
            conn.close()
        while not stop.is_set():
            heartbeat()
            self.log_door_events()
            try:
                if reader.wait_for_removal(poll):
                    break
            except ReaderError as exc:
                self._reader_unavailable(str(exc))
                break  # the card is gone with the reader; the tap loop waits for the reader to come back
        return decision

    def run(
        self,
        reader: Reader,
        clock: Callable[[], dt.datetime],
        stop: threading.Event,
        poll_seconds: float = 0.5,
        keypad: Keypad | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        """Serve taps until `stop` is set. Each card is handled once per presentation.

        A POS or top-up terminal serves the keypad's requests: each waits for a card, and a tap that was
        interrupted keeps the same request waiting for the card to come back. A reader that fails (pcscd
        restarted, reader unplugged) is waited for: the loop goes on, the door stays shut. `heartbeat` is
        called on every turn of the loop (the systemd watchdog): a loop that hangs stops calling it.
        """
        self.clock = clock
        if self.purse is not None and keypad is not None:
            self.purse.ask_pin = lambda amount, note: self._ask_pin(keypad, stop, heartbeat, amount, note)
        log_event(
            log,
            "terminal.started",
            terminal=self.config.terminal.id,
            kind=self.config.terminal.kind,
            reader=reader.name,
            msg="terminal ready for taps",
        )
        self.reader_status = {"name": reader.name, "state": "ready for taps"}
        refreshed = 0.0
        while not stop.is_set():
            heartbeat()
            if time.monotonic() - refreshed >= CONFIG_REFRESH_SECONDS:
                self.refresh_config()
                refreshed = time.monotonic()
            self.log_door_events()
            if self.normally_open_configured():
                self.update_normally_open(clock())  # (the clock is read only by a door that has a schedule)
            self.idle(clock)
            if self.purse is None:
                conn = self._wait_for_card(reader, poll_seconds, stop)
                if conn is not None:
                    self._serve_card(reader, conn, clock, stop, poll_seconds, heartbeat=heartbeat)
                continue
            item = keypad.next_request(poll_seconds / 2)
            if item is None:
                conn = self._wait_for_card(reader, poll_seconds / 2, stop)
                if conn is not None:
                    self._tap_without_amount(reader, conn, clock, stop, poll_seconds, heartbeat)
                continue
            request = self._keypad_item(item)
            if isinstance(request, (SignIn, SignOut)):
                self.handle_shift(request, clock())
                continue
            if request is not None and not isinstance(request, Cancel):
                self._serve_request(reader, keypad, request, clock, stop, poll_seconds, heartbeat)
        self.reader_status = {"name": reader.name, "state": "stopped"}
        log_event(log, "terminal.stopped", terminal=self.config.terminal.id, msg="terminal stopped")

    def _ask_pin(self, keypad: Keypad, stop: threading.Event, heartbeat, amount: int, note: str):
        """The holder types the spending password while the card stays on the reader: a Pin, or None (cancelled,
        or nothing entered within [pos].card_wait_seconds). The display shows asterisks only."""
        from terminal.spending_pin import PinFormatError, parse_pin

        keypad.pin_mode(True)
        try:
            self.show(pin_screen(amount, 0, note))
            deadline = time.monotonic() + self.config.pos.card_wait_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                heartbeat()
                item = keypad.next_request(0.05)
                if isinstance(item, Cancel):
                    return None
                if isinstance(item, PinTyped):
                    self.show(pin_screen(amount, item.count, note))
                elif isinstance(item, PinEntered):
                    try:
                        return parse_pin(item.digits)
                    except PinFormatError as exc:
                        self.show(pin_screen(amount, 0, note, error=str(exc)))
                    finally:
                        item.digits[:] = bytes(len(item.digits))
            return None
        finally:
            keypad.pin_mode(False)

    def _keypad_item(self, item, waiting: Request | None = None) -> Request | None:
        """Show what the keypad sent; the request it completes, if any, once it is within the limits."""
        waiting_text = waiting.prompt() if waiting is not None else ""
        if isinstance(item, Typed):
            self.show(entry_screen(item.text, waiting=waiting_text))
            return None
        if isinstance(item, Rejected):
            self.show(entry_screen("", error=item.message))
            log_event(log, "keypad.rejected", logging.INFO, msg=item.message)
            return None
        refusal = self.entry_refusal(item)
        if refusal is not None:
            self.show(entry_screen("", error=refusal))
            return None
        return item

    def _tap_without_amount(
        self,
        reader: Reader,
        conn: CardConnection,
        clock,
        stop: threading.Event,
        poll: float,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        fixed = None
        if self.config.terminal.kind == "pos":
            fixed = fixed_price(self.config.pos, clock().astimezone(self.config.terminal.timezone))
        if fixed is not None:  # 定额: the period's fixed price, no typing; a typed amount still overrides it
            self._serve_card(reader, conn, clock, stop, poll, Charge(fixed[1]), heartbeat)
            return
        if self.config.keypad.tap_without_amount == "balance":
            self._serve_card(reader, conn, clock, stop, poll, Balance(), heartbeat)
            return
        conn.close()
        self.show(notice_screen("Enter the amount first, then tap the card", "请先输入金额"))
        while not stop.is_set():
            heartbeat()
            try:
                if reader.wait_for_removal(poll):
                    return
            except ReaderError as exc:
                self._reader_unavailable(str(exc))
                return

    def _serve_request(
        self,
        reader: Reader,
        keypad: Keypad,
        request: Request,
        clock,
        stop: threading.Event,
        poll: float,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.outputs.light("off")
        self.show(prompt_screen(request.prompt(), getattr(request, "amount", None)))
        waited = 0.0
        while not stop.is_set():
            heartbeat()
            item = keypad.next_request(0)
            if isinstance(item, Cancel):
                self.show(notice_screen("Cancelled", "已取消"))
                return
            if item is not None:
                replacement = self._keypad_item(item, waiting=request)
                if replacement is not None:
                    # A corrected amount replaces the one waiting: only the latest is ever charged.
                    log_event(
                        log,
                        "keypad.replaced",
                        old=request.prompt(),
                        new=replacement.prompt(),
                        msg="the cashier replaced the request waiting for the card",
                    )
                    request, waited = replacement, 0.0
                    self.show(prompt_screen(request.prompt(), getattr(request, "amount", None)))
                continue
            step = min(poll, 0.2)  # the keypad is looked at between these waits
            conn = self._wait_for_card(reader, step, stop)
            if conn is None:
                waited += step
                if waited >= self.config.pos.card_wait_seconds:
                    self.show(notice_screen("No card presented: cancelled", "未刷卡,已取消"))
                    return
                continue
            decision = self._serve_card(reader, conn, clock, stop, poll, request, heartbeat)
            if decision.kind != "tap.incomplete":
                return
            waited = 0.0
