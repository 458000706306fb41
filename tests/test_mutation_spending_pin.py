"""terminal/spending_pin.py, every line pinned (bench/mutation.py kills its mutants with this file alone)."""

from __future__ import annotations

import pytest

from terminal import spending_pin as sp

H = bytes.fromhex


def test_constants():
    assert (sp.PIN_MIN, sp.PIN_MAX, sp.MAX_TRIES, sp.PIN_BLOCK_LEN) == (4, 12, 3, 8)
    assert (sp.P2_SPENDING_PIN, sp.INS_VERIFY, sp.INS_CHANGE_PIN, sp.INS_RESET_RETRY, sp.P1_RESET_ONLY) == (
        0x80,
        0x20,
        0x24,
        0x2C,
        0x03,
    )
    assert sp.PIN_PAD == b"\xff" * 8


def test_parse_pin_lengths_and_digits():
    for ok in ("0000", "1234", "123456789012", b"5678", bytearray(b"90123")):
        assert len(sp.parse_pin(ok)) == len(ok)
    for short in ("", "1", "123"):
        with pytest.raises(sp.PinFormatError, match="^the spending password has 4 to 12 digits: type it again$"):
            sp.parse_pin(short)
    with pytest.raises(sp.PinFormatError, match="4 to 12"):
        sp.parse_pin("1234567890123")
    for bad in ("12a4", "12 34", "/123", ":123", "١٢٣٤", b"12\x004"):
        with pytest.raises(sp.PinFormatError, match="^the spending password is digits only: type it again$"):
            sp.parse_pin(bad)


def test_parse_pin_wipes_what_it_refuses_and_copies_what_it_keeps():
    typed = bytearray(b"12a4")
    with pytest.raises(sp.PinFormatError):
        sp.parse_pin(typed)
    assert typed == b"12a4"  # the caller's buffer is the caller's to wipe
    kept = bytearray(b"1234")
    pin = sp.parse_pin(kept)
    kept[:] = b"0000"
    assert pin.block() == H("241234FFFFFFFFFF")


def test_pin_block_and_wipe():
    assert sp.parse_pin("1234").block() == H("241234FFFFFFFFFF")
    assert sp.parse_pin("98765").block() == H("2598765FFFFFFFFF")
    assert sp.parse_pin("123456789012").block() == H("2C123456789012FF")
    assert sp.parse_pin("0000").block() == H("240000FFFFFFFFFF")
    pin = sp.parse_pin("1234")
    assert repr(pin) == "Pin(<hidden>)" and "1234" not in repr(pin)
    assert isinstance(pin.block(), bytearray)
    pin.wipe()
    assert len(pin) == 0
    with pytest.raises(ValueError, match="^the PIN was wiped$"):
        pin.block()
    buf = bytearray(b"\x01\x02\x03")
    sp.wipe(buf)
    assert buf == bytearray(3)


def test_parse_pin_block():
    assert sp.parse_pin_block(H("241234FFFFFFFFFF")) == "1234"
    assert sp.parse_pin_block(H("2C123456789012FF")) == "123456789012"
    assert sp.parse_pin_block(H("2598765FFFFFFFFF")) == "98765"
    for bad in (
        "241234FFFFFFFF",  # 7 bytes
        "241234FFFFFFFFFFFF",  # 9 bytes
        "141234FFFFFFFFFF",  # control 1
        "341234FFFFFFFFFF",  # control 3
        "23123FFFFFFFFFFF",  # 3 digits
        "2D1234567890123F",  # 13 digits
        "24123AFFFFFFFFFF",  # a digit A
        "241234FFFFFFFFFE",  # padding not F
        "2412340FFFFFFFFF",  # padding 0 after the digits
    ):
        assert sp.parse_pin_block(H(bad)) is None, bad
    assert sp.parse_pin_block(H("24999AFFFFFFFFFF")) is None
    assert sp.parse_pin_block(H("2499 99FFFFFFFFFF".replace(" ", ""))) == "9999"


def test_commands():
    assert sp.verify_command(H("241234FFFFFFFFFF")) == H("0020008008241234FFFFFFFFFF")
    assert isinstance(sp.verify_command(bytearray(8)), bytearray)
    for n in (7, 9):
        with pytest.raises(ValueError, match="^a PIN block is 8 bytes$"):
            sp.verify_command(bytes(n))
    assert sp.status_command() == H("00200080")
    assert sp.pin_cryptogram_input(H("241234FFFFFFFFFF")) == H("241234FFFFFFFFFF") + b"\xff" * 8
    for n in (7, 9):
        with pytest.raises(ValueError, match="^a PIN block is 8 bytes$"):
            sp.pin_cryptogram_input(bytes(n))


def test_parse_verify():
    assert sp.parse_verify(H("9000")) == sp.PinAnswer("verified", 3, "9000")
    assert sp.parse_verify(H("9000")).verified
    assert sp.parse_verify(H("63C2")) == sp.PinAnswer("wrong", 2, "63C2")
    assert not sp.parse_verify(H("63C2")).verified
    assert sp.parse_verify(H("63C0")) == sp.PinAnswer("wrong", 0, "63C0")
    assert sp.parse_verify(H("63C3")) == sp.PinAnswer("wrong", 3, "63C3")
    assert sp.parse_verify(H("63C4")) == sp.PinAnswer("refused", 0, "63C4")
    assert sp.parse_verify(H("63B2")) == sp.PinAnswer("refused", 0, "63B2")
    assert sp.parse_verify(H("62C2")) == sp.PinAnswer("refused", 0, "62C2")
    assert sp.parse_verify(H("6983")) == sp.PinAnswer("blocked", 0, "6983")
    assert sp.parse_verify(H("6984")) == sp.PinAnswer("not_set", 0, "6984")
    assert sp.parse_verify(H("6A80")) == sp.PinAnswer("refused", 0, "6A80")
    assert sp.parse_verify(H("9001")) == sp.PinAnswer("refused", 0, "9001")
    assert sp.parse_verify(H("8000")) == sp.PinAnswer("refused", 0, "8000")
    assert sp.parse_verify(H("6883")) == sp.PinAnswer("refused", 0, "6883")
    assert sp.parse_verify(H("6985")) == sp.PinAnswer("refused", 0, "6985")
    assert sp.parse_verify(b"") == sp.PinAnswer("refused", 0, "")
    assert sp.parse_verify(b"\x90") == sp.PinAnswer("refused", 0, "")
    assert sp.parse_verify(H("019000")) == sp.PinAnswer("refused", 0, "9000")
    # data before the status word: refused, its SW in upper-case hex like every other answer
    assert sp.parse_verify(H("0A6A82")) == sp.PinAnswer("refused", 0, "6A82")
    assert sp.parse_verify(H("FFFF63CF")) == sp.PinAnswer("refused", 0, "63CF")
    assert sp.PinAnswer("wrong").tries_left == 0 and sp.PinAnswer("wrong").sw == ""


def test_needs_pin_and_messages():
    assert not sp.needs_pin(10_000, 0)
    assert not sp.needs_pin(5000, 5000)
    assert sp.needs_pin(5001, 5000)
    assert not sp.needs_pin(4999, 5000)
    assert sp.needs_pin(2, 1)
    assert sp.wrong_pin_message(0) == (
        "Wrong spending password: now blocked, nothing charged. Unblock it at the card office"
    )
    assert sp.wrong_pin_message(1) == "Wrong spending password: 1 try left, nothing charged"
    assert sp.wrong_pin_message(2) == "Wrong spending password: 2 tries left, nothing charged"
    assert sp.BLOCKED_MESSAGE == "Spending password blocked: nothing charged. Unblock it at the card office"
    assert sp.NOT_SET_MESSAGE == "No spending password on this card: nothing charged. Set one at the card office"
    assert sp.CANCELLED_MESSAGE == "Spending password not entered: cancelled, nothing charged"
