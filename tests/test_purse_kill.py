"""SIGKILL the terminal process after every step of a purchase and of a top-up, restart, tap again: exact money."""

import subprocess
import sys
from pathlib import Path

import pytest

from sam.keystore import KeystoreUnlock, save_keystore
from sam.software import SoftwareSam
from simulator.card_files import load_card
from simulator.inprocess import InProcessReader
from tests.kill_harness import NOW, open_purse_terminal
from tests.support import make_card_v2, make_keystore

ROOT = Path(__file__).resolve().parent.parent
OPENING = 10_000
# purchase: SELECT, INITIALIZE, MAC1, intent, DEBIT, MAC2 check, outcome; top-up: SELECT, INITIALIZE, load MAC2,
# intent, CREDIT, MAC3 check, outcome.
STEPS = 7


def setup_site(work: Path):
    (work / "pos").mkdir()
    (work / "topup").mkdir()
    (work / "pass").write_text("kill test\n")
    unlock = KeystoreUnlock.from_passphrase_file(work / "pass")
    save_keystore(work / "keystore", make_keystore(), unlock, scrypt_n=2**10)
    sam = SoftwareSam.open(work / "keystore", unlock)
    make_card_v2(sam, path=work / "card.json", opening_balance=OPENING)  # version 2: 3 APDUs per purchase
    return unlock


def run_killed(work: Path, op: str, amount: int, n: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.kill_harness", str(work), op, str(amount), str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("op", ["pos", "topup"])
@pytest.mark.parametrize("n", range(1, STEPS + 1))
def test_killed_after_step_n_then_restarted(tmp_path, op, n):
    setup_site(tmp_path)
    killed = run_killed(tmp_path, op, 1500, n)
    assert killed.returncode == -9, f"the harness was not killed at step {n}: {killed.stdout}{killed.stderr}"
    # Restart: everything from the files, nothing from the dead process's memory (and no SAM state file).
    terminal = open_purse_terminal(tmp_path, op)
    assert terminal.event_log.verify().ok and not (tmp_path / "keystore.state").exists()
    card = load_card(tmp_path / "card.json")
    reader = InProcessReader()
    reader.tap(card)
    transmit = reader.wait_for_card(0).transmit
    decision = terminal.balance_inquiry(transmit, NOW)  # the next tap settles whatever the crash left open
    balance = load_card(tmp_path / "card.json").state.purse.balance
    sign = -1 if op == "pos" else 1
    logged = OPENING + sum(
        sign * e.detail["amount"] for e in terminal.event_log.events() if e.kind in ("pos.purchase", "topup.load")
    )
    assert logged == balance
    assert balance in (OPENING, OPENING + sign * 1500)
    happened = balance != OPENING
    # A transaction is on the card exactly when the card processed its DEBIT / CREDIT (step 5).
    assert happened == (n >= 5)
    assert decision.accepted
    if any(
        e.detail.get("resolved_at_next_tap")
        for e in terminal.event_log.events()
        if e.kind in ("pos.purchase", "topup.load")
    ):
        # Settled at this tap: shown as done (a purchase's balance is never shown: its MAC2 covers only the amount).
        assert decision.message == ("Paid 15.00" if op == "pos" else f"Loaded 15.00 - balance {balance / 100:.2f}")
    intents = [e for e in terminal.event_log.events() if e.kind.endswith(".intent")]
    outcomes = [e for e in terminal.event_log.events() if e.kind.endswith((".purchase", ".load", ".abandoned"))]
    assert len(intents) == len(outcomes) == (1 if n >= 4 else 0)


def test_harness_completes_without_a_kill(tmp_path):
    setup_site(tmp_path)
    done = run_killed(tmp_path, "pos", 1500, 99)
    assert done.returncode == 0 and f"completed after {STEPS} steps" in done.stdout


@pytest.mark.parametrize("n", [3, 4, 7])  # after MAC1, after the intent, after the outcome
def test_no_tsn_is_used_twice_after_a_kill(tmp_path, n):
    """The TSN lives in the purchase intent: a restart derives the next TSN from the log, with no state file."""
    setup_site(tmp_path)
    assert run_killed(tmp_path, "pos", 1500, n).returncode == -9
    terminal = open_purse_terminal(tmp_path, "pos")
    card = load_card(tmp_path / "card.json")
    reader = InProcessReader()
    reader.tap(card)
    terminal.purchase(reader.wait_for_card(0).transmit, 700, NOW)
    tsns = [e.detail["tsn"] for e in terminal.event_log.events() if e.kind == "pos.purchase.intent"]
    assert tsns == sorted(set(tsns)) and tsns[-1] == len(tsns)
    assert not (tmp_path / "keystore.state").exists()
