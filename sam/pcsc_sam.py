"""PcscSam: the Sam protocol spoken to a PSAM card (docs/psam.md) in a PC/SC reader slot.

The same code talks to the simulated PSAM (simulator/psam.py through vpcd) and to a real PSAM in a terminal's
SAM slot. It builds and parses APDU bytes around a connection; status words become the exceptions SoftwareSam
raises. Inputs are checked here first, with SoftwareSam's rules, so a bad call fails the same way on both.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from sam import crypto
from sam.interface import (
    Algorithm,
    BalanceTooLow,
    CardIdentity,
    KeyInfo,
    KeyNotFound,
    KeyPurpose,
    KeyUsage,
    KeyUsageError,
    LoadSession,
    MacVerificationError,
    PurchaseSession,
    SamError,
    SamSwapped,
)
from sam.keystore import describe_key
from sam.sam_state import (
    InvalidPurseInput,
    ReversalRefused,
    TsnExhausted,
    check_load,
    check_mac,
    check_purchase,
    check_tsn,
)
from sam.software import _card_algorithm, _diversification_input, _refuse_purse_purpose

AID = bytes.fromhex("F04F4E454341524450")
SELECT = bytes([0x00, 0xA4, 0x04, 0x00, len(AID)]) + AID + b"\x00"

PURPOSE_CODES = {
    KeyPurpose.ACCESS: 0x01,
    KeyPurpose.UPDATE: 0x02,
    KeyPurpose.TRANSPORT: 0x03,
    KeyPurpose.PURCHASE: 0x04,
    KeyPurpose.LOAD: 0x05,
    KeyPurpose.TAC: 0x06,
}
_PURPOSES_BY_CODE = {code: purpose for purpose, code in PURPOSE_CODES.items()}
USAGE_BITS = {
    KeyUsage.VERIFY: 0x01,
    KeyUsage.MAC: 0x02,
    KeyUsage.PERSONALISE: 0x04,
    KeyUsage.REVERSAL: 0x08,
    KeyUsage.SUBSIDY: 0x10,
}
KEY_INFO_SIZE = 11
# Short APDUs carry at most 255 data bytes; the card identity (14) and, to verify, the MAC (8) come first.
MAX_VERIFY_MESSAGE = 255 - 14 - 8
MAX_MAC_MESSAGE = 255 - 14
MAX_DECIPHER_DATA = 128

SW_OK = 0x9000
SW_NOT_SELECTED = 0x6986


class Connection(Protocol):
    atr: bytes

    def transmit(self, apdu: bytes) -> bytes: ...

    def close(self) -> None: ...


def _purchase_init_data(session: PurchaseSession) -> bytes:
    """The data of INIT SAM FOR PURCHASE (docs/psam.md 4.2), before any sealed balance."""
    return (
        card_block(session.card)
        + session.card_random
        + _u16(session.counter)
        + _u32(session.amount)
        + session.terminal_id
        + session.date
        + session.time
    )


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def card_block(card: CardIdentity) -> bytes:
    """ASN (8) || enterprise ID (4) || key version (1) || algorithm ID (1), after SoftwareSam's identity checks."""
    m = _diversification_input(card)
    algorithm = _card_algorithm(card)
    version = card.key_version
    if type(version) is not int or not 0 <= version <= 255:
        from sam.interface import InvalidCardIdentity

        raise InvalidCardIdentity(
            f"card key version {version!r} is not 0..255; the card data is malformed, reject the card"
        )
    return m + bytes([version, int(algorithm)])


def _load_fields(session: LoadSession, sealed: bytes | None = None) -> bytes:
    """The public inputs of a load command; `sealed`: a version 2 card's sealed balance in the balance field."""
    if sealed is not None and (type(sealed) is not bytes or len(sealed) != 4):
        raise InvalidPurseInput("the sealed balance of INITIALIZE FOR LOAD is 4 bytes")
    return (
        card_block(session.card)
        + session.card_random
        + _u16(session.counter)
        + (_u32(session.balance_before) if sealed is None else sealed)
        + _u32(session.amount)
        + session.terminal_id
        + session.date
        + session.time
    )


def decode_key_info(entry: bytes) -> KeyInfo:
    """One 11-byte GET KEY INFO entry (docs/psam.md 4.8); ValueError when it names nothing known."""
    if len(entry) != KEY_INFO_SIZE:
        raise ValueError(f"key info entry of {len(entry)} bytes")
    purpose = _PURPOSES_BY_CODE.get(entry[4])
    if purpose is None:
        raise ValueError(f"unknown purpose code {entry[4]:#04x}")
    usages = frozenset(u for u, bit in USAGE_BITS.items() if entry[7] & bit)
    if entry[7] & ~sum(USAGE_BITS.values()):
        raise ValueError(f"unknown usage bits {entry[7]:#04x}")
    return KeyInfo(bytes(entry[:4]), purpose, entry[5], Algorithm(entry[6]), usages, entry[8:11].hex())


class PcscSam:
    """A PSAM in a PC/SC reader: PcscSam("SAM slot reader name") or PcscSam(connection_factory).

    The PSAM is selected and its key list read when the object is made, so a missing PSAM stops the terminal at
    start-up with one line. A connection lost mid-command raises SamError; the next call reconnects.
    """

    def __init__(self, source: str | Callable[[], Connection], *, timeout: float = 2.0) -> None:
        self._reader = None
        if isinstance(source, str):
            self.name = source
            self._factory = self._pcsc_factory(source, timeout)
        else:
            self.name = getattr(source, "name", "SAM slot")
            self._factory = source
        self._connection: Connection | None = None
        self._infos: list[KeyInfo] = []
        self._started_with: frozenset[KeyInfo] | None = None  # the key list of the PSAM first connected: its identity
        self._lock = threading.RLock()
        with self._lock:
            self._ensure()

    def __repr__(self) -> str:
        return f"PcscSam({self.name!r}, <{len(self._infos)} keys>)"

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # --- connection ---------------------------------------------------------------------------------

    def _pcsc_factory(self, name: str, timeout: float) -> Callable[[], Connection]:
        def connect() -> Connection:
            from terminal.reader import ReaderError
            from terminal.readers.pcsc import PcscReader

            try:
                if self._reader is None:
                    self._reader = PcscReader(name)
                    self.name = self._reader.name
                connection = self._reader.wait_for_card(timeout)
            except ReaderError as exc:
                raise SamError(f"SAM reader unusable: {exc}") from None
            if connection is None:
                raise SamError(
                    f"no PSAM in reader {self.name!r} (nothing answered within {timeout:g} s); "
                    "insert the terminal's PSAM in its SAM slot, or configure the software SAM instead"
                )
            return connection

        return connect

    def _ensure(self) -> Connection:
        if self._connection is not None:
            return self._connection
        connection = self._factory()
        self._connection = connection
        try:
            answer = self._raw(SELECT, "SELECT")
            sw = int.from_bytes(answer[-2:], "big")
            if sw != SW_OK:
                raise SamError(
                    f"the card in {self.name!r} is not a onecard PSAM (SELECT {AID.hex().upper()} answered {sw:04X}); "
                    "insert the PSAM made for this terminal (onecard sim new-psam for a simulated one)"
                )
            infos = self._read_key_infos()
            identity = frozenset(infos)
            if self._started_with is None:
                self._started_with = identity  # checked against the terminal's binding by the caller, at start
            elif identity != self._started_with:
                raise SamSwapped(
                    f"the PSAM in {self.name!r} was changed while the terminal ran: it holds other keys than the PSAM "
                    "the terminal started with; nothing is signed with it. Put back the terminal's PSAM, or restart "
                    "the terminal so the new one is checked against its SAM binding"
                )
            self._infos = infos
        except BaseException:
            self._drop()
            raise
        return connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass  # the PSAM is gone already; nothing to release

    def _raw(self, apdu: bytes, what: str) -> bytes:
        from terminal.reader import CardRemoved, ReaderError

        assert self._connection is not None
        try:
            answer = self._connection.transmit(apdu)
        except (CardRemoved, ReaderError) as exc:
            self._drop()
            raise SamError(
                f"the PSAM in {self.name!r} stopped answering during {what} ({exc}); check it is seated in its slot. "
                "The operation may or may not have been done: treat it as failed"
            ) from None
        if len(answer) < 2:
            self._drop()
            raise SamError(f"the PSAM in {self.name!r} answered {what} with {len(answer)} bytes; replace the PSAM")
        return answer

    def _command(self, apdu: bytes, what: str) -> tuple[int, bytes]:
        """(SW, data); reselects once after a reset that left the application unselected (6986: not executed)."""
        with self._lock:
            self._ensure()
            answer = self._raw(apdu, what)
            if int.from_bytes(answer[-2:], "big") == SW_NOT_SELECTED:
                self._drop()
                self._ensure()
                answer = self._raw(apdu, what)
            return int.from_bytes(answer[-2:], "big"), answer[:-2]

    # --- status words -------------------------------------------------------------------------------

    def _fail(
        self, sw: int, what: str, card: CardIdentity, purpose: KeyPurpose, usage: str, mac_problem: str
    ) -> SamError:
        algorithm = _card_algorithm(card)
        desc = describe_key(
            card.enterprise_id, purpose, 0 if purpose is KeyPurpose.TRANSPORT else card.key_version, algorithm
        )
        if sw == 0x9302:
            return MacVerificationError(mac_problem)
        if sw == 0x6A88:
            return KeyNotFound(
                f"the PSAM in {self.name!r} has no master key for {desc}; insert a PSAM that holds it "
                "(PcscSam.key_infos() lists what this one holds)"
            )
        if sw == 0x6982:
            return KeyUsageError(
                f"master key {desc} in the PSAM in {self.name!r} may not be used to {usage}; "
                "insert a PSAM made from a keystore that allows it ('onecard sam restrict --role ...')"
            )
        if sw == 0x6985:
            return ReversalRefused(
                "reversal refused by the PSAM: not this SAM's last purchase "
                "(card, amount or TSN differ, or there is none); "
                "only the last purchase can be undone, on the same card and for the same amount",
                "not-last",
            )
        if sw == 0x6983:
            return ReversalRefused(
                "reversal refused by the PSAM: the debit was never proven (its MAC2 was not verified by "
                "this PSAM); verify the purchase's MAC2 before undoing it",
                "not-debited",
            )
        if sw == 0x6984:
            return ReversalRefused(
                "reversal refused by the PSAM: that purchase has already been undone once; it cannot be undone again",
                "reversed",
            )
        if sw == 0x6A84:
            return TsnExhausted(
                f"the PSAM in {self.name!r} has used every TSN and cannot sign another purchase; replace the PSAM"
            )
        if sw == 0x6581:
            return SamError(
                f"the PSAM in {self.name!r} could not write its memory during {what} (6581); replace the PSAM"
            )
        if sw == 0x6A80:
            return InvalidPurseInput(
                f"the PSAM in {self.name!r} refused the data of {what} (6A80); "
                "check the card's answer and the session values"
            )
        return SamError(
            f"the PSAM in {self.name!r} answered {what} with status {sw:04X}; check it is a onecard PSAM (docs/psam.md)"
        )

    def _expect(self, sw: int, data: bytes, size: int, what: str, *fail_args) -> bytes:
        if sw != SW_OK:
            raise self._fail(sw, what, *fail_args)
        if len(data) != size:
            raise SamError(
                f"the PSAM in {self.name!r} answered {what} with {len(data)} data bytes, "
                f"expected {size}; replace the PSAM"
            )
        return data

    # --- Sam protocol -------------------------------------------------------------------------------

    def has_key(self, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> bool:
        with self._lock:
            self._ensure()
            return any(
                (i.enterprise_id, i.purpose, i.version, i.algorithm)
                == (bytes(enterprise_id), purpose, version, algorithm)
                for i in self._infos
            )

    def key_infos(self) -> list[KeyInfo]:
        with self._lock:
            self._ensure()
            self._infos = self._read_key_infos()
            return list(self._infos)

    def _read_key_infos(self) -> list[KeyInfo]:
        infos: list[KeyInfo] = []
        while True:
            answer = self._raw(bytes([0x80, 0xCA, 0x00, len(infos), 0x00]), "GET KEY INFO")
            sw, data = int.from_bytes(answer[-2:], "big"), answer[:-2]
            if sw != SW_OK or not data or (len(data) - 1) % KEY_INFO_SIZE:
                raise SamError(
                    f"the PSAM in {self.name!r} answered GET KEY INFO with {answer.hex().upper()}; replace the PSAM"
                )
            total, entries = data[0], data[1:]
            try:
                infos += [
                    decode_key_info(entries[i : i + KEY_INFO_SIZE]) for i in range(0, len(entries), KEY_INFO_SIZE)
                ]
            except ValueError as exc:
                raise SamError(
                    f"the PSAM in {self.name!r} lists a key this onecard does not know ({exc}); upgrade onecard"
                ) from None
            if len(infos) >= total or not entries:
                return infos

    def verify_card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes, mac: bytes) -> None:
        _refuse_purse_purpose(purpose)
        block = card_block(card)
        if len(mac) != crypto.MAC_SIZE:
            raise MacVerificationError(
                f"card MAC is {len(mac)} bytes, expected {crypto.MAC_SIZE} (card ASN {card.asn.hex()}); reject the card"
            )
        if len(message) > MAX_VERIFY_MESSAGE:
            raise SamError(
                f"message of {len(message)} bytes is longer than a PSAM checks ({MAX_VERIFY_MESSAGE}); shorten it"
            )
        data = block + mac + message
        sw, answer = self._command(
            bytes([0x80, 0x7A, 0x00, PURPOSE_CODES[purpose], len(data)]) + data, "VERIFY CARD MAC"
        )
        self._expect(
            sw,
            answer,
            0,
            "VERIFY CARD MAC",
            card,
            purpose,
            "verify",
            f"card MAC does not verify for {purpose.value} (card ASN {card.asn.hex()}, enterprise "
            f"{card.enterprise_id.hex()}): the data is forged, altered, or from a cloned card; reject the card",
        )

    def card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes) -> bytes:
        _refuse_purse_purpose(purpose)
        block = card_block(card)
        if len(message) > MAX_MAC_MESSAGE:
            raise SamError(
                f"message of {len(message)} bytes is longer than a PSAM MACs ({MAX_MAC_MESSAGE}); shorten it"
            )
        data = block + message
        sw, answer = self._command(
            bytes([0x80, 0x7C, 0x00, PURPOSE_CODES[purpose], len(data)]) + data + b"\x08", "CARD MAC"
        )
        return self._expect(sw, answer, 8, "CARD MAC", card, purpose, "mac", "")

    def decipher_card_data(self, purpose: KeyPurpose, card: CardIdentity, context: bytes, ciphertext: bytes) -> bytes:
        _refuse_purse_purpose(purpose)
        if len(context) != crypto.DATA_CONTEXT_SIZE or not 1 <= len(ciphertext) <= MAX_DECIPHER_DATA:
            raise SamError(
                f"decipher takes a {crypto.DATA_CONTEXT_SIZE}-byte context and 1..{MAX_DECIPHER_DATA} bytes; "
                "the card answer is malformed, reject the card"
            )
        data = card_block(card) + context + ciphertext
        sw, answer = self._command(
            bytes([0x80, 0x7E, 0x00, PURPOSE_CODES[purpose], len(data)]) + data + b"\x00", "DECIPHER CARD DATA"
        )
        return self._expect(sw, answer, len(ciphertext), "DECIPHER CARD DATA", card, purpose, "verify", "")

    def encipher_card_data(self, purpose: KeyPurpose, card: CardIdentity, context: bytes, plaintext: bytes) -> bytes:
        """ENCIPHER CARD DATA (80 7E P1 01, docs/psam.md 4.7b): plaintext XOR the SK_WRITE keystream (usage mac)."""
        _refuse_purse_purpose(purpose)
        if len(context) != crypto.DATA_CONTEXT_SIZE or not 1 <= len(plaintext) <= MAX_DECIPHER_DATA:
            raise SamError(
                f"encipher takes a {crypto.DATA_CONTEXT_SIZE}-byte context (challenge || 00 00 00 00) and "
                f"1..{MAX_DECIPHER_DATA} bytes"
            )
        data = card_block(card) + context + plaintext
        sw, answer = self._command(
            bytes([0x80, 0x7E, 0x01, PURPOSE_CODES[purpose], len(data)]) + data + b"\x00", "ENCIPHER CARD DATA"
        )
        return self._expect(sw, answer, len(plaintext), "ENCIPHER CARD DATA", card, purpose, "mac", "")

    def purchase_mac1(self, session: PurchaseSession) -> tuple[int, bytes]:
        check_purchase(session)
        _cash_purse_only(session.tx_type, 0x06)
        data = _purchase_init_data(session)
        sw, answer = self._command(bytes([0x80, 0x70, 0x00, 0x00, len(data)]) + data + b"\x0c", "INIT SAM FOR PURCHASE")
        answer = self._expect(sw, answer, 12, "INIT SAM FOR PURCHASE", session.card, KeyPurpose.PURCHASE, "mac", "")
        return int.from_bytes(answer[:4], "big"), answer[4:]

    def purchase_mac1_sealed(self, session: PurchaseSession, sealed: bytes) -> tuple[int, bytes, bytes]:
        """INIT SAM FOR PURCHASE with P1 01 (docs/psam.md 4.2): the PSAM deciphers the sealed balance, refuses with
        94 01 when it does not cover the amount (no TSN taken), and answers the balance after MAC1."""
        check_purchase(session)
        _cash_purse_only(session.tx_type, 0x06)
        if type(sealed) is not bytes or len(sealed) != 4:
            raise InvalidPurseInput("the sealed balance of INITIALIZE FOR PURCHASE is 4 bytes")
        data = _purchase_init_data(session) + sealed
        sw, answer = self._command(bytes([0x80, 0x70, 0x01, 0x00, len(data)]) + data + b"\x10", "INIT SAM FOR PURCHASE")
        if sw == 0x9401:
            raise BalanceTooLow(f"the card's balance does not cover {session.amount} fen (the PSAM checked it)")
        answer = self._expect(sw, answer, 16, "INIT SAM FOR PURCHASE", session.card, KeyPurpose.PURCHASE, "mac", "")
        return int.from_bytes(answer[:4], "big"), answer[4:12], answer[12:16]

    def verify_purchase_mac2(self, session: PurchaseSession, tsn: int, mac2: bytes) -> None:
        check_purchase(session)
        _cash_purse_only(session.tx_type, 0x06)
        check_tsn(tsn)
        check_mac(mac2, "purchase MAC2")
        data = (
            card_block(session.card)
            + session.card_random
            + _u16(session.counter)
            + _u32(tsn)
            + _u32(session.amount)
            + mac2
        )
        sw, answer = self._command(bytes([0x80, 0x72, 0x00, 0x00, len(data)]) + data, "VERIFY PURCHASE MAC2")
        self._expect(
            sw,
            answer,
            0,
            "VERIFY PURCHASE MAC2",
            session.card,
            KeyPurpose.PURCHASE,
            "verify",
            f"purchase MAC2 does not verify (card ASN {session.card.asn.hex()}, counter {session.counter}, TSN {tsn}): "
            "the card did not make this debit, or the answer was altered; do not count the purchase as paid",
        )

    def load_mac2(self, session: LoadSession, mac1: bytes) -> bytes:
        check_load(session)
        _cash_purse_only(session.tx_type, 0x02)
        check_mac(mac1, "load MAC1")
        data = _load_fields(session) + mac1
        sw, answer = self._command(bytes([0x80, 0x74, 0x00, 0x00, len(data)]) + data + b"\x08", "LOAD MAC2")
        return self._expect(
            sw, answer, 8, "LOAD MAC2", session.card, KeyPurpose.LOAD, "mac", self._mac1_problem(session)
        )

    def load_mac2_sealed(self, session: LoadSession, mac1: bytes, sealed: bytes) -> tuple[bytes, int]:
        """LOAD MAC2 with P1 01 (docs/psam.md 4.4): the balance field carries the card's sealed balance; the PSAM
        answers MAC2 || the deciphered balance before."""
        session = dataclasses.replace(session, balance_before=0)
        check_load(session)
        _cash_purse_only(session.tx_type, 0x02)
        check_mac(mac1, "load MAC1")
        data = _load_fields(session, sealed) + mac1
        sw, answer = self._command(bytes([0x80, 0x74, 0x01, 0x00, len(data)]) + data + b"\x0c", "LOAD MAC2")
        answer = self._expect(
            sw, answer, 12, "LOAD MAC2", session.card, KeyPurpose.LOAD, "mac", self._mac1_problem(session)
        )
        return answer[:8], int.from_bytes(answer[8:], "big")

    def reversal_mac2_sealed(
        self, session: LoadSession, mac1: bytes, purchase_tsn: int, sealed: bytes
    ) -> tuple[bytes, int]:
        """REVERSAL MAC2 with P1 01 (docs/psam.md 4.6), as load_mac2_sealed."""
        session = dataclasses.replace(session, balance_before=0)
        check_load(session)
        check_tsn(purchase_tsn)
        check_mac(mac1, "load MAC1")
        data = _load_fields(session, sealed) + mac1 + _u32(purchase_tsn)
        sw, answer = self._command(bytes([0x80, 0x78, 0x01, 0x00, len(data)]) + data + b"\x0c", "REVERSAL MAC2")
        answer = self._expect(
            sw, answer, 12, "REVERSAL MAC2", session.card, KeyPurpose.LOAD, "reversal", self._mac1_problem(session)
        )
        return answer[:8], int.from_bytes(answer[8:], "big")

    def verify_load_mac3(self, session: LoadSession, mac3: bytes) -> None:
        check_load(session)
        check_mac(mac3, "load MAC3")
        if session.balance_before + session.amount > 0xFFFFFFFF:
            raise InvalidPurseInput(
                f"balance {session.balance_before} + {session.amount} fen overflows 4 bytes; "
                "no card can have credited it"
            )
        data = (
            card_block(session.card)
            + session.card_random
            + _u16(session.counter)
            + _u32(session.balance_before)
            + _u32(session.amount)
            + mac3
        )
        sw, answer = self._command(bytes([0x80, 0x76, 0x00, 0x00, len(data)]) + data, "VERIFY LOAD MAC3")
        self._expect(
            sw,
            answer,
            0,
            "VERIFY LOAD MAC3",
            session.card,
            KeyPurpose.LOAD,
            "verify a load MAC3",
            f"load MAC3 does not verify (card ASN {session.card.asn.hex()}, online counter {session.counter}): "
            "the card did not prove the credit; check the card with GET TRANSACTION PROVE before loading again",
        )

    def reversal_mac2(self, session: LoadSession, mac1: bytes, purchase_tsn: int) -> bytes:
        check_load(session)
        check_tsn(purchase_tsn)
        check_mac(mac1, "load MAC1")
        data = _load_fields(session) + mac1 + _u32(purchase_tsn)
        sw, answer = self._command(bytes([0x80, 0x78, 0x00, 0x00, len(data)]) + data + b"\x08", "REVERSAL MAC2")
        return self._expect(
            sw, answer, 8, "REVERSAL MAC2", session.card, KeyPurpose.LOAD, "reversal", self._mac1_problem(session)
        )

    @staticmethod
    def _mac1_problem(session: LoadSession) -> str:
        return (
            f"load MAC1 does not verify (card ASN {session.card.asn.hex()}, online counter {session.counter}): "
            "the card's INITIALIZE FOR LOAD answer is forged or altered, "
            "or the session values differ from it; do not load"
        )

    # --- key loading from the key master card (docs/psam.md 4.9, docs/keys.md 6) ---------------------

    def begin_key_load(self) -> KeyLoadChallenge:
        """BEGIN KEY LOAD: the PSAM's serial, a fresh ephemeral X25519 public key and whom it trusts."""
        sw, answer = self._command(bytes([0x80, 0xE0, 0x00, 0x00, 0x00]), "BEGIN KEY LOAD")
        if sw != SW_OK:
            raise SamError(
                f"the PSAM in {self.name!r} answered BEGIN KEY LOAD with {sw:04X}; it cannot be loaded from a "
                "key master card (a PSAM older than docs/psam.md 4.9?): "
                "make a new one with 'onecard sim new-blank-psam'"
            )
        if len(answer) != 77 or answer[40] > 2:
            raise SamError(
                f"the PSAM in {self.name!r} answered BEGIN KEY LOAD with {len(answer)} bytes; replace the PSAM"
            )
        return KeyLoadChallenge(answer[:8], answer[8:40], answer[40], answer[41:45], answer[45:77])

    def load_keys(self, blob: bytes) -> int:
        """LOAD KEYS: send a master card export in chained blocks; the number of keys the PSAM now holds.

        Raises KeyLoadRefused naming the PSAM's reason. The PSAM drops its ephemeral key after the last block,
        whatever the outcome: call begin_key_load again (and make a new export) to retry.
        """
        blocks = [blob[i : i + LOAD_BLOCK] for i in range(0, len(blob), LOAD_BLOCK)] or [b""]
        with self._lock:
            self._ensure()
            for index, block in enumerate(blocks):
                more = index < len(blocks) - 1
                # No reselect-and-resend here: a reset lost the PSAM's ephemeral key, so resending cannot succeed.
                answer = self._raw(bytes([0x80, 0xE2, 0x01 if more else 0x00, 0x00, len(block)]) + block, "LOAD KEYS")
                sw, data = int.from_bytes(answer[-2:], "big"), answer[:-2]
                if sw != SW_OK:
                    raise KeyLoadRefused(_LOAD_REFUSALS.get(sw, f"status {sw:04X}").format(name=self.name), sw)
            if len(data) != 1:
                raise SamError(
                    f"the PSAM in {self.name!r} answered LOAD KEYS with {len(data)} data bytes; replace the PSAM"
                )
            self._infos = self._read_key_infos()
            self._started_with = frozenset(self._infos)  # keys loaded through this object: still the same PSAM
            return data[0]


LOAD_BLOCK = 240

_LOAD_REFUSALS = {
    0x6985: "the PSAM in {name!r} has no key load in progress (it was reset); run the load again",
    0x6A80: "the PSAM in {name!r} refused the export as malformed or holding keys a PSAM never holds; export for a "
    "PSAM role (door, pos, top-up)",
    0x6988: "the PSAM in {name!r} refused the export: it was made for another PSAM or an earlier session (a replay), "
    "or altered; make a new export for this PSAM",
    0x6982: "the PSAM in {name!r} refused the export: it is not signed by the key master card this PSAM trusts "
    "(二次洗卡 needs the enterprise's own master card), or the PSAM was personalised without one; "
    "use that master card, or make a new PSAM",
    0x6A89: "the PSAM in {name!r} already holds a key of that name with other bytes; "
    "this export is from another key set",
    0x6581: "the PSAM in {name!r} could not write its memory during LOAD KEYS (6581); replace the PSAM",
    0x6700: "the PSAM in {name!r} refused the export as too long; export fewer key versions",
}


class KeyLoadRefused(SamError):
    """The PSAM refused a LOAD KEYS; sw is its status word (docs/psam.md 4.9)."""

    def __init__(self, message: str, sw: int) -> None:
        super().__init__(message)
        self.sw = sw


@dataclass(frozen=True)
class KeyLoadChallenge:
    """BEGIN KEY LOAD's answer: trust 0 = blank, 1 = keys without a master card, 2 = trusts (enterprise, public key)."""

    serial: bytes
    ephemeral_public_key: bytes
    trust: int
    enterprise_id: bytes
    master_public_key: bytes


def _cash_purse_only(tx_type: int, cash: int) -> None:
    """The PSAM command set (docs/psam.md) has no subsidy-purse operations yet (card-application.md 5.6)."""
    if tx_type != cash:
        raise SamError(
            f"the PSAM has no command for transaction type {tx_type:02X} (subsidy purse); "
            "use a software SAM (keystore) on terminals that serve the subsidy purse"
        )
