"""`onecard platform ...`: run the reference platform and do the administrator's card flows (ONECARD.md 7.3).

Flows change platform.db and queue the signed notifications; a running `onecard platform serve` publishes them.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from central.db import TERMINAL_KINDS
from common.errors import EXIT_REFUSED, UserError

DB_HELP = (
    "platform database: an SQLite file (PATH or sqlite:PATH, the embedded default) or a PostgreSQL database "
    "(postgresql:DSN, e.g. postgresql:host=db1 dbname=onecard user=onecard, or postgresql://onecard@db1/onecard)"
)


def db_target(text: str):
    from central.sql import TargetError, parse_target

    try:
        return parse_target(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _require_db(target) -> None:
    """The platform database must exist (and, on PostgreSQL, hold a platform): `onecard platform init` makes it."""
    from central import sql as dialect

    fix = f"create it with `onecard platform init --db {target} --key KEY`"
    if target.backend == dialect.SQLITE:
        if not target.path.exists():
            raise UserError(f"platform database {target} does not exist; {fix}")
        return
    from central.db import PlatformError

    try:
        conn = dialect.connect_postgresql(target.dsn)
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    try:
        made = conn.execute("SELECT to_regclass('platform_epoch')").fetchone()[0] is not None
    finally:
        conn.close()
    if not made:
        raise UserError(
            f"PostgreSQL database {target} holds no platform; {fix}, or copy one into it with "
            "`onecard platform migrate`"
        )


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    def cmd(name: str, help_: str, handler, key: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--db", required=True, type=db_target, help=DB_HELP)
        if key:
            c.add_argument("--key", required=True, type=Path, help="platform Ed25519 signing key (PEM)")
        c.set_defaults(handler=handler)
        return c

    c = cmd("init", "create the database and the Ed25519 signing key (its .pub goes to every terminal)", cmd_init)
    c = cmd("add-enterprise", "register an enterprise", cmd_add_enterprise)
    c.add_argument("enterprise_id")
    c.add_argument("--name", required=True)
    c = cmd("add-terminal", "register a terminal of an enterprise", cmd_add_terminal)
    c.add_argument("terminal_id")
    c.add_argument("--enterprise", required=True)
    c.add_argument("--name", default="")
    c.add_argument(
        "--kind",
        required=True,
        choices=TERMINAL_KINDS,
        help="what the terminal is ([terminal].kind; issuing for an issuing station): only pos and topup "
        "terminals' money records are accounted",
    )
    c = cmd("add-holder", "register an employee (group member)", cmd_add_holder)
    c.add_argument("employee_no")
    c.add_argument("--enterprise", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--phone", default="")
    c = cmd("issue-card", "register a card (ASN) for an employee", cmd_issue_card)
    c.add_argument("asn")
    c.add_argument("--enterprise", required=True)
    c.add_argument("--employee", required=True)
    c.add_argument("--rights", default="{}", help='JSON, e.g. {"door_groups":[1,2],"time_profile":1}')
    c.add_argument("--balance", default="0", help="opening balance in yuan")
    c.add_argument(
        "--max-balance",
        default="2000.00",
        help="the card's maximum balance in yuan (EF_PURSE; default 2000.00, the issuing default)",
    )
    c = cmd("report-loss", "loss report: card LOST, blacklisted, every terminal notified", cmd_report_loss)
    c.add_argument("asn")
    _ota_secured_arguments(c, "also lock the card (status 03) through the SMSC in the holder's phone (docs/ota.md)")
    c = cmd("unlock", "unlock a lost card: ACTIVE again, removed from the blacklist", cmd_unlock)
    c.add_argument("asn")
    _ota_secured_arguments(c, "also unlock the card (status 01) through the SMSC in the holder's phone")
    c = cmd("cancel", "cancellation: balance settled first, card CANCELLED and blacklisted", cmd_cancel)
    c.add_argument("asn")
    c.add_argument("--settle", action="store_true", help="record the refund of a non-zero balance")
    _ota_secured_arguments(
        c,
        "delete the enterprise's application from the SIM in the holder's phone: the balance the card proves is "
        "settled, then the sub-application is deleted (docs/ota.md)",
    )
    c = cmd("replace", "replacement: old card REPLACED and blacklisted, new card gets its rights", cmd_replace)
    c.add_argument("old_asn")
    c.add_argument("new_asn")
    c = cmd("publish-config", "publish a signed configuration document to an enterprise's terminals", cmd_config)
    c.add_argument("--enterprise", required=True)
    c.add_argument("document", type=Path, help="JSON file: door groups, time windows, offline limits")
    c = cmd(
        "ota-topup",
        "over-the-air top-up: loaded onto the card at its next tap on a top-up terminal, once",
        cmd_ota_topup,
    )
    c.add_argument("asn")
    c.add_argument("amount", help="yuan, e.g. 50.00")
    c.add_argument(
        "--over-the-air",
        action="store_true",
        help="send it now through the SMSC to the SIM in the holder's phone (docs/ota.md); past the validity "
        "period it falls back to the next tap, once",
    )
    _ota_arguments(c)
    c.add_argument("--job", help="the job ID (default: a new one); an existing job's ID resumes it")
    c = cmd(
        "ota-issue",
        "issuing over the air (空中发卡): create, wash and personalise the enterprise's sub-application on the "
        "employee's SIM through the SMSC, then register it (docs/ota.md 5.4)",
        cmd_ota_issue,
    )
    c.add_argument("--enterprise", required=True, help="8-digit enterprise ID of the sub-application")
    c.add_argument("--employee", required=True, help="employee number, registered with a phone number")
    c.add_argument(
        "--card-serial",
        help="the SIM's card serial (16 hex digits, its directory's C0); default: the one the platform recorded for "
        "the holder's phone when a sub-application on it was registered",
    )
    c.add_argument("--name", required=True, help="the sub-application's name in the card directory")
    c.add_argument("--to-version", type=int, default=1, help="the enterprise's key version 1..255 (default 1)")
    c.add_argument("--groups", default="1", help="door groups, e.g. 1,2,5")
    c.add_argument("--valid-from", default=None, help="YYYY-MM-DD (default today)")
    c.add_argument("--valid-to", default=None, help="YYYY-MM-DD (default in 3 years)")
    c.add_argument("--time-profile", type=int, default=0)
    c.add_argument("--purse-expiry", default=None, help="YYYY-MM-DD (default --valid-to)")
    c.add_argument("--max-balance", default="2000.00", help="yuan")
    c.add_argument("--asn", help="the new sub-application's ASN, 16 hex digits (default random)")
    _ota_arguments(c)
    c.add_argument("--job", help="the job ID (default: a new one); an existing job's ID resumes it")
    c = cmd("ota-resume", "resume an over-the-air job whose gateway stopped (or whose phone was off)", cmd_ota_resume)
    c.add_argument("job_id")
    _ota_arguments(c)
    c = cmd(
        "ota-jobs",
        "list the over-the-air jobs: per job sent / delivered / PoR ok / PoR error STATUS / expired / fell back to "
        "tap, and how it ended",
        cmd_ota_jobs,
        key=False,
    )
    c = cmd(
        "authorise",
        "change a card's access rights; written onto the card at its next tap on the top-up (card service) terminal",
        cmd_authorise,
    )
    c.add_argument("asn")
    c.add_argument("--groups", required=True, help="door groups, e.g. 1,2,5")
    c.add_argument("--valid-from", required=True, help="YYYY-MM-DD")
    c.add_argument("--valid-to", required=True, help="YYYY-MM-DD")
    c.add_argument("--time-profile", type=int, default=0)
    _ota_secured_arguments(
        c,
        "write the rights onto the holder's SIM over SMS now (docs/ota.md 5): EF_ACCESS enciphered on a version 2 "
        "sub-application, settled by its PoR; a phone unreachable past the validity falls back to the next tap",
    )
    c = cmd(
        "cancel-action",
        "cancel a pending card action (over-the-air top-up, rights change): terminals drop it",
        cmd_cancel_action,
    )
    c.add_argument("action_id")
    c = cmd("purse", "a card's purse transactions as uploaded, with each TAC's check", cmd_purse)
    c.add_argument("asn")
    c = cmd("held", "money records not accounted: waiting for earlier records, or held for review", cmd_held)
    c.add_argument("--all", action="store_true", help="also the resolved ones, with their resolution")
    c = cmd(
        "resolve-held",
        "after investigation: account or reject a held money record (the evidence is kept)",
        cmd_resolve_held,
    )
    c.add_argument("held_id", type=int)
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--account", action="store_true", help="move the balance by it, as uploaded")
    g.add_argument("--reject", action="store_true", help="do not move the balance")
    c.add_argument("--note", required=True, help="what the investigation found (kept with the record)")
    c = cmd(
        "attendance-bill",
        "the month's attendance bills: each employee's SMS text (or --send it by SMS), or the administrator's CSV",
        cmd_bill,
    )
    c.add_argument("employee_no", nargs="?", help="one employee (default: every employee)")
    c.add_argument("--enterprise", help="one enterprise (required with an employee; default: every enterprise)")
    c.add_argument("--month", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=("text", "csv"), default="text", help="text: one SMS per line; csv: per day")
    _sms_arguments(c)
    c = cmd("set-shift", "set the attendance shift an employee's bill is judged against", cmd_set_shift)
    c.add_argument("employee_no")
    c.add_argument("--enterprise", required=True)
    c.add_argument("--shift", required=True, help="a shift of the published configuration (shifts.NAME)")
    c = cmd(
        "spending-bill",
        "the month's canteen spending bills: each employee's SMS text (or --send it by SMS), or the administrator's "
        "CSV; every booked item (sales, undos, top-ups at terminals and over the air, subsidy), opening and closing "
        "balance",
        cmd_spending_bill,
    )
    c.add_argument("employee_no", nargs="?", help="one employee (default: every employee of the enterprise)")
    c.add_argument("--enterprise", required=True)
    c.add_argument("--month", required=True, help="YYYY-MM")
    c.add_argument("--format", choices=("text", "csv"), default="text", help="text: one SMS per line; csv: per item")
    _sms_arguments(c)
    c = cmd("settlement", "a till's day settlement (Z report) from the records received", cmd_settlement)
    c.add_argument("--terminal", required=True, metavar="ID")
    c.add_argument("--day", required=True, metavar="YYYY-MM-DD")
    _subsidy_commands(sub, db_target, DB_HELP)
    c = cmd("card", "show a card", cmd_card)
    c.add_argument("asn")
    c = cmd("terminal", "show a terminal's upload position, chain state and last heartbeat", cmd_terminal)
    c.add_argument("terminal_id")
    c = cmd(
        "reanchor",
        "after investigating a chain break: accept the terminal's records again from seq SEQ "
        "(the records in between stay as evidence)",
        cmd_reanchor,
    )
    c.add_argument("terminal_id")
    c.add_argument("--at", required=True, type=int, dest="at_seq", help="first seq to accept (a waiting record)")
    c.add_argument("--reason", required=True, help="what the investigation found (kept with the evidence)")
    c = cmd(
        "restore-epoch",
        "after restoring or replacing this database from a backup: start a new signed epoch so "
        "terminals holding a later list accept this platform's lists again",
        cmd_restore_epoch,
    )
    c.add_argument("--reason", required=True, help="what was restored (kept with the epoch)")
    c.add_argument(
        "--generation",
        type=int,
        help="the new generation (default: one past the current one and past any generation terminals reported)",
    )
    c = sub.add_parser(
        "migrate",
        help="copy an SQLite platform database into a new, empty PostgreSQL database and verify the copy",
    )
    c.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH", help="the platform.db to copy")
    c.add_argument(
        "--to", dest="target", required=True, metavar="postgresql:DSN", help="a new, empty PostgreSQL database"
    )
    c.set_defaults(handler=cmd_migrate)
    c = cmd("serve", "ingest uploads and publish notifications until Ctrl-C / SIGTERM", cmd_serve)
    c.add_argument("--broker-host", default="127.0.0.1")
    c.add_argument("--broker-port", type=int, default=8883)
    c.add_argument("--ca", required=True, type=Path, help="CA certificate of the broker")
    c.add_argument(
        "--cert-dir",
        required=True,
        type=Path,
        help="the workers' client certificates: "
        "platform-wN.pem and platform-wN.key for every worker (`onecard platform ca platform-certs`)",
    )
    c.add_argument("--workers", type=int, default=2, help="shared-subscription workers (default 2)")
    c.add_argument(
        "--amqp",
        action="append",
        metavar="HOST:PORT",
        help="a RabbitMQ cluster node's AMQPS listener (repeat for every node): the workers then consume the "
        "uplink quorum queue instead of MQTT shared subscriptions (--broker-host/--broker-port are unused)",
    )
    c.add_argument(
        "--first-worker",
        type=int,
        default=0,
        help="index of this process's first worker (certificate platform-wN), to run workers in several "
        "processes or hosts; only the process with worker 0 publishes notifications",
    )
    c.add_argument(
        "--tac-keystore",
        type=Path,
        help="keystore with the TAC keys ('onecard sam restrict --role "
        "platform'); without it purse transactions are recorded as 'unchecked'",
    )
    c.add_argument("--passphrase-file", type=Path, help="passphrase of --tac-keystore")
    c.add_argument(
        "--lab-unverified-money",
        action="store_true",
        help="LAB ONLY: serve without TAC keys; money records are accounted unchecked and every balance "
        "is labelled unverified",
    )

    c = cmd(
        "broker-config",
        "write the broker's mosquitto.conf and ACL from the terminal registry",
        cmd_broker_config,
        key=False,
    )
    c.add_argument("--out", required=True, type=Path, help="directory for mosquitto.conf and acl")
    c.add_argument("--ca", required=True, type=Path, help="the platform CA certificate (cafile)")
    c.add_argument("--server-cert", required=True, type=Path, help="the broker's certificate (ca server-cert)")
    c.add_argument("--server-key", required=True, type=Path, help="its private key")
    c.add_argument("--port", type=int, default=8883)
    c.add_argument("--bind", default="0.0.0.0", help="listener address (default 0.0.0.0)")
    c.add_argument("--workers", type=int, default=2, help="platform workers to grant (platform-w0..), as `serve`")
    c.add_argument("--acl-path", type=Path, help="where the broker will read the ACL (default OUT/acl)")
    c.add_argument("--persistence-dir", type=Path, help="mosquitto persistence directory (default: none)")
    c.add_argument("--force", action="store_true", help="replace an existing mosquitto.conf / acl")
    c.add_argument(
        "--rabbitmq",
        action="store_true",
        help="write a RabbitMQ cluster node's rabbitmq.conf, enabled_plugins and definitions.json (users, "
        "permissions, topic permissions, the uplink quorum queue) instead; load the definitions with "
        "`rabbitmqctl import_definitions OUT/definitions.json` on any node after adding terminals",
    )
    c.add_argument("--amqp-port", type=int, default=5671, help="with --rabbitmq: the AMQPS port of the workers")

    from central import ca_cli  # the CA role (terminal enrolment)

    ca_cli.add_subcommands(sub)
    add_key_versions(sub)


def _platform(args):
    from central.db import PlatformError, load_signing_key
    from central.store import Platform

    _require_db(args.db)
    try:
        return Platform(args.db, load_signing_key(args.key))
    except PlatformError as exc:
        raise UserError(str(exc)) from None


def _run(args, action) -> int:
    from central.db import PlatformError

    platform = _platform(args)
    try:
        print(action(platform))
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    finally:
        platform.close()
    return 0


def cmd_init(args) -> int:
    from central.db import PlatformError, load_signing_key, write_signing_key
    from central.store import Platform

    try:
        pub = write_signing_key(args.key)
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    Platform(args.db, load_signing_key(args.key)).close()
    print(
        f"platform database {args.db} ready; signing key {args.key}; give {pub} to every terminal "
        "([sync].platform_public_key)"
    )
    return 0


def cmd_add_enterprise(args) -> int:
    return _run(
        args,
        lambda pf: pf.add_enterprise(args.enterprise_id, args.name) or f"enterprise {args.enterprise_id} registered",
    )


def cmd_add_terminal(args) -> int:
    return _run(
        args,
        lambda pf: (
            pf.add_terminal(args.terminal_id, args.enterprise, args.name, kind=args.kind)
            or f"{args.kind} terminal {args.terminal_id} registered to enterprise {args.enterprise}"
        ),
    )


def cmd_add_holder(args) -> int:
    return _run(
        args,
        lambda pf: (
            pf.add_holder(args.enterprise, args.employee_no, args.name, args.phone)
            and f"employee {args.employee_no} ({args.name}) registered"
        ),
    )


def _cents(text: str, what: str = "balance") -> int:
    try:
        value = round(float(text) * 100)
    except ValueError:
        raise UserError(f"{what} {text!r} is not an amount in yuan; write e.g. 12.50") from None
    if value < 0:
        raise UserError(f"{what} {text} is negative; a card starts at zero or more")
    return value


def cmd_issue_card(args) -> int:
    try:
        rights = json.loads(args.rights)
    except json.JSONDecodeError as exc:
        raise UserError(f"--rights is not JSON ({exc}); write e.g. '{{\"door_groups\":[1,2]}}'") from None
    cents, max_cents = _cents(args.balance), _cents(args.max_balance, "--max-balance")
    return _run(
        args,
        lambda pf: (
            pf.issue_card(args.enterprise, args.employee, args.asn, rights, cents, max_cents)
            or f"card {args.asn.upper()} issued to employee {args.employee}"
        ),
    )


def _ota_secured_arguments(c, what: str) -> None:
    c.add_argument("--over-the-air", action="store_true", help=what)
    _ota_arguments(c)
    c.add_argument("--job", help="the job ID (default: a new one); an existing job's ID resumes it")


def cmd_report_loss(args) -> int:
    if args.over_the_air:
        return _ota_secured_cmd(args, "lock")
    return _run(
        args,
        lambda pf: (
            f"card {args.asn.upper()} reported lost; blacklist version {pf.report_loss(args.asn)} "
            "queued for every terminal of the enterprise"
        ),
    )


def cmd_unlock(args) -> int:
    if args.over_the_air:
        return _ota_secured_cmd(args, "unlock")
    return _run(
        args,
        lambda pf: (
            f"card {args.asn.upper()} unlocked; blacklist version {pf.unlock(args.asn)} queued for every terminal"
        ),
    )


def cmd_cancel(args) -> int:
    if args.over_the_air:
        return _ota_secured_cmd(args, "delete")

    def do(pf):
        card = pf.card(args.asn)
        balance, subsidy = card["balance_cents"], max(card["subsidy_cents"], 0)
        v = pf.cancel(args.asn, settle=args.settle)
        refund = f", {balance / 100:.2f} yuan refund recorded" if balance else ""
        refund += f", subsidy {subsidy / 100:.2f} yuan returned to the enterprise" if subsidy else ""
        return f"card {args.asn.upper()} cancelled{refund}; blacklist version {v} queued for every terminal"

    return _run(args, do)


def cmd_replace(args) -> int:
    return _run(
        args,
        lambda pf: (
            f"card {args.old_asn.upper()} replaced by {args.new_asn.upper()}; blacklist version "
            f"{pf.replace(args.old_asn, args.new_asn)} queued for every terminal"
        ),
    )


def cmd_config(args) -> int:
    try:
        doc = json.loads(args.document.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot read configuration document {args.document} ({exc}); give a JSON object file"
        ) from None
    if not isinstance(doc, dict):
        raise UserError(f"{args.document} must hold a JSON object")
    return _run(
        args,
        lambda pf: (
            f"configuration version {pf.publish_config(args.enterprise, doc)} queued for enterprise {args.enterprise}"
        ),
    )


def cmd_ota_topup(args) -> int:
    from common.money import parse_yuan

    fen = parse_yuan(args.amount, "amount")
    if fen == 0:
        raise UserError("the amount must be more than 0.00")
    if args.over_the_air:
        import uuid

        from central.db import PlatformError

        pf = _platform(args)
        try:
            return _ota_run(args, pf, args.job or f"ota-{uuid.uuid4().hex[:12]}", args.asn.upper(), fen, None)
        except PlatformError as exc:
            raise UserError(str(exc)) from None
        finally:
            pf.close()
    if args.job:
        raise UserError("--job goes with --over-the-air; nothing was queued")
    return _run(
        args,
        lambda pf: (
            f"over-the-air top-up {pf.add_card_action(args.asn.upper(), 'topup', {'amount': fen})}"
            f" of {args.amount} queued for card {args.asn.upper()}"
        ),
    )


def _ota_arguments(c) -> None:
    c.add_argument("--smsc", metavar="HOST:PORT", help="the operator's SMSC (SMPP 3.4)")
    c.add_argument("--smpp-system-id", default="onecard", help="SMPP bind system_id (default onecard)")
    c.add_argument("--smpp-password-file", help="file holding the SMPP bind password")
    c.add_argument("--sender", default="10657000", help="the source address OTA packets come from")
    c.add_argument("--keystore", type=Path, help="platform keystore holding the purse load and OTA keys")
    c.add_argument("--passphrase-file", type=Path, help="passphrase of --keystore")
    c.add_argument(
        "--key-version",
        type=int,
        help="the card's key version (default: the one its issuing station registered, else 1)",
    )
    c.add_argument("--algorithm", choices=("aes128", "sm4"), default="aes128", help="the card's algorithm")
    c.add_argument("--terminal", default="000000000000", help="the 6-byte terminal ID loads are made under (hex)")
    c.add_argument("--validity", type=int, default=3600, help="SMS validity period in seconds (default 3600)")
    c.add_argument("--wait", type=float, default=30.0, help="seconds to wait for each PoR (default 30)")


def _ota_options(args) -> tuple[str, int, str, bytes]:
    """(SMSC host, port, SMPP password, terminal ID) of the over-the-air options; UserError naming a bad one."""
    if not args.smsc or not args.smpp_password_file:
        raise UserError("over the air needs --smsc HOST:PORT and --smpp-password-file FILE; nothing was sent")
    if args.keystore is None or args.passphrase_file is None:
        raise UserError("over the air needs --keystore KS --passphrase-file F (the platform's keys); nothing was sent")
    host, _, port = args.smsc.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--smsc {args.smsc!r} is not HOST:PORT; write e.g. smsc.example.net:2775")
    if not 0 < args.validity <= 99 * 86400:
        raise UserError(f"--validity {args.validity} is out of range; give 1..{99 * 86400} seconds")
    try:
        terminal = bytes.fromhex(args.terminal)
    except ValueError:
        terminal = b""
    if len(terminal) != 6:
        raise UserError(f"--terminal {args.terminal!r} is not 6 bytes of hex; write e.g. 000000000901")
    try:
        password = open(args.smpp_password_file, encoding="utf-8").read().strip()
    except OSError as exc:
        raise UserError(f"cannot read --smpp-password-file {args.smpp_password_file}: {exc.strerror}") from None
    return host, int(port), password, terminal


def _ota_keys(args, pf, asn: str, card: dict):
    """(the platform's keystore, the card's identity: key version from --key-version or `card_keys`, else 1)."""
    from sam.interface import Algorithm, CardIdentity

    keystore = _ota_keystore(args)
    alg = Algorithm.AES128 if args.algorithm == "aes128" else Algorithm.SM4
    version = args.key_version
    if version is None:
        row = pf.conn.execute("SELECT key_version FROM card_keys WHERE asn = ?", (asn,)).fetchone()
        version = row[0] if row else 1
    return keystore, CardIdentity(bytes.fromhex(asn), bytes.fromhex(card["enterprise_id"]), version, alg)


def _ota_keystore(args):
    from sam.interface import SamError
    from sam.keystore import KeystoreUnlock, load_keystore

    try:
        return load_keystore(args.keystore, KeystoreUnlock.from_passphrase_file(args.passphrase_file))
    except SamError as exc:
        raise UserError(str(exc)) from None


def _ota_run(args, pf, job_id: str, asn: str, fen: int, msisdn: str | None) -> int:
    """Run (or resume) OTA top-up `job_id` and settle it: done, pending, or fallen back to the next tap once."""
    from central import ota_ops
    from central.ota_channel import OtaChannel, OtaStore, fall_back_to_tap
    from central.ota_gateway import GatewayError, SmppGateway
    from common.money import format_yuan
    from sam.interface import SamError
    from sam.ota_keys import OtaSam
    from sam.software import SoftwareSam

    host, port, password, terminal = _ota_options(args)
    card = pf.card(asn)
    if msisdn is None:
        msisdn = pf.holder_contact(card["enterprise_id"], card["employee_no"])["phone"]
        if not msisdn:
            raise UserError(f"the holder of card {asn} has no phone number; add one, or top up at the next tap")
        pf._check_card_action(card, "topup", {"amount": fen})  # the same limits as the next-tap path
    keystore, ident = _ota_keys(args, pf, asn, card)
    store = OtaStore(pf)
    asked = store.params(job_id)
    if asked is not None and asked != {"amount": fen, "asn": asn}:
        store.close()
        raise UserError(
            f"job {job_id} is a top-up of {format_yuan(asked['amount'])} for card {asked['asn']}; "
            f"resume it with `onecard platform ota-resume {job_id}` or give a new --job"
        )
    gw = SmppGateway(host, port, args.smpp_system_id, password, args.sender)
    try:
        store.set_params(job_id, {"amount": fen, "asn": asn})
        try:
            prior: dict | None = store.job(job_id)
        except KeyError:
            prior = None
        what = f"over-the-air top-up {job_id} of {format_yuan(fen)} for card {asn} ({msisdn})"
        if prior is not None and prior["status"] == "expired" and not prior["credit_claimed"]:
            # Expired before the OTA path claimed the card (a gateway stopped before it fell back): fall back now.
            if fall_back_to_tap(store, pf, job_id, {"amount": fen}):
                print(f"{what}: the phone stayed unreachable past the validity; fallen back to the next tap, once")
                return 0
        try:
            gw.connect()
            channel = OtaChannel(
                gw, OtaSam(keystore), store, validity_seconds=args.validity, por_wait_seconds=args.wait
            )
            # the enterprise's version 2 sub-application, else the version 1 application (docs/ota.md 5)
            top = channel.top_up(
                job_id, ident, ident, msisdn, fen, terminal, SoftwareSam(keystore), aids=ota_ops.card_aids(ident)
            )
        except (GatewayError, SamError) as exc:
            raise UserError(f"{exc}; job {job_id} is kept: `onecard platform ota-resume {job_id}` retries") from None
        job = store.job(job_id)
        if job["path"] == "tap":
            print(f"{what}: fallen back to the next tap on a top-up terminal ({job['note']})")
            return 0
        booked = pf.ota_load(job_id)
        if job["status"] == "done" and booked is not None:
            if not job["note"]:
                store.update(
                    job_id,
                    note=f"balance {format_yuan(booked['balance_after_cents'])}, TAC {booked['tac'].upper()}, "
                    f"ledger {booked['ledger']}",
                )
            ledger = "" if booked["ledger"] == "accounted" else f"; ledger: {booked['ledger']} (onecard platform held)"
            print(f"{what}: done, balance now {format_yuan(booked['balance_after_cents'])} (TAC checked){ledger}")
            return 0
        if job["status"] == "expired":
            if fall_back_to_tap(store, pf, job_id, {"amount": fen}):
                print(f"{what}: the phone stayed unreachable past the validity; fallen back to the next tap, once")
                return 0
            raise UserError(
                f"{what}: the CREDIT packet expired and the card may hold it; "
                f"`onecard platform ota-resume {job_id}` asks the card",
                EXIT_REFUSED,
            )
        if job["status"] == "failed":
            raise UserError(f"{what}: failed: {job['note'] or top.reason}", EXIT_REFUSED)
        print(f"{what}: {job['status']}, no PoR yet; `onecard platform ota-resume {job_id}` waits again")
        return 0
    finally:
        gw.close()
        store.close()


OTA_SECURED_OPS = ("lock", "unlock", "delete", "rights")


def _ota_secured_cmd(args, op_name: str) -> int:
    """`report-loss|unlock|cancel ASN --over-the-air`: the platform's own change first (loss report: LOST and
    blacklisted; unlock: ACTIVE, off the blacklist; the deletion's cancellation comes with its settlement), then
    the job over the air."""
    import uuid

    from central.db import ACTIVE, LOST, PlatformError

    if args.job is None:
        args.job = f"ota-{uuid.uuid4().hex[:12]}"
    pf = _platform(args)
    try:
        asn = args.asn.upper()
        card = pf.card(asn)
        msisdn = pf.holder_contact(card["enterprise_id"], card["employee_no"])["phone"]
        if not msisdn:
            raise UserError(
                f"the holder of card {asn} has no phone number; run it without --over-the-air (the blacklist "
                "and the next tap); nothing changed"
            )
        _ota_options(args)  # a bad option or keystore changes nothing
        keys = _ota_keys(args, pf, asn, card)
        try:
            prior = pf.ota_job(args.job)
        except KeyError:
            prior = None
        if prior is not None and (prior["op"], prior["asn"].upper()) != (op_name, asn):
            raise UserError(f"job {args.job} is a {prior['op']} of card {prior['asn'].upper()}; give a new --job")
        if op_name == "delete" and card["balance_cents"] and not args.settle and prior is None:
            raise UserError(
                f"card {asn} has a balance of {card['balance_cents'] / 100:.2f} yuan; settle it first: rerun with "
                "--settle to record the refund; nothing was sent"
            )
        if op_name == "lock" and card["status"] != LOST:
            print(f"card {asn} reported lost; blacklist version {pf.report_loss(asn)} queued for every terminal")
        elif op_name == "unlock" and card["status"] != ACTIVE:
            print(f"card {asn} unlocked; blacklist version {pf.unlock(asn)} queued for every terminal")
        elif op_name == "delete" and card["status"] not in ("ACTIVE", "LOST", "VOIDED") and prior is None:
            raise UserError(f"card {asn} is {card['status']}; nothing to delete over the air")
        elif op_name == "rights" and prior is None:
            pf.authorise(asn, args.rights, queue=False)  # recorded; the card action only if the air fails
            print(f"card {asn}: rights recorded; writing them to the SIM over the air")
        rights = args.rights if op_name == "rights" else None
        return _ota_secured_run(
            args, pf, args.job, asn, op_name, msisdn, getattr(args, "settle", False), keys, rights=rights
        )
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    finally:
        pf.close()


def _ota_secured_run(
    args, pf, job_id: str, asn: str, op_name: str, msisdn: str, settle: bool, keys=None, rights: dict | None = None
) -> int:
    """Run (or resume) lock / unlock / delete job `job_id` and say where it stands, one line."""
    from central import ota_ops
    from central.ota_channel import OtaChannel, OtaStore
    from central.ota_gateway import GatewayError, SmppGateway
    from common.money import format_yuan
    from sam.interface import SamError
    from sam.ota_keys import OtaSam
    from sam.software import SoftwareSam

    host, port, password, _ = _ota_options(args)
    keystore, ident = keys or _ota_keys(args, pf, asn, pf.card(asn))
    sam = SoftwareSam(keystore)
    if op_name == "delete":
        subsidy = pf.card(asn)["subsidy_cents"]
        if subsidy > 0 and not settle:
            raise UserError(
                f"card {asn.upper()} has a subsidy balance of {format_yuan(subsidy)} yuan, returned to the enterprise "
                "at cancellation (never paid out in cash); rerun with --settle; nothing was sent"
            )
        # A card the platform knows a subsidy purse of is voided with APPLICATION BLOCK P1 01 (docs/ota.md 5.2).
        op: object = ota_ops.OtaDeletion(sam, ident, settle=settle, subsidy=pf.subsidy_known(asn))
    elif op_name == "rights":
        import datetime as dt

        assert rights is not None
        op = ota_ops.rights_update(
            sam,
            ident,
            dt.date.fromisoformat(rights["valid_from"]),
            dt.date.fromisoformat(rights["valid_to"]),
            set(rights["door_groups"]),
            rights["time_profile"],
            aids=ota_ops.card_aids(ident),
        )
    else:
        op = ota_ops.status_change(sam, ident, op_name == "lock")
    store = OtaStore(pf)
    params = {"asn": asn, "op": op_name, "settle": settle, "msisdn": msisdn}
    store.set_params(job_id, params if rights is None else {**params, "rights": rights})
    what = f"over-the-air {op_name} {job_id} of card {asn} ({msisdn})"
    gw = SmppGateway(host, port, args.smpp_system_id, password, args.sender)
    try:
        gw.connect()
        channel = OtaChannel(gw, OtaSam(keystore), store, validity_seconds=args.validity, por_wait_seconds=args.wait)
        channel.secured(job_id, ident, msisdn, op_name, op)
    except (GatewayError, SamError) as exc:
        raise UserError(f"{exc}; job {job_id} is kept: `onecard platform ota-resume {job_id}` retries") from None
    finally:
        gw.close()
    job = store.job(job_id)
    if job["status"] == "done":
        if op_name == "delete":
            st = job["state"].get("settlement") or {}
            print(
                f"{what}: done, the card proved {format_yuan(st.get('frozen_cents', 0))} and "
                f"{format_yuan(st.get('refunded_cents', 0))} was refunded; the application is deleted from the card"
            )
        elif op_name == "rights":
            print(f"{what}: done, the card holds the new rights (PoR ok)")
        else:
            print(f"{what}: done, the card is {'locked' if op_name == 'lock' else 'unlocked'} (PoR ok)")
        return 0
    if op_name == "rights" and job["status"] in ("failed", "expired"):
        # The write is idempotent: the next tap at the card service terminal writes the same rights. Queued once
        # per job: its action ID is derived from the job's, so a second ota-resume finds it queued.
        import hashlib

        action = hashlib.sha256(f"ota-rights-fallback:{job_id}".encode()).hexdigest()[:32]
        if not pf.conn.execute("SELECT 1 FROM card_actions WHERE action_id = ?", (action,)).fetchone():
            pf.add_card_action(asn, "rights", rights, action_id=action)
        why = job["note"] if job["status"] == "failed" else "the phone stayed unreachable past the validity"
        raise UserError(f"{what}: {why}; rights change {action} queued for the next tap instead", EXIT_REFUSED)
    if job["status"] == "failed":
        raise UserError(f"{what}: failed: {job['note']}", EXIT_REFUSED)
    if job["status"] == "expired":
        still = "the blacklist still refuses the card" if op_name != "unlock" else "the card stays locked"
        print(
            f"{what}: the phone stayed unreachable past the validity; {still}; "
            f"`onecard platform ota-resume {job_id}` sends it again"
        )
        return 0
    print(f"{what}: {job['status']}, no PoR yet; `onecard platform ota-resume {job_id}` waits again")
    return 0


def _ota_issue_serial(pf, args) -> str:
    """--card-serial, or the one the platform recorded for the holder's phone (UserError, refused, when none)."""
    from central.db import PlatformError

    if args.card_serial is not None:
        return str(args.card_serial)
    try:
        eid = bytes.fromhex(args.enterprise).hex()
    except ValueError:
        raise UserError(f"--enterprise {args.enterprise!r} is not 8 hex digits; nothing was sent") from None
    try:
        serial = pf.card_serial_for(eid, args.employee)
    except PlatformError as exc:
        raise UserError(f"{exc}; nothing was sent", EXIT_REFUSED) from None
    if serial is None:
        raise UserError(
            f"the platform knows no card serial for the phone of employee {args.employee}: give --card-serial "
            "(the SIM's directory C0, `onecard sim show`); nothing was sent",
            EXIT_REFUSED,
        )
    return str(serial)


def cmd_ota_issue(args) -> int:
    """One line: issued (exit 0), no PoR yet (exit 0, run again), refused or failed (exit 1)."""
    import uuid

    from central import ota_issue as oi
    from central.db import PlatformError
    from central.ota_channel import OtaStore
    from central.ota_gateway import GatewayError, SmppGateway
    from sam.interface import SamError

    host, port, password, _ = _ota_options(args)
    pf = _platform(args)
    try:
        serial = _ota_issue_serial(pf, args)
        request = oi.IssueRequest.from_options(
            args.enterprise, args.employee, serial, args.name, args.to_version, args.asn, args
        )
    except ValueError as exc:
        pf.close()
        raise UserError(f"{exc}; nothing was sent") from None
    except UserError:
        pf.close()
        raise
    job_id = args.job or f"ota-{uuid.uuid4().hex[:12]}"
    store = OtaStore(pf)
    gw = SmppGateway(host, port, args.smpp_system_id, password, args.sender)
    try:
        msg = oi.cli_run(store, job_id, request, _ota_keystore(args), gw, args.validity, args.wait)
    except oi.IssueRefused as exc:
        raise UserError(f"over-the-air issue {job_id}: refused: {exc}", EXIT_REFUSED) from None
    except (GatewayError, SamError) as exc:
        raise UserError(f"{exc}; job {job_id} is kept: run the same command with --job {job_id}") from None
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    finally:
        gw.close()
        pf.close()
    if msg.startswith("failed") or msg.startswith("the phone stayed"):
        raise UserError(f"over-the-air issue {job_id}: {msg}", EXIT_REFUSED)
    print(f"over-the-air issue {job_id}: {msg}")
    return 0


def cmd_ota_resume(args) -> int:
    from central.db import PlatformError
    from central.ota_channel import OtaStore

    pf = _platform(args)
    try:
        store = OtaStore(pf)
        params = store.params(args.job_id)
        try:
            job: dict | None = store.job(args.job_id)
        except KeyError:
            job = None  # asked for, never sent (the SMSC could not be reached): start it now
            if params is None:
                raise UserError(f"no OTA job {args.job_id}; `onecard platform ota-jobs` lists them") from None
        if params is not None and params.get("op") in OTA_SECURED_OPS:  # never sent: the SMSC was down
            settle = bool(params.get("settle"))
            return _ota_secured_run(
                args,
                pf,
                args.job_id,
                params["asn"],
                params["op"],
                params["msisdn"],
                settle,
                rights=params.get("rights"),
            )
        if job is not None and job["op"] == "issue":
            raise UserError(
                f"job {args.job_id} is an over-the-air issue: run the same `onecard platform ota-issue ... --job "
                f"{args.job_id}` again to resume it"
            )
        if params is None or (job is not None and job["op"] != "topup"):
            raise UserError(f"job {args.job_id} is not a top-up this command can resume")
        msisdn = None if job is None else job["msisdn"]
        return _ota_run(args, pf, args.job_id, params["asn"], params["amount"], msisdn)
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    finally:
        pf.close()


def cmd_ota_jobs(args) -> int:
    from central.db import PlatformError
    from central.ota_channel import OtaStore
    from central.store import Platform
    from common.money import format_yuan

    _require_db(args.db)
    try:
        pf = Platform(args.db, None)
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    try:
        jobs = OtaStore(pf).jobs()
    finally:
        pf.close()
    if not jobs:
        print("no over-the-air jobs")
    for j in jobs:
        amount = j["params"].get("amount")
        money = "" if amount is None else f" {format_yuan(amount)}"
        ended = {"done": "done", "failed": "failed"}.get(j["status"], "pending")
        if j["path"] == "tap":
            ended = "queued for the next tap"
        when = f"  delivered {j['delivered_at']}" if j["delivered_at"] else ""
        note = f"  {j['note']}" if j["note"] else ""
        who = f"card {j['asn'].upper()}  {j['msisdn']}"
        print(f"{j['job_id']}  {j['op']}{money}  {who}  {j['shown']}  {ended}{when}{note}")
    return 0


def cmd_authorise(args) -> int:
    import datetime as dt

    try:
        groups = sorted({int(g) for g in args.groups.split(",") if g.strip()})
        valid_from, valid_to = dt.date.fromisoformat(args.valid_from), dt.date.fromisoformat(args.valid_to)
    except ValueError:
        raise UserError("--groups must be numbers separated by commas and the dates YYYY-MM-DD") from None
    if (
        not groups
        or any(not 1 <= g <= 64 for g in groups)
        or valid_to < valid_from
        or not 0 <= args.time_profile <= 255
    ):
        raise UserError("door groups are 1..64, the time profile 0..255 and valid-to not before valid-from")
    rights = {
        "door_groups": groups,
        "valid_from": valid_from.isoformat(),
        "valid_to": valid_to.isoformat(),
        "time_profile": args.time_profile,
    }
    if args.over_the_air:
        args.rights = rights
        return _ota_secured_cmd(args, "rights")
    if args.job is not None:
        raise UserError("--job goes with --over-the-air; nothing was queued")
    return _run(
        args,
        lambda pf: (
            f"rights change {pf.authorise(args.asn.upper(), rights)} queued for card "
            f"{args.asn.upper()}: groups {groups}, {args.valid_from}..{args.valid_to}"
        ),
    )


def cmd_cancel_action(args) -> int:
    return _run(
        args,
        lambda pf: (
            f"card action {args.action_id} of card {pf.cancel_action(args.action_id)} cancelled; "
            "the cancellation is queued for every terminal of the enterprise"
        ),
    )


def cmd_purse(args) -> int:
    def do(pf):
        card = pf.card(args.asn)
        lines = [json.dumps(t, sort_keys=True) for t in pf.purse_transactions(card["asn"])]
        if card["balance_status"] != "verified":
            lines.insert(0, f"UNVERIFIED balance {card['balance_cents'] / 100:.2f}: {card['balance_status']}")
        if card["held_money_records"]:
            lines.append(
                f"ALARM: {card['held_money_records']} money record(s) of this card are held, not accounted: "
                "see `onecard platform held`"
            )
        return "\n".join(lines) or "no transactions"

    return _run(args, do)


def cmd_held(args) -> int:
    def do(pf):
        rows = pf.held_money(include_resolved=args.all)
        return "\n".join(json.dumps(r, sort_keys=True) for r in rows) or "no held money records"

    return _run(args, do)


def cmd_resolve_held(args) -> int:
    decision = "account" if args.account else "reject"
    return _run(
        args,
        lambda pf: (
            f"held money record {args.held_id} "
            f"{pf.resolve_held(args.held_id, decision, args.note)}; the record and this decision "
            "are kept"
        ),
    )


def _sms_arguments(c) -> None:
    c.add_argument("--send", action="store_true", help="send it to the holder's phone as SMS (UCS-2) over SMPP")
    c.add_argument("--smsc", metavar="HOST:PORT", help="the operator's SMSC (SMPP 3.4), with --send")
    c.add_argument("--smpp-system-id", default="onecard", help="SMPP bind system_id (default onecard)")
    c.add_argument("--smpp-password-file", help="file holding the SMPP bind password, with --send")
    c.add_argument("--sender", default="10657000", help="the source address bills come from")


def _send_bill(args, pf, enterprise_id: str, employee_no: str, text: str) -> str:
    if not args.send:
        return text
    from central.ota_gateway import GatewayError, SmppGateway
    from central.sms_bills import send_bill

    if not args.smsc or not args.smpp_password_file:
        raise UserError("--send needs --smsc HOST:PORT and --smpp-password-file FILE; nothing was sent")
    host, _, port = args.smsc.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--smsc {args.smsc!r} is not HOST:PORT; write e.g. smsc.example.net:2775")
    try:
        password = open(args.smpp_password_file, encoding="utf-8").read().strip()
    except OSError as exc:
        raise UserError(f"cannot read --smpp-password-file {args.smpp_password_file}: {exc.strerror}") from None
    phone = pf.holder_contact(enterprise_id, employee_no)["phone"]
    gw = SmppGateway(host, int(port), args.smpp_system_id, password, args.sender)
    try:
        gw.connect()
        ids = send_bill(gw, phone, text, reference=sum(text.encode()) & 0xFF)
    except (GatewayError, RuntimeError) as exc:
        raise UserError(f"{exc}; the bill was not sent") from None
    finally:
        gw.close()
    return f"{text}\nsent to {phone} in {len(ids)} SMS (SMSC message IDs {', '.join(ids)})"


def cmd_bill(args) -> int:
    from central.bills import bills_csv

    if args.employee_no is not None and args.enterprise is None:
        raise UserError("an employee number needs --enterprise; add --enterprise ENTERPRISE_ID")
    if args.send and args.format == "csv":
        raise UserError("--send sends each employee's SMS text; drop --format csv (the CSV is for the administrator)")

    def do(pf):
        bills = pf.attendance_bills(args.month, args.enterprise, args.employee_no)
        if args.format == "csv":
            return bills_csv(bills).rstrip("\r\n")
        if not bills:
            return f"no employees registered for {args.month}"
        return "\n".join(_send_bill(args, pf, b.enterprise_id, b.employee_no, b.sms()) for b in bills)

    return _run(args, do)


def cmd_set_shift(args) -> int:
    def do(pf):
        pf.set_shift(args.enterprise, args.employee_no, args.shift)
        return f"employee {args.employee_no} is on shift {args.shift}"

    return _run(args, do)


def _subsidy_commands(sub, db_target, db_help) -> None:
    """`onecard platform subsidy issue | list | report` (docs/canteen.md "Subsidy wallet")."""
    group = sub.add_parser("subsidy", help="subsidy allowances (补助): issue, list, report")
    ss = group.add_subparsers(dest="subsidy_command", required=True, metavar="issue|list|report")

    def cmd(name: str, help_: str, handler) -> argparse.ArgumentParser:
        c = ss.add_parser(name, help=help_)
        c.add_argument("--db", required=True, type=db_target, help=db_help)
        c.add_argument("--key", required=True, type=Path, help="platform Ed25519 signing key (PEM)")
        c.add_argument("--enterprise", required=True)
        c.set_defaults(handler=handler)
        return c

    c = cmd(
        "issue", "issue an allowance to employees (monthly: --label YYYY-MM; or a one-off label)", cmd_subsidy_issue
    )
    c.add_argument("--employee", action="append", default=[], help="employee number (repeatable)")
    c.add_argument("--list", type=Path, help="a file of employee numbers, one a line (# comments)")
    c.add_argument("--amount", required=True, help="yuan per employee, e.g. 300.00")
    c.add_argument("--expiry", required=True, metavar="YYYY-MM-DD", help="the last day the allowance may be spent")
    c.add_argument("--policy", required=True, choices=("subsidy_first", "cash_first"))
    c.add_argument("--label", required=True, help="the month (2026-11) or a one-off name (holiday-2026)")
    cmd("list", "each allowance and what became of it (pending, collected, expired)", cmd_subsidy_list)
    cmd("report", "subsidy issued, collected, spent, withdrawn, carried, lapsed and on the cards", cmd_subsidy_report)


def cmd_subsidy_issue(args) -> int:
    import datetime as dt

    from common.money import parse_yuan

    try:
        expiry = dt.date.fromisoformat(args.expiry)
    except ValueError:
        raise UserError(f"--expiry {args.expiry!r} is not YYYY-MM-DD; write e.g. 2026-11-30") from None
    employees = list(args.employee)
    if args.list is not None:
        try:
            text = args.list.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(
                f"--list {args.list}: cannot read it ({exc.strerror}); give a file of employee numbers"
            ) from None
        employees += [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]
    fen = parse_yuan(args.amount, "--amount")

    def do(pf):
        ids = pf.issue_subsidy(args.enterprise, employees, fen, expiry, args.policy, args.label)
        return (
            f"issued {len(ids)} allowance(s) of {args.amount} yuan ({args.policy}, until {expiry}); terminals notified"
        )

    return _run(args, do)


def cmd_subsidy_list(args) -> int:
    from central.db import _yuan

    def do(pf):
        rows = pf.subsidy_list(args.enterprise)
        lines = [
            f"{r['allowance_id']:<28} #{r['number']:<5} {r['employee_no']:<10} {_yuan(r['amount_cents']):>10} "
            f"until {r['expiry']} "
            f"{r['policy']:<13} {r['state']}"
            + (f" at {r['collected_at']} (TAC {r['tac_status']})" if r["collected_at"] else "")
            for r in rows
        ]
        return "\n".join(lines) if lines else "no allowances"

    return _run(args, do)


def cmd_subsidy_report(args) -> int:
    from central.db import _yuan

    def do(pf):
        r = pf.subsidy_report(args.enterprise)
        return "\n".join(f"{k:<10} {_yuan(v):>12}" for k, v in r.items())

    return _run(args, do)


def cmd_settlement(args) -> int:
    import datetime as dt

    try:
        day = dt.date.fromisoformat(args.day)
    except ValueError:
        raise UserError(f"--day {args.day!r} is not YYYY-MM-DD; write e.g. 2026-11-23") from None
    return _run(args, lambda pf: pf.settlement(args.terminal, day))


def cmd_spending_bill(args) -> int:
    from central.bills import spending_bills_csv

    if args.send and args.format == "csv":
        raise UserError("--send sends each employee's SMS text; drop --format csv (the CSV is for the administrator)")

    def do(pf):
        bills = pf.spending_bills(args.month, args.enterprise, args.employee_no)
        if args.format == "csv":
            return spending_bills_csv(bills).rstrip("\r\n")
        if not bills:
            return f"no employees registered in enterprise {args.enterprise}"
        return "\n".join(_send_bill(args, pf, b.enterprise_id, b.employee_no, b.sms()) for b in bills)

    return _run(args, do)


def cmd_card(args) -> int:
    return _run(
        args,
        lambda pf: json.dumps(
            # "void": what the card proved when an issuing station voided it (central/card_flows.py voided)
            {**pf.card(args.asn), "card_actions": pf.card_actions(args.asn), "void": pf.voided(args.asn)},
            sort_keys=True,
        ),
    )


def cmd_terminal(args) -> int:
    return _run(args, lambda pf: json.dumps(pf.terminal(args.terminal_id), sort_keys=True))


def cmd_broker_config(args) -> int:
    from central.broker_config import render_acl, render_conf
    from central.db import PlatformError
    from central.store import Platform
    from common.files import write_atomically
    from common.pki import CertFiles

    _require_db(args.db)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port; give 1..65535")
    for f in (args.ca, args.server_cert, args.server_key):
        if not f.is_file():
            raise UserError(
                f"{f} does not exist; give the CA's ca.pem and the files of `onecard platform ca server-cert`"
            )
    try:
        platform = Platform(args.db, None)
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    try:
        terminals = platform.terminal_enterprises()
    finally:
        platform.close()
    out = args.out
    if args.rabbitmq:
        return _write_rabbitmq_config(args, terminals)
    conf_path, acl_path = out / "mosquitto.conf", out / "acl"
    acl_ref = (args.acl_path or acl_path).absolute()
    try:
        acl = render_acl(terminals, args.workers)
    except ValueError as exc:
        raise UserError(f"{exc}; give --workers as for `onecard platform serve`") from None
    conf = render_conf(
        port=args.port,
        ca=args.ca.absolute(),
        server=CertFiles(args.server_cert.absolute(), args.server_key.absolute()),
        acl=acl_ref,
        bind=args.bind,
        persistence_dir=args.persistence_dir,
    )
    if not args.force:
        for f in (conf_path, acl_path):
            if f.exists():
                raise UserError(
                    f"{f} exists; pass --force to replace it (the broker reads it at its next restart or SIGHUP)"
                )
    try:
        out.mkdir(parents=True, exist_ok=True)
        # The ACL first: a configuration naming an ACL that is not there yet would not start.
        write_atomically(acl_path, acl.encode(), mode=0o644, overwrite=args.force)
        write_atomically(conf_path, conf.encode(), mode=0o644, overwrite=args.force)
    except FileExistsError as exc:
        raise UserError(f"{exc.args[0] if exc.args else out} appeared meanwhile; pass --force to replace it") from None
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror}); choose a writable --out directory") from None
    print(
        f"broker configuration {conf_path} and ACL {acl_path} written: {len(terminals)} terminal(s), "
        f"{args.workers} platform worker(s); reload the broker (SIGHUP) after adding terminals"
    )
    return 0


def _write_rabbitmq_config(args, terminals: dict[str, str]) -> int:
    import json

    from central.broker_config import RABBITMQ_PLUGINS, render_rabbitmq_conf, render_rabbitmq_definitions
    from common.files import write_atomically
    from common.pki import CertFiles

    if not 1 <= args.amqp_port <= 65535:
        raise UserError(f"--amqp-port {args.amqp_port} is not a TCP port; give 1..65535")
    try:
        definitions = render_rabbitmq_definitions(terminals, args.workers)
    except ValueError as exc:
        raise UserError(f"{exc}; give --workers as for `onecard platform serve`") from None
    files = {
        "definitions.json": json.dumps(definitions, indent=1) + "\n",
        "enabled_plugins": f"[{','.join(RABBITMQ_PLUGINS)}].\n",
        "rabbitmq.conf": render_rabbitmq_conf(
            mqtt_port=args.port,
            amqp_port=args.amqp_port,
            ca=args.ca.absolute(),
            server=CertFiles(args.server_cert.absolute(), args.server_key.absolute()),
            bind=args.bind,
        ),
    }
    if not args.force:
        for name in files:
            if (args.out / name).exists():
                raise UserError(f"{args.out / name} exists; pass --force to replace it")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_atomically(args.out / name, text.encode(), mode=0o644, overwrite=args.force)
    except FileExistsError as exc:
        raise UserError(f"{exc.args[0] if exc.args else args.out} appeared meanwhile; pass --force") from None
    except OSError as exc:
        raise UserError(f"cannot write to {args.out} ({exc.strerror}); choose a writable --out directory") from None
    print(
        f"RabbitMQ node configuration written to {args.out} (rabbitmq.conf, enabled_plugins, definitions.json): "
        f"{len(terminals)} terminal(s), {args.workers} platform worker(s); after adding terminals run "
        f"`rabbitmqctl import_definitions {args.out / 'definitions.json'}` on any node"
    )
    return 0


def cmd_reanchor(args) -> int:
    def do(pf):
        r = pf.reanchor(args.terminal_id, args.at_seq, args.reason)
        return (
            f"terminal {args.terminal_id} re-anchored at seq {args.at_seq}; verified up to seq {r.acked_seq} "
            f"now, {r.pending} record(s) still waiting; the earlier records are kept in chain_evidence"
        )

    return _run(args, do)


def cmd_restore_epoch(args) -> int:
    def do(pf):
        e = pf.restore_epoch(args.reason, args.generation)
        return (
            f"platform epoch is now generation {e.generation} (instance {e.instance}); a re-based blacklist "
            "snapshot is queued for every enterprise: start `onecard platform serve` to publish it, then check "
            "`onecard platform terminal ID` for terminals still reporting another list"
        )

    return _run(args, do)


def cmd_migrate(args) -> int:
    from central.db import PlatformError
    from central.migrate import migrate

    try:
        print(migrate(args.source, args.target))
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_serve(args) -> int:
    from central.db import PlatformError, load_signing_key
    from central.service import BrokerSettings, PlatformService

    _require_db(args.db)
    try:
        key = load_signing_key(args.key)
    except PlatformError as exc:
        raise UserError(str(exc)) from None
    if not args.ca.is_file():
        raise UserError(f"CA certificate {args.ca} does not exist; give the platform CA's ca.pem")
    tac_sam = None
    if args.tac_keystore is None and not args.lab_unverified_money:
        raise UserError(
            "no TAC keys: give --tac-keystore KS --passphrase-file F (a keystore from `onecard sam "
            "restrict --role platform`), or --lab-unverified-money in a lab (balances then unverified)"
        )
    if args.tac_keystore is not None:
        from sam.interface import SamError
        from sam.keystore import KeystoreUnlock
        from sam.software import SoftwareSam

        if args.passphrase_file is None:
            raise UserError("--tac-keystore needs --passphrase-file")
        try:
            tac_sam = SoftwareSam.open(args.tac_keystore, KeystoreUnlock.from_passphrase_file(args.passphrase_file))
        except SamError as exc:
            raise UserError(str(exc)) from None
    broker: object = BrokerSettings(args.broker_host, args.broker_port, args.ca, args.cert_dir)
    if args.amqp:
        from central.amqp_service import AmqpSettings

        addresses = []
        for item in args.amqp:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(f"--amqp {item!r} is not HOST:PORT; give a node's AMQPS listener, e.g. mq1:5671")
            addresses.append((host.strip("[]"), int(port)))
        broker = AmqpSettings(tuple(addresses), args.ca, args.cert_dir)
    try:
        service = PlatformService(
            args.db,
            key,
            broker,
            workers=args.workers,
            first_worker=args.first_worker,
            tac_sam=tac_sam,
            unverified_money=args.lab_unverified_money and tac_sam is None,
        )
    except (PlatformError, ValueError) as exc:
        raise UserError(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    try:
        stop.wait()
    finally:
        service.stop()
    return 0


def add_key_versions(sub) -> None:
    c = sub.add_parser("key-versions", help="cards per key version (retire a version when no card uses it)")
    c.add_argument("--db", required=True, type=db_target, help=DB_HELP)
    c.add_argument("--key", required=True, type=Path, help="platform Ed25519 signing key (PEM)")
    c.add_argument("--enterprise", help="only this enterprise")
    c.add_argument(
        "--json",
        action="store_true",
        help="the report as JSON ({enterprise: {version: cards}}), for "
        "sam restrict --drop-version / keys load-psam --retire-below",
    )
    c.set_defaults(handler=cmd_key_versions)


def cmd_key_versions(args) -> int:
    pf = _platform(args)
    try:
        counts = pf.key_versions(args.enterprise)
    finally:
        pf.close()
    if args.json:
        print(
            json.dumps(
                {eid: {str(v): n for v, n in per.items()} for eid, per in sorted(counts.items())}, sort_keys=True
            )
        )
        return 0
    print("ENTERPRISE VERSION CARDS")
    for eid, per in sorted(counts.items()):
        for version, n in sorted(per.items(), key=lambda kv: str(kv[0])):
            print(f"{eid} {version} {n}")
    for eid, per in sorted(counts.items()):
        if "unknown" in per:
            print(f"{eid}: {per['unknown']} card(s) of unknown key version: re-key them before retiring any version")
        elif len(per) == 1:
            (current,) = per
            print(
                f"{eid}: every card uses key version {current}: older versions can be retired from every keystore "
                f"('onecard sam restrict ... --drop-version N --key-versions REPORT') and every PSAM ('onecard "
                f"keys load-psam ... --retire-below {current} --key-versions REPORT'), REPORT being this report "
                "with --json"
            )
    return 0
