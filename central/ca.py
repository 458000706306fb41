"""The platform's certificate authority for MQTT/TLS: one directory, offline, signs terminals' CSRs (CN = terminal ID).

Files: ca.pem (give it to the broker and every terminal), ca.key (0600, never leaves the directory), issued.jsonl.
A directory made by simulator.test_pki.TestCa has the same ca.pem / ca.key layout and can be used as is.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.broker_config import is_worker_cn, worker_cns
from common.files import write_atomically
from common.logs import log_event
from common.pki import subject_alt_names

log = logging.getLogger("onecard.platform.ca")

CA_CERT, CA_KEY, ISSUED_LOG = "ca.pem", "ca.key", "issued.jsonl"
# Shorter than a CA's life, long enough that a terminal in a ceiling is not revisited every year.
DEFAULT_CLIENT_DAYS = 825
DEFAULT_CA_DAYS = 3650


class CaError(Exception):
    """The CA cannot do what was asked; the message names the problem and the fix."""


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def valid_client_cn(cn: str) -> bool:
    """Terminals are 12-digit IDs (the broker ACL's %u); platform workers are platform-w0, platform-w1, ..."""
    return (cn.isdigit() and len(cn) == 12) or is_worker_cn(cn)


class PlatformCa:
    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.dir, self.cert, self.key = Path(directory), cert, key

    @property
    def cert_path(self) -> Path:
        return self.dir / CA_CERT

    @classmethod
    def init(
        cls,
        directory: Path,
        name: str = "onecard platform CA",
        days: int = DEFAULT_CA_DAYS,
        now: dt.datetime | None = None,
    ) -> PlatformCa:
        directory = Path(directory)
        if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
            raise CaError(f"a CA exists in {directory} already; use it, or choose another --dir for a new CA")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = now or dt.datetime.now(dt.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(
            directory / CA_KEY,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            overwrite=False,
        )
        (directory / CA_CERT).write_bytes(_pem(cert))
        log_event(
            log,
            "ca.created",
            directory=directory,
            subject=name,
            not_after=cert.not_valid_after_utc.date(),
            text="platform CA created",
        )
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> PlatformCa:
        directory = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise CaError(
                f"no CA in {directory} ({Path(exc.filename).name} missing); create one with "
                "onecard platform ca init --dir DIR, or point --ca-dir at the CA directory"
            ) from None
        except (ValueError, TypeError) as exc:
            raise CaError(
                f"the CA files in {directory} are not PEM certificate/key ({exc}); restore them from the CA's backup"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"the CA key in {directory} is not an EC key; create the CA with onecard platform ca init")
        return cls(directory, cert, key)

    def _leaf(self, subject_cn: str, public_key, days: int, now: dt.datetime, server_hosts: tuple[str, ...] = ()):
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server_hosts else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server_hosts:
            b = b.add_extension(subject_alt_names(server_hosts), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        self._record(cert, subject_cn, now)
        return cert

    def sign_csr(
        self, csr_pem: bytes, days: int = DEFAULT_CLIENT_DAYS, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """A client certificate for the CSR's CN and key; only the CN is taken from the request."""
        now = now or dt.datetime.now(dt.timezone.utc)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CaError(
                f"the file is not a PEM certificate signing request ({exc}); give the .csr file "
                "onecard terminal provision wrote"
            ) from None
        if not csr.is_signature_valid:
            raise CaError(
                "the CSR's signature does not verify (altered or corrupt); ask the installer for the original .csr file"
            )
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = cns[0].value if cns else ""
        if not valid_client_cn(cn):
            raise CaError(
                f"the CSR's CN is {cn!r}: a terminal certificate's CN must be its 12-digit terminal ID "
                "(the broker's username); make the CSR with onecard terminal provision"
            )
        key = csr.public_key()
        if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
            raise CaError("the CSR's key is not EC P-256; make the CSR with onecard terminal provision")
        if now + dt.timedelta(days=1) > self.cert.not_valid_after_utc:
            raise CaError(
                f"the CA certificate expires on {self.cert.not_valid_after_utc:%Y-%m-%d}; "
                "create a new CA and distribute its ca.pem first"
            )
        cert = self._leaf(cn, key, days, now)
        log_event(
            log,
            "ca.signed",
            cn=cn,
            serial=f"{cert.serial_number:x}",
            not_after=cert.not_valid_after_utc.date(),
            text=f"client certificate issued for {cn}",
        )
        return cert

    def issue_server(
        self, hosts: tuple[str, ...], out_prefix: Path, days: int = DEFAULT_CLIENT_DAYS, now: dt.datetime | None = None
    ) -> tuple[Path, Path]:
        """The broker's certificate and key (made here: a lab convenience; production brokers send a CSR too)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(hosts[0], key.public_key(), days, now, server_hosts=hosts)
        cert_path, key_path = out_prefix.with_suffix(".pem"), out_prefix.with_suffix(".key")
        if cert_path.exists() or key_path.exists():
            raise CaError(f"{cert_path} or {key_path} exists; choose another --out or move them away")
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            overwrite=False,
        )
        cert_path.write_bytes(_pem(cert))
        return cert_path, key_path

    def issue_platform_clients(
        self, workers: int, out_dir: Path, days: int = DEFAULT_CLIENT_DAYS, now: dt.datetime | None = None
    ) -> list[Path]:
        """A key and client certificate for each platform worker (CN platform-wN) in `out_dir`; nothing is
        replaced: an existing file refuses the whole run before anything is written."""
        try:
            cns = worker_cns(workers)
        except ValueError as exc:
            raise CaError(f"{exc}; give --workers as `onecard platform serve --workers`") from None
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise CaError(f"{out_dir} is not a directory; choose a directory for the workers' certificates")
        existing = [f for cn in cns for f in (out_dir / f"{cn}.pem", out_dir / f"{cn}.key") if f.exists()]
        if existing:
            raise CaError(f"{existing[0]} exists; the worker keeps using it (or move it away to issue a new one)")
        now = now or dt.datetime.now(dt.timezone.utc)
        if now + dt.timedelta(days=1) > self.cert.not_valid_after_utc:
            raise CaError(
                f"the CA certificate expires on {self.cert.not_valid_after_utc:%Y-%m-%d}; "
                "create a new CA and distribute its ca.pem first"
            )
        try:
            out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CaError(f"cannot create {out_dir} ({exc.strerror}); choose a writable directory") from None
        written = []
        for cn in cns:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self._leaf(cn, key.public_key(), days, now)
            key_path, cert_path = out_dir / f"{cn}.key", out_dir / f"{cn}.pem"
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
                overwrite=False,
            )
            write_atomically(cert_path, _pem(cert), mode=0o644, overwrite=False)
            log_event(
                log,
                "ca.signed",
                cn=cn,
                serial=f"{cert.serial_number:x}",
                not_after=cert.not_valid_after_utc.date(),
                text=f"platform client certificate issued for {cn}",
            )
            written += [cert_path, key_path]
        return written

    def issued_by_me(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def _record(self, cert: x509.Certificate, cn: str, now: dt.datetime) -> None:
        entry = {
            "cn": cn,
            "serial": f"{cert.serial_number:x}",
            "issued_at": now.isoformat(timespec="seconds"),
            "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        }
        with open(self.dir / ISSUED_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def write_certificate(path: Path, cert: x509.Certificate, overwrite: bool = False) -> None:
    if path.exists() and not overwrite:
        raise CaError(f"{path} exists; choose another --out, or pass --force to replace it")
    path.write_bytes(_pem(cert))
