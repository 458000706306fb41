"""`onecard demo`: a door terminal and an attendance clock on virtual PC/SC readers, simulated employees tapping.

Everything is real except the cards: a private pcscd with vpcd readers, the terminals as separate
processes running `onecard terminal run`, encrypted keystores, SQLite logs. Each step prints what it does.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from onecard.errors import UserError

ENTERPRISE = "00010001"
OTHER_ENTERPRISE = "00020002"


@dataclass(frozen=True)
class Employee:
    key: str
    name: str
    employee_no: str
    groups: str = "1"
    time_profile: int = 0
    enterprise: str = ENTERPRISE
    valid_to: str | None = None
    algorithm: str = "aes128"
    story: str = ""


def add_parser(top: argparse._SubParsersAction) -> None:
    p = top.add_parser("demo", help="live demo: door + attendance terminals on virtual readers with simulated cards")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"),
                   help="where keystores, cards and databases go (emptied first; default var/demo)")
    p.add_argument("--hold", type=float, default=1.0, help="seconds each card stays on the reader")
    p.add_argument("--rounds", type=int, default=1, help="how many times the employees walk past (0 = until Ctrl-C)")
    p.set_defaults(handler=cmd_demo)


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def onecard(*args: str, quiet: bool = True) -> str:
    cmd = [sys.executable, "-m", "onecard", "--log-level", "WARNING", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"demo step failed: onecard {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    if not quiet:
        print(proc.stdout, end="", flush=True)
    return proc.stdout


def employees(today: dt.date) -> list[Employee]:
    # Li Na's profile excludes today, whatever day the demo runs: weekdays-only on weekends and vice versa.
    off_profile = 1 if today.weekday() >= 5 else 2
    return [
        Employee("zhang", "Zhang Wei", "E1001", groups="1,2", story="door and attendance: allowed"),
        Employee("li", "Li Na", "E1002", time_profile=off_profile, story="only allowed in her shift hours"),
        Employee("wang", "Wang Fang", "E1003", story="reported her phone lost yesterday"),
        Employee("zhao", "Zhao Lei", "E1004", groups="2", algorithm="sm4", story="SM4 card; rights for group 2 only"),
        Employee("sun", "Sun Li", "E1005", valid_to=(today - dt.timedelta(days=1)).isoformat(),
                 story="contract ended yesterday"),
        Employee("chen", "Chen Jie", "E2001", enterprise=OTHER_ENTERPRISE, story="works for another enterprise"),
    ]


def terminal_config(path: Path, *, id_: str, kind: str, name: str, reader: str, db: Path, blacklist: Path,
                    keystore: Path, passphrase: Path) -> None:
    path.write_text(f"""[terminal]
id = "{id_}"
kind = "{kind}"
enterprise_id = "{ENTERPRISE}"
name = "{name}"
timezone = "Asia/Shanghai"
database = "{db}"
blacklist = "{blacklist}"

[reader]
driver = "pcsc"
name = "{reader}"

[sam]
backend = "keystore"
keystore = "{keystore}"
passphrase_file = "{passphrase}"

[door]
group = 1
open_seconds = 3

[attendance]
repeat_window_seconds = 60

[output]
driver = "console"

[time_profiles.1]
name = "weekdays"
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]

[time_profiles.2]
name = "weekend duty"
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]
""", encoding="utf-8")


def prepare(work: Path) -> tuple[dict[str, Path], Path, Path, list[Employee]]:
    """Keystores, cards and the blacklist: what the platform and the card office would have done."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    passphrase = work / "keystore.pass"
    passphrase.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    passphrase.chmod(0o600)
    issuing = {ENTERPRISE: work / "issuing-00010001.keystore", OTHER_ENTERPRISE: work / "issuing-00020002.keystore"}
    for enterprise, ks in issuing.items():
        say(f"card office: creating the key set of enterprise {enterprise} (AES-128 and SM4)")
        onecard("sam", "create-keystore", "--out", str(ks), "--passphrase-file", str(passphrase),
                "--enterprise", enterprise, "--algorithm", "both", "--usages", "verify,mac,personalise")
    terminal_ks = work / "terminal.keystore"
    say("installer: giving the terminals a verify-only copy of the ACCESS keys")
    onecard("sam", "restrict", "--keystore", str(issuing[ENTERPRISE]), "--passphrase-file", str(passphrase),
            "--out", str(terminal_ks), "--usages", "verify", "--purposes", "access")
    cards: dict[str, Path] = {}
    today = dt.date.today()
    staff = employees(today)
    for e in staff:
        cards[e.key] = work / f"card-{e.key}.json"
        args = ["sim", "new-card", "--out", str(cards[e.key]), "--keystore", str(issuing[e.enterprise]),
                "--passphrase-file", str(passphrase), "--enterprise", e.enterprise, "--employee", e.employee_no,
                "--name", e.name, "--groups", e.groups, "--time-profile", str(e.time_profile),
                "--algorithm", e.algorithm]
        if e.valid_to:
            args += ["--valid-from", (today - dt.timedelta(days=365)).isoformat(), "--valid-to", e.valid_to]
        onecard(*args)
        say(f"card office: issued {e.name}'s RFID-SIM ({e.story})")
    cards["phone"] = work / "card-phone.json"
    onecard("sim", "new-foreign-card", "--out", str(cards["phone"]), "--label", "phone without RFID-SIM")
    return cards, terminal_ks, passphrase, staff


def blacklist_lost_card(db: Path, card: Path) -> None:
    from simulator.card import CardStateFile
    from terminal.blacklist import Blacklist, BlacklistEntry

    asn = CardStateFile(card).load().asn
    bl = Blacklist.open(db)
    try:
        bl.apply_snapshot(1, [BlacklistEntry(asn=asn, reason="lost", listed_in_version=1)])
    finally:
        bl.close()


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise UserError(f"terminal exited during start-up: {path.read_text(errors='replace').strip()}")
        time.sleep(0.05)
    raise UserError(f"terminal did not start within {timeout:g} s; see {path}")


def start_terminal(work: Path, pcscd, slot: int, tid: str, kind: str, name: str, keystore: Path, passphrase: Path,
                   lost_card: Path) -> subprocess.Popen:
    db, blacklist, cfg, logf = (work / f"{kind}.db", work / f"{kind}-blacklist.db", work / f"{kind}.toml",
                                work / f"{kind}.log")
    terminal_config(cfg, id_=tid, kind=kind, name=name, reader=pcscd.names[slot], db=db, blacklist=blacklist,
                    keystore=keystore, passphrase=passphrase)
    blacklist_lost_card(blacklist, lost_card)
    with open(logf, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "onecard", "terminal", "run", "--config", str(cfg)],
                                stderr=err, env=os.environ.copy())
    wait_for_line(logf, "terminal.started", proc, 20)
    say(f"terminal '{name}' ({kind}) running as pid {proc.pid}, logging to {logf}")
    return proc


def stop_terminal(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tap(icc, card: Path, key: str, hold: float) -> None:
    from simulator.card import load_card

    icc.insert(load_card(card), label=key)
    time.sleep(hold)
    icc.remove()
    time.sleep(0.5)  # pcscd polls presence every 400 ms: let it see the reader empty before the next card


def cmd_demo(args) -> int:
    from onecard.logs import setup_logging
    from simulator.pcscd import PcscdError, private_pcscd
    from simulator.vpcd import VirtualIcc

    work = args.workdir.resolve()
    cards, terminal_ks, passphrase, staff = prepare(work)
    with contextlib.ExitStack() as stack:
        # The screens are the show; the demo's own structured logs go to a file beside the terminals' logs.
        setup_logging("INFO", stack.enter_context(open(work / "demo.log", "a", encoding="utf-8")))
        say(f"structured logs: {work}/*.log")
        (work / "pcscd").mkdir()
        try:
            pcscd = stack.enter_context(private_pcscd(n_readers=2, workdir=work / "pcscd"))
        except PcscdError as exc:
            raise UserError(str(exc)) from None
        say(f"pcscd is up with virtual readers: {', '.join(pcscd.names)}")
        for slot, (tid, kind, name) in enumerate([("000000000101", "door", "Door 1F"),
                                                  ("000000000201", "attendance", "Clock 1F")]):
            proc = start_terminal(work, pcscd, slot, tid, kind, name, terminal_ks, passphrase, cards["wang"])
            stack.callback(stop_terminal, proc)
        say("platform: Wang Fang's card is on the blacklist of both terminals (reason: lost)")
        door = VirtualIcc(pcscd.ports[0], label="door reader")
        clock = VirtualIcc(pcscd.ports[1], label="attendance reader")
        walk = [(e.key, e.name) for e in staff] + [("phone", "a visitor's phone without RFID-SIM")]
        round_no = 0
        try:
            while args.rounds == 0 or round_no < args.rounds:
                round_no += 1
                for key, who in walk:
                    for icc, where in ((door, "door"), (clock, "attendance clock")):
                        say(f"{who} taps at the {where}")
                        tap(icc, cards[key], key, args.hold)
                say("Zhang Wei taps the attendance clock again straight away")
                tap(clock, cards["zhang"], "zhang", args.hold)
        except KeyboardInterrupt:
            say("Ctrl-C: stopping the terminals and pcscd")
    for kind in ("door", "attendance"):
        say(f"{kind} terminal's event log:")
        onecard("log", "show", "--db", str(work / f"{kind}.db"), quiet=False)
        onecard("log", "verify", "--db", str(work / f"{kind}.db"), quiet=False)
    say(f"done; everything is in {work}")
    return 0
