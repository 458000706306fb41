"""`onecard`: the one command line for terminals, SAMs and key cards, the card simulator, the log, the sync agent,
the reference platform and the demo."""
from __future__ import annotations

import argparse
import sys

from common.errors import EXIT_INTERRUPTED, UserError


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onecard")
    except PackageNotFoundError:
        return "(not installed: running from a checkout)"


def build_parser() -> argparse.ArgumentParser:
    from central import cli as platform_cli
    from onecard import demo, wiring
    from sam import cli as sam_cli
    from sam import keys_cli
    from sync_agent import cli as sync_cli
    from terminal import cli as terminal_cli
    from terminal import issuing_cli, log_cli

    parser = argparse.ArgumentParser(prog="onecard", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument("--version", action="version", version=f"onecard {installed_version()}")
    parser.set_defaults(wiring=wiring.Wiring())  # what the product's commands are given instead of the simulator
    top = parser.add_subparsers(dest="area", required=True)
    terminal_cli.add_subcommands(top.add_parser("terminal", help="run and check a terminal").add_subparsers(
        dest="command", required=True))
    sam_cli.add_subcommands(top.add_parser("sam", help="software SAM keystores").add_subparsers(
        dest="command", required=True))
    keys_cli.add_subcommands(top.add_parser("keys", help="the key master card: key versions, loading SAMs, backup")
                             .add_subparsers(dest="command", required=True))
    wiring.add_simulator_subcommands(top.add_parser(
        "sim", help="simulated cards and readers: create, attach to vpcd, tap").add_subparsers(dest="command",
                                                                                              required=True))
    log_cli.add_subcommands(top.add_parser("log", help="the terminal's event log").add_subparsers(
        dest="command", required=True))
    sync_cli.add_subcommands(top.add_parser("sync", help="the terminal's sync agent (MQTT to the platform)").add_subparsers(
        dest="command", required=True))
    platform_sub = top.add_parser("platform", help="the reference central platform and card flows").add_subparsers(
        dest="command", required=True)
    platform_cli.add_subcommands(platform_sub)
    issuing_cli.add_subcommands(top.add_parser("issue", help="the issuing terminal: wash and re-key cards")
                            .add_subparsers(dest="command", required=True))
    demo.add_parser(top)
    return parser


def main(argv: list[str] | None = None) -> int:
    from common.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level.upper())
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
