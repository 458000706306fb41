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
    refused("transaction type 0x03 is not one of 01, 02, 04, 05, 06, 86", tac_of, tx_type=0x03)
    refused("transaction type 0x09 is not one of 01, 02, 04, 05, 06, 86", tac_of, tx_type=0x09)
    refused("transaction type 0x07 is not one of 01, 02, 04, 05, 06, 86", tac_of, tx_type=0x07)
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
