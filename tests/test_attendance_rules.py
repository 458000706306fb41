"""The attendance bill's arithmetic (central/attendance_rules.py) at its edges: the grace minute, the early tolerance,
absent, holidays, days off, today, a second clock-in the same day. Pure, fast (the mutation run's test file)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from central.attendance_rules import Clock, attendance_month, judge_day, month_range, pairs_of
from common.config import Shift

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
DAY = Shift("day", dt.time(9, 0), dt.time(18, 0), grace_minutes=5, early_minutes=0)
MONDAY = dt.date(2026, 11, 23)
HOLIDAYS = MappingProxyType({dt.date(2026, 11, 25): "Founders Day"})  # a Wednesday


def t(day, hh, mm, ss=0):
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=SHANGHAI)


def clocks(day, *spec):
    return [Clock(t(day, hh, mm, ss), kind) for kind, hh, mm, ss in spec]


def judge(*spec, day=MONDAY, today=MONDAY + dt.timedelta(days=1), shift=DAY):
    return judge_day(day, clocks(day, *spec), shift, HOLIDAYS, today)


# --- the day's judgement at its edges ---------------------------------------------------------------------------


def test_grace_minutes_edge_exactly_on_time_and_one_second_late():
    on_time = judge(("in", 9, 5, 0), ("out", 18, 0, 0))
    assert (on_time.status, on_time.late_minutes) == ((), 0)
    late = judge(("in", 9, 5, 1), ("out", 18, 0, 0))
    assert (late.status, late.late_minutes) == (("late",), 6)  # counted from the start, rounded up
    assert judge(("in", 8, 0, 0), ("out", 18, 0, 0)).status == ()


def test_early_edge_and_the_early_tolerance():
    assert judge(("in", 9, 0, 0), ("out", 17, 59, 59)).status == ("early",)
    assert judge(("in", 9, 0, 0), ("out", 17, 59, 59)).early_minutes == 1
    tolerant = Shift("day", dt.time(9), dt.time(18), grace_minutes=0, early_minutes=10)
    assert judge(("in", 9, 0, 0), ("out", 17, 50, 0), shift=tolerant).status == ()
    r = judge(("in", 9, 0, 0), ("out", 17, 49, 59), shift=tolerant)
    assert (r.status, r.early_minutes) == (("early",), 11)


def test_absent_missing_clocks_holidays_days_off_and_today():
    assert judge().status == ("absent",)
    assert judge(day=MONDAY, today=MONDAY).status == ()  # today is not over: not absent yet
    assert judge(("in", 9, 0, 0)).status == ("no_out",)
    assert judge(("in", 9, 0, 0), today=MONDAY).status == ()  # still at work
    assert judge(("out", 18, 0, 0)).status == ("no_in",)
    holiday = judge(day=dt.date(2026, 11, 25), today=dt.date(2026, 12, 1))
    assert (holiday.day_type, holiday.holiday, holiday.status) == ("holiday", "Founders Day", ())
    worked_saturday = judge(("in", 10, 0, 0), ("out", 12, 0, 0), day=dt.date(2026, 11, 28), today=dt.date(2026, 12, 1))
    assert (worked_saturday.day_type, worked_saturday.status) == ("off", ())  # shown, not judged


def test_a_second_clock_in_the_same_day_is_kept_as_its_own_pair():
    r = judge(("in", 9, 0, 0), ("out", 12, 0, 0), ("in", 13, 0, 0), ("out", 18, 30, 0))
    assert [(i.strftime("%H:%M"), o.strftime("%H:%M")) for i, o in r.pairs] == [("09:00", "12:00"), ("13:00", "18:30")]
    assert (r.first_in.hour, r.last_out.hour, r.status) == (9, 18, ())
    # Left at noon and never came back: the last clock-out judges the day.
    assert judge(("in", 9, 0, 0), ("out", 12, 0, 0)).status == ("early",)


def test_pairs_of_unmatched_clocks():
    day = MONDAY
    pairs = pairs_of(clocks(day, ("in", 9, 0, 0), ("in", 9, 30, 0), ("out", 12, 0, 0), ("out", 13, 0, 0)))
    assert [(i and i.strftime("%H:%M"), o and o.strftime("%H:%M")) for i, o in pairs] == [
        ("09:00", None),
        ("09:30", "12:00"),
        (None, "13:00"),
    ]


def test_month_lines_working_days_up_to_today_and_every_day_with_clocks():
    events = clocks(dt.date(2026, 11, 2), ("in", 9, 0, 0), ("out", 18, 0, 0))
    days = attendance_month("2026-11", events, DAY, dt.date(2026, 11, 5), HOLIDAYS)
    assert [(d.day.day, d.status) for d in days] == [(2, ()), (3, ("absent",)), (4, ("absent",)), (5, ())]
    assert [d.day.day for d in attendance_month("2026-11", events, None, dt.date(2026, 12, 1))] == [2]
    assert month_range("2026-12") == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
    with pytest.raises(ValueError):
        month_range("2026-13")


@given(
    minute=st.integers(0, 24 * 60 - 1),
    grace=st.integers(0, 240),
)
def test_late_exactly_when_after_start_plus_grace(minute, grace):
    shift = Shift("s", dt.time(9), dt.time(18), grace_minutes=grace)
    hh, mm = divmod(minute, 60)
    r = judge_day(MONDAY, clocks(MONDAY, ("in", hh, mm, 0)), shift, {}, MONDAY)
    assert ("late" in r.status) == (minute > 9 * 60 + grace)
    assert r.late_minutes == (minute - 9 * 60 if minute > 9 * 60 + grace else 0)


def test_the_months_first_and_last_day_and_nothing_outside():
    first_day = clocks(dt.date(2026, 11, 1), ("in", 10, 0, 0))  # a Sunday: shown, not judged
    next_month = clocks(dt.date(2026, 12, 1), ("in", 9, 0, 0))
    last_day = clocks(dt.date(2026, 10, 31), ("in", 9, 0, 0))  # the day before: not this month
    days = attendance_month("2026-11", first_day + next_month + last_day, DAY, dt.date(2026, 12, 10))
    assert days[0].day == dt.date(2026, 11, 1) and days[0].day_type == "off" and days[0].holiday == ""
    assert days[-1].day == dt.date(2026, 11, 30) and days[-1].status == ("absent",)
    assert all(d.day.month == 11 for d in days)
    with pytest.raises(ValueError, match="2026/11"):
        month_range("2026/11")
    with pytest.raises(ValueError, match="2026-1"):
        month_range("2026-1")
