"""`onecard terminal ...`: boot a terminal from firmware.toml and serve taps until stopped."""
from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

from common.errors import UserError
from common.config import Config, ConfigError, load_config


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="serve taps on the configured reader until Ctrl-C")
    run.add_argument("--config", required=True, type=Path, help="path of firmware.toml")
    run.set_defaults(handler=cmd_run)
    check = sub.add_parser("check-config", help="validate firmware.toml and print what it sets up")
    check.add_argument("--config", required=True, type=Path)
    check.set_defaults(handler=cmd_check_config)
    from terminal import provision, selftest  # the installer's commands
    provision.add_subcommand(sub)
    selftest.add_subcommand(sub)


def read_config(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def open_sam(config: Config, check_binding: bool = True, event_log=None):
    """The configured SAM; with check_binding, refuse one other than the SAM bound at provisioning (if any).
    With the terminal's event_log, a software SAM keeps its purse state (TSN) in that log."""
    sam = _open_sam(config, event_log)
    if check_binding:
        from sam.interface import SamError
        from terminal.provision import BindingError, check_bound_sam
        try:
            check_bound_sam(config.path, config.sam.backend, sam)
        except (BindingError, SamError) as exc:
            if hasattr(sam, "close"):
                sam.close()
            raise UserError(str(exc)) from None
    return sam


def _open_sam(config: Config, event_log=None):
    from sam.keystore import KeystoreUnlock
    from sam.interface import SamError
    from sam.sam_state import StateFile
    from sam.software import SoftwareSam, default_state_path
    from terminal.sam_state_log import LoggedSamState

    s = config.sam
    if s.backend == "psam":
        from sam.pcsc_sam import PcscSam
        from terminal.reader import ReaderError
        try:
            return PcscSam(s.reader)
        except (SamError, ReaderError) as exc:
            raise UserError(str(exc)) from None
    try:
        if s.passphrase_file is not None:
            unlock = KeystoreUnlock.from_passphrase_file(s.passphrase_file, f"[sam].passphrase_file in {config.path}")
        else:
            unlock = KeystoreUnlock.from_device_secret_file(s.device_secret_file,
                                                            f"[sam].device_secret_file in {config.path}")
        state = None
        if event_log is not None:
            state = LoggedSamState(event_log, config.terminal.enterprise_id, StateFile(default_state_path(s.keystore)))
        return SoftwareSam.open(s.keystore, unlock, state=state)
    except SamError as exc:
        raise UserError(str(exc)) from None


def _reader_factory(config: Config):
    """A function that opens the configured PC/SC or nfcpy reader (ReaderError if it cannot), or None."""
    r = config.reader
    if r.driver == "pcsc":
        from terminal.readers.pcsc import PcscReader
        return lambda: PcscReader(r.name)
    if r.driver == "nfc":
        from terminal.readers.nfc import NfcReader
        return lambda: NfcReader(r.path)
    return None


def open_reader(config: Config, wait: bool = False):
    """The configured reader. With wait (terminal run), a PC/SC or nfcpy reader that is absent or fails later
    is opened again when it is back (terminal/reader.py ReopeningReader) instead of stopping the terminal."""
    from terminal.reader import ReaderError, ReopeningReader

    r = config.reader
    factory = _reader_factory(config)
    if factory is not None:
        if wait:
            return ReopeningReader(f"{r.driver}:{r.name or r.path}", factory)
        try:
            return factory()
        except ReaderError as exc:
            raise UserError(str(exc)) from None
    from simulator.card import load_card
    from simulator.inprocess import InProcessReader
    reader = InProcessReader(f"simulator:{r.card}")
    try:
        reader.tap(load_card(r.card))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load simulated card {r.card}: {exc}; create it with 'onecard sim new-card'") from None
    return reader


def open_storage(config: Config):
    from terminal.blacklist import Blacklist
    from common.db import DatabaseError
    from terminal.event_log import EventLog

    for path in (config.terminal.database, config.terminal.blacklist):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        event_log = EventLog.open(config.terminal.database, config.terminal.id)
        blacklist = Blacklist.open(config.terminal.blacklist)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    return event_log, blacklist


def build_terminal(config: Config, stack: ExitStack, *, sam=None, reader=None, outputs=None, wait_for_reader=False):
    """Open every adapter the configuration names (tests may hand in a SAM, reader or outputs of their own);
    each failure is one UserError line."""
    from terminal.app import Terminal
    from terminal.outputs import ConsoleOutputs

    if config.sync is not None:
        from common.db import DatabaseError
        from sync_agent.store import check_existing
        try:  # absent is fine (the agent has not run yet); garbage is refused now, not at the first refresh
            check_existing(config.sync.database, config.terminal.id)
        except DatabaseError as exc:
            raise UserError(str(exc)) from None
    event_log, blacklist = open_storage(config)
    stack.callback(event_log.close)
    stack.callback(blacklist.close)
    sam = sam or open_sam(config, event_log=event_log)
    if reader is None:
        reader = open_reader(config, wait=wait_for_reader)
        stack.callback(reader.close)
    outputs = outputs or ConsoleOutputs(config.terminal.name, color=config.output.color)
    sync = {}
    if config.sync is not None:
        # The agent's files are read here, never written: the terminal keeps working when the agent is down.
        from sync_agent.store import outbox_pressure, read_acked_seq
        from terminal.inbox import Inbox

        db, capacity = config.sync.database, config.sync.outbox_capacity
        inbox = Inbox(db)
        stack.callback(inbox.close)
        sync = dict(inbox=inbox, synced_seq=lambda: read_acked_seq(db),
                    outbox_pressure=lambda: outbox_pressure(event_log, db, capacity))
    return Terminal(config, sam, event_log, blacklist, outputs, **sync), reader


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def cmd_run(args) -> int:
    from terminal.systemd import Notifier

    config = read_config(args.config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    systemd = Notifier()
    with ExitStack() as stack:
        terminal, reader = build_terminal(config, stack, wait_for_reader=True)
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
