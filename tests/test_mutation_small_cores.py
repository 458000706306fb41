"""Three small sans-I/O cores pinned (tests/layering.py SANS_IO_CORES; issue 15): common/bcd.py (BCD dates and
times, every nibble at its edge), common/door_events.py (the alarm kinds and which one is open) and
terminal/decision.py (what a tap's decision and a refusal carry by default)."""

from __future__ import annotations

import datetime as dt

import pytest

from common import bcd
from common import door_events as de
from terminal import decision as d

# --- common/bcd.py ---------------------------------------------------------------------------------------------------


def test_bcd_dates_and_times_pinned_with_values_that_tell_the_fields_apart():
    assert bcd.encode_date(dt.date(2026, 11, 23)) == b"\x20\x26\x11\x23"
    assert bcd.encode_date_time(dt.datetime(2026, 12, 31, 23, 58, 59)) == (b"\x20\x26\x12\x31", b"\x23\x58\x59")
    assert bcd.encode_date_time(dt.datetime(2026, 1, 2, 3, 4, 5)) == (b"\x20\x26\x01\x02", b"\x03\x04\x05")
    assert bcd.decode_date(b"\x20\x26\x11\x23") == dt.date(2026, 11, 23)
    assert bcd.decode_date(b"\x19\x99\x12\x31") == dt.date(1999, 12, 31)
    assert bcd.decode_date(b"\x00\x01\x01\x01") == dt.date(1, 1, 1)
    assert bcd.decode_date(b"\x99\x99\x12\x31") == dt.date(9999, 12, 31)
    assert bcd.decode_date(b"\x20\x24\x02\x29") == dt.date(2024, 2, 29)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x20\x26\x01", "202601 is not a BCD date YYYYMMDD"),
        (b"\x20\x26\x01\x31\x00", "2026013100 is not a BCD date YYYYMMDD"),
        (b"", " is not a BCD date YYYYMMDD"),
        (b"\x20\x26\xa1\x31", "2026a131 is not a BCD date YYYYMMDD"),
        (b"\x20\x26\x01\x3f", "2026013f is not a BCD date YYYYMMDD"),
        (b"\xa0\x26\x01\x31", "a0260131 is not a BCD date YYYYMMDD"),
    ],
)
def test_bcd_dates_that_are_not_bcd_are_refused_with_their_hex(raw, message):
    with pytest.raises(ValueError) as caught:
        bcd.decode_date(raw)
    assert str(caught.value) == message
    assert bcd.is_date(raw) is False


@pytest.mark.parametrize("raw", ["20260231", "20261301", "20260001", "20260100", "00000000", "20230229"])
def test_bcd_dates_that_are_not_real_days_are_refused(raw):
    with pytest.raises(ValueError):
        bcd.decode_date(bytes.fromhex(raw))
    assert bcd.is_date(bytes.fromhex(raw)) is False


def test_is_date_says_true_for_a_real_day():
    assert bcd.is_date(b"\x20\x26\x11\x23") is True


def test_is_bcd_checks_both_nibbles_of_every_byte_at_their_edges():
    assert bcd.is_bcd(b"") is True
    assert bcd.is_bcd(bytes.fromhex("0123456789")) is True
    for good in ("00", "09", "90", "99", "19", "91", "59", "95"):
        assert bcd.is_bcd(bytes.fromhex(good)) is True, good
    for bad in ("0a", "a0", "9a", "a9", "1f", "f1", "ff", "99a0", "a099", "9999990a"):
        assert bcd.is_bcd(bytes.fromhex(bad)) is False, bad


# --- common/door_events.py -----------------------------------------------------------------------------------------


def test_door_event_kinds_are_pinned():
    assert (de.HELD_OPEN, de.FORCED_OPEN, de.CLOSED, de.REX) == (
        "door.held_open",
        "door.forced_open",
        "door.closed",
        "door.rex",
    )
    assert de.NORMALLY_OPEN_KINDS == ("door.normally_open", "door.normally_open.end")
    assert (de.NORMALLY_OPEN_START, de.NORMALLY_OPEN_END) == de.NORMALLY_OPEN_KINDS
    assert de.ALARM_KINDS == ("door.held_open", "door.forced_open")
    assert de.DOOR_EVENT_KINDS == ("door.held_open", "door.forced_open", "door.closed")


def test_the_open_alarm_is_the_last_door_event_when_it_is_an_alarm():
    assert de.open_alarm_from_log("door.held_open") == "door.held_open"
    assert de.open_alarm_from_log("door.forced_open") == "door.forced_open"
    for not_open in ("door.closed", "door.rex", "door.normally_open", "door.grant", "", None):
        assert de.open_alarm_from_log(not_open) is None


# --- terminal/decision.py ------------------------------------------------------------------------------------------


def test_a_decision_is_logged_with_an_empty_detail_unless_said_otherwise():
    one = d.Decision(True, "door.grant", "ok", "Welcome")
    assert (one.accepted, one.kind, one.reason_code, one.message) == (True, "door.grant", "ok", "Welcome")
    assert (one.card, one.asn, one.logged, one.detail) == (None, None, True, {})
    two = d.Decision(False, "door.deny", "blacklisted", "Card blocked")
    assert two.detail == {} and two.detail is not one.detail  # a fresh dict each time
    full = d.Decision(False, "door.deny", "x", "m", None, "0102030405060708", False, {"a": 1})
    assert (full.asn, full.logged, full.detail) == ("0102030405060708", False, {"a": 1})
    with pytest.raises(AttributeError):
        one.accepted = False  # frozen


def test_a_refusal_carries_its_reason_message_card_and_detail():
    r = d.Refusal("expired", "Card expired on 2026-01-31")
    assert str(r) == "Card expired on 2026-01-31" and r.args == ("Card expired on 2026-01-31",)
    assert (r.reason_code, r.message, r.asn, r.detail) == ("expired", "Card expired on 2026-01-31", None, {})
    r = d.Refusal("blacklisted", "Card blocked", "0102030405060708", {"listed_in_version": 3})
    assert (r.reason_code, r.message, r.asn, r.detail) == (
        "blacklisted",
        "Card blocked",
        "0102030405060708",
        {"listed_in_version": 3},
    )
    assert d.Refusal("x", "y", detail={}).detail == {}
    assert isinstance(r, Exception)
