"""sam/purse_crypto.py against docs/card-application.md 5.2, recomputed here with `cryptography` directly (ECB and
CMAC, not through sam.crypto): values that tell every field apart (counter != TSN, balance != amount, date != time),
fields at their limits, and every refusal with its words. Issue 15."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sam import purse_crypto as pc
from sam.interface import Algorithm

KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
SK = bytes.fromhex("F0E1D2C3B4A5968778695A4B3C2D1E0F")
RANDOM = bytes.fromhex("A1B2C3D4")
TERMINAL = bytes.fromhex("112233445566")
DATE, TIME = bytes.fromhex("20261123"), bytes.fromhex("235859")
CIPHERS = {Algorithm.AES128: algorithms.AES, Algorithm.SM4: algorithms.SM4}


def ecb(alg, key, block):
    assert len(block) == 16
    enc = Cipher(CIPHERS[alg](key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def mac8(alg, key, message):
    c = cmac.CMAC(CIPHERS[alg](key))
    c.update(message)
    return c.finalize()[:8]


def h(text):
    return bytes.fromhex(text)


@pytest.mark.parametrize("alg", list(Algorithm))
def test_session_keys(alg):
    assert pc.purchase_session_key(alg, KEY, RANDOM, 0x0102, 0x0A0B0C0D) == ecb(
        alg, KEY, RANDOM + h("0102") + h("0A0B0C0D") + h("80 0000000000")
    )
    assert pc.purchase_session_key(alg, KEY, RANDOM, 0xFFFF, 0xFFFFFFFF) == ecb(
        alg, KEY, RANDOM + h("FFFF FFFFFFFF 80 0000000000")
    )
    assert pc.load_session_key(alg, KEY, RANDOM, 0x0102) == ecb(alg, KEY, RANDOM + h("0102 80 000000000000000000"))
    assert pc.load_session_key(alg, KEY, RANDOM, 0) == ecb(alg, KEY, RANDOM + h("0000 80 000000000000000000"))


@pytest.mark.parametrize("alg", list(Algorithm))
def test_macs(alg):
    assert pc.purchase_mac1(alg, SK, 0x01020304, TERMINAL, DATE, TIME) == mac8(
        alg, SK, h("01020304 06") + TERMINAL + DATE + TIME
    )
    assert pc.purchase_mac2(alg, SK, 0x01020304) == mac8(alg, SK, h("01020304"))
    assert pc.load_mac1(alg, SK, 0x0A0B0C0D, 0x01020304, TERMINAL) == mac8(
        alg, SK, h("0A0B0C0D 01020304 02") + TERMINAL
    )
    assert pc.load_mac2(alg, SK, 0x01020304, TERMINAL, DATE, TIME) == mac8(
        alg, SK, h("01020304 02") + TERMINAL + DATE + TIME
    )
    assert pc.load_mac3(alg, SK, 0x0A0B0C0D, 0x01020304) == mac8(alg, SK, h("0A0B0C0D 01020304"))
    assert pc.purchase_mac2(alg, SK, 0xFFFFFFFF) == mac8(alg, SK, h("FFFFFFFF"))
    assert pc.load_mac3(alg, SK, 0, 0xFFFFFFFF) == mac8(alg, SK, h("00000000 FFFFFFFF"))


@pytest.mark.parametrize("alg", list(Algorithm))
@pytest.mark.parametrize("tx_type", [0x02, 0x06])
def test_tac(alg, tx_type):
    got = pc.tac(
        alg,
        KEY,
        amount=0x01020304,
        tx_type=tx_type,
        terminal_id=TERMINAL,
        tsn=0x0A0B0C0D,
        date=DATE,
        time=TIME,
        counter=0x0E0F,
        balance_after=0x10203040,
    )
    expected = h("01020304") + bytes([tx_type]) + TERMINAL + h("0A0B0C0D") + DATE + TIME + h("0E0F 10203040")
    assert got == mac8(alg, KEY, expected)


def tac_of(**changes):
    kwargs = dict(amount=1, tx_type=0x06, terminal_id=TERMINAL, tsn=2, date=DATE, time=TIME, counter=3, balance_after=4)
    kwargs.update(changes)
    return pc.tac(Algorithm.AES128, KEY, **kwargs)


def refused(message, call, *args, **kwargs):
    with pytest.raises(ValueError) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is ValueError
    assert str(caught.value) == message


def test_tac_refusals():
    refused("transaction type 0x03 is not one of 01, 02, 04, 05, 06, 85, 86", tac_of, tx_type=0x03)
    refused("transaction type 0x09 is not one of 01, 02, 04, 05, 06, 85, 86", tac_of, tx_type=0x09)
    refused("transaction type 0x07 is not one of 01, 02, 04, 05, 06, 85, 86", tac_of, tx_type=0x07)
    refused("transaction type 0x84 is not one of 01, 02, 04, 05, 06, 85, 86", tac_of, tx_type=0x84)
    refused("transaction type 0x87 is not one of 01, 02, 04, 05, 06, 85, 86", tac_of, tx_type=0x87)
    # the two spending-password types (card-application.md 5.5, 5.6) are TAC types, each its own MAC input
    assert len({tac_of(tx_type=t) for t in (0x05, 0x06, 0x85, 0x86)}) == 4
    refused("4294967296 does not fit in 4 bytes", tac_of, amount=2**32)
    refused("-1 does not fit in 4 bytes", tac_of, balance_after=-1)
    refused("4294967296 does not fit in 4 bytes", tac_of, tsn=2**32)
    refused("65536 does not fit in 2 bytes", tac_of, counter=0x10000)
    refused("-1 does not fit in 2 bytes", tac_of, counter=-1)
    assert tac_of(amount=0xFFFFFFFF, tsn=0, counter=0xFFFF, balance_after=0)  # the limits themselves fit


LENGTHS = "card random is 4 bytes, terminal ID 6, date 4 (BCD), time 3 (BCD)"


def test_field_lengths_are_checked():
    alg = Algorithm.SM4
    for bad in (RANDOM[:3], RANDOM + b"\x00"):
        refused(LENGTHS, pc.purchase_session_key, alg, KEY, bad, 1, 2)
        refused(LENGTHS, pc.load_session_key, alg, KEY, bad, 1)
    for bad in (TERMINAL[:5], TERMINAL + b"\x00"):
        refused(LENGTHS, pc.purchase_mac1, alg, SK, 1, bad, DATE, TIME)
        refused(LENGTHS, pc.load_mac1, alg, SK, 1, 2, bad)
        refused(LENGTHS, pc.load_mac2, alg, SK, 1, bad, DATE, TIME)
        refused(LENGTHS, tac_of, terminal_id=bad)
    for bad in (DATE[:3], DATE + b"\x00"):
        refused(LENGTHS, pc.purchase_mac1, alg, SK, 1, TERMINAL, bad, TIME)
        refused(LENGTHS, pc.load_mac2, alg, SK, 1, TERMINAL, bad, TIME)
        refused(LENGTHS, tac_of, date=bad)
    for bad in (TIME[:2], TIME + b"\x00"):
        refused(LENGTHS, pc.purchase_mac1, alg, SK, 1, TERMINAL, DATE, bad)
        refused(LENGTHS, pc.load_mac2, alg, SK, 1, TERMINAL, DATE, bad)
        refused(LENGTHS, tac_of, time=bad)


def test_integer_limits():
    alg = Algorithm.AES128
    refused("65536 does not fit in 2 bytes", pc.purchase_session_key, alg, KEY, RANDOM, 0x10000, 1)
    refused("-1 does not fit in 2 bytes", pc.load_session_key, alg, KEY, RANDOM, -1)
    refused("4294967296 does not fit in 4 bytes", pc.purchase_session_key, alg, KEY, RANDOM, 1, 2**32)
    refused("-1 does not fit in 4 bytes", pc.purchase_session_key, alg, KEY, RANDOM, 1, -1)
    refused("4294967296 does not fit in 4 bytes", pc.purchase_mac2, alg, SK, 2**32)
    refused("-1 does not fit in 4 bytes", pc.load_mac3, alg, SK, -1, 1)
    refused("4294967296 does not fit in 4 bytes", pc.load_mac1, alg, SK, 1, 2**32, TERMINAL)
    assert pc._u32(0) == bytes(4) and pc._u32(0xFFFFFFFF) == h("FFFFFFFF") and pc._u32(0x01020304) == h("01020304")
    assert pc._u16(0) == bytes(2) and pc._u16(0xFFFF) == h("FFFF") and pc._u16(0x0102) == h("0102")


# --- 5.2a: the sealed balance (SK_BAL and its keystream), 5.6: the type bytes of the subsidy flows ---


def keystream(alg, sk, length):
    blocks = b"".join(i.to_bytes(16, "big") for i in range((length + 15) // 16))
    enc = Cipher(CIPHERS[alg](sk), modes.ECB()).encryptor()
    return (enc.update(blocks) + enc.finalize())[:length]


@pytest.mark.parametrize("alg", list(Algorithm))
def test_balance_session_key_is_not_a_mac_session_key(alg):
    assert pc.balance_session_key(alg, KEY, RANDOM, 0x0102) == ecb(alg, KEY, RANDOM + h("0102 00000000 05 0000000000"))
    assert pc.balance_session_key(alg, KEY, RANDOM, 0xFFFF) == ecb(alg, KEY, RANDOM + h("FFFF 00000000 05 0000000000"))
    assert pc.balance_session_key(alg, KEY, RANDOM, 0) == ecb(alg, KEY, RANDOM + h("0000 00000000 05 0000000000"))
    # byte 10 (05 where SK_P has 80) and byte 6 (00 where SK_L has 80): three different keys
    keys = {
        pc.balance_session_key(alg, KEY, RANDOM, 7),
        pc.purchase_session_key(alg, KEY, RANDOM, 7, 0),
        pc.load_session_key(alg, KEY, RANDOM, 7),
    }
    assert len(keys) == 3


def test_balance_session_key_refusals():
    alg = Algorithm.SM4
    for bad in (RANDOM[:3], RANDOM + b"\x00", b""):
        refused(LENGTHS, pc.balance_session_key, alg, KEY, bad, 1)
        refused(LENGTHS, pc.seal_purse_data, alg, KEY, bad, 1, bytes(4))
    refused("65536 does not fit in 2 bytes", pc.balance_session_key, alg, KEY, RANDOM, 0x10000)
    refused("-1 does not fit in 2 bytes", pc.balance_session_key, alg, KEY, RANDOM, -1)
    refused("65536 does not fit in 2 bytes", pc.seal_purse_data, alg, KEY, RANDOM, 0x10000, bytes(4))


@pytest.mark.parametrize("alg", list(Algorithm))
@pytest.mark.parametrize("length", [4, 16, 20, 33])
def test_seal_purse_data_is_the_sk_bal_keystream(alg, length):
    clear = bytes((0x31 * i + 7) & 0xFF for i in range(length))
    sk_bal = ecb(alg, KEY, RANDOM + h("0A0B 00000000 05 0000000000"))
    sealed = pc.seal_purse_data(alg, KEY, RANDOM, 0x0A0B, clear)
    assert sealed == bytes(a ^ b for a, b in zip(clear, keystream(alg, sk_bal, length), strict=True))
    assert len(sealed) == length and sealed != clear
    assert pc.seal_purse_data(alg, KEY, RANDOM, 0x0A0B, sealed) == clear  # the same operation opens it
    assert pc.seal_purse_data(alg, KEY, RANDOM, 0x0A0C, sealed) != clear  # the counter is in the key


def test_the_sealed_balance_example_of_5_2a():
    """docs/card-application.md 5.2a, byte for byte: K_PURCHASE 20..2F, K_LOAD 30..3F, AES-128, counters 0."""
    alg = Algorithm.AES128
    k_purchase, k_load = bytes(range(0x20, 0x30)), bytes(range(0x30, 0x40))
    examples = [
        (k_purchase, "0A0B0C0D", "46 D3 2E 86 12 CF EA D0 F5 4D 59 A3 1B D7 57 FE"),
        (k_load, "1A1B1C1D", "8E C2 D5 B3 99 22 C1 6C B5 C1 FB 9E 57 97 A6 22"),
        (k_purchase, "2A2B2C2D", "D9 27 D9 3A 39 C5 E2 76 1B 44 11 B8 96 D8 9C C7"),
    ]
    for key, random, sk in examples:
        assert pc.balance_session_key(alg, key, h(random), 0) == h(sk)
    assert pc.seal_purse_data(alg, k_purchase, h("0A0B0C0D"), 0, h("0C 21 03 0B")) == h("00 00 27 10")
    assert pc.seal_purse_data(alg, k_load, h("1A1B1C1D"), 0, h("67 51 F4 14")) == h("00 00 27 10")
    answer = h("6F 0A 39 2A A6 99 83 E0 92 F6 72 CB 00 00 EA 71 FC 88 00 00 01 01 2A 2B 2C 2D")
    clear = pc.seal_purse_data(alg, k_purchase, h("2A2B2C2D"), 0, answer[0:12] + answer[14:18])
    assert clear == h("000007D0 000003E8 000007D0 00002710")
    assert pc.seal_purse_data(alg, k_purchase, h("2A2B2C2D"), 0, clear) == answer[0:12] + answer[14:18]


@pytest.mark.parametrize("alg", list(Algorithm))
def test_type_bytes_of_every_debit_and_load(alg):
    for tx_type in (0x06, 0x05, 0x04):
        assert pc.purchase_mac1(alg, SK, 0x01020304, TERMINAL, DATE, TIME, tx_type) == mac8(
            alg, SK, h("01020304") + bytes([tx_type]) + TERMINAL + DATE + TIME
        )
    for tx_type in (0x02, 0x01):
        assert pc.load_mac1(alg, SK, 0x0A0B0C0D, 0x01020304, TERMINAL, tx_type) == mac8(
            alg, SK, h("0A0B0C0D 01020304") + bytes([tx_type]) + TERMINAL
        )
    expiry = h("20271231")
    # a subsidy load's MAC2 ends with the allowance expiry and number (section 5.6); number 0 is a refund
    assert pc.load_mac2(alg, SK, 0x01020304, TERMINAL, DATE, TIME, 0x01, expiry) == mac8(
        alg, SK, h("01020304 01") + TERMINAL + DATE + TIME + expiry + h("0000")
    )
    assert pc.load_mac2(alg, SK, 0x01020304, TERMINAL, DATE, TIME, 0x01, expiry, 0x0A0B) == mac8(
        alg, SK, h("01020304 01") + TERMINAL + DATE + TIME + expiry + h("0A0B")
    )
    assert pc.load_mac2(alg, SK, 0x01020304, TERMINAL, DATE, TIME, 0x01, expiry, 0xFFFF) == mac8(
        alg, SK, h("01020304 01") + TERMINAL + DATE + TIME + expiry + h("FFFF")
    )
    assert pc.load_mac2(alg, SK, 0x01020304, TERMINAL, DATE, TIME, 0x02, b"", 0) == mac8(
        alg, SK, h("01020304 02") + TERMINAL + DATE + TIME
    )
    assert pc._load_type(0x02, b"") == h("02") and pc._load_type(0x01, expiry) == h("01")
    assert pc._load_type(0x01, expiry, 0) == h("01") and pc._load_type(0x01, expiry, 0xFFFF) == h("01")
    # a two-purse sale's MAC2 covers the subsidy share after the amount
    assert pc.purchase_mac2(alg, SK, 0x01020304, 0x0A0B0C0D) == mac8(alg, SK, h("01020304 0A0B0C0D"))
    assert pc.purchase_mac2(alg, SK, 0x01020304, 0) == mac8(alg, SK, h("01020304 00000000"))
    assert pc.purchase_mac2(alg, SK, 0x01020304, 0) != pc.purchase_mac2(alg, SK, 0x01020304)


def test_type_refusals():
    alg = Algorithm.AES128
    for bad in (0x02, 0x01, 0x86, 0x07):
        refused(
            f"transaction type {bad:#04x} is not a debit (06 purchase, 05 two-purse, 04 withdrawal)",
            pc.purchase_mac1,
            alg,
            SK,
            1,
            TERMINAL,
            DATE,
            TIME,
            bad,
        )
    for bad in (0x06, 0x05, 0x03):
        refused(
            f"load type {bad:#04x} is neither 02 (cash) nor 01 (subsidy)", pc.load_mac1, alg, SK, 1, 2, TERMINAL, bad
        )
    expiry = h("20271231")
    for tx_type, bad_expiry in [
        (0x02, expiry),  # a cash load has no expiry
        (0x01, b""),  # a subsidy load has one
        (0x01, expiry[:3]),
        (0x01, expiry + b"\x00"),
        (0x06, b""),
        (0x06, expiry),
    ]:
        refused(
            f"load type {tx_type:#04x} with expiry {bad_expiry.hex()!r} and allowance number 0: "
            "02 without expiry or number, 01 with 4 bytes and a number 0..65535",
            pc.load_mac2,
            alg,
            SK,
            1,
            TERMINAL,
            DATE,
            TIME,
            tx_type,
            bad_expiry,
        )
    for tx_type, bad_expiry, number in [(0x02, b"", 1), (0x01, expiry, 0x10000), (0x01, expiry, -1)]:
        refused(
            f"load type {tx_type:#04x} with expiry {bad_expiry.hex()!r} and allowance number {number}: "
            "02 without expiry or number, 01 with 4 bytes and a number 0..65535",
            pc.load_mac2,
            alg,
            SK,
            1,
            TERMINAL,
            DATE,
            TIME,
            tx_type,
            bad_expiry,
            number,
        )
    refused("4294967296 does not fit in 4 bytes", pc.purchase_mac2, alg, SK, 1, 2**32)
