"""SoftwareSam: the Sam protocol over a keystore file, for terminals without a hardware PSAM and for tests."""
from __future__ import annotations

import os
from typing import Iterable

from sam import crypto
from sam.interface import (
    Algorithm,
    CardIdentity,
    InvalidCardIdentity,
    KeyInfo,
    KeyNotFound,
    KeyPurpose,
    KeyUsage,
    KeyUsageError,
    MacVerificationError,
)
from sam.keystore import TRANSPORT_VERSION, Keystore, KeystoreUnlock, MasterKey, describe_key, load_keystore

# No cache of derived card keys: measured on the development machine (cryptography 50), a
# derivation takes about 17 µs and a whole verify_card_mac about 20 µs, against a card
# transaction of tens of milliseconds; a cache would only keep card keys in memory for longer.


class SoftwareSam:
    """A SAM whose master keys live in this process; card keys are derived per call and dropped."""

    def __init__(self, keystore: Keystore) -> None:
        self._keystore = keystore

    @classmethod
    def open(cls, path: str | os.PathLike[str], unlock: KeystoreUnlock) -> SoftwareSam:
        return cls(load_keystore(path, unlock))

    def __repr__(self) -> str:
        return f"SoftwareSam(<{len(self._keystore)} keys>)"

    def has_key(self, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> bool:
        return self._keystore.get(enterprise_id, purpose, version, algorithm) is not None

    def verify_card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes, mac: bytes) -> None:
        algorithm, card_key = self._card_key(purpose, card, KeyUsage.VERIFY)
        if len(mac) != crypto.MAC_SIZE:
            raise MacVerificationError(
                f"card MAC is {len(mac)} bytes, expected {crypto.MAC_SIZE} (card ASN {card.asn.hex()}); reject the card"
            )
        if not crypto.mac8_matches(algorithm, card_key, message, mac):
            raise MacVerificationError(
                f"card MAC does not verify for {purpose.value} (card ASN {card.asn.hex()}, enterprise "
                f"{card.enterprise_id.hex()}): the data is forged, altered, or from a cloned card; reject the card"
            )

    def card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes) -> bytes:
        algorithm, card_key = self._card_key(purpose, card, KeyUsage.MAC)
        return crypto.mac8(algorithm, card_key, message)

    def key_infos(self) -> list[KeyInfo]:
        return self._keystore.infos()

    def derive_card_keys(self, card: CardIdentity, purposes: Iterable[KeyPurpose]) -> dict[KeyPurpose, bytes]:
        """The card's diversified keys, for writing into a card being personalised at an issuing terminal.

        This is the only way key bytes leave the SAM; it needs KeyUsage.PERSONALISE on every master
        key asked for, and checks them all before deriving any, so a refusal hands out nothing.
        """
        m = _diversification_input(card)
        masters = [self._master(purpose, card, KeyUsage.PERSONALISE) for purpose in dict.fromkeys(purposes)]
        return {master.purpose: crypto.diversify(master.algorithm, master.key.reveal(), m) for master in masters}

    def _card_key(self, purpose: KeyPurpose, card: CardIdentity, usage: KeyUsage) -> tuple[Algorithm, bytes]:
        # The card's identity is checked before any key lookup: a malformed card is the card's
        # fault and must not be reported as a missing or restricted key.
        m = _diversification_input(card)
        master = self._master(purpose, card, usage)
        return master.algorithm, crypto.diversify(master.algorithm, master.key.reveal(), m)

    def _master(self, purpose: KeyPurpose, card: CardIdentity, usage: KeyUsage) -> MasterKey:
        algorithm = _card_algorithm(card)
        # A card has one key version for its issued keys; transport keys are always version 0.
        version = TRANSPORT_VERSION if purpose is KeyPurpose.TRANSPORT else card.key_version
        if type(version) is not int or not 0 <= version <= 255:
            raise InvalidCardIdentity(f"card key version {version!r} is not 0..255; the card data is malformed, reject the card")
        master = self._keystore.get(card.enterprise_id, purpose, version, algorithm)
        if master is None:
            raise KeyNotFound(
                f"this SAM has no master key for {describe_key(card.enterprise_id, purpose, version, algorithm)}; "
                "install a keystore that holds it ('onecard sam list' shows what a keystore holds)"
            )
        if usage not in master.usages:
            allowed = ", ".join(sorted(u.value for u in master.usages))
            raise KeyUsageError(
                f"master key {master.describe()} may not be used to {usage.value} (allowed: {allowed}); "
                f"install a keystore whose key allows {usage.value} ('onecard sam restrict' shapes one per terminal role)"
            )
        return master


def _card_algorithm(card: CardIdentity) -> Algorithm:
    try:
        return Algorithm(card.algorithm)
    except (TypeError, ValueError):
        shown = f"0x{card.algorithm:02x}" if isinstance(card.algorithm, int) else repr(card.algorithm)
        raise InvalidCardIdentity(
            f"card algorithm ID {shown} is not supported (0x01 AES-128, 0x02 SM4); reject the card"
        ) from None


def _diversification_input(card: CardIdentity) -> bytes:
    try:
        return crypto.card_diversification_input(card.asn, card.enterprise_id)
    except (TypeError, ValueError) as e:
        raise InvalidCardIdentity(f"cannot diversify a card key: {e}; the card data is malformed, reject the card") from None
