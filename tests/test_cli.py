"""The `onecard` command line: a working terminal boots from firmware.toml; every bad input is one clear line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def onecard(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "onecard", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def one_error_line(proc, *words):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A keystore, a verify-only terminal copy, a card and a terminal configuration, made with the CLI."""
    d = tmp_path_factory.mktemp("site")
    (d / "pass").write_text("correct horse battery staple\n")
    r = onecard(
        "sam", "create-keystore", "--out", d / "issuing.ks", "--passphrase-file", d / "pass", "--enterprise", "00010001"
    )
    assert r.returncode == 0, r.stderr
    r = onecard(
        "sam",
        "restrict",
        "--keystore",
        d / "issuing.ks",
        "--passphrase-file",
        d / "pass",
        "--out",
        d / "terminal.ks",
        "--usages",
        "verify",
        "--purposes",
        "access",
    )
    assert r.returncode == 0, r.stderr
    r = onecard(
        "sim",
        "new-card",
        "--out",
        d / "card.json",
        "--keystore",
        d / "issuing.ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
        "--employee",
        "E1001",
        "--name",
        "Zhang Wei",
    )
    assert r.returncode == 0, r.stderr
    return d


def write_config(d: Path, name="door.toml", **changes):
    values = {
        "kind": '"door"',
        "driver": '"simulator"',
        "keystore": f'"{d / "terminal.ks"}"',
        "passphrase_file": f'"{d / "pass"}"',
        "database": f'"{d / "events.db"}"',
        "blacklist": f'"{d / "blacklist.db"}"',
        "group": "1",
    }
    values.update(changes)
    text = f"""[terminal]
id = "000000000101"
kind = {values["kind"]}
enterprise_id = "00010001"
database = {values["database"]}
blacklist = {values["blacklist"]}
[reader]
driver = {values["driver"]}
card = "{d / "card.json"}"
name = "no such reader"
[sam]
keystore = {values["keystore"]}
passphrase_file = {values["passphrase_file"]}
[door]
group = {values["group"]}
"""
    (d / name).write_text(text)
    return d / name


def test_sam_list_shows_check_values_not_keys(site):
    r = onecard("sam", "list", "--keystore", site / "terminal.ks", "--passphrase-file", site / "pass")
    assert r.returncode == 0
    assert "access" in r.stdout and "verify" in r.stdout and "personalise" not in r.stdout


def test_terminal_runs_a_tap_and_stops_on_sigterm(site, tmp_path):
    cfg = write_config(site, "run.toml", database=f'"{tmp_path / "events.db"}"', blacklist=f'"{tmp_path / "bl.db"}"')
    proc = subprocess.Popen(
        [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = onecard("log", "show", "--db", tmp_path / "events.db", "--json")
            if r.returncode == 0 and "door.grant" in r.stdout:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the terminal logged no grant within 30 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Welcome, Zhang Wei" in out and "relay: door unlocked" in out
    assert "event=tap.decided" in err and "event=terminal.stopped" in err
    r = onecard("log", "verify", "--db", tmp_path / "events.db")
    assert r.returncode == 0 and "intact" in r.stdout


def test_missing_config(tmp_path):
    one_error_line(onecard("terminal", "run", "--config", tmp_path / "nope.toml"), "no such configuration file")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"kind": '"dor"'}, ["[terminal].kind", "door, attendance"]),
        ({"group": "99"}, ["[door].group", "1 to 64"]),
        ({"group": '"one"'}, ["[door].group", "int"]),
    ],
)
def test_bad_config_values(site, tmp_path, change, words):
    cfg = write_config(site, "bad.toml", **change)
    one_error_line(onecard("terminal", "run", "--config", cfg), *words)


def test_config_that_is_not_toml(tmp_path):
    (tmp_path / "x.toml").write_text("[terminal\nid = 1\n")
    one_error_line(onecard("terminal", "check-config", "--config", tmp_path / "x.toml"), "not valid TOML")


def test_wrong_passphrase_changes_nothing(site, tmp_path):
    (tmp_path / "wrong").write_text("guess\n")
    before = (site / "terminal.ks").read_bytes()
    cfg = write_config(site, "wrongpass.toml", passphrase_file=f'"{tmp_path / "wrong"}"')
    one_error_line(onecard("terminal", "run", "--config", cfg), "passphrase")
    assert (site / "terminal.ks").read_bytes() == before


def test_corrupt_keystore_changes_nothing(site, tmp_path):
    data = bytearray((site / "terminal.ks").read_bytes())
    data[-5] ^= 0x40
    (tmp_path / "bad.ks").write_bytes(bytes(data))
    cfg = write_config(site, "badks.toml", keystore=f'"{tmp_path / "bad.ks"}"')
    one_error_line(onecard("terminal", "run", "--config", cfg), str(tmp_path / "bad.ks"))
    assert (tmp_path / "bad.ks").read_bytes() == bytes(data)


def test_corrupt_database_changes_nothing(site, tmp_path):
    junk = b"SQLite format 3\x00" + os.urandom(4000)
    (tmp_path / "events.db").write_bytes(junk)
    cfg = write_config(site, "baddb.toml", database=f'"{tmp_path / "events.db"}"')
    one_error_line(onecard("terminal", "run", "--config", cfg), str(tmp_path / "events.db"))
    assert (tmp_path / "events.db").read_bytes() == junk
    assert not (tmp_path / "events.db-wal").exists()


def test_no_pcscd_at_start_is_waited_for_not_exited_on(site, tmp_path):
    import signal
    import time

    cfg = write_config(
        site, "pcsc.toml", driver='"pcsc"', database=f'"{tmp_path / "e.db"}"', blacklist=f'"{tmp_path / "b.db"}"'
    )
    env = dict(os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "no-pcscd.comm"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        shown = proc.stdout.readline()  # the display's first line
        assert "Reader unavailable: door locked, waiting for the reader" in shown
        time.sleep(1.5)
        assert proc.poll() is None, "the terminal exited instead of waiting for pcscd"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.count("event=reader.unavailable") == 1 and "start pcscd" in err and "Traceback" not in err


def test_log_verify_detects_tampering(site, tmp_path):
    import datetime as dt
    import sqlite3

    from terminal.event_log import EventLog

    db = tmp_path / "events.db"
    with EventLog.open(db, "000000000101") as log:
        for i in range(3):
            log.append(
                dt.datetime(2026, 11, 23, 2, i, tzinfo=dt.timezone.utc),
                "door.grant",
                asn="11" * 8,
                reason_code="granted",
                message="Welcome",
                detail={},
            )
    assert onecard("log", "verify", "--db", db).returncode == 0
    conn = sqlite3.connect(db)
    conn.execute("UPDATE events SET message = 'Welcome, Mallory' WHERE seq = 2")
    conn.commit()
    conn.close()
    r = onecard("log", "verify", "--db", db)
    assert r.returncode == 1 and "seq 2" in r.stdout


def test_till_under_systemd_with_no_keypad_refuses_to_start(site, tmp_path):
    """Standard input is /dev/null under systemd: a POS with the console keypad says so and names [keypad]."""
    cfg = write_config(
        site, "pos.toml", kind='"pos"', database=f'"{tmp_path / "e.db"}"', blacklist=f'"{tmp_path / "b.db"}"'
    )
    cfg.write_text(cfg.read_text() + '[pos]\nmax_purchase = "100.00"\n')
    with open(os.devnull) as null:
        r = subprocess.run(
            [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(cfg)],
            cwd=ROOT,
            stdin=null,
            capture_output=True,
            text=True,
            timeout=60,
        )
    one_error_line(r, '[keypad] driver = "console"', "standard input", "evdev")
