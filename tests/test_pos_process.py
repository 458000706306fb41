"""`onecard terminal run` as a canteen POS process: keypad on stdin, the user card and a PSAM in two vpcd slots."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from sam.keystore import KeystoreUnlock, load_keystore
from sam.software import SoftwareSam
from simulator.card_files import load_card
from tests.support import make_card
from tests.test_cli import onecard

ROOT = Path(__file__).resolve().parent.parent
CARD_SLOT, PSAM_SLOT = 2, 3


def wait_text(read, text, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in read():
            return True
        time.sleep(0.05)
    return False


def test_pos_process_with_psam(tmp_path, pcscd, vicc):
    (tmp_path / "pass").write_text("canteen\n")
    for args in (
        ["sam", "create-keystore", "--out", tmp_path / "issuing.ks", "--enterprise", "00010001"],
        ["sam", "restrict", "--keystore", tmp_path / "issuing.ks", "--out", tmp_path / "pos.ks", "--role", "pos"],
        [
            "sim",
            "new-psam",
            "--keystore",
            tmp_path / "pos.ks",
            "--out",
            tmp_path / "psam.json",
            "--label",
            "canteen till 1",
        ],
    ):
        r = onecard(*args, "--passphrase-file", tmp_path / "pass")
        assert r.returncode == 0, r.stderr
    issuing = SoftwareSam(
        load_keystore(tmp_path / "issuing.ks", KeystoreUnlock.from_passphrase_file(tmp_path / "pass"))
    )
    make_card(issuing, path=tmp_path / "card.json", opening_balance=10000)
    (tmp_path / "pos.toml").write_text(f"""
[terminal]
id = "000000000301"
kind = "pos"
enterprise_id = "00010001"
name = "Canteen 1"
database = "{tmp_path / "events.db"}"
blacklist = "{tmp_path / "blacklist.db"}"
[reader]
driver = "pcsc"
name = "{pcscd.slots[CARD_SLOT].name}"
[sam]
backend = "psam"
reader = "{pcscd.slots[PSAM_SLOT].name}"
[pos]
max_purchase = "100.00"
[keypad]
driver = "stdin"
""")
    vicc(PSAM_SLOT).insert(load_card(tmp_path / "psam.json"))
    time.sleep(0.6)  # pcscd sees a new card within its 400 ms poll
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(tmp_path / "pos.toml")],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            text=True,
        )
    try:
        assert wait_text(err_path.read_text, "event=terminal.started"), err_path.read_text()
        proc.stdin.write("12.50\n")
        proc.stdin.flush()
        assert wait_text(out_path.read_text, "Pay 12.50: please tap your card")
        card_slot = vicc(CARD_SLOT)
        card_slot.insert(load_card(tmp_path / "card.json"))
        assert wait_text(out_path.read_text, "Paid 12.50"), out_path.read_text()
        card_slot.remove()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, err_path.read_text()
    assert load_card(tmp_path / "card.json").state.purse.balance == 8750
    r = onecard("log", "show", "--db", tmp_path / "events.db")
    assert "pos.purchase" in r.stdout and "Payment of 12.50" in r.stdout
