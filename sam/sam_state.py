"""What a SAM remembers between purse operations: the TSN counter and its last purchase (docs/key-handling.md 8).

SamState is an immutable value with pure transition functions (sans-I/O): SoftwareSam and the simulated
PSAM apply the same rules. Stores persist it: MemoryStateStore (tests, in-memory SAMs) and StateFile (the
software SAM's `<keystore>.state`, replaced atomically and fsync'd before a TSN leaves the SAM).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from common import files
from common.bcd import is_bcd
from sam.interface import CardIdentity, KeyUsageError, LoadSession, PurchaseSession, SamError

TSN_MAX = 0xFFFFFFFF
AMOUNT_MAX = 0xFFFFFFFF
COUNTER_MAX = 0xFFFF

STATE_MAGIC = b"ONECARD-SAM-STATE 1\n"
_CHECKSUM_RE = re.compile(rb"sha256=([0-9a-f]{64})\n")
_ASN_RE = re.compile(r"[0-9a-f]{16}")
_ENTERPRISE_RE = re.compile(r"[0-9]{8}")
MAX_STATE_FILE_SIZE = 4096


class InvalidPurseInput(SamError, ValueError):
    """A purse session or TAC input that cannot be right (wrong length, amount out of range, not BCD)."""


class TsnExhausted(SamError):
    """The SAM has handed out TSN FFFFFFFF: it can never take part in another purchase."""


class ReversalRefused(KeyUsageError):
    """reversal_mac2 for a load that is not the undo of this SAM's last proven purchase, or a second undo.

    reason: "not-last" (no purchase, other card, amount or TSN), "not-debited" (the card's MAC2 for it was
    never verified by this SAM), "reversed" (already undone once).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateFileError(SamError):
    """The SAM state cannot be read or written; the message names the file and the fix."""


# --- input checks (shared by SoftwareSam, PcscSam and the PSAM) -------------------------------------


def check_amount(amount: object) -> int:
    if type(amount) is not int or not 1 <= amount <= AMOUNT_MAX:
        raise InvalidPurseInput(
            f"amount {amount!r} is not 1..{AMOUNT_MAX} fen; pass the amount in fen as a positive integer"
        )
    return amount


def check_tsn(tsn: object) -> int:
    if type(tsn) is not int or not 1 <= tsn <= TSN_MAX:
        raise InvalidPurseInput(f"TSN {tsn!r} is not 1..{TSN_MAX}; pass the TSN purchase_mac1 returned")
    return tsn


def check_counter(counter: object) -> int:
    if type(counter) is not int or not 0 <= counter <= COUNTER_MAX:
        raise InvalidPurseInput(f"card counter {counter!r} is not 0..{COUNTER_MAX}; pass the counter the card returned")
    return counter


def check_fields(random: bytes | None, terminal_id: bytes, date: bytes, time: bytes) -> None:
    problems = []
    if random is not None and (not isinstance(random, bytes) or len(random) != 4):
        problems.append("card random must be 4 bytes")
    if not isinstance(terminal_id, bytes) or len(terminal_id) != 6 or not is_bcd(terminal_id):
        problems.append("terminal ID must be 6 BCD bytes")
    if not isinstance(date, bytes) or len(date) != 4 or not is_bcd(date):
        problems.append("date must be 4 BCD bytes YYYYMMDD")
    if not isinstance(time, bytes) or len(time) != 3 or not is_bcd(time):
        problems.append("time must be 3 BCD bytes hhmmss")
    if problems:
        raise InvalidPurseInput("; ".join(problems) + " (docs/card-application.md 5.2); fix the caller")


def check_purchase(session: PurchaseSession) -> None:
    check_fields(session.card_random, session.terminal_id, session.date, session.time)
    check_counter(session.counter)
    check_amount(session.amount)
    if session.tx_type not in (0x04, 0x05, 0x06):
        raise InvalidPurseInput(f"debit type {session.tx_type!r} is not 04, 05 or 06 (docs/card-application.md 5.6)")
    part = session.subsidy_part
    if type(part) is not int or not 0 <= part <= session.amount or (part and session.tx_type != 0x05):
        raise InvalidPurseInput(f"subsidy part {part!r} must be 0..amount, and non-zero only in a two-purse sale")


def check_load(session: LoadSession) -> None:
    check_fields(session.card_random, session.terminal_id, session.date, session.time)
    check_counter(session.counter)
    check_amount(session.amount)
    subsidy = session.tx_type == 0x01
    if session.tx_type not in (0x01, 0x02) or (len(session.expiry) == 4) != subsidy or (session.expiry and not subsidy):
        raise InvalidPurseInput(
            f"load type {session.tx_type!r} with expiry {session.expiry!r}: "
            "02 without expiry, 01 with a 4-byte BCD date"
        )
    number = session.allowance
    if type(number) is not int or not 0 <= number <= 0xFFFF or (number and not subsidy):
        raise InvalidPurseInput(f"allowance number {number!r} must be 0..65535, and non-zero only in a subsidy load")
    if type(session.balance_before) is not int or not 0 <= session.balance_before <= AMOUNT_MAX:
        raise InvalidPurseInput(
            f"balance before {session.balance_before!r} is not 0..{AMOUNT_MAX} fen; pass the balance the card returned"
        )


def check_mac(mac: object, what: str) -> bytes:
    # A MAC of the wrong length is a MAC that does not verify, not a programming error.
    from sam.interface import MacVerificationError

    if not isinstance(mac, bytes) or len(mac) != 8:
        length = len(mac) if isinstance(mac, (bytes, bytearray)) else "?"
        raise MacVerificationError(
            f"{what} is {length} bytes, expected 8; the card's answer is malformed, treat the transaction as failed"
        )
    return mac


# --- the state --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastPurchase:
    asn: bytes
    enterprise_id: bytes
    amount: int
    tsn: int
    debited: bool = False  # this SAM verified the card's MAC2 for it: the debit happened
    # The card's online counter when a reversal MAC2 was handed out (None: not yet). A credit always moves that
    # counter on, so a new reversal session at the same counter proves the earlier MAC2 was never applied (and,
    # bound to a card session that has ended, never can be): the undo may be retried, and still happens once.
    reversal_counter: int | None = None
    # A two-purse sale (card-application.md 5.6): its subsidy share; the cash share is amount - subsidy_part. Each
    # share is undone once, by its own load: the cash one (type 02) as above, the subsidy one (type 01, allowance
    # number 0) with the subsidy purse's online counter kept here.
    subsidy_part: int = 0
    subsidy_reversal_counter: int | None = None

    @property
    def reversed(self) -> bool:
        return self.reversal_counter is not None

    def part(self, subsidy: bool) -> int:
        """The amount a reversal load of one purse gives back: the subsidy share, or the rest (cash)."""
        return self.subsidy_part if subsidy else self.amount - self.subsidy_part


@dataclass(frozen=True)
class SamState:
    """last_tsn: the highest TSN handed out (0 = none yet); the next purchase gets last_tsn + 1."""

    last_tsn: int = 0
    last_purchase: LastPurchase | None = None

    def after_purchase(self, card: CardIdentity, amount: int, subsidy_part: int = 0) -> SamState:
        """The state once the next TSN is taken for this purchase; raises TsnExhausted at the end of the range."""
        if self.last_tsn >= TSN_MAX:
            raise TsnExhausted(
                f"this SAM has used every TSN up to {TSN_MAX:08X} and cannot sign another purchase; replace the SAM"
            )
        tsn = self.last_tsn + 1
        return SamState(
            tsn, LastPurchase(bytes(card.asn), bytes(card.enterprise_id), amount, tsn, subsidy_part=subsidy_part)
        )

    def after_debit_proven(self, card: CardIdentity, amount: int, tsn: int) -> SamState:
        """Mark the last purchase debited when a verified MAC2 is for it; any other MAC2 changes nothing."""
        last = self.last_purchase
        if last is None or last.debited or not _same(last, card, amount, tsn):
            return self
        return replace(self, last_purchase=replace(last, debited=True))

    def check_reversal(self, card: CardIdentity, amount: int, tsn: int, counter: int, subsidy: bool = False) -> None:
        """Raise ReversalRefused unless a load of amount on card (online counter `counter` of the cash purse, or of
        the subsidy purse when `subsidy`) may undo purchase tsn (its share in that purse) now."""
        last = self.last_purchase
        if last is None or not _same(last, card, last.amount, tsn) or last.part(subsidy) != amount or amount == 0:
            raise ReversalRefused(
                f"reversal refused: TSN {tsn} of {amount} fen on card {card.asn.hex()} is not this SAM's last purchase"
                + ("" if last is None else f" (TSN {last.tsn}, {last.amount} fen, card {last.asn.hex()})")
                + "; only the last purchase can be undone, on the same card and for the same amount",
                "not-last",
            )
        if not last.debited:
            raise ReversalRefused(
                f"reversal refused: the debit of TSN {tsn} was never proven (its MAC2 was not verified by this SAM); "
                "verify the purchase's MAC2 (or recover it with GET TRANSACTION PROVE) before undoing it",
                "not-debited",
            )
        done = last.subsidy_reversal_counter if subsidy else last.reversal_counter
        if done is not None and counter != done:
            raise ReversalRefused(
                f"reversal refused: purchase TSN {tsn} has already been undone once; it cannot be undone again",
                "reversed",
            )

    def after_reversal(self, counter: int, subsidy: bool = False) -> SamState:
        assert self.last_purchase is not None
        field = "subsidy_reversal_counter" if subsidy else "reversal_counter"
        return replace(self, last_purchase=replace(self.last_purchase, **{field: counter}))


def _same(last: LastPurchase, card: CardIdentity, amount: int, tsn: int) -> bool:
    return (
        hmac.compare_digest(last.asn, bytes(card.asn))
        and last.enterprise_id == bytes(card.enterprise_id)
        and last.amount == amount
        and last.tsn == tsn
    )


# --- encoding ---------------------------------------------------------------------------------------


def state_to_json(state: SamState) -> dict:
    last = state.last_purchase
    return {
        "last_tsn": state.last_tsn,
        "last_purchase": None
        if last is None
        else {
            "asn": last.asn.hex(),
            "enterprise_id": last.enterprise_id.hex(),
            "amount": last.amount,
            "tsn": last.tsn,
            "debited": last.debited,
            "reversal_counter": last.reversal_counter,
            # only for a two-purse sale, so the state file of any other sale is as before
            **(
                {}
                if last.subsidy_part == 0
                else {"subsidy_part": last.subsidy_part, "subsidy_reversal_counter": last.subsidy_reversal_counter}
            ),
        },
    }


def state_from_json(doc: object) -> SamState:
    """Strict inverse of state_to_json; ValueError naming the bad field."""
    if not isinstance(doc, dict) or set(doc) != {"last_tsn", "last_purchase"}:
        raise ValueError("not an object with exactly last_tsn and last_purchase")
    last_tsn = doc["last_tsn"]
    if type(last_tsn) is not int or not 0 <= last_tsn <= TSN_MAX:
        raise ValueError("last_tsn is not 0..FFFFFFFF")
    raw = doc["last_purchase"]
    if raw is None:
        return SamState(last_tsn, None)
    fields = {"asn", "enterprise_id", "amount", "tsn", "debited", "reversal_counter"}
    two_purse = fields | {"subsidy_part", "subsidy_reversal_counter"}
    if not isinstance(raw, dict) or set(raw) not in (fields, two_purse):
        raise ValueError(
            f"last_purchase must have exactly the fields {sorted(fields)} (a two-purse sale: and subsidy_part, "
            "subsidy_reversal_counter)"
        )
    if not isinstance(raw["asn"], str) or not _ASN_RE.fullmatch(raw["asn"]):
        raise ValueError("last_purchase.asn is not 16 lowercase hex digits")
    if not isinstance(raw["enterprise_id"], str) or not _ENTERPRISE_RE.fullmatch(raw["enterprise_id"]):
        raise ValueError("last_purchase.enterprise_id is not 8 digits")
    if type(raw["amount"]) is not int or not 1 <= raw["amount"] <= AMOUNT_MAX:
        raise ValueError("last_purchase.amount is not 1..FFFFFFFF")
    if type(raw["tsn"]) is not int or not 1 <= raw["tsn"] <= last_tsn:
        raise ValueError("last_purchase.tsn is not 1..last_tsn")
    counter = raw["reversal_counter"]
    if type(raw["debited"]) is not bool or not (counter is None or (type(counter) is int and 0 <= counter <= 0xFFFF)):
        raise ValueError("last_purchase.debited is not a boolean, or reversal_counter is not null or 0..65535")
    if counter is not None and not raw["debited"]:
        raise ValueError("last_purchase has a reversal_counter without being debited")
    part, sub_counter = raw.get("subsidy_part", 0), raw.get("subsidy_reversal_counter")
    if "subsidy_part" in raw and (type(part) is not int or not 1 <= part <= raw["amount"]):
        raise ValueError("last_purchase.subsidy_part is not 1..amount")
    if not (sub_counter is None or (type(sub_counter) is int and 0 <= sub_counter <= 0xFFFF)):
        raise ValueError("last_purchase.subsidy_reversal_counter is not null or 0..65535")
    if sub_counter is not None and not raw["debited"]:
        raise ValueError("last_purchase has a subsidy_reversal_counter without being debited")
    return SamState(
        last_tsn,
        LastPurchase(
            bytes.fromhex(raw["asn"]),
            bytes.fromhex(raw["enterprise_id"]),
            raw["amount"],
            raw["tsn"],
            raw["debited"],
            counter,
            part,
            sub_counter,
        ),
    )


def encode_state(state: SamState) -> bytes:
    """The state file: magic line, one JSON line, then the SHA-256 of everything before it (docs/key-handling.md 8)."""
    body = STATE_MAGIC + json.dumps(state_to_json(state), sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return body + b"sha256=" + hashlib.sha256(body).hexdigest().encode() + b"\n"


def decode_state(data: bytes) -> SamState:
    """ValueError naming what is wrong; never a partial state."""
    if not data.startswith(STATE_MAGIC):
        raise ValueError("it does not start with 'ONECARD-SAM-STATE 1'")
    json_end = data.find(b"\n", len(STATE_MAGIC))
    if json_end < 0:
        raise ValueError("no end of the JSON line")
    body, trailer = data[: json_end + 1], data[json_end + 1 :]
    match = _CHECKSUM_RE.fullmatch(trailer)
    if not match:
        raise ValueError("the checksum line is missing or malformed")
    if not hmac.compare_digest(match.group(1), hashlib.sha256(body).hexdigest().encode()):
        raise ValueError("the checksum does not match the contents")
    try:
        doc = json.loads(body[len(STATE_MAGIC) :].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the JSON line is not JSON") from None
    return state_from_json(doc)


# --- stores -----------------------------------------------------------------------------------------


class StateStore(Protocol):
    def load(self) -> SamState:
        """The current state (a fresh SamState() when nothing was ever saved)."""

    def save(self, state: SamState) -> None:
        """Persist state durably before returning; raise StateFileError (nothing half-written) if it cannot."""


class MemoryStateStore:
    """State that lives as long as the object: for SAMs built in memory (tests)."""

    def __init__(self, state: SamState | None = None) -> None:
        self._state = state or SamState()

    def load(self) -> SamState:
        return self._state

    def save(self, state: SamState) -> None:
        self._state = state


class StateFile:
    """The software SAM's state file. Absent = a SAM that never signed a purchase; created at the first one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StateFile({str(self.path)!r})"

    def load(self) -> SamState:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_STATE_FILE_SIZE + 1)
        except FileNotFoundError:
            return SamState()
        except OSError as e:
            raise StateFileError(
                f"cannot read SAM state file {self.path} ({e.strerror}); check its path and permissions"
            ) from None
        try:
            if len(data) > MAX_STATE_FILE_SIZE:
                raise ValueError(f"larger than {MAX_STATE_FILE_SIZE} bytes")
            return decode_state(data)
        except ValueError as e:
            raise StateFileError(
                f"SAM state file {self.path} is corrupted ({e}); purchases stop until it is repaired: move it aside "
                "(a terminal continues after the highest TSN in its event log), or run 'onecard sam init-state "
                "--state PATH --last-tsn N' with N the highest TSN the platform has seen from this terminal"
            ) from None

    def save(self, state: SamState) -> None:
        write_atomically(self.path, encode_state(state), what="SAM state file")


def write_atomically(path: Path, data: bytes, what: str) -> None:
    """Temporary file, fsync, rename over path, fsync the directory: after return the bytes survive a power cut."""
    try:
        files.write_atomically(path, data)
    except OSError as e:
        raise StateFileError(
            f"cannot write {what} {path} ({e.strerror}); check free space, permissions and that the directory exists"
        ) from None
