"""`onecard terminal selftest`: all PASS on a good terminal (real pcscd, keystore, mosquitto/TLS), and every failure
produced on purpose shows its own fix."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from onecard.wiring import Wiring
from sam.cli import ROLES
from sam.keystore import Keystore, KeystoreUnlock, save_keystore
from sam.software import SoftwareSam
from simulator import test_pki as deploy
from terminal import selftest as st
from terminal.install_cli import default_adapters
from terminal.provision import bind_sam, binding_path
from tests.mqtt_env import free_port
from tests.support import make_card, make_keystore

ROOT = Path(__file__).resolve().parent.parent
TID = "000000000042"  # in the test broker's ACL (tests/mqtt_env.py TERMINALS)
CARD_SLOT = 0
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(autouse=True)
def _now():
    """Each test checks at its own start time: the test CA dates its certificates from the real clock (valid from
    5 minutes before they are made), so a NOW taken at import fails them once the suite has run > 5 minutes."""
    global NOW
    NOW = dt.datetime.now(dt.timezone.utc)


ROLE_USAGES = {kind: ROLES[st.KIND_ROLE[kind]] for kind in ("door", "pos", "topup")}


def role_keystore(issuing: Keystore, role: str) -> Keystore:
    """What `onecard sam restrict --role` gives a terminal: the same keys, only the usages its kind needs."""
    return issuing.restricted_per_purpose(ROLE_USAGES[role])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An issuing keystore (for cards), and door/pos/topup terminal keystores of it, passphrase 'right'."""
    d = tmp_path_factory.mktemp("keys")
    issuing = make_keystore()
    (d / "pass").write_text("right\n")
    (d / "wrong-pass").write_text("wrong\n")
    unlock = KeystoreUnlock.from_passphrase("right")
    for role in ROLE_USAGES:
        save_keystore(d / f"{role}.ks", role_keystore(issuing, role), unlock, scrypt_n=2**10)
    save_keystore(d / "other-door.ks", role_keystore(make_keystore(), "door"), unlock, scrypt_n=2**10)
    return d, SoftwareSam(issuing)


TOML = """
[terminal]
id = "{tid}"
kind = "{kind}"
enterprise_id = "00010001"
name = "Selftest {kind}"
database = "{data}/events.db"
blacklist = "{data}/blacklist.db"
[reader]
driver = "pcsc"
name = "{reader}"
[sam]
keystore = "{keystore}"
passphrase_file = "{passfile}"
[door]
group = 1
[pos]
max_purchase = "100.00"
[output]
color = false
{sync}
"""

SYNC = """
[sync]
broker_host = "127.0.0.1"
broker_port = {port}
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
platform_public_key = "{pub}"
database = "{data}/sync.db"
"""


def write_config(
    tmp: Path,
    keys_dir: Path,
    reader: str,
    *,
    kind: str = "door",
    keystore: str = "door.ks",
    passfile: str = "pass",
    broker=None,
    port: int | None = None,
    ca: Path | None = None,
    cert=None,
    data: Path | None = None,
) -> Path:
    data = data or tmp / "data"
    sync = ""
    if broker is not None:
        c = cert or broker.pki.client(TID)
        sync = SYNC.format(
            port=port or broker.port,
            ca=ca or broker.pki.ca.cert,
            cert=c.cert,
            key=c.key,
            pub=broker.pki.platform_public,
            data=data,
        )
    path = tmp / "firmware.toml"
    path.write_text(
        TOML.format(
            tid=TID,
            kind=kind,
            data=data,
            reader=reader,
            keystore=keys_dir / keystore,
            passfile=keys_dir / passfile,
            sync=sync,
        ),
        encoding="utf-8",
    )
    return path


class RecordingOutputs:
    def __init__(self):
        self.actions = []

    def open_relay(self, seconds):
        self.actions.append(("relay", seconds))

    def light(self, color):
        self.actions.append(("light", color))

    def beep(self, pattern):
        self.actions.append(("beep", pattern))

    def display(self, text):
        self.actions.append(("display", text))


def adapters(**overrides) -> st.Adapters:
    a = default_adapters(Wiring().simulated_card_reader)
    a = replace(a, make_outputs=lambda c: RecordingOutputs())
    return replace(a, **overrides)


def by_name(results) -> dict[str, st.CheckResult]:
    return {r.name: r for r in results}


def assert_fails(result: st.CheckResult, found: str, fix: str) -> None:
    assert result.status == st.FAIL, result
    assert found in result.found, result
    assert fix in result.fix, result
    lines = result.lines()
    assert lines[0].startswith(f"FAIL {result.name}: ") and lines[1].startswith("  fix: ")


# --------------------------------------------------------------------------------------------------
# the good terminal
# --------------------------------------------------------------------------------------------------


def test_all_pass_on_a_good_terminal_over_pcscd_and_tls(tmp_path, keys, pcscd, vicc, broker):
    keys_dir, issuing = keys
    config = write_config(tmp_path, keys_dir, pcscd.slots[CARD_SLOT].name, broker=broker)
    vicc(CARD_SLOT).insert(make_card(issuing))
    results = st.run_selftest(config, adapters(), tap_timeout=5)
    r = by_name(results)
    assert [x.name for x in results] == [
        "config",
        "reader",
        "tap",
        "sam",
        "database",
        "event log chain",
        "blacklist",
        "broker",
        "clock",
        "outputs",
    ]
    assert all(x.status == st.PASS for x in results if x.name != "clock"), "\n".join(
        line for x in results for line in x.lines()
    )
    assert r["clock"].status == st.SKIP and "no platform time" in r["clock"].found
    assert st.all_passed(results)
    assert "a one-card of enterprise 00010001" in r["tap"].found
    assert "access v1 aes128" in r["sam"].found and "access v1 sm4" in r["sam"].found
    assert f"as {TID}" in r["broker"].found and "valid until" in r["broker"].found
    # The self-test wrote nothing into the chain.
    from terminal.event_log import EventLog

    with EventLog.open_readonly(tmp_path / "data" / "events.db") as log:
        assert log.last_seq() == 0
        assert log.db.conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'selftest_probe'").fetchone() == (
            0,
        )


def test_cli_lines_exit_status_and_signed_off_record(tmp_path, keys, pcscd):
    """The command as an installer runs it: no [sync], no tap asked; a report with the sign-off fields."""
    keys_dir, _ = keys
    config = write_config(tmp_path, keys_dir, pcscd.slots[1].name)
    report = tmp_path / "record.txt"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "onecard",
            "--log-level",
            "WARNING",
            "terminal",
            "selftest",
            "--config",
            str(config),
            "--report",
            str(report),
            "--technician",
            "Li Ming",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert all(line.split(" ")[0] in ("PASS", "SKIP") for line in lines[:-2]), r.stdout
    assert "SKIP tap: not checked: pass --tap-timeout" in r.stdout
    assert "SKIP broker: not checked: no [sync] section" in r.stdout
    text = report.read_text()
    assert f"Terminal ID:     {TID}" in text and "Result: ALL CHECKS PASSED" in text
    assert "Technician name:  Li Ming" in text and "Customer name:" in text and "Signature:" in text
    again = subprocess.run(
        [sys.executable, "-m", "onecard", "terminal", "selftest", "--config", str(config), "--report", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "may be signed already" in again.stderr and report.read_text() == text


# --------------------------------------------------------------------------------------------------
# each failure, on purpose
# --------------------------------------------------------------------------------------------------


def test_invalid_config_fails_first_and_skips_the_rest(tmp_path):
    bad = tmp_path / "firmware.toml"
    bad.write_text('[terminal]\nid = "12"\n')
    results = st.run_selftest(bad, adapters())
    assert_fails(results[0], "[terminal].id = '12' is not 12 decimal digits", "write it as a string of 12 digits")
    assert {r.status for r in results[1:]} == {st.SKIP}
    assert not st.all_passed(results)


def test_no_such_reader(tmp_path, keys, pcscd):
    config = write_config(tmp_path, keys[0], "No Such Reader 99")
    r = by_name(st.run_selftest(config, adapters(), tap_timeout=1))
    assert_fails(r["reader"], "no PC/SC reader matching 'No Such Reader 99'", "check the reader is plugged in")
    assert r["tap"].status == st.SKIP


def test_pcscd_down(tmp_path, keys):
    """A process whose pcscd socket is not there, as on a terminal where pcscd is stopped."""
    config = write_config(tmp_path, keys[0], "Any Reader")
    env = dict(os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "no-pcscd.comm"))
    r = subprocess.run(
        [sys.executable, "-m", "onecard", "--log-level", "ERROR", "terminal", "selftest", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "FAIL reader: pcscd is not running" in r.stdout
    assert "  fix: start pcscd: systemctl start pcscd" in r.stdout


def test_no_tap_within_the_timeout(tmp_path, keys, pcscd):
    config = write_config(tmp_path, keys[0], pcscd.slots[1].name)
    r = by_name(st.run_selftest(config, adapters(), tap_timeout=0.5))
    assert r["reader"].status == st.PASS
    assert_fails(r["tap"], "no card seen within 0.5 s", "hold a card flat on the reader")


def test_wrong_keystore_passphrase(tmp_path, keys):
    config = write_config(tmp_path, keys[0], "unused", passfile="wrong-pass")
    result = st.check_sam(st.load_config(config), adapters().open_sam, NOW)
    assert result.failed and "passphrase" in result.found + result.fix, result


def test_keystore_without_the_keys_of_the_kind(tmp_path, keys):
    config = write_config(tmp_path, keys[0], "unused", kind="pos", keystore="door.ks")
    result = st.check_sam(st.load_config(config), adapters().open_sam, NOW)
    assert_fails(
        result,
        "lacks the pos keys of enterprise 00010001: purchase (mac,verify), load (reversal)",
        "onecard sam restrict --role pos",
    )


@pytest.mark.parametrize(
    "kind, keystore, expect",
    [
        ("pos", "pos.ks", "purchase v1 aes128 KCV"),
        ("topup", "topup.ks", "wrong load MAC1 refused"),
    ],
)
def test_purse_kinds_round_trip_without_touching_the_tsn(tmp_path, keys, kind, keystore, expect):
    config = write_config(tmp_path, keys[0], "unused", kind=kind, keystore=keystore)
    result = st.check_sam(st.load_config(config), adapters().open_sam, NOW)
    assert result.status == st.PASS and expect in result.found, result
    assert not (keys[0] / f"{keystore}.state").exists()  # no purchase MAC1 was asked for: no TSN taken


def test_a_different_sam_than_the_bound_one(tmp_path, keys):
    keys_dir, _ = keys
    config = write_config(tmp_path, keys_dir, "unused")
    cfg = st.load_config(config)
    from terminal.adapters import open_sam

    bound = open_sam(cfg)
    bind_sam(config, TID, "keystore", "door.ks", bound.key_infos(), NOW, force=False)
    assert st.check_sam(cfg, adapters().open_sam, NOW).status == st.PASS
    other = write_config(tmp_path, keys_dir, "unused", keystore="other-door.ks")  # same config path, other keys
    result = st.check_sam(st.load_config(other), adapters().open_sam, NOW)
    assert_fails(result, "is not the SAM bound to this terminal: bound key access v1", "--rebind-sam")
    # `terminal run` opens its SAM through open_sam, which refuses the unbound one in one line.
    from common.errors import UserError

    with pytest.raises(
        UserError, match=r"not the one terminal 000000000042 was installed with .*put back the bound SAM"
    ):
        open_sam(st.load_config(other))
    assert binding_path(config).exists()


@pytest.mark.skipif(not shutil.which("chattr"), reason="needs chattr to make a directory unwritable for root")
def test_unwritable_database_directory(tmp_path, keys):
    data = tmp_path / "ro"
    data.mkdir()
    config = write_config(tmp_path, keys[0], "unused", data=data)
    lock = ["chattr", "+i", str(data)] if os.geteuid() == 0 else None
    if lock:
        subprocess.run(lock, check=True)
    else:
        data.chmod(0o500)
    try:
        write, chain = st.check_database(st.load_config(config))
    finally:
        if lock:
            subprocess.run(["chattr", "-i", str(data)], check=True)
        else:
            data.chmod(0o700)
    assert_fails(write, "events.db", "check the path and its permissions")
    assert chain.status == st.SKIP


def test_broken_hash_chain(tmp_path, keys):
    config = write_config(tmp_path, keys[0], "unused")
    cfg = st.load_config(config)
    from tests.mqtt_env import fill_log

    cfg.terminal.database.parent.mkdir()
    fill_log(cfg.terminal.database, TID, 5)
    with sqlite3.connect(cfg.terminal.database) as db:
        db.execute("UPDATE events SET message = 'Welcome, Mallory' WHERE seq = 3")
    write, chain = st.check_database(cfg)
    assert write.status == st.PASS
    assert_fails(chain, "broken at seq 3: hash mismatch", "keep a copy for investigation")


def test_broker_down(tmp_path, keys, broker):
    config = write_config(tmp_path, keys[0], "unused", broker=broker, port=free_port())
    result = st.check_broker(st.load_config(config), dt.datetime.now(dt.timezone.utc), timeout=2)
    assert_fails(result, "refused the connection (nothing listening)", "start the broker")


def test_certificate_from_another_ca(tmp_path, keys, broker):
    rogue = deploy.TestCa(tmp_path / "rogue-ca")
    config = write_config(tmp_path, keys[0], "unused", broker=broker, cert=rogue.issue(TID))
    result = st.check_broker(st.load_config(config), dt.datetime.now(dt.timezone.utc), timeout=3)
    assert_fails(result, "the broker rejected this terminal's certificate", "onecard platform ca sign")


def test_wrong_ca_file_for_the_broker(tmp_path, keys, broker):
    rogue = deploy.TestCa(tmp_path / "rogue-ca")
    config = write_config(tmp_path, keys[0], "unused", broker=broker, ca=rogue.files.cert)
    result = st.check_broker(st.load_config(config), dt.datetime.now(dt.timezone.utc), timeout=3)
    assert_fails(result, "the broker's certificate is not signed by [sync].ca_file", "platform's CA certificate")


def test_expired_or_foreign_certificate_is_caught_before_connecting(tmp_path, keys, sync_pki):
    old = deploy.TestCa(tmp_path / "old-ca", now=NOW - dt.timedelta(days=400), days=365)
    config = write_config(tmp_path, keys[0], "unused", broker=_FakeBroker(sync_pki), cert=old.issue(TID))
    connect_called = []
    result = st.check_broker(st.load_config(config), NOW, connect=lambda *a: connect_called.append(a))
    assert_fails(result, "the certificate expired on", "re-run onecard terminal provision with --force")
    other = write_config(
        tmp_path, keys[0], "unused", broker=_FakeBroker(sync_pki), cert=sync_pki.client("000000000007")
    )
    result = st.check_broker(st.load_config(other), NOW, connect=lambda *a: connect_called.append(a))
    assert_fails(result, "CN is '000000000007', not this terminal's ID 000000000042", "provision")
    assert connect_called == []


class _FakeBroker:
    """Config values of a broker that is not started: for checks that must fail before connecting."""

    def __init__(self, pki):
        self.pki, self.port = pki, 1


@pytest.mark.parametrize("drift, status", [(60.0, st.FAIL), (-30.0, st.FAIL), (1.5, st.PASS)])
def test_clock_against_the_platform_time_the_agent_stored(tmp_path, keys, sync_pki, drift, status):
    from common.sync_protocol import format_time
    from sync_agent.store import SyncStore

    config = write_config(tmp_path, keys[0], "unused", broker=_FakeBroker(sync_pki))
    cfg = st.load_config(config)
    assert st.check_clock(cfg, NOW).status == st.SKIP
    cfg.sync.database.parent.mkdir(parents=True, exist_ok=True)
    store = SyncStore.open(cfg.sync.database, TID)
    platform_time = NOW - dt.timedelta(minutes=2)
    store.mark_seen("t1", "time", format_time(platform_time), format_time(platform_time + dt.timedelta(seconds=drift)))
    store.close()
    result = st.check_clock(cfg, NOW)
    assert result.status == status, result
    if status == st.FAIL:
        side = "ahead of" if drift > 0 else "behind"
        assert_fails(result, f"{abs(drift):.1f} s {side} the platform (tolerance 5 s", "timedatectl set-ntp true")


def test_outputs_driver_that_raises(tmp_path):
    class BrokenRelay(RecordingOutputs):
        def open_relay(self, seconds):
            raise OSError("GPIO17: device or resource busy")

    assert_fails(
        st.check_outputs(BrokenRelay(), "gpio"),
        "gpio driver failed to switch the relay (OSError: GPIO17: device or resource busy)",
        "check the output wiring",
    )
    good = RecordingOutputs()
    assert st.check_outputs(good, "console").status == st.PASS
    assert ("relay", 1) in good.actions and ("light", "green") in good.actions and ("beep", "error") in good.actions


def test_connect_errors_are_classified_without_a_broker():
    import socket
    import ssl

    assert "cannot resolve" in st.classify_connect_error(socket.gaierror(-2, "Name or service not known"), "x", 1)[0]
    assert "no answer" in st.classify_connect_error(TimeoutError(), "x", 1)[0]
    found, fix = st.classify_connect_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]"), "h", 1883)
    assert "TLS with h:1883 failed" in found and "broker_port" in fix
