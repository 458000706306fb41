"""`onecard terminal ...`: boot a terminal from firmware.toml and serve taps until stopped."""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

from common.errors import UserError
from terminal.adapters import build_terminal, read_config, utc_now


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="serve taps on the configured reader until Ctrl-C")
    run.add_argument("--config", required=True, type=Path, help="path of firmware.toml")
    run.add_argument(
        "--display-snapshots",
        type=Path,
        metavar="DIR",
        help="also write every screen the display shows as DIR/NNNN-kind.png",
    )
    run.add_argument(
        "--story-clock",
        type=Path,
        metavar="FILE",
        help="demo only, never on a real terminal: the terminal's time is the ISO time in FILE plus the "
        "time since FILE was last written (onecard demo moves it from scene to scene)",
    )
    run.set_defaults(handler=cmd_run)
    check = sub.add_parser("check-config", help="validate firmware.toml and print what it sets up")
    check.add_argument("--config", required=True, type=Path)
    check.set_defaults(handler=cmd_check_config)
    files = sub.add_parser("files", help="where the documented firmware.toml and the systemd units are installed")
    files.add_argument(
        "--path",
        metavar="NAME",
        help="print only the path of this file, e.g. firmware.toml or onecard-terminal.service",
    )
    files.set_defaults(handler=cmd_files)
    from terminal import install_cli, report_cli  # the installer's commands: provision, selftest

    install_cli.add_subcommands(sub)
    report_cli.add_subcommands(sub)
    hashpw = sub.add_parser(
        "hash-password", help="read a cashier's password (twice, not echoed) and print its hash for [pos.operators]"
    )
    hashpw.set_defaults(handler=cmd_hash_password)


def story_clock(path: Path):
    """The demo's clock: FILE holds an aware ISO time, valid from FILE's modification time on, at real speed."""
    import time

    def read() -> dt.datetime:
        try:
            text, written = path.read_text(encoding="utf-8").strip(), path.stat().st_mtime
            start = dt.datetime.fromisoformat(text)
        except (OSError, ValueError) as exc:
            raise UserError(f"--story-clock {path}: {exc}; write an ISO time with its offset into it") from None
        if start.tzinfo is None:
            raise UserError(f"--story-clock {path}: {text!r} has no UTC offset; add one (+08:00)")
        return start + dt.timedelta(seconds=max(0.0, time.time() - written))

    last = [read(), time.monotonic()]

    def clock() -> dt.datetime:
        try:
            last[0], last[1] = read(), time.monotonic()
            return last[0]
        except UserError:  # being rewritten this instant: go on from the last reading
            return last[0] + dt.timedelta(seconds=time.monotonic() - last[1])

    return clock


def cmd_run(args) -> int:
    from terminal.systemd import Notifier

    config = read_config(args.config)
    clock = story_clock(args.story_clock) if args.story_clock is not None else utc_now
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    systemd = Notifier()
    with ExitStack() as stack:
        wiring = getattr(args, "wiring", None)
        terminal, reader = build_terminal(
            config,
            stack,
            wait_for_reader=True,
            simulated_reader=wiring.simulated_card_reader if wiring else None,
            snapshot_dir=args.display_snapshots,
        )
        keypad = None
        if config.terminal.kind in ("pos", "topup"):
            # Before the first tap: a till without keys refuses to start instead of silently taking nothing.
            from terminal.keypad import HELP, open_keypad

            k = config.keypad
            keypad = open_keypad(config.terminal.kind, k.driver, k.device, k.baudrate)
            stack.callback(keypad.close)
        if config.status.port:
            from terminal.status_page import StatusPage

            page = StatusPage(config, terminal.live_status, config.status.host, config.status.port)
            stack.callback(page.close)
        if keypad is not None:
            print(f"[{config.terminal.name}] keypad ({config.keypad.driver}): {HELP[config.terminal.kind]}", flush=True)
        systemd.ready(f"{config.terminal.kind} terminal {config.terminal.id} serving taps")
        try:
            terminal.run(reader, clock, stop, keypad=keypad, heartbeat=systemd.heartbeat)
        finally:
            systemd.stopping()
    return 0


def cmd_hash_password(args) -> int:
    import getpass
    import os
    import sys

    from common.passwords import hash_password

    if sys.stdin.isatty():
        first, second = getpass.getpass("password: "), getpass.getpass("again: ")
    else:  # a provisioning script pipes it in: one line
        first = second = sys.stdin.readline().rstrip("\n")
    if first != second:
        raise UserError("the two passwords differ; run hash-password again")
    if not (4 <= len(first) <= 12 and first.isdigit()):
        raise UserError("a cashier password is 4-12 digits (it is typed on the till's keypad)")
    print(f'password_hash = "{hash_password(first, os.urandom(16))}"')
    return 0


DATA = Path(__file__).resolve().parent / "data"


def cmd_files(args) -> int:
    files = {p.name: p for p in [DATA / "firmware.toml", *sorted((DATA / "systemd").iterdir())]}
    if args.path is not None:
        if args.path not in files:
            raise UserError(f"no packaged file {args.path!r}; one of: {', '.join(files)}")
        print(files[args.path])
        return 0
    for name, path in files.items():
        print(f"{name}\t{path}")
    return 0


def cmd_check_config(args) -> int:
    c = read_config(args.config)
    t = c.terminal
    print(f"terminal {t.id} ({t.kind}) '{t.name}' for enterprise {t.enterprise_id.hex()}, time zone {t.timezone.key}")
    print(f"event log {t.database}, blacklist {t.blacklist}")
    print(f"reader {c.reader.driver} {c.reader.name or c.reader.path or c.reader.card}")
    print(f"sam {c.sam.backend} {c.sam.keystore or c.sam.reader}")
    if t.kind == "door":
        print(
            f"door group {c.door.group}, relay {c.door.open_seconds:g} s, held-open alarm after "
            f"{c.door.held_open_seconds:g} s"
        )
    else:
        print(f"attendance repeat window {c.attendance.repeat_window_seconds:g} s")
    o, d = c.output, c.door
    if o.driver == "gpio":
        pins = {
            "strike": d.strike_pin if t.kind == "door" else 0,
            "contact": d.contact_pin if t.kind == "door" else 0,
            "exit button": d.rex_pin if t.kind == "door" else 0,
            "green LED": o.green_led_pin,
            "red LED": o.red_led_pin,
            "buzzer": o.buzzer_pin,
        }
        print(
            "gpio "
            + ", ".join(f"{name} GPIO{pin}" for name, pin in pins.items() if pin)
            + (
                f"; {d.lock} strike, relay active {'high' if d.strike_active_high else 'low'}"
                if t.kind == "door" and d.strike_pin
                else ""
            )
        )
    else:
        print("outputs on the console")
    if c.display.driver != "none":
        print(f"display {c.display.driver} {c.display.width}x{c.display.height}, font {c.display.font}")
    if t.kind in ("pos", "topup"):
        print(f"keypad {c.keypad.driver} {c.keypad.device}".rstrip())
    if c.status.port:
        print(f"status page http://{c.status.host}:{c.status.port}/")
    for n, p in sorted(c.time_profiles.items()):
        holiday = ", ".join(str(w) for w in p.holiday) or "none"
        print(
            f"time profile {n} '{p.name}': " + "; ".join(p.describe_day(d) for d in range(7)) + f"; holiday {holiday}"
        )
    if c.holidays:
        print("holidays " + ", ".join(f"{day.isoformat()} {name}" for day, name in c.holidays.items()))
    if t.kind == "door" and d.normally_open_profile:
        first = ", after the first card of each window" if d.first_card_unlock else ""
        print(f"normally open in the windows of time profile {d.normally_open_profile}{first}")
    if t.kind == "door" and d.area:
        readers = f"[reader] {d.direction}" + (", [exit_reader] the other way" if c.exit_reader else "")
        rule = f"anti-passback {d.anti_passback}, offline {d.passback_offline}" if d.anti_passback == "on" else ""
        print(f"area {d.area}: {readers}" + (f"; {rule}" if rule else ""))
    return 0
