"""`onecard keys ...`: the key-card administrator's tool around the key master card (docs/keys.md 8).

Add key versions, inspect cards and SAMs, load PSAMs and keystores from the master card in a reader, back it up,
change its PIN. (A simulated master card is made, or restored from a backup, with `onecard sim new-master-card` and
`onecard sim restore-master-card`.) No command prints a key; what the administrator must keep
is announced with "KEEP THIS:". Every failure is one line with the fix and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from common.errors import EXIT_REFUSED, EXIT_USAGE
from sam import master_card as mc
from sam.interface import SamError
from sam.keystore import (
    Keystore,
    KeystoreUnlock,
    format_enterprise_id,
    load_keystore,
    save_keystore,
)
from sam.unlock_cli import add_unlock_options, unlock_from_args


class KeysCliError(Exception):
    """Bad input to a keys command; '<problem>; <fix>'."""

    exit_code = EXIT_USAGE


class KeysRefused(KeysCliError):
    """The cards or files given do not belong together (another enterprise, another master card)."""

    exit_code = EXIT_REFUSED


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate-version", help="generate the next key version inside the master card")
    _reader(p, "--reader")
    p.add_argument("--pin-file", required=True, type=Path)
    p.add_argument("--version", type=int, default=0, help="version number (default: the next one)")
    p.set_defaults(handler=reporting(cmd_generate_version))

    p = sub.add_parser("inspect", help="the master card's enterprise, versions, KCVs and PIN state")
    _reader(p, "--reader")
    p.add_argument("--pin-file", type=Path, help="also check the PIN (uses a try if it is wrong)")
    p.set_defaults(handler=reporting(cmd_inspect))

    p = sub.add_parser("versions", help="key versions with KCVs of a master card, a PSAM, or a keystore file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--reader", help="PC/SC reader holding a master card or a PSAM")
    what.add_argument("--keystore", type=Path, help="software keystore file")
    add_unlock_options(p, required=False, what="--keystore")
    p.set_defaults(handler=reporting(cmd_versions))

    p = sub.add_parser("load-psam", help="load a PSAM from the master card (keys never in clear outside the cards)")
    _reader(p, "--reader")
    _reader(p, "--psam-reader")
    p.add_argument("--pin-file", required=True, type=Path)
    p.add_argument("--role", required=True, choices=mc.PSAM_ROLES)
    p.add_argument(
        "--retire-below",
        type=int,
        metavar="N",
        help="retire every key version below N from the PSAM: it gets its complete key set from version N "
        "on and drops the rest; refused while the platform's report (--key-versions) counts cards on "
        "them",
    )
    p.add_argument(
        "--key-versions",
        type=Path,
        metavar="REPORT",
        help="with --retire-below: the platform's key-version report "
        "(onecard platform key-versions ... --json > REPORT)",
    )
    p.add_argument(
        "--retire-although-cards-use-it",
        action="store_true",
        help="DANGER: retire even if cards still use those versions; they stop working with this PSAM",
    )
    p.set_defaults(handler=reporting(cmd_load_psam))

    p = sub.add_parser("load-keystore", help="write a new encrypted keystore for a role from the master card")
    _reader(p, "--reader")
    p.add_argument("--pin-file", required=True, type=Path)
    p.add_argument("--role", required=True, choices=sorted(mc.ROLE_CODES))
    p.add_argument("--out", required=True, type=Path)
    add_unlock_options(p)
    p.add_argument("--force", action="store_true", help="replace an existing file at --out")
    p.set_defaults(handler=reporting(cmd_load_keystore))

    p = sub.add_parser(
        "add-version",
        help="add the master card's new key versions to a keystore it loaded (二次洗卡)",
        description="Re-key a keystore that was loaded from a key master card: the export must be "
        "signed by that same card. Keystores made without a master card are refused.",
    )
    _reader(p, "--reader")
    p.add_argument("--pin-file", required=True, type=Path)
    p.add_argument("--role", required=True, choices=sorted(mc.ROLE_CODES))
    p.add_argument("--keystore", required=True, type=Path)
    add_unlock_options(p)
    p.set_defaults(handler=reporting(cmd_add_version))

    p = sub.add_parser("new-backup-recipient", help="make the X25519 key pair backups are wrapped for")
    p.add_argument("--out-private", required=True, type=Path)
    p.add_argument("--out-public", required=True, type=Path)
    p.set_defaults(handler=reporting(cmd_new_recipient))

    p = sub.add_parser("backup", help="the whole key set, wrapped for a backup recipient key")
    _reader(p, "--reader")
    p.add_argument("--pin-file", required=True, type=Path)
    p.add_argument("--recipient-key", required=True, type=Path, help="recipient public key (PEM)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(handler=reporting(cmd_backup))

    p = sub.add_parser("change-pin", help="change the master card's PIN")
    _reader(p, "--reader")
    p.add_argument("--pin-file", required=True, type=Path, help="the current PIN")
    p.add_argument("--new-pin-file", required=True, type=Path)
    p.set_defaults(handler=reporting(cmd_change_pin))


def _reader(p: argparse.ArgumentParser, option: str) -> None:
    held = "the PSAM" if option == "--psam-reader" else "the key master card"
    p.add_argument(option, required=True, metavar="R", help=f"PC/SC reader holding {held} (its name or a unique part)")


def reporting(body: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            body(args)
        except KeysCliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except SamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        return 0

    run.__name__ = body.__name__
    return run


# --- helpers ---------------------------------------------------------------------------------------


def read_input(path: Path, what: str, option: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeysCliError(f"{what} not found: {path}; check {option}") from None
    except OSError as exc:
        raise KeysCliError(f"cannot read {what} {path} ({exc.strerror}); check its path and permissions") from None


def read_pin(path: Path, option: str = "--pin-file") -> bytes:
    return mc.parse_pin(read_input(path, "PIN file", option), f"PIN file {path}")


def _unlock(args) -> KeystoreUnlock:
    unlock = unlock_from_args(args)
    if unlock is None:
        raise KeysCliError("no unlock secret given; pass --passphrase-file F or --device-secret-file F")
    return unlock


def _write_new(path: Path, data: bytes, what: str) -> None:
    """Create path 0600; never replace an existing file (a backup or a key is not overwritten by accident)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeysCliError(f"{what} {path} already exists; choose another path (it is never overwritten)") from None
    except OSError as exc:
        raise KeysCliError(f"cannot create {what} {path} ({exc.strerror}); check the directory") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _open_unblocked(reader: str) -> tuple[mc.MasterCardClient, mc.CardInfo]:
    client = mc.MasterCardClient.open(reader)
    info = client.card_info()
    if info.blocked:
        client.close()
        raise mc.CardBlocked(
            f"the key master card in {client.name!r} is blocked (PIN tried wrong {mc.PIN_TRIES} times) "
            "and stays blocked; restore the latest backup into a new master card "
            "(onecard sim restore-master-card for a simulated one) and destroy this one"
        )
    return client, info


def key_table(infos) -> str:
    from sam.cli import format_key_table

    return format_key_table(infos)


def _versions_line(infos) -> str:
    versions = sorted({i.version for i in infos})
    return "key versions: " + (", ".join(str(v) + (" (transport)" if v == 0 else "") for v in versions) or "none")


# --- commands --------------------------------------------------------------------------------------


def cmd_generate_version(args) -> None:
    pin = read_pin(args.pin_file)
    if not 0 <= args.version <= 255:
        raise KeysCliError(f"--version {args.version} is not 1..255; omit it to get the next version")
    client, _ = _open_unblocked(args.reader)
    with client:
        client.verify_pin(pin)
        version, infos = client.generate_version(args.version)
    print(f"key version {version} generated inside the master card")
    print(key_table(infos))
    print(f"next: load it into every SAM (onecard keys load-psam / add-version), then issue cards at version {version}")


def cmd_inspect(args) -> None:
    pin = read_pin(args.pin_file) if args.pin_file else None
    with mc.MasterCardClient.open(args.reader) as client:
        info = client.card_info()
        print(mc.describe_card(info))
        if info.blocked:
            # A blocked card is not a usable one: the exit code says so, for scripts checking the card.
            raise mc.CardBlocked(
                "PIN BLOCKED: the card refuses every key operation for good; restore the latest "
                "backup into a new master card (onecard sim restore-master-card for a simulated "
                "one) and destroy this one"
            )
        if pin is not None:
            client.verify_pin(pin)
            print("PIN verified")
        infos = client.key_infos()
    print(_versions_line(infos))
    print(key_table(infos))


def cmd_versions(args) -> None:
    if args.keystore is not None:
        keystore = load_keystore(args.keystore, _unlock(args))
        anchor = keystore.master_card
        print(
            f"keystore {args.keystore}: "
            + (
                f"loaded from the key master card of enterprise "
                f"{format_enterprise_id(anchor.enterprise_id)} (identity key {anchor.public_key.hex()})"
                if anchor
                else "not loaded from a key master card (made by onecard sam create-keystore)"
            )
        )
        print(_versions_line(keystore.infos()))
        print(key_table(keystore.infos()))
        return
    # A reader: try the master card's AID first, then the PSAM's.
    try:
        client = mc.MasterCardClient.open(args.reader)
    except mc.CardBlocked:
        raise
    except mc.MasterCardError as exc:
        if "not a onecard key master card" not in str(exc):
            raise
    else:
        with client:
            info = client.card_info()
            print(mc.describe_card(info))
            if info.blocked:
                raise mc.CardBlocked(
                    "the key master card is blocked and lists nothing; restore the latest backup into "
                    "a new master card (onecard sim restore-master-card for a simulated one)"
                )
            infos = client.key_infos()
        print(_versions_line(infos))
        print(key_table(infos))
        return
    from sam.pcsc_sam import PcscSam

    psam = PcscSam(args.reader, timeout=3)
    try:
        infos = psam.key_infos()
    finally:
        psam.close()
    print(f"PSAM in {args.reader!r}")
    print(_versions_line(infos))
    print(key_table(infos))


def _check_psam_retirement(args, enterprise_id: bytes) -> None:
    from sam.retirement import OVERRIDE_FLAG, REPORT_HELP, RetirementRefused, check_retirement, parse_report

    if not 2 <= args.retire_below <= 255:
        raise KeysCliError(f"--retire-below {args.retire_below} is not 2..255: name the oldest key version to keep")
    versions = range(1, args.retire_below)
    if args.retire_although_cards_use_it:
        print(
            f"WARNING: {OVERRIDE_FLAG}: key versions below {args.retire_below} retired from the PSAM without asking "
            "the platform; any card still on them is refused by this PSAM",
            file=sys.stderr,
        )
        return
    if args.key_versions is None:
        raise KeysCliError(
            f"--retire-below needs --key-versions REPORT, {REPORT_HELP}, so that no version is retired "
            "while cards still use it"
        )
    text = read_input(args.key_versions, "key-version report", "--key-versions").decode("utf-8", "replace")
    try:
        check_retirement(parse_report(text, f"--key-versions {args.key_versions}"), enterprise_id.hex(), versions)
    except RetirementRefused as exc:
        raise KeysRefused(str(exc)) from None


def cmd_load_psam(args) -> None:
    from sam.pcsc_sam import PcscSam

    pin = read_pin(args.pin_file)
    client, info = _open_unblocked(args.reader)
    if args.retire_below is not None:
        try:
            _check_psam_retirement(args, info.enterprise_id)
        except BaseException:
            client.close()
            raise
    with client:
        psam = PcscSam(args.psam_reader, timeout=3)
        try:
            held = {i.enterprise_id for i in psam.key_infos()}
            challenge = psam.begin_key_load()
            ours = format_enterprise_id(info.enterprise_id)
            others = sorted(format_enterprise_id(e) for e in held if e != info.enterprise_id)
            if challenge.trust == 2 and challenge.enterprise_id != info.enterprise_id or others:
                theirs = format_enterprise_id(challenge.enterprise_id) if challenge.trust == 2 else others[0]
                raise KeysRefused(
                    f"enterprise mismatch: the PSAM belongs to enterprise {theirs}, the master card to "
                    f"{ours}; use enterprise {theirs}'s master card, or another PSAM"
                )
            if challenge.trust == 2 and challenge.master_public_key != info.public_key:
                raise KeysCliError(
                    "the PSAM was loaded by another key master card of this enterprise and accepts keys "
                    "only from that one (二次洗卡); use that card, or a card restored from its backup"
                )
            if challenge.trust == 1:
                raise KeysCliError(
                    "the PSAM already holds keys that did not come from a key master card, so it cannot "
                    "prove a new load is the enterprise's; make a blank PSAM (onecard sim new-blank-psam)"
                )
            client.verify_pin(pin)
            blob = client.export_for_target(
                args.role,
                mc.TARGET_PSAM,
                challenge.serial,
                challenge.ephemeral_public_key,
                keep_from_version=args.retire_below or 0,
            )
            count = psam.load_keys(blob)
            infos = psam.key_infos()
        finally:
            psam.close()
    if args.retire_below is not None:
        left = sorted(
            {i.version for i in infos if i.enterprise_id == info.enterprise_id and i.version < args.retire_below}
        )
        if left:  # the PSAM answered success but kept them: never report a retirement that did not happen
            raise KeysRefused(
                f"the PSAM still holds key version(s) {left}: it does not support retirement "
                "(docs/psam.md 4.9); replace it with a PSAM that does"
            )
        print(f"key versions below {args.retire_below} retired from PSAM {challenge.serial.hex()}")
    print(
        f"PSAM {challenge.serial.hex()} loaded for role {args.role} from the key master card of enterprise {ours} "
        f"({count} keys; it accepts later loads only from this master card)"
    )
    print(key_table(infos))


def _export_to_keystore(client: mc.MasterCardClient, pin: bytes, role: str, trusted) -> tuple[list, object]:
    target = mc.KeystoreTarget()
    client.verify_pin(pin)
    blob = client.export_for_target(role, mc.TARGET_KEYSTORE, target.target_id, target.public_key)
    try:
        return target.open(blob, trusted)
    except mc.ExportError as exc:
        raise KeysCliError(f"{exc}; check that the master card in the reader is the enterprise's own") from None


def cmd_load_keystore(args) -> None:
    pin = read_pin(args.pin_file)
    unlock = _unlock(args)
    if not args.force and os.path.lexists(args.out):
        raise KeysCliError(
            f"keystore {args.out} already exists; choose another path, add versions to it with "
            "'onecard keys add-version', or pass --force"
        )
    client, info = _open_unblocked(args.reader)
    with client:
        keys, anchor = _export_to_keystore(client, pin, args.role, info.anchor())
    keystore = Keystore(keys, anchor)
    save_keystore(args.out, keystore, unlock, overwrite=args.force)
    print(
        f"wrote keystore {args.out} for role {args.role} from the key master card of enterprise "
        f"{format_enterprise_id(info.enterprise_id)} ({len(keystore)} keys, locked with {unlock.kind})"
    )
    print(key_table(keystore.infos()))


def cmd_add_version(args) -> None:
    pin = read_pin(args.pin_file)
    unlock = _unlock(args)
    current = load_keystore(args.keystore, unlock)
    if current.master_card is None:
        raise KeysRefused(
            f"keystore {args.keystore} was not loaded from a key master card, so new key versions cannot "
            "be proven to be the enterprise's (二次洗卡); load a new one with 'onecard keys load-keystore'"
        )
    client, info = _open_unblocked(args.reader)
    with client:
        if info.enterprise_id != current.master_card.enterprise_id:
            raise KeysRefused(
                f"enterprise mismatch: the keystore belongs to enterprise "
                f"{format_enterprise_id(current.master_card.enterprise_id)}, the master card to "
                f"{format_enterprise_id(info.enterprise_id)}; use the keystore's own master card"
            )
        if info.public_key != current.master_card.public_key:
            raise KeysCliError(
                "the keystore accepts keys only from the key master card that loaded it (二次洗卡); use that "
                "card, or a card restored from its backup"
            )
        keys, anchor = _export_to_keystore(client, pin, args.role, current.master_card)
    merged = {k.ident: k for k in current}
    added = 0
    for key in keys:
        old = merged.get(key.ident)
        if old is not None and old.key != key.key:
            raise KeysCliError(
                f"the keystore's {key.describe()} differs from the master card's; it was not loaded from "
                "this key set: load a new keystore instead"
            )
        added += old is None
        merged[key.ident] = key
    keystore = Keystore(merged.values(), anchor)
    save_keystore(args.keystore, keystore, unlock, overwrite=True)
    print(f"keystore {args.keystore}: {added} keys added from the key master card ({len(keystore)} keys now)")
    print(key_table(keystore.infos()))


def cmd_new_recipient(args) -> None:
    private, public = mc.new_recipient_key()
    _write_new(args.out_private, private, "private key file")
    _write_new(args.out_public, public, "public key file")
    print(f"backup recipient public key written to {args.out_public}: give it to 'onecard keys backup --recipient-key'")
    print(
        f"KEEP THIS: the recipient private key {args.out_private}, offline and apart from the backups; without it no "
        "backup can be restored, and with it anyone holding a backup has the key set"
    )


def cmd_backup(args) -> None:
    pin = read_pin(args.pin_file)
    try:
        recipient = mc.load_recipient_public(read_input(args.recipient_key, "recipient key file", "--recipient-key"))
    except mc.ExportError as exc:
        raise KeysCliError(
            f"{args.recipient_key}: {exc}; use the public key from 'onecard keys new-backup-recipient'"
        ) from None
    if os.path.lexists(args.out):
        raise KeysCliError(f"backup file {args.out} already exists; choose another path (it is never overwritten)")
    client, info = _open_unblocked(args.reader)
    with client:
        client.verify_pin(pin)
        blob = client.backup(recipient)
    _write_new(args.out, blob, "backup file")
    print(
        f"backup of the key master card of enterprise {format_enterprise_id(info.enterprise_id)} written to {args.out} "
        f"({len(blob)} bytes, wrapped for the recipient key; export counter {mc.parse_export(blob).header.counter})"
    )
    print(f"KEEP THIS: the backup {args.out}, in a safe place apart from the recipient private key")


def cmd_change_pin(args) -> None:
    old = read_pin(args.pin_file)
    new = read_pin(args.new_pin_file, "--new-pin-file")
    client, _ = _open_unblocked(args.reader)
    with client:
        client.change_pin(old, new)
    print(f"PIN of the key master card changed. KEEP THIS: the new PIN in {args.new_pin_file}")
