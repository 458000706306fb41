"""common/bcd.py: the one codec of BCD dates and times (card files, purse commands and MACs, the PSAM's checks)."""

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import bcd


def test_dates_and_times_round_trip():
    assert bcd.encode_date(dt.date(2026, 1, 31)) == bytes.fromhex("20260131")
    assert bcd.encode_date_time(dt.datetime(2026, 1, 31, 12, 34, 56)) == (
        bytes.fromhex("20260131"),
        bytes.fromhex("123456"),
    )
    assert bcd.decode_date(bytes.fromhex("20281231")) == dt.date(2028, 12, 31)


@given(st.dates())
def test_every_calendar_date_round_trips(day):
    # Years below 1000 too: strftime("%Y") does not pad them on every platform, the codec must.
    raw = bcd.encode_date(day)
    assert len(raw) == 4 and bcd.decode_date(raw) == day


def test_early_years_and_times_are_zero_padded():
    assert bcd.encode_date(dt.date(999, 1, 2)) == bytes.fromhex("09990102")
    assert bcd.encode_date_time(dt.datetime(7, 3, 4, 0, 0, 9)) == (bytes.fromhex("00070304"), bytes.fromhex("000009"))


@pytest.mark.parametrize("raw", ["20260231", "2026013", "2026a131", "20261301", "00000000"])
def test_only_real_calendar_dates_decode(raw):
    data = bytes.fromhex(raw) if len(raw) % 2 == 0 else bytes.fromhex(raw + "0")[:3]
    with pytest.raises(ValueError):
        bcd.decode_date(data)
    assert not bcd.is_date(data)


def test_is_bcd_checks_every_nibble():
    assert bcd.is_bcd(bytes.fromhex("0123456789"))
    assert not bcd.is_bcd(bytes.fromhex("1a")) and not bcd.is_bcd(bytes.fromhex("a1"))
