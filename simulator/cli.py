"""`onecard sim ...`: make simulated cards, show them, and tap them on vpcd readers."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from common.errors import UserError
from common.money import parse_yuan
from sam.interface import Algorithm
from sam.unlock_cli import add_unlock_options, unlock_from_args


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    new = sub.add_parser("new-card", help="personalise a simulated RFID-SIM with the enterprise's SAM keystore")
    new.add_argument("--out", required=True, type=Path, help="card file to write (one file per card)")
    new.add_argument("--keystore", required=True, type=Path, help="keystore holding the ACCESS key with 'personalise'")
    add_unlock_options(new, what="--keystore")
    new.add_argument("--enterprise", required=True, help="8-digit enterprise ID")
    new.add_argument("--employee", help="employee number (up to 16 ASCII characters)")
    new.add_argument("--name", help="holder name (up to 32 bytes of UTF-8)")
    new.add_argument(
        "--factory",
        action="store_true",
        help="a card as it leaves the factory: transport keys only, to be washed with 'onecard issue "
        "wash' (needs the keystore's TRANSPORT key; --employee and --name are not used)",
    )
    new.add_argument("--groups", default="1", help="door groups, e.g. 1,2,5 (1..64)")
    new.add_argument("--valid-from", default=None, help="YYYY-MM-DD (default: today)")
    new.add_argument("--valid-to", default=None, help="YYYY-MM-DD (default: in 3 years)")
    new.add_argument("--time-profile", type=int, default=0, help="0 = any time; N = [time_profiles.N] on terminals")
    new.add_argument("--algorithm", choices=["aes128", "sm4"], default="aes128")
    new.add_argument("--key-version", type=int, default=1)
    new.add_argument("--card-type", choices=["rfid-sim", "ic-card"], default="rfid-sim")
    new.add_argument("--asn", default=None, help="16 hex digits (default: random)")
    new.add_argument("--no-purse", action="store_true", help="issue without the e-purse (door and attendance only)")
    new.add_argument(
        "--purse-expiry", default=None, help="YYYY-MM-DD, last day purchases are accepted (default: --valid-to)"
    )
    new.add_argument("--max-balance", default="2000.00", help="maximum purse balance in yuan (default 2000.00)")
    new.add_argument("--force", action="store_true", help="replace an existing card file")
    new.add_argument(
        "--sub-application",
        metavar="NAME",
        default=None,
        help="a version 2 card (docs/card-application.md section 9): personalise this enterprise's sub-application "
        "named NAME (up to 16 bytes, shown in the card directory); when --out is already a version 2 card, add it "
        "there, leaving the other enterprises' sub-applications as they are",
    )
    new.set_defaults(handler=cmd_new_card)

    foreign = sub.add_parser("new-foreign-card", help="a card or phone without the one-card application")
    foreign.add_argument("--out", required=True, type=Path)
    foreign.add_argument("--label", default="phone without RFID-SIM")
    foreign.set_defaults(handler=cmd_new_foreign)

    show = sub.add_parser("show", help="what a simulated card holds (keys are not shown)")
    show.add_argument("card", type=Path)
    show.set_defaults(handler=cmd_show)

    readers = sub.add_parser(
        "readers",
        help="start a private pcscd with virtual (vpcd) readers; print their names and ports; run until Ctrl-C",
    )
    readers.add_argument("--count", type=int, default=2, help="how many readers (1..16, default 2)")
    readers.set_defaults(handler=cmd_readers)

    nfc = sub.add_parser(
        "serve-nfc", help='serve one card file to nfcpy\'s udp driver until Ctrl-C ([reader] driver = "nfc")'
    )
    nfc.add_argument("card", type=Path, help="simulated card file (onecard sim new-card / new-foreign-card)")
    nfc.add_argument("--port", type=int, default=54321, help="UDP port on 127.0.0.1 (nfcpy path udp:127.0.0.1:PORT)")
    nfc.add_argument("--uid", default=None, help="fixed UID, 8/14/20 hex digits (default: random at each insertion)")
    nfc.add_argument("--fwi", type=int, default=None, help="frame waiting time integer (default: the simulator's)")
    nfc.set_defaults(handler=cmd_serve_nfc)

    from simulator import master_card_cli, psam_cli, tap_cli
    from simulator.card_files import load_card

    tap_cli.add_subcommands(sub, load_card)
    psam_cli.add_psam_subcommands(sub)
    master_card_cli.add_subcommands(sub)


def _date(text: str | None, default: dt.date) -> dt.date:
    if text is None:
        return default
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"date {text!r} is not YYYY-MM-DD; write e.g. 2027-12-31") from None


def cmd_new_card(args) -> int:
    from sam.interface import SamError
    from sam.software import SoftwareSam
    from simulator.card import CARD_TYPE_IC_CARD, CARD_TYPE_RFID_SIM
    from simulator.personalise import Personalisation, personalise, write_card

    if not (len(args.enterprise) == 8 and args.enterprise.isdigit()):
        raise UserError(f"--enterprise {args.enterprise!r} is not 8 digits; write e.g. 00010001")
    if args.factory:
        return _new_factory_card(args)
    if not args.employee or not args.name:
        raise UserError(
            "--employee and --name are needed for a personalised card (or pass --factory for a card "
            "with transport keys, to be washed)"
        )
    try:
        groups = frozenset(int(g) for g in args.groups.split(",") if g.strip())
        asn = bytes.fromhex(args.asn) if args.asn else None
    except ValueError:
        raise UserError("--groups must be numbers separated by commas and --asn 16 hex digits") from None
    if asn is not None and len(asn) != 8:
        raise UserError("--asn must be 16 hex digits (8 bytes)")
    today = dt.date.today()
    try:
        p = Personalisation(
            enterprise_id=bytes.fromhex(args.enterprise),
            employee_no=args.employee,
            name=args.name,
            door_groups=groups,
            valid_from=_date(args.valid_from, today),
            valid_to=_date(args.valid_to, today.replace(year=today.year + 3)),
            time_profile=args.time_profile,
            algorithm=Algorithm.SM4 if args.algorithm == "sm4" else Algorithm.AES128,
            key_version=args.key_version,
            card_type=CARD_TYPE_IC_CARD if args.card_type == "ic-card" else CARD_TYPE_RFID_SIM,
            asn=asn,
            purse=not args.no_purse,
            purse_key_version=args.key_version,
            purse_expiry=_date(args.purse_expiry, None) if args.purse_expiry else None,
            max_balance=parse_yuan(args.max_balance, "--max-balance"),
        )
    except ValueError as exc:
        raise UserError(f"{exc}; fix that option") from None
    try:
        sam = SoftwareSam.open(args.keystore, unlock_from_args(args))
        state = personalise(sam, p, label=f"{args.name} ({args.employee})")
    except SamError as exc:
        raise UserError(str(exc)) from None
    if args.sub_application is not None:
        return _write_sub_application(args, state)
    try:
        write_card(args.out, state, overwrite=args.force)
    except FileExistsError as exc:
        raise UserError(str(exc)) from None
    print(f"card {state.asn.hex().upper()} for {args.name} ({args.employee}) written to {args.out}")
    return 0


def _write_sub_application(args, state) -> int:
    """Put `state` as a version 2 sub-application on the card file --out (a new card, or an existing version 2
    card that keeps its other sub-applications)."""
    from simulator.card import STATE_FORMAT_V2, MultiCardStateFile, OneCardV2Applet
    from simulator.personalise import multi_card

    state.name, state.app_version = args.sub_application, 2
    try:
        state.__post_init__()
    except ValueError as exc:
        raise UserError(f"--sub-application: {exc}; pick a shorter name") from None
    existing = None
    if args.out.exists() and not args.force:
        try:
            doc = json.loads(args.out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read card file {args.out}: {exc}; pass another --out") from None
        if doc.get("format") != STATE_FORMAT_V2:
            raise UserError(
                f"card file {args.out} is not a version 2 card: pick another --out, or --force to replace it"
            )
        existing = MultiCardStateFile(args.out)
    store = existing or MultiCardStateFile(args.out)
    card = OneCardV2Applet(store.load() if existing else multi_card([], label=state.label), store)
    try:
        card.add_sub_application(state)
    except ValueError as exc:
        raise UserError(f"{exc}; delete that sub-application first or pick another card") from None
    names = ", ".join(f"{e.enterprise_id.hex()} {e.name}" for e in card.directory())
    print(
        f"sub-application {state.asn.hex().upper()} ({args.sub_application}) on {args.out}; the card carries: {names}"
    )
    return 0


def _new_factory_card(args) -> int:
    from sam.interface import SamError
    from sam.software import SoftwareSam
    from simulator.card import CARD_TYPE_IC_CARD, CARD_TYPE_RFID_SIM
    from simulator.personalise import transport_card, write_card

    try:
        asn = bytes.fromhex(args.asn) if args.asn else None
    except ValueError:
        raise UserError("--asn must be 16 hex digits (8 bytes)") from None
    if asn is not None and len(asn) != 8:
        raise UserError("--asn must be 16 hex digits (8 bytes)")
    try:
        sam = SoftwareSam.open(args.keystore, unlock_from_args(args))
        state = transport_card(
            sam,
            bytes.fromhex(args.enterprise),
            asn=asn,
            algorithm=Algorithm.SM4 if args.algorithm == "sm4" else Algorithm.AES128,
            card_type=CARD_TYPE_IC_CARD if args.card_type == "ic-card" else CARD_TYPE_RFID_SIM,
            label="factory card",
        )
        write_card(args.out, state, overwrite=args.force)
    except SamError as exc:
        raise UserError(str(exc)) from None
    except FileExistsError as exc:
        raise UserError(str(exc)) from None
    print(
        f"factory card {state.asn.hex().upper()} (transport keys, key version 0) written to {args.out}; wash it "
        f"with: onecard issue wash --card {args.out} ..."
    )
    return 0


def cmd_new_foreign(args) -> int:
    from simulator.card import write_foreign_card

    write_foreign_card(args.out, args.label)
    print(f"card without one-card application ({args.label}) written to {args.out}")
    return 0


def cmd_show(args) -> int:
    from simulator.card import CardStateFile
    from terminal.card_protocol import STATUS_NAMES, parse_door_groups

    try:
        doc = json.loads(args.card.read_text(encoding="utf-8"))
        if doc.get("format") == "onecard-sim-foreign/1":
            print(f"{args.card}: {doc.get('label')} (no one-card application)")
            return 0
        s = CardStateFile(args.card).load()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read card file {args.card}: {exc}; pass a file made by 'onecard sim new-card'"
        ) from None
    a = s.access
    print(f"card {s.asn.hex().upper()}  {s.label}")
    print(
        f"  enterprise {s.enterprise_id.hex()}  status {STATUS_NAMES.get(s.status, hex(s.status))}"
        f"  key version {s.key_version}  {s.algorithm.name}"
    )
    print(f"  holder {s.holder[:16].rstrip(bytes(1)).decode()}  {s.holder[16:].rstrip(bytes(1)).decode()}")
    print(
        f"  valid {a[0:4].hex()}..{a[4:8].hex()}  door groups {sorted(parse_door_groups(a[8:16]))}"
        f"  time profile {a[16]}  access counter {s.access_counter}"
    )
    return 0


def cmd_serve_nfc(args) -> int:
    import signal
    import threading

    from simulator.card_files import load_card
    from simulator.nfc_udp import DEFAULT_FWI, VirtualPicc

    try:
        card = load_card(args.card)
        uid = bytes.fromhex(args.uid) if args.uid else None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load card {args.card} or --uid: {exc}; check the path and the hex digits") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with VirtualPicc(args.port, label=str(args.card), fwi=DEFAULT_FWI if args.fwi is None else args.fwi) as picc:
        picc.insert(card, uid=uid)
        print(
            f'card in the field at {picc.path}; configure [reader] driver = "nfc", path = "{picc.path}". '
            "Ctrl-C to stop.",
            flush=True,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_readers(args) -> int:
    import signal
    import threading

    from simulator.pcscd import MAX_READERS, SOCKET_ENV, PcscdError, private_pcscd

    if not 1 <= args.count <= MAX_READERS:
        raise UserError(f"--count {args.count} is not 1..{MAX_READERS} (pcscd's reader limit)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with private_pcscd(args.count) as pcscd:
            for slot in pcscd.slots:
                print(f"reader {slot.name!r} vpcd port {slot.port}", flush=True)
            print(f"{SOCKET_ENV}={pcscd.socket_path}", flush=True)
            print(
                f"ready: in another shell, export {SOCKET_ENV}={pcscd.socket_path}; put a card in a reader with "
                f"'onecard sim serve --port PORT --control DIR' and 'onecard sim tap CARD --control DIR'. "
                "Ctrl-C stops pcscd.",
                flush=True,
            )
            stop.wait()
    except PcscdError as exc:
        raise UserError(str(exc)) from None
    return 0
