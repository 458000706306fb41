"""`onecard sim readers`, `sim tap` with a key master card, `sim new-card --factory`: the simulated hardware as an
installer or tester drives it from a shell, with no Python of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from onecard.cli import main
from simulator import tap_control
from simulator.card import CardStateFile
from simulator.card_files import load_card

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_factory_card_is_washed_from_the_command_line(tmp_path, capsys):
    d = tmp_path
    (d / "pass").write_text("card office\n")
    assert (
        run(
            capsys,
            "sam",
            "create-keystore",
            "--out",
            d / "ks",
            "--passphrase-file",
            d / "pass",
            "--enterprise",
            "00010001",
        )[0]
        == 0
    )
    code, out, err = run(
        capsys,
        "sim",
        "new-card",
        "--factory",
        "--out",
        d / "blank.json",
        "--keystore",
        d / "ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
    )
    assert code == 0, err
    state = CardStateFile(d / "blank.json").load()
    assert (state.status, state.key_version) == (0x00, 0) and "transport keys" in out
    code, out, err = run(
        capsys,
        "issue",
        "wash",
        "--keystore",
        d / "ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
        "--card",
        d / "blank.json",
        "--log",
        d / "station.db",
        "--to-version",
        "1",
    )
    assert code == 0, err + out
    assert CardStateFile(d / "blank.json").load().key_version == 1


def test_new_card_without_holder_says_which_options(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "sim",
        "new-card",
        "--out",
        tmp_path / "c.json",
        "--keystore",
        tmp_path / "ks",
        "--passphrase-file",
        tmp_path / "pass",
        "--enterprise",
        "00010001",
    )
    assert code == 2 and err.count("\n") == 1 and "--employee and --name" in err and "--factory" in err
    assert not (tmp_path / "c.json").exists()


def test_a_master_card_is_tapped_into_a_reader(pcscd, tmp_path, capsys):
    (tmp_path / "pin").write_text("24681357\n")
    assert (
        run(
            capsys,
            "sim",
            "new-master-card",
            "--enterprise",
            "00010001",
            "--out",
            tmp_path / "master.json",
            "--pin-file",
            tmp_path / "pin",
        )[0]
        == 0
    )
    slot = pcscd.slots[3]
    daemon = tap_control.TapDaemon(slot.port, tmp_path / "ctl", load_card)
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        code, out, err = run(capsys, "sim", "tap", tmp_path / "master.json", "--control", tmp_path / "ctl")
        assert code == 0, err
        code, out, err = run(capsys, "keys", "inspect", "--reader", slot.name, "--pin-file", tmp_path / "pin")
        assert code == 0, err + out
        assert "00010001" in out
    finally:
        tap_control.remove(tmp_path / "ctl")
        daemon.shutdown()
        thread.join(5)


def test_sim_readers_runs_a_pcscd_until_interrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PCSCLITE_CSOCK_NAME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "onecard", "--log-level", "WARNING", "sim", "readers", "--count", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("ready:"):
                break
        assert lines and lines[-1].startswith("ready:"), (lines, proc.stderr.read() if proc.poll() is not None else "")
        readers = [line for line in lines if line.startswith("reader ")]
        assert len(readers) == 2 and all(" vpcd port " in r for r in readers)
        socket_line = next(line for line in lines if line.startswith("PCSCLITE_CSOCK_NAME="))
        listed = subprocess.run(
            [sys.executable, "-c", "from smartcard.System import readers; print('\\n'.join(map(str, readers())))"],
            env={**env, "PCSCLITE_CSOCK_NAME": socket_line.split("=", 1)[1]},
            capture_output=True,
            text=True,
            timeout=30,
        )
        names = [r.split("'")[1] for r in readers]
        assert sorted(listed.stdout.split("\n")[:2]) == sorted(names), listed
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
