"""`onecard sim new-psam | new-blank-psam`: simulated PSAM card files."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam.interface import SamError
from sam.keystore import Keystore
from sam.sam_state import SamState, StateFileError
from sam.unlock_cli import add_unlock_options, unlock_from_args
from simulator.psam import PsamState, psam_from_keystore, write_psam


def add_psam_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register `onecard sim new-psam` on the `onecard sim` subparsers (handler raises common.errors.UserError)."""
    new = sub.add_parser(
        "new-psam",
        help="make a simulated PSAM card holding a terminal keystore's master keys",
        description="Copy the master keys of a terminal keystore into a new simulated PSAM file (its EEPROM). "
        "Usages are cut to verify, mac and reversal (a PSAM has no personalisation command); a keystore with TAC "
        "keys is refused. Insert it in a reader slot with the tap tools, or load it with simulator.psam.load_psam.",
    )
    new.add_argument(
        "--keystore", required=True, type=Path, help="terminal keystore, e.g. from 'onecard sam restrict --role pos'"
    )
    add_unlock_options(new, what="--keystore")
    new.add_argument("--out", required=True, type=Path, help="PSAM file to write (one file per PSAM)")
    new.add_argument("--label", default="", help="what to call this PSAM in logs, e.g. 'POS 3 canteen'")
    new.add_argument("--force", action="store_true", help="replace an existing PSAM file (its TSN starts again at 1)")
    new.set_defaults(handler=cmd_new_psam)

    blank = sub.add_parser(
        "new-blank-psam",
        help="make a simulated PSAM card without keys, to be loaded from the key master card",
        description="Write a PSAM file holding no key. Load it with 'onecard keys load-psam': its first load makes it "
        "trust that key master card, and every later load (二次洗卡) must be signed by the same card (docs/keys.md).",
    )
    blank.add_argument("--out", required=True, type=Path, help="PSAM file to write (one file per PSAM)")
    blank.add_argument("--label", default="", help="what to call this PSAM in logs, e.g. 'POS 3 canteen'")
    blank.add_argument("--force", action="store_true", help="replace an existing PSAM file")
    blank.set_defaults(handler=cmd_new_blank_psam)


def cmd_new_blank_psam(args) -> int:
    from common.errors import UserError

    try:
        write_psam(args.out, PsamState(Keystore([]), SamState(), args.label), overwrite=args.force)
    except (FileExistsError, StateFileError) as exc:
        raise UserError(str(exc)) from None
    print(f"blank PSAM {args.label or args.out} written to {args.out}; load it with 'onecard keys load-psam'")
    return 0


def cmd_new_psam(args) -> int:
    from common.errors import UserError
    from sam.cli import format_key_table
    from sam.keystore import load_keystore

    try:
        keystore = load_keystore(args.keystore, unlock_from_args(args))
    except SamError as exc:
        raise UserError(str(exc)) from None
    try:
        state = psam_from_keystore(keystore, label=args.label)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        write_psam(args.out, state, overwrite=args.force)
    except (FileExistsError, StateFileError) as exc:
        raise UserError(str(exc)) from None
    print(f"PSAM {args.label or args.out} written to {args.out} ({len(state.keys)} keys, next TSN 1)")
    print(format_key_table(state.keys.infos()))
    return 0
