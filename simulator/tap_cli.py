"""`onecard sim serve|tap|remove|status`: hold one vpcd reader slot and script taps on it from any shell
(simulator/tap_control.py is the daemon and its protocol)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from simulator.tap_control import LoadCard, TapControlError, TapDaemon, remove, status, tap


def add_subcommands(subparsers: argparse._SubParsersAction, load_card: LoadCard) -> None:
    """Register serve / tap / remove / status under `onecard sim`; each sets `handler(args) -> int`."""
    p = subparsers.add_parser("serve", help="hold one vpcd reader slot and take taps from `onecard sim tap`")
    p.add_argument("--port", type=int, required=True, help="vpcd port of the reader slot (reader.conf DEVICENAME)")
    p.add_argument("--host", default="127.0.0.1", help="where pcscd runs (default 127.0.0.1)")
    p.add_argument("--control", type=Path, required=True, help="directory for the control socket")
    p.set_defaults(handler=lambda args: _run_serve(args, load_card))

    p = subparsers.add_parser("tap", help="present a card file on a running `onecard sim serve`")
    p.add_argument("card", type=Path, help="card file")
    p.add_argument(
        "--tear-after",
        type=int,
        default=None,
        metavar="K",
        help="the card answers K-1 APDUs, processes the K-th and leaves before answering it",
    )
    p.add_argument("--hold", type=float, default=None, metavar="S", help="remove after S seconds (default: stay)")
    p.add_argument("--control", type=Path, required=True)
    p.set_defaults(handler=lambda a: _client(lambda: tap(a.card, a.control, tear_after=a.tear_after, hold=a.hold)))

    p = subparsers.add_parser("remove", help="take the card out of a running `onecard sim serve`")
    p.add_argument("--control", type=Path, required=True)
    p.set_defaults(handler=lambda a: _client(lambda: remove(a.control)))

    p = subparsers.add_parser("status", help="what a running `onecard sim serve` holds")
    p.add_argument("--control", type=Path, required=True)
    p.set_defaults(handler=lambda a: _client(lambda: status(a.control)))


def _run_serve(args, load_card: LoadCard) -> int:
    from common.errors import UserError

    try:
        daemon = TapDaemon(args.port, args.control, load_card, host=args.host)
    except TapControlError as exc:
        raise UserError(str(exc)) from None

    def stop(signum, _frame):
        # shutdown() waits for serve_forever to notice, so it must run outside the thread serving.
        threading.Thread(target=daemon.shutdown, daemon=True).start()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    daemon.serve_forever()
    return 0


def _client(call: Callable[[], dict]) -> int:
    from common.errors import UserError

    try:
        reply = call()
    except TapControlError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(reply), flush=True)
    return 0
