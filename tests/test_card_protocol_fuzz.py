"""Whatever bytes a card answers, the terminal's parsers return a value or raise CardProtocolError, never crash."""

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from sam.interface import Algorithm
from terminal import card_protocol as cp

CARD = cp.CardInfo(
    asn=bytes(8),
    enterprise_id=bytes.fromhex("00010001"),
    status=1,
    key_version=1,
    algorithm=Algorithm.AES128,
    card_type=1,
    app_version=1,
)
GOOD_SELECT = bytes.fromhex(
    "6F2C8409F04F4E454341524401A51FC0081122334455667788C10400010001C20101C30101C40101C50101C6010190 00".replace(" ", "")
)


def test_good_select_parses():
    info = cp.parse_select(GOOD_SELECT)
    assert info.asn_hex == "1122334455667788"
    assert info.enterprise_id == bytes.fromhex("00010001")
    assert (info.status, info.key_version, info.algorithm, info.card_type) == (1, 1, Algorithm.AES128, 1)


@given(st.binary(max_size=300))
def test_select_parser_never_crashes(data):
    try:
        info = cp.parse_select(data)
    except cp.CardProtocolError:
        return
    assert isinstance(info, cp.CardInfo) and len(info.asn) == 8


@given(st.data())
@settings(max_examples=300)
def test_mutated_select_never_crashes(data):
    raw = bytearray(GOOD_SELECT)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        cp.parse_select(bytes(raw[:cut]) + bytes(raw[cut:]))
    except cp.CardProtocolError:
        pass


@given(st.binary(max_size=200))
def test_access_read_parser_never_crashes(data):
    try:
        r = cp.parse_access_read(data, CARD, bytes(8), bytes(6))
    except cp.CardProtocolError:
        return
    assert len(r.mac) == 8 and isinstance(r.rights.valid_from, dt.date)


@given(st.binary(min_size=93, max_size=93))
def test_access_read_with_right_length_parses_or_names_the_field(body):
    try:
        r = cp.parse_access_read(body + b"\x90\x00", CARD, bytes(8), bytes(6))
    except cp.CardProtocolError as exc:
        assert "date" in str(exc) or "UTF-8" in str(exc)
        return
    assert r.mac_input.endswith(body[:85]) and len(r.mac_input) == 112


def test_door_group_bit_order():
    assert cp.parse_door_groups(bytes([0x80] + [0] * 7)) == {1}
    assert cp.parse_door_groups(bytes([0, 0x01] + [0] * 6)) == {16}
    assert cp.parse_door_groups(bytes([0] * 7 + [0x01])) == {64}


@given(st.binary(max_size=40), st.booleans())
def test_frozen_purse_parser_never_crashes(data, with_subsidy):
    """APPLICATION BLOCK's answer, P1 00 or 01 (card-application.md 8.2): a value or CardProtocolError."""
    try:
        frozen = cp.parse_frozen_purse(data, with_subsidy)
    except cp.CardProtocolError:
        return
    assert len(frozen.mac) == 8 and len(frozen.raw) == (20 if with_subsidy else 8)
    assert (frozen.subsidy is not None) is with_subsidy


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=8, max_size=8))
def test_frozen_subsidy_with_right_length_parses_or_names_the_expiry(raw, mac):
    try:
        frozen = cp.parse_frozen_purse(raw + mac + b"\x90\x00", True)
    except cp.CardProtocolError as exc:
        assert "frozen subsidy expiry" in str(exc)
        return
    assert frozen.subsidy is not None and frozen.subsidy.balance == int.from_bytes(raw[8:12], "big")
    assert (frozen.subsidy.expiry is None) is (raw[12:16] == bytes(4))
