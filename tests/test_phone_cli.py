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


# --- the card office's command: set / change / unblock the service password over pcscd + vpcd -----------------------


def _office_keystore(tmp_path):
    from sam.keystore import KeystoreUnlock, save_keystore

    passphrase = tmp_path / "pass"
    passphrase.write_text("office passphrase\n")
    ks = tmp_path / "office.ks"
    save_keystore(ks, KEYSTORE, KeystoreUnlock.from_passphrase_file(passphrase), scrypt_n=2**10)
    return ks, passphrase


def _office(card_file, ks, passphrase, *extra, command="set-password", stdin=None):  # noqa: F811
    return subprocess.run(
        [sys.executable, "-m", "onecard", "phone", command, "--card", str(card_file), "--keystore", str(ks),
         "--passphrase-file", str(passphrase), "--enterprise", EID, *map(str, extra)],
        capture_output=True, text=True, env=_env(), timeout=60, input=stdin,
    )  # fmt: skip


def test_card_office_sets_changes_and_unblocks_the_password(card_file, tmp_path):  # noqa: F811
    from simulator.sim_toolkit import ToolkitStateFile, toolkit_path

    ks, passphrase = _office_keystore(tmp_path)
    secret = tmp_path / "new-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    done = _office(card_file, ks, passphrase, "--password-file", secret)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == "service password set through Enterprise 00010001 (ASN 1122334455667788); 3 tries; "
        "the holder needs it to delete an application\n"
    )
    assert PASSWORD not in done.stdout + done.stderr
    assert ToolkitStateFile(toolkit_path(card_file)).load().password == PASSWORD
    # Blocked after three wrong tries: the unblock is the same command with a new password.
    state = ToolkitStateFile(toolkit_path(card_file))
    blocked = state.load()
    blocked.tries_left = 0
    state.save(blocked)
    secret.write_text("13579\n")
    done = _office(card_file, ks, passphrase, "--password-file", secret, command="unblock-password")
    assert done.returncode == 0, done.stderr
    assert (state.load().password, state.load().tries_left) == ("13579", 3)


def test_card_office_password_refusals_are_one_line(card_file, tmp_path):  # noqa: F811
    from simulator.sim_toolkit import ToolkitStateFile, toolkit_path

    ks, passphrase = _office_keystore(tmp_path)
    # Not on the command line: argparse knows no --password.
    done = _office(card_file, ks, passphrase, "--password", PASSWORD)
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
    # No terminal and no file: refused before the SIM is touched.
    done = _office(card_file, ks, passphrase, stdin="")
    assert (
        done.returncode == 2
        and done.stderr == "error: no terminal to type the password on: give --password-file F (one line, mode 600)\n"
    )
    bad = tmp_path / "bad"
    bad.write_text("12a\n")
    done = _office(card_file, ks, passphrase, "--password-file", bad)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "4 to 8 digits" in done.stderr
    # Another enterprise's office: refused, one line, exit 1, nothing written.
    good = tmp_path / "good"
    good.write_text(PASSWORD + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "onecard", "phone", "set-password", "--card", str(card_file), "--keystore", str(ks),
         "--passphrase-file", str(passphrase), "--enterprise", "00020002", "--password-file", str(good)],
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == ["error: service password not set: this SIM's one-card application is of enterprise 00010001, "
                      "not 00020002: its own card office sets the password"]  # fmt: skip
    assert "Traceback" not in done.stderr
    assert not toolkit_path(card_file).exists() or ToolkitStateFile(toolkit_path(card_file)).load().password is None


def test_card_office_password_typed_without_echo(card_file, tmp_path):  # noqa: F811
    """In a terminal the password is typed twice and never shown."""
    from simulator.sim_toolkit import ToolkitStateFile, toolkit_path

    ks, passphrase = _office_keystore(tmp_path)
    tty = Tty(["phone", "set-password", "--card", str(card_file), "--keystore", str(ks),
               "--passphrase-file", str(passphrase), "--enterprise", EID])  # fmt: skip
    screen = tty.expect("new service password (4-8 digits): ")
    tty.send("86420" + ENTER)
    screen += tty.expect("again: ")
    tty.send("86420" + ENTER)
    screen += tty.expect("service password set through Enterprise 00010001")
    assert "86420" not in screen + tty.seen
    assert tty.wait() == 0
    assert ToolkitStateFile(toolkit_path(card_file)).load().password == "86420"
