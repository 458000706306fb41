"""Conversation tests of terminal/subsidy_protocol.py with exact bytes (docs/card-application.md 5.6): every command
builder's APDU for given inputs, every parser on exact answers (each status word, each length and format refusal with
its exact error type and message), boundary values, and the subsidy_first / cash_first split checks at their edges.
Fast: no card, no SAM, no I/O (bench/mutation.py runs this file first for the module)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam.interface import Algorithm
from terminal import subsidy_protocol as sp
from terminal.card_protocol import CardProtocolError
from terminal.purse_protocol import InsufficientBalance, LoadInit, MacRefused, Proof, PurchaseInit, PurseExpired

TID = bytes.fromhex("A1A2A3A4A5A6")
OK = b"\x90\x00"
MAX = 0xFFFFFFFF


def refusal(exc_type, fn, *args):
    """The exact error a call raises (its type, not a subclass of it, and its message)."""
    with pytest.raises(exc_type) as info:
        fn(*args)
    assert type(info.value) is exc_type
    return str(info.value)


# --- constants -------------------------------------------------------------------------------------------------------


def test_constants():
    assert sp.NO_TAC == bytes(8)
    assert sp.POLICY_NAMES == {0x01: "subsidy_first", 0x02: "cash_first"}
    assert issubclass(sp.NotExpired, CardProtocolError)


# --- INITIALIZE FOR PURCHASE, two purses ---------------------------------------------------------------------------


def test_two_purse_command_exact_bytes():
    assert sp.two_purse_command(1, TID, "subsidy_first") == bytes.fromhex("805001030C0100000001A1A2A3A4A5A6011A")
    assert sp.two_purse_command(MAX, TID, "cash_first") == bytes.fromhex("805001030C01FFFFFFFFA1A2A3A4A5A6021A")
    assert sp.two_purse_command(0x01020304, bytes(6), "subsidy_first") == bytes.fromhex(
        "805001030C0101020304000000000000011A"
    )


def test_two_purse_command_refusals():
    assert (
        refusal(ValueError, sp.two_purse_command, 1, TID, "half") == "policy 'half' is not subsidy_first or cash_first"
    )
    assert (
        refusal(ValueError, sp.two_purse_command, 0, TID, "cash_first")
        == "amount 0 must be between 1 and 4294967295 fen"
    )
    assert (
        refusal(ValueError, sp.two_purse_command, MAX + 1, TID, "subsidy_first")
        == "amount 4294967296 must be between 1 and 4294967295 fen"
    )


def two_purse_answer(
    sub_part, cash_part, sub_bal, sub_ctr, cash_bal, cash_ctr, kv=0x07, alg=0x02, rnd=b"\x11\x22\x33\x44"
):
    return (
        sub_part.to_bytes(4, "big")
        + cash_part.to_bytes(4, "big")
        + sub_bal.to_bytes(4, "big")
        + sub_ctr.to_bytes(2, "big")
        + cash_bal.to_bytes(4, "big")
        + cash_ctr.to_bytes(2, "big")
        + bytes([kv, alg])
        + rnd
        + OK
    )


def parse_open(raw: bytes, amount: int) -> sp.TwoPurseInit:
    """parse_two_purse, then open_two_purse with the sealed bytes taken as their own plaintext (no SAM here)."""
    init = sp.parse_two_purse(raw)
    return sp.open_two_purse(init, init.sealed, amount)


def test_parse_two_purse_keeps_the_sealed_fields_and_the_clear_counters():
    # bytes 0..11 and 14..17 are sealed (card-application.md 5.2a); the counters, key version, algorithm, random clear
    raw = bytes.fromhex("00000064000000C8000003E801020000271003040501DEADBEEF") + OK
    assert sp.parse_two_purse(raw) == sp.SealedTwoPurse(
        sealed=bytes.fromhex("00000064000000C8000003E800002710"),
        subsidy_counter=0x0102,
        cash_counter=0x0304,
        key_version=5,
        algorithm=Algorithm.AES128,
        random=bytes.fromhex("DEADBEEF"),
    )
    init = sp.parse_two_purse(raw)
    assert (
        refusal(CardProtocolError, sp.open_two_purse, init, init.sealed[:15], 300)
        == "the deciphered two-purse fields are 15 bytes, not 16"
    )


def test_parse_two_purse_exact_fields():
    raw = bytes.fromhex("00000064000000C8000003E801020000271003040501DEADBEEF") + OK
    assert parse_open(raw, 300) == sp.TwoPurseInit(
        subsidy_part=100,
        cash_part=200,
        subsidy_balance=1000,
        subsidy_counter=0x0102,
        cash_balance=10_000,
        cash_counter=0x0304,
        key_version=5,
        algorithm=Algorithm.AES128,
        random=bytes.fromhex("DEADBEEF"),
    )
    init = parse_open(two_purse_answer(0, 1, 0, 0, 1, 65535, kv=0x09, alg=0x02), 1)
    assert (init.subsidy_part, init.cash_part, init.subsidy_balance, init.cash_balance) == (0, 1, 0, 1)
    assert (init.subsidy_counter, init.cash_counter, init.key_version) == (0, 65535, 9)
    assert init.algorithm is Algorithm.SM4 and init.random == b"\x11\x22\x33\x44"


def test_parse_two_purse_balances_at_limits():
    # subsidy_first: all of it from the subsidy purse, exactly its balance (the limit is allowed)
    init = parse_open(two_purse_answer(MAX, 0, MAX, 65535, MAX, 0), MAX)
    assert (init.subsidy_part, init.cash_part, init.subsidy_balance, init.cash_balance) == (MAX, 0, MAX, MAX)
    assert (init.subsidy_counter, init.cash_counter) == (65535, 0)
    # a split using both balances exactly
    init = parse_open(two_purse_answer(40, 60, 40, 1, 60, 2), 100)
    assert (init.subsidy_part, init.cash_part) == (40, 60)
    # cash_first: all from cash, exactly its balance
    init = parse_open(two_purse_answer(0, 250, 0, 0, 250, 0), 250)
    assert (init.subsidy_part, init.cash_part) == (0, 250)


def test_parse_two_purse_every_byte_of_each_field_counts():
    # Each 4-byte amount and 2-byte counter with a distinct non-zero top byte: a field read one byte short (or from a
    # neighbour's offset) gives another value, and the card's split no longer adds up to the sale.
    # cash_first of 0x01020304 fen from a cash purse of 0x05060708, with 0x000A0B0C fen of subsidy left untouched
    init = parse_open(two_purse_answer(0, 0x01020304, 0x000A0B0C, 0x0D0E, 0x05060708, 0x0F10), 0x01020304)
    assert (init.subsidy_part, init.cash_part) == (0, 0x01020304)
    assert (init.subsidy_balance, init.cash_balance) == (0x000A0B0C, 0x05060708)
    assert (init.subsidy_counter, init.cash_counter) == (0x0D0E, 0x0F10)
    # subsidy_first: 0x11121314 fen from the subsidy purse and 0x21222324 more from cash
    init = parse_open(
        two_purse_answer(0x11121314, 0x21222324, 0x31323334, 0x4142, 0x51525354, 0x6162), 0x11121314 + 0x21222324
    )
    assert (init.subsidy_part, init.cash_part) == (0x11121314, 0x21222324)
    assert (init.subsidy_balance, init.cash_balance) == (0x31323334, 0x51525354)
    assert (init.subsidy_counter, init.cash_counter) == (0x4142, 0x6162)
    # exactly 2^24 fen from cash (only the top byte of the part set) is a whole split, accepted
    init = parse_open(two_purse_answer(0, 0x01000000, 0, 0, 0x01000000, 0), 0x01000000)
    assert (init.subsidy_part, init.cash_part, init.cash_balance) == (0, 0x01000000, 0x01000000)
    # and 2^24 fen from the subsidy purse likewise
    init = parse_open(two_purse_answer(0x01000000, 0, 0x01000000, 0, 0, 0), 0x01000000)
    assert (init.subsidy_part, init.cash_part, init.subsidy_balance) == (0x01000000, 0, 0x01000000)


def test_parse_two_purse_split_refusals():
    assert refusal(CardProtocolError, parse_open, two_purse_answer(40, 59, 40, 0, 60, 0), 100) == (
        "the card split 100 fen into 40 + 59"
    )
    assert refusal(CardProtocolError, parse_open, two_purse_answer(40, 61, 40, 0, 61, 0), 100) == (
        "the card split 100 fen into 40 + 61"
    )
    beyond = "the card split the sale beyond its balances"
    assert refusal(CardProtocolError, parse_open, two_purse_answer(41, 59, 40, 0, 60, 0), 100) == beyond
    assert refusal(CardProtocolError, parse_open, two_purse_answer(40, 60, 40, 0, 59, 0), 100) == beyond
    assert refusal(CardProtocolError, parse_open, two_purse_answer(1, 0, 0, 0, 1000, 0), 1) == beyond
    assert refusal(CardProtocolError, parse_open, two_purse_answer(0, 1, 1000, 0, 0, 0), 1) == beyond


def test_parse_two_purse_status_and_length_refusals():
    assert refusal(InsufficientBalance, sp.parse_two_purse, b"\x94\x01") == "insufficient balance in the two purses"
    assert refusal(CardProtocolError, sp.parse_two_purse, b"\x94\x02") == (
        "INITIALIZE FOR PURCHASE (two purses) answered status 9402"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse, b"\x6a\x82") == (
        "INITIALIZE FOR PURCHASE (two purses) answered status 6A82"
    )
    good = two_purse_answer(40, 60, 40, 0, 60, 0)
    assert refusal(CardProtocolError, sp.parse_two_purse, good[:25] + OK) == (
        "INITIALIZE FOR PURCHASE (two purses) returned 25 bytes, expected 26"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse, good[:26] + b"\x00" + OK) == (
        "INITIALIZE FOR PURCHASE (two purses) returned 27 bytes, expected 26"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse, two_purse_answer(40, 60, 40, 0, 60, 0, alg=0x03)) == (
        "unknown algorithm ID 03"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse, b"\x94") == "response of 1 byte(s) has no status word"


# --- DEBIT FOR PURCHASE, two purses --------------------------------------------------------------------------------


def test_parse_two_purse_debit_exact():
    raw = bytes(range(1, 9)) + bytes(range(9, 17)) + bytes(range(17, 25)) + OK
    assert sp.parse_two_purse_debit(raw) == sp.TwoPurseProof(
        subsidy_tac=bytes(range(1, 9)), cash_tac=bytes(range(9, 17)), mac=bytes(range(17, 25))
    )
    proof = sp.parse_two_purse_debit(sp.NO_TAC + b"\xcc" * 8 + b"\xdd" * 8 + OK)
    assert proof.subsidy_tac == bytes(8) and proof.cash_tac == b"\xcc" * 8 and proof.mac == b"\xdd" * 8


def test_parse_two_purse_debit_refusals():
    assert refusal(MacRefused, sp.parse_two_purse_debit, b"\x93\x02") == "the card refused MAC1"
    assert refusal(PurseExpired, sp.parse_two_purse_debit, b"\x69\x85") == "the card says a purse has expired"
    assert refusal(CardProtocolError, sp.parse_two_purse_debit, b"\x93\x01") == (
        "DEBIT FOR PURCHASE (two purses) answered status 9301"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse_debit, b"\x69\x86") == (
        "DEBIT FOR PURCHASE (two purses) answered status 6986"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse_debit, bytes(23) + OK) == (
        "DEBIT FOR PURCHASE (two purses) returned 23 bytes, expected 24"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse_debit, bytes(25) + OK) == (
        "DEBIT FOR PURCHASE (two purses) returned 25 bytes, expected 24"
    )
    assert refusal(CardProtocolError, sp.parse_two_purse_debit, b"") == "response of 0 byte(s) has no status word"


# --- INITIALIZE FOR LOAD, subsidy ----------------------------------------------------------------------------------


def test_subsidy_load_command_exact_bytes():
    assert sp.subsidy_load_command(1, TID, dt.date(2026, 12, 31), 1) == bytes.fromhex(
        "805000011101 00000001 A1A2A3A4A5A6 20261231 0001 14"
    )
    assert sp.subsidy_load_command(MAX, bytes(6), dt.date(2027, 1, 5), 0xFFFF) == bytes.fromhex(
        "805000011101 FFFFFFFF 000000000000 20270105 FFFF 14"
    )
    assert sp.subsidy_load_command(7, TID, dt.date(2027, 1, 5), 0) == bytes.fromhex(  # 0: an undone sale's refund
        "805000011101 00000007 A1A2A3A4A5A6 20270105 0000 14"
    )
    assert sp.subsidy_load_command(7, TID, dt.date(2027, 1, 5), 0x0102)[-3:] == bytes.fromhex("010214")
    assert refusal(ValueError, sp.subsidy_load_command, 0, TID, dt.date(2026, 1, 1), 1) == (
        "amount 0 must be between 1 and 4294967295 fen"
    )
    assert refusal(ValueError, sp.subsidy_load_command, 1, TID, DAY, 0x10000) == (
        "allowance number 65536 is not 0..65535"
    )
    assert refusal(ValueError, sp.subsidy_load_command, 1, TID, DAY, -1) == "allowance number -1 is not 0..65535"


def test_parse_subsidy_load_refused_allowance():
    """94 07: the card already loaded this allowance or a later one; nothing changed."""
    assert refusal(sp.AllowanceLoaded, sp.parse_subsidy_load, bytes.fromhex("9407")) == (
        "the card already loaded this allowance or a later one"
    )
    assert issubclass(sp.AllowanceLoaded, CardProtocolError)
    assert refusal(CardProtocolError, sp.parse_subsidy_load, bytes.fromhex("9406")) != (
        "the card already loaded this allowance or a later one"
    )
    assert refusal(CardProtocolError, sp.parse_subsidy_load, bytes.fromhex("9407"), False) == (
        "a subsidy purse answered on a version 1 card"
    )


def test_parse_subsidy_load_exact():
    raw = bytes.fromhex("0000C350FFFF030101020304A0A1A2A3A4A5A6A7") + OK
    assert sp.parse_subsidy_load(raw) == LoadInit(
        balance=None,  # sealed (card-application.md 5.2a): the subsidy purse is on version 2 cards only
        sealed=bytes.fromhex("0000C350"),
        counter=65535,
        key_version=3,
        algorithm=Algorithm.AES128,
        random=bytes.fromhex("01020304"),
        mac1=bytes.fromhex("A0A1A2A3A4A5A6A7"),
    )
    init = sp.parse_subsidy_load(bytes.fromhex("FFFFFFFF0000090205060708B0B1B2B3B4B5B6B7") + OK)
    assert (init.sealed, init.counter, init.key_version, init.algorithm) == (b"\xff" * 4, 0, 9, Algorithm.SM4)
    assert init.balance is None
    assert (
        refusal(CardProtocolError, sp.parse_subsidy_load, raw, False) == "a subsidy purse answered on a version 1 card"
    )
    assert init.random == bytes.fromhex("05060708") and init.mac1 == bytes.fromhex("B0B1B2B3B4B5B6B7")


def test_parse_subsidy_load_refusals():
    assert refusal(CardProtocolError, sp.parse_subsidy_load, b"\x94\x01") == (
        "INITIALIZE FOR LOAD (subsidy) answered status 9401"
    )
    assert refusal(CardProtocolError, sp.parse_subsidy_load, b"\x69\x85") == (
        "INITIALIZE FOR LOAD (subsidy) answered status 6985"
    )
    assert refusal(CardProtocolError, sp.parse_subsidy_load, bytes(19) + OK) == (
        "INITIALIZE FOR LOAD (subsidy) returned 19 bytes, expected 20"
    )
    assert refusal(CardProtocolError, sp.parse_subsidy_load, bytes(21) + OK) == (
        "INITIALIZE FOR LOAD (subsidy) returned 21 bytes, expected 20"
    )
    assert refusal(CardProtocolError, sp.parse_subsidy_load, bytes(7) + b"\x00" + bytes(12) + OK) == (
        "unknown algorithm ID 00"
    )


# --- withdrawal ----------------------------------------------------------------------------------------------------


def test_withdraw_command_exact_bytes():
    assert sp.withdraw_command(TID) == bytes.fromhex("805002010B0100000000A1A2A3A4A5A60F")
    assert sp.withdraw_command(bytes(6)) == bytes.fromhex("805002010B01000000000000000000000F")


def test_parse_withdraw_init_exact():
    # balance(4) counter(2) overdraft limit(3, ignored) key version algorithm random(4)
    raw = bytes.fromhex("000000010000AABBCC07020A0B0C0D") + OK
    assert sp.parse_withdraw_init(raw) == PurchaseInit(
        balance=None,
        counter=0,
        key_version=7,
        algorithm=Algorithm.SM4,
        random=bytes.fromhex("0A0B0C0D"),
        sealed=bytes.fromhex("00000001"),
    )
    raw = bytes.fromhex("FFFFFFFFFFFF000000050100000001") + OK
    assert sp.parse_withdraw_init(raw) == PurchaseInit(
        balance=None,
        counter=65535,
        key_version=5,
        algorithm=Algorithm.AES128,
        random=bytes.fromhex("00000001"),
        sealed=b"\xff" * 4,
    )


def test_parse_withdraw_init_refusals():
    assert refusal(InsufficientBalance, sp.parse_withdraw_init, b"\x94\x01") == "the subsidy balance is 0"
    assert refusal(CardProtocolError, sp.parse_withdraw_init, b"\x94\x03") == (
        "INITIALIZE FOR WITHDRAW answered status 9403"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_init, bytes(14) + OK) == (
        "INITIALIZE FOR WITHDRAW returned 14 bytes, expected 15"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_init, bytes(16) + OK) == (
        "INITIALIZE FOR WITHDRAW returned 16 bytes, expected 15"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_init, bytes(9) + b"\x01\x04" + bytes(4) + OK) == (
        "unknown algorithm ID 04"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_init, b"\x01") == "response of 1 byte(s) has no status word"


def test_parse_withdraw_debit_exact():
    raw = bytes.fromhex("01020304050607081112131415161718") + OK
    assert sp.parse_withdraw_debit(raw) == Proof(
        tac=bytes.fromhex("0102030405060708"), mac=bytes.fromhex("1112131415161718")
    )


def test_parse_withdraw_debit_refusals():
    assert refusal(MacRefused, sp.parse_withdraw_debit, b"\x93\x02") == "the card refused the withdrawal MAC1"
    assert refusal(sp.NotExpired, sp.parse_withdraw_debit, b"\x69\x85") == "the card says its subsidy has not expired"
    assert refusal(CardProtocolError, sp.parse_withdraw_debit, b"\x93\x03") == (
        "DEBIT FOR PURCHASE (withdrawal) answered status 9303"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_debit, b"\x69\x84") == (
        "DEBIT FOR PURCHASE (withdrawal) answered status 6984"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_debit, bytes(15) + OK) == (
        "DEBIT FOR PURCHASE (withdrawal) returned 15 bytes, expected 16"
    )
    assert refusal(CardProtocolError, sp.parse_withdraw_debit, bytes(17) + OK) == (
        "DEBIT FOR PURCHASE (withdrawal) returned 17 bytes, expected 16"
    )


# --- decisions -----------------------------------------------------------------------------------------------------

DAY = dt.date(2026, 6, 15)


def allowance(i, amount=500, expiry=DAY, policy="subsidy_first", collected=False, asn="00000001", number=None):
    return sp.Allowance(f"al-{i}", asn, amount, expiry, policy, collected, i if number is None else number)


def test_subsidy_expired_edges():
    assert sp.subsidy_expired(None, DAY) is False
    assert sp.subsidy_expired(DAY, DAY) is False
    assert sp.subsidy_expired(DAY, DAY + dt.timedelta(days=1)) is True
    assert sp.subsidy_expired(DAY, DAY - dt.timedelta(days=1)) is False


def test_allowances_to_collect_edges():
    a_today = allowance(1, expiry=DAY)
    a_one = allowance(2, amount=1)
    a_zero = allowance(3, amount=0)
    a_past = allowance(4, expiry=DAY - dt.timedelta(days=1))
    a_platform = allowance(5, collected=True)
    a_here = allowance(6)
    a_future = allowance(7, amount=2**32 - 1, expiry=DAY + dt.timedelta(days=1))
    every = [a_today, a_one, a_zero, a_past, a_platform, a_here, a_future]
    got = sp.allowances_to_collect(every, {"al-6"}, DAY, 0)
    assert got == [a_today, a_one, a_future]
    assert sp.allowances_to_collect([], set(), DAY, 0) == []
    # only numbers above the card's last loaded one (FCI CA): equal is already on the card
    assert sp.allowances_to_collect(every, {"al-6"}, DAY, 1) == [a_one, a_future]
    assert sp.allowances_to_collect(every, {"al-6"}, DAY, 2) == [a_future]
    assert sp.allowances_to_collect(every, {"al-6"}, DAY, 6) == [a_future]
    assert sp.allowances_to_collect(every, {"al-6"}, DAY, 7) == []


def test_allowances_to_collect_in_number_order():
    late, early, middle = allowance(1, number=9), allowance(2, number=3), allowance(3, number=5)
    assert sp.allowances_to_collect([late, early, middle], set(), DAY, 0) == [early, middle, late]
    assert sp.allowances_to_collect([late, early, middle], set(), DAY, 4) == [middle, late]


def test_policy_for():
    assert sp.policy_for([]) == "subsidy_first"
    assert sp.policy_for([], "cash_first") == "cash_first"
    assert sp.policy_for([allowance(1, policy="subsidy_first"), allowance(2, policy="cash_first")]) == "cash_first"
    assert sp.policy_for([allowance(1, policy="cash_first"), allowance(2, policy="subsidy_first")], "cash_first") == (
        "subsidy_first"
    )


def test_allowances_from_body_exact():
    body = {
        "allowances": [
            {
                "allowance_id": "a-1",
                "asn": "0102",
                "amount": 1,
                "expiry": "2026-12-31",
                "policy": "cash_first",
                "collected": True,
                "number": 1,
            },
            {
                "allowance_id": "a-2",
                "asn": "0304",
                "amount": 4294967295,
                "expiry": "2027-01-01",
                "policy": "subsidy_first",
                "collected": False,
                "number": 65535,
            },
        ]
    }
    got = sp.allowances_from_body(body)
    assert got == [
        sp.Allowance("a-1", "0102", 1, dt.date(2026, 12, 31), "cash_first", True, 1),
        sp.Allowance("a-2", "0304", 4294967295, dt.date(2027, 1, 1), "subsidy_first", False, 65535),
    ]
    assert [a.number for a in got] == [1, 65535]
    assert got[0].collected is True and got[1].collected is False
    assert sp.allowances_from_body({"allowances": []}) == []


def test_allowance_default_not_collected():
    assert sp.Allowance("a", "b", 1, DAY, "cash_first").collected is False
    assert sp.Allowance("a", "b", 1, DAY, "cash_first").number == 1


# --- any bytes: parse, or our own error (the sealed answers of card-application.md 5.2a) ----------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40),
        st.tuples(st.binary(min_size=26, max_size=26), st.sampled_from([1, 2])).map(
            lambda t: t[0][:21] + bytes([t[1]]) + t[0][22:] + OK
        ),
    ),
    st.one_of(st.binary(max_size=20), st.binary(min_size=16, max_size=16)),
    st.integers(min_value=1, max_value=MAX),
)
def test_sealed_two_purse_answers_parse_or_raise_our_error(answer, clear, amount):
    try:
        init = sp.parse_two_purse(answer)
    except CardProtocolError:
        return
    assert len(init.sealed) == 16 and len(init.random) == 4
    try:
        opened = sp.open_two_purse(init, clear, amount)
    except CardProtocolError:
        return
    assert opened.subsidy_part + opened.cash_part == amount
    assert opened.subsidy_part <= opened.subsidy_balance and opened.cash_part <= opened.cash_balance
