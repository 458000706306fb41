"""A throwaway test CA with server, terminal and platform certificates (tests, benchmarks, the demo).

Production terminals get their certificates from the platform's CA (central/ca.py) at provisioning.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.pki import CertFiles, subject_alt_names


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "onecard test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertFiles:
    path.parent.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = path.with_suffix(".pem"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return CertFiles(cert_path, key_path)


class TestCa:
    """A throwaway CA (P-256 ECDSA: fast handshakes for 50 terminals at once)."""

    def __init__(self, directory: Path, now: dt.datetime | None = None, days: int = 30) -> None:
        self.dir = Path(directory)
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self.days = days
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            self._builder(_name("onecard test CA"), self.key.public_key())
            .issuer_name(_name("onecard test CA"))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.files = _write(self.dir / "ca", self.cert, self.key)

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))  # a long test session keeps using them
            .not_valid_after(self.now + dt.timedelta(days=self.days))
        )

    def issue(self, cn: str, *, server: bool = False, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> CertFiles:
        """A leaf certificate: CN becomes the MQTT username (use_identity_as_username)."""
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            self._builder(_name(cn), key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(subject_alt_names(hosts), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return _write(self.dir / ("server" if server else cn), cert, key)
