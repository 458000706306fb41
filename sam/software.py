"""SoftwareSam: the Sam protocol over a keystore file, for terminals without a hardware PSAM and for tests."""

from __future__ import annotations

import dataclasses
import hmac
import os
import threading
from typing import Iterable

from common import transactions as tx
from sam import crypto, purse_crypto
from sam.interface import (
    Algorithm,
    BalanceTooLow,
    CardIdentity,
    InvalidCardIdentity,
    KeyInfo,
    KeyNotFound,
    KeyPurpose,
    KeyUsage,
    KeyUsageError,
    LoadSession,
    MacVerificationError,
    PurchaseSession,
)
from sam.keystore import TRANSPORT_VERSION, Keystore, KeystoreUnlock, MasterKey, describe_key, load_keystore
from sam.sam_state import (
    InvalidPurseInput,
    MemoryStateStore,
    StateFile,
    StateStore,
    check_amount,
    check_counter,
    check_fields,
    check_load,
    check_mac,
    check_purchase,
    check_tsn,
)

# Purse keys are used only through the purse methods: a generic card_mac under K_TAC would forge TACs, and
# generic MACs under K_PURCHASE / K_LOAD would be an oracle on the keys the session keys come from.
PURSE_PURPOSES = frozenset({KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC})
# Checking a load's MAC3 only tells the terminal the card credited itself; every SAM that may take part in a
# load (top-up: MAC, POS undo: REVERSAL) must be able to do it.
_MAC3_USAGES = frozenset({KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.REVERSAL, KeyUsage.SUBSIDY})
_SUBSIDY_LOAD_USAGES = frozenset({KeyUsage.MAC, KeyUsage.SUBSIDY})

# No cache of derived card keys: measured on the development machine (cryptography 50), a
# derivation takes about 17 µs and a whole verify_card_mac about 20 µs, against a card
# transaction of tens of milliseconds; a cache would only keep card keys in memory for longer.


def default_state_path(keystore_path: str | os.PathLike[str], state_path: str | os.PathLike[str] | None = None) -> str:
    return os.fspath(state_path) if state_path is not None else f"{os.fspath(keystore_path)}.state"


def _check_new_key_inputs(new_version, challenge: bytes) -> None:
    """The enterprise key version a wrapped key is for, and the card's challenge it travels under (PUT KEY)."""
    if type(new_version) is not int or not 1 <= new_version <= 255:
        raise InvalidCardIdentity(f"new key version {new_version!r} is not 1..255; pick an enterprise key version")
    if len(challenge) != crypto.CHALLENGE_SIZE:
        raise InvalidCardIdentity(
            f"card challenge is {len(challenge)} bytes, not {crypto.CHALLENGE_SIZE}; "
            "the card's GET CHALLENGE answer is malformed, reject the card"
        )


class SoftwareSam:
    """A SAM whose master keys live in this process; card keys are derived per call and dropped."""

    def __init__(self, keystore: Keystore, state: StateStore | None = None) -> None:
        self._keystore = keystore
        self._store = state if state is not None else MemoryStateStore()
        # Read now, so a corrupt state file stops the terminal at start-up rather than at the first sale.
        self._state = self._store.load()
        # One purse operation at a time: two threads must never take the same TSN.
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        unlock: KeystoreUnlock,
        state_path: str | os.PathLike[str] | None = None,
        state: StateStore | None = None,
    ) -> SoftwareSam:
        """The keystore at path, with its purse state in `state` (a terminal keeps it in its event log:
        terminal/sam_state_log.py) or else in state_path (default: '<path>.state', made at the first purchase)."""
        keystore = load_keystore(path, unlock)
        return cls(keystore, state if state is not None else StateFile(default_state_path(path, state_path)))

    def __repr__(self) -> str:
        return f"SoftwareSam(<{len(self._keystore)} keys>)"

    def has_key(self, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> bool:
        return self._keystore.get(enterprise_id, purpose, version, algorithm) is not None

    def verify_card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes, mac: bytes) -> None:
        _refuse_purse_purpose(purpose)
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
        _refuse_purse_purpose(purpose)
        algorithm, card_key = self._card_key(purpose, card, KeyUsage.MAC)
        return crypto.mac8(algorithm, card_key, message)

    def decipher_card_data(self, purpose: KeyPurpose, card: CardIdentity, context: bytes, ciphertext: bytes) -> bytes:
        _refuse_purse_purpose(purpose)
        if len(context) != crypto.DATA_CONTEXT_SIZE:
            raise InvalidCardIdentity(
                f"decipher context is {len(context)} bytes, not {crypto.DATA_CONTEXT_SIZE}; "
                "the card answer is malformed, reject the card"
            )
        algorithm, card_key = self._card_key(purpose, card, KeyUsage.VERIFY)
        return crypto.ctr_crypt(algorithm, crypto.data_session_key(algorithm, card_key, context), ciphertext)

    def encipher_card_data(self, purpose: KeyPurpose, card: CardIdentity, context: bytes, plaintext: bytes) -> bytes:
        """Encipher private data this station writes to a version-2 card under SK_WRITE(card key, context)
        (card-application.md 9.11). Usage MAC: the key that may command the card may also write to it. The caller
        MACs the ciphertext (encrypt-then-MAC). Not for purse keys."""
        _refuse_purse_purpose(purpose)
        if len(context) != crypto.DATA_CONTEXT_SIZE:
            raise InvalidCardIdentity(
                f"encipher context is {len(context)} bytes, not {crypto.DATA_CONTEXT_SIZE}; "
                "give challenge || 00 00 00 00"
            )
        algorithm, card_key = self._card_key(purpose, card, KeyUsage.MAC)
        return crypto.ctr_crypt(algorithm, crypto.write_session_key(algorithm, card_key, context), plaintext)

    # --- e-purse ------------------------------------------------------------------------------------

    def purchase_mac1(self, session: PurchaseSession) -> tuple[int, bytes]:
        check_purchase(session)
        algorithm, k_purchase = self._card_key(KeyPurpose.PURCHASE, session.card, KeyUsage.MAC)
        with self._lock:
            two_purse = session.tx_type == tx.SUBSIDY_PURCHASE
            state = self._state.after_purchase(session.card, session.amount, session.subsidy_part if two_purse else 0)
            if session.tx_type == tx.SUBSIDY_WITHDRAW:
                # A withdrawal is never reversed. A two-purse sale is, each share by a load of its own purse (the
                # purses never mix: card-application.md 5.6).
                state = dataclasses.replace(state, last_purchase=None)
            tsn = state.last_tsn
            sk = purse_crypto.purchase_session_key(algorithm, k_purchase, session.card_random, session.counter, tsn)
            mac1 = purse_crypto.purchase_mac1(
                algorithm, sk, session.amount, session.terminal_id, session.date, session.time, session.tx_type
            )
            # Durable before the TSN leaves: after a crash the next purchase gets tsn + 1, never tsn again.
            self._commit(state)
        return tsn, mac1

    def purchase_mac1_sealed(self, session: PurchaseSession, sealed: bytes) -> tuple[int, bytes, bytes]:
        session, clear = self._open_purchase(session, sealed)
        tsn, mac1 = self.purchase_mac1(session)
        return tsn, mac1, clear

    def _open_purchase(self, session: PurchaseSession, sealed: bytes) -> tuple[PurchaseSession, bytes]:
        """Decipher a version 2 INITIALIZE's purse fields and check they cover the debit (card-application 5.2a)."""
        size = 16 if session.tx_type == tx.SUBSIDY_PURCHASE else 4
        if type(sealed) is not bytes or len(sealed) != size:
            raise InvalidPurseInput(f"sealed purse data must be {size} bytes for debit type {session.tx_type:#04x}")
        check_fields(session.card_random, session.terminal_id, session.date, session.time)
        check_counter(session.counter)
        algorithm, k_purchase = self._card_key(KeyPurpose.PURCHASE, session.card, KeyUsage.MAC)
        clear = purse_crypto.seal_purse_data(algorithm, k_purchase, session.card_random, session.counter, sealed)
        values = [int.from_bytes(clear[i : i + 4], "big") for i in range(0, size, 4)]
        if session.tx_type == tx.SUBSIDY_WITHDRAW:
            if values[0] == 0:
                raise BalanceTooLow("the card's subsidy balance is 0: nothing to withdraw")
            return dataclasses.replace(session, amount=values[0]), clear
        if session.tx_type == tx.SUBSIDY_PURCHASE:
            part_s, part_c, balance_s, balance_c = values
            if part_s + part_c != session.amount:
                raise InvalidPurseInput(
                    f"the card split {session.amount} fen into {part_s} + {part_c}: the INITIALIZE answer is "
                    "altered or not this sale's; do not charge"
                )
            if part_s > balance_s or part_c > balance_c:
                raise BalanceTooLow(f"the card's two purses do not cover {session.amount} fen")
            return dataclasses.replace(session, subsidy_part=part_s), clear
        if values[0] < session.amount:
            raise BalanceTooLow(f"the card's balance does not cover {session.amount} fen")
        return session, clear

    def verify_purchase_mac2(self, session: PurchaseSession, tsn: int, mac2: bytes) -> None:
        check_purchase(session)
        check_tsn(tsn)
        check_mac(mac2, "purchase MAC2")
        algorithm, k_purchase = self._card_key(KeyPurpose.PURCHASE, session.card, KeyUsage.VERIFY)
        sk = purse_crypto.purchase_session_key(algorithm, k_purchase, session.card_random, session.counter, tsn)
        two_purse = session.subsidy_part if session.tx_type == tx.SUBSIDY_PURCHASE else None
        if not hmac.compare_digest(purse_crypto.purchase_mac2(algorithm, sk, session.amount, two_purse), mac2):
            raise MacVerificationError(
                f"purchase MAC2 does not verify (card ASN {session.card.asn.hex()}, counter {session.counter}, "
                f"TSN {tsn}): "
                "the card did not make this debit, or the answer was altered; do not count the purchase as paid"
            )
        with self._lock:
            state = self._state.after_debit_proven(session.card, session.amount, tsn)
            if state is not self._state:
                self._commit(state)

    def load_mac2(self, session: LoadSession, mac1: bytes) -> bytes:
        check_load(session)
        check_mac(mac1, "load MAC1")
        # A POS's LOAD key with usage SUBSIDY credits the subsidy purse only (an allowance collected at a till).
        usages = _SUBSIDY_LOAD_USAGES if session.tx_type == tx.SUBSIDY_LOAD else KeyUsage.MAC
        algorithm, k_load = self._card_key(KeyPurpose.LOAD, session.card, usages)
        return self._load_mac2(algorithm, k_load, session, mac1)

    def load_mac2_sealed(self, session: LoadSession, mac1: bytes, sealed: bytes) -> tuple[bytes, int]:
        session = self._open_load(session, sealed)
        return self.load_mac2(session, mac1), session.balance_before

    def reversal_mac2_sealed(
        self, session: LoadSession, mac1: bytes, purchase_tsn: int, sealed: bytes
    ) -> tuple[bytes, int]:
        session = self._open_load(session, sealed)
        return self.reversal_mac2(session, mac1, purchase_tsn), session.balance_before

    def _open_load(self, session: LoadSession, sealed: bytes) -> LoadSession:
        """The session with the balance before deciphered from a version 2 INITIALIZE FOR LOAD (5.2a)."""
        if type(sealed) is not bytes or len(sealed) != 4:
            raise InvalidPurseInput("the sealed balance of INITIALIZE FOR LOAD is 4 bytes")
        check_fields(session.card_random, session.terminal_id, session.date, session.time)
        check_counter(session.counter)
        algorithm, k_load = self._card_key(KeyPurpose.LOAD, session.card, _MAC3_USAGES)
        clear = purse_crypto.seal_purse_data(algorithm, k_load, session.card_random, session.counter, sealed)
        return dataclasses.replace(session, balance_before=int.from_bytes(clear, "big"))

    def verify_load_mac3(self, session: LoadSession, mac3: bytes) -> None:
        check_load(session)
        check_mac(mac3, "load MAC3")
        balance_after = session.balance_before + session.amount
        if balance_after > 0xFFFFFFFF:
            raise InvalidPurseInput(
                f"balance {session.balance_before} + {session.amount} fen overflows 4 bytes; "
                "no card can have credited it"
            )
        algorithm, k_load = self._card_key(KeyPurpose.LOAD, session.card, _MAC3_USAGES)
        sk = purse_crypto.load_session_key(algorithm, k_load, session.card_random, session.counter)
        if not hmac.compare_digest(purse_crypto.load_mac3(algorithm, sk, balance_after, session.amount), mac3):
            raise MacVerificationError(
                f"load MAC3 does not verify (card ASN {session.card.asn.hex()}, online counter {session.counter}): "
                "the card did not prove the credit; check the card with GET TRANSACTION PROVE before loading again"
            )

    def reversal_mac2(self, session: LoadSession, mac1: bytes, purchase_tsn: int) -> bytes:
        check_load(session)
        check_tsn(purchase_tsn)
        check_mac(mac1, "load MAC1")
        subsidy = session.tx_type == tx.SUBSIDY_LOAD
        if subsidy and session.allowance != 0:
            raise InvalidPurseInput(
                "a cashier undo gives back a subsidy share with allowance number 0 (a refund), never an allowance; "
                "nothing was signed"
            )
        algorithm, k_load = self._card_key(KeyPurpose.LOAD, session.card, KeyUsage.REVERSAL)
        with self._lock:
            self._state.check_reversal(session.card, session.amount, purchase_tsn, session.counter, subsidy)
            mac2 = self._load_mac2(algorithm, k_load, session, mac1)
            # Recorded before MAC2 leaves. A retry is allowed only at this same card counter, i.e. only if this
            # MAC2 was never applied (a credit moves the counter on), so each share is undone at most once.
            self._commit(self._state.after_reversal(session.counter, subsidy))
        return mac2

    def verify_tac(
        self,
        card: CardIdentity,
        *,
        amount: int,
        tx_type: int,
        terminal_id: bytes,
        tsn: int,
        date: bytes,
        time: bytes,
        counter: int,
        balance_after: int,
        tac: bytes,
    ) -> None:
        """The platform's check of a card's TAC (docs/card-application.md 5.2); needs TAC with usage VERIFY."""
        check_fields(None, terminal_id, date, time)
        check_amount(amount)
        check_counter(counter)
        if type(tsn) is not int or not 0 <= tsn <= 0xFFFFFFFF:  # 0 is a load's TSN
            raise InvalidPurseInput(f"TSN {tsn!r} is not 0..4294967295; pass the TSN of the log record (0 for a load)")
        if type(balance_after) is not int or not 0 <= balance_after <= 0xFFFFFFFF:
            raise InvalidPurseInput(
                f"balance after {balance_after!r} is not 0..4294967295 fen; pass the log record's balance"
            )
        if tx_type not in tx.NAMES and tx_type not in tx.PIN_TAC_TYPES:
            raise InvalidPurseInput(
                f"transaction type {tx_type!r} is not 0x01, 0x02, 0x04, 0x05, 0x06, 0x85 or 0x86; pass the log "
                "record's type"
            )
        check_mac(tac, "TAC")
        algorithm, k_tac = self._card_key(KeyPurpose.TAC, card, KeyUsage.VERIFY)
        expected = purse_crypto.tac(
            algorithm,
            k_tac,
            amount=amount,
            tx_type=tx_type,
            terminal_id=terminal_id,
            tsn=tsn,
            date=date,
            time=time,
            counter=counter,
            balance_after=balance_after,
        )
        if not hmac.compare_digest(expected, tac):
            raise MacVerificationError(
                f"TAC does not verify (card ASN {card.asn.hex()}, counter {counter}, terminal {terminal_id.hex()}, "
                f"TSN {tsn}): "
                "the log record is forged or altered; quarantine it and investigate the terminal"
            )

    def verify_deletion_proof(self, card: CardIdentity, signed: bytes, mac: bytes) -> None:
        """The platform's check of a holder's deletion request (common/deletion_request.py, docs/phone-menu.md 4):
        the card MACs it under its K_TAC, which only the card and the platform hold, so no terminal can forge one.
        Needs TAC with usage VERIFY; raises MacVerificationError when it does not verify."""
        if len(signed) != 25 or signed[:3] != b"DL\x01":
            raise InvalidPurseInput("a deletion proof signs 25 bytes starting 44 4C 01; pass the request's signed part")
        check_mac(mac, "deletion proof MAC")
        algorithm, k_tac = self._card_key(KeyPurpose.TAC, card, KeyUsage.VERIFY)
        if not crypto.mac8_matches(algorithm, k_tac, signed, mac):
            raise MacVerificationError(
                f"deletion request MAC does not verify (card ASN {card.asn.hex()}, enterprise "
                f"{card.enterprise_id.hex()}): forged or altered; the application is not deleted"
            )

    def _load_mac2(self, algorithm: Algorithm, k_load: bytes, session: LoadSession, mac1: bytes) -> bytes:
        check_mac(mac1, "load MAC1")
        sk = purse_crypto.load_session_key(algorithm, k_load, session.card_random, session.counter)
        expected = purse_crypto.load_mac1(
            algorithm, sk, session.balance_before, session.amount, session.terminal_id, session.tx_type
        )
        if not hmac.compare_digest(expected, mac1):
            raise MacVerificationError(
                f"load MAC1 does not verify (card ASN {session.card.asn.hex()}, online counter {session.counter}): "
                "the card's INITIALIZE FOR LOAD answer is forged or altered, or the session values differ from it; "
                "do not load"
            )
        return purse_crypto.load_mac2(
            algorithm,
            sk,
            session.amount,
            session.terminal_id,
            session.date,
            session.time,
            session.tx_type,
            session.expiry,
            session.allowance,
        )

    def _commit(self, state) -> None:
        self._store.save(state)  # raises StateFileError: then nothing was handed out and memory is unchanged
        self._state = state

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

    def wrap_card_key(
        self, card: CardIdentity, challenge: bytes, purpose: KeyPurpose, new_version: int
    ) -> tuple[bytes, bytes]:
        if purpose is KeyPurpose.TRANSPORT:
            raise KeyUsageError(
                "transport keys are written at the factory, never by PUT KEY; wash the card to "
                "enterprise keys (version 1..255) instead"
            )
        _check_new_key_inputs(new_version, challenge)
        admin_purpose = admin_purpose_of(card)
        target = CardIdentity(card.asn, card.enterprise_id, new_version, card.algorithm)
        # Both keys checked before either is derived: a refusal hands out nothing.
        m = _diversification_input(card)
        admin = self._master(admin_purpose, card, KeyUsage.MAC)
        new = self._master(purpose, target, KeyUsage.PERSONALISE)
        admin_key = crypto.diversify(admin.algorithm, admin.key.reveal(), m)
        new_key = crypto.diversify(new.algorithm, new.key.reveal(), m)
        sk_enc = crypto.secure_session_key(admin.algorithm, admin_key, challenge)
        return (
            crypto.block_encrypt(admin.algorithm, sk_enc, new_key),
            bytes.fromhex(crypto.key_check_value(new.algorithm, new_key)),
        )

    def wrap_ota_key(self, card: CardIdentity, challenge: bytes, which: str, new_version: int) -> tuple[bytes, bytes]:
        """PUT KEY's cryptogram for the sub-application's OTA key `which` ("kic" / "kid", docs/ota.md 2):
        div(UPDATE master of new_version, ASN || EID || "KIc" / "KID") encrypted under SK_ENC of the card's current
        admin key, as wrap_card_key. Returns (cryptogram 16, KCV 3). Never in clear."""
        from sam.ota_keys import LABEL_KIC, LABEL_KID

        labels = {"kic": LABEL_KIC, "kid": LABEL_KID}
        if which not in labels:
            raise InvalidCardIdentity(f"OTA key {which!r} is not kic or kid")
        _check_new_key_inputs(new_version, challenge)
        target = CardIdentity(card.asn, card.enterprise_id, new_version, card.algorithm)
        m = _diversification_input(card)
        admin = self._master(admin_purpose_of(card), card, KeyUsage.MAC)
        new = self._master(KeyPurpose.UPDATE, target, KeyUsage.PERSONALISE)
        admin_key = crypto.diversify(admin.algorithm, admin.key.reveal(), m)
        new_key = crypto.diversify(new.algorithm, new.key.reveal(), m + labels[which])
        sk_enc = crypto.secure_session_key(admin.algorithm, admin_key, challenge)
        return (
            crypto.block_encrypt(admin.algorithm, sk_enc, new_key),
            bytes.fromhex(crypto.key_check_value(new.algorithm, new_key)),
        )

    def wrap_spending_pin(self, card: CardIdentity, challenge: bytes, plain: bytes | bytearray) -> bytes:
        """CHANGE REFERENCE DATA's cryptogram (card-application.md 5.5): E(SK_PIN, PIN block || FF x 8) under the
        card's admin key (usage MAC, as PUT KEY). The station never holds the card key; the PIN never travels in
        clear."""
        if len(challenge) != crypto.CHALLENGE_SIZE:
            raise InvalidCardIdentity(
                f"card challenge is {len(challenge)} bytes, not {crypto.CHALLENGE_SIZE}; reject the card"
            )
        if len(plain) != 16:
            raise InvalidCardIdentity("the PIN cryptogram input is 16 bytes (PIN block || FF x 8)")
        algorithm, admin_key = self._card_key(admin_purpose_of(card), card, KeyUsage.MAC)
        sk_pin = crypto.pin_session_key(algorithm, admin_key, challenge)
        return crypto.block_encrypt(algorithm, sk_pin, bytes(plain))

    def wrap_sub_application_key(
        self, card: CardIdentity, challenge: bytes, application: CardIdentity
    ) -> tuple[bytes, bytes]:
        if len(challenge) != crypto.CHALLENGE_SIZE:
            raise InvalidCardIdentity(
                f"card challenge is {len(challenge)} bytes, not {crypto.CHALLENGE_SIZE}; reject the card"
            )
        if card.key_version != TRANSPORT_VERSION or application.key_version != TRANSPORT_VERSION:
            raise InvalidCardIdentity("K_CARD and a new sub-application's key are transport keys (version 0)")
        # Both master keys checked before either is derived: a refusal hands out nothing.
        manager = self._master(KeyPurpose.TRANSPORT, card, KeyUsage.MAC)
        new = self._master(KeyPurpose.TRANSPORT, application, KeyUsage.PERSONALISE)
        card_key = crypto.diversify(manager.algorithm, manager.key.reveal(), _diversification_input(card))
        new_key = crypto.diversify(new.algorithm, new.key.reveal(), _diversification_input(application))
        sk_enc = crypto.secure_session_key(manager.algorithm, card_key, challenge)
        return (
            crypto.block_encrypt(manager.algorithm, sk_enc, new_key),
            bytes.fromhex(crypto.key_check_value(new.algorithm, new_key)),
        )

    def _card_key(
        self, purpose: KeyPurpose, card: CardIdentity, usage: KeyUsage | frozenset[KeyUsage]
    ) -> tuple[Algorithm, bytes]:
        # The card's identity is checked before any key lookup: a malformed card is the card's
        # fault and must not be reported as a missing or restricted key.
        m = _diversification_input(card)
        master = self._master(purpose, card, usage)
        return master.algorithm, crypto.diversify(master.algorithm, master.key.reveal(), m)

    def _master(self, purpose: KeyPurpose, card: CardIdentity, usage: KeyUsage | frozenset[KeyUsage]) -> MasterKey:
        algorithm = _card_algorithm(card)
        # A card has one key version for its issued keys; transport keys are always version 0.
        version = TRANSPORT_VERSION if purpose is KeyPurpose.TRANSPORT else card.key_version
        if type(version) is not int or not 0 <= version <= 255:
            raise InvalidCardIdentity(
                f"card key version {version!r} is not 0..255; the card data is malformed, reject the card"
            )
        master = self._keystore.get(card.enterprise_id, purpose, version, algorithm)
        if master is None:
            raise KeyNotFound(
                f"this SAM has no master key for {describe_key(card.enterprise_id, purpose, version, algorithm)}; "
                "install a keystore that holds it ('onecard sam list' shows what a keystore holds)"
            )
        accepted = usage if isinstance(usage, frozenset) else frozenset({usage})
        if not accepted & master.usages:
            allowed = ", ".join(sorted(u.value for u in master.usages))
            wanted = " or ".join(sorted(u.value for u in accepted))
            raise KeyUsageError(
                f"master key {master.describe()} may not be used to {wanted} (allowed: {allowed}); "
                f"install a keystore whose key allows {wanted} ('onecard sam restrict' shapes one per terminal role)"
            )
        return master


def admin_purpose_of(card: CardIdentity) -> KeyPurpose:
    """The key that secures a card's administration commands: TRANSPORT at key version 0, else UPDATE."""
    return KeyPurpose.TRANSPORT if card.key_version == TRANSPORT_VERSION else KeyPurpose.UPDATE


def _refuse_purse_purpose(purpose: KeyPurpose) -> None:
    if purpose in PURSE_PURPOSES:
        raise KeyUsageError(
            f"{purpose.value} keys are used only through the purse methods "
            "(purchase_mac1, load_mac2, verify_tac, ...), "
            "never for generic card MACs; call the purse method for this step"
        )


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
        raise InvalidCardIdentity(
            f"cannot diversify a card key: {e}; the card data is malformed, reject the card"
        ) from None
