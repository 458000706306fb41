"""A card's OTA keys (KIc, KID of SCP80, docs/ota.md section 2): diversified per card, used only inside sam/.

KIc and KID are diversified (AN10922, sam/crypto.py) from the enterprise's UPDATE master key, with the card's
ASN and enterprise ID followed by a label ("KIc" or "KID") as the diversification input, so they differ from
each other and from the card's UPDATE key, and one card's OTA keys reveal nothing of another's. The platform
secures packets and opens PoRs through `OtaSam`; the keys never leave it. Issuing hands them to the card
once, with the other card keys (`personalise_keys`, usage PERSONALISE).
"""

from __future__ import annotations

from common import ota
from sam import crypto
from sam.interface import Algorithm, CardIdentity, InvalidCardIdentity, KeyNotFound, KeyPurpose, KeyUsage, KeyUsageError
from sam.keystore import Keystore, describe_key
from sam.roles import CARD_ISSUER

LABEL_KIC = b"KIc"
LABEL_KID = b"KID"


def diversify_ota_keys(update_master: bytes, card: CardIdentity, version: int = 1) -> ota.OtaKeys:
    """KIc = div(K_UPDATE master, ASN || EID || 'KIc'), KID = div(K_UPDATE master, ASN || EID || 'KID')."""
    try:
        m = crypto.card_diversification_input(card.asn, card.enterprise_id)
    except (TypeError, ValueError) as e:
        raise InvalidCardIdentity(f"cannot diversify OTA keys: {e}; the card data is malformed") from None
    alg = Algorithm.AES128
    return ota.OtaKeys(
        crypto.diversify(alg, update_master, m + LABEL_KIC),
        crypto.diversify(alg, update_master, m + LABEL_KID),
        version,
    )


class OtaSam:
    """The platform's OTA security module over a keystore holding the enterprises' UPDATE master keys."""

    def __init__(self, keystore: Keystore) -> None:
        self._keystore = keystore

    def __repr__(self) -> str:
        return f"OtaSam(<{len(self._keystore)} keys>)"

    def _keys(self, card: CardIdentity, usage: KeyUsage) -> ota.OtaKeys:
        # The card issuer (00000000, `card.asn` the card serial) has one master key, TRANSPORT version 0 (the one
        # K_CARD comes from): its OTA keys carry the packets of issuing over the air (docs/ota.md 2.1).
        purpose, version = (
            (KeyPurpose.TRANSPORT, 0) if card.enterprise_id == CARD_ISSUER else (KeyPurpose.UPDATE, card.key_version)
        )
        master = self._keystore.get(card.enterprise_id, purpose, version, Algorithm.AES128)
        if master is None:
            what = describe_key(card.enterprise_id, purpose, version, Algorithm.AES128)
            raise KeyNotFound(
                f"no master key for {what}; OTA keys are diversified from it: install a keystore that holds it"
            )
        if usage not in master.usages:
            raise KeyUsageError(
                f"the {purpose.value.upper()} master key may not be used for {usage.value}; OTA needs it with 'mac'"
            )
        return diversify_ota_keys(master.key.reveal(), card)

    def secure_command(self, card: CardIdentity, tar: bytes, cntr: int, data: bytes) -> bytes:
        return ota.build_command(self._keys(card, KeyUsage.MAC), tar, cntr, data)

    def open_por(self, card: CardIdentity, user_data: bytes) -> ota.Por:
        return ota.open_por(user_data, self._keys(card, KeyUsage.MAC))

    def issuer(self, serial: bytes) -> CardIdentity:
        """The identity that names a version 2 card's issuer OTA keys: enterprise 00000000, ASN = card serial."""
        return CardIdentity(serial, CARD_ISSUER, 0, Algorithm.AES128)

    def personalise_keys(self, card: CardIdentity) -> ota.OtaKeys:
        """The card's OTA keys for writing into it at issuing: usage PERSONALISE, as every card key."""
        return self._keys(card, KeyUsage.PERSONALISE)
