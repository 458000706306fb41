"""`onecard sync ...`: run the sync agent of a terminal, and show where its upload and inbox stand."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from common.errors import UserError


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="upload the event log and install signed blacklists/configuration until stopped")
    run.add_argument("--config", required=True, type=Path, help="path of firmware.toml (with a [sync] section)")
    run.set_defaults(handler=cmd_run)
    status = sub.add_parser("status", help="acknowledged seq, backlog, outbox pressure, blacklist and inbox")
    status.add_argument("--config", required=True, type=Path)
    status.set_defaults(handler=cmd_status)


def _config(path: Path):
    from terminal.adapters import read_config

    config = read_config(path)
    if config.sync is None:
        raise UserError(f"{path}: there is no [sync] section; add one (see the documented firmware.toml)")
    return config


def open_agent(config):
    from common.db import DatabaseError
    from common.mqtt import MqttConfigError
    from sync_agent.agent import SyncAgent, TrustError

    try:
        return SyncAgent.from_config(config)
    except (TrustError, DatabaseError, MqttConfigError) as exc:
        raise UserError(str(exc)) from None


def cmd_run(args) -> int:
    config = _config(args.config)
    agent = open_agent(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.run(stop)
    except Exception as exc:  # paho raises plain exceptions for TLS files it cannot use
        import sqlite3

        from common.db import DatabaseError, disk_full_problem
        from common.mqtt import MqttConfigError

        if isinstance(exc, MqttConfigError):
            raise UserError(str(exc)) from None
        if isinstance(exc, (sqlite3.Error, DatabaseError)):
            # Every write is one transaction and uploads are at least once: stopping here loses nothing. A restart
            # (systemd) refuses to start until there is room, with the same line.
            problem = next(
                filter(
                    None,
                    (
                        disk_full_problem(p)
                        for p in (config.sync.database, config.terminal.database, config.terminal.blacklist)
                    ),
                ),
                None,
            )
            raise UserError(
                f"sync agent stopped: {problem or f'its storage failed ({exc}); check the disk'}; "
                "nothing acknowledged was lost"
            ) from None
        raise
    return 0


def cmd_status(args) -> int:
    from common.db import DatabaseError
    from sync_agent.store import POS_REFUSE_OFFLINE_SALES_AT, outbox_pressure, read_acked_seq
    from terminal.blacklist import Blacklist
    from terminal.event_log import EventLog

    config = _config(args.config)
    try:
        log = EventLog.open_readonly(config.terminal.database)
        bl = Blacklist.open(config.terminal.blacklist)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    with log, bl:
        head = log.last_seq()
        acked = read_acked_seq(config.sync.database)
        pressure = outbox_pressure(log, config.sync.database, config.sync.outbox_capacity)
        print(
            f"last seq {head}, acknowledged up to {acked}, backlog {head - acked} "
            f"(outbox pressure {pressure:.1%}, offline sales refused at {POS_REFUSE_OFFLINE_SALES_AT:.0%}); "
            f"blacklist version {bl.version()} with {bl.count()} cards; chain anchor seq {log.anchor()[0]}"
        )
    return 0
