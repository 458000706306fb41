"""`onecard demo`: a door, an attendance clock, a canteen POS and a top-up terminal on virtual PC/SC readers, each
with its sync agent, a private mosquitto (TLS), the reference platform, and simulated employees tapping; and the
residential community's gate, for the evening's phone carrying two enterprises (issue 11); then an over-the-air top-up
through the SMSC simulator to a phone far from every terminal, and the spending bill by SMS (issue 12).

Everything is real except the cards and the hardware: a private pcscd with vpcd readers, every terminal and agent
a separate `onecard` process, encrypted keystores per terminal role, SQLite logs, signed MQTT messages. The
terminals' screens are relayed to this console, one line per action; Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.money import format_yuan

ENTERPRISE = "00010001"
OTHER_ENTERPRISE = "00020002"
COMMUNITY = "00030003"  # the residential community: a second enterprise on the same version 2 RFID-SIM
SERVICE_PASSWORD = "2468"  # Liu Yang's one-card service password, set at the card office
PHONE_NUMBERS = {"zhang": "8613800001001"}  # the holders' mobile numbers (add-holder --phone): OTA and SMS bills
OTA_SENDER = "10657000"  # the platform's short code: OTA packets and bills come from it
OTA_TOPUP = "30.00"


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


@dataclass(frozen=True)
class TerminalSpec:
    kind: str
    terminal_id: str
    name: str
    role: str  # the keystore role (`onecard sam restrict --role`)
    enterprise: str = ENTERPRISE
    slug: str = ""  # its files, screen and reader are named by this (default: its kind)

    def __post_init__(self) -> None:
        if not self.slug:
            object.__setattr__(self, "slug", self.kind)


TERMINALS = [
    TerminalSpec("door", "000000000101", "Door 1F", "door"),
    TerminalSpec("attendance", "000000000201", "Clock 1F", "door"),
    TerminalSpec("pos", "000000000301", "Canteen till", "pos"),
    TerminalSpec("topup", "000000000401", "Top-up", "top-up"),
    TerminalSpec("door", "000000000501", "Community gate", "door", COMMUNITY, "gate"),
]


def add_parser(top: argparse._SubParsersAction) -> None:
    p = top.add_parser(
        "demo",
        help="live demo: door, attendance, POS and top-up terminals with agents, broker and "
        "platform, simulated employees tapping",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where keystores, cards, certificates and databases go: a new or empty directory, or one an "
        "earlier demo made (that one is emptied first); default a new directory under the system's "
        "temporary directory",
    )
    p.add_argument("--hold", type=float, default=1.0, help="seconds each card stays on the reader")
    p.set_defaults(handler=cmd_demo)


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def onecard(*args: str, quiet: bool = True, keys: str | None = None, with_stderr: bool = False) -> str:
    """Run `onecard ARGS`; `keys` are typed on its stdin (the phone menu reads lines from a pipe). Returns its
    output (and what it said on stderr after it, `with_stderr`)."""
    import os

    cmd = [sys.executable, "-m", "onecard", "--log-level", "WARNING", *map(str, args)]
    env = dict(os.environ)
    if args and args[0] == "phone":
        env.pop("PCSCLITE_CSOCK_NAME", None)  # the handset's contact reader is in a pcscd of its own
    proc = subprocess.run(cmd, capture_output=True, text=True, input=keys, env=env)
    if proc.returncode != 0:
        raise UserError(
            f"demo step failed: onecard {' '.join(map(str, args))}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    if not quiet:
        print(proc.stdout, end="", flush=True)
    return proc.stdout + (proc.stderr if with_stderr else "")


STORY_CLOCK = "story-clock.txt"  # the terminals' clock (terminal run --story-clock): the story's time, scene by scene
STORY_ZONE = "Asia/Shanghai"


def story_day() -> dt.date:
    """The story happens yesterday (site time): every time it shows is in the past, whenever the demo runs."""
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(STORY_ZONE)).date() - dt.timedelta(days=1)


def set_story_time(work: Path, hh_mm: str) -> None:
    """Move the terminals' clock to this time of the story day (they run on from it at real speed)."""
    from zoneinfo import ZoneInfo

    from common.files import write_atomically

    hour, minute = map(int, hh_mm.split(":"))
    at = dt.datetime.combine(story_day(), dt.time(hour, minute), ZoneInfo(STORY_ZONE))
    write_atomically(work / STORY_CLOCK, (at.isoformat() + "\n").encode(), mode=0o644)


def employees(today: dt.date) -> list[Employee]:
    # Li Na's profile excludes today, whatever day the demo runs: weekdays-only on weekends and vice versa.
    off_profile = 1 if today.weekday() >= 5 else 2
    return [
        Employee("zhang", "Zhang Wei", "E1001", groups="1,2", story="door, attendance and canteen"),
        Employee("li", "Li Na", "E1002", time_profile=off_profile, story="only allowed in her shift hours"),
        Employee("wang", "Wang Fang", "E1003", story="reported her phone lost yesterday"),
        Employee("zhao", "Zhao Lei", "E1004", groups="2", algorithm="sm4", story="SM4 card; rights for group 2 only"),
        Employee(
            "sun",
            "Sun Li",
            "E1005",
            valid_to=(today - dt.timedelta(days=1)).isoformat(),
            story="contract ended yesterday",
        ),
        Employee("chen", "Chen Jie", "E2001", enterprise=OTHER_ENTERPRISE, story="works for another enterprise"),
    ]


class Site:
    """What the card office, the key-card administrator and the platform operator prepared before the demo."""

    def __init__(self, work: Path):
        self.work = work
        self.passphrase = work / "keystore.pass"
        self.passphrase.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        self.passphrase.chmod(0o600)
        self.staff = employees(story_day())
        self.cards: dict[str, Path] = {}
        self.asn: dict[str, str] = {}
        self.keystores: dict[str, Path] = {}
        self.sub_asn: dict[str, str] = {}  # Liu Yang's sub-applications by enterprise

    def make_keys(self) -> None:
        issuing = {e: self.work / f"issuing-{e}.keystore" for e in (ENTERPRISE, OTHER_ENTERPRISE, COMMUNITY)}
        for enterprise, ks in issuing.items():
            say(f"key-card administrator: key set of enterprise {enterprise} (AES-128 and SM4, every purpose)")
            onecard(
                "sam", "create-keystore", "--out", ks, "--passphrase-file", self.passphrase, "--enterprise", enterprise
            )
        self.keystores["issuing"] = issuing[ENTERPRISE]
        self.keystores["issuing-other"] = issuing[OTHER_ENTERPRISE]
        self.keystores["issuing-community"] = issuing[COMMUNITY]
        restricted = [(role, ENTERPRISE, role) for role in ("door", "pos", "top-up", "platform")]
        restricted += [(f"{role}-community", COMMUNITY, role) for role in ("door", "platform")]
        for name, enterprise, role in restricted:
            self.keystores[name] = self.work / f"{name}.keystore"
            onecard(
                "sam",
                "restrict",
                "--keystore",
                issuing[enterprise],
                "--passphrase-file",
                self.passphrase,
                "--out",
                self.keystores[name],
                "--role",
                role,
            )
        say(
            "installer: each terminal gets only its role's keys (door: ACCESS verify; POS: PURCHASE and "
            "LOAD for undo only; top-up: LOAD, and UPDATE to write rights changes); the TAC keys stay on the platform"
        )

    def issue_cards(self) -> None:
        today = story_day()
        for e in self.staff:
            self.cards[e.key] = self.work / f"card-{e.key}.json"
            ks = self.keystores["issuing" if e.enterprise == ENTERPRISE else "issuing-other"]
            args = [
                "sim",
                "new-card",
                "--out",
                self.cards[e.key],
                "--keystore",
                ks,
                "--passphrase-file",
                self.passphrase,
                "--enterprise",
                e.enterprise,
                "--employee",
                e.employee_no,
                "--name",
                e.name,
                "--groups",
                e.groups,
                "--time-profile",
                str(e.time_profile),
                "--algorithm",
                e.algorithm,
            ]
            args += ["--valid-from", (today - dt.timedelta(days=365)).isoformat()]
            if e.valid_to:
                args += ["--valid-to", e.valid_to]
            out = onecard(*args)
            self.asn[e.key] = out.split()[1]
            say(f"card office: issued {e.name}'s RFID-SIM {self.asn[e.key]} ({e.story})")
        self.issue_two_enterprise_card()
        self.cards["phone"] = self.work / "card-phone.json"
        onecard("sim", "new-foreign-card", "--out", self.cards["phone"], "--label", "phone without RFID-SIM")

    def issue_two_enterprise_card(self) -> None:
        """Liu Yang's version 2 RFID-SIM: the office's card office issues its sub-application, the residential
        community's office adds its own beside it (each with its enterprise's keys), then the office sets the
        holder's one-card service password over the SIM's contact interface."""
        from phone.office import set_service_password
        from sam.keystore import KeystoreUnlock
        from sam.software import SoftwareSam
        from simulator.sim_toolkit import load_sim

        today = story_day()
        card = self.cards["liu"] = self.work / "card-liu.json"
        for enterprise, ks, label in (
            (ENTERPRISE, self.keystores["issuing"], "Office"),
            (COMMUNITY, self.keystores["issuing-community"], "Community"),
        ):
            out = onecard(
                "sim", "new-card", "--out", card, "--keystore", ks, "--passphrase-file", self.passphrase,
                "--enterprise", enterprise, "--employee", "E1006" if enterprise == ENTERPRISE else "R0301",
                "--name", "Liu Yang", "--groups", "1", "--sub-application", label,
                "--valid-from", (today - dt.timedelta(days=365)).isoformat(),
            )  # fmt: skip
            self.sub_asn[enterprise] = out.split()[1]
            say(f"{'card office' if enterprise == ENTERPRISE else 'community office'}: Liu Yang's RFID-SIM now "
                f"carries the {label.lower()} sub-application {self.sub_asn[enterprise]}")  # fmt: skip
        sim = load_sim(card)
        sim.power_on()
        sam = SoftwareSam.open(self.keystores["issuing"], KeystoreUnlock.from_passphrase_file(self.passphrase))
        set_service_password(sim, sam, bytes.fromhex(ENTERPRISE), SERVICE_PASSWORD)
        say("card office: Liu Yang chose her one-card service password (needed to delete an application)")


class Platform:
    """The reference platform: its database, signing key and `onecard platform serve` process."""

    def __init__(self, work: Path, site: Site):
        self.work = work
        self.db, self.key = work / "platform.db", work / "platform.key"
        self.public_key = work / "platform.pub"
        self.site = site

    def admin(self, *args: str) -> str:
        return onecard("platform", args[0], "--db", self.db, "--key", self.key, *args[1:])

    def register(self) -> None:
        onecard("platform", "init", "--db", self.db, "--key", self.key)
        self.admin("add-enterprise", ENTERPRISE, "--name", "Demo Co")
        self.admin("add-enterprise", OTHER_ENTERPRISE, "--name", "Other Co")
        self.admin("add-enterprise", COMMUNITY, "--name", "Garden Community")
        for t in TERMINALS:
            self.admin("add-terminal", t.terminal_id, "--enterprise", t.enterprise, "--name", t.name, "--kind", t.kind)
        for e in self.site.staff:
            phone_no = ("--phone", PHONE_NUMBERS[e.key]) if e.key in PHONE_NUMBERS else ()
            self.admin("add-holder", e.employee_no, "--enterprise", e.enterprise, "--name", e.name, *phone_no)
            self.admin("issue-card", self.site.asn[e.key], "--enterprise", e.enterprise, "--employee", e.employee_no)
        for enterprise, employee_no in ((ENTERPRISE, "E1006"), (COMMUNITY, "R0301")):
            self.admin("add-holder", employee_no, "--enterprise", enterprise, "--name", "Liu Yang")
            self.admin(
                "issue-card", self.site.sub_asn[enterprise], "--enterprise", enterprise, "--employee", employee_no
            )
        say("platform: enterprises, terminals, employees and cards registered")

    def serve(self, stack: contextlib.ExitStack, broker, pki) -> None:
        log = stack.enter_context(open(self.work / "platform.log", "w"))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onecard",
                "platform",
                "serve",
                "--db",
                str(self.db),
                "--key",
                str(self.key),
                "--broker-port",
                str(broker.port),
                "--ca",
                str(pki.ca.cert),
                "--cert-dir",
                str(pki.platform_cert_dir),
                "--tac-keystore",
                str(self.site.keystores["platform"]),
                "--passphrase-file",
                str(self.site.passphrase),
            ],
            stdout=log,
            stderr=log,
        )
        stack.callback(stop_process, proc)
        say(f"platform serving as pid {proc.pid} (uploads, signed blacklists, TAC checks), logging to platform.log")


class Screen:
    """A terminal process: its screen lines relayed to this console and remembered, its keypad on stdin."""

    def __init__(self, spec: TerminalSpec, proc: subprocess.Popen):
        self.spec, self.proc = spec, proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._relay, daemon=True, name=f"screen-{spec.slug}").start()

    def _relay(self) -> None:
        for line in self.proc.stdout:
            print(line, end="", flush=True)
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(self, text: str, since: int, timeout: float = 15.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in line for line in self.lines[since:]), timeout)

    def key(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def terminal_config(
    path: Path, t: TerminalSpec, work: Path, reader: str, site: Site, broker, pki, platform: Platform
) -> None:
    client = pki.client(t.terminal_id)
    path.write_text(
        f"""[terminal]
id = "{t.terminal_id}"
kind = "{t.kind}"
enterprise_id = "{t.enterprise}"
name = "{t.name}"
timezone = "Asia/Shanghai"
database = "{work / f"{t.slug}.db"}"
blacklist = "{work / f"{t.slug}-blacklist.db"}"

[reader]
driver = "pcsc"
name = "{reader}"

[sam]
backend = "keystore"
keystore = "{site.keystores[t.role if t.enterprise == ENTERPRISE else f"{t.role}-community"]}"
passphrase_file = "{site.passphrase}"

[door]
group = 1
open_seconds = 3

[pos]
max_purchase = "100.00"
offline_limit = "300.00"
undo_window_seconds = 300

[output]
driver = "console"
color = false

[keypad]
# The demo is the till system here: it pipes the cashier's amounts in.
driver = "stdin"

[sync]
broker_host = "127.0.0.1"
broker_port = {broker.port}
ca_file = "{pki.ca.cert}"
cert_file = "{client.cert}"
key_file = "{client.key}"
platform_public_key = "{platform.public_key}"
database = "{work / f"{t.slug}-sync.db"}"
heartbeat_seconds = 10

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
""",
        encoding="utf-8",
    )


def start_terminal(stack: contextlib.ExitStack, work: Path, t: TerminalSpec, cfg: Path) -> Screen:
    log = stack.enter_context(open(work / f"{t.slug}.log", "w"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onecard",
            "terminal",
            "run",
            "--config",
            str(cfg),
            "--display-snapshots",
            str(work / "screens" / t.slug),
            "--story-clock",
            str(work / STORY_CLOCK),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        bufsize=1,
    )
    stack.callback(stop_process, proc)
    agent_log = stack.enter_context(open(work / f"{t.slug}-agent.log", "w"))
    agent = subprocess.Popen(
        [sys.executable, "-m", "onecard", "sync", "run", "--config", str(cfg)], stdout=agent_log, stderr=agent_log
    )
    stack.callback(stop_process, agent)
    deadline = time.monotonic() + 20
    while "terminal.started" not in (work / f"{t.slug}.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"terminal {t.name} did not start: {(work / f'{t.slug}.log').read_text().strip()}")
        time.sleep(0.05)
    say(f"terminal '{t.name}' ({t.kind}) pid {proc.pid} and its sync agent pid {agent.pid} are running")
    return Screen(t, proc)


class Walk:
    """The people of the demo, tapping cards on the four readers."""

    def __init__(self, site: Site, screens: dict[str, Screen], iccs: dict, hold: float):
        self.site, self.screens, self.iccs, self.hold = site, screens, iccs, hold

    def tap(self, kind: str, who: str, expect: str, *, tear_after: int | None = None) -> None:
        from simulator.card_files import load_card

        screen, icc = self.screens[kind], self.iccs[kind]
        since = screen.mark()
        icc.insert(load_card(self.site.cards[who]), label=who, tear_after=tear_after)
        time.sleep(self.hold)
        icc.remove()
        if not screen.wait_for(expect, since):
            raise UserError(f"the {kind} terminal did not show '{expect}'; see {self.site.work}/{kind}.log")
        time.sleep(0.5)  # pcscd polls presence every 400 ms: let it see the reader empty before the next card

    def keypad(self, kind: str, line: str, expect: str) -> None:
        screen = self.screens[kind]
        since = screen.mark()
        screen.key(line)
        if not screen.wait_for(expect, since):
            raise UserError(f"the {kind} terminal did not show '{expect}' after keypad '{line}'")


def wait_blacklisted(work: Path, asn: str, listed: bool, timeout: float = 20.0, enterprise: str = ENTERPRISE) -> float:
    """Seconds until the blacklist (written by its agent) of every terminal of `enterprise` has `asn` listed (or
    not)."""
    from terminal.blacklist import Blacklist

    terminals = [t for t in TERMINALS if t.enterprise == enterprise]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        states = []
        for t in terminals:
            path = work / f"{t.slug}-blacklist.db"
            if path.exists():
                with Blacklist.open(path) as bl:
                    states.append(bl.lookup(bytes.fromhex(asn)) is not None)
        if len(states) == len(terminals) and all(s == listed for s in states):
            return time.monotonic() - start
        time.sleep(0.1)
    raise UserError(
        f"the terminals did not {'list' if listed else 'unlist'} card {asn} within {timeout:g} s; "
        "see the *-agent.log files"
    )


def script(walk: Walk, platform: Platform, work: Path) -> None:
    site = walk.site
    set_story_time(work, "08:55")
    say("--- 08:55, morning: everyone arrives")
    expectations = {
        "zhang": ("Welcome, Zhang Wei", "Zhang Wei: clocked in"),
        "li": ("Outside your permitted hours", "Li Na: clocked in"),
        "wang": ("Card reported lost", "Card reported lost"),
        "zhao": ("No access rights for this door", "Zhao Lei: clocked in"),
        "sun": ("Card expired on", "Card expired on"),
        "chen": ("This card has no application for this site",) * 2,
        "phone": ("Card not supported",) * 2,
    }
    names = {e.key: e.name for e in site.staff} | {"phone": "a visitor's phone without RFID-SIM"}
    for key, (door_says, clock_says) in expectations.items():
        say(f"{names[key]} taps at the door, then at the attendance clock")
        walk.tap("door", key, door_says)
        walk.tap("attendance", key, clock_says)
    say("Zhang Wei taps the attendance clock again straight away")
    walk.tap("attendance", "zhang", "already clocked in")

    set_story_time(work, "11:30")
    say("--- 11:30, the top-up machine: the operator loads 100.00 for Zhang Wei and 20.00 for Li Na")
    walk.keypad("topup", "100", "Top-up 100.00: please tap your card")
    walk.tap("topup", "zhang", "Loaded 100.00 - balance 100.00")
    walk.keypad("topup", "20", "Top-up 20.00")
    walk.tap("topup", "li", "Loaded 20.00 - balance 20.00")

    set_story_time(work, "12:10")
    say("--- 12:10, lunch at the canteen")
    walk.keypad("pos", "12.50", "Pay 12.50: please tap your card")
    walk.tap("pos", "zhang", "Paid 12.50")
    walk.keypad("pos", "30", "Pay 30.00")
    walk.tap("pos", "li", "Insufficient balance for 30.00: top up first")
    say("the cashier charged Zhang Wei for the wrong dish and undoes it")
    walk.keypad("pos", "u", "Undo the last payment: tap the card that paid")
    walk.tap("pos", "zhang", "Refunded 12.50 - balance 100.00")
    say("Zhang Wei pays 8.00 but pulls his phone away just as the till writes the card")
    walk.keypad("pos", "8.00", "Pay 8.00")
    walk.tap("pos", "zhang", "Card removed too soon: tap again to finish", tear_after=3)
    walk.tap("pos", "zhang", "Paid 8.00")
    say("Sun Li's purse expired with her contract")
    walk.keypad("pos", "5", "Pay 5.00")
    walk.tap("pos", "sun", "Purse expired on")

    set_story_time(work, "15:20")
    say("--- 15:20, afternoon: Zhang Wei reports his phone lost to the enterprise administrator")
    reported = time.monotonic()
    office_terminals = [t for t in TERMINALS if t.enterprise == ENTERPRISE]
    platform.admin("report-loss", site.asn["zhang"])
    wait_blacklisted(work, site.asn["zhang"], listed=True)
    say(
        f"platform: loss report signed and sent; all {len(office_terminals)} office terminals enforce it "
        f"{time.monotonic() - reported:.1f} s after the administrator started it"
    )
    walk.tap("door", "zhang", "Card reported lost")
    say("he finds the phone in his coat; the administrator unlocks the card")
    platform.admin("unlock", site.asn["zhang"])
    wait_blacklisted(work, site.asn["zhang"], listed=False)
    walk.tap("door", "zhang", "Welcome, Zhang Wei")
    two_enterprises(walk, platform, work)


def phone(text: str) -> None:
    print(f"   [Liu Yang's phone] {text}", flush=True)


def two_enterprises(walk: Walk, platform: Platform, work: Path) -> None:
    """One card, many uses (issue 11): Liu Yang's version 2 RFID-SIM carries the office and the residential
    community; she deletes the community's sub-application from her phone menu and the office door still opens."""
    site = walk.site
    set_story_time(work, "18:30")
    say("--- 18:30, evening: Liu Yang's phone carries two sub-applications, the office and the residential community")
    say("Liu Yang taps at the office door, then at the community gate on her way home")
    walk.tap("door", "liu", "Welcome, Liu Yang")
    walk.tap("gate", "liu", "Welcome, Liu Yang")
    say("she loads 50.00 at the office top-up machine: only the office sub-application's purse changes")
    walk.keypad("topup", "50", "Top-up 50.00: please tap your card")
    walk.tap("topup", "liu", "Loaded 50.00 - balance 50.00")
    say("she checks her balances from the phone's SIM menu (the handset drives the SIM over PC/SC)")
    for line in onecard("phone", "balance", "--card", site.cards["liu"]).splitlines():
        phone(line)
    say("she moves out: from the phone menu she deletes the Community application with her service password")
    deleted = time.monotonic()
    menu = onecard(
        "phone", "menu", "--card", site.cards["liu"],
        "--platform-db", platform.db, "--platform-key", platform.key,
        "--tac-keystore", site.keystores["platform-community"], "--passphrase-file", site.passphrase,
        keys=f"2\n5\n{SERVICE_PASSWORD}\n1\n\nq\n", with_stderr=True,
    )  # fmt: skip
    for line in menu.splitlines():
        if line.startswith("platform: "):  # the platform's answer to the SIM's deletion request
            say(line)
        elif line.strip() and not line.startswith(("(", "Enter:", "↑")) and set(line) != {"-"}:
            phone(line.removeprefix("> ") if line.startswith("> ==") else line)
    wait_blacklisted(work, site.sub_asn[COMMUNITY], listed=True, enterprise=COMMUNITY)
    say(
        f"platform: the community's sub-application {site.sub_asn[COMMUNITY]} is cancelled and its gate enforces "
        f"it {time.monotonic() - deleted:.1f} s after she chose Delete; the office sub-application "
        f"{site.sub_asn[ENTERPRISE]} is untouched"
    )
    say("Liu Yang taps at the office door, then at the community gate again")
    walk.tap("door", "liu", "Welcome, Liu Yang")
    walk.tap("gate", "liu", "This card has been voided")


def zhang_phone(text: str) -> None:
    print(f"   [Zhang Wei's phone] {text}", flush=True)


def over_the_air(site: Site, platform: Platform, work: Path) -> None:
    """Over the air through the mobile network (issue 12): the administrator tops up Zhang Wei's RFID-SIM from the
    office while he is far from every terminal. The platform's SMPP gateway (smpplib) submits the secured packets
    to the operator's SMSC (simulated here, in this process); the SMSC delivers them to his phone, which hands each
    to the SIM as an ENVELOPE and sends the SIM's proof of receipt back. Then his phone menu shows the new balance,
    and the month's spending bill arrives on the phone as an SMS."""
    from zoneinfo import ZoneInfo

    from phone.cli import BalanceScript
    from phone.handset import Handset, HandsetError
    from sam.interface import Algorithm, CardIdentity
    from sam.keystore import KeystoreUnlock, load_keystore
    from sam.ota_keys import OtaSam
    from simulator import ota_sim
    from simulator.card_files import load_card
    from simulator.sim_toolkit import load_sim
    from simulator.smsc import Smsc

    number, asn = PHONE_NUMBERS["zhang"], site.asn["zhang"]
    now = dt.datetime.now(ZoneInfo(STORY_ZONE))
    say(f"--- {now:%H:%M} today (site time), away on a trip: Zhang Wei's phone is nowhere near a terminal")
    # The card office wrote the SIM's OTA keys (KIc/KID, diversified per card) with its other keys at issuing.
    keystore = load_keystore(site.keystores["issuing"], KeystoreUnlock.from_passphrase_file(site.passphrase))
    keys = OtaSam(keystore).personalise_keys(CardIdentity(bytes.fromhex(asn), bytes.fromhex(ENTERPRISE), 1,
                                                          Algorithm.AES128))  # fmt: skip
    state_file = ota_sim.OtaStateFile(work / "card-zhang-ota.json")
    state_file.save(ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    # His phone: one handset (phone/handset.py) on the SIM's contact interface, for the menu and for the network.
    sim = load_sim(site.cards["zhang"])
    sim.ota = ota_sim.OtaSim(load_card(site.cards["zhang"]), state_file.load(), store=state_file)
    sim.power_on()
    screen = BalanceScript()
    handset = Handset(sim, screen, lambda destination, data: "no network for the menu's own messages here")
    menu = handset.start()
    if menu is None:
        raise UserError("Zhang Wei's SIM offers no menu")
    smsc = Smsc(password=secrets.token_hex(4)).start()  # SMPP 3.4: a password is at most 8 characters
    try:
        smsc.add_handset(number, handset)
        secret = work / "smpp.pass"
        secret.write_text(smsc.password + "\n", encoding="utf-8")
        secret.chmod(0o600)
        smpp = ("--smsc", f"127.0.0.1:{smsc.port}", "--smpp-password-file", secret, "--sender", OTA_SENDER)
        say(f"operator's SMSC (SMPP 3.4) on 127.0.0.1:{smsc.port}; Zhang Wei's phone {number} is attached to it")
        say(f"the enterprise administrator tops up {OTA_TOPUP} for Zhang Wei from the office, over the air")
        out = platform.admin(
            "ota-topup", asn, OTA_TOPUP, "--over-the-air", *smpp, "--keystore", site.keystores["issuing"],
            "--passphrase-file", site.passphrase, "--terminal", "000000000901", "--wait", "20",
        )  # fmt: skip
        say(f"platform: {out.strip()}")
        if ": done, balance now" not in out:
            raise UserError(f"the over-the-air top-up did not finish: {out.strip()}")
        packets = [m for m in smsc.messages.values() if m.pid == 0x7F]
        say(
            f"SMSC: {len(packets)} SMS-PP packets (TP-PID 7F) delivered to the SIM, {len(smsc.mo_log)} proofs of "
            "receipt sent back to the platform"
        )
        card = json.loads(platform.admin("card", asn))
        say("Zhang Wei opens the one-card menu of the same phone and chooses Balance")
        screen.shown.clear()
        try:
            handset.choose(menu.items[0].id)
        except HandsetError as exc:
            raise UserError(f"Zhang Wei's SIM stopped the menu: {exc}") from None
        shown = f"{menu.items[0].text}: " + "; ".join(line for t in screen.shown for line in t.splitlines()[1:])
        zhang_phone(shown)
        balance = f"Balance {format_yuan(card['balance_cents'])} yuan"
        if balance not in shown:
            raise UserError(f"the phone menu does not show the platform's {balance}: {shown.strip()}")
        say(f"platform: card balance {format_yuan(card['balance_cents'])}, the same as the phone menu shows")
        month = now.strftime("%Y-%m")  # the month the over-the-air top-up was booked in
        say(f"the administrator sends Zhang Wei his spending bill for {month} by SMS")
        sent = platform.admin("spending-bill", "E1001", "--enterprise", ENTERPRISE, "--month", month, "--send",
                              *smpp)  # fmt: skip
        say(f"platform: {sent.strip().splitlines()[-1]}")
        deadline = time.monotonic() + 10
        while not handset.inbox and time.monotonic() < deadline:  # the SMSC delivers from its own thread
            time.sleep(0.05)
        if not handset.inbox:
            raise UserError("the spending bill SMS did not reach Zhang Wei's phone")
        zhang_phone(f"SMS from {OTA_SENDER}: {handset.inbox[-1]}")
    finally:
        smsc.stop()


def wait_uploaded(platform: Platform, asn: str, expected: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in platform.admin("purse", asn).splitlines() if line.startswith("{")]
        if len(lines) >= expected:
            return lines
        time.sleep(0.3)
    raise UserError(f"the platform did not receive {expected} purse transactions of {asn} within {timeout:g} s")


DEMO_MARK = ".onecard-demo"  # in every directory the demo made: only such a directory is ever emptied


def prepare_workdir(requested: Path | None) -> Path:
    """A directory for this run: new, empty, or made by an earlier demo (emptied). Anything else is refused
    untouched: `--workdir ~` must never wipe a home directory."""
    import tempfile

    if requested is None:
        work = Path(tempfile.mkdtemp(prefix="onecard-demo-"))
    else:
        work = requested.expanduser().resolve()
        if work.exists() and not work.is_dir():
            raise UserError(f"--workdir {work} is a file, not a directory; name a new or empty directory")
        if work.is_dir() and any(work.iterdir()):
            if not (work / DEMO_MARK).is_file():
                raise UserError(
                    f"--workdir {work} is not empty and was not made by onecard demo: nothing was "
                    "touched; name a new or empty directory (or leave --workdir out)"
                )
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    (work / DEMO_MARK).write_text(
        "made by onecard demo; the next demo run with this --workdir empties it\n", encoding="utf-8"
    )
    return work


def cmd_demo(args) -> int:
    from common.logs import setup_logging
    from simulator.broker import Broker, BrokerError, make_pki
    from simulator.pcscd import PcscdError, private_pcscd
    from simulator.vpcd import VirtualIcc

    work = prepare_workdir(args.workdir)
    set_story_time(work, "08:30")
    site = Site(work)
    platform = Platform(work, site)
    with contextlib.ExitStack() as stack:
        # The screens are the show; the demo's own structured logs go to a file beside the others.
        setup_logging("INFO", stack.enter_context(open(work / "demo.log", "a", encoding="utf-8")))
        say(f"everything goes to {work}; structured logs in {work}/*.log")
        site.make_keys()
        site.issue_cards()
        platform.register()
        platform.admin("report-loss", site.asn["wang"])
        pki = make_pki(work / "pki", {t.terminal_id: t.enterprise for t in TERMINALS})
        try:
            broker = Broker(work / "broker", pki, terminals={t.terminal_id: t.enterprise for t in TERMINALS})
            broker.start()
        except BrokerError as exc:
            raise UserError(str(exc)) from None
        stack.callback(broker.stop)
        say(f"mosquitto on 127.0.0.1:{broker.port}: TLS, a client certificate per terminal, per-terminal ACL")
        platform.serve(stack, broker, pki)
        (work / "pcscd").mkdir()
        try:
            pcscd = stack.enter_context(private_pcscd(n_readers=len(TERMINALS), workdir=work / "pcscd"))
        except PcscdError as exc:
            raise UserError(str(exc)) from None
        say(f"pcscd is up with virtual readers: {', '.join(pcscd.names)}")
        screens, iccs = {}, {}
        for slot, t in enumerate(TERMINALS):
            cfg = work / f"{t.slug}.toml"
            terminal_config(cfg, t, work, pcscd.names[slot], site, broker, pki, platform)
            screens[t.slug] = start_terminal(stack, work, t, cfg)
            iccs[t.slug] = VirtualIcc(pcscd.ports[slot], label=f"{t.slug} reader")
        wait_blacklisted(work, site.asn["wang"], listed=True)
        say("every terminal has the platform's signed blacklist: Wang Fang's lost phone is on it")
        try:
            script(Walk(site, screens, iccs, args.hold), platform, work)
            say("--- the platform's view of Zhang Wei's purse (each TAC checked with the platform's TAC key)")
            for line in wait_uploaded(platform, site.asn["zhang"], 4):
                print(f"   {line}", flush=True)
            card = json.loads(platform.admin("card", site.asn["zhang"]))
            say(f"platform: Zhang Wei's card balance {format_yuan(card['balance_cents'])}, the same as on the card")
            over_the_air(site, platform, work)
        except KeyboardInterrupt:
            say("Ctrl-C: stopping the terminals, agents, platform, broker and pcscd")
    for t in TERMINALS:
        say(f"{t.name}: event log")
        onecard("log", "verify", "--db", work / f"{t.slug}.db", quiet=False)
    say(f"every screen the terminals showed is a PNG in {work / 'screens'}")
    say(f"done; everything is in {work}")
    return 0
