"""The request a holder's SIM sends to delete one of its enterprise sub-applications (docs/phone-menu.md 4): what
the card froze when it voided the sub-application, MAC'd by the card under that sub-application's K_TAC, which only
the card and the platform hold. Sans-I/O: the SIM builds it, the platform parses it and has the MAC verified."""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"DL"
VERSION = 0x01
SIGNED_LENGTH = 25
LENGTH = SIGNED_LENGTH + 8


class DeletionRequestError(ValueError):
    """Bytes that are not a deletion request; the message says why."""


@dataclass(frozen=True)
class DeletionRequest:
    asn: bytes  # 8
    enterprise_id: bytes  # 4
    algorithm: int  # sam.interface.Algorithm value of the sub-application
    key_version: int  # of its purse keys (K_TAC)
    frozen_balance: int  # fen, the balance the card froze when it voided the sub-application
    offline_counter: int
    online_counter: int

    def __post_init__(self) -> None:
        if len(self.asn) != 8 or len(self.enterprise_id) != 4:
            raise DeletionRequestError("ASN must be 8 bytes and enterprise ID 4 bytes")
        for name, value, top in (
            ("algorithm", self.algorithm, 0xFF),
            ("key version", self.key_version, 0xFF),
            ("frozen balance", self.frozen_balance, 0xFFFFFFFF),
            ("offline counter", self.offline_counter, 0xFFFF),
            ("online counter", self.online_counter, 0xFFFF),
        ):
            if not 0 <= value <= top:
                raise DeletionRequestError(f"{name} {value} is not 0..{top}")

    def signed_part(self) -> bytes:
        """The 25 bytes the card MACs: 44 4C 01 || ASN || enterprise ID || algorithm || key version || frozen
        balance (4) || offline counter (2) || online counter (2)."""
        return (
            MAGIC
            + bytes([VERSION])
            + self.asn
            + self.enterprise_id
            + bytes([self.algorithm, self.key_version])
            + self.frozen_balance.to_bytes(4, "big")
            + self.offline_counter.to_bytes(2, "big")
            + self.online_counter.to_bytes(2, "big")
        )

    def encode(self, mac: bytes) -> bytes:
        if len(mac) != 8:
            raise DeletionRequestError(f"MAC of {len(mac)} bytes, expected 8")
        return self.signed_part() + mac


def parse(data: bytes) -> tuple[DeletionRequest, bytes]:
    """(request, MAC) of a deletion request; DeletionRequestError for anything else."""
    if len(data) != LENGTH:
        raise DeletionRequestError(f"a deletion request is {LENGTH} bytes, got {len(data)}")
    if data[:2] != MAGIC:
        raise DeletionRequestError(f"not a deletion request (starts {data[:2].hex()}, expected 444c)")
    if data[2] != VERSION:
        raise DeletionRequestError(f"deletion request version {data[2]}, this platform reads version {VERSION}")
    request = DeletionRequest(
        asn=data[3:11],
        enterprise_id=data[11:15],
        algorithm=data[15],
        key_version=data[16],
        frozen_balance=int.from_bytes(data[17:21], "big"),
        offline_counter=int.from_bytes(data[21:23], "big"),
        online_counter=int.from_bytes(data[23:25], "big"),
    )
    return request, data[25:]
