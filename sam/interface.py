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

    ACCESS = "access"  # door / attendance authenticated read (card MACs its answer)
    UPDATE = "update"  # secured writes to card files (issuing, re-keying)
    TRANSPORT = "transport"  # initial keys a card leaves the factory with, replaced by card washing
    PURCHASE = "purchase"  # e-purse debit session keys (MAC1 / MAC2)
    LOAD = "load"  # e-purse credit session keys (load MAC1 / MAC2 / MAC3)
    TAC = "tac"  # transaction authentication codes: held by the platform only


class KeyUsage(enum.Enum):
    """What a SAM may do with a master key: a door terminal's access key may only verify."""

    VERIFY = "verify"  # verify MACs produced by cards
    MAC = "mac"  # compute MACs that cards will check (terminal-side MACs)
    PERSONALISE = "personalise"  # hand out diversified card keys, only to personalise a card at issuing
    REVERSAL = "reversal"  # LOAD key of a POS: a credit only to reverse this SAM's own last purchase, once
    SUBSIDY = "subsidy"  # LOAD key of a POS: a credit only into the subsidy purse (an allowance collected at a till)


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


@dataclass(frozen=True)
class PurchaseSession:
    """Public values of one purchase (docs/card-application.md 5.2); card.key_version is the purse key version."""

    card: CardIdentity
    card_random: bytes  # 4 bytes from INITIALIZE FOR PURCHASE
    counter: int  # the card's offline counter from INITIALIZE FOR PURCHASE
    amount: int  # fen
    terminal_id: bytes  # 6 bytes BCD
    date: bytes  # 4 bytes BCD YYYYMMDD, terminal local date
    time: bytes  # 3 bytes BCD hhmmss
    # Section 5.6: 06 a cash purchase; 05 a two-purse sale (counter = the cash purse's offline counter, MAC2 also
    # over subsidy_part); 04 a subsidy withdrawal (counter = the subsidy purse's offline counter).
    tx_type: int = 0x06
    subsidy_part: int = 0


@dataclass(frozen=True)
class LoadSession:
    """Public values of one load (top-up or cashier undo)."""

    card: CardIdentity
    card_random: bytes
    counter: int  # the card's online counter from INITIALIZE FOR LOAD
    balance_before: int
    amount: int
    terminal_id: bytes
    date: bytes
    time: bytes
    tx_type: int = 0x02  # 02 the cash purse; 01 the subsidy purse (section 5.6), then with the allowance's expiry
    expiry: bytes = b""  # BCD date of the allowance a subsidy load writes (MAC2 covers it)
    # A subsidy load's allowance number (section 5.6; MAC2 and the TAC cover it): 1..FFFF an allowance, which the card
    # accepts only above the last one it loaded; 0 the refund of an undone two-purse sale's subsidy part.
    allowance: int = 0


class SamError(Exception):
    """Base of every SAM failure; the message names the problem and the fix."""


class SamSwapped(SamError):
    """The card now in the SAM slot is not the PSAM the terminal started with (checked at every reconnect)."""


class KeyNotFound(SamError):
    """No master key for this (enterprise, purpose, version, algorithm)."""


class KeyUsageError(SamError):
    """The key exists but is not allowed for this operation."""


class MacVerificationError(SamError):
    """A MAC did not verify: the data is forged, altered, or from a cloned card."""


class BalanceTooLow(SamError):
    """A version 2 card's sealed balance (card-application.md 5.2a), deciphered by the SAM, does not cover the
    debit: no MAC1 was computed and no TSN taken (the card would answer 94 01 to DEBIT)."""


class InvalidCardIdentity(SamError, ValueError):
    """The CardIdentity cannot name a card key (wrong ASN or enterprise ID length)."""


class Sam(Protocol):
    def has_key(self, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> bool:
        """True when the SAM holds this master key (any usage)."""

    def verify_card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes, mac: bytes) -> None:
        """Diversify the card key and check a card's MAC over message; raise MacVerificationError if it differs."""

    def card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes) -> bytes:
        """Diversify the card key and compute the 8-byte MAC a card will check over message."""

    def decipher_card_data(self, purpose: KeyPurpose, card: CardIdentity, context: bytes, ciphertext: bytes) -> bytes:
        """Open private data a version-2 card enciphered under SK_DATA(card key, context) (card-application.md 2.5).

        Usage VERIFY: the key that checks a card's answers also reads them. The caller verifies the answer's MAC
        first (the MAC covers the ciphertext). Not for purse keys."""

    def encipher_card_data(self, purpose: KeyPurpose, card: CardIdentity, context: bytes, plaintext: bytes) -> bytes:
        """Encipher data a station writes to a version-2 card under SK_WRITE(card key, context) (card-application.md
        9.11: context = challenge || 00 00 00 00). Usage MAC. The caller MACs the ciphertext. Not for purse keys."""

    def key_infos(self) -> list[KeyInfo]:
        """Every key the SAM holds, described without key bytes."""

    # --- e-purse (docs/card-application.md section 5, docs/psam.md) -------------------------------

    def purchase_mac1(self, session: PurchaseSession) -> tuple[int, bytes]:
        """Take the next terminal transaction sequence number (TSN, kept durably by the SAM) and compute MAC1.

        Returns (tsn, mac1). Needs the PURCHASE master key with usage MAC. The SAM remembers this purchase
        (card, amount, TSN) as its last one, for a later reversal.
        """

    def purchase_mac1_sealed(self, session: PurchaseSession, sealed: bytes) -> tuple[int, bytes, bytes]:
        """A version 2 card's purchase (card-application.md 5.2a): decipher the INITIALIZE answer's sealed purse
        fields under SK_BAL (K_PURCHASE, card random, counter): 4 bytes (the balance) for a purchase (06) or a
        withdrawal (04: session.amount is ignored, the amount is the whole balance), 16 for a two-purse sale (05:
        subsidy part || cash part || subsidy balance || cash balance; session.subsidy_part is ignored). Raise
        BalanceTooLow before any TSN when they do not cover the debit, else purchase_mac1. Returns (tsn, mac1,
        the deciphered fields)."""

    def verify_purchase_mac2(self, session: PurchaseSession, tsn: int, mac2: bytes) -> None:
        """Check the card's MAC2 for this session and TSN (stateless: works for an old intent); raises."""

    def load_mac2(self, session: LoadSession, mac1: bytes) -> bytes:
        """Verify the card's load MAC1 (raises), then compute the load MAC2 the card will check. Usage MAC on LOAD."""

    def load_mac2_sealed(self, session: LoadSession, mac1: bytes, sealed: bytes) -> tuple[bytes, int]:
        """A version 2 card's load (card-application.md 5.2a): decipher the sealed balance before (SK_BAL under
        K_LOAD; session.balance_before is ignored), then load_mac2 with it. Returns (mac2, balance before)."""

    def verify_load_mac3(self, session: LoadSession, mac3: bytes) -> None:
        """Check the card's MAC3 (proof of the credit, over balance after = before + amount); raises."""

    def reversal_mac2(self, session: LoadSession, mac1: bytes, purchase_tsn: int) -> bytes:
        """Load MAC2 for a cashier undo: only for this SAM's last purchase (same card and amount, that TSN), once.

        Raises KeyUsageError (or SamError naming the rule) for any other load. Usage REVERSAL on LOAD.
        """

    def reversal_mac2_sealed(
        self, session: LoadSession, mac1: bytes, purchase_tsn: int, sealed: bytes
    ) -> tuple[bytes, int]:
        """reversal_mac2 for a version 2 card: the balance before deciphered as in load_mac2_sealed. Returns (mac2,
        balance before)."""

    # --- card administration (docs/card-application.md section 8, docs/key-handling.md section 9) ----

    def wrap_spending_pin(self, card: CardIdentity, challenge: bytes, plain: bytes | bytearray) -> bytes:
        """CHANGE REFERENCE DATA's cryptogram (card-application.md 5.5): (PIN block || FF x 8) encrypted under
        SK_PIN = E(K_ADMIN, challenge || 04 || 00 x 7) of the card's current admin key. Needs MAC on the admin key."""

    def wrap_sub_application_key(
        self, card: CardIdentity, challenge: bytes, application: CardIdentity
    ) -> tuple[bytes, bytes]:
        """CREATE SUB-APPLICATION's cryptogram (card-application.md 9.6): the new sub-application's K_TRANSPORT
        (TRANSPORT master of application.enterprise_id, diversified with its ASN) encrypted under SK_ENC of the
        card's K_CARD (TRANSPORT master of the card issuer 00000000, diversified with the card serial `card.asn`).
        Returns (cryptogram 16, KCV 3). Needs MAC on the issuer's key and PERSONALISE on the enterprise's."""

    def wrap_card_key(
        self, card: CardIdentity, challenge: bytes, purpose: KeyPurpose, new_version: int
    ) -> tuple[bytes, bytes]:
        """PUT KEY's cryptogram: the card's key of `purpose` at `new_version`, encrypted under the session key
        SK_ENC derived from the card's current admin key (TRANSPORT at key version 0, else UPDATE) and the card's
        challenge. Returns (cryptogram 16 bytes, key check value 3 bytes). The key never leaves in clear.

        Needs MAC on the admin key and PERSONALISE on the new master key; raises KeyNotFound / KeyUsageError.
        """

    def wrap_ota_key(self, card: CardIdentity, challenge: bytes, which: str, new_version: int) -> tuple[bytes, bytes]:
        """PUT KEY's cryptogram for a version 2 sub-application's OTA key ("kic" / "kid", docs/ota.md 2), from the
        UPDATE master of `new_version`, encrypted as wrap_card_key's. Returns (cryptogram 16, KCV 3)."""
