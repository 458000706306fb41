"""A full disk under a POS and a top-up terminal: every sale or load is refused cleanly ("Terminal fault: cannot
record", nothing charged), one the card already made is settled at its next tap once there is room again, a restart
says the disk is full, and money is conserved throughout. Runs on a real, small tmpfs (the tests run as root)."""

import datetime as dt
import errno
import subprocess
from pathlib import Path

import pytest

from common.db import DatabaseError
from sam.sam_state import StateFile
from sam.software import SoftwareSam
from simulator.inprocess import InProcessReader
from terminal.event_log import EventLog
from terminal.keypad import Balance, Charge, Load, Undo
from terminal.purse_flow import MONEY_KINDS
from tests.support import MONDAY_10AM, make_card, make_keystore, make_terminal
from tests.test_cli import one_error_line, onecard, site, write_config  # noqa: F401  (site is a fixture)


@pytest.fixture
def disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs to fill ({r.stderr.strip()}); these tests need root in a "
            "container or machine that allows mount"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


class Clock:
    def __init__(self):
        self.now = MONDAY_10AM

    def __call__(self):
        self.now += dt.timedelta(seconds=5)
        return self.now


def tap(terminal, card, request, now, fill_at: bytes | None = None, mnt: Path | None = None):
    """One tap; with fill_at, the disk fills up the moment the card answers the command starting with those bytes."""
    reader = InProcessReader()
    reader.tap(card)
    conn = reader.wait_for_card(0)
    if fill_at is not None:
        plain = conn.transmit

        def transmit(apdu: bytes) -> bytes:
            answer = plain(apdu)
            if apdu.startswith(fill_at):
                fill(mnt)
            return answer

        conn.transmit = transmit
    return terminal.handle_tap(conn, now, request)


def money_on_log(*logs: EventLog) -> int:
    """Logged credits minus logged debits; every intent must have exactly one outcome."""
    total = 0
    for log in logs:
        events = [e for e in log.events() if e.kind in MONEY_KINDS]
        intents = {e.seq for e in events if e.kind.endswith(".intent")}
        outcomes = [e for e in events if not e.kind.endswith(".intent")]
        assert sorted(e.detail["intent_seq"] for e in outcomes) == sorted(intents), "an intent is still open"
        for e in outcomes:
            if e.kind == "pos.purchase":
                total -= e.detail["amount"]
            elif e.kind in ("topup.load", "pos.undo"):
                total += e.detail["amount"]
        assert log.verify().ok
    return total


DEBIT, CREDIT = bytes.fromhex("8054"), bytes.fromhex("8052")


def test_pos_and_top_up_on_a_disk_that_fills_and_frees_conserve_money(disk):
    clock = Clock()
    sam = SoftwareSam(make_keystore(), StateFile(disk / "sam.state"))  # the SAM's state is on the full disk too
    pos, pos_screen = make_terminal(disk, sam, "pos")
    topup, _ = make_terminal(disk, sam, "topup")
    card = make_card(sam, opening_balance=10000)
    opening = card.state.purse.balance

    assert tap(pos, card, Charge(500), clock()).accepted
    assert tap(topup, card, Load(1000), clock()).accepted

    filler = fill(disk)
    for terminal, request, words in (
        (pos, Charge(300), "nothing charged"),
        (topup, Load(700), "nothing loaded"),
        (pos, Undo(), "nothing refunded"),
    ):
        before = card.state.purse.balance
        refused = tap(terminal, card, request, clock())
        assert (refused.accepted, refused.reason_code) == (False, "log_unavailable"), refused
        assert refused.message == f"Terminal fault: cannot record, {words}. Call maintenance"
        assert card.state.purse.balance == before
    filler.unlink()

    # The disk fills after the card paid: the payment stands, is shown, and is recorded at the card's next tap.
    paid = tap(pos, card, Charge(250), clock(), fill_at=DEBIT, mnt=disk)
    assert paid.accepted and paid.reason_code == "unrecorded"
    assert paid.message.startswith("Paid 2.50 - balance ") and "not recorded yet" in paid.message
    still_full = tap(pos, card, Balance(), clock())
    assert still_full.reason_code == "log_unavailable"
    filler.unlink()
    loaded = tap(topup, card, Load(400), clock(), fill_at=CREDIT, mnt=disk)
    assert loaded.accepted and loaded.message.startswith("Loaded 4.00 - balance ")

    # A restart on the full disk says so (not "corrupt", not "permissions") and writes nothing.
    pos.event_log.close()
    with pytest.raises(DatabaseError, match=r"the disk holding .*pos\.db is full .*free space on that filesystem"):
        EventLog.open(disk / "pos.db", "000000000101")
    filler.unlink()

    pos, pos_screen = make_terminal(disk, sam, "pos")  # restarted with room again
    settled = tap(pos, card, Balance(), clock())
    assert settled.accepted and settled.message == "Paid 2.50"  # the interrupted payment, reported as done
    settled = tap(topup, card, Balance(), clock())
    assert settled.accepted and settled.message.startswith("Loaded 4.00 - balance ")
    assert tap(pos, card, Charge(100), clock()).accepted

    assert card.state.purse.balance == opening + money_on_log(pos.event_log, topup.event_log)
    assert card.state.purse.balance == opening - 500 + 1000 - 250 + 400 - 100


def test_terminal_restarted_on_a_full_disk_says_the_disk_is_full(site, disk):  # noqa: F811
    cfg = write_config(
        site, "full.toml", kind='"pos"', database=f'"{disk / "events.db"}"', blacklist=f'"{disk / "bl.db"}"'
    )
    cfg.write_text(cfg.read_text() + "[pos]\n")
    for name, (database, _blacklist) in {"new install": (None, None), "existing files": (1, 1)}.items():
        if database:
            for p in disk.iterdir():
                p.unlink()
            EventLog.open(disk / "events.db", "000000000101").close()
            from terminal.blacklist import Blacklist

            Blacklist.open(disk / "bl.db").close()
        fill(disk)
        before = {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"}
        line = one_error_line(onecard("terminal", "run", "--config", cfg), "is full", "free space")
        assert "corrupt" not in line and "permission" not in line, (name, line)
        assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"} == before
        (disk / "filler").unlink()


def test_sync_agent_on_a_disk_that_fills_stops_with_one_line_and_catches_up_after(broker, disk, tmp_path):
    import signal
    import sys

    from sync_agent.store import SyncStore
    from tests.mqtt_env import ENTERPRISE, start_platform, terminal_id, wait_until, write_terminal_config

    tid = terminal_id(5)
    (tmp_path / "platform").mkdir()
    admin, service = start_platform(tmp_path / "platform", broker)
    cfg = write_terminal_config(disk / "t", tid, broker)
    command = [sys.executable, "-m", "onecard", "sync", "run", "--config", str(cfg)]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(
            lambda: (admin.terminal(tid)["heartbeat"] or {}).get("config_version") == 0,
            30,
            "the agent's first heartbeat",
        )
        filler = fill(disk)
        version = admin.publish_config(ENTERPRISE, {"pos": {"max_purchase": "20.00"}})
        _, err = agent.communicate(timeout=30)
        assert agent.returncode != 0
        [line] = [ln for ln in err.splitlines() if not ln.startswith("event=") and "event=" not in ln]
        assert line.startswith("error: sync agent stopped: the disk holding ") and "is full" in line, err
        assert "Traceback" not in err
        restarted = subprocess.run(command, capture_output=True, text=True, timeout=60)  # still full: refused
        assert restarted.returncode != 0 and "is full" in restarted.stderr.strip().splitlines()[-1]
        filler.unlink()
        agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def config_arrived() -> bool:
            store = SyncStore.open(disk / "t" / "sync.db", tid)
            try:
                return store.config_version() == version
            finally:
                store.close()

        wait_until(config_arrived, 30, "the configuration arriving after the disk was freed")
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.communicate(timeout=20)
        service.stop()
        admin.close()
