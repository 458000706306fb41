"""The POS and top-up terminals as they run: keypad requests, taps, torn taps that wait for the card to return."""

import dataclasses
import datetime as dt
import io
import os
import pty
import threading
import time
import tty

import pytest

from common.errors import UserError
from simulator.inprocess import InProcessReader
from terminal.event_log import EventLog
from terminal.keypad import Balance, Cancel, Charge, ConsoleKeypad, Load, Rejected, Undo, parse_request
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
    pad = ConsoleKeypad("pos", io.StringIO("twelve\n12.00\n"))
    rejected = pad.next_request(2)
    assert isinstance(rejected, Rejected) and "not understood" in rejected.message
    assert pad.next_request(2) == Charge(1200)


class Clock:
    def __init__(self):
        self.now = MONDAY_10AM

    def __call__(self):
        self.now += dt.timedelta(seconds=1)
        return self.now


class Running:
    """A terminal serving keypad lines in its own thread, which owns its SQLite connections as the process would."""

    def __init__(self, tmp_path, sam, kind, reader, lines, keypad=None, config_changes=None):
        self.stop, self.ready = threading.Event(), threading.Event()
        keypad = keypad or ConsoleKeypad(kind, io.StringIO(lines))
        self.thread = threading.Thread(target=self._serve, args=(tmp_path, sam, kind, reader, keypad, config_changes))
        self.thread.start()
        assert self.ready.wait(10)

    def _serve(self, tmp_path, sam, kind, reader, keypad, config_changes):
        self.term, self.screen = make_terminal(tmp_path, sam, kind)
        if config_changes:
            self.term.config = dataclasses.replace(self.term.config, **config_changes)
            if self.term.purse is not None:  # as refresh_config does
                self.term.purse.config = self.term.config
        self.ready.set()
        try:
            self.term.run(reader, Clock(), self.stop, 0.05, keypad)
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
        assert pos.shows("Paid 12.00")
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
        assert pos.shows("Insufficient balance for 12.00: top up first")
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


# --- the cashier's keys: a serial keypad through a real pseudo-terminal, evdev from recorded events ------------


class SerialPad:
    """The far end of a pty, playing a serial keypad; the terminal opens the other end with pyserial."""

    def __init__(self, kind="pos"):
        from terminal.keypad import SerialKeypad

        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.keypad = SerialKeypad(kind, os.ttyname(slave), 9600)
        os.close(slave)

    def press(self, keys: bytes):
        os.write(self.master, keys)

    def close(self):
        self.keypad.close()
        os.close(self.master)


def drain(keypad, until, timeout=5):
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = keypad.next_request(0.05)
        if item is not None:
            seen.append(item)
            if until(item):
                break
    return seen


def test_serial_keypad_through_a_pty_types_corrects_and_reports_errors():
    from terminal.keypad import Rejected, Typed

    pad = SerialPad()
    try:
        pad.press(b"12,50\r")
        seen = drain(pad.keypad, lambda i: isinstance(i, Rejected))
        assert [i.text for i in seen if isinstance(i, Typed)] == ["1", "12", "12,", "12,5", "12,50"]
        assert "'12,50' not understood" in seen[-1].message
        pad.press(b"-3\r")
        assert "not understood" in drain(pad.keypad, lambda i: isinstance(i, Rejected))[-1].message
        pad.press(b"abc\r")
        assert isinstance(drain(pad.keypad, lambda i: isinstance(i, Rejected))[-1], Rejected)
        pad.press(b"99\x08\x0812.5\x7f50\r\n")  # backspaces, then 12.50; CR LF is one Enter
        seen = drain(pad.keypad, lambda i: isinstance(i, Charge))
        assert seen[-1] == Charge(1250) and Typed("") in seen and Typed("12.") in seen
        pad.press(b"7\x18" + b"8\r")  # clear, then 8
        assert drain(pad.keypad, lambda i: isinstance(i, Charge))[-1] == Charge(800)
        pad.press(b"5\x1b")  # cancel
        assert drain(pad.keypad, lambda i: isinstance(i, Cancel))[-1] == Cancel()
        assert pad.keypad.next_request(0.2) is None  # nothing more: CR LF gave one request
    finally:
        pad.close()


def test_evdev_keys_decoded_from_recorded_input_events():
    """Events as a USB numeric keypad sends them (press, auto-repeat, release, SYN), built with evdev's own types."""
    from evdev import InputEvent, ecodes

    from terminal.keypad import BACKSPACE, ENTER, KeyLine, keys_from_events

    def press(name, repeat=False):
        code = ecodes.ecodes[name]
        events = [
            InputEvent(1, 0, ecodes.EV_MSC, ecodes.MSC_SCAN, 458840),
            InputEvent(1, 0, ecodes.EV_KEY, code, 1),
            InputEvent(1, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0),
        ]
        if repeat:
            events.append(InputEvent(1, 5, ecodes.EV_KEY, code, 2))
        return events + [InputEvent(1, 9, ecodes.EV_KEY, code, 0), InputEvent(1, 9, ecodes.EV_SYN, 0, 0)]

    recorded = [
        e
        for name in ("KEY_KP1", "KEY_KP2", "KEY_KPDOT", "KEY_KP5", "KEY_KP5", "KEY_BACKSPACE", "KEY_KP0", "KEY_KPENTER")
        for e in press(name)
    ] + press("KEY_KP9", repeat=True)
    keys = keys_from_events(recorded)
    assert keys == ["1", "2", ".", "5", "5", BACKSPACE, "0", ENTER, "9", "9"]
    line = KeyLine("pos")
    items = [item for key in keys[:8] for item in line.key(key)]
    assert items[-1] == Charge(1250)
    assert keys_from_events(press("KEY_KPASTERISK") + press("KEY_KPENTER")) == ["u", ENTER]
    assert keys_from_events(press("KEY_ESC")) == ["cancel"]
    assert keys_from_events(press("KEY_F13")) == []


def test_evdev_device_that_is_absent_is_one_line_naming_keypad():
    from terminal.keypad import open_keypad

    with pytest.raises(UserError) as exc:
        open_keypad("pos", "evdev", "/dev/input/event-no-such")
    assert "[keypad]" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UserError) as exc:
        open_keypad("pos", "evdev", "No Such Numeric Keypad")
    assert "[keypad]" in str(exc.value) and "no input device has that name" in str(exc.value)


def test_till_without_a_usable_key_source_refuses_to_start():
    from terminal.keypad import open_keypad

    with open(os.devnull) as null:
        for driver in ("console", "stdin"):
            with pytest.raises(UserError) as exc:
                open_keypad("pos", driver, stdin=null)
            assert str(exc.value).startswith(f'[keypad] driver = "{driver}"')
    with pytest.raises(UserError) as exc:
        open_keypad("pos", "serial", "/dev/ttyNOSUCH")
    assert "[keypad]" in str(exc.value)


def test_a_corrected_amount_while_waiting_for_the_card_replaces_it(tmp_path, sam):
    """12.50 waits for the card; the cashier types 8 and Enter: 8.00 is charged, once, and 12.50 never."""
    card = make_card(sam, opening_balance=10000)
    reader = InProcessReader()
    pad = SerialPad()
    pos = Running(tmp_path, sam, "pos", reader, "", keypad=pad.keypad)
    try:
        pad.press(b"12.50\r")
        assert pos.shows("Pay 12.50: please tap your card")
        pad.press(b"8")
        assert pos.shows("Pay 12.50: please tap your card - new amount: 8")
        pad.press(b"\r")
        assert pos.shows("Pay 8.00: please tap your card")
        reader.tap(card)
        assert pos.shows("Paid 8.00")
        reader.remove()
    finally:
        events = pos.finish()
        pad.close()
    assert card.state.purse.balance == 9200
    assert [(e.kind, e.detail.get("amount")) for e in events if e.kind == "pos.purchase"] == [("pos.purchase", 800)]


def test_limits_are_checked_as_the_amount_is_entered(tmp_path, sam):
    reader = InProcessReader()
    pos = Running(tmp_path, sam, "pos", reader, "150.00\n12,50\n")
    try:
        assert pos.shows("150.00 is over the limit of 100.00 per purchase: enter a smaller amount")
        assert pos.shows("'12,50' not understood")
        assert "please tap" not in pos.screen.getvalue()  # no sale was started
    finally:
        events = pos.finish()
    assert events == []


def test_offline_limit_checked_at_entry(tmp_path, sam):
    from common.config import PosSection

    reader = InProcessReader()
    pos = Running(
        tmp_path,
        sam,
        "pos",
        reader,
        "90\n",
        config_changes={
            "pos": PosSection(max_purchase=10000, offline_limit=5000, undo_window_seconds=60, card_wait_seconds=30)
        },
    )
    try:
        assert pos.shows("90.00 is over the offline limit of 50.00 per card")
    finally:
        pos.finish()


# A balance inquiry settles and runs card actions; GET BALANCE carries no MAC, so its figure is never shown.
@pytest.mark.parametrize(
    "setting, shown",
    [
        ("balance", "Balance not shown: this terminal cannot verify the card's balance; no transaction pending"),
        ("ask", "Enter the amount first, then tap the card"),
    ],
)
def test_card_tapped_with_no_amount(tmp_path, sam, setting, shown):
    from common.config import KeypadSection

    card = make_card(sam, opening_balance=10000)
    reader = InProcessReader()
    pos = Running(
        tmp_path,
        sam,
        "pos",
        reader,
        "",
        keypad=QueueKeypad(),
        config_changes={"keypad": KeypadSection(tap_without_amount=setting)},
    )
    try:
        reader.tap(card)
        assert pos.shows(shown)
        reader.remove()
    finally:
        events = pos.finish()
    assert events == [] and card.state.purse.balance == 10000


class QueueKeypad:
    """A key source with nothing typed (the cashier has not touched the keys)."""

    def next_request(self, timeout):
        time.sleep(timeout)
        return None

    def close(self):
        pass
