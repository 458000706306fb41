"""Meal periods at the canteen till: which period a sale falls in, its fixed price, and the per-card limits. Sans-I/O.

A meal period ([pos.meal_periods.NAME]) is a window of the *service day*. A window may run past midnight (a late
period "21:00-02:00"): a sale at 00:30 then belongs to the service day that started the evening before, and the
next service day begins when that window ends (02:00), not at midnight. Limits are per card and per service day:
each period's count and amount, and [pos].daily_max_amount over the whole day. Usage is what the caller counted
(this till's own log plus what the platform confirmed for the other tills, terminal/canteen.py): the functions
here only decide, with the time passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from common.config import MealPeriod, PosSection
from common.money import format_yuan


@dataclass(frozen=True)
class Usage:
    """What one card spent in one period (or one service day): sales net of the undone ones."""

    count: int = 0
    amount: int = 0  # fen

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.count + other.count, self.amount + other.amount)


@dataclass(frozen=True)
class Limit:
    """Why a sale is refused: which limit, in words, and when it resets (terminal local time)."""

    reason_code: str  # meal_count_limit | meal_amount_limit | daily_amount_limit
    message: str
    resets_at: dt.datetime


@dataclass(frozen=True)
class Sale:
    """One sale already made to a card, as the log (or the platform) knows it."""

    local: dt.datetime  # when, in the terminal's time zone
    amount: int  # fen


def _minutes(t: dt.time) -> int:
    return 24 * 60 if t == dt.time.max else t.hour * 60 + t.minute


def _in_window(period: MealPeriod, t: dt.time) -> bool:
    m, start, end = t.hour * 60 + t.minute, _minutes(period.start), _minutes(period.end)
    if period.crosses_midnight:
        return m >= start or m < end
    return start <= m < end


def period_at(periods: Iterable[MealPeriod], local: dt.datetime) -> MealPeriod | None:
    """The meal period `local` falls in (windows are disjoint, config.py checks), or None between meals."""
    return next((p for p in periods if _in_window(p, local.time())), None)


def day_rollover(periods: Iterable[MealPeriod]) -> dt.time:
    """When a service day ends: the end of a window that runs past midnight, else midnight."""
    return next((p.end for p in periods if p.crosses_midnight), dt.time.min)


def service_day(periods: tuple[MealPeriod, ...], local: dt.datetime) -> dt.date:
    """The service day `local` belongs to: the previous date before the rollover of a window past midnight."""
    rollover = day_rollover(periods)
    return local.date() - dt.timedelta(days=1) if local.time() < rollover else local.date()


def _at(day: dt.date, t: dt.time, tz: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, t, tzinfo=tz)


def service_day_bounds(periods: tuple[MealPeriod, ...], day: dt.date, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of service day `day` in local time."""
    rollover = day_rollover(periods)
    return _at(day, rollover, tz), _at(day + dt.timedelta(days=1), rollover, tz)


def next_start(period: MealPeriod, periods: tuple[MealPeriod, ...], local: dt.datetime) -> dt.datetime:
    """The start of this period on the next service day: when its limits reset."""
    # Every period starts at or after the rollover (windows are disjoint and only one can run past midnight), so
    # its start on a service day is on that day's date.
    day = service_day(periods, local) + dt.timedelta(days=1)
    return _at(day, period.start, local.tzinfo or dt.timezone.utc)


def tally(
    periods: tuple[MealPeriod, ...], sales: Iterable[Sale], day: dt.date, period: MealPeriod | None
) -> tuple[Usage, Usage]:
    """(usage in `period` of service day `day`, usage over the whole service day) of one card's sales."""
    in_period, in_day = Usage(), Usage()
    for sale in sales:
        if service_day(periods, sale.local) != day:
            continue
        one = Usage(1, sale.amount)
        in_day += one
        if period is not None and period_at(periods, sale.local) == period:
            in_period += one
    return in_period, in_day


def _when(reset: dt.datetime, local: dt.datetime) -> str:
    same = reset.date() == local.date()
    tomorrow = reset.date() == local.date() + dt.timedelta(days=1)
    day = "today" if same else "tomorrow" if tomorrow else reset.strftime("%Y-%m-%d")
    return f"{day} at {reset:%H:%M}"


def check_sale(pos: PosSection, local: dt.datetime, amount: int, period_usage: Usage, day_usage: Usage) -> Limit | None:
    """Refuse a sale of `amount` fen at `local` that would take the card over a limit, given what it already spent.

    `period_usage` and `day_usage` are this card's usage in the current period and service day (tally)."""
    periods = pos.meal_periods
    period = period_at(periods, local)
    if period is not None:
        reset = next_start(period, periods, local)
        label = period.name.capitalize()
        if period.max_count and period_usage.count + 1 > period.max_count:
            return Limit(
                "meal_count_limit",
                f"{label} limit reached: {period_usage.count} of {period.max_count} per card in {period.name} "
                f"({period}); resets {_when(reset, local)}",
                reset,
            )
        if period.max_amount and period_usage.amount + amount > period.max_amount:
            return Limit(
                "meal_amount_limit",
                f"{label} amount limit: {format_yuan(period_usage.amount)} spent of {format_yuan(period.max_amount)} "
                f"per card in {period.name}, {format_yuan(amount)} more is over it; resets {_when(reset, local)}",
                reset,
            )
    if pos.daily_max_amount and day_usage.amount + amount > pos.daily_max_amount:
        reset = service_day_bounds(periods, service_day(periods, local), local.tzinfo or dt.timezone.utc)[1]
        return Limit(
            "daily_amount_limit",
            f"Daily limit: {format_yuan(day_usage.amount)} spent of {format_yuan(pos.daily_max_amount)} per card "
            f"today, {format_yuan(amount)} more is over it; resets {_when(reset, local)}",
            reset,
        )
    return None


def fixed_price(pos: PosSection, local: dt.datetime) -> tuple[MealPeriod, int] | None:
    """(period, price) when the period at `local` has a fixed price (定额): a tap with no amount typed pays it."""
    period = period_at(pos.meal_periods, local)
    if period is None or not period.price:
        return None
    return period, period.price
