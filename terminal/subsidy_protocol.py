"""The subsidy purse (补助钱包), terminal side (docs/card-application.md 5.6): build the commands, parse the answers,
and decide what a tap does with the subsidy purse. Sans-I/O: dates and allowances are passed in.

A tap of a card with a subsidy purse (SELECT's FCI tag C9) does, before its own operation: withdraw the subsidy
balance if the subsidy expired (the card allows only the whole balance, only after the expiry), then collect the
allowances the platform announced for this card numbered above the last one the card loaded (FCI tag CA), one
subsidy load each in number order, skipping expired ones: the card refuses a number not above its last one (94 07),
so an allowance is collected once however many offline tills hold it. A sale then goes through the two-purse
INITIALIZE with the card's policy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common import bcd
from common import transactions as tx
from terminal.card_protocol import CardProtocolError, expect_ok, status_word
from terminal.purse_protocol import InsufficientBalance, LoadInit, Proof, PurchaseInit, _algorithm, _u32

NO_TAC = bytes(8)  # the TAC field of a part of 0 in a two-purse DEBIT answer
POLICY_NAMES = {v: k for k, v in tx.POLICIES.items()}


class NotExpired(CardProtocolError):
    """The card refused a withdrawal: its subsidy has not expired (69 85 to DEBIT)."""


class AllowanceLoaded(CardProtocolError):
    """The card refused a subsidy load: its allowance number is not above the last one loaded (94 07 to INITIALIZE
    FOR LOAD); nothing changed on the card."""


@dataclass(frozen=True)
class TwoPurseInit:
    subsidy_part: int
    cash_part: int
    subsidy_balance: int
    subsidy_counter: int
    cash_balance: int
    cash_counter: int
    key_version: int
    algorithm: object  # sam.interface.Algorithm
    random: bytes


@dataclass(frozen=True)
class SealedTwoPurse:
    """A two-purse INITIALIZE answer as it leaves the card (card-application.md 5.6): the 16 bytes subsidy part ||
    cash part || subsidy balance || cash balance sealed under SK_BAL (5.2a), which only the terminal's SAM opens."""

    sealed: bytes
    subsidy_counter: int
    cash_counter: int
    key_version: int
    algorithm: object  # sam.interface.Algorithm
    random: bytes


@dataclass(frozen=True)
class TwoPurseProof:
    subsidy_tac: bytes
    cash_tac: bytes
    mac: bytes


@dataclass(frozen=True)
class Allowance:
    """One allowance the platform announced (sync message `subsidy_allowances`)."""

    allowance_id: str
    asn: str
    amount: int
    expiry: dt.date
    policy: str  # subsidy_first | cash_first
    collected: bool = False  # the platform already received its load (from any terminal)
    number: int = 1  # the per-card allowance number (1, 2, ... in issue order); the card loads each only above its last


def two_purse_command(amount: int, terminal_id: bytes, policy: str) -> bytes:
    if policy not in tx.POLICIES:
        raise ValueError(f"policy {policy!r} is not subsidy_first or cash_first")
    return bytes.fromhex("805001030C01") + _u32(amount) + terminal_id + bytes([tx.POLICIES[policy], 0x1A])


def parse_two_purse(rapdu: bytes) -> SealedTwoPurse:
    """The 26-byte answer: sealed parts and balances at bytes 0..11 and 14..17, the counters in clear."""
    if status_word(rapdu) == 0x9401:
        raise InsufficientBalance("insufficient balance in the two purses")
    d = expect_ok(rapdu, "INITIALIZE FOR PURCHASE (two purses)", 26)
    return SealedTwoPurse(
        sealed=d[0:12] + d[14:18],
        subsidy_counter=int.from_bytes(d[12:14], "big"),
        cash_counter=int.from_bytes(d[18:20], "big"),
        key_version=d[20],
        algorithm=_algorithm(d[21]),
        random=d[22:26],
    )


def open_two_purse(init: SealedTwoPurse, clear: bytes, amount: int) -> TwoPurseInit:
    """The split from the 16 bytes the SAM deciphered from init.sealed; CardProtocolError if not this sale's."""
    if len(clear) != 16:
        raise CardProtocolError(f"the deciphered two-purse fields are {len(clear)} bytes, not 16")
    part_s, part_c, balance_s, balance_c = (int.from_bytes(clear[i : i + 4], "big") for i in range(0, 16, 4))
    opened = TwoPurseInit(
        subsidy_part=part_s,
        cash_part=part_c,
        subsidy_balance=balance_s,
        subsidy_counter=init.subsidy_counter,
        cash_balance=balance_c,
        cash_counter=init.cash_counter,
        key_version=init.key_version,
        algorithm=init.algorithm,
        random=init.random,
    )
    if part_s + part_c != amount:
        raise CardProtocolError(f"the card split {amount} fen into {part_s} + {part_c}")
    if part_s > balance_s or part_c > balance_c:
        raise CardProtocolError("the card split the sale beyond its balances")
    return opened


def parse_two_purse_debit(rapdu: bytes) -> TwoPurseProof:
    from terminal.purse_protocol import MacRefused, PurseExpired

    sw = status_word(rapdu)
    if sw == 0x9302:
        raise MacRefused("the card refused MAC1")
    if sw == 0x6985:
        raise PurseExpired("the card says a purse has expired")
    d = expect_ok(rapdu, "DEBIT FOR PURCHASE (two purses)", 24)
    return TwoPurseProof(subsidy_tac=d[0:8], cash_tac=d[8:16], mac=d[16:24])


def subsidy_load_command(amount: int, terminal_id: bytes, expiry: dt.date, number: int) -> bytes:
    """INITIALIZE FOR LOAD of the subsidy purse: an allowance (number 1..FFFF) or an undone sale's refund (0)."""
    if not 0 <= number <= 0xFFFF:
        raise ValueError(f"allowance number {number} is not 0..65535")
    return (
        bytes.fromhex("805000011101")
        + _u32(amount)
        + terminal_id
        + bcd.encode_date(expiry)
        + number.to_bytes(2, "big")
        + b"\x14"
    )


def parse_subsidy_load(rapdu: bytes, sealed: bool = True) -> LoadInit:
    """The subsidy purse exists on version 2 sub-applications only: its balance is always sealed (5.2a)."""
    if not sealed:
        raise CardProtocolError("a subsidy purse answered on a version 1 card")
    if status_word(rapdu) == 0x9407:
        raise AllowanceLoaded("the card already loaded this allowance or a later one")
    d = expect_ok(rapdu, "INITIALIZE FOR LOAD (subsidy)", 20)
    return LoadInit(
        balance=None,
        sealed=d[0:4],
        counter=int.from_bytes(d[4:6], "big"),
        key_version=d[6],
        algorithm=_algorithm(d[7]),
        random=d[8:12],
        mac1=d[12:20],
    )


def withdraw_command(terminal_id: bytes) -> bytes:
    """INITIALIZE FOR WITHDRAW of the whole subsidy balance (amount field 00000000)."""
    return bytes.fromhex("805002010B0100000000") + terminal_id + b"\x0f"


def parse_withdraw_init(rapdu: bytes) -> PurchaseInit:
    if status_word(rapdu) == 0x9401:
        raise InsufficientBalance("the subsidy balance is 0")
    d = expect_ok(rapdu, "INITIALIZE FOR WITHDRAW", 15)
    return PurchaseInit(
        balance=None,  # sealed (5.2a): the SAM opens it, and it is the withdrawal's amount
        sealed=d[0:4],
        counter=int.from_bytes(d[4:6], "big"),
        key_version=d[9],
        algorithm=_algorithm(d[10]),
        random=d[11:15],
    )


def parse_withdraw_debit(rapdu: bytes) -> Proof:
    from terminal.purse_protocol import MacRefused

    sw = status_word(rapdu)
    if sw == 0x9302:
        raise MacRefused("the card refused the withdrawal MAC1")
    if sw == 0x6985:
        raise NotExpired("the card says its subsidy has not expired")
    d = expect_ok(rapdu, "DEBIT FOR PURCHASE (withdrawal)", 16)
    return Proof(tac=d[:8], mac=d[8:])


# --- decisions ---------------------------------------------------------------------------------------------------


def subsidy_expired(expiry: dt.date | None, today: dt.date) -> bool:
    """The card refuses subsidy spending after its expiry and allows a withdrawal only then."""
    return expiry is not None and today > expiry


def allowances_to_collect(
    allowances: list[Allowance], collected: set[str], today: dt.date, last_loaded: int
) -> list[Allowance]:
    """The allowances a tap loads now, in number order: announced for this card, numbered above the last one the card
    loaded (FCI tag CA), not collected (or given up), not expired. One skipped because it expired can never be
    loaded once a later one is (the platform then marks it lapsed)."""
    due = [
        a
        for a in allowances
        if a.number > last_loaded
        and not a.collected
        and a.allowance_id not in collected
        and a.expiry >= today
        and a.amount > 0
    ]
    return sorted(due, key=lambda a: a.number)


def policy_for(allowances: list[Allowance], default: str = "subsidy_first") -> str:
    """The policy of a sale: that of the newest allowance announced for the card (the platform's order)."""
    return allowances[-1].policy if allowances else default


def allowances_from_body(body: dict[str, Any]) -> list[Allowance]:
    """The Allowance list of a verified `subsidy_allowances` message body (common/sync_protocol.py checked it)."""
    return [
        Allowance(
            r["allowance_id"],
            r["asn"],
            r["amount"],
            dt.date.fromisoformat(r["expiry"]),
            r["policy"],
            r["collected"],
            r["number"],
        )
        for r in body["allowances"]
    ]
