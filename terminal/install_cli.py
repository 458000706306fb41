"""`onecard terminal provision` and `onecard terminal selftest`: the installer's commands (docs/install.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from common.config import ConfigError, load_config
from common.errors import UserError
from terminal.adapters import open_reader, open_sam
from terminal.provision import REPO_TEMPLATE, Provisioner, ProvisionError, Request, rebind
from terminal.sam_binding import BindingError
from terminal.selftest import Adapters, CheckResult, all_passed, render_report, run_selftest, write_report


def say(line: str) -> None:
    print(line, flush=True)


def add_subcommands(sub) -> None:
    add_provision(sub)
    add_selftest(sub)


def add_provision(sub) -> None:
    p = sub.add_parser(
        "provision",
        help="enrol this terminal: key, CSR, certificate, firmware.toml, SAM binding",
        description="Enrol a terminal (docs/install.md). Re-running is safe: existing files that fit "
        "are kept, others are refused unless --force. Exit 3: the CSR is written and waits for the "
        "platform operator's certificate (run again with --cert).",
    )
    p.add_argument("--id", dest="terminal_id", help="12-digit terminal ID registered on the platform")
    p.add_argument("--kind", choices=("door", "attendance", "pos", "topup"))
    p.add_argument("--enterprise", help="8-digit enterprise ID")
    p.add_argument("--name", default="onecard terminal", help="shown on the display and in logs")
    p.add_argument("--timezone", help="IANA time zone (default: the template's)")
    p.add_argument("--reader-driver", default="pcsc", choices=("pcsc", "nfc", "simulator"))
    p.add_argument("--reader", help="PC/SC reader name (part of it), nfcpy path (tty:AMA0:pn532) or card file")
    p.add_argument("--sam", dest="sam_backend", default="keystore", choices=("keystore", "psam"))
    p.add_argument("--keystore", type=Path, help="the keystore file from the key-card administrator")
    p.add_argument("--passphrase-file", type=Path, help="file holding the keystore passphrase")
    p.add_argument("--device-secret-file", type=Path, help="or this device's secret file")
    p.add_argument("--sam-reader", default="", help="PSAM: the SAM slot's PC/SC reader name")
    p.add_argument("--door-group", type=int, help="door kind: this door's group 1..64")
    p.add_argument("--broker-host", help="the platform's MQTT broker")
    p.add_argument("--broker-port", type=int, default=8883)
    p.add_argument("--broker-ca", type=Path, help="the platform CA certificate (ca.pem)")
    p.add_argument("--platform-public-key", type=Path, help="the platform's Ed25519 public key (PEM)")
    p.add_argument(
        "--etc-dir", type=Path, default=Path("/etc/onecard"), help="config, key, certificate (default /etc/onecard)"
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path("/var/lib/onecard"), help="databases (default /var/lib/onecard)"
    )
    p.add_argument("--ca-dir", type=Path, help="lab: sign the CSR at once with the CA in this directory")
    p.add_argument("--cert", type=Path, help="the certificate the platform operator signed from the CSR")
    p.add_argument("--template", type=Path, default=REPO_TEMPLATE, help="the documented firmware.toml")
    p.add_argument("--owner", help="give key, certificate, config and data directory to this user (e.g. onecard)")
    p.add_argument("--force", action="store_true", help="replace an existing key, certificate, config or binding")
    p.add_argument("--rebind-sam", action="store_true", help="only bind the SAM now present to --config")
    p.add_argument("--config", type=Path, help="with --rebind-sam: the terminal's firmware.toml")
    p.set_defaults(handler=cmd_provision)


_REQUIRED = (
    ("terminal_id", "--id"),
    ("kind", "--kind"),
    ("enterprise", "--enterprise"),
    ("reader", "--reader"),
    ("broker_host", "--broker-host"),
    ("broker_ca", "--broker-ca"),
    ("platform_public_key", "--platform-public-key"),
)


def cmd_provision(args) -> int:
    wiring = getattr(args, "wiring", None)
    try:
        if args.rebind_sam:
            if args.config is None:
                raise ProvisionError("--rebind-sam needs --config PATH of the terminal's firmware.toml")
            return rebind(args.config, say)
        missing = [option for attr, option in _REQUIRED if getattr(args, attr) is None]
        if missing:
            raise ProvisionError(
                f"missing {', '.join(missing)}; see onecard terminal provision --help and docs/install.md"
            )
        request = Request(
            terminal_id=args.terminal_id,
            kind=args.kind,
            enterprise_id=args.enterprise,
            etc_dir=args.etc_dir,
            data_dir=args.data_dir,
            broker_host=args.broker_host,
            broker_port=args.broker_port,
            broker_ca=args.broker_ca,
            platform_public_key=args.platform_public_key,
            name=args.name,
            timezone=args.timezone,
            reader_driver=args.reader_driver,
            reader=args.reader,
            sam_backend=args.sam_backend,
            keystore=args.keystore,
            passphrase_file=args.passphrase_file,
            device_secret_file=args.device_secret_file,
            sam_reader=args.sam_reader,
            door_group=args.door_group,
            ca_dir=args.ca_dir,
            cert=args.cert,
            template=args.template,
            owner=args.owner,
            force=args.force,
        )
        return Provisioner(request, say, lab_ca=wiring.lab_ca_signer if wiring else None).run()
    except (ProvisionError, BindingError) as exc:
        raise UserError(str(exc)) from None


def default_adapters(simulated_reader: Callable[[Path], object] | None = None) -> Adapters:
    from terminal.adapters import open_outputs
    from terminal.outputs import ConsoleOutputs

    def make_outputs(c):
        if c.output.driver == "console" and c.display.driver == "none":
            # stderr: stdout carries only the PASS/FAIL lines, so they can be read and filed as they are.
            return ConsoleOutputs(c.terminal.name, stream=sys.stderr, color=c.output.color)
        return open_outputs(c, None)  # the configured GPIO and display drivers; no alarm state is read

    return Adapters(
        lambda c: open_reader(c, simulated_reader=simulated_reader),
        lambda c: open_sam(c, check_binding=False),  # check_sam explains a mismatch
        make_outputs,
        prompt=say,
    )


def save_last_result(config_path: Path, results: list[CheckResult], summary: str, when) -> None:
    """The result for the status page, beside the event log; best effort (a self-test run by another user than
    the terminal's, or with a broken configuration, still prints its lines)."""
    import json

    from common.files import write_atomically
    from terminal.status_page import selftest_path

    try:
        path = selftest_path(load_config(config_path))
        if not path.parent.is_dir():
            return  # no terminal data directory yet: nothing runs here to show it
        record = {
            "time": when.isoformat(timespec="seconds"),
            "summary": summary,
            "results": [{"check": r.name, "status": r.status, "found": r.found} for r in results],
        }
        write_atomically(path, json.dumps(record, indent=1).encode(), mode=0o640)
    except (ConfigError, OSError) as exc:
        print(f"note: the result is not kept for the status page ({exc})")


def add_selftest(sub) -> None:
    p = sub.add_parser(
        "selftest",
        help="check reader, SAM, storage, broker, clock and outputs; PASS/FAIL per check",
        description="One line per check, 'PASS|FAIL|SKIP <check>: <what was found>', and under a FAIL "
        "'  fix: <what to do>'. Exit 0 when nothing failed (SKIP lines say what was not checked), 1 "
        "otherwise. docs/install.md has the troubleshooting table.",
    )
    p.add_argument("--config", required=True, type=Path, help="the terminal's firmware.toml")
    p.add_argument(
        "--tap-timeout",
        type=float,
        default=None,
        metavar="S",
        help="ask for a tap and wait S seconds (without it the tap check is skipped)",
    )
    p.add_argument("--broker-timeout", type=float, default=5.0, metavar="S", help="TLS/MQTT connect timeout")
    p.add_argument("--report", type=Path, metavar="FILE", help="write the installation record to sign to FILE")
    p.add_argument("--technician", default="", help="technician's name for the record")
    p.add_argument("--customer", default="", help="customer's name for the record")
    p.add_argument("--force", action="store_true", help="replace an existing --report file")
    p.set_defaults(handler=cmd_selftest)


def cmd_selftest(args) -> int:
    if args.report is not None and args.report.exists() and not args.force:
        raise UserError(f"report {args.report} exists (it may be signed already); choose another file or pass --force")
    if args.tap_timeout is not None and not 0 < args.tap_timeout <= 600:
        raise UserError(f"--tap-timeout {args.tap_timeout:g} is outside (0, 600]; give seconds, e.g. 30")
    wiring = getattr(args, "wiring", None)
    adapters = default_adapters(wiring.simulated_card_reader if wiring else None)

    def emit(result: CheckResult) -> None:
        for line in result.lines():
            print(line, flush=True)

    results = run_selftest(args.config, adapters, args.tap_timeout, args.broker_timeout, emit)
    ok = all_passed(results)
    summary = "all checks passed" if ok else str(sum(r.failed for r in results)) + " check(s) failed"
    print(f"selftest: {summary}")
    save_last_result(args.config, results, summary, adapters.now())
    if args.report is not None:
        try:
            config = load_config(args.config)
        except ConfigError:
            config = None
        write_report(
            args.report,
            render_report(results, config, args.config, adapters.now(), args.technician, args.customer),
            force=args.force,
        )
        print(f"installation record written to {args.report}: print it, and have technician and customer sign it")
    return 0 if ok else 1
