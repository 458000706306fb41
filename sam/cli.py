"""`onecard sam ...` subcommands: create, list and restrict software-SAM keystores; never print a key."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from common.errors import EXIT_REFUSED, EXIT_USAGE
from sam.interface import Algorithm, KeyInfo, KeyPurpose, KeyUsage, SamError
from sam.keystore import (
    TRANSPORT_VERSION,
    Keystore,
    KeystoreUnlock,
    MasterKey,
    algorithm_name,
    format_enterprise_id,
    load_keystore,
    parse_algorithm,
    parse_enterprise_id,
    save_keystore,
)
from sam.roles import CARD_ISSUER, ROLE_KEYS, role_keys
from sam.sam_state import TSN_MAX, SamState, StateFile
from sam.unlock_cli import add_unlock_options, unlock_from_args

DEFAULT_USAGES = "verify,mac,personalise,reversal"
ISSUED_KEY_VERSION = 1

# What create-keystore generates: (purpose, version), in this order.
GENERATED_KEYS = (
    (KeyPurpose.ACCESS, ISSUED_KEY_VERSION),
    (KeyPurpose.UPDATE, ISSUED_KEY_VERSION),
    (KeyPurpose.TRANSPORT, TRANSPORT_VERSION),
    (KeyPurpose.PURCHASE, ISSUED_KEY_VERSION),
    (KeyPurpose.LOAD, ISSUED_KEY_VERSION),
    (KeyPurpose.TAC, ISSUED_KEY_VERSION),
)
# Usages that mean something for a purpose: reversal exists only for LOAD, and no operation MACs with a TAC
# key (a TAC key that could MAC would forge transaction proofs), so create-keystore never grants them.
_MEANINGLESS = {
    purpose: frozenset({KeyUsage.REVERSAL}) | (frozenset({KeyUsage.MAC}) if purpose is KeyPurpose.TAC else frozenset())
    for purpose in KeyPurpose
    if purpose is not KeyPurpose.LOAD
} | {KeyPurpose.LOAD: frozenset()}

# restrict --role: the keys each role needs and nothing more (docs/key-handling.md 3).
ROLES = ROLE_KEYS


class CliError(Exception):
    """Bad command-line input; the message is '<problem>; <fix>'."""


class CliRefused(CliError):
    """The input is well formed but the answer is no (a check failed): exit 1, not 2."""


def add_subcommands(commands: argparse._SubParsersAction) -> None:
    """Register create-keystore, list and restrict on the `onecard sam` subparsers; each sets args.handler(args) -> exit
    code."""
    create = commands.add_parser(
        "create-keystore",
        help="generate new master keys for an enterprise into a new keystore",
        description="Generate random master keys (version 1 ACCESS, UPDATE, PURCHASE, LOAD and TAC, version 0 "
        "TRANSPORT) for one enterprise and write them to a new encrypted keystore. Prints key check values only.",
    )
    create.add_argument("--out", required=True, metavar="PATH", help="keystore file to create")
    add_unlock_options(create, required=True)
    create.add_argument("--enterprise", required=True, metavar="ID", help="enterprise ID, 8 BCD digits, e.g. 00010001")
    create.add_argument(
        "--algorithm", default="both", metavar="aes128|sm4|both", help="card algorithm(s) (default: both)"
    )
    create.add_argument(
        "--usages", default=DEFAULT_USAGES, metavar="LIST", help=f"comma-separated usages (default: {DEFAULT_USAGES})"
    )
    create.add_argument("--force", action="store_true", help="replace an existing file at --out")
    create.set_defaults(handler=cmd_create_keystore)

    listing = commands.add_parser("list", help="show the keys of a keystore (key check values, never keys)")
    listing.add_argument("--keystore", required=True, metavar="PATH")
    add_unlock_options(listing, required=True)
    listing.set_defaults(handler=cmd_list)

    restrict = commands.add_parser(
        "restrict",
        help="write a copy of a keystore with fewer keys or usages, for one terminal role",
        description="Copy a keystore keeping only the given usages (and optionally purposes, algorithms, "
        "enterprise); keys left without any usage are dropped. Say what to keep with exactly one of --role, --keep "
        "or --usages. E.g. a door terminal: --role door (= --keep access=verify); a POS: --role pos "
        "(= --keep purchase=mac,verify --keep load=reversal). TAC keys are never written together with PURCHASE or "
        "LOAD keys: only the platform holds them.",
    )
    restrict.add_argument("--keystore", required=True, metavar="SRC", help="keystore to copy from")
    add_unlock_options(restrict, required=True)
    restrict.add_argument("--out", required=True, metavar="DST", help="keystore file to create")
    what = restrict.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--role", choices=sorted(ROLES), help="keep what this terminal role needs (docs/key-handling.md 3)"
    )
    what.add_argument(
        "--keep",
        action="append",
        metavar="PURPOSE=USAGES",
        help="keep PURPOSE with at most these usages, e.g. load=reversal (repeat for each purpose)",
    )
    what.add_argument("--usages", metavar="LIST", help="comma-separated usages to keep, for every purpose kept")
    restrict.add_argument(
        "--purposes", metavar="LIST", help="with --usages: comma-separated purposes to keep (default: all)"
    )
    restrict.add_argument(
        "--algorithm", default="both", metavar="aes128|sm4|both", help="algorithm(s) to keep (default: both)"
    )
    restrict.add_argument("--enterprise", metavar="ID", help="keep only this enterprise's keys")
    restrict.add_argument(
        "--card-issuer",
        action="store_true",
        help="with --role issuing: also keep the card issuer's transport key (enterprise 00000000) with the mac "
        "usage only, which `onecard issue add-application` needs to add a sub-application to a version 2 card "
        "(docs/key-handling.md 3); with --role, the card issuer's keys are dropped otherwise",
    )
    restrict.add_argument(
        "--drop-version",
        type=int,
        metavar="N",
        action="append",
        default=[],
        help="retire key version N; refused while the platform's report (--key-versions) counts "
        "cards on it; repeatable",
    )
    restrict.add_argument(
        "--key-versions",
        metavar="REPORT",
        help="with --drop-version: the platform's key-version report "
        "(onecard platform key-versions ... --json > REPORT)",
    )
    restrict.add_argument(
        "--retire-although-cards-use-it",
        action="store_true",
        help="DANGER: drop the version even if cards still use it; those cards stop working with "
        "every SAM written from this keystore",
    )
    add_unlock_options(
        restrict,
        required=False,
        prefix="out-",
        what="DST (default: locked as SRC), e.g. the target terminal's device secret",
    )
    restrict.add_argument("--force", action="store_true", help="replace an existing file at --out")
    restrict.set_defaults(handler=cmd_restrict)

    init_state = commands.add_parser(
        "init-state",
        help="create a software SAM's purse state file (TSN counter), e.g. to replace a lost or corrupted one",
        description="Write a new state file whose next purchase gets TSN N+1. Refuses an existing file: move a "
        "corrupted one aside first. Take N from the platform: the highest TSN it has seen from this terminal.",
    )
    init_state.add_argument(
        "--state", required=True, metavar="PATH", help="state file to create (default name: <keystore>.state)"
    )
    init_state.add_argument(
        "--last-tsn", required=True, type=int, metavar="N", help="highest TSN already used, 0..4294967294"
    )
    init_state.set_defaults(handler=cmd_init_state)

    show_state = commands.add_parser(
        "show-state", help="show a software SAM's purse state file (last TSN, last purchase)"
    )
    show_state.add_argument("--state", required=True, metavar="PATH")
    show_state.set_defaults(handler=cmd_show_state)


def _handler(body: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            body(args)
        except CliRefused as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_REFUSED
        except CliError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except SamError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_REFUSED
        return 0

    run.__name__ = body.__name__
    run.__doc__ = body.__doc__
    return run


def _unlock(args: argparse.Namespace, prefix: str = "") -> KeystoreUnlock:
    unlock = unlock_from_args(args, prefix)
    if unlock is None:
        raise CliError(f"no unlock secret given; pass --{prefix}passphrase-file F or --{prefix}device-secret-file F")
    return unlock


def _split(text: str, what: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise CliError(f"{option} {text!r} is not a comma-separated list of {what}; write it like {option} a,b")
    return items


def _parse_usages(text: str, option: str = "--usages") -> frozenset[KeyUsage]:
    names = {u.value for u in KeyUsage}
    usages = set()
    for item in _split(text, "usages", option):
        if item not in names:
            raise CliError(f"unknown usage {item!r} in {option}; use some of {','.join(sorted(names))}")
        usages.add(KeyUsage(item))
    return frozenset(usages)


def _parse_purposes(text: str) -> frozenset[KeyPurpose]:
    names = {p.value for p in KeyPurpose}
    purposes = set()
    for item in _split(text, "purposes", "--purposes"):
        if item not in names:
            raise CliError(f"unknown purpose {item!r} in --purposes; use some of {','.join(sorted(names))}")
        purposes.add(KeyPurpose(item))
    return frozenset(purposes)


def _parse_algorithms(text: str) -> list[Algorithm]:
    if text == "both":
        return [Algorithm.AES128, Algorithm.SM4]
    try:
        return [parse_algorithm(text)]
    except ValueError as e:
        raise CliError(f"{e} or both") from None


def _parse_enterprise(text: str) -> bytes:
    try:
        return parse_enterprise_id(text)
    except ValueError as e:
        raise CliError(str(e)) from None


_PURPOSE_ORDER = {purpose: index for index, purpose in enumerate(KeyPurpose)}


def format_key_table(infos: Sequence[KeyInfo]) -> str:
    """The table `list` prints: one row per key, KCV in the last column."""
    header = ("ENTERPRISE", "PURPOSE", "VERSION", "ALGORITHM", "USAGES", "KCV")
    ordered = sorted(infos, key=lambda i: (i.enterprise_id, _PURPOSE_ORDER[i.purpose], i.version, int(i.algorithm)))
    rows = [header] + [
        (
            format_enterprise_id(info.enterprise_id),
            info.purpose.value,
            str(info.version),
            algorithm_name(info.algorithm),
            ",".join(sorted(u.value for u in info.usages)),
            info.kcv,
        )
        for info in ordered
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


@_handler
def cmd_create_keystore(args: argparse.Namespace) -> None:
    """onecard sam create-keystore"""
    enterprise_id = _parse_enterprise(args.enterprise)
    algorithms = _parse_algorithms(args.algorithm)
    usages = _parse_usages(args.usages)
    unlock = _unlock(args)
    keys = [
        MasterKey.generate(enterprise_id, purpose, version, algorithm, usages - _MEANINGLESS[purpose])
        for algorithm in algorithms
        for purpose, version in GENERATED_KEYS
        if usages - _MEANINGLESS[purpose]
    ]
    keystore = Keystore(keys)
    save_keystore(args.out, keystore, unlock, overwrite=args.force)
    print(f"created keystore {args.out} ({len(keystore)} keys, locked with {unlock.kind})")
    print(format_key_table(keystore.infos()))


@_handler
def cmd_list(args: argparse.Namespace) -> None:
    """onecard sam list"""
    keystore = load_keystore(args.keystore, _unlock(args))
    print(format_key_table(keystore.infos()))


@_handler
def cmd_restrict(args: argparse.Namespace) -> None:
    """onecard sam restrict"""
    rules: dict[KeyPurpose, frozenset[KeyUsage]] | None = None
    if args.purposes is not None and args.usages is None:
        raise CliError("--purposes goes with --usages; with --keep name each purpose in its PURPOSE=USAGES")
    if args.card_issuer and args.role != "issuing":
        raise CliError("--card-issuer goes with --role issuing: only the issuing station holds the card issuer's key")
    if args.role is not None:
        rules = ROLES[args.role]
    elif args.keep is not None:
        rules = _parse_keep(args.keep)
    algorithms = _parse_algorithms(args.algorithm)
    enterprises = [_parse_enterprise(args.enterprise)] if args.enterprise is not None else None
    source_unlock = _unlock(args)
    if args.out_passphrase_file is not None or args.out_device_secret_file is not None:
        out_unlock = _unlock(args, "out-")
    else:
        out_unlock = source_unlock
    if rules is None:
        usages = _parse_usages(args.usages)
        purposes = _parse_purposes(args.purposes) if args.purposes is not None else None
        source = load_keystore(args.keystore, source_unlock)
        restricted = source.restricted(usages, purposes, algorithms, enterprises)
    else:
        source = load_keystore(args.keystore, source_unlock)
        if args.role is not None:
            restricted = _restricted_to_role(source, args, algorithms, enterprises)
        else:  # --keep: what the operator named, for every enterprise given
            restricted = source.restricted_per_purpose(rules, algorithms, enterprises)
    if args.drop_version:
        if any(not 1 <= v <= 255 for v in args.drop_version):
            raise CliError("--drop-version takes an enterprise key version 1..255 (transport keys, version 0, stay)")
        _check_retirement(
            args, {k.enterprise_id for k in restricted if k.version in args.drop_version}, args.drop_version
        )
        # Retiring a version after a rotation: every purpose of that version goes at once, as cards carry them all.
        restricted = Keystore([k for k in restricted if k.version not in args.drop_version], restricted.master_card)
    check_tac_separation(restricted)
    if not len(restricted):
        raise CliError(
            f"no key of {args.keystore} is left after the restriction; compare --usages/--purposes/--algorithm/"
            "--enterprise with 'onecard sam list'"
        )
    save_keystore(args.out, restricted, out_unlock, overwrite=args.force)
    print(f"wrote keystore {args.out} ({len(restricted)} of {len(source)} keys, locked with {out_unlock.kind})")
    print(format_key_table(restricted.infos()))


def _restricted_to_role(
    source: Keystore, args: argparse.Namespace, algorithms, enterprises: list[bytes] | None
) -> Keystore:
    """--role: each enterprise's keys as the role holds them (sam/roles.py); the card issuer's (00000000) only with
    --card-issuer, as CARD_ISSUER_KEYS says (MAC of TRANSPORT), never with an enterprise's usages."""
    wanted = enterprises if enterprises is not None else sorted({k.enterprise_id for k in source} - {CARD_ISSUER})
    if args.card_issuer:
        if not any(k.enterprise_id == CARD_ISSUER for k in source):
            raise CliError(
                f"{args.keystore} holds no key of the card issuer (enterprise 00000000); restrict the keystore "
                "that does, or drop --card-issuer"
            )
        wanted = [e for e in wanted if e != CARD_ISSUER] + [CARD_ISSUER]
    kept: list[MasterKey] = []
    for enterprise in wanted:
        kept += source.restricted_per_purpose(role_keys(args.role, enterprise), algorithms, [enterprise])
    return Keystore(kept, source.master_card)


def _parse_keep(items: Sequence[str]) -> dict[KeyPurpose, frozenset[KeyUsage]]:
    rules: dict[KeyPurpose, frozenset[KeyUsage]] = {}
    for item in items:
        purpose_text, sep, usages_text = item.partition("=")
        if not sep:
            raise CliError(f"--keep {item!r} is not PURPOSE=USAGES; write it like --keep load=reversal")
        purposes = _parse_purposes(purpose_text.strip())
        if len(purposes) != 1:
            raise CliError(f"--keep {item!r} names several purposes; repeat --keep once per purpose")
        (purpose,) = purposes
        if purpose in rules:
            raise CliError(f"--keep names {purpose.value} twice; give each purpose once with all its usages")
        rules[purpose] = _parse_usages(usages_text, "--keep")
    return rules


def _check_retirement(args: argparse.Namespace, enterprises: set[bytes], versions: list[int]) -> None:
    """Ask the platform's report before a version leaves a keystore; the override is loud on purpose."""
    from sam.retirement import OVERRIDE_FLAG, REPORT_HELP, RetirementRefused, check_retirement, parse_report

    if args.retire_although_cards_use_it:
        print(
            f"WARNING: {OVERRIDE_FLAG}: key version(s) {', '.join(map(str, versions))} dropped without asking the "
            "platform; any card still on them is refused by every SAM written from this keystore",
            file=sys.stderr,
        )
        return
    if args.key_versions is None:
        raise CliError(
            f"--drop-version needs --key-versions REPORT, {REPORT_HELP}, so that no version is retired "
            "while cards still use it"
        )
    try:
        text = Path(args.key_versions).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(
            f"cannot read --key-versions {args.key_versions} ({exc.strerror or exc}); {REPORT_HELP}"
        ) from None
    try:
        report = parse_report(text, f"--key-versions {args.key_versions}")
        for enterprise in sorted(enterprises):
            check_retirement(report, enterprise.hex(), versions)
    except RetirementRefused as exc:
        raise CliRefused(str(exc)) from None


def check_tac_separation(keystore: Keystore) -> None:
    """Refuse a terminal-shaped keystore holding TAC keys next to PURCHASE or LOAD keys.

    The TAC is the platform's check on every terminal's purse log; a keystore that can both run purse sessions
    and verify (or, with a TAC key, forge) TACs would let one stolen terminal make its forged records pass.
    The master keystore from create-keystore holds all keys, but it is never installed on a terminal.
    """
    # Personalise-only keys run no session and check nothing: the issuing station (a card-office machine) needs
    # them to write every card key, TAC included, onto the cards it issues.
    purposes = {key.purpose for key in keystore if key.usages - {KeyUsage.PERSONALISE}}
    if KeyPurpose.TAC in purposes and purposes & {KeyPurpose.PURCHASE, KeyPurpose.LOAD}:
        raise CliError(
            "the restricted keystore would hold TAC keys together with PURCHASE/LOAD keys, but only the platform may "
            "hold TAC keys; write the platform's keystore (--role platform) and the terminals' (--role pos / top-up) "
            "separately"
        )


@_handler
def cmd_init_state(args: argparse.Namespace) -> None:
    """onecard sam init-state"""
    if not 0 <= args.last_tsn < TSN_MAX:
        raise CliError(
            f"--last-tsn {args.last_tsn} is not 0..{TSN_MAX - 1}; "
            "take the highest TSN the platform has seen from this terminal"
        )
    path = Path(args.state)
    if os.path.lexists(path):
        raise CliError(f"SAM state file {path} already exists; move it aside first (it is never overwritten)")
    StateFile(path).save(SamState(args.last_tsn, None))
    print(f"wrote SAM state file {path}: the next purchase gets TSN {args.last_tsn + 1}")


@_handler
def cmd_show_state(args: argparse.Namespace) -> None:
    """onecard sam show-state"""
    path = Path(args.state)
    if not os.path.lexists(path):
        raise CliError(f"SAM state file {path} does not exist; a SAM that never signed a purchase has none")
    state = StateFile(path).load()
    print(f"last TSN {state.last_tsn}")
    last = state.last_purchase
    if last is None:
        print("last purchase: none")
    else:
        print(
            f"last purchase: TSN {last.tsn}, {last.amount} fen, card {last.asn.hex().upper()} enterprise "
            f"{format_enterprise_id(last.enterprise_id)}, debit proven {'yes' if last.debited else 'no'}, "
            f"reversed {'yes' if last.reversed else 'no'}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `onecard sam ...` without the rest of onecard (python -m sam.cli sam list ...), wired as onecard.cli does."""
    parser = argparse.ArgumentParser(prog="onecard")
    areas = parser.add_subparsers(dest="area", required=True)
    add_subcommands(
        areas.add_parser("sam", help="software SAM keystores").add_subparsers(dest="command", required=True)
    )
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
