"""The POS and top-up terminals as they run: keypad requests, taps, torn taps that wait for the card to return."""
import datetime as dt
import io
import threading
import time

import pytest

from common.errors import UserError
from simulator.inprocess import InProcessReader
from terminal.event_log import EventLog
from terminal.keypad import Balance, Cancel, Charge, ConsoleKeypad, Load, Undo, parse_request
from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal


@pytest.fixture
def sam():
    return make_sam()


def test_keypad_lines():
    assert parse_request("12.5", "pos") == Charge(1250)
    assert parse_request(" 50 ", "topup") == Load(5000)
    assert parse_request("u", "pos") == Undo()
    assert parse_request("B", "topup") == Balance()
    assert parse_request("c", "pos") == Cancel()
    for bad in ("abc", "-3", "1.234", "u"):
        kind = "topup" if bad == "u" else "pos"
        with pytest.raises(UserError):
            parse_request(bad, kind)


def test_console_keypad_reports_bad_lines_and_keeps_going():
    errors = io.StringIO()
    pad = ConsoleKeypad("pos", io.StringIO("twelve\n12.00\n"), errors)
    assert pad.next_request(2) == Charge(1200)
    assert "not understood" in errors.getvalue()


class Clock:
    def __init__(self):
        self.now = MONDAY_10AM

    def __call__(self):
        self.now += dt.timedelta(seconds=1)
        return self.now


class Running:
    """A terminal serving keypad lines in its own thread, which owns its SQLite connections as the process would."""

    def __init__(self, tmp_path, sam, kind, reader, lines):
        self.stop, self.ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(tmp_path, sam, kind, reader, lines))
        self.thread.start()
        assert self.ready.wait(10)

    def _serve(self, tmp_path, sam, kind, reader, lines):
        self.term, self.screen = make_terminal(tmp_path, sam, kind)
        self.ready.set()
        try:
            self.term.run(reader, Clock(), self.stop, 0.05, ConsoleKeypad(kind, io.StringIO(lines)))
        finally:
            self.term.event_log.close()

    def shows(self, text):
        return wait_for(lambda: text in self.screen.getvalue())

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        with EventLog.open_readonly(self.term.event_log.path) as log:
            return log.events()


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sale_with_a_torn_tap_waits_for_the_card_and_charges_once(tmp_path, sam):
    card = make_card(sam, opening_balance=10000)
    reader = InProcessReader()
    pos = Running(tmp_path, sam, "pos", reader, "12.00\n")
    try:
        assert pos.shows("Pay 12.00: please tap your card")
        reader.tap(card, tear_after=3)  # the DEBIT reaches the card, its answer does not reach the terminal
        assert pos.shows("Card removed too soon: tap again to finish")
        reader.tap(card)
        assert pos.shows("Paid 12.00 - balance 88.00")
        reader.remove()
    finally:
        events = pos.finish()
    assert card.state.purse.balance == 8800
    assert [e.kind for e in events] == ["pos.purchase.intent", "pos.purchase"]


def test_refusal_is_logged_and_shown(tmp_path, sam):
    card = make_card(sam, opening_balance=100)
    reader = InProcessReader()
    pos = Running(tmp_path, sam, "pos", reader, "12.00\n")
    try:
        assert pos.shows("Pay 12.00")
        reader.tap(card)
        assert pos.shows("Insufficient balance: 1.00 left")
        reader.remove()
    finally:
        events = pos.finish()
    assert [(e.kind, e.reason_code) for e in events] == [("pos.deny", "insufficient_balance")]


def test_top_up_terminal_loads(tmp_path, sam):
    card = make_card(sam, opening_balance=0)
    reader = InProcessReader()
    topup = Running(tmp_path, sam, "topup", reader, "50\n")
    try:
        assert topup.shows("Top-up 50.00")
        reader.tap(card)
        assert topup.shows("Loaded 50.00 - balance 50.00")
        reader.remove()
    finally:
        topup.finish()
    assert card.state.purse.balance == 5000
