"""issue 8: bad input at the command line ends in one line and an exit code, never a traceback."""

import subprocess
import sys
from pathlib import Path

from onecard.cli import main

ROOT = Path(__file__).resolve().parent.parent


def onecard(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "onecard", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_an_unknown_log_level_is_refused_by_name():
    proc = onecard("--log-level", "verbose", "log", "show", "--db", "x.db")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(
        "invalid choice: 'VERBOSE' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"
    )


def test_log_level_is_case_blind(tmp_path, capsys):
    assert main(["--log-level", "warning", "platform", "ca", "init", "--dir", str(tmp_path / "ca")]) == 0


def test_a_missing_output_directory_is_one_line(tmp_path):
    assert onecard("platform", "ca", "init", "--dir", tmp_path / "ca").returncode == 0
    proc = onecard(
        "platform",
        "ca",
        "server-cert",
        "--dir",
        tmp_path / "ca",
        "--host",
        "localhost",
        "--out",
        tmp_path / "missing" / "dir" / "broker",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line == f"error: directory {tmp_path / 'missing' / 'dir'} does not exist; create it or name another path"


def test_an_atomic_write_into_a_missing_directory_names_the_directory(tmp_path):
    (tmp_path / "pass").write_text("a passphrase\n")
    assert (
        onecard(
            "sam",
            "create-keystore",
            "--out",
            tmp_path / "ks",
            "--passphrase-file",
            tmp_path / "pass",
            "--enterprise",
            "00010001",
        ).returncode
        == 0
    )
    proc = onecard(
        "sim",
        "new-card",
        "--out",
        tmp_path / "nowhere" / "c.json",
        "--keystore",
        tmp_path / "ks",
        "--passphrase-file",
        tmp_path / "pass",
        "--enterprise",
        "00010001",
        "--employee",
        "E1",
        "--name",
        "X",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: directory {tmp_path / 'nowhere'} does not exist; create it or name another path"
    ]


def test_a_reader_that_goes_away_ends_quietly(tmp_path):
    from terminal.event_log import EventLog
    from tests.support import MONDAY_10AM

    with EventLog.open(tmp_path / "events.db", "000000000101") as log:
        for i in range(3000):
            log.append(
                MONDAY_10AM,
                "door.grant",
                asn="1122334455667788",
                reason_code="granted",
                message=f"Welcome {i}",
                detail={},
            )
    # `onecard log show ... | head -1`: the reader leaves after one line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "onecard", "log", "show", "--db", str(tmp_path / "events.db"), "--last", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
