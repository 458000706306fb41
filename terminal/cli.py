"""`onecard terminal ...`: boot a terminal from firmware.toml and serve taps until stopped."""
from __future__ import annotations

import argparse
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

from terminal.adapters import build_terminal, read_config, utc_now


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="serve taps on the configured reader until Ctrl-C")
    run.add_argument("--config", required=True, type=Path, help="path of firmware.toml")
    run.set_defaults(handler=cmd_run)
    check = sub.add_parser("check-config", help="validate firmware.toml and print what it sets up")
    check.add_argument("--config", required=True, type=Path)
    check.set_defaults(handler=cmd_check_config)
    from terminal import install_cli  # the installer's commands: provision, selftest
    install_cli.add_subcommands(sub)


def cmd_run(args) -> int:
    from terminal.systemd import Notifier

    config = read_config(args.config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    systemd = Notifier()
    with ExitStack() as stack:
        wiring = getattr(args, "wiring", None)
        terminal, reader = build_terminal(config, stack, wait_for_reader=True,
                                          simulated_reader=wiring.simulated_card_reader if wiring else None)
        keypad = None
        if terminal.purse is not None:
            from terminal.keypad import HELP, ConsoleKeypad
            keypad = ConsoleKeypad(config.terminal.kind)
            print(f"[{config.terminal.name}] keypad: {HELP[config.terminal.kind]}", flush=True)
        systemd.ready(f"{config.terminal.kind} terminal {config.terminal.id} serving taps")
        try:
            terminal.run(reader, utc_now, stop, keypad=keypad, heartbeat=systemd.heartbeat)
        finally:
            systemd.stopping()
    return 0


def cmd_check_config(args) -> int:
    c = read_config(args.config)
    t = c.terminal
    print(f"terminal {t.id} ({t.kind}) '{t.name}' for enterprise {t.enterprise_id.hex()}, time zone {t.timezone.key}")
    print(f"event log {t.database}, blacklist {t.blacklist}")
    print(f"reader {c.reader.driver} {c.reader.name or c.reader.path or c.reader.card}")
    print(f"sam {c.sam.backend} {c.sam.keystore or c.sam.reader}")
    if t.kind == "door":
        print(f"door group {c.door.group}, relay {c.door.open_seconds:g} s")
    else:
        print(f"attendance repeat window {c.attendance.repeat_window_seconds:g} s")
    for n, p in sorted(c.time_profiles.items()):
        print(f"time profile {n} '{p.name}': " + "; ".join(p.describe_day(d) for d in range(7)))
    return 0
