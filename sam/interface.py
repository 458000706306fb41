"""The one SAM interface every terminal application uses; key bytes never cross it.

A SAM (hardware PSAM or software keystore) holds enterprise master keys. Callers name a key by
(enterprise, purpose, version) and hand over the card's identity; the SAM diversifies the card key
internally and MACs or verifies. Verification failures raise, so a forgotten check cannot pass.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Algorithm(enum.IntEnum):
    """Block cipher of a card application, as its algorithm ID byte on the card."""

    AES128 = 0x01
    SM4 = 0x02


class KeyPurpose(enum.Enum):
    """What a master key is for; each card key is diversified from exactly one of these."""

    ACCESS = "access"        # door / attendance authenticated read (card MACs its answer)
    UPDATE = "update"        # secured writes to card files (issuing, re-keying)
    TRANSPORT = "transport"  # initial keys a card leaves the factory with, replaced by card washing


class KeyUsage(enum.Enum):
    """What a SAM may do with a master key: a door terminal's access key may only verify."""

    VERIFY = "verify"  # verify MACs produced by cards
    MAC = "mac"        # compute MACs that cards will check (terminal-side MACs)
    PERSONALISE = "personalise"  # hand out diversified card keys, only to personalise a card at issuing


@dataclass(frozen=True)
class CardIdentity:
    """What the SAM needs to know about a card to diversify its key.

    asn: 8-byte application serial number; enterprise_id: 4-byte BCD enterprise ID.
    """

    asn: bytes
    enterprise_id: bytes
    key_version: int
    algorithm: Algorithm


@dataclass(frozen=True)
class KeyInfo:
    """A key as it may be shown to people: never the key, only its key check value."""

    enterprise_id: bytes
    purpose: KeyPurpose
    version: int
    algorithm: Algorithm
    usages: frozenset[KeyUsage]
    kcv: str  # hex, 3 bytes: first 3 bytes of the cipher applied to 16 zero bytes


class SamError(Exception):
    """Base of every SAM failure; the message names the problem and the fix."""


class KeyNotFound(SamError):
    """No master key for this (enterprise, purpose, version, algorithm)."""


class KeyUsageError(SamError):
    """The key exists but is not allowed for this operation."""


class MacVerificationError(SamError):
    """A MAC did not verify: the data is forged, altered, or from a cloned card."""


class InvalidCardIdentity(SamError, ValueError):
    """The CardIdentity cannot name a card key (wrong ASN or enterprise ID length)."""


class Sam(Protocol):
    def has_key(self, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> bool:
        """True when the SAM holds this master key (any usage)."""

    def verify_card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes, mac: bytes) -> None:
        """Diversify the card key and check a card's MAC over message; raise MacVerificationError if it differs."""

    def card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes) -> bytes:
        """Diversify the card key and compute the 8-byte MAC a card will check over message."""

    def key_infos(self) -> list[KeyInfo]:
        """Every key the SAM holds, described without key bytes."""
