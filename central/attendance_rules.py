"""The monthly attendance bill's arithmetic: each local day's clock-ins and clock-outs judged against the employee's
shift and the holiday calendar. Pure: the caller hands in local times, the shift, the holidays and today's date.

Rules (docs/door-rules.md, "Attendance bill"):
- a working day is a weekday of the shift that is not in the holiday calendar;
- late: the day's first clock-in is after start + grace_minutes (start + grace exactly is on time);
- early: the day's last clock-out is before end - early_minutes (exactly then is on time);
- absent: a working day before today with no clock at all; no_out / no_in: a day before today with clock-ins but
  no clock-out, or the reverse;
- every clock-in/clock-out pair of the day is kept (a second clock-in after lunch is shown), not only the first in
  and the last out; clocks on a day off or a holiday are shown, never judged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from common.config import EMPTY_HOLIDAYS, Holidays, Shift

IN, OUT = "in", "out"


@dataclass(frozen=True)
class Clock:
    time: dt.datetime  # local, aware
    kind: str  # in | out


@dataclass(frozen=True)
class Day:
    day: dt.date
    day_type: str  # work | off | holiday
    holiday: str  # the holiday's name, or ""
    pairs: tuple[tuple[dt.datetime | None, dt.datetime | None], ...]  # (in, out) in time order
    late_minutes: int
    early_minutes: int
    status: tuple[str, ...]  # some of late, early, absent, no_out, no_in; () = nothing to report

    @property
    def first_in(self) -> dt.datetime | None:
        return next((i for i, _ in self.pairs if i is not None), None)

    @property
    def last_out(self) -> dt.datetime | None:
        return next((o for _, o in reversed(self.pairs) if o is not None), None)


def month_range(month: str) -> tuple[dt.date, dt.date]:
    """The first day of YYYY-MM and the first day of the next month; ValueError if it is not YYYY-MM."""
    if len(month) != 7 or month[4] != "-":
        raise ValueError(month)
    first = dt.date(int(month[:4]), int(month[5:]), 1)
    nxt = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt


def pairs_of(clocks: list[Clock]) -> tuple[tuple[dt.datetime | None, dt.datetime | None], ...]:
    """Each clock-in with the clock-out that follows it; a clock-out with no clock-in before it stands alone."""
    pairs: list[tuple[dt.datetime | None, dt.datetime | None]] = []
    open_in: dt.datetime | None = None
    for c in sorted(clocks, key=lambda c: c.time):
        if c.kind == IN:
            if open_in is not None:
                pairs.append((open_in, None))
            open_in = c.time
        else:
            pairs.append((open_in, c.time))
            open_in = None
    if open_in is not None:
        pairs.append((open_in, None))
    return tuple(pairs)


def _minutes_after(later: dt.datetime, earlier: dt.datetime) -> int:
    """Whole minutes, rounded up: 1 s late is 1 minute late."""
    return -(-int((later - earlier).total_seconds()) // 60)


def judge_day(
    day: dt.date,
    clocks: list[Clock],
    shift: Shift | None,
    holidays: Holidays,
    today: dt.date,
) -> Day:
    holiday = holidays.get(day, "")
    working = shift is not None and day.weekday() in shift.days and not holiday
    day_type = "work" if working else ("holiday" if holiday else "off")
    pairs = pairs_of(clocks)
    late = early = 0
    status: list[str] = []
    if working and shift is not None:
        tz = clocks[0].time.tzinfo if clocks else None
        start = dt.datetime.combine(day, shift.start, tz)
        end = dt.datetime.combine(day, shift.end, tz)
        first_in = next((i for i, _ in pairs if i is not None), None)
        last_out = next((o for _, o in reversed(pairs) if o is not None), None)
        past = day < today
        if not pairs:
            if past:
                status.append("absent")
        else:
            if first_in is not None and first_in > start + dt.timedelta(minutes=shift.grace_minutes):
                late = _minutes_after(first_in, start)
                status.append("late")
            if past and last_out is not None and last_out < end - dt.timedelta(minutes=shift.early_minutes):
                early = _minutes_after(end, last_out)
                status.append("early")
            if past and last_out is None:
                status.append("no_out")
            if past and first_in is None:
                status.append("no_in")
    return Day(day, day_type, holiday, pairs, late, early, tuple(status))


def attendance_month(
    month: str,
    clocks: Iterable[Clock],
    shift: Shift | None,
    today: dt.date,
    holidays: Holidays = EMPTY_HOLIDAYS,
) -> list[Day]:
    """The month's days worth a line: every working day up to today, and every day with a clock."""
    first, nxt = month_range(month)
    by_day: dict[dt.date, list[Clock]] = {}
    for c in clocks:  # (a clock of another month is never looked up below)
        by_day.setdefault(c.time.date(), []).append(c)
    days = []
    d = first
    while d < nxt:
        record = judge_day(d, by_day.get(d, []), shift, holidays, today)
        if record.pairs or (record.day_type == "work" and d <= today):
            days.append(record)
        d += dt.timedelta(days=1)
    return days
