"""common/card_apdu.py, the card commands the issuing station and the platform (over the air) share: exact bytes of
each builder (docs/card-application.md 3.1, 8.1, 8.2, 9.1, 2.3), the FCI reader on every way an answer can be wrong,
and Hypothesis: it reads or raises ValueError, nothing else."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import card_apdu as ca
from simulator.card import OneCardV2Applet
from simulator.personalise import multi_card, sub_application
from tests.test_card_v2 import ISSUER_SAM, SAMS, A, B, person


def test_builders_exact_bytes():
    assert ca.select_command().hex() == "00a4040009f04f4e45434152440100"
    assert ca.select_command(ca.AID_V2, le=False).hex() == "00a4040009f04f4e454341524402"
    assert ca.sub_application_aid(B).hex() == "f04f4e45434152440200020002"
    assert ca.get_challenge_command().hex() == "0084000008"
    c = bytes(range(8))
    assert ca.secured_mac_input(c, 0xD6, 0x83, 0, b"\xaa\xbb").hex() == "000102030405060784d683000aaabb"
    assert ca.secured_command(0xD6, 0x83, 0, b"\xaa", bytes(8)).hex() == "84d6830009aa0000000000000000"
    assert ca.secured_command(0xD4, 1, 2, b"", b"\x11" * 8, le=3).hex() == "84d40102081111111111111111" + "03"
    access = ca.encode_access_file(dt.date(2026, 1, 1), dt.date(2028, 12, 31), {1, 9, 64}, 7)
    assert access.hex() == "2026010120281231" + "8080000000000001" + "07" + "00" * 15


GROUPS = "door groups must be 1..64, the time profile 0..255, valid-to not before valid-from"
SECURED = "a secured command takes an 8-byte challenge and at most 247 data bytes"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ca.sub_application_aid(b"\x00"), "enterprise ID must be 4 bytes"),
        (lambda: ca.secured_mac_input(bytes(7), 0xD6, 0, 0, b""), SECURED),
        (lambda: ca.secured_mac_input(bytes(8), 0xD6, 0, 0, bytes(248)), SECURED),
        (lambda: ca.secured_command(0xD6, 0, 0, b"", bytes(7)), "the MAC of a secured command is 8 bytes"),
        (lambda: ca.encode_access_file(dt.date(2026, 1, 2), dt.date(2026, 1, 1), {1}, 0), GROUPS),
        (lambda: ca.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {0}, 0), GROUPS),
        (lambda: ca.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {65}, 0), GROUPS),
        (lambda: ca.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {1}, 256), GROUPS),
        (lambda: ca.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {1}, -1), GROUPS),
    ],
)
def test_builders_refuse_what_the_card_cannot_take(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message


def test_edges_are_accepted():
    assert len(ca.secured_mac_input(bytes(8), 0xD6, 0, 0, bytes(247))) == 8 + 5 + 247
    day = dt.date(2026, 1, 1)
    assert ca.encode_access_file(day, day, {1, 64}, 255)[8:17].hex() == "800000000000000" + "1ff"
    assert ca.encode_access_file(day, day, {}, 0)[8:16] == bytes(8)


def test_fci_of_a_real_card():
    card = OneCardV2Applet(
        multi_card([sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1}), "Office")], ISSUER_SAM)
    )
    card.power_on()
    answer = card.transmit(ca.select_command(ca.AID_V2))
    prop = ca.fci_proprietary(answer[:-2], ca.AID_V2)
    assert prop[0xC0] == card.card.serial and prop[0xC8] == b"\x01"
    answer = card.transmit(ca.select_command(ca.sub_application_aid(A)))
    prop = ca.fci_proprietary(answer[:-2], ca.sub_application_aid(A))
    assert prop[0xC0] == card.card.apps[0].asn and prop[0xC1] == A and prop[0xC2] == b"\x01"
    with pytest.raises(ValueError, match="another application"):
        ca.fci_proprietary(answer[:-2], ca.AID_V2)


ONE = "not a single FCI template (tag 6F)"
OTHER = "the FCI names another application or has no proprietary template"


@pytest.mark.parametrize(
    "raw, problem",
    [
        ("", ONE),
        ("6f00" + "6f00", ONE),
        ("6e00", ONE),
        ("6f038401", "FCI TLV cut or long at offset 0"),
        ("6f80", "FCI TLV cut or long at offset 0"),
        ("6f80" + "00" * 128, "FCI TLV cut or long at offset 0"),
        ("6f02", "FCI TLV cut or long at offset 0"),
        ("6f0384" + "0100", OTHER),
        ("6f0b8409f04f4e454341524402", OTHER),
    ],
)
def test_fci_refusals(raw, problem):
    with pytest.raises(ValueError) as e:
        ca.fci_proprietary(bytes.fromhex(raw), ca.AID_V2)
    assert str(e.value) == problem


def test_fci_exact():
    raw = bytes.fromhex("6f12" + "8409f04f4e454341524402" + "a505" + "c00101" + "c700")
    assert ca.fci_proprietary(raw, ca.AID_V2) == {0xC0: b"\x01", 0xC7: b""}
    body = bytes.fromhex("8409f04f4e454341524402") + bytes([0xA5, 114, 0xC1, 112]) + bytes(112)
    assert len(body) == 127  # the longest short-form length
    assert ca.fci_proprietary(bytes([0x6F, len(body)]) + body, ca.AID_V2) == {0xC1: bytes(112)}


@given(st.binary(max_size=80))
def test_fci_reads_or_raises_value_error(raw):
    try:
        out = ca.fci_proprietary(raw, ca.AID_V2)
    except ValueError:
        return
    assert isinstance(out, dict)
