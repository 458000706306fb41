"""The PC/SC reader against real pcscd + vpcd, with simulated cards plugged in through simulator.vpcd."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from simulator import tap_control
from simulator.vpcd import VirtualIcc, VpcdUnreachable
from terminal.reader import CardRemoved, ReaderError
from terminal.readers.pcsc import PcscReader, list_readers

REPO = Path(__file__).resolve().parents[1]
T1_ATR = bytes.fromhex("3B80800101")  # T=0 and T=1 offered, TCK present
T0_ATR = bytes.fromhex("3B00")  # no interface bytes: T=0 only


class EchoCard:
    """Answers every APDU with its data field + 9000 and remembers what it processed."""

    def __init__(self, atr: bytes = T1_ATR):
        self.atr = atr
        self.processed: list[bytes] = []
        self.power_ons = 0
        self.powered = False

    def power_on(self) -> None:
        self.power_ons += 1
        self.powered = True

    def power_off(self) -> None:
        self.powered = False

    def transmit(self, apdu: bytes) -> bytes:
        self.processed.append(apdu)
        return apdu[5 : 5 + apdu[4]] + b"\x90\x00" if len(apdu) > 5 else b"\x90\x00"


class T0Card(EchoCard):
    """A T=0 card: READ BINARY wants Le=0x10 (else 6C10); GET DATA answers 61xx, data comes by GET RESPONSE."""

    DATA = bytes(range(0x30))

    def __init__(self):
        super().__init__(T0_ATR)
        self._pending = b""

    def transmit(self, apdu: bytes) -> bytes:
        self.processed.append(apdu)
        ins = apdu[1]
        if ins == 0xB0:
            return self.DATA[:16] + b"\x90\x00" if apdu[4] == 0x10 else b"\x6c\x10"
        if ins == 0xCA:
            self._pending = self.DATA
            return b"\x61\x20"
        if ins == 0xC0:
            chunk, self._pending = self._pending[: apdu[4]], self._pending[apdu[4] :]
            return chunk + (bytes([0x61, len(self._pending)]) if self._pending else b"\x90\x00")
        return b"\x6d\x00"


@pytest.fixture
def reader(pcscd):
    opened = []

    def make(slot: int = 0) -> PcscReader:
        r = PcscReader(pcscd.slots[slot].name)
        opened.append(r)
        return r

    yield make
    for r in opened:
        r.close()


def test_insert_is_seen_with_the_atr(vicc, reader):
    r, icc, card = reader(0), vicc(0), EchoCard()
    icc.insert(card)
    conn = r.wait_for_card(3)
    assert conn is not None
    assert conn.atr == T1_ATR
    assert card.powered and card.power_ons >= 1


def test_wait_for_card_times_out_on_an_empty_reader(reader):
    r = reader(1)
    start = time.monotonic()
    assert r.wait_for_card(0.3) is None
    assert 0.3 <= time.monotonic() - start < 1.5


def test_apdus_round_trip_byte_for_byte(vicc, reader):
    r, icc, card = reader(0), vicc(0), EchoCard()
    icc.insert(card)
    conn = r.wait_for_card(3)
    sent = [
        bytes.fromhex("00A4040007A0000000031010"),
        bytes.fromhex("80CA9F7F00"),
        bytes([0x00, 0xDA, 0x01, 0x02, 0xFF]) + bytes(range(255)),
        bytes.fromhex("00B00000"),
    ]
    answers = [conn.transmit(apdu) for apdu in sent]
    assert answers == [bytes.fromhex("A00000000310109000"), b"\x90\x00", bytes(range(255)) + b"\x90\x00", b"\x90\x00"]
    assert card.processed == sent
    assert icc.apdu_count == 4


def test_removal_is_seen_and_ends_the_exchange(vicc, reader):
    r, icc, card = reader(2), vicc(2), EchoCard()
    icc.insert(card)
    conn = r.wait_for_card(3)
    assert conn.transmit(bytes.fromhex("00010000")) == b"\x90\x00"
    assert r.wait_for_removal(0.3) is False
    icc.remove()
    assert not card.powered
    with pytest.raises(CardRemoved):
        conn.transmit(bytes.fromhex("00020000"))
    assert r.wait_for_removal(3) is True
    with pytest.raises(CardRemoved):
        conn.transmit(bytes.fromhex("00030000"))
    assert len(card.processed) == 1


@pytest.mark.parametrize("k", [1, 3])
def test_tear_after_k_loses_the_kth_answer_after_the_card_processed_it(vicc, reader, k):
    r, icc, card = reader(0), vicc(0), EchoCard()
    icc.insert(card, tear_after=k)
    conn = r.wait_for_card(3)
    for i in range(1, k):
        assert conn.transmit(bytes([0x00, 0x10, i, 0x00])) == b"\x90\x00"
    with pytest.raises(CardRemoved):
        conn.transmit(bytes([0x00, 0x10, k, 0x00]))
    assert [a[2] for a in card.processed] == list(range(1, k + 1))
    assert icc.torn and icc.wait_removed(1) and not card.powered
    assert r.wait_for_removal(3)
    with pytest.raises(CardRemoved):
        conn.transmit(bytes([0x00, 0x10, k + 1, 0x00]))
    assert len(card.processed) == k

    # The same card tapped again is a fresh, working connection.
    icc.insert(card)
    conn = r.wait_for_card(3)
    assert conn.transmit(bytes.fromhex("00200000")) == b"\x90\x00"
    assert len(card.processed) == k + 1


def test_t0_get_response_and_wrong_le_are_handled_by_the_reader(vicc, reader):
    r, icc, card = reader(3), vicc(3), T0Card()
    icc.insert(card)
    conn = r.wait_for_card(3)
    assert conn.protocol_name == "T=0"
    assert conn.transmit(bytes.fromhex("00B0000000")) == T0Card.DATA[:16] + b"\x90\x00"
    assert conn.transmit(bytes.fromhex("80CA000000")) == T0Card.DATA + b"\x90\x00"
    ins = [a[1] for a in card.processed]
    assert ins == [0xB0, 0xB0, 0xCA, 0xC0, 0xC0]  # 48 bytes arrive as 61 20, then 61 10


def test_round_trip_has_no_nagle_or_delayed_ack_stall(vicc, reader):
    r, icc = reader(1), vicc(1)
    icc.insert(EchoCard())
    conn = r.wait_for_card(3)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        conn.transmit(bytes.fromhex("00A4040002AABB"))
        times.append(time.perf_counter() - t)
    # A delayed-ACK stall costs 40 ms per APDU; the healthy path is well under 1 ms.
    assert statistics.median(times) < 0.010


def test_no_matching_reader_names_the_readers_and_the_fix(pcscd):
    with pytest.raises(ReaderError) as err:
        PcscReader("no-such-reader")
    message = str(err.value)
    assert "no PC/SC reader matching 'no-such-reader'" in message
    assert pcscd.slots[0].name in message and "plugged in" in message


def test_list_readers_sees_every_vpcd_slot(pcscd):
    assert set(pcscd.names) <= set(list_readers())


def test_pcscd_not_running_is_a_reader_error_with_the_fix(tmp_path):
    # pcsc-lite reads PCSCLITE_CSOCK_NAME once per process, so a pcscd-less world needs its own process.
    code = (
        "from terminal.reader import ReaderError\n"
        "from terminal.readers.pcsc import PcscReader, list_readers\n"
        "for call in (lambda: PcscReader('x'), list_readers):\n"
        "    try:\n        call()\n    except ReaderError as e:\n        print(e)\n"
    )
    env = dict(os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "nobody-home.comm"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stderr
    for line in lines:
        assert line.startswith("pcscd is not running") and "start pcscd: systemctl start pcscd" in line


def test_opensc_tool_lists_the_vpcd_readers(pcscd):
    tool = shutil.which("opensc-tool")
    assert tool, "opensc-tool is missing; install it: apt-get install opensc (or run deploy/setup-debian.sh)"
    out = subprocess.run([tool, "--list-readers"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in pcscd.names), out.stdout


def test_insert_without_a_vpcd_listening_says_how_to_fix(pcscd):
    free = max(pcscd.ports) + 100
    with pytest.raises(VpcdUnreachable, match="start pcscd with a vpcd reader on that port"):
        VirtualIcc(free).insert(EchoCard())


@pytest.fixture
def tap_daemon(pcscd, tmp_path):
    cards: dict[str, EchoCard] = {}

    def load_card(path: str) -> EchoCard:
        doc = json.loads(Path(path).read_text())
        cards[path] = card = EchoCard(bytes.fromhex(doc["atr"]))
        return card

    control = tmp_path / "ctl"
    daemon = tap_control.TapDaemon(pcscd.slots[2].port, control, load_card)
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps({"atr": T1_ATR.hex()}))
    yield control, card_file, cards
    daemon.shutdown()
    thread.join(5)
    reader = PcscReader(pcscd.slots[2].name)
    try:
        assert reader.wait_for_removal(3)
    finally:
        reader.close()


def test_tap_daemon_taps_tears_and_removes(tap_daemon, reader):
    control, card_file, cards = tap_daemon
    r = reader(2)
    status = tap_control.tap(card_file, control, tear_after=2)
    assert status["inserted"] and status["card"] == str(card_file)
    conn = r.wait_for_card(3)
    conn.transmit(bytes.fromhex("00010000"))
    with pytest.raises(CardRemoved):
        conn.transmit(bytes.fromhex("00020000"))
    assert len(cards[str(card_file)].processed) == 2
    status = tap_control.status(control)
    assert status["torn"] and not status["inserted"] and status["removal_reason"] == "torn-after-apdu-2"
    assert r.wait_for_removal(3)

    tap_control.tap(card_file, control)
    assert r.wait_for_card(3) is not None
    assert tap_control.remove(control)["inserted"] is False
    assert r.wait_for_removal(3)


def test_tap_hold_removes_the_card_by_itself(tap_daemon, reader):
    control, card_file, _cards = tap_daemon
    r = reader(2)
    tap_control.tap(card_file, control, hold=0.3)
    assert r.wait_for_card(3) is not None
    assert r.wait_for_removal(3)
    assert tap_control.status(control)["removal_reason"] == "hold-expired"


def test_tap_cli_reports_errors_in_one_line(tap_daemon, tmp_path, capsys):
    import argparse

    from common.errors import UserError
    from simulator import tap_cli

    control, card_file, _cards = tap_daemon
    parser = argparse.ArgumentParser()
    tap_cli.add_subcommands(parser.add_subparsers(dest="command", required=True), load_card=None)
    args = parser.parse_args(["status", "--control", str(control)])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["port"] > 0
    args = parser.parse_args(["tap", str(tmp_path / "missing.json"), "--control", str(control)])
    with pytest.raises(UserError, match="cannot load card .*missing.json"):
        args.handler(args)
    args = parser.parse_args(["remove", "--control", str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="no tap daemon at .*; start one: onecard sim serve"):
        args.handler(args)


def test_a_card_that_crashes_leaves_the_field_and_is_logged(vicc, reader, caplog):
    class BrokenCard(EchoCard):
        def transmit(self, apdu: bytes) -> bytes:
            raise RuntimeError("simulated applet bug")

    r, icc = reader(1), vicc(1)
    icc.insert(BrokenCard())
    conn = r.wait_for_card(3)
    with caplog.at_level("ERROR", logger="onecard.sim.vpcd"), pytest.raises(CardRemoved):
        conn.transmit(bytes.fromhex("00010000"))
    assert icc.wait_removed(1) and icc.removal_reason == "card-error"
    assert "event=card-error" in caplog.text and "simulated applet bug" in caplog.text


@pytest.mark.parametrize("apdu", ["00", "01", "02", "80"])
def test_a_one_byte_command_is_answered_and_the_slot_keeps_working(vicc, reader, apdu):
    # vpcd frames a 1-byte command like one of its control codes: it must be answered (67 00, wrong length, as a
    # card would), never left waiting, and the card must go on answering afterwards.
    card = EchoCard()
    vicc().insert(card)
    conn = reader().wait_for_card(5)
    assert conn is not None
    answers: list[bytes] = []
    worker = threading.Thread(target=lambda: answers.append(conn.transmit(bytes.fromhex(apdu))), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), f"transmit of {apdu} hung"
    assert answers == [bytes.fromhex("6700")]
    assert conn.transmit(bytes.fromhex("00A4040002AABB")) == bytes.fromhex("AABB9000")
    assert card.powered
