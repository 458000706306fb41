"""NfcReader through nfcpy's real udp driver, against simulated cards behind simulator.nfc_udp.VirtualPicc."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.card import ATR as ONECARD_ATR
from simulator.card import ForeignCard
from simulator.nfc_udp import HLTA, REQA, WTX_GRANTED, WUPA, Apdu, StorageTag, TypeAPicc, VirtualPicc, historical_bytes
from terminal.event_log import EventLog
from terminal.reader import CardRemoved, ReaderError
from terminal.readers.nfc import NfcConnection, NfcReader, NotOneCardConnection, parse_ats
from tests.support import MONDAY_10AM, make_card, make_card_v2, make_sam, make_terminal


class EchoCard:
    """Answers with the command's data field + 9000 (READ BINARY: `read_size` bytes of a pattern) and records APDUs."""

    atr = ONECARD_ATR

    def __init__(self, read_size: int = 0, delay: float = 0.0):
        self.read_size = read_size
        self.delay = delay  # seconds the chip "computes" per APDU
        self.processed: list[bytes] = []
        self.powered = False

    def power_on(self) -> None:
        self.powered = True

    def power_off(self) -> None:
        self.powered = False

    def transmit(self, apdu: bytes) -> bytes:
        self.processed.append(apdu)
        if self.delay:
            time.sleep(self.delay)
        if apdu[1:2] == b"\xb0":
            return bytes(i * 7 % 251 for i in range(self.read_size)) + b"\x90\x00"
        return apdu[5 : 5 + apdu[4]] + b"\x90\x00" if len(apdu) > 5 else b"\x90\x00"


@pytest.fixture
def picc():
    made = []

    def make(**kwargs) -> VirtualPicc:
        p = VirtualPicc(label="test", **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def reader():
    opened = []

    def make(p: VirtualPicc) -> NfcReader:
        r = NfcReader(p.path)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


@pytest.fixture(autouse=True)
def no_emulator_errors(caplog):
    caplog.set_level(logging.INFO, logger="onecard.sim.nfc")
    yield
    bad = [r.getMessage() for r in caplog.records if r.name == "onecard.sim.nfc" and r.levelno >= logging.ERROR]
    assert not bad, f"the simulated card logged errors: {bad}"


def record_frames(r: NfcReader) -> list[tuple[bytes, bytes | None]]:
    """Every (command frame, response frame) nfcpy's udp driver exchanges from now on."""
    frames = []
    device = r._clf.device
    original = device.send_cmd_recv_rsp

    def recording(target, data, timeout):
        response = original(target, data, timeout)
        frames.append((bytes(data), None if response is None else bytes(response)))
        return response

    device.send_cmd_recv_rsp = recording
    return frames


def test_apdus_round_trip_with_the_cards_atr_and_uid(picc, reader):
    p = picc()
    r = reader(p)
    card = EchoCard()
    p.insert(card, uid=bytes.fromhex("08A1B2C3"))
    conn = r.wait_for_card(3)
    assert isinstance(conn, NfcConnection)
    assert conn.atr == ONECARD_ATR  # ATS historical bytes rebuilt into the ATR a PC/SC reader would show
    assert conn.uid == bytes.fromhex("08A1B2C3") and card.powered
    sent = [
        bytes.fromhex("00A4040007A0000000031010"),
        bytes.fromhex("80CA9F7F00"),
        bytes([0x00, 0xDA, 0x01, 0x02, 0xFF]) + bytes(range(255)),
        bytes.fromhex("00200000"),
    ]
    answers = [conn.transmit(apdu) for apdu in sent]
    assert answers == [bytes.fromhex("A00000000310109000"), b"\x90\x00", bytes(range(255)) + b"\x90\x00", b"\x90\x00"]
    assert card.processed == sent and p.apdu_count == 4


@pytest.mark.parametrize("uid", ["04112233445566", "04112233445566778899"])
def test_double_and_triple_size_uids_go_through_cascade_levels(picc, reader, uid):
    p, card = picc(), EchoCard()
    r = reader(p)
    p.insert(card, uid=bytes.fromhex(uid))
    conn = r.wait_for_card(3)
    assert conn.uid == bytes.fromhex(uid)
    assert conn.transmit(bytes.fromhex("0001000002AABB")) == bytes.fromhex("AABB9000")


def test_long_commands_and_answers_are_chained_in_both_directions(picc, reader):
    p = picc(fsci=0)  # FSC 16: the reader must split every command into 13-byte I-blocks
    r = reader(p)
    card = EchoCard(read_size=300)
    p.insert(card)
    conn = r.wait_for_card(3)
    frames = record_frames(r)
    command = bytes([0x00, 0xD6, 0x00, 0x00, 40]) + os.urandom(40)
    assert conn.transmit(command) == command[5:] + b"\x90\x00"
    assert card.processed[-1] == command
    assert conn.transmit(bytes.fromhex("00B0000000")) == bytes(i * 7 % 251 for i in range(300)) + b"\x90\x00"
    sent_blocks = [f for f, _ in frames]
    assert all(len(f) <= 16 - 2 for f in sent_blocks)  # PCB + INF within FSC minus CRC
    assert [f[0] & 0x10 for f in sent_blocks[:4]] == [0x10, 0x10, 0x10, 0x00]  # 45 bytes = 13 + 13 + 13 + 6
    answers = [a for _, a in frames]
    assert [a[0] & 0xF0 for a in answers[:3]] == [0xA0, 0xA0, 0xA0]  # R(ACK) for each chained command block
    chained = [a for a in answers[4:] if a[0] & 0xE2 == 0x02]
    assert [len(a) - 1 for a in chained] == [253, 49]  # FSD 256 - PCB - CRC, then the rest with SW
    assert chained[0][0] & 0x10 and not chained[1][0] & 0x10


def test_slow_card_asks_for_waiting_time_extension(picc, reader):
    p = picc(fwi=4)  # FWT 4.8 ms; the card needs far longer
    r = reader(p)
    card = EchoCard(delay=0.05)
    p.insert(card)
    conn = r.wait_for_card(3)
    frames = record_frames(r)
    assert conn.transmit(bytes.fromhex("0001000001AA")) == bytes.fromhex("AA9000")
    assert any(a is not None and a[:1] == b"\xf2" for _, a in frames)


def test_removal_is_seen_and_ends_the_exchange(picc, reader):
    p, card = picc(), EchoCard()
    r = reader(p)
    p.insert(card)
    conn = r.wait_for_card(3)
    assert conn.transmit(bytes.fromhex("00010000")) == b"\x90\x00"
    assert r.wait_for_removal(0.3) is False
    p.remove()
    assert not card.powered and p.removal_reason == "removed"
    assert r.wait_for_removal(3) is True
    with pytest.raises(CardRemoved):
        conn.transmit(bytes.fromhex("00020000"))
    assert len(card.processed) == 1
    assert r.wait_for_card(0) is None


@pytest.mark.parametrize("k", [1, 3])
def test_tear_after_k_loses_the_kth_answer_after_the_card_processed_it(picc, reader, k):
    p, card = picc(), EchoCard()
    r = reader(p)
    p.insert(card, tear_after=k)
    conn = r.wait_for_card(3)
    for i in range(1, k):
        assert conn.transmit(bytes([0x00, 0x10, i, 0x00])) == b"\x90\x00"
    with pytest.raises(CardRemoved):
        conn.transmit(bytes([0x00, 0x10, k, 0x00]))
    assert [a[2] for a in card.processed] == list(range(1, k + 1))
    assert p.torn and p.wait_removed(1) and not card.powered and p.removal_reason == f"torn-after-apdu-{k}"
    assert r.wait_for_removal(0) is True  # a failed exchange means the card is treated as gone at once
    # The same card presented again is a fresh, working connection.
    p.insert(card)
    conn = r.wait_for_card(3)
    assert conn.transmit(bytes.fromhex("00200000")) == b"\x90\x00"
    assert len(card.processed) == k + 1


def test_a_new_poll_makes_the_old_connection_stale(picc, reader):
    p, card = picc(), EchoCard()
    r = reader(p)
    p.insert(card)
    first = r.wait_for_card(3)
    second = r.wait_for_card(3)  # the card is still there: the field is reset and it is activated again
    assert second is not None and p.activations == 2
    with pytest.raises(CardRemoved):
        first.transmit(bytes.fromhex("00010000"))
    assert second.transmit(bytes.fromhex("00010000")) == b"\x90\x00"
    second.close()
    with pytest.raises(ReaderError):
        second.transmit(bytes.fromhex("00010000"))


def test_tag_without_iso_dep_answers_function_not_supported(picc, reader):
    p = picc()
    r = reader(p)
    p.insert(StorageTag())
    conn = r.wait_for_card(3)
    assert isinstance(conn, NotOneCardConnection)
    assert conn.atr == bytes.fromhex("3B8F8001804F0CA0000003060300030000000068")  # PC/SC: ISO 14443A-3, Ultralight
    assert conn.transmit(bytes.fromhex("00A4040009F04F4E454341524401")) == b"\x6a\x81"
    assert r.wait_for_removal(0.2) is False  # READ of page 0 answers: still there
    p.remove()
    assert r.wait_for_removal(3) is True


def test_missing_reader_names_the_path_and_the_fix():
    with pytest.raises(ReaderError) as err:
        NfcReader("tty:NOSUCHPORT:pn532")
    message = str(err.value)
    assert message.startswith("no NFC reader at 'tty:NOSUCHPORT:pn532' (")
    assert "check the reader is plugged in / the path, e.g." in message and "tty:AMA0:pn532" in message
    assert "\n" not in message


# ---- door and attendance terminals over nfcpy ----


@pytest.fixture
def sam():
    return make_sam()


def tap(p: VirtualPicc, r: NfcReader, term, card, tear_after=None, now=MONDAY_10AM):
    p.insert(card, tear_after=tear_after)
    conn = r.wait_for_card(3)
    assert conn is not None, "nfcpy did not find the card"
    try:
        decision = term.handle_tap(conn, now)
    finally:
        conn.close()
    apdus = p.apdu_count
    p.remove()
    assert r.wait_for_removal(3)
    return decision, apdus


def test_door_grants_a_genuine_card_in_two_apdus(picc, reader, tmp_path, sam):
    p = picc()
    r = reader(p)
    term, screen = make_terminal(tmp_path, sam, "door")
    decision, apdus = tap(p, r, term, make_card_v2(sam))
    assert decision.accepted and decision.message == "Welcome, Zhang Wei"
    assert apdus == 2
    assert [e.kind for e in term.event_log.events()] == ["door.grant"]
    assert "relay: door unlocked for 4 s" in screen.getvalue()


def test_door_refuses_a_phone_without_rfid_sim(picc, reader, tmp_path, sam):
    p = picc()
    r = reader(p)
    term, screen = make_terminal(tmp_path, sam, "door")
    decision, _ = tap(p, r, term, ForeignCard())
    assert decision.reason_code == "not_supported" and decision.message.startswith("Card not supported")
    assert "relay" not in screen.getvalue()


def test_door_refuses_a_tag_that_cannot_carry_apdus(picc, reader, tmp_path, sam):
    p = picc()
    r = reader(p)
    term, _ = make_terminal(tmp_path, sam, "door")
    decision, _ = tap(p, r, term, StorageTag())
    assert decision.reason_code == "not_supported" and decision.message.startswith("Card not supported")


def test_door_refuses_a_blacklisted_card(picc, reader, tmp_path, sam):
    p = picc()
    r = reader(p)
    term, _ = make_terminal(tmp_path, sam, "door")
    card = make_card_v2(sam)
    term.blacklist.apply_snapshot(1, [(card.state.asn, "lost")])
    decision, _ = tap(p, r, term, card)
    assert decision.reason_code == "blacklisted" and not decision.accepted


@pytest.mark.parametrize("k", [1, 2])
def test_card_pulled_mid_decision_keeps_the_door_shut_and_logs_nothing(picc, reader, tmp_path, sam, k):
    p = picc()
    r = reader(p)
    term, screen = make_terminal(tmp_path, sam, "door")
    card = make_card_v2(sam, path=tmp_path / "card.json")
    decision, apdus = tap(p, r, term, card, tear_after=k)
    assert decision.reason_code == "removed" and not decision.accepted
    assert apdus == k and p.torn
    assert term.event_log.events() == []
    assert "relay" not in screen.getvalue()
    # The torn ACCESS READ was committed on the card before its answer was lost; the next tap counts on from it.
    assert card.state.access_counter == (1 if k == 2 else 0)
    again, _ = tap(p, r, term, card)
    assert again.accepted and again.detail["counter"] == card.state.access_counter


def test_attendance_in_and_out_over_nfcpy(picc, reader, tmp_path, sam):
    p = picc()
    r = reader(p)
    term, _ = make_terminal(tmp_path, sam, "attendance")
    card = make_card(sam)
    t0 = MONDAY_10AM - dt.timedelta(hours=1)
    first, _ = tap(p, r, term, card, now=t0)
    assert (first.kind, first.message) == ("attendance.in", "Zhang Wei: clocked in at 09:00")
    out, _ = tap(p, r, term, card, now=t0 + dt.timedelta(hours=9))
    assert out.kind == "attendance.out"
    assert [e.kind for e in term.event_log.events()] == ["attendance.in", "attendance.out"]


def test_terminal_run_loop_decides_once_per_presentation(picc, tmp_path, sam):
    """Terminal.run as `onecard terminal run` does, with the card left on the reader for a while."""
    p = picc()
    card = make_card(sam)
    stop, ready = threading.Event(), threading.Event()
    clock_times = iter([MONDAY_10AM, MONDAY_10AM + dt.timedelta(hours=8)])

    def serve():
        # SQLite connections belong to the thread that opened them, as in the real terminal process.
        term, _ = make_terminal(tmp_path, sam, "attendance")
        r = NfcReader(p.path)
        ready.set()
        try:
            term.run(r, lambda: next(clock_times), stop, 0.2)
        finally:
            r.close()
            term.event_log.close()

    def kinds():
        with EventLog.open_readonly(tmp_path / "attendance.db") as log:
            return [e.kind for e in log.events()]

    def wait_for_events(n):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(kinds()) < n:
            time.sleep(0.05)

    runner = threading.Thread(target=serve)
    runner.start()
    try:
        assert ready.wait(10)
        p.insert(card)
        wait_for_events(1)
        activations = p.activations
        # Held on the reader: presence checks keep it activated, no second decision.
        time.sleep(0.5)
        assert kinds() == ["attendance.in"] and p.activations == activations
        p.remove()
        p.insert(card)
        wait_for_events(2)
    finally:
        p.remove()
        stop.set()
        runner.join(10)
    assert kinds() == ["attendance.in", "attendance.out"]


# ---- the card-side protocol machine ----


def activate(picc: TypeAPicc, fsdi: int = 8) -> bytes | None:
    """REQA, anticollision and select at every cascade level, then RATS (ISO-DEP cards only); returns the ATS."""
    assert picc.receive(REQA) == picc.atqa
    for level, cl in enumerate(picc._cl):
        sel = bytes([(0x93, 0x95, 0x97)[level]])
        assert picc.receive(sel + b"\x20") == cl
        sak = picc.receive(sel + b"\x70" + cl)
    assert sak == bytes([picc.sak])
    return picc.receive(bytes([0xE0, fsdi << 4])) if picc.iso_dep else None


def test_ats_carries_fsci_fwi_and_the_atr_historical_bytes():
    picc = TypeAPicc(bytes.fromhex("08010203"), fsci=5, fwi=6, historical=historical_bytes(ONECARD_ATR))
    ats = activate(picc)
    assert ats == bytes.fromhex("0D75006000") + b"ONECARD1"
    assert parse_ats(ats) == (64, 6, b"ONECARD1")


@pytest.mark.parametrize(
    "ats, expected",
    [
        ("01", (32, 4, b"")),  # TL only: ISO defaults, FSCI 2 and FWI 4
        ("0578807002", (256, 7, b"")),  # TA, TB, TC present
        ("0462A102", (32, 10, b"")),  # no TA: FWI is in the third byte, not the fourth
        ("055180F0AA", (24, 4, b"\xaa")),  # no TB: default FWI; historical bytes after TC
        ("053100F0AA", (24, 4, b"\xaa")),  # FWI 15 is RFU: default FWI
    ],
)
def test_parse_ats_follows_t0(ats, expected):
    assert parse_ats(bytes.fromhex(ats)) == expected


@pytest.mark.parametrize("ats", ["", "05788070", "0270", "0320"])
def test_parse_ats_rejects_malformed(ats):
    with pytest.raises(ValueError):
        parse_ats(bytes.fromhex(ats))


def test_block_protocol_retransmits_acks_and_deselects():
    picc = TypeAPicc(bytes.fromhex("08010203"))
    activate(picc)
    assert picc.receive(bytes.fromhex("B2")) == bytes.fromhex("A3")  # presence check before any I-block
    assert picc.receive(bytes.fromhex("0200010000")) == Apdu(bytes.fromhex("00010000"))
    answer = picc.respond(b"\x90\x00")
    assert answer == bytes.fromhex("029000")
    assert picc.receive(bytes.fromhex("B2")) == answer  # R(NAK) with our block number: answer lost, send again
    assert picc.receive(bytes.fromhex("B3")) == bytes.fromhex("A2")  # R(NAK) with the other one: R(ACK)
    assert picc.receive(bytes.fromhex("0B00")) is None  # CID present though the ATS offers none: ignored
    assert picc.receive(bytes.fromhex("C2")) == bytes.fromhex("C2")
    assert picc.receive(REQA) is None and picc.receive(WUPA) == picc.atqa  # halted: only WUPA wakes it


def test_halt_and_unknown_commands_silence_the_card():
    picc = TypeAPicc(bytes.fromhex("08010203"))
    picc.receive(REQA)
    picc.receive(bytes.fromhex("9320"))
    picc.receive(bytes.fromhex("9370") + picc._cl[0])
    assert picc.receive(HLTA) is None and picc.state == "halt"
    assert picc.receive(REQA) is None


def test_wtx_grant_is_recognised_only_when_asked_for():
    picc = TypeAPicc(bytes.fromhex("08010203"))
    activate(picc)
    assert picc.receive(bytes.fromhex("F201")) is None
    picc.receive(bytes.fromhex("0200010000"))
    assert picc.wtx_request(3) == bytes.fromhex("F203")
    assert picc.receive(bytes.fromhex("F203")) is WTX_GRANTED


frames = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([REQA, WUPA, HLTA, b"\x93\x20", b"\xe0\x80", b"\xe0\x0f", b"\xc2", b"\xf2\x01", b"\xb2", b"\xa3"]),
    st.builds(lambda pcb, inf: bytes([pcb]) + inf, st.integers(0, 255), st.binary(max_size=20)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames, max_size=30), st.booleans())
def test_garbage_frames_never_crash_the_card_and_it_can_still_be_activated(sequence, iso_dep):
    picc = TypeAPicc(bytes.fromhex("08010203"), iso_dep=iso_dep, fsci=0, storage=None if iso_dep else StorageTag())
    for frame in sequence:
        result = picc.receive(frame)
        assert result is None or result is WTX_GRANTED or isinstance(result, (bytes, Apdu))
        if isinstance(result, Apdu):
            for block in _blocks(picc, picc.respond(result.data + b"\x90\x00")):
                assert len(block) <= picc.fsd - 2
    picc.field_off()
    ats = activate(picc, fsdi=0)
    if iso_dep:
        assert picc.receive(bytes.fromhex("0200010000")) == Apdu(bytes.fromhex("00010000"))
    else:
        assert ats is None and picc.receive(b"\x30\x00") == bytes(16)


def _blocks(picc: TypeAPicc, first: bytes):
    block = first
    yield block
    while block[0] & 0x10:
        block = picc.receive(bytes([0xA2 | (block[0] & 1) ^ 1]))
        yield block


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=20))
def test_garbage_datagrams_leave_the_simulated_card_in_service(datagrams):
    with VirtualPicc() as p:
        card = EchoCard()
        p.insert(card)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", p.port))
                s.sendto(b"106A " + d.hex().encode(), ("127.0.0.1", p.port))
        finally:
            s.close()
        r = NfcReader(p.path)
        try:
            conn = r.wait_for_card(3)
            assert conn is not None and conn.transmit(bytes.fromhex("0001000001AB")) == bytes.fromhex("AB9000")
        finally:
            r.close()
