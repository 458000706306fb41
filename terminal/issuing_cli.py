"""`onecard issue ...`: the card office's issuing terminal: wash and re-key cards in batches; issue, replace or cancel
one card per command; add this enterprise's sub-application to a version 2 card carrying other enterprises'.

The station's keystore, its reader (or a simulated card file) and its own event log as for `issue wash`; the
registry is the platform, reached over MQTT with the station's own certificate (terminal/registry_client.py): the
station never opens the platform's database and never holds its signing key. Labs only: `--lab-platform-db` and
`--lab-platform-key` put the platform in this process instead (central/station_registry.InProcessRegistry, wired in by
onecard/wiring.py), for a bench with no broker.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
from pathlib import Path

from common.errors import UserError
from sam.unlock_cli import add_unlock_options, unlock_from_args


def add_flow_subcommands(sub: argparse._SubParsersAction) -> None:
    card = _station(
        sub.add_parser("card", help="issue (发卡): personalise a washed card for an employee and register it")
    )
    _rights(card)
    _pin_source(card)
    pin = station_arguments(
        sub.add_parser(
            "pin",
            help="card office: set or reset the spending password (消费密码) and its tries, or unblock it (--unblock)",
        )
    )
    _pin_source(pin)
    pin.add_argument("--unblock", action="store_true", help="tries back to 3, the password unchanged")
    pin.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the card")
    pin.set_defaults(handler=cmd_pin)
    replace = _station(
        sub.add_parser(
            "replace",
            help="replacement (补换卡): back up and void the old card if it "
            "is here, write its data and balance onto a washed new card",
        )
    )
    replace.add_argument(
        "--old-asn",
        help="the old card's ASN when it is lost or unreadable: the new card is then "
        "written from the platform's records",
    )
    replace.add_argument("--old-card", type=Path, help="simulated old card file (with --card for the new one)")
    _rights(replace, required=False)
    cancel = _station(
        sub.add_parser(
            "cancel",
            help="cancellation (注销): balance settled first, application voided "
            "and its personalisation erased, platform told",
        )
    )
    cancel.add_argument("--settle", action="store_true", help="refund the balance left on the card (it is logged)")
    cancel.add_argument(
        "--delete", action="store_true", help="application deletion at the holder's request rather than cancellation"
    )
    add = _station(
        sub.add_parser(
            "add-application",
            help="add this enterprise's sub-application to a version 2 card that already carries other "
            "enterprises' (一卡多用): create it under the card issuer's key, wash it, issue it to --employee",
            description="One tap: CREATE SUB-APPLICATION secured by the card issuer's key K_CARD (the station's "
            "keystore must hold the card issuer's transport key, enterprise 00000000: `onecard sam restrict --role "
            "issuing --enterprise E --card-issuer`), wash the new sub-application to --to-version, issue it to "
            "--employee and register it. The card's other sub-applications are neither needed nor touched. Re-tap "
            "safe: run it again after a card pulled away too soon (docs/card-application.md 9.6).",
        )
    )
    add.add_argument("--name", required=True, help="the sub-application's name in the card directory, e.g. Office")
    add.add_argument("--to-version", required=True, type=int, help="this enterprise's current key version 1..255")
    _rights(add)
    for p, handler in ((card, cmd_card), (replace, cmd_replace), (cancel, cmd_cancel), (add, cmd_add_application)):
        p.set_defaults(handler=handler)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """`onecard issue wash|rekey` (batches) and `card|replace|cancel` (one card flow each)."""
    for name, help_ in (
        ("wash", "wash cards tapped one after another: transport keys -> enterprise keys"),
        ("rekey", "re-key cards tapped one after another to a new key version (rotation)"),
    ):
        c = station_arguments(sub.add_parser(name, help=help_))
        c.add_argument("--to-version", required=True, type=int, help="enterprise key version 1..255")
        c.add_argument("--count", type=int, help="stop after this many cards (default: until Ctrl-C)")
        c.set_defaults(handler=cmd_batch, mode=name.replace("rekey", "rotate"))
    add_flow_subcommands(sub)


def station_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """What every command of the issuing station needs: its keystore, its reader (or a card file), its log."""
    p.add_argument("--keystore", required=True, type=Path, help="the issuing station's keystore")
    add_unlock_options(p, what="the station's keystore")
    p.add_argument("--enterprise", required=True, help="8-digit enterprise ID")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--reader", help="PC/SC reader (any part of its name)")
    src.add_argument("--card", type=Path, help="a simulated card file")
    p.add_argument("--log", required=True, type=Path, help="the issuing terminal's event log (SQLite)")
    p.add_argument("--terminal-id", default="000000000900", help="12-digit terminal ID")
    return p


def _station(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    station_arguments(p)
    # The registry is the platform over MQTT, with the station's own certificate (CN = --terminal-id); or, in a lab,
    # the platform's own database opened in this process.
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--broker-host", help="the platform's MQTT broker (with --broker-ca, --cert, --cert-key, ...)")
    where.add_argument(
        "--lab-platform-db",
        type=Path,
        help="labs only, instead of the broker: the platform database (`onecard platform init`), opened in this "
        "process as the registry; needs --lab-platform-key. A card office uses --broker-host",
    )
    p.add_argument(
        "--lab-platform-key", type=Path, help="labs only: the platform's signing key, with --lab-platform-db"
    )
    p.add_argument("--broker-port", type=int, default=8883)
    p.add_argument("--broker-ca", type=Path, help="the platform CA certificate (ca.pem); with --broker-host")
    p.add_argument("--cert", type=Path, help="this station's certificate (CN = --terminal-id); with --broker-host")
    p.add_argument("--cert-key", type=Path, help="this station's certificate key; with --broker-host")
    p.add_argument(
        "--platform-public-key",
        type=Path,
        help="the platform's Ed25519 public key (PEM): its answers must verify against it; with --broker-host",
    )
    p.add_argument("--registry-timeout", type=float, default=10.0, help="seconds to wait for each platform answer")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for each card")
    return p


def _rights(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--employee", required=required, help="employee number, registered on the platform")
    p.add_argument("--groups", default="1", help="door groups, e.g. 1,2,5")
    p.add_argument("--valid-from", default=None, help="YYYY-MM-DD (default today)")
    p.add_argument("--valid-to", default=None, help="YYYY-MM-DD (default in 3 years)")
    p.add_argument("--time-profile", type=int, default=0)
    p.add_argument("--purse-expiry", default=None, help="YYYY-MM-DD (default --valid-to)")
    p.add_argument("--max-balance", default="2000.00", help="yuan")


def open_station_sam(args):
    from sam.interface import SamError
    from sam.software import SoftwareSam

    try:
        return SoftwareSam.open(args.keystore, unlock_from_args(args))
    except SamError as exc:
        raise UserError(str(exc)) from None


def _wiring(args, what: str = "--card (a simulated card file)", instead: str = "--reader with a real reader"):
    wiring = getattr(args, "wiring", None)
    if wiring is None:
        raise UserError(
            f"{what} works only under the onecard command, which wires the simulator and the lab parts in; "
            f"use {instead} here"
        )
    return wiring


def open_station_reader(args, card_file: Path | None = None):
    """The station's reader, or an in-process reader holding a simulated card file (tapped once)."""
    card_file = card_file or args.card
    if card_file is not None:
        return _wiring(args).simulated_card_reader(card_file)
    from terminal.reader import ReaderError
    from terminal.readers.pcsc import PcscReader

    try:
        return PcscReader(args.reader)
    except ReaderError as exc:
        raise UserError(str(exc)) from None


def _request(args, enterprise: bytes):
    from common.money import parse_yuan
    from terminal.issuing import IssueRequest

    today = dt.date.today()
    try:
        groups = frozenset(int(g) for g in args.groups.split(",") if g.strip())
        valid_from = dt.date.fromisoformat(args.valid_from) if args.valid_from else today
        valid_to = dt.date.fromisoformat(args.valid_to) if args.valid_to else today.replace(year=today.year + 3)
        expiry = dt.date.fromisoformat(args.purse_expiry) if args.purse_expiry else None
    except ValueError:
        raise UserError("--groups must be numbers separated by commas and dates YYYY-MM-DD") from None
    return IssueRequest(
        enterprise,
        args.employee or "",
        groups,
        valid_from,
        valid_to,
        args.time_profile,
        expiry,
        parse_yuan(args.max_balance, "--max-balance"),
    )


@contextlib.contextmanager
def _issuing_terminal(args):
    from common.db import DatabaseError
    from sam.keystore import parse_enterprise_id
    from terminal.decision import Refusal
    from terminal.event_log import EventLog
    from terminal.issuing import IssuingTerminal

    try:
        enterprise = parse_enterprise_id(args.enterprise)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not (len(args.terminal_id) == 12 and args.terminal_id.isdigit()):
        raise UserError(f"--terminal-id {args.terminal_id!r} is not 12 digits")
    sam = open_station_sam(args)
    with _registry(args) as registry:
        try:
            with EventLog.open(args.log, args.terminal_id) as log:
                yield IssuingTerminal(sam, registry, log, enterprise, bytes.fromhex(args.terminal_id)), enterprise
        except DatabaseError as exc:
            raise UserError(str(exc)) from None
        except Refusal as r:  # a platform refusal outside a tap (replacement from the platform's records)
            raise UserError(f"{r.message} ({r.reason_code})", 1) from None


BROKER_OPTIONS = ("broker_ca", "cert", "cert_key", "platform_public_key")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


@contextlib.contextmanager
def _registry(args):
    """The platform as the station's Registry: over MQTT (--broker-host), or in this process (--lab-platform-db)."""
    from common.mqtt import TlsFiles
    from common.registry import RegistryError
    from terminal.registry_client import MqttRegistry, load_platform_public_key

    if args.lab_platform_db is not None:
        given = [_flag(d) for d in BROKER_OPTIONS if getattr(args, d) is not None]
        if given:
            raise UserError(
                f"--lab-platform-db replaces the broker: drop {', '.join(given)} (or drop --lab-platform-db and "
                "use --broker-host)"
            )
        if args.lab_platform_key is None:
            raise UserError("--lab-platform-db needs --lab-platform-key (the platform's signing key)")
        wiring = _wiring(args, "--lab-platform-db", "--broker-host")
        with wiring.lab_registry(args.lab_platform_db, args.lab_platform_key) as registry:
            yield registry
        return
    if args.lab_platform_key is not None:
        raise UserError("--lab-platform-key goes with --lab-platform-db; with --broker-host drop it")
    missing = [_flag(d) for d in BROKER_OPTIONS if getattr(args, d) is None]
    if missing:
        raise UserError(f"--broker-host needs {', '.join(missing)}: give the station's certificate files")
    try:
        registry = MqttRegistry(
            args.terminal_id,
            args.broker_host,
            args.broker_port,
            TlsFiles(args.broker_ca, args.cert, args.cert_key),
            load_platform_public_key(args.platform_public_key),
            args.registry_timeout,
        ).connect()
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    try:
        yield registry
    finally:
        registry.close()


def _with_card(args, prompt: str, action, card_file: Path | None = None, reader=None):
    """Ask for a card, run `action(transmit)` on it; a Refusal or a card pulled away is one line and exit 1.

    `reader`: the station's reader, kept open by the caller across several cards (closed here otherwise)."""
    from common.registry import RegistryError
    from terminal.decision import Refusal
    from terminal.reader import CardRemoved

    own = reader is None
    reader = open_station_reader(args, card_file) if own else reader
    try:
        print(prompt, flush=True)
        conn = reader.wait_for_card(args.wait)
        if conn is None:
            raise UserError(f"no card presented within {args.wait:g} s; run the command again and tap the card", 1)
        try:
            return action(conn.transmit)
        except Refusal as r:
            raise UserError(f"{r.message} ({r.reason_code})", 1) from None
        except RegistryError as exc:
            raise UserError(f"Platform: {exc}", 1) from None
        except CardRemoved:
            raise UserError(
                "card removed too soon: run the command again and hold the card still; the station "
                "finishes what the first tap started",
                1,
            ) from None
        finally:
            conn.close()
    finally:
        if own:
            reader.close()


def _pin_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--spending-pin-file",
        type=Path,
        help="file holding the spending password (4-12 digits, one line); never give it on the command line",
    )
    src.add_argument(
        "--spending-pin-prompt", action="store_true", help="ask for the spending password (typed twice, no echo)"
    )


def read_spending_pin(args, required: bool = False):
    """The spending password from --spending-pin-file or a no-echo prompt (typed twice): a Pin, or None."""
    from terminal.spending_pin import PinFormatError, parse_pin

    raw: bytearray | None = None
    if args.spending_pin_file is not None:
        try:
            raw = bytearray(args.spending_pin_file.read_bytes().strip())
        except OSError as exc:
            raise UserError(
                f"--spending-pin-file {args.spending_pin_file}: {exc.strerror}; give a readable file"
            ) from None
    elif args.spending_pin_prompt:
        import getpass

        first = getpass.getpass("spending password: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the two spending passwords differ; run the command again")
        raw = bytearray(first.encode())
    if raw is None:
        if required:
            raise UserError("give --spending-pin-file FILE or --spending-pin-prompt (or --unblock)")
        return None
    try:
        return parse_pin(raw)
    except PinFormatError as exc:
        raise UserError(str(exc).replace("type it again", "fix it and run the command again")) from None
    finally:
        raw[:] = bytes(len(raw))


def cmd_pin(args) -> int:
    """Card office: the spending password of this enterprise's (sub-)application, under its admin key."""
    from sam.keystore import parse_enterprise_id
    from terminal import card_protocol as cp
    from terminal.authenticate import select_card
    from terminal.event_log import EventLog
    from terminal.rekey import AdminChannel

    try:
        enterprise = parse_enterprise_id(args.enterprise)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    pin = None if args.unblock else read_spending_pin(args, required=True)
    sam = open_station_sam(args)

    def act(transmit) -> str:
        from sam.interface import SamError

        info = select_card(transmit, enterprise)
        channel = AdminChannel(transmit, sam, info)
        try:
            if pin is None:
                channel.unblock_spending_pin()
            else:
                channel.set_spending_pin(pin)
        except (SamError, cp.CardProtocolError) as exc:
            raise UserError(f"the card refused: {exc}", 1) from None
        return info.asn_hex

    with EventLog.open(args.log, args.terminal_id) as log:
        asn = _with_card(args, "tap the card", act)
        kind = "issue.pin_unblocked" if pin is None else "issue.pin_set"
        log.append(
            _now(),
            kind,
            asn=asn,
            reason_code=kind.split(".")[1],
            message="spending password " + ("unblocked" if pin is None else "set, tries reset"),
            detail={},
        )
    if pin is not None:
        pin.wipe()
    print(f"card {asn}: spending password " + ("unblocked (3 tries)" if pin is None else "set (3 tries)"))
    return 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def cmd_card(args) -> int:
    with _issuing_terminal(args) as (station, enterprise):
        req = _request(args, enterprise)
        pin = read_spending_pin(args)
        asn = _with_card(args, "tap the washed card to issue", lambda t: station.issue(t, req, _now(), pin))
    print(f"card {asn} issued to employee {args.employee} and registered with the platform")
    return 0


def cmd_add_application(args) -> int:
    import os

    from terminal import card_protocol as cp
    from terminal import rekey

    if not 1 <= args.to_version <= 255:
        raise UserError(f"--to-version {args.to_version} is not 1..255; give this enterprise's current key version")
    encoded = args.name.encode()
    if not 1 <= len(encoded) <= cp.NAME_MAX:
        raise UserError(f"--name must be 1..{cp.NAME_MAX} bytes of UTF-8; pick a shorter name")
    with _issuing_terminal(args) as (station, enterprise):
        req = _request(args, enterprise)

        def add_wash_issue(transmit) -> tuple[str, str]:
            now = _now()
            added = station.add_sub_application(transmit, args.name, os.urandom(8), now)
            rekey.rekey_card(transmit, station.sam, enterprise, args.to_version, station.event_log, now, rekey.WASH)
            return added, station.issue(transmit, req, now)

        _, asn = _with_card(args, "tap the card to add the sub-application to", add_wash_issue)
    print(
        f"sub-application {asn} ({args.name}) of enterprise {args.enterprise} added, issued to employee "
        f"{args.employee} and registered with the platform; the card's other sub-applications are untouched"
    )
    return 0


def _subsidy_note(station, asn: str, backup) -> str:
    """What became of the old card's subsidy, from the station's log (issue.replace): carried or lapsed."""
    from common import journal as jn
    from common.money import format_yuan

    if not backup.subsidy_balance:
        return ""
    done = station.journal.last(asn, jn.REPLACE, jn.State.DONE)
    amount = format_yuan(backup.subsidy_balance)
    if done is not None and done.detail.get("subsidy_lapsed"):
        return f"; expired subsidy {amount} yuan lapsed"
    return f"; subsidy {amount} yuan carried over"


def cmd_replace(args) -> int:
    with _issuing_terminal(args) as (station, enterprise):
        if args.old_asn:
            if not args.employee:
                raise UserError("--old-asn needs --employee and the rights to write (--groups, --valid-to ...)")
            backup = station.backup_from_platform(args.old_asn.upper(), _request(args, enterprise))
            print(f"old card {backup.old_asn} not present: the new card gets the platform's records", flush=True)
            asn = _with_card(args, "tap the NEW washed card", lambda t: station.replace(t, backup, _now()))
        elif args.old_card is not None:  # simulated cards: each file is its own reader
            backup = _with_card(
                args,
                "tap the OLD card (its data is backed up, then it is voided)",
                lambda t: station.backup_and_void(t, _now()),
                args.old_card,
            )
            print(f"old card {backup.old_asn} backed up and voided", flush=True)
            asn = _with_card(args, "tap the NEW washed card", lambda t: station.replace(t, backup, _now()))
        else:
            # One reader for both cards: the old one must leave before the new one is read.
            reader = open_station_reader(args)
            try:
                backup = _with_card(
                    args,
                    "tap the OLD card (its data is backed up, then it is voided)",
                    lambda t: station.backup_and_void(t, _now()),
                    reader=reader,
                )
                print(f"old card {backup.old_asn} backed up and voided: take it away from the reader", flush=True)
                if not reader.wait_for_removal(args.wait):
                    raise UserError(
                        f"the old card {backup.old_asn} is still on the reader after {args.wait:g} s; it "
                        "is backed up and voided: run the command again, take it away when asked, then "
                        "tap the new card",
                        1,
                    )
                asn = _with_card(
                    args, "tap the NEW washed card", lambda t: station.replace(t, backup, _now()), reader=reader
                )
            finally:
                reader.close()
        subsidy = _subsidy_note(station, asn, backup)
    print(f"card {asn} replaces {backup.old_asn}; balance and rights carried over{subsidy}")
    return 0


def cmd_cancel(args) -> int:
    from common.money import format_yuan

    with _issuing_terminal(args) as (station, _):
        settled = _with_card(
            args,
            "tap the card to cancel",
            lambda t: station.cancel(t, _now(), settle=args.settle, deletion=args.delete),
        )
    what = "application deleted" if args.delete else "card cancelled"
    if settled:
        what += f"; balance settled: {format_yuan(settled)} yuan refunded to the holder"
    returned = station.outcome.get("subsidy_returned", 0)
    if returned:
        what += f"; subsidy {format_yuan(returned)} yuan returned to the enterprise (not paid out)"
    print(what)
    return 0


def cmd_batch(args) -> int:
    import signal
    import threading

    from common.db import DatabaseError
    from sam.keystore import parse_enterprise_id
    from terminal import rekey
    from terminal.event_log import EventLog

    if not 1 <= args.to_version <= 255:
        raise UserError(f"--to-version {args.to_version} is not 1..255; pick an enterprise key version")
    try:
        enterprise = parse_enterprise_id(args.enterprise)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    sam = open_station_sam(args)
    reader = open_station_reader(args)
    count = 1 if args.card is not None else args.count
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with EventLog.open(args.log, args.terminal_id) as log:
            if args.card is not None:
                threading.Timer(0.5, reader.remove).start()  # a simulated card leaves after its one tap
            totals = rekey.batch(
                reader,
                sam,
                enterprise,
                args.to_version,
                log,
                lambda: dt.datetime.now(dt.timezone.utc),
                lambda line: print(line, flush=True),
                mode=args.mode,
                count=count,
                stop=stop,
                poll=0.2,
            )
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    finally:
        reader.close()
    return 0 if totals["refused"] == 0 and totals["torn"] == 0 else 1
