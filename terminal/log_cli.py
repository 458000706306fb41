"""`onecard log show|verify`: read a terminal's event log and check its hash chain, never writing to it.

Handlers follow onecard.cli: set_defaults(handler=...), return the exit code, raise UserError (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import tzinfo
from pathlib import Path

from common.db import DatabaseError
from common.errors import UserError
from terminal.event_log import EventLog, LoggedEvent


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register `show` and `verify` on the subparsers of the `log` command."""
    show = sub.add_parser("show", help="print the newest events (table or JSON lines)")
    _add_source(show)
    show.add_argument(
        "--last", type=int, default=20, metavar="N", help="show the newest N events (default 20, 0 = all)"
    )
    show.add_argument("--json", action="store_true", help="one JSON object per line, times in UTC as stored")
    show.set_defaults(handler=cmd_show)
    verify = sub.add_parser("verify", help="recompute the hash chain; exit 0 intact, 1 broken, 2 unreadable")
    _add_source(verify)
    verify.set_defaults(handler=cmd_verify)


def _add_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", type=Path, help="path of the terminal's event database")
    src.add_argument("--config", type=Path, help="firmware.toml; its [terminal].database is used")


def _source(args: argparse.Namespace) -> tuple[Path, tzinfo | None]:
    """The database path and the zone to show local times in (the terminal's, or this machine's)."""
    if args.db is not None:
        return args.db, None
    from common.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return config.terminal.database, config.terminal.timezone


def _open(path: Path) -> EventLog:
    try:
        return EventLog.open_readonly(path)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    except sqlite3.Error as exc:
        raise UserError(f"cannot read database {path} ({exc}); check the path and its permissions") from None


def cmd_show(args: argparse.Namespace) -> int:
    path, zone = _source(args)
    if args.last < 0:
        raise UserError(f"--last {args.last} is negative; give a count, or 0 for all events")
    log = _open(path)
    try:
        after = 0 if args.last == 0 else max(0, log.last_seq() - args.last)
        try:
            events = log.events(after_seq=after)
        except (ValueError, sqlite3.Error) as exc:
            raise UserError(f"database {path} has an unreadable record ({exc}); run 'onecard log verify'") from None
    finally:
        log.close()
    out = sys.stdout
    if args.json:
        for e in events:
            out.write(json.dumps(_as_json(e), ensure_ascii=False) + "\n")
        return 0
    if not events:
        out.write(f"no events in {path}\n")
        return 0
    kind_w = max(4, *(len(e.kind) for e in events))
    out.write(f"{'SEQ':>8}  {'LOCAL TIME':<19}  {'KIND':<{kind_w}}  {'ASN':<16}  MESSAGE\n")
    for e in events:
        local = e.time.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"{e.seq:>8}  {local:<19}  {e.kind:<{kind_w}}  {e.asn or '-':<16}  {e.message}\n")
    return 0


def _as_json(e: LoggedEvent) -> dict:
    return {
        "seq": e.seq,
        "time": e.time_text,
        "kind": e.kind,
        "asn": e.asn,
        "reason_code": e.reason_code,
        "message": e.message,
        "detail": e.detail,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def cmd_verify(args: argparse.Namespace) -> int:
    path, _ = _source(args)
    log = _open(path)
    try:
        report = log.verify()
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    except sqlite3.Error as exc:
        raise UserError(f"database {path} could not be read to the end ({exc}); keep it for investigation") from None
    finally:
        log.close()
    if report.ok:
        print(f"chain intact: {report.checked} records, last seq {report.head_seq}, head hash {report.head_hash}")
        return 0
    print(f"chain BROKEN at seq {report.first_bad_seq}: {report.problem}")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m terminal.log_cli show --db X`), same exit codes as `onecard log`."""
    parser = argparse.ArgumentParser(prog="onecard log", description=__doc__.splitlines()[0])
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
