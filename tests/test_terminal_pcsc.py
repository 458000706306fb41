"""Door and attendance terminals over real pcscd + vpcd, with simulated cards tapped into virtual readers."""

import datetime as dt
import threading
import time

import pytest

from simulator.card import ForeignCard
from terminal.event_log import EventLog
from terminal.readers.pcsc import PcscReader
from tests.support import MONDAY_10AM, make_card, make_card_v2, make_sam, make_terminal


@pytest.fixture
def sam():
    return make_sam()


def decide_over_pcsc(pcscd, vicc, term, card, tear_after=None, now=MONDAY_10AM):
    icc = vicc(0)
    icc.insert(card, tear_after=tear_after)
    reader = PcscReader(pcscd.slots[0].name)
    try:
        conn = reader.wait_for_card(5)
        assert conn is not None, "pcscd did not see the card"
        try:
            return term.handle_tap(conn, now), icc.apdu_count
        finally:
            conn.close()
    finally:
        reader.close()


def test_door_grant_over_pcscd(pcscd, vicc, tmp_path, sam):
    term, screen = make_terminal(tmp_path, sam, "door")
    decision, apdus = decide_over_pcsc(pcscd, vicc, term, make_card_v2(sam))
    assert decision.accepted and decision.message == "Welcome, Zhang Wei"
    assert apdus == 2
    assert "relay: door unlocked" in screen.getvalue()


def test_phone_without_rfid_sim_over_pcscd(pcscd, vicc, tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "door")
    decision, _ = decide_over_pcsc(pcscd, vicc, term, ForeignCard())
    assert decision.reason_code == "not_supported"


def test_blacklisted_over_pcscd(pcscd, vicc, tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "door")
    card = make_card(sam)
    term.blacklist.apply_snapshot(1, [(card.state.asn, "lost")])
    decision, _ = decide_over_pcsc(pcscd, vicc, term, card)
    assert decision.reason_code == "blacklisted"


@pytest.mark.parametrize("k", [1, 2])
def test_card_pulled_mid_decision_over_pcscd(pcscd, vicc, tmp_path, sam, k):
    term, screen = make_terminal(tmp_path, sam, "door")
    decision, apdus = decide_over_pcsc(pcscd, vicc, term, make_card_v2(sam), tear_after=k)
    assert decision.reason_code == "removed" and not decision.accepted
    assert apdus == k
    assert term.event_log.events() == []
    assert "relay" not in screen.getvalue()


def test_attendance_loop_over_pcscd(pcscd, vicc, tmp_path, sam):
    """Terminal.run as `onecard terminal run` does: wait for a card, decide once, wait for it to leave."""
    card = make_card(sam)
    stop = threading.Event()
    ready = threading.Event()
    built = {}
    clock_times = iter([MONDAY_10AM, MONDAY_10AM + dt.timedelta(hours=8)])

    def serve():
        # SQLite connections belong to the thread that opened them, as in the real terminal process.
        term, screen = make_terminal(tmp_path, sam, "attendance")
        reader = PcscReader(pcscd.slots[1].name)
        built.update(screen=screen)
        ready.set()
        try:
            term.run(reader, lambda: next(clock_times), stop, 0.2)
        finally:
            reader.close()
            term.event_log.close()

    def kinds():
        with EventLog.open_readonly(tmp_path / "attendance.db") as log:
            return [e.kind for e in log.events()]

    runner = threading.Thread(target=serve)
    runner.start()
    assert ready.wait(10)
    icc = vicc(1)
    try:
        for n, expected in enumerate(("attendance.in", "attendance.out"), start=1):
            icc.insert(card)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(kinds()) < n:
                time.sleep(0.05)
            icc.remove()
            assert kinds()[-1] == expected
            time.sleep(0.6)  # pcscd notices the removal within its 400 ms poll
    finally:
        stop.set()
        runner.join(10)
    assert kinds() == ["attendance.in", "attendance.out"]
    screen = built["screen"].getvalue()
    assert "clocked in at 10:00" in screen and "clocked out at 18:00" in screen


def test_opensc_tool_talks_to_the_simulated_card(pcscd, vicc, sam):
    """A standard PC/SC tool sees the simulated RFID-SIM in the vpcd reader and SELECTs its application."""
    import shutil
    import subprocess

    tool = shutil.which("opensc-tool")
    assert tool, "opensc-tool is missing; install it: apt-get install opensc (or run deploy/setup-debian.sh)"
    card = make_card(sam)
    vicc(0).insert(card)
    time.sleep(0.6)  # pcscd notices a new card within its 400 ms poll
    select = "00:A4:04:00:09:F0:4F:4E:45:43:41:52:44:01:00"
    out = subprocess.run([tool, "--reader", "0", "--send-apdu", select], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "SW1=0x90, SW2=0x00" in out.stdout, out.stdout
    assert card.state.asn.hex().upper() in out.stdout.replace(" ", "").upper(), out.stdout
