"""Faults a real site has: slow, silent and broken cards, cards pcscd cannot use, a PSAM pulled mid-sale, pcscd
dying and the reader going away. Each is survived: the tap is refused with a reason, the door stays shut, the
terminal keeps serving (docs/install.md, "Faults the terminal survives")."""

import logging
import threading
import time

import pytest

from common.config import load_config
from simulator.inprocess import InProcessReader
from simulator.psam import load_psam, psam_from_keystore, write_psam
from simulator.vpcd import VirtualIcc
from terminal.event_log import EventLog
from terminal.keypad import Charge
from terminal.reader import ReaderError, ReopeningReader
from terminal.readers.pcsc import PcscReader
from tests.support import MONDAY_10AM, make_card, make_card_v2, make_keystore, make_sam, make_terminal

DEADLINE_MS = 300
RUN_SLOT = 2  # the run-loop tests use the second vpcd entry (slots 2 and 3), which a restart can leave out


@pytest.fixture
def sam():
    return make_sam()


def tap(pcscd, vicc, term, card, slot=0, **faults):
    """Insert `card` (with vpcd faults), decide once as the tap loop does, leave the card in the field."""
    icc = vicc(slot)
    icc.insert(card, **faults)
    reader = PcscReader(pcscd.slots[slot].name)
    try:
        conn = reader.wait_for_card(5)
        assert conn is not None, "pcscd did not see the card"
        conn = term.deadline.wrap(conn)
        try:
            return term.handle_tap(conn, MONDAY_10AM), icc
        finally:
            conn.close()
    finally:
        reader.close()


def next_card_is_served(pcscd, icc, term, card, slot=0):
    icc.remove()
    reader = PcscReader(pcscd.slots[slot].name)
    try:
        assert reader.wait_for_removal(3)
        icc.insert(card)
        conn = reader.wait_for_card(5)
        try:
            return term.handle_tap(conn, MONDAY_10AM)
        finally:
            conn.close()
    finally:
        reader.close()


def test_command_timeout_is_configured(tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "door", command_timeout_ms=DEADLINE_MS)
    assert term.config.reader.command_timeout_ms == DEADLINE_MS and term.deadline.timeout == DEADLINE_MS / 1000
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (tmp_path / "door.toml").read_text().replace(f"command_timeout_ms = {DEADLINE_MS}", "command_timeout_ms = 0")
    )
    with pytest.raises(Exception, match=r"\[reader\]\.command_timeout_ms = 0 is not 50\.\.10000"):
        load_config(bad)


@pytest.mark.parametrize(
    "fault",
    [
        dict(stall_at=2, stall_seconds=60),  # ACCESS READ answered only after a minute
        dict(truncate_at=2, truncate_to=0),  # an empty answer: vpcd waits for it forever
        dict(truncate_at=2, truncate_to=1),  # one byte: no status word
    ],
    ids=["stalled", "0-byte", "partial"],
)
def test_slow_or_broken_answer_is_refused_and_the_next_card_served(pcscd, vicc, tmp_path, sam, fault):
    term, screen = make_terminal(tmp_path, sam, "door", command_timeout_ms=DEADLINE_MS)
    card = make_card(sam)
    decision, icc = tap(pcscd, vicc, term, card, **fault)
    assert not decision.accepted and decision.reason_code == "card_timeout"
    assert decision.message == "Card did not answer in time: access refused, tap again"
    assert term.event_log.events() == [] and "relay" not in screen.getvalue()
    again = next_card_is_served(pcscd, icc, term, card)
    assert again.accepted and [e.kind for e in term.event_log.events()] == ["door.grant"]


def test_purchase_whose_debit_answer_is_lost_is_settled_at_the_next_tap(pcscd, vicc, tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "pos", command_timeout_ms=DEADLINE_MS)
    card = make_card_v2(sam, opening_balance=10000)
    icc = vicc(0)
    icc.insert(card, truncate_at=3, truncate_to=0)  # SELECT, INITIALIZE, DEBIT: the card debits, the answer is lost
    reader = PcscReader(pcscd.slots[0].name)
    try:
        conn = term.deadline.wrap(reader.wait_for_card(5))
        first = term.handle_tap(conn, MONDAY_10AM, Charge(1250))
        conn.close()
        assert first.reason_code == "card_timeout" and first.message.endswith("tap again to finish")
        assert card.state.purse.balance == 8750
        icc.remove()
        assert reader.wait_for_removal(3)
        icc.insert(card)
        conn = reader.wait_for_card(5)
        second = term.handle_tap(conn, MONDAY_10AM, Charge(1250))
        conn.close()
    finally:
        reader.close()
    assert second.accepted and second.message == "Paid 12.50"
    assert [e.kind for e in term.event_log.events()] == ["pos.purchase.intent", "pos.purchase"]


class _AtrOnly:
    """A card with an ATR pcscd cannot use: it never gets an APDU."""

    def __init__(self, atr: bytes):
        self.atr = atr

    def power_on(self):
        pass

    def power_off(self):
        pass

    def transmit(self, apdu: bytes) -> bytes:
        raise AssertionError("pcscd must not pass APDUs to a card it could not connect")


def test_card_with_an_unusable_atr_shows_card_not_supported(pcscd, vicc, tmp_path, sam):
    term, screen = make_terminal(tmp_path, sam, "door")
    decision, _ = tap(pcscd, vicc, term, _AtrOnly(b"\x00\x01\x02"))
    assert decision.reason_code == "not_supported" and decision.message.startswith("Card not supported")
    assert "Card not supported" in screen.getvalue()


class _Answers6985ToAccessRead:
    def __init__(self, card):
        self.card, self.atr = card, card.atr

    def power_on(self):
        self.card.power_on()

    def power_off(self):
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x69\x85" if apdu[:2] == b"\x80\x3a" else self.card.transmit(apdu)


def test_6985_tells_the_holder_to_see_the_card_office(tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "door")
    reader = InProcessReader()
    reader.tap(_Answers6985ToAccessRead(make_card(sam)))
    decision = term.handle_tap(reader.wait_for_card(0), MONDAY_10AM)
    assert decision.reason_code == "application_inactive" and "tap again" not in decision.message
    assert decision.message == (
        "Card blocked: its application is not active or used up. Take the card to the card office"
    )


class _PullsPsamAtDebit:
    """The user card; when DEBIT reaches it the PSAM is pulled out of its slot (the card still debits)."""

    def __init__(self, card, psam_icc):
        self.card, self.atr, self.psam_icc = card, card.atr, psam_icc
        self.armed = True

    def power_on(self):
        self.card.power_on()

    def power_off(self):
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        if self.armed and apdu[:2] == b"\x80\x54":
            self.armed = False
            self.psam_icc.remove()
        return self.card.transmit(apdu)


def test_psam_pulled_mid_sale_refuses_that_sale_and_settles_it_at_the_next_tap(pcscd, vicc, tmp_path):
    from sam.interface import KeyPurpose, KeyUsage
    from sam.pcsc_sam import PcscSam
    from sam.software import SoftwareSam

    psam_file = tmp_path / "psam.json"
    keystore = make_keystore()
    pos_keys = keystore.restricted_per_purpose(
        {KeyPurpose.PURCHASE: {KeyUsage.MAC, KeyUsage.VERIFY}, KeyPurpose.LOAD: {KeyUsage.REVERSAL}}
    )
    write_psam(psam_file, psam_from_keystore(pos_keys, label="test pos"))
    psam_icc = vicc(1)
    psam_icc.insert(load_psam(psam_file))
    psam = PcscSam(pcscd.slots[1].name, timeout=3)
    try:
        term, screen = make_terminal(tmp_path, psam, "pos")
        card = make_card(SoftwareSam(keystore), opening_balance=10000)
        reader = InProcessReader()
        reader.tap(_PullsPsamAtDebit(card, psam_icc))
        first = term.handle_tap(reader.wait_for_card(0), MONDAY_10AM, Charge(1250))
        assert not first.accepted and first.reason_code == "sam_unavailable"
        assert "Call maintenance" in first.message and card.state.purse.balance == 8750
        # The PSAM is put back; the holder taps again: the sale is settled once, nothing charged twice.
        probe = PcscReader(pcscd.slots[1].name)
        try:
            assert probe.wait_for_removal(3)
        finally:
            probe.close()
        psam_icc.insert(load_psam(psam_file))
        reader.remove()
        reader.tap(card)
        second = term.handle_tap(reader.wait_for_card(0), MONDAY_10AM, Charge(1250))
        assert second.accepted and second.message == "Paid 12.50"
        assert card.state.purse.balance == 8750
        assert [e.kind for e in term.event_log.events()] == ["pos.purchase.intent", "pos.purchase"]
    finally:
        psam.close()


# --- the tap loop under a failing reader --------------------------------------------------------------


class RunningDoor:
    """A door terminal's tap loop on a thread, as `onecard terminal run` runs it, on a reader it reopens."""

    def __init__(self, pcscd, tmp_path, sam):
        self.tmp_path, self.stop, self.ready = tmp_path, threading.Event(), threading.Event()
        self.name = pcscd.slots[RUN_SLOT].name
        self.sam, self.screen, self.error = sam, None, None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _serve(self):
        term, self.screen = make_terminal(self.tmp_path, self.sam, "door", command_timeout_ms=DEADLINE_MS)
        reader = ReopeningReader("pcsc", lambda: PcscReader(self.name))
        self.ready.set()
        try:
            term.run(reader, lambda: MONDAY_10AM, self.stop, 0.2)
        except BaseException as exc:  # the test fails on it: the loop must never end by itself
            self.error = exc
        finally:
            reader.close()
            term.event_log.close()

    def grants(self) -> int:
        with EventLog.open_readonly(self.tmp_path / "door.db") as log:
            return sum(e.kind == "door.grant" for e in log.events())

    def wait(self, condition, what: str, timeout: float = 15):
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.thread.is_alive(), f"the tap loop ended ({self.error!r}) while waiting for {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s; screen:\n{self.screen.getvalue()}"
            time.sleep(0.05)

    def unavailable_shown(self) -> int:
        return self.screen.getvalue().count("Reader unavailable")

    def close(self):
        self.stop.set()
        self.thread.join(10)
        assert self.error is None


@pytest.fixture
def restored_pcscd(pcscd):
    """The session pcscd, brought back with all its readers whatever the test did to it."""
    yield pcscd
    if pcscd._proc.popen.poll() is not None or len(_listed()) < len(pcscd.slots):
        pcscd.restart()


def _listed() -> list[str]:
    from terminal.readers.pcsc import list_readers

    try:
        return list_readers()
    except ReaderError:
        return []


def insert_when_listening(icc: VirtualIcc, card, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return icc.insert(card)
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def grant_one(door, icc, card, expected: int):
    insert_when_listening(icc, card)
    door.wait(lambda: door.grants() >= expected, f"grant {expected}")
    icc.remove()


def test_terminal_survives_pcscd_being_killed_and_restarted(restored_pcscd, vicc, tmp_path, sam, caplog):
    caplog.set_level(logging.INFO, logger="onecard.terminal")
    pcscd, card = restored_pcscd, make_card(sam)
    icc = vicc(RUN_SLOT)
    door = RunningDoor(pcscd, tmp_path, sam)
    try:
        grant_one(door, icc, card, 1)
        pcscd.kill()  # as a crash does: no goodbye to the clients
        door.wait(door.unavailable_shown, "'Reader unavailable' on the display")
        time.sleep(1)  # a few turns of the loop without pcscd: it waits, it does not exit
        pcscd.restart()
        grant_one(door, icc, card, 2)
    finally:
        door.close()
    events = caplog.text
    assert "event=reader.unavailable" in events and "event=reader.available" in events
    assert "relay: door unlocked" in door.screen.getvalue()


def test_reader_unplugged_then_plugged_back(restored_pcscd, vicc, tmp_path, sam):
    pcscd, card = restored_pcscd, make_card(sam)
    icc = vicc(RUN_SLOT)
    door = RunningDoor(pcscd, tmp_path, sam)
    try:
        grant_one(door, icc, card, 1)
        pcscd.restart(n_readers=RUN_SLOT)  # pcscd comes back without the door's reader
        assert door.name not in _listed()
        door.wait(door.unavailable_shown, "'Reader unavailable' on the display")
        pcscd.restart()
        grant_one(door, icc, card, 2)
    finally:
        door.close()


def test_reader_absent_at_start_is_waited_for(restored_pcscd, vicc, tmp_path, sam):
    pcscd, card = restored_pcscd, make_card(sam)
    pcscd.restart(n_readers=RUN_SLOT)
    door = RunningDoor(pcscd, tmp_path, sam)
    try:
        door.wait(door.unavailable_shown, "'Reader unavailable' on the display")
        pcscd.restart()
        grant_one(door, vicc(RUN_SLOT), card, 1)
    finally:
        door.close()
