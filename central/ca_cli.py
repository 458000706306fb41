"""`onecard platform ca init|sign|server-cert`: the platform operator's side of enrolling terminals
(docs/install.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import UserError


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register `ca` with its own subcommands on the `onecard platform` subparsers."""
    ca = sub.add_parser("ca", help="the platform CA: sign terminals' certificate requests (offline, file based)")
    cmds = ca.add_subparsers(dest="ca_command", required=True)
    init = cmds.add_parser("init", help="create a CA directory (ca.pem for broker and terminals, ca.key 0600)")
    init.add_argument("--dir", required=True, type=Path, help="CA directory; keep it offline and backed up")
    init.add_argument("--name", default="onecard platform CA", help="the CA certificate's CN")
    init.add_argument("--days", type=int, default=3650, help="CA lifetime in days (default 3650)")
    init.set_defaults(handler=cmd_init)
    sign = cmds.add_parser("sign", help="sign a terminal's CSR (from onecard terminal provision) into a certificate")
    sign.add_argument("--dir", required=True, type=Path, help="CA directory")
    sign.add_argument("--csr", required=True, type=Path, help="the terminal's mqtt-terminal.csr")
    sign.add_argument("--out", required=True, type=Path, help="certificate to write, e.g. 000000000042.pem")
    sign.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    sign.add_argument("--force", action="store_true", help="replace an existing --out file")
    sign.set_defaults(handler=cmd_sign)
    server = cmds.add_parser("server-cert", help="make the broker's TLS certificate and key (lab set-ups)")
    server.add_argument("--dir", required=True, type=Path, help="CA directory")
    server.add_argument("--host", required=True, action="append", help="broker DNS name or IP (repeat for more)")
    server.add_argument("--out", required=True, type=Path, help="path prefix: writes PREFIX.pem and PREFIX.key")
    server.set_defaults(handler=cmd_server_cert)
    pc = cmds.add_parser(
        "platform-certs",
        help="issue the platform workers' own client certificates "
        "(CN platform-w0, platform-w1, ...: each worker's broker username and client ID)",
    )
    pc.add_argument("--dir", required=True, type=Path, help="CA directory")
    pc.add_argument("--workers", type=int, default=2, help="as many as `platform serve --workers` (default 2)")
    pc.add_argument(
        "--out", required=True, type=Path, help="directory for platform-wN.pem/.key (`platform serve --cert-dir`)"
    )
    pc.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    pc.set_defaults(handler=cmd_platform_certs)


def _days(days: int) -> int:
    if not 1 <= days <= 36500:
        raise UserError(f"--days {days} is outside 1..36500; give a number of days")
    return days


def cmd_init(args) -> int:
    from central.ca import CaError, PlatformCa

    try:
        ca = PlatformCa.init(args.dir, args.name, _days(args.days))
    except (CaError, OSError) as exc:
        raise UserError(
            str(exc) if isinstance(exc, CaError) else f"cannot create {args.dir} ({exc}); choose a writable directory"
        ) from None
    print(
        f"CA '{args.name}' created in {args.dir}: give {ca.cert_path} to the broker (cafile) and to every "
        f"terminal (provision --broker-ca); keep {args.dir / 'ca.key'} offline"
    )
    return 0


def cmd_sign(args) -> int:
    from central.ca import CaError, PlatformCa, write_certificate

    try:
        csr = args.csr.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read CSR {args.csr} ({exc.strerror}); give the .csr file the installer brought"
        ) from None
    try:
        ca = PlatformCa.load(args.dir)
        cert = ca.sign_csr(csr, _days(args.days))
        write_certificate(args.out, cert, overwrite=args.force)
    except CaError as exc:
        raise UserError(str(exc)) from None
    cn = cert.subject.rfc4514_string()
    print(
        f"certificate for {cn} written to {args.out}, valid until {cert.not_valid_after_utc:%Y-%m-%d}; give it "
        f"to the installer: onecard terminal provision ... --cert {args.out.name}"
    )
    return 0


def cmd_server_cert(args) -> int:
    from central.ca import CaError, PlatformCa

    try:
        cert, key = PlatformCa.load(args.dir).issue_server(tuple(args.host), args.out)
    except CaError as exc:
        raise UserError(str(exc)) from None
    print(f"broker certificate {cert} and key {key} for {', '.join(args.host)}")
    return 0


def cmd_platform_certs(args) -> int:
    from central.ca import CaError, PlatformCa

    try:
        written = PlatformCa.load(args.dir).issue_platform_clients(args.workers, args.out, _days(args.days))
    except CaError as exc:
        raise UserError(str(exc)) from None
    print(
        f"{len(written) // 2} platform worker certificate(s) and keys written to {args.out}; start the platform "
        f"with `onecard platform serve --workers {args.workers} --cert-dir {args.out}` and give the broker the ACL "
        "of `onecard platform broker-config --workers N`"
    )
    return 0
