"""X.509 helpers shared by the platform's CA and the test PKI."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


def subject_alt_names(hosts) -> x509.SubjectAlternativeName:
    """A server certificate's names: IP addresses as such, anything else as a DNS name."""
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path
