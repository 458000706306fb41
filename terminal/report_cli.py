"""`onecard terminal report --config F --shift N | --day YYYY-MM-DD`: the X (shift) or Z (day) report of a till,
from its own event log (read-only), saying which of the counted records the platform has not acknowledged yet."""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
from pathlib import Path

from common import settlement as st
from common.config import ConfigError, load_config
from common.db import DatabaseError
from common.errors import UserError
from terminal.event_log import EventLog
from terminal.shifts import SHIFT_KINDS, SIGN_IN


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="print a shift's totals (X report) or a day's settlement (Z report)")
    report.add_argument("--config", required=True, type=Path, help="path of firmware.toml")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--shift", type=int, metavar="N", help="the batch number of the shift (X report)")
    which.add_argument("--day", metavar="YYYY-MM-DD", help="the day, in the terminal's time zone (Z report)")
    report.set_defaults(handler=cmd_report)


def records(log: EventLog) -> list[st.Record]:
    return [st.Record(e.seq, e.time, e.kind, e.detail) for e in log.events()]


def report_lines(config, log: EventLog, acked_seq: int, shift: int | None, day: dt.date | None) -> list[str]:
    tz = config.terminal.timezone
    everything = records(log)
    if shift is not None:
        chosen = st.select_batch(everything, shift)
        opened = [r for r in everything if r.kind in SHIFT_KINDS and r.detail.get("batch") == shift]
        if not opened:
            raise UserError(f"--shift {shift}: no sign-in with batch {shift} in this log; see `onecard log show`")
        head = [f"X report: terminal {config.terminal.id} '{config.terminal.name}', batch {shift:06d}"]
        for r in opened:
            what = "signed in" if r.kind == SIGN_IN else "signed out"
            head.append(f"{what} {r.time.astimezone(tz):%Y-%m-%d %H:%M:%S} operator {r.detail['operator']}")
        if len(opened) == 1:
            head.append("shift still open")
    else:
        assert day is not None
        chosen = st.select_day(everything, day, tz)
        head = [f"Z report: terminal {config.terminal.id} '{config.terminal.name}', {day.isoformat()} ({tz.key})"]
    totals = st.settle(chosen)
    lines = head + st.format_totals(totals)
    pending = [s for s in totals.seqs if s > acked_seq]
    if pending:
        lines.append(f"not yet uploaded: {len(pending)} record(s), seq {st.seq_ranges(pending)}")
    else:
        lines.append("all counted records acknowledged by the platform")
    open_intents = _open_intents(everything)
    if open_intents:
        lines.append(
            f"interrupted, settled at the card's next tap: {len(open_intents)} intent(s), seq "
            f"{st.seq_ranges(open_intents)} (not counted)"
        )
    return lines


def _open_intents(everything: list[st.Record]) -> list[int]:
    settled = {r.detail.get("intent_seq") for r in everything if not r.kind.endswith(".intent")}
    return [
        r.seq
        for r in everything
        if r.kind.endswith(".intent") and r.kind.startswith(st.MONEY_OUTCOMES) and r.seq not in settled
    ]


def cmd_report(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    day = None
    if args.day is not None:
        try:
            day = dt.date.fromisoformat(args.day)
        except ValueError:
            raise UserError(f"--day {args.day!r} is not YYYY-MM-DD; write e.g. 2026-11-23") from None
    acked = 0
    if config.sync is not None:
        from sync_agent.store import read_acked_seq

        acked = read_acked_seq(config.sync.database)
    try:
        log = EventLog.open_readonly(config.terminal.database)
    except (DatabaseError, sqlite3.Error) as exc:
        raise UserError(f"cannot read the event log {config.terminal.database} ({exc})") from None
    try:
        lines = report_lines(config, log, acked, args.shift, day)
    finally:
        log.close()
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
