"""The e-purse's session keys, MACs and TAC (docs/card-application.md section 5.2), as pure functions.

Shared by the card (simulator), the SAMs and the platform, so all three compute the same bytes.
Each takes the card key of the relevant purpose; diversification happens before (sam.crypto.diversify).
"""

from __future__ import annotations

from common import transactions as tx
from sam.crypto import block_encrypt, ctr_crypt, mac8
from sam.interface import Algorithm


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} does not fit in 4 bytes")
    return value.to_bytes(4, "big")


def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value} does not fit in 2 bytes")
    return value.to_bytes(2, "big")


def _check(random: bytes, terminal_id: bytes = bytes(6), date: bytes = bytes(4), time: bytes = bytes(3)) -> None:
    if len(random) != 4 or len(terminal_id) != 6 or len(date) != 4 or len(time) != 3:
        raise ValueError("card random is 4 bytes, terminal ID 6, date 4 (BCD), time 3 (BCD)")


def purchase_session_key(alg: Algorithm, k_purchase: bytes, random: bytes, counter: int, tsn: int) -> bytes:
    _check(random)
    return block_encrypt(alg, k_purchase, random + _u16(counter) + _u32(tsn) + b"\x80" + bytes(5))


def load_session_key(alg: Algorithm, k_load: bytes, random: bytes, counter: int) -> bytes:
    _check(random)
    return block_encrypt(alg, k_load, random + _u16(counter) + b"\x80" + bytes(9))


def balance_session_key(alg: Algorithm, k_purse: bytes, random: bytes, counter: int) -> bytes:
    """SK_BAL of card-application.md 5.2a: E(K, card random (4) || counter (2) || 00 00 00 00 || 05 00 x 5), with K
    the key of the INITIALIZE (K_PURCHASE for a purchase or withdrawal, K_LOAD for a load) and the counter it
    announces. Byte 10 is `05` where SK_P has `80`, byte 6 is `00` where SK_L has `80`: never a MAC session key."""
    _check(random)
    return block_encrypt(alg, k_purse, random + _u16(counter) + bytes(4) + b"\x05" + bytes(5))


def seal_purse_data(alg: Algorithm, k_purse: bytes, random: bytes, counter: int, data: bytes) -> bytes:
    """The purse fields of a version 2 INITIALIZE answer XOR the keystream of SK_BAL (block i = E(SK_BAL, i as 16
    big-endian bytes), as card-application.md 9.4): enciphers and deciphers (the same operation)."""
    return ctr_crypt(alg, balance_session_key(alg, k_purse, random, counter), data)


def _debit_type(tx_type: int) -> int:
    if tx_type not in tx.DEBIT_TYPES:
        raise ValueError(f"transaction type {tx_type:#04x} is not a debit (06 purchase, 05 two-purse, 04 withdrawal)")
    return tx_type


def _load_type(tx_type: int, expiry: bytes, allowance: int = 0) -> bytes:
    """The type byte and, for a subsidy load, the allowance expiry and number that follow it in MAC2 (section 5.6):
    a cash load (02) has neither; a subsidy load (01) has a 4-byte expiry and an allowance number 0..FFFF (0: the
    refund of an undone sale's subsidy part)."""
    if tx_type == tx.LOAD and expiry == b"" and allowance == 0:
        return bytes([tx_type])
    if tx_type == tx.SUBSIDY_LOAD and len(expiry) == 4 and 0 <= allowance <= 0xFFFF:
        return bytes([tx_type])
    raise ValueError(
        f"load type {tx_type:#04x} with expiry {expiry.hex()!r} and allowance number {allowance}: "
        "02 without expiry or number, 01 with 4 bytes and a number 0..65535"
    )


def purchase_mac1(
    alg: Algorithm,
    sk: bytes,
    amount: int,
    terminal_id: bytes,
    date: bytes,
    time: bytes,
    tx_type: int = tx.PURCHASE,
) -> bytes:
    _check(bytes(4), terminal_id, date, time)
    return mac8(alg, sk, _u32(amount) + bytes([_debit_type(tx_type)]) + terminal_id + date + time)


def purchase_mac2(alg: Algorithm, sk: bytes, amount: int, subsidy_part: int | None = None) -> bytes:
    """MAC2 over the amount; a two-purse sale's MAC2 also covers the subsidy share (section 5.6)."""
    return mac8(alg, sk, _u32(amount) + (b"" if subsidy_part is None else _u32(subsidy_part)))


def load_mac1(
    alg: Algorithm, sk: bytes, balance_before: int, amount: int, terminal_id: bytes, tx_type: int = tx.LOAD
) -> bytes:
    _check(bytes(4), terminal_id)
    if tx_type not in tx.LOAD_TYPES:
        raise ValueError(f"load type {tx_type:#04x} is neither 02 (cash) nor 01 (subsidy)")
    return mac8(alg, sk, _u32(balance_before) + _u32(amount) + bytes([tx_type]) + terminal_id)


def load_mac2(
    alg: Algorithm,
    sk: bytes,
    amount: int,
    terminal_id: bytes,
    date: bytes,
    time: bytes,
    tx_type: int = tx.LOAD,
    expiry: bytes = b"",
    allowance: int = 0,
) -> bytes:
    """MAC2 of a load; a subsidy load's also covers the allowance expiry and number (section 5.6)."""
    _check(bytes(4), terminal_id, date, time)
    kind = _load_type(tx_type, expiry, allowance)  # checks the number is 0..FFFF, and 0 for a cash load
    number = _u16(allowance) if tx_type == tx.SUBSIDY_LOAD else b""
    return mac8(alg, sk, _u32(amount) + kind + terminal_id + date + time + expiry + number)


def load_mac3(alg: Algorithm, sk: bytes, balance_after: int, amount: int) -> bytes:
    return mac8(alg, sk, _u32(balance_after) + _u32(amount))


def tac(
    alg: Algorithm,
    k_tac: bytes,
    *,
    amount: int,
    tx_type: int,
    terminal_id: bytes,
    tsn: int,
    date: bytes,
    time: bytes,
    counter: int,
    balance_after: int,
) -> bytes:
    _check(bytes(4), terminal_id, date, time)
    if tx_type not in tx.NAMES and tx_type not in tx.PIN_TAC_TYPES:
        raise ValueError(f"transaction type {tx_type:#04x} is not one of 01, 02, 04, 05, 06, 85, 86")
    return mac8(
        alg,
        k_tac,
        _u32(amount) + bytes([tx_type]) + terminal_id + _u32(tsn) + date + time + _u16(counter) + _u32(balance_after),
    )
