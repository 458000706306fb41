"""`onecard terminal selftest`: check one installed terminal end to end, one PASS/FAIL line per check with its fix.

Each check is a function returning a CheckResult; the I/O each needs is passed in, so tests can make it fail on purpose.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from common.config import Config, ConfigError, load_config
from common.logs import log_event
from sam.interface import (
    CardIdentity,
    KeyInfo,
    KeyPurpose,
    KeyUsage,
    LoadSession,
    MacVerificationError,
    PurchaseSession,
    Sam,
    SamError,
)

log = logging.getLogger("onecard.selftest")

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# The keys each terminal kind uses and the usages it needs (the same table as `onecard sam restrict --role`,
# docs/key-handling.md 3); attendance clocks authenticate cards exactly as doors do.
KIND_ROLE = {"door": "door", "attendance": "door", "pos": "pos", "topup": "top-up"}

# A card identity no card is issued with: the SAM round trip must never be mistaken for a real transaction.
TEST_ASN = bytes.fromhex("00000000000000ff")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    found: str  # what was found, one line
    fix: str = ""  # on FAIL: what to do

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def lines(self) -> list[str]:
        out = [f"{self.status} {self.name}: {self.found}"]
        if self.failed and self.fix:
            out.append(f"  fix: {self.fix}")
        return out


def passed(name: str, found: str) -> CheckResult:
    return CheckResult(name, PASS, found)


def failed(name: str, found: str, fix: str) -> CheckResult:
    return CheckResult(name, FAIL, found, fix)


def skipped(name: str, why: str) -> CheckResult:
    return CheckResult(name, SKIP, why)


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[CheckResult, Config | None]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        text = str(exc)
        problem, _, fix = text.partition("; ")
        return failed("config", problem, fix or f"correct {path} (see the documented firmware.toml)"), None
    t = config.terminal
    return passed(
        "config",
        f"{path}: terminal {t.id} ({t.kind}) of enterprise {t.enterprise_id.hex()}, "
        f"reader {config.reader.driver}, sam {config.sam.backend}",
    ), config


def _split_fix(message: str, default_fix: str) -> tuple[str, str]:
    """Our errors read '<problem>; <fix>': show them as found / fix lines."""
    problem, sep, fix = message.rpartition("; ")
    return (problem, fix) if sep and problem else (message, default_fix)


# --------------------------------------------------------------------------------------------------
# reader and tap
# --------------------------------------------------------------------------------------------------


def check_reader(config: Config, open_reader: Callable[[Config], object]) -> tuple[CheckResult, object | None]:
    """open_reader: terminal.cli.open_reader (UserError when pcscd or the reader is missing)."""
    from common.errors import UserError

    try:
        reader = open_reader(config)
    except UserError as exc:
        found, fix = _split_fix(str(exc), "check the reader is connected and [reader] names it")
        return failed("reader", found, fix), None
    r = config.reader
    return passed("reader", f"{r.driver} reader {getattr(reader, 'name', '') or r.name or r.path} is present"), reader


def check_tap(
    reader, timeout: float | None, enterprise_id: bytes, prompt: Callable[[str], None] = lambda line: None
) -> CheckResult:
    """Wait for any card (after `prompt`ing the installer); any card proves the reader reads, and a one-card's
    SELECT answer is reported."""
    from terminal import card_protocol as cp
    from terminal.authenticate import select_application
    from terminal.reader import CardRemoved, ReaderError

    if reader is None:
        return skipped("tap", "not checked: no reader")
    if not timeout:
        return skipped("tap", "not checked: pass --tap-timeout SECONDS and tap a card when asked")
    prompt(f"tap any card now (waiting {timeout:g} s)")
    try:
        conn = reader.wait_for_card(timeout)
    except ReaderError as exc:
        found, fix = _split_fix(str(exc), "check the reader and pcscd's logs")
        return failed("tap", found, fix)
    if conn is None:
        return failed(
            "tap",
            f"no card seen within {timeout:g} s",
            "hold a card flat on the reader during the wait; if it still fails, check the antenna "
            "cable / reader model, then rerun with a longer --tap-timeout",
        )
    try:
        atr = conn.atr.hex().upper()
        try:
            info = select_application(conn.transmit, enterprise_id)
            what = f"a one-card of enterprise {info.enterprise_id.hex()} (ASN {info.asn_hex})" + (
                "" if info.enterprise_id == enterprise_id else ", not this terminal's enterprise"
            )
        except cp.NoSubApplication:
            what = "a version 2 one-card without a sub-application of this terminal's enterprise"
        except (cp.CardProtocolError, CardRemoved):
            what = "not a one-card (any card shows the reader works)"
    finally:
        conn.close()
    return passed("tap", f"card seen (ATR {atr}): {what}")


# --------------------------------------------------------------------------------------------------
# SAM
# --------------------------------------------------------------------------------------------------


def required_usages(kind: str) -> dict[KeyPurpose, frozenset[KeyUsage]]:
    from sam.cli import ROLES
    from sam.roles import OPTIONAL_USAGES

    return {purpose: usages - OPTIONAL_USAGES for purpose, usages in ROLES[KIND_ROLE[kind]].items()}


def fitting_keys(
    infos: Iterable[KeyInfo], enterprise_id: bytes, purpose: KeyPurpose, usages: frozenset[KeyUsage]
) -> list[KeyInfo]:
    return sorted(
        (i for i in infos if i.enterprise_id == enterprise_id and i.purpose is purpose and usages <= i.usages),
        key=lambda i: (i.version, int(i.algorithm)),
    )


def key_for(
    infos: Iterable[KeyInfo], enterprise_id: bytes, purpose: KeyPurpose, usages: frozenset[KeyUsage]
) -> KeyInfo | None:
    """The newest key of this enterprise and purpose allowing every usage in `usages`."""
    fits = [i for i in infos if i.enterprise_id == enterprise_id and i.purpose is purpose and usages <= i.usages]
    return max(fits, key=lambda i: (i.version, int(i.algorithm)), default=None)


def missing_keys(infos: list[KeyInfo], enterprise_id: bytes, kind: str) -> list[str]:
    """What the kind needs that the SAM lacks, e.g. 'access (verify)'; empty when complete."""
    return [
        f"{purpose.value} ({','.join(sorted(u.value for u in usages))})"
        for purpose, usages in required_usages(kind).items()
        if key_for(infos, enterprise_id, purpose, usages) is None
    ]


def _describe(info: KeyInfo) -> str:
    return f"{info.purpose.value} v{info.version} {info.algorithm.name.lower()} KCV {info.kcv}"


def sam_round_trip(
    sam: Sam, infos: list[KeyInfo], enterprise_id: bytes, terminal_id: bytes, kind: str, now: dt.datetime
) -> str:
    """Run a real cryptographic operation under every key the kind needs, with a throwaway card identity.

    Keys the terminal may only verify with are checked by offering a wrong MAC, which the SAM must refuse as not
    verifying (a missing key or usage raises a different error). Never takes a TSN or changes purse state.
    Returns what was done; raises SamError on anything unexpected.
    """
    from common.bcd import encode_date_time

    date, time_ = encode_date_time(now)
    done = [
        _one_round_trip(sam, info, purpose, usages, enterprise_id, terminal_id, date, time_)
        for purpose, usages in required_usages(kind).items()
        for info in fitting_keys(infos, enterprise_id, purpose, usages)
    ]
    return "; ".join(done)


def _one_round_trip(
    sam: Sam,
    info: KeyInfo,
    purpose: KeyPurpose,
    usages: frozenset[KeyUsage],
    enterprise_id: bytes,
    terminal_id: bytes,
    date: bytes,
    time_: bytes,
) -> str:
    card = CardIdentity(TEST_ASN, enterprise_id, info.version, info.algorithm)
    message, wrong = b"onecard selftest", bytes(8)
    if purpose is KeyPurpose.ACCESS:
        made = ""
        if KeyUsage.MAC in info.usages:
            mac = sam.card_mac(purpose, card, message)
            sam.verify_card_mac(purpose, card, message, mac)
            made, wrong = "MAC computed and verified, ", bytes(b ^ 0xFF for b in mac)
        _expect_refusal(lambda: sam.verify_card_mac(purpose, card, message, wrong), info)
        return f"{_describe(info)}: {made}wrong MAC refused"
    if purpose is KeyPurpose.PURCHASE:
        purchase = PurchaseSession(card, bytes(4), 1, 1, terminal_id, date, time_)
        _expect_refusal(lambda: sam.verify_purchase_mac2(purchase, 1, wrong), info)
        return f"{_describe(info)}: wrong purchase MAC2 refused"
    if purpose is KeyPurpose.LOAD and KeyUsage.MAC in usages:
        load = LoadSession(card, bytes(4), 1, 0, 1, terminal_id, date, time_)
        _expect_refusal(lambda: sam.load_mac2(load, wrong), info)
        return f"{_describe(info)}: wrong load MAC1 refused"
    # The POS's reversal key can only be exercised by undoing this SAM's last real purchase; its presence and
    # usage in the key list is all a self-test can show without moving money.
    return f"{_describe(info)}: present for {','.join(sorted(u.value for u in usages))}"


def _expect_refusal(operation: Callable[[], object], info: KeyInfo) -> None:
    try:
        operation()
    except MacVerificationError:
        return
    raise SamError(f"the SAM accepted an all-zero test MAC under {_describe(info)}; replace the SAM")


def check_sam(config: Config, open_sam: Callable[[Config], Sam], now: dt.datetime) -> CheckResult:
    """Unlock/select the SAM, check it holds the kind's keys, is the bound SAM, and MACs."""
    from common.errors import UserError
    from terminal.sam_binding import BindingError, binding_path, binding_problem, read_binding

    s, t = config.sam, config.terminal
    try:
        sam = open_sam(config)
    except UserError as exc:
        default = (
            "check [sam].passphrase_file holds this keystore's passphrase (ask the key-card administrator)"
            if s.backend == "keystore"
            else "insert the terminal's PSAM in its SAM slot"
        )
        found, fix = _split_fix(str(exc), default)
        return failed("sam", found, fix)
    try:
        try:
            infos = sam.key_infos()
        except SamError as exc:
            found, fix = _split_fix(str(exc), "replace the SAM")
            return failed("sam", found, fix)
        where = f"keystore {s.keystore}" if s.backend == "keystore" else f"PSAM in {getattr(sam, 'name', s.reader)}"
        missing = missing_keys(infos, t.enterprise_id, t.kind)
        if missing:
            return failed(
                "sam",
                f"{where} lacks the {t.kind} keys of enterprise {t.enterprise_id.hex()}: "
                f"{', '.join(missing)} (it holds {len(infos)} keys)",
                f"ask the key-card administrator for a {KIND_ROLE[t.kind]} keystore of enterprise "
                f"{t.enterprise_id.hex()}: onecard sam restrict --role {KIND_ROLE[t.kind]}",
            )
        bpath = binding_path(config.path)
        try:
            binding = read_binding(bpath)
        except BindingError as exc:
            found, fix = _split_fix(str(exc), "re-run onecard terminal provision --force")
            return failed("sam", found, fix)
        bound = "not bound (no binding file)"
        if binding is not None:
            problem = binding_problem(binding, s.backend, infos)
            if problem:
                return failed(
                    "sam",
                    f"{where} is not the SAM bound to this terminal: {problem}",
                    f"put back the SAM this terminal was provisioned with, or re-bind this one with "
                    f"onecard terminal provision --rebind-sam --config {config.path}",
                )
            bound = f"the bound SAM ({bpath.name})"
        try:
            trip = sam_round_trip(sam, infos, t.enterprise_id, t.id_bytes, t.kind, now)
        except SamError as exc:
            found, fix = _split_fix(str(exc), "replace the SAM")
            return failed("sam", f"{where} failed its MAC round trip: {found}", fix)
        return passed("sam", f"{where} answers, {bound}; {trip}")
    finally:
        close = getattr(sam, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------------


def check_database(config: Config) -> tuple[CheckResult, CheckResult]:
    """(database writable, chain intact). The write is a transaction rolled back: no event enters the chain."""
    from common.db import DatabaseError
    from terminal.event_log import EventLog

    path = config.terminal.database
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        event_log = EventLog.open(path, config.terminal.id)
    except OSError as exc:
        fix = f"create {path.parent} writable by the terminal's user (install -d -o onecard {path.parent})"
        result = failed("database", f"cannot create or open {path} ({exc.strerror or exc})", fix)
        return result, skipped("event log chain", "not checked: database not usable")
    except DatabaseError as exc:
        found, fix = _split_fix(str(exc), f"check {path} and its directory's permissions")
        return failed("database", found, fix), skipped("event log chain", "not checked: database not usable")
    try:
        conn = event_log.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE selftest_probe (x INTEGER)")
            conn.execute("INSERT INTO selftest_probe VALUES (1)")
        except sqlite3.Error as exc:
            write = failed(
                "database",
                f"{path} opens but cannot be written ({exc})",
                f"make {path}, its -wal/-shm files and {path.parent} writable by the terminal's user; "
                "check the disk is not full or read-only",
            )
        else:
            write = passed("database", f"{path} writable (test write rolled back), {event_log.last_seq()} records")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        report = event_log.verify()
        if report.ok:
            chain = passed("event log chain", f"intact: {report.checked} records verified, head seq {report.head_seq}")
        else:
            chain = failed(
                "event log chain",
                f"broken at seq {report.first_bad_seq}: {report.problem}",
                f"do not delete or edit {path}: keep a copy for investigation (onecard log verify --db "
                f"{path}), report it to the platform operator, and move the file aside to start a new log",
            )
        return write, chain
    finally:
        event_log.close()


def check_blacklist(config: Config) -> CheckResult:
    from common.db import DatabaseError
    from terminal.blacklist import Blacklist

    path = config.terminal.blacklist
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        bl = Blacklist.open(path)
    except OSError as exc:
        return failed(
            "blacklist",
            f"cannot open {path} ({exc.strerror or exc})",
            f"create {path.parent} writable by the terminal's user",
        )
    except DatabaseError as exc:
        found, fix = _split_fix(str(exc), f"move {path} aside; the sync agent fetches a new snapshot")
        return failed("blacklist", found, fix)
    try:
        version, count = bl.version(), bl.count()
    finally:
        bl.close()
    note = " (never synced: empty until the sync agent installs the platform's list)" if version == 0 else ""
    return passed("blacklist", f"{path} readable: version {version}, {count} cards{note}")


# --------------------------------------------------------------------------------------------------
# broker
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateFacts:
    subject_cn: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    key_matches: bool


def read_certificate(cert_file: Path, key_file: Path) -> CertificateFacts:
    """Raises ValueError/OSError when a file is unreadable or not PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    matches = key.public_key().public_bytes(serialization.Encoding.DER, pub) == cert.public_key().public_bytes(
        serialization.Encoding.DER, pub
    )
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateFacts(
        cns[0].value if cns else "",
        cert.issuer.rfc4514_string(),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        matches,
    )


def certificate_problem(facts: CertificateFacts, terminal_id: str, now: dt.datetime) -> tuple[str, str] | None:
    """(found, fix) when the certificate cannot work, before any connection is tried."""
    again = (
        "make a new key and certificate: re-run onecard terminal provision with --force "
        "(docs/install.md, Renewing the certificate)"
    )
    if not facts.key_matches:
        return "the certificate does not belong to [sync].key_file (public keys differ)", again
    if facts.subject_cn != terminal_id:
        return (
            f"the certificate's CN is {facts.subject_cn!r}, not this terminal's ID {terminal_id}: the broker "
            "would treat this terminal as another one",
            again,
        )
    if now < facts.not_before:
        return (
            f"the certificate is valid only from {facts.not_before:%Y-%m-%d %H:%M} UTC (terminal clock "
            f"{now:%Y-%m-%d %H:%M} UTC)",
            "set the terminal's clock (timedatectl set-ntp true)",
        )
    if now >= facts.not_after:
        return f"the certificate expired on {facts.not_after:%Y-%m-%d} UTC", again
    return None


def classify_connect_error(exc: BaseException, host: str, port: int) -> tuple[str, str]:
    """(found, fix) for a failed TLS/MQTT connection; pure, so each case is tested without a broker."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "hostname" in str(exc).lower() or "ip address mismatch" in str(exc).lower():
            return (
                f"the broker's certificate does not name {host} ({exc.verify_message})",
                "set [sync].broker_host to the name the broker's certificate was issued for",
            )
        return (
            f"the broker's certificate is not signed by [sync].ca_file ({exc.verify_message})",
            "put the platform's CA certificate in [sync].ca_file (mqtt-ca.pem from the platform operator)",
        )
    if isinstance(exc, TlsRejected):
        # mosquitto verifies the client certificate after a TLS 1.3 handshake and just closes the socket when
        # it does not chain to its cafile; expiry was checked before connecting, so this is the CA.
        return (
            f"the broker rejected this terminal's certificate (it closed the connection before answering: "
            f"{exc}); the certificate was not issued by the CA the broker trusts",
            "get a certificate from the platform CA: re-run onecard terminal provision with --force and have "
            "the CSR signed with onecard platform ca sign (docs/install.md)",
        )
    if isinstance(exc, ssl.SSLError):
        reason = (getattr(exc, "reason", None) or str(exc)).upper()
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
            return (
                f"the broker rejected this terminal's certificate ({_alert(exc)}): it was not issued by the "
                "platform's CA",
                "get a certificate from the platform CA: re-run onecard terminal provision with "
                "--force and have the CSR signed with onecard platform ca sign (docs/install.md)",
            )
        if "EXPIRED" in reason or "REVOKED" in reason:
            return (
                f"the broker rejected this terminal's certificate ({_alert(exc)})",
                "make a new certificate: re-run onecard terminal provision with --force (docs/install.md)",
            )
        return (
            f"TLS with {host}:{port} failed ({_alert(exc)})",
            "check [sync].broker_port is the broker's TLS listener and the files in [sync]",
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"{host}:{port} refused the connection (nothing listening)",
            "start the broker (systemctl status mosquitto on the broker host) or fix [sync].broker_host/port",
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host} ({exc.strerror})", "fix [sync].broker_host or the terminal's DNS settings"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return (
            f"no answer from {host}:{port} in time",
            "check the network path and firewall to the broker (TCP port open?)",
        )
    if isinstance(exc, OSError):
        return (
            f"cannot reach {host}:{port} ({exc.strerror or exc})",
            "check the terminal's network (ip addr, ip route) and the broker address",
        )
    return f"connection to {host}:{port} failed ({exc})", "see the broker's log for this client"


def _alert(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


class BrokerRefused(Exception):
    """The broker answered CONNACK with a failure reason."""


class TlsRejected(Exception):
    """The connection failed after the TLS handshake (paho's error text, e.g. a TLS alert from the broker)."""


def connect_broker(host: str, port: int, ca: Path, cert: Path, key: Path, client_id: str, timeout: float) -> str:
    """Connect with TLS and this terminal's certificate, wait for CONNACK, disconnect. Returns the protocol used."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    outcome: dict = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome["rc"] = reason_code

    def on_log(client, userdata, level, text):
        # With TLS 1.3 the broker's verdict on our certificate arrives after the handshake, as an alert on the
        # first read; paho reports it only through its log.
        if level == paho.MQTT_LOG_ERR:
            outcome.setdefault("error", text)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.connect_timeout = timeout
    client.on_connect = on_connect
    client.on_log = on_log
    client.connect(host, port, keepalive=10)  # TCP + TLS handshake happen here: their errors raise here
    try:
        deadline = time.monotonic() + timeout
        while "rc" not in outcome and "error" not in outcome and time.monotonic() < deadline:
            client.loop(0.1)
        if "rc" not in outcome:
            if "error" in outcome:
                raise TlsRejected(outcome["error"])
            raise TimeoutError("no CONNACK")
        if outcome["rc"].is_failure:
            raise BrokerRefused(str(outcome["rc"]))
    finally:
        client.disconnect()
    return "MQTT 5"


def check_broker(
    config: Config, now: dt.datetime, connect: Callable[..., str] = connect_broker, timeout: float = 5.0
) -> CheckResult:
    s = config.sync
    if s is None:
        return skipped("broker", "not checked: no [sync] section (this terminal has no sync agent)")
    for setting, f in (("ca_file", s.ca_file), ("cert_file", s.cert_file), ("key_file", s.key_file)):
        if not f.is_file():
            return failed(
                "broker",
                f"[sync].{setting} {f} does not exist",
                "run onecard terminal provision (docs/install.md) or fix the path in the config",
            )
    try:
        facts = read_certificate(s.cert_file, s.key_file)
    except (ValueError, TypeError, OSError) as exc:
        return failed(
            "broker",
            f"cannot read the certificate/key ({exc})",
            "re-run onecard terminal provision with --force (docs/install.md)",
        )
    problem = certificate_problem(facts, config.terminal.id, now)
    if problem:
        return failed("broker", *problem)
    where = f"{s.broker_host}:{s.broker_port}"
    try:
        protocol = connect(
            s.broker_host, s.broker_port, s.ca_file, s.cert_file, s.key_file, f"selftest-{config.terminal.id}", timeout
        )
    except BrokerRefused as exc:
        return failed(
            "broker",
            f"{where} refused terminal {facts.subject_cn} ({exc})",
            "ask the platform operator to register this terminal on the broker (ACL, user = terminal ID)",
        )
    except Exception as exc:  # classified below: every network/TLS failure becomes one line with its fix
        return failed("broker", *classify_connect_error(exc, s.broker_host, s.broker_port))
    days = (facts.not_after - now).days
    warn = f" - renew soon ({days} days left)" if days < 30 else ""
    return passed(
        "broker",
        f"connected to {where} over TLS ({protocol}) as {facts.subject_cn}; certificate by "
        f"{facts.issuer} valid until {facts.not_after:%Y-%m-%d}{warn}",
    )


# --------------------------------------------------------------------------------------------------
# clock
# --------------------------------------------------------------------------------------------------


def assess_clock(sample: tuple[dt.datetime, dt.datetime] | None, now: dt.datetime, tolerance: float) -> CheckResult:
    """Drift = terminal clock minus platform time when the agent received the platform's last time message."""
    if sample is None:
        return skipped(
            "clock",
            "not checked: the sync agent has stored no platform time yet (start onecard-sync, "
            "wait for a heartbeat answer, then run the self-test again)",
        )
    issued, received = sample
    drift = (received - issued).total_seconds()
    age = (now - received).total_seconds()
    if age < -tolerance:
        return failed(
            "clock",
            f"the clock is {-age:.0f} s before the time it recorded a platform message at: it went backwards",
            "enable NTP (timedatectl set-ntp true) and check the RTC battery",
        )
    if abs(drift) > tolerance:
        side = "ahead of" if drift > 0 else "behind"
        return failed(
            "clock",
            f"terminal clock was {abs(drift):.1f} s {side} the platform (tolerance "
            f"{tolerance:g} s, measured {age:.0f} s ago)",
            "enable NTP (timedatectl set-ntp true; timedatectl status shows 'synchronized: yes')",
        )
    return passed(
        "clock", f"within {abs(drift):.1f} s of the platform (tolerance {tolerance:g} s, measured {age:.0f} s ago)"
    )


def check_clock(config: Config, now: dt.datetime) -> CheckResult:
    if config.sync is None:
        return skipped("clock", "not checked: no [sync] section, so no platform time to compare with")
    from sync_agent.store import last_platform_time

    return assess_clock(last_platform_time(config.sync.database), now, config.sync.clock_tolerance_seconds)


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------


def check_outputs(outputs, driver: str) -> CheckResult:
    """Drive every output once; the installer watches and listens, the check reports what raised."""
    steps = [
        ("green light", lambda: outputs.light("green")),
        ("ok beep", lambda: outputs.beep("ok")),
        ("display", lambda: outputs.display("Self-test: green light, one beep")),
        ("relay", lambda: outputs.open_relay(1)),
        ("red light", lambda: outputs.light("red")),
        ("error beep", lambda: outputs.beep("error")),
        ("display", lambda: outputs.display("Self-test: red light, three beeps")),
        ("lights off", lambda: outputs.light("off")),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # a driver's own error type: report it, the next check still runs
            return failed(
                "outputs",
                f"{driver} driver failed to switch the {what} ({type(exc).__name__}: {exc})",
                "check the output wiring and the [output] driver settings, then run the self-test again",
            )
    return passed(
        "outputs",
        f"{driver} driver switched relay, green and red light, beeps and display (confirm you saw and heard each)",
    )


# --------------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------------


@dataclass
class Adapters:
    """What the self-test opens; tests replace one to produce a failure."""

    open_reader: Callable[[Config], object]
    open_sam: Callable[[Config], Sam]
    make_outputs: Callable[[Config], object]
    connect: Callable[..., str] = connect_broker
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
    prompt: Callable[[str], None] = lambda line: None  # asks the installer to tap (the CLI prints it)


def run_selftest(
    config_path: Path,
    adapters: Adapters,
    tap_timeout: float | None = None,
    broker_timeout: float = 5.0,
    emit: Callable[[CheckResult], None] = lambda r: None,
) -> list[CheckResult]:
    results: list[CheckResult] = []

    def add(result: CheckResult) -> None:
        results.append(result)
        log_event(
            log,
            "selftest.check",
            logging.INFO if not result.failed else logging.WARNING,
            check=result.name,
            status=result.status,
            found=result.found,
        )
        emit(result)

    result, config = check_config(config_path)
    add(result)
    if config is None:
        for name in ("reader", "tap", "sam", "database", "event log chain", "blacklist", "broker", "clock", "outputs"):
            add(skipped(name, "not checked: the configuration is not valid"))
        return results
    now = adapters.now()
    result, reader = check_reader(config, adapters.open_reader)
    add(result)
    try:
        add(check_tap(reader, tap_timeout, config.terminal.enterprise_id, adapters.prompt))
    finally:
        if reader is not None:
            reader.close()
    add(check_sam(config, adapters.open_sam, now))
    for r in check_database(config):
        add(r)
    add(check_blacklist(config))
    add(check_broker(config, now, adapters.connect, broker_timeout))
    add(check_clock(config, now))
    try:
        outputs = adapters.make_outputs(config)
    except Exception as exc:  # the driver could not even start: same report as a failing output
        add(
            failed(
                "outputs",
                f"{config.output.driver} driver did not start ({type(exc).__name__}: {exc})",
                "check the output wiring and the [output] driver settings",
            )
        )
    else:
        try:
            add(check_outputs(outputs, config.output.driver))
        finally:
            if hasattr(outputs, "close"):
                outputs.close()  # the strike released, the pins freed for the terminal
    return results


def all_passed(results: list[CheckResult]) -> bool:
    return not any(r.failed for r in results)


# --------------------------------------------------------------------------------------------------
# the sign-off record
# --------------------------------------------------------------------------------------------------


def render_report(
    results: list[CheckResult],
    config: Config | None,
    config_path: Path,
    when: dt.datetime,
    technician: str = "",
    customer: str = "",
) -> str:
    t = config.terminal if config else None
    verdict = "ALL CHECKS PASSED" if all_passed(results) else "FAILED: see the FAIL lines and their fixes"
    skipped_names = [r.name for r in results if r.status == SKIP]
    lines = [
        "onecard terminal installation record",
        "=====================================",
        "",
        f"Terminal ID:     {t.id if t else '(config invalid)'}",
        f"Kind / name:     {t.kind + ' / ' + t.name if t else ''}",
        f"Enterprise:      {t.enterprise_id.hex() if t else ''}",
        f"Configuration:   {config_path}",
        f"Host:            {socket.gethostname()}",
        f"Self-test date:  {when:%Y-%m-%d %H:%M:%S} UTC",
        "",
        "Self-test results",
        "-----------------",
        *[line for r in results for line in r.lines()],
        "",
        f"Result: {verdict}",
    ]
    if skipped_names:
        lines.append(f"Not checked: {', '.join(skipped_names)} (reason on each SKIP line)")
    lines += [
        "",
        "Sign-off",
        "--------",
        "The terminal was installed and the self-test above was run in the presence of both parties.",
        "",
        f"Technician name:  {technician or '________________________'}   "
        "Signature: ________________   Date: __________",
        f"Customer name:    {customer or '________________________'}   Signature: ________________   Date: __________",
        "",
    ]
    return "\n".join(lines)


def write_report(path: Path, text: str, force: bool = False) -> None:
    """Refuses to replace a record that may already be signed."""
    from common.errors import UserError

    if path.exists() and not force:
        raise UserError(f"report {path} exists (it may be signed already); choose another file or pass --force")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UserError(f"cannot write report {path} ({exc.strerror}); choose a writable path") from None
