"""`onecard`: the one command line for terminals, SAMs and key cards, the card simulator, the log, the sync agent,
the reference platform and the demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.errors import EXIT_INTERRUPTED, UserError


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onecard")
    except PackageNotFoundError:
        return "(not installed: running from a checkout)"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def _quiet_broken_pipe() -> int:
    """The reader of our output left (`onecard log inspect | head`): stop without a traceback, and point stdout at
    /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _file_problem(exc: OSError) -> str:
    """One line for a file a command could not read or write (missing directory, permissions, a directory in the
    way), naming the path and the fix."""
    path = exc.filename if exc.filename is not None else "a file"
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        parent = Path(os.fsdecode(exc.filename)).parent
        if not parent.exists():  # the usual case: an output path in a directory that is not there
            return f"directory {parent} does not exist; create it or name another path"
    fix = {
        FileNotFoundError: "check the path: its directory must exist",
        NotADirectoryError: "check the path: a part of it is a file, not a directory",
        IsADirectoryError: "name a file, not a directory",
        PermissionError: "check the permissions of the file and its directory",
    }.get(type(exc), "check the path")
    return f"{path}: {exc.strerror or exc}; {fix}"


def build_parser() -> argparse.ArgumentParser:
    from central import cli as platform_cli
    from onecard import demo, wiring
    from phone import cli as phone_cli
    from sam import cli as sam_cli
    from sam import keys_cli
    from sync_agent import cli as sync_cli
    from terminal import cli as terminal_cli
    from terminal import issuing_cli, log_cli

    parser = argparse.ArgumentParser(prog="onecard", description=__doc__)
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR (default INFO)",
    )
    parser.add_argument("--version", action="version", version=f"onecard {installed_version()}")
    parser.set_defaults(wiring=wiring.Wiring())  # what the product's commands are given instead of the simulator
    top = parser.add_subparsers(dest="area", required=True)
    terminal_cli.add_subcommands(
        top.add_parser("terminal", help="run and check a terminal").add_subparsers(dest="command", required=True)
    )
    sam_cli.add_subcommands(
        top.add_parser("sam", help="software SAM keystores").add_subparsers(dest="command", required=True)
    )
    keys_cli.add_subcommands(
        top.add_parser("keys", help="the key master card: key versions, loading SAMs, backup").add_subparsers(
            dest="command", required=True
        )
    )
    wiring.add_simulator_subcommands(
        top.add_parser("sim", help="simulated cards and readers: create, attach to vpcd, tap").add_subparsers(
            dest="command", required=True
        )
    )
    log_cli.add_subcommands(
        top.add_parser("log", help="the terminal's event log").add_subparsers(dest="command", required=True)
    )
    sync_cli.add_subcommands(
        top.add_parser("sync", help="the terminal's sync agent (MQTT to the platform)").add_subparsers(
            dest="command", required=True
        )
    )
    # `central` is the same area under the name of its package (issue 14 writes `onecard central migrate`).
    platform_sub = top.add_parser(
        "platform", aliases=["central"], help="the reference central platform and card flows (alias: central)"
    ).add_subparsers(dest="command", required=True)
    platform_cli.add_subcommands(platform_sub)
    issuing_cli.add_subcommands(
        top.add_parser("issue", help="the issuing terminal: wash and re-key cards").add_subparsers(
            dest="command", required=True
        )
    )
    phone_cli.add_subcommands(
        top.add_parser("phone", help="a handset: the RFID-SIM's toolkit menu over a contact reader").add_subparsers(
            dest="command", required=True
        )
    )
    demo.add_parser(top)
    return parser


def main(argv: list[str] | None = None) -> int:
    from common.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {_file_problem(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
