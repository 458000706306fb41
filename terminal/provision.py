"""`onecard terminal provision`: enrol a terminal - key pair, CSR, certificate, firmware.toml and its SAM binding.

Safe to re-run: what exists and fits is kept, what exists and differs is refused unless --force (docs/install.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import files
from common.errors import EXIT_AWAITING_CERTIFICATE  # CSR written, certificate awaited: not an error
from common.logs import log_event
from sam.interface import KeyInfo
from terminal.sam_binding import (  # noqa: F401 (the binding's names, as provisioning has always offered them)
    BINDING_FORMAT,
    BindingError,
    bind_sam,
    binding_path,
    binding_problem,
    check_bound_sam,
    read_binding,
    sam_fingerprint,
)

log = logging.getLogger("onecard.provision")

# The documented firmware.toml as package data: in a checkout a link to the repository's, in a wheel a copy.
REPO_TEMPLATE = Path(__file__).resolve().parent / "data" / "firmware.toml"
KEY_NAME, CSR_NAME, CERT_NAME = "mqtt-terminal.key", "mqtt-terminal.csr", "mqtt-terminal.pem"
CA_NAME, PUB_NAME, CONFIG_NAME = "mqtt-ca.pem", "platform-ed25519.pub", "firmware.toml"


class ProvisionError(Exception):
    """One line: the problem and the fix."""


# --------------------------------------------------------------------------------------------------
# firmware.toml from the documented template, comments kept
# --------------------------------------------------------------------------------------------------

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_KEY = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_config(template: str, values: dict[tuple[str, str], object], remove: set[tuple[str, str]]) -> str:
    """Set `values` in the template, keeping its comments: a key's line (or its commented-out example) is replaced,
    a key the section lacks is added at the section's end; keys in `remove` are commented out."""
    lines = template.splitlines()
    out: list[str] = []
    section = None
    done: set[tuple[str, str]] = set()

    def flush_section(name: str | None) -> None:
        if name is None:
            return
        missing = [(s, k) for (s, k) in values if s == name and (s, k) not in done]
        # Before the blank lines and comments that introduce the next section.
        insert_at = len(out)
        while insert_at > 0 and (not out[insert_at - 1].strip() or out[insert_at - 1].lstrip().startswith("#")):
            insert_at -= 1
        for s, k in missing:
            out.insert(insert_at, f"{k} = {toml_value(values[(s, k)])}")
            insert_at += 1
            done.add((s, k))

    for line in lines:
        m = _SECTION.match(line)
        if m:
            flush_section(section)
            section = m.group(1).strip()
            out.append(line)
            continue
        k = _KEY.match(line)
        if section is not None and k:
            key = (section, k.group(2))
            if key in values and key not in done:
                out.append(f"{k.group(2)} = {toml_value(values[key])}")
                done.add(key)
                continue
            if key in values or (key in remove and not k.group(1)):
                out.append(f"# {line}" if not k.group(1) else line)
                continue
        out.append(line)
    flush_section(section)
    for s in sorted({s for (s, _) in values if (s, _) not in done}):
        out += ["", f"[{s}]"] + [f"{k} = {toml_value(v)}" for (s2, k), v in values.items() if s2 == s]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# keys, CSR and certificate
# --------------------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a key or config."""
    files.write_atomically(path, data, mode=mode)


def _public_der(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ProvisionError(
            f"{path} is not an unencrypted PEM private key ({exc}); move it away or pass --force to make a new key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{path} is not an EC key; move it away or pass --force to make a new P-256 key")
    return key


def make_csr(key, terminal_id: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def certificate_fits(cert_pem: bytes, key, terminal_id: str, now: dt.datetime) -> str | None:
    """Why this certificate cannot serve this terminal and key, or None."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        return f"not a PEM certificate ({exc})"
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != terminal_id:
        return f"its CN is {cns[0].value if cns else None!r}, not the terminal ID {terminal_id}"
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        return "it is for another key than this terminal's"
    if now >= cert.not_valid_after_utc:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --------------------------------------------------------------------------------------------------
# the provisioning run
# --------------------------------------------------------------------------------------------------


@dataclass
class Request:
    terminal_id: str
    kind: str
    enterprise_id: str
    etc_dir: Path
    data_dir: Path
    broker_host: str
    broker_port: int
    broker_ca: Path
    platform_public_key: Path
    name: str = "onecard terminal"
    timezone: str | None = None
    reader_driver: str = "pcsc"
    reader: str = ""
    sam_backend: str = "keystore"
    keystore: Path | None = None
    passphrase_file: Path | None = None
    device_secret_file: Path | None = None
    sam_reader: str = ""
    door_group: int | None = None
    ca_dir: Path | None = None  # lab: sign the CSR here and now with this CA
    cert: Path | None = None  # the certificate the platform operator signed from our CSR
    template: Path = REPO_TEMPLATE
    owner: str | None = None  # the unprivileged user the services run as
    force: bool = False


def validate(r: Request) -> None:
    from common.config import KINDS, READER_DRIVERS, SAM_BACKENDS

    if not (r.terminal_id.isdigit() and len(r.terminal_id) == 12):
        raise ProvisionError(
            f"--id {r.terminal_id!r} is not 12 digits; use the terminal number the platform "
            "registered, e.g. 000000000042"
        )
    if not (r.enterprise_id.isdigit() and len(r.enterprise_id) == 8):
        raise ProvisionError(f"--enterprise {r.enterprise_id!r} is not 8 digits; e.g. 00010001")
    if r.kind not in KINDS:
        raise ProvisionError(f"--kind {r.kind!r} is not one of {', '.join(KINDS)}; pick one")
    if r.reader_driver not in READER_DRIVERS:
        raise ProvisionError(f"--reader-driver {r.reader_driver!r} is not one of {', '.join(READER_DRIVERS)}")
    if not r.reader:
        raise ProvisionError(
            "--reader is empty; give the PC/SC reader name (pcsc_scan shows it), the nfcpy path "
            "(e.g. tty:AMA0:pn532) or the simulated card file"
        )
    if r.sam_backend not in SAM_BACKENDS:
        raise ProvisionError(f"--sam {r.sam_backend!r} is not one of {', '.join(SAM_BACKENDS)}")
    if r.sam_backend == "keystore":
        if r.keystore is None:
            raise ProvisionError("--sam keystore needs --keystore PATH (the file from the key-card administrator)")
        if (r.passphrase_file is None) == (r.device_secret_file is None):
            raise ProvisionError("--sam keystore needs exactly one of --passphrase-file and --device-secret-file")
    elif not r.sam_reader:
        raise ProvisionError("--sam psam needs --sam-reader NAME (the SAM slot's PC/SC reader name)")
    if r.ca_dir is not None and r.cert is not None:
        raise ProvisionError(
            "--ca-dir and --cert both given; use --ca-dir in the lab or --cert with the "
            "certificate the platform operator signed, not both"
        )
    for option, path in (
        ("--broker-ca", r.broker_ca),
        ("--platform-public-key", r.platform_public_key),
        ("--template", r.template),
    ):
        if not Path(path).is_file():
            raise ProvisionError(f"{option} {path} does not exist; give the file's path")
    if not 0 < r.broker_port <= 65535:
        raise ProvisionError(f"--broker-port {r.broker_port} is not a TCP port; use 8883")


def config_values(r: Request) -> tuple[dict[tuple[str, str], object], set[tuple[str, str]]]:
    e = r.etc_dir
    values: dict[tuple[str, str], object] = {
        ("terminal", "id"): r.terminal_id,
        ("terminal", "kind"): r.kind,
        ("terminal", "enterprise_id"): r.enterprise_id,
        ("terminal", "name"): r.name,
        ("terminal", "database"): str(r.data_dir / "events.db"),
        ("terminal", "blacklist"): str(r.data_dir / "blacklist.db"),
        ("reader", "driver"): r.reader_driver,
        ("sam", "backend"): r.sam_backend,
        ("sync", "broker_host"): r.broker_host,
        ("sync", "broker_port"): r.broker_port,
        ("sync", "ca_file"): str(e / CA_NAME),
        ("sync", "cert_file"): str(e / CERT_NAME),
        ("sync", "key_file"): str(e / KEY_NAME),
        ("sync", "platform_public_key"): str(e / PUB_NAME),
        ("sync", "database"): str(r.data_dir / "sync.db"),
    }
    remove: set[tuple[str, str]] = set()
    if r.timezone:
        values[("terminal", "timezone")] = r.timezone
    reader_key = {"pcsc": "name", "nfc": "path", "simulator": "card"}[r.reader_driver]
    values[("reader", reader_key)] = r.reader
    remove |= {("reader", k) for k in ("name", "path", "card") if k != reader_key}
    if r.sam_backend == "keystore":
        values[("sam", "keystore")] = str(Path(r.keystore).resolve())
        if r.passphrase_file is not None:
            values[("sam", "passphrase_file")] = str(Path(r.passphrase_file).resolve())
            remove.add(("sam", "device_secret_file"))
        else:
            values[("sam", "device_secret_file")] = str(Path(r.device_secret_file).resolve())
            remove.add(("sam", "passphrase_file"))
        remove.add(("sam", "reader"))
    else:
        values[("sam", "reader")] = r.sam_reader
        remove |= {("sam", "keystore"), ("sam", "passphrase_file"), ("sam", "device_secret_file")}
    if r.door_group is not None:
        values[("door", "group")] = r.door_group
    return values, remove


class Provisioner:
    STEPS = 7

    def __init__(
        self,
        request: Request,
        say: Callable[[str], None] = lambda line: None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        lab_ca: Callable[[Path, bytes, dt.datetime], bytes] | None = None,
    ) -> None:
        """`lab_ca(ca_dir, csr_pem, now) -> certificate PEM` signs at once with a lab CA (--ca-dir); the command
        line wires in the platform's CA code, which the terminal itself never imports."""
        # Absolute paths in the config: relative ones would be read relative to the config's own directory.
        request.etc_dir, request.data_dir = Path(request.etc_dir).absolute(), Path(request.data_dir).absolute()
        if request.reader_driver == "simulator":
            request.reader = str(Path(request.reader).absolute())
        self.r, self._say, self.now, self.lab_ca = request, say, now, lab_ca
        self.step = 0
        e = request.etc_dir
        self.key_path, self.csr_path, self.cert_path = e / KEY_NAME, e / CSR_NAME, e / CERT_NAME
        self.ca_path, self.pub_path, self.config_path = e / CA_NAME, e / PUB_NAME, e / CONFIG_NAME

    def say(self, what: str, text: str, **fields) -> None:
        self.step += 1
        self._say(f"[{self.step}/{self.STEPS}] {what}: {text}")
        log_event(log, f"provision.{what.replace(' ', '_')}", terminal=self.r.terminal_id, text=text, **fields)

    def run(self) -> int:
        r = self.r
        validate(r)
        try:
            r.etc_dir.mkdir(parents=True, exist_ok=True)
            r.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProvisionError(
                f"cannot create {exc.filename} ({exc.strerror}); run as root or choose "
                "--etc-dir/--data-dir you can write"
            ) from None
        self.say(
            "settings",
            f"terminal {r.terminal_id} ({r.kind}) of enterprise {r.enterprise_id}, files in "
            f"{r.etc_dir}, data in {r.data_dir}",
        )
        key = self.key()
        self.csr(key)
        if not self.certificate(key):
            return EXIT_AWAITING_CERTIFICATE
        self.trust()
        self.config_and_binding()
        self.chown()
        self._say(
            f"done: terminal {r.terminal_id} provisioned. Next: onecard terminal selftest --config "
            f"{self.config_path} --tap-timeout 30 --report install-record.txt"
        )
        return 0

    # -- steps -----------------------------------------------------------------------------------------

    def key(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if self.key_path.exists() and not self.r.force:
            key = load_private_key(self.key_path)
            self.say("key", f"kept the existing key {self.key_path} (--force makes a new one)")
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        _write_file(
            self.key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        self.say("key", f"generated an EC P-256 key in {self.key_path} (mode 0600)")
        return key

    def csr(self, key) -> None:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        if self.csr_path.exists():
            try:
                old = x509.load_pem_x509_csr(self.csr_path.read_bytes())
                cn = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                if (
                    cn
                    and cn[0].value == self.r.terminal_id
                    and _public_der(old.public_key()) == _public_der(key.public_key())
                ):
                    self.say("csr", f"kept {self.csr_path} (CN={self.r.terminal_id}, this key)")
                    return
            except ValueError:
                pass  # a damaged request is rewritten: it holds nothing secret and nothing else refers to it
        _write_file(self.csr_path, make_csr(key, self.r.terminal_id), 0o644)
        self.say("csr", f"wrote {self.csr_path} (CN={self.r.terminal_id}, the broker username)")

    def certificate(self, key) -> bool:
        r = self.r
        now = self.now()
        existing = self.cert_path.read_bytes() if self.cert_path.exists() else None
        if r.cert is not None:
            try:
                pem = Path(r.cert).read_bytes()
            except OSError as exc:
                raise ProvisionError(
                    f"cannot read --cert {r.cert} ({exc.strerror}); give the certificate file the "
                    "platform operator returned"
                ) from None
            problem = certificate_fits(pem, key, r.terminal_id, now)
            if problem:
                raise ProvisionError(
                    f"--cert {r.cert} does not fit this terminal: {problem}; have "
                    f"{self.csr_path} signed again (onecard platform ca sign)"
                )
            if not issued_by(pem, Path(r.broker_ca).read_bytes()):
                raise ProvisionError(
                    f"--cert {r.cert} was not issued by the CA in --broker-ca {r.broker_ca}; use "
                    "the platform's CA certificate, or have the CSR signed by the platform CA"
                )
            self._replace(self.cert_path, existing, pem, "certificate")
            self.say("certificate", f"installed {r.cert} as {self.cert_path}")
            return True
        if existing is not None and certificate_fits(existing, key, r.terminal_id, now) is None and not r.force:
            self.say("certificate", f"kept {self.cert_path} (fits this key and terminal)")
            return True
        if r.ca_dir is not None:
            from cryptography import x509

            if self.lab_ca is None:
                raise ProvisionError(
                    "--ca-dir needs the lab CA, which only the onecard command wires in; have the "
                    "CSR signed by the platform operator and pass --cert"
                )
            pem = self.lab_ca(r.ca_dir, self.csr_path.read_bytes(), now)
            cert = x509.load_pem_x509_certificate(pem)
            self._replace(self.cert_path, existing, pem, "certificate")
            self.say(
                "certificate",
                f"signed by the CA in {r.ca_dir}, valid until {cert.not_valid_after_utc:%Y-%m-%d}: {self.cert_path}",
            )
            return True
        why = f" ({certificate_fits(existing, key, r.terminal_id, now)})" if existing is not None else ""
        self.say(
            "certificate",
            f"none yet{why}. Take {self.csr_path} to the platform operator, who runs: onecard "
            f"platform ca sign --dir CA --csr {self.csr_path.name} --out {r.terminal_id}.pem; "
            f"then run this command again with --cert {r.terminal_id}.pem",
        )
        return False

    def trust(self) -> None:
        for src, dst, what in (
            (self.r.broker_ca, self.ca_path, "broker CA"),
            (self.r.platform_public_key, self.pub_path, "platform public key"),
        ):
            data = Path(src).read_bytes()
            old = dst.read_bytes() if dst.exists() else None
            if Path(src).resolve() != dst.resolve():
                self._replace(dst, old, data, what)
        self.say("trust", f"broker CA in {self.ca_path}, platform public key in {self.pub_path}")

    def config_and_binding(self) -> None:
        from common.config import ConfigError, load_config

        r = self.r
        try:
            template = Path(r.template).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProvisionError(
                f"cannot read the template {r.template} ({exc.strerror}); pass --template with "
                "the documented firmware.toml"
            ) from None
        values, remove = config_values(r)
        text = render_config(template, values, remove).encode()
        old = self.config_path.read_bytes() if self.config_path.exists() else None
        if old is not None and old != text and not r.force:
            raise ProvisionError(
                f"{self.config_path} exists with other settings; compare it with the new settings, "
                "then pass --force to replace it"
            )
        # Validated and its SAM bound under a temporary name: a config that fails either never becomes the real one.
        candidate = self.config_path.with_name(f".{CONFIG_NAME}.new")
        _write_file(candidate, text, 0o640)
        try:
            try:
                config = load_config(candidate)
            except ConfigError as exc:
                raise ProvisionError(
                    f"the generated configuration is invalid ({exc}); check the options given"
                ) from None
            name, infos = open_bindable_sam(config)
            self.say("sam", bind_sam(self.config_path, r.terminal_id, r.sam_backend, name, infos, self.now(), r.force))
            os.replace(candidate, self.config_path)
        finally:
            if candidate.exists():
                candidate.unlink()
        self.say("config", f"{'kept' if old == text else 'wrote'} {self.config_path}; it passes check-config")

    def chown(self) -> None:
        owner = self.r.owner
        if not owner:
            return
        try:
            for p in (self.key_path, self.cert_path, self.config_path, binding_path(self.config_path), self.r.data_dir):
                shutil.chown(p, owner, owner)
        except (LookupError, OSError) as exc:
            raise ProvisionError(
                f"cannot give the files to user {owner!r} ({exc}); create it first "
                "(deploy/systemd/onecard.sysusers.conf) or run as root"
            ) from None

    def _replace(self, path: Path, old: bytes | None, new: bytes, what: str) -> None:
        if old == new:
            return
        if old is not None and not self.r.force:
            raise ProvisionError(f"{path} ({what}) exists with other content; pass --force to replace it")
        _write_file(path, new, 0o644)


def open_bindable_sam(config) -> tuple[str, list[KeyInfo]]:
    """(name, key infos) of the configured SAM, refusing one without the keys the terminal kind needs."""
    from common.errors import UserError
    from terminal.adapters import open_sam
    from terminal.selftest import KIND_ROLE, missing_keys

    t = config.terminal
    try:
        sam = open_sam(config, check_binding=False)
    except UserError as exc:
        raise ProvisionError(f"cannot bind the SAM: {exc}") from None
    try:
        infos = sam.key_infos()
        name = getattr(sam, "name", "") or str(config.sam.keystore)
    finally:
        if hasattr(sam, "close"):
            sam.close()
    missing = missing_keys(infos, t.enterprise_id, t.kind)
    if missing:
        raise ProvisionError(
            f"the SAM lacks the {t.kind} keys of enterprise {t.enterprise_id.hex()}: "
            f"{', '.join(missing)}; ask the key-card administrator for a keystore made with "
            f"onecard sam restrict --role {KIND_ROLE[t.kind]}"
        )
    return name, infos


def rebind(config_path: Path, say: Callable[[str], None]) -> int:
    """Bind the SAM now in the terminal to an existing configuration (a replaced PSAM or a new keystore)."""
    from terminal.adapters import read_config

    config = read_config(config_path)
    name, infos = open_bindable_sam(config)
    say(
        "[1/1] sam: "
        + bind_sam(
            Path(config_path),
            config.terminal.id,
            config.sam.backend,
            name,
            infos,
            dt.datetime.now(dt.timezone.utc),
            force=True,
        )
    )
    return 0
