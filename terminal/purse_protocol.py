"""The e-purse commands, terminal side (docs/card-application.md section 5): build APDUs, parse answers. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from sam.interface import Algorithm
from terminal.card_protocol import CardProtocolError, expect_ok, status_word


class InsufficientBalance(CardProtocolError):
    """INITIALIZE FOR PURCHASE answered 94 01."""


class MacRefused(CardProtocolError):
    """The card refused the terminal's MAC (93 02): nothing changed on the card."""


class PurseExpired(CardProtocolError):
    """The card refused the purchase: its purse has expired (69 85 to DEBIT)."""


@dataclass(frozen=True)
class PurchaseInit:
    """balance: the balance in clear (version 1 card), None when it is sealed (version 2: card-application.md 5.2a;
    then `sealed` holds the 4 enciphered bytes, which only the terminal's SAM opens)."""

    balance: int | None
    counter: int
    key_version: int
    algorithm: Algorithm
    random: bytes
    sealed: bytes = b""


@dataclass(frozen=True)
class LoadInit:
    """As PurchaseInit: balance None and `sealed` set for a version 2 card."""

    balance: int | None
    counter: int
    key_version: int
    algorithm: Algorithm
    random: bytes
    mac1: bytes
    sealed: bytes = b""


@dataclass(frozen=True)
class Proof:
    """What a purse transaction leaves: the card's proof MAC (MAC2 of a purchase, MAC3 of a load) and the TAC."""

    mac: bytes
    tac: bytes


def _u32(v: int) -> bytes:
    if not 0 < v <= 0xFFFFFFFF:
        raise ValueError(f"amount {v} must be between 1 and 4294967295 fen")
    return v.to_bytes(4, "big")


def _algorithm(byte: int) -> Algorithm:
    try:
        return Algorithm(byte)
    except ValueError:
        raise CardProtocolError(f"unknown algorithm ID {byte:02X}") from None


def init_purchase_command(amount: int, terminal_id: bytes) -> bytes:
    return bytes.fromhex("805001020B01") + _u32(amount) + terminal_id + b"\x0f"


def _balance(field: bytes, sealed: bool) -> tuple[int | None, bytes]:
    """(balance, sealed bytes) of an INITIALIZE answer's balance field: clear on version 1, sealed on version 2."""
    return (None, field) if sealed else (int.from_bytes(field, "big"), b"")


def parse_init_purchase(rapdu: bytes, sealed: bool = False) -> PurchaseInit:
    """`sealed`: the card is a version 2 sub-application, its balance field is enciphered (section 5.2a)."""
    sw = status_word(rapdu)
    if sw == 0x9401:
        raise InsufficientBalance("insufficient balance")
    data = expect_ok(rapdu, "INITIALIZE FOR PURCHASE", 15)
    balance, field = _balance(data[0:4], sealed)
    return PurchaseInit(
        balance=balance,
        counter=int.from_bytes(data[4:6], "big"),
        key_version=data[9],
        algorithm=_algorithm(data[10]),
        random=data[11:15],
        sealed=field,
    )


def debit_command(tsn: int, date: bytes, time: bytes, mac1: bytes, with_pin: bool = False) -> bytes:
    """DEBIT FOR PURCHASE; `with_pin`: P2 80, the purchase is flagged as PIN-verified (card-application.md 5.5)."""
    p2 = b"\x80" if with_pin else b"\x00"
    return b"\x80\x54\x01" + p2 + b"\x13" + tsn.to_bytes(4, "big") + date + time + mac1 + b"\x10"


def parse_debit(rapdu: bytes) -> Proof:
    sw = status_word(rapdu)
    if sw == 0x9302:
        raise MacRefused("the card refused MAC1")
    if sw == 0x6985:
        raise PurseExpired("the card says its purse has expired")
    if sw == 0x9401:  # version 2: the card checks the balance here, after MAC1 (section 5.2a); nothing changed
        raise InsufficientBalance("insufficient balance (DEBIT)")
    data = expect_ok(rapdu, "DEBIT FOR PURCHASE", 16)
    return Proof(tac=data[:8], mac=data[8:])


def init_load_command(amount: int, terminal_id: bytes) -> bytes:
    return bytes.fromhex("805000020B01") + _u32(amount) + terminal_id + b"\x14"


class OverMaximum(CardProtocolError):
    """CREDIT FOR LOAD answered 6A 80: the load would exceed the card's maximum balance (a version 2 card checks it
    at CREDIT, section 5.2a); nothing changed."""


def parse_init_load(rapdu: bytes, sealed: bool = False) -> LoadInit:
    """`sealed` as parse_init_purchase."""
    data = expect_ok(rapdu, "INITIALIZE FOR LOAD", 20)
    balance, field = _balance(data[0:4], sealed)
    return LoadInit(
        balance=balance,
        counter=int.from_bytes(data[4:6], "big"),
        key_version=data[6],
        algorithm=_algorithm(data[7]),
        random=data[8:12],
        mac1=data[12:20],
        sealed=field,
    )


def credit_command(date: bytes, time: bytes, mac2: bytes) -> bytes:
    return bytes.fromhex("805200000F") + date + time + mac2 + b"\x10"


def parse_credit(rapdu: bytes) -> Proof:
    sw = status_word(rapdu)
    if sw == 0x9302:
        raise MacRefused("the card refused the load MAC2")
    if sw == 0x6A80:
        raise OverMaximum("the load would exceed the card's maximum balance")
    data = expect_ok(rapdu, "CREDIT FOR LOAD", 16)
    return Proof(tac=data[:8], mac=data[8:])


def get_balance_command() -> bytes:
    return bytes.fromhex("805C000204")


def parse_balance(rapdu: bytes) -> int:
    return int.from_bytes(expect_ok(rapdu, "GET BALANCE", 4), "big")


def prove_command(tx_type: int, counter: int) -> bytes:
    return bytes([0x80, 0x5A, 0x00, tx_type, 0x02]) + counter.to_bytes(2, "big") + b"\x10"


def parse_prove(rapdu: bytes) -> Proof | None:
    """None when the card holds no such transaction (94 06): it did not happen (or is older than 10)."""
    if status_word(rapdu) == 0x9406:
        return None
    data = expect_ok(rapdu, "GET TRANSACTION PROVE", 16)
    return Proof(mac=data[:8], tac=data[8:])
