"""`onecard phone balance | menu` through real pcscd + vpcd: the handset driver talks PC/SC to the simulated
SIM's contact interface exactly as it would to a SIM in a contact reader; the menu is driven with keys in a
pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from phone.handset import Handset
from simulator.sim_toolkit import load_sim
from terminal.readers.pcsc import PcscReader
from tests.test_phone_menu import (  # noqa: F401 (card_file is a fixture)
    ASN,
    EID,
    KEYSTORE,
    PASSWORD,
    Script,
    card_file,
    office_set_password,
)

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PCSCLITE_CSOCK_NAME", None)  # the command starts its own pcscd
    return env


def test_handset_over_the_session_pcscd(pcscd, vicc, card_file):  # noqa: F811
    icc = vicc(0)
    icc.insert(load_sim(card_file))
    reader = PcscReader(pcscd.slots[0].name)
    try:
        conn = reader.wait_for_card(10)
        assert conn is not None
        script = Script([1, True, None])
        handset = Handset(conn, script, lambda d, u: None)
        assert [i.text for i in handset.start().items] == ["Enterprise 00010001"]
        handset.choose(1)
        assert script.shown[1] == "Enterprise 00010001\nBalance 25.00 yuan\nValid until 2028-12-31"
        conn.close()
    finally:
        reader.close()


def test_phone_balance_command(card_file):  # noqa: F811
    done = subprocess.run(
        [sys.executable, "-m", "onecard", "phone", "balance", "--card", str(card_file)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Enterprise 00010001: Balance 25.00 yuan; Valid until 2028-12-31\n"


def test_phone_balance_of_a_missing_card_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "onecard", "phone", "balance", "--card", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot load simulated RFID-SIM") and done.stderr.count("\n") == 1


def test_phone_menu_platform_options_go_together(card_file):  # noqa: F811
    done = subprocess.run(
        [sys.executable, "-m", "onecard", "phone", "menu", "--card", str(card_file), "--tac-keystore", "k"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (2, "error: --platform-key, --tac-keystore and --passphrase-file go "
                                                 "with --platform-db\n")  # fmt: skip


class Tty:
    """`onecard phone menu` on a pseudo-terminal, as a holder (or tmux send-keys) would drive it."""

    def __init__(self, args: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command on the terminal
            os.execve(sys.executable, [sys.executable, "-m", "onecard", *args], _env())
        self.seen = ""

    def expect(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not shown; screen so far:\n{self.seen[-2000:]}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the command ended before showing {text!r}:\n{self.seen[-2000:]}"
                self.seen += chunk.decode("utf-8", "replace")
        shown, self.seen = self.seen, self.seen[self.seen.index(text) + len(text) :]
        return shown

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                select.select([self.fd], [], [], 0.1) and os.read(self.fd, 4096)
            except OSError:
                pass
        os.kill(self.pid, 9)
        raise AssertionError("the menu did not exit")


UP, DOWN, LEFT, ENTER = "\x1b[A", "\x1b[B", "\x1b[D", "\r"


def test_phone_menu_with_arrow_keys_and_numbers(card_file):  # noqa: F811
    sim = load_sim(card_file)
    sim.power_on()
    assert office_set_password(sim, card_file, PASSWORD) == bytes.fromhex("9000")
    tty = Tty(["phone", "menu", "--card", str(card_file)])
    tty.expect("== 壹卡通 One-card ==")
    tty.expect("> 1. Enterprise 00010001")
    tty.send(ENTER)
    tty.expect("5. Delete application")
    tty.send(DOWN + DOWN)
    tty.expect("> 3. Card status")
    tty.send(UP)
    tty.expect("> 2. Last transactions")
    tty.send(ENTER)
    tty.expect("> 1. 11-30 12:05 -12.50")
    tty.send("1")
    tty.expect("Terminal 000000000101")
    tty.send(ENTER)  # back to the list
    tty.expect("2. 11-29 09:00 +37.50")
    tty.send(LEFT)  # back to the sub-application's menu
    tty.expect("5. Delete application")
    tty.send("5")
    tty.expect("Service password to delete Enterprise 00010001")
    tty.send("12" + ENTER)
    tty.expect("enter 4 to 8 characters")  # the handset checks the length before it answers
    tty.send("111111")
    shown = tty.expect("******")
    assert "111111" not in shown  # hidden input
    tty.send(ENTER)
    tty.expect("Wrong password: 2 tries left")
    tty.send(ENTER)
    tty.expect("5. Delete application")
    tty.send("1")
    tty.expect("Balance 25.00 yuan")
    tty.send(ENTER)
    tty.expect("1. Balance")
    tty.send("0")  # back: the session ends, the main menu again
    tty.expect("> 1. Enterprise 00010001")
    tty.send("q")
    assert tty.wait() == 0


def test_phone_menu_deletes_the_application_at_the_platform(card_file, tmp_path):  # noqa: F811
    from central.db import write_signing_key
    from central.store import Platform
    from sam.keystore import KeystoreUnlock, save_keystore

    write_signing_key(tmp_path / "platform.key")
    (tmp_path / "pass").write_text("platform tac keys\n")
    save_keystore(
        tmp_path / "tac.keystore", KEYSTORE, KeystoreUnlock.from_passphrase_file(tmp_path / "pass"), scrypt_n=2**10
    )
    from central.db import load_signing_key

    pf = Platform(tmp_path / "platform.db", load_signing_key(tmp_path / "platform.key"))
    pf.add_enterprise(EID, "Acme")
    pf.add_holder(EID, "E1001", "Zhang Wei", phone="13800000001")
    pf.issue_card(EID, "E1001", ASN.hex(), {"door_groups": [1]}, balance_cents=2500)
    pf.close()
    sim = load_sim(card_file)
    sim.power_on()
    office_set_password(sim, card_file, PASSWORD)
    options = ["--platform-db", str(tmp_path / "platform.db"), "--platform-key", str(tmp_path / "platform.key")]
    options += ["--tac-keystore", str(tmp_path / "tac.keystore"), "--passphrase-file", str(tmp_path / "pass")]
    tty = Tty(["phone", "menu", "--card", str(card_file), *options])
    tty.expect("> 1. Enterprise 00010001")
    tty.send("1")
    tty.expect("5. Delete application")
    tty.send("5")
    tty.expect("Service password to delete")
    tty.send(PASSWORD + ENTER)
    tty.expect("25.00 yuan will be refunded")
    tty.send("1")
    tty.expect("platform: application of enterprise 00010001 on card 1122334455667788 deleted, 25.00 yuan refunded")
    tty.expect("Enterprise 00010001 deleted on this card")
    tty.send(ENTER)
    tty.expect("Enterprise 00010001 (voided)")
    tty.send("q")
    assert tty.wait() == 0
    pf = Platform(tmp_path / "platform.db", None)
    try:
        assert (pf.card(ASN.hex())["status"], pf.card(ASN.hex())["balance_cents"]) == ("CANCELLED", 0)
    finally:
        pf.close()
