"""Fast, exact tests of the canteen's sans-I/O cores (terminal/meal_rules.py, terminal/shifts.py,
common/settlement.py) for bench/mutation.py: no card, no log, no SQLite; every boundary pinned to the minute and fen."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from common import settlement as st
from common.config import MealPeriod, Operator, PosSection
from common.passwords import PasswordFormatError, check_hash_format, hash_password, verify_password
from terminal import meal_rules as mr
from terminal import shifts

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
BREAKFAST = MealPeriod("breakfast", dt.time(6, 30), dt.time(9, 30), max_count=2, price=300)
LUNCH = MealPeriod("lunch", dt.time(11, 0), dt.time(13, 30), max_count=1, max_amount=2500)
LATE = MealPeriod("late", dt.time(21, 0), dt.time(2, 0), max_amount=2000)
TEA = MealPeriod("tea", dt.time(15, 0), dt.time.max, max_count=3)
PERIODS = (BREAKFAST, LUNCH, LATE)


def pos(periods=PERIODS, daily=6000) -> PosSection:
    return PosSection(10_000, 50_000, 120.0, 30.0, daily_max_amount=daily, meal_periods=periods)


def at(day, h, m=0, s=0):
    return dt.datetime(2026, 11, day, h, m, s, tzinfo=TZ)


def test_windows_and_their_text():
    assert str(LATE) == "21:00-02:00" and str(TEA) == "15:00-24:00" and str(LUNCH) == "11:00-13:30"
    assert LATE.crosses_midnight and not TEA.crosses_midnight and not LUNCH.crosses_midnight
    assert mr.period_at((TEA,), at(23, 23, 59, 59)) == TEA and mr.period_at((TEA,), at(23, 14, 59)) is None
    assert mr.period_at((TEA,), at(24, 0, 0)) is None
    for h, m, want in (
        (6, 29, None),
        (6, 30, BREAKFAST),
        (9, 29, BREAKFAST),
        (9, 30, None),
        (11, 0, LUNCH),
        (13, 29, LUNCH),
        (13, 30, None),
        (20, 59, None),
        (21, 0, LATE),
        (1, 59, LATE),
        (2, 0, None),
    ):
        assert mr.period_at(PERIODS, at(23, h, m)) == want, (h, m)


def test_rollover_and_service_days():
    assert mr.day_rollover(PERIODS) == dt.time(2, 0) and mr.day_rollover((LUNCH, TEA)) == dt.time(0, 0)
    assert mr.service_day(PERIODS, at(24, 1, 59)) == dt.date(2026, 11, 23)
    assert mr.service_day(PERIODS, at(24, 2, 0)) == dt.date(2026, 11, 24)
    assert mr.service_day((LUNCH,), at(24, 0, 0)) == dt.date(2026, 11, 24)
    assert mr.service_day_bounds((LUNCH,), dt.date(2026, 11, 23), TZ) == (at(23, 0), at(24, 0))
    assert mr.next_start(LATE, PERIODS, at(24, 0, 30)) == at(24, 21)
    assert mr.next_start(LUNCH, PERIODS, at(23, 12)) == at(24, 11)
    assert mr.next_start(LUNCH, (LUNCH,), at(23, 23)) == at(24, 11)


def test_usage_adds_and_tally_counts_by_day_and_period():
    assert mr.Usage(1, 200) + mr.Usage(2, 300) == mr.Usage(3, 500)
    sales = [mr.Sale(at(23, 7), 300), mr.Sale(at(23, 12), 1000), mr.Sale(at(24, 0, 30), 700), mr.Sale(at(24, 7), 300)]
    day = dt.date(2026, 11, 23)
    assert mr.tally(PERIODS, sales, day, BREAKFAST) == (mr.Usage(1, 300), mr.Usage(3, 2000))
    assert mr.tally(PERIODS, sales, day, LATE) == (mr.Usage(1, 700), mr.Usage(3, 2000))
    assert mr.tally(PERIODS, sales, day, None) == (mr.Usage(), mr.Usage(3, 2000))
    assert mr.tally(PERIODS, sales, dt.date(2026, 11, 24), BREAKFAST) == (mr.Usage(1, 300), mr.Usage(1, 300))
    twice = [mr.Sale(at(23, 7), 300), mr.Sale(at(23, 8), 250)]
    assert mr.tally(PERIODS, twice, day, BREAKFAST) == (mr.Usage(2, 550), mr.Usage(2, 550))


def test_count_limit_exact():
    one, two = mr.Usage(1, 300), mr.Usage(2, 600)
    assert mr.check_sale(pos(), at(23, 7), 300, one, one) is None
    limit = mr.check_sale(pos(), at(23, 7), 300, two, two)
    assert limit == mr.Limit(
        "meal_count_limit",
        "Breakfast limit reached: 2 of 2 per card in breakfast (06:30-09:30); resets tomorrow at 06:30",
        at(24, 6, 30),
    )


def test_period_amount_limit_exact():
    spent = mr.Usage(0, 2400)
    assert mr.check_sale(pos(), at(23, 21), 100, mr.Usage(0, 1900), spent) is None
    limit = mr.check_sale(pos(), at(23, 21), 101, mr.Usage(0, 1900), spent)
    assert limit == mr.Limit(
        "meal_amount_limit",
        "Late amount limit: 19.00 spent of 20.00 per card in late, 1.01 more is over it; resets tomorrow at 21:00",
        at(24, 21),
    )
    assert mr.check_sale(pos(), at(24, 0, 30), 101, mr.Usage(0, 1900), spent).message.endswith("today at 21:00")


def test_daily_limit_exact_and_its_reset():
    assert mr.check_sale(pos(), at(23, 10), 1000, mr.Usage(), mr.Usage(4, 5000)) is None
    limit = mr.check_sale(pos(), at(23, 10), 1001, mr.Usage(), mr.Usage(4, 5000))
    assert limit == mr.Limit(
        "daily_amount_limit",
        "Daily limit: 50.00 spent of 60.00 per card today, 10.01 more is over it; resets tomorrow at 02:00",
        at(24, 2),
    )
    assert mr.check_sale(pos(daily=0), at(23, 10), 99_999, mr.Usage(), mr.Usage(9, 99_999)) is None
    far = mr.check_sale(pos((LUNCH,)), at(23, 10), 6001, mr.Usage(), mr.Usage())
    assert far.resets_at == at(24, 0) and far.message.endswith("resets tomorrow at 00:00")


def test_no_limit_when_zero_and_reset_dates_far_off():
    free = MealPeriod("free", dt.time(0, 0), dt.time.max)
    assert mr.check_sale(pos((free,), 0), at(23, 12), 10**6, mr.Usage(50, 10**6), mr.Usage(50, 10**6)) is None
    assert mr._when(at(30, 6, 30), at(23, 7)) == "2026-11-30 at 06:30"


def test_fixed_price():
    assert mr.fixed_price(pos(), at(23, 7)) == (BREAKFAST, 300)
    assert mr.fixed_price(pos(), at(23, 12)) is None and mr.fixed_price(pos(), at(23, 10)) is None


# --- shifts ------------------------------------------------------------------------------------------------------

HASH = hash_password("2468", b"\x01" * 16, n=2**4)
OPS = {
    "0001": Operator("0001", "Li Na", HASH),
    "0002": Operator("0002", "Wang", hash_password("1357", b"\x02" * 16, n=16)),
}


def test_open_shift_and_batches():
    when = at(23, 8)
    assert shifts.open_shift(None, {}, None) is None
    assert shifts.open_shift(shifts.SIGN_OUT, {"operator": "0001", "batch": 3}, when) is None
    assert shifts.open_shift(shifts.SIGN_IN, {"operator": "0001", "batch": 3}, None) is None
    assert shifts.open_shift(shifts.SIGN_IN, {"operator": "0001", "name": "Li Na", "batch": 3}, when) == shifts.Shift(
        "0001", "Li Na", 3, when
    )
    assert shifts.open_shift(shifts.SIGN_IN, {"operator": "0001", "batch": 3}, when).name == ""
    assert [shifts.next_batch(b) for b in (0, 1, 41, 999_998, 999_999)] == [1, 2, 42, 999_999, 1]


def test_sign_in_rules():
    assert shifts.sign_in(OPS, None, "0002", "1357") == OPS["0002"]
    for number, password in (("0001", "1357"), ("0003", "2468"), ("0002", "2468")):
        with pytest.raises(shifts.ShiftRefused) as refused:
            shifts.sign_in(OPS, None, number, password)
        assert (refused.value.reason_code, refused.value.message) == (
            "bad_operator",
            "Operator number or password wrong: sign in again",
        )
    current = shifts.Shift("0001", "Li Na", 7, at(23, 8))
    with pytest.raises(shifts.ShiftRefused) as refused:
        shifts.sign_in(OPS, current, "0002", "1357")
    assert refused.value.reason_code == "shift_open"
    assert refused.value.message == "Operator 0001 is signed in (batch 000007): sign out first (o)"
    with pytest.raises(shifts.ShiftRefused) as refused:
        shifts.sign_in({}, None, "0001", "2468")
    assert refused.value.reason_code == "no_operators" and str(refused.value) == refused.value.message
    assert refused.value.message == "Sign-in is not set up on this till: add [pos.operators] to firmware.toml"


def test_require_shift():
    current = shifts.Shift("0001", "Li Na", 7, at(23, 8))
    assert shifts.require_shift(OPS, current) is current and shifts.require_shift({}, None) is None
    with pytest.raises(shifts.ShiftRefused) as refused:
        shifts.require_shift(OPS, None)
    assert (refused.value.reason_code, refused.value.message) == (
        "no_operator",
        "No cashier signed in: sign in first (s NUMBER PASSWORD)",
    )


def test_password_hash_format():
    assert (
        check_hash_format(HASH)[:3] == (16, 8, 1)
        and verify_password(HASH, "2468")
        and not verify_password(HASH, "2469")
    )
    for bad in (
        "",
        HASH.replace("scrypt", "bcrypt"),
        HASH[:-1],
        HASH.replace("$16$", "$15$"),
        HASH.replace("$8$", "$33$"),
    ):
        with pytest.raises(PasswordFormatError):
            check_hash_format(bad)
    with pytest.raises(ValueError):
        hash_password("1", b"short")


# --- settlement ------------------------------------------------------------------------------------------------


def rec(seq, kind, amount, day=23, hour=12, **detail):
    return st.Record(seq, at(day, hour), kind, {"amount": amount, **detail})


RECORDS = [
    rec(1, "pos.purchase", 300, hour=7, meal_period="breakfast", operator="0001", batch=1),
    rec(2, "pos.purchase", 1200, meal_period="lunch", operator="0001", batch=1),
    rec(3, "pos.undo", 1200, meal_period="lunch", operator="0002", batch=2),
    rec(4, "pos.purchase", 500, hour=16, batch=2),
    rec(5, "topup.load", 5000),
    rec(6, "pos.purchase", 999, day=24, hour=0, meal_period="late", operator="0002", batch=2),
    st.Record(7, at(23, 12), "pos.sign_in", {"operator": "0001", "batch": 1}),
    rec(8, "pos.purchase.intent", 100),
]


def test_settle_and_format():
    day = st.select_day(RECORDS, dt.date(2026, 11, 23), TZ)
    assert [r.seq for r in day] == [1, 2, 3, 4, 5]
    assert [r.seq for r in st.select_batch(RECORDS, 2)] == [3, 4, 6]
    totals = st.settle(RECORDS)
    assert (totals.sales, totals.undos, totals.loads) == (st.Tally(4, 2999), st.Tally(1, 1200), st.Tally(1, 5000))
    assert totals.net == 1799 and totals.seqs == [1, 2, 3, 4, 5, 6] and totals.subsidy_spent == st.Tally()
    assert st.format_totals(st.settle(day)) == [
        "sales             3       20.00",
        "undos             1       12.00",
        "net                        8.00",
        "loads             1       50.00",
        "subsidy spent     0        0.00",
        "subsidy undone    0        0.00",
        "by meal period",
        "  (no period)  sales    1        5.00  undos    0        0.00",
        "  breakfast    sales    1        3.00  undos    0        0.00",
        "  lunch        sales    1       12.00  undos    1       12.00",
        "by operator",
        "  (no operator) sales    1        5.00  undos    0        0.00",
        "  0001         sales    2       15.00  undos    0        0.00",
        "  0002         sales    0        0.00  undos    1       12.00",
    ]
    refunds_only = st.format_totals(st.settle([RECORDS[2], rec(9, "pos.purchase", 50)]))
    assert refunds_only[2] == "net                      -11.50"
    mixed = [RECORDS[6], RECORDS[0], RECORDS[7], RECORDS[1]]  # records that are not money are skipped, not the end
    assert st.settle(mixed).seqs == [1, 2]
    assert st.format_totals(st.settle([RECORDS[4]])) == [
        "sales             0        0.00",
        "undos             0        0.00",
        "net                        0.00",
        "loads             1       50.00",
        "subsidy spent     0        0.00",
        "subsidy undone    0        0.00",
    ]
    assert st.seq_ranges([1, 2, 4, 6, 7, 8]) == "1-2, 4, 6-8" and st.seq_ranges([5]) == "5"
    assert st.seq_ranges([3, 1, 2, 5, 7, 8]) == "1-3, 5, 7-8" and st.seq_ranges([]) == ""


def test_an_undone_two_purse_sale_counts_each_share_in_its_purse():
    """A two-purse sale of 12.00 (5.00 subsidy) undone: its pos.undo (7.00 cash) and its subsidy.refund (5.00) are
    both undos, the refund also `subsidy undone`; per period and operator both count as undos."""
    records = [
        rec(1, "pos.purchase", 1200, meal_period="lunch", operator="0001", batch=1, subsidy_amount=500),
        rec(2, "pos.undo", 700, meal_period="lunch", operator="0001", batch=1, purchase_seq=1),
        rec(3, "subsidy.refund", 500, meal_period="lunch", operator="0001", batch=1, purchase_seq=1),
        rec(4, "subsidy.refund.intent", 500),
        rec(5, "subsidy.load", 3000),
    ]
    assert [r.seq for r in st.select_day(records, dt.date(2026, 11, 23), TZ)] == [1, 2, 3]
    assert [r.seq for r in st.select_batch(records, 1)] == [1, 2, 3]
    totals = st.settle(records)
    assert (totals.sales, totals.undos, totals.loads) == (st.Tally(1, 1200), st.Tally(2, 1200), st.Tally())
    assert (totals.subsidy_spent, totals.subsidy_undone) == (st.Tally(1, 500), st.Tally(1, 500))
    assert totals.net == 0 and totals.seqs == [1, 2, 3]
    assert totals.by_period == {"lunch": {"sales": st.Tally(1, 1200), "undos": st.Tally(2, 1200)}}
    assert totals.by_operator == {"0001": {"sales": st.Tally(1, 1200), "undos": st.Tally(2, 1200)}}
    assert st.format_totals(totals)[:6] == [
        "sales             1       12.00",
        "undos             2       12.00",
        "net                        0.00",
        "loads             0        0.00",
        "subsidy spent     1        5.00",
        "subsidy undone    1        5.00",
    ]
    assert st.MONEY_OUTCOMES == ("pos.purchase", "pos.undo", "topup.load", "subsidy.refund")
