"""The canteen till: meal periods and their per-card limits at the edges, fixed price, price keys, cashier shifts,
receipts on python-escpos's Dummy printer, and the X/Z reports agreeing with the platform's settlement."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import zoneinfo

import pytest
from escpos.printer import Dummy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import money_records as mr
from common import settlement
from common.config import ConfigError, load_config, validate_platform_document
from common.passwords import hash_password, verify_password
from simulator.inprocess import InProcessReader
from terminal import meal_rules
from terminal.app import Terminal
from terminal.blacklist import Blacklist
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.keypad import Charge, KeyLine, SignIn, SignOut, Typed, evdev_key, parse_request
from terminal.outputs import ConsoleOutputs
from terminal.receipt import print_receipt, receipt_lines
from terminal.report_cli import report_lines
from tests.support import TERMINAL_TOML, make_card, make_sam

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
PASSWORD = "2468"
HASH = hash_password(PASSWORD, b"\x07" * 16, n=2**10)  # cheap parameters: the format is the same

CANTEEN = f"""
daily_max_amount = "60.00"
[pos.meal_periods.breakfast]
window = "06:30-09:30"
max_count = 2
price = "3.00"
[pos.meal_periods.lunch]
window = "11:00-13:30"
max_count = 1
max_amount = "25.00"
[pos.meal_periods.late]
window = "21:00-02:00"
max_amount = "20.00"
[pos.price_keys.F1]
item = "Set meal A"
price = "12.00"
[pos.price_keys.F2]
item = "Noodles"
price = "8.50"
[pos.operators.0001]
name = "Li Na"
password_hash = "{HASH}"
"""


def local(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """A time in Shanghai on 2026-11-`day` (the 23rd is a Monday)."""
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=SHANGHAI)


def write_config(tmp_path, extra: str = CANTEEN, kind: str = "pos"):
    text = TERMINAL_TOML.format(kind=kind, db=tmp_path / f"{kind}.db", bl=tmp_path / f"{kind}-bl.db")
    text = text.replace("undo_window_seconds = 120\n", "undo_window_seconds = 120\n" + extra)
    path = tmp_path / f"{kind}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def sam():
    return make_sam()


@pytest.fixture
def till(tmp_path, sam):
    config = load_config(write_config(tmp_path))
    screen = io.StringIO()
    term = Terminal(
        config,
        sam,
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
        ConsoleOutputs(config.terminal.name, screen, color=False),
    )
    yield term
    term.event_log.close()


def tap(term, card, request, when):
    reader = InProcessReader()
    reader.tap(card)
    return term.handle_tap(reader.wait_for_card(0), when, request)


def sign_in(term, when):
    decision = term.handle_shift(SignIn("0001", PASSWORD), when)
    assert decision.accepted, decision.message
    return decision


# --- configuration ---------------------------------------------------------------------------------------------


def test_meal_periods_price_keys_and_operators_are_read(tmp_path):
    pos = load_config(write_config(tmp_path)).pos
    assert [(m.name, str(m), m.max_count, m.max_amount, m.price) for m in pos.meal_periods] == [
        ("breakfast", "06:30-09:30", 2, 0, 300),
        ("lunch", "11:00-13:30", 1, 2500, 0),
        ("late", "21:00-02:00", 0, 2000, 0),
    ]
    assert pos.meal_periods[2].crosses_midnight and not pos.meal_periods[0].crosses_midnight
    assert pos.daily_max_amount == 6000
    assert (pos.price_keys["F1"].item, pos.price_keys["F1"].price) == ("Set meal A", 1200)
    assert pos.operators["0001"].name == "Li Na" and PASSWORD not in write_config(tmp_path).read_text()
    assert verify_password(pos.operators["0001"].password_hash, PASSWORD)


@pytest.mark.parametrize(
    "extra, problem",
    [
        (
            '[pos.meal_periods.lunch]\nwindow = "11:00-13:30"\n[pos.meal_periods.brunch]\nwindow = "10:00-11:01"\n',
            "overlaps meal period",
        ),
        ('[pos.meal_periods.lunch]\nwindow = "11:00"\n', "is not HH:MM-HH:MM"),
        ('[pos.meal_periods.lunch]\nwindow = "11:00-11:00"\n', "is empty"),
        ('[pos.meal_periods.lunch]\nwindow = "11:00-13:00"\nmax_cnt = 1\n', "did you mean 'max_count'"),
        ('[pos.meal_periods.lunch]\nwindow = "11:00-13:00"\nprice = "-1"\n', "is not an amount in yuan"),
        ('[pos.meal_periods.lunch]\nwindow = "11:00-13:00"\nmax_count = 101\n', "outside 0..100"),
        ('[pos.meal_periods."lunch time"]\nwindow = "11:00-13:00"\n', "is not a period name"),
        ('[pos.price_keys.F13]\nitem = "x"\nprice = "1.00"\n', "is not a function key"),
        ('[pos.price_keys.F1]\nitem = "x"\nprice = "0"\n', "must be more than 0"),
        ('[pos.operators.0001]\npassword_hash = "1234"\n', "is not a password hash"),
        ('[pos.operators.abc]\npassword_hash = "x"\n', "is not an operator number"),
    ],
)
def test_bad_canteen_settings_are_refused_with_the_key_and_the_fix(tmp_path, extra, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(write_config(tmp_path, extra))


def test_the_platform_document_is_checked_by_the_same_validator():
    good = {"pos": {"meal_periods": {"lunch": {"window": "11:00-13:30", "max_count": 1}}}}
    validate_platform_document(good)
    bad = {"pos": {"meal_periods": {"lunch": {"window": "11:00-13:30"}, "tea": {"window": "13:00-14:00"}}}}
    with pytest.raises(ConfigError, match=r"platform configuration: \[pos\].meal_periods.tea .*overlaps"):
        validate_platform_document(bad)


# --- meal periods at their edges -------------------------------------------------------------------------------


def test_period_edges_start_inclusive_end_exclusive(tmp_path):
    periods = load_config(write_config(tmp_path)).pos.meal_periods
    at = lambda *a: getattr(meal_rules.period_at(periods, local(23, *a)), "name", None)  # noqa: E731
    assert at(6, 29, 59) is None and at(6, 30) == "breakfast" and at(9, 29, 59) == "breakfast" and at(9, 30) is None
    assert at(10, 59) is None and at(11, 0) == "lunch" and at(13, 29) == "lunch" and at(13, 30) is None
    assert at(20, 59) is None and at(21, 0) == "late" and at(23, 59, 59) == "late"
    assert at(0, 0) == "late" and at(1, 59, 59) == "late" and at(2, 0) is None


def test_service_day_of_a_window_past_midnight(tmp_path):
    periods = load_config(write_config(tmp_path)).pos.meal_periods
    day = lambda *a: meal_rules.service_day(periods, local(*a))  # noqa: E731
    assert day(24, 1, 59) == dt.date(2026, 11, 23)  # still the late period of the 23rd
    assert day(24, 2, 0) == dt.date(2026, 11, 24)
    assert day(23, 23, 0) == dt.date(2026, 11, 23)
    start, end = meal_rules.service_day_bounds(periods, dt.date(2026, 11, 23), SHANGHAI)
    assert (start, end) == (local(23, 2), local(24, 2))
    assert meal_rules.day_rollover(periods[:2]) == dt.time(0, 0)


def test_fixed_price_only_inside_a_period_with_a_price(tmp_path):
    pos = load_config(write_config(tmp_path)).pos
    assert meal_rules.fixed_price(pos, local(23, 7, 0))[1] == 300
    assert meal_rules.fixed_price(pos, local(23, 12, 0)) is None  # lunch has no fixed price
    assert meal_rules.fixed_price(pos, local(23, 10, 0)) is None  # between meals


def test_count_limit_refusal_says_which_limit_and_when_it_resets(tmp_path):
    pos = load_config(write_config(tmp_path)).pos
    one = meal_rules.Usage(1, 1000)
    limit = meal_rules.check_sale(pos, local(23, 12, 0), 500, one, one)
    assert limit.reason_code == "meal_count_limit" and limit.resets_at == local(24, 11, 0)
    assert limit.message == "Lunch limit reached: 1 of 1 per card in lunch (11:00-13:30); resets tomorrow at 11:00"
    assert meal_rules.check_sale(pos, local(23, 12, 0), 500, meal_rules.Usage(), one) is None


def test_amount_limits_at_the_exact_fen(tmp_path):
    pos = load_config(write_config(tmp_path)).pos
    spent = meal_rules.Usage(0, 2000)
    assert meal_rules.check_sale(pos, local(23, 22, 0), 0, spent, spent) is None  # exactly 20.00: allowed
    limit = meal_rules.check_sale(pos, local(23, 22, 0), 1, spent, spent)
    assert limit.reason_code == "meal_amount_limit" and "20.00 spent of 20.00" in limit.message
    day = meal_rules.Usage(3, 5900)
    assert meal_rules.check_sale(pos, local(23, 10, 0), 100, meal_rules.Usage(), day) is None  # 60.00 exactly
    limit = meal_rules.check_sale(pos, local(23, 10, 0), 101, meal_rules.Usage(), day)
    assert limit.reason_code == "daily_amount_limit" and limit.resets_at == local(24, 2, 0)
    assert "resets tomorrow at 02:00" in limit.message


def test_late_period_limit_resets_the_same_calendar_day_after_midnight(tmp_path):
    pos = load_config(write_config(tmp_path)).pos
    spent = meal_rules.Usage(1, 2000)
    limit = meal_rules.check_sale(pos, local(24, 0, 30), 100, spent, spent)
    assert limit.resets_at == local(24, 21, 0) and "resets today at 21:00" in limit.message


# --- on the till, with real (simulated) cards -------------------------------------------------------------------


def test_sale_without_a_signed_in_cashier_is_refused_before_the_card_is_charged(till, sam):
    card = make_card(sam, opening_balance=10_000)
    assert till.entry_refusal(Charge(500)) == "No cashier signed in: sign in first (s NUMBER PASSWORD)"
    decision = tap(till, card, Charge(500), local(23, 12).astimezone(dt.timezone.utc))
    assert (decision.accepted, decision.reason_code) == (False, "no_operator")
    assert card.state.purse.balance == 10_000


def test_wrong_password_and_unknown_operator_say_the_same(till):
    wrong = till.handle_shift(SignIn("0001", "1111"), local(23, 8))
    unknown = till.handle_shift(SignIn("0009", PASSWORD), local(23, 8))
    assert wrong.message == unknown.message == "Operator number or password wrong: sign in again"
    log = [e for e in till.event_log.events()]
    assert [(e.kind, e.reason_code) for e in log] == [("pos.deny", "bad_operator")] * 2
    assert all(PASSWORD not in e.detail_json and "1111" not in e.detail_json for e in log)


def test_every_sale_carries_operator_batch_and_meal_period(till, sam):
    card = make_card(sam, opening_balance=10_000)
    assert sign_in(till, local(23, 11)).message == "Signed in: Li Na (0001), batch 000001"
    assert till.handle_shift(SignIn("0001", PASSWORD), local(23, 11)).reason_code == "shift_open"
    paid = tap(till, card, Charge(1200, "Set meal A"), local(23, 12))
    assert paid.accepted, paid.message
    outcome = till.event_log.last_event_of((mr.PURCHASE,))
    assert {k: outcome.detail[k] for k in ("operator", "batch", "meal_period", "item")} == {
        "operator": "0001",
        "batch": 1,
        "meal_period": "lunch",
        "item": "Set meal A",
    }
    mr.check_money_detail(mr.PURCHASE, outcome.detail)  # what the platform accepts
    assert till.handle_shift(SignOut(), local(23, 14)).message == "Signed out: Li Na (0001), batch 000001 closed"
    assert till.handle_shift(SignOut(), local(23, 14)).reason_code == "no_operator"
    assert sign_in(till, local(23, 15)).detail["batch"] == 2


def test_lunch_count_limit_on_the_till_and_an_undo_gives_the_meal_back(till, sam):
    card = make_card(sam, opening_balance=10_000)
    sign_in(till, local(23, 10))
    assert tap(till, card, Charge(1000), local(23, 11, 0)).accepted
    second = tap(till, card, Charge(500), local(23, 11, 1))
    assert (second.accepted, second.reason_code) == (False, "meal_count_limit")
    assert "resets tomorrow at 11:00" in second.message and card.state.purse.balance == 9000
    undo = tap(till, card, None, local(23, 11, 2))  # a balance inquiry: nothing changes
    assert undo.accepted
    from terminal.keypad import Undo

    assert tap(till, card, Undo(), local(23, 11, 2)).accepted
    undone = till.event_log.last_event_of((mr.UNDO,))
    assert (undone.detail["meal_period"], undone.detail["operator"], undone.detail["batch"]) == ("lunch", "0001", 1)
    assert tap(till, card, Charge(500), local(23, 11, 3)).accepted  # the undone sale no longer counts
    assert card.state.purse.balance == 9500


def test_daily_limit_crossing_midnight_in_the_terminals_time_zone(till, sam):
    card = make_card(sam, opening_balance=20_000)
    sign_in(till, local(23, 6))
    for when, amount in ((local(23, 7), 2500), (local(23, 12), 2000), (local(23, 21, 30), 1000)):
        assert tap(till, card, Charge(amount), when).accepted
    # 00:30 in Shanghai is still service day 23 (the late period runs to 02:00): 55.00 spent, 6.00 is over 60.00
    late = tap(till, card, Charge(600), local(24, 0, 30))
    assert (late.reason_code, late.detail["resets_at"]) == ("daily_amount_limit", local(24, 2).isoformat())
    assert tap(till, card, Charge(500), local(24, 1, 59)).accepted  # 60.00 exactly
    # 02:00 local (18:00 UTC the day before): a new service day
    assert tap(till, card, Charge(1000), local(24, 2, 0).astimezone(dt.timezone.utc)).accepted


def test_other_tills_confirmed_usage_counts(tmp_path, sam):
    from terminal.purse_flow import PurseTerminal

    config = load_config(write_config(tmp_path))
    seen = []

    def other_tills(asn, day):
        seen.append((asn, day))
        return {"lunch": meal_rules.Usage(1, 800), "": meal_rules.Usage(1, 800)}

    log = EventLog.open(config.terminal.database, config.terminal.id)
    purse = PurseTerminal(config, sam, log, Blacklist.open(config.terminal.blacklist), other_tills=other_tills)
    card = make_card(sam, opening_balance=10_000)
    reader = InProcessReader()
    reader.tap(card)
    log.append(
        local(23, 10),
        "pos.sign_in",
        asn=None,
        reason_code="signed_in",
        message="in",
        detail={"operator": "0001", "batch": 1},
    )
    with pytest.raises(Refusal) as refused:
        purse.purchase(reader.wait_for_card(0).transmit, 500, local(23, 12))
    assert refused.value.reason_code == "meal_count_limit" and seen == [
        (card.state.asn.hex().upper(), dt.date(2026, 11, 23))
    ]
    log.close()


# --- price keys and the keypad ---------------------------------------------------------------------------------


def test_price_keys_ring_up_their_item(tmp_path):
    keys = load_config(write_config(tmp_path)).pos.price_keys
    assert parse_request("f2", "pos", keys) == Charge(850, "Noodles")
    line = KeyLine("pos", keys)
    line.key("9")
    assert line.key("F1") == [Charge(1200, "Set meal A")] and line.line == ""
    assert evdev_key("KEY_F1") == "F1" and evdev_key("KEY_F13") is None
    assert Charge(1200, "Set meal A").prompt() == "Pay Set meal A 12.00: please tap your card"


def test_sign_in_line_masks_the_password_and_never_shows_it():
    line = KeyLine("pos")
    shown = [item for key in "s 0001 2468" for item in line.key(key)]
    assert shown[-1] == Typed("s 0001 ****") and all("2468" not in i.text for i in shown)
    (request,) = line.key("enter")
    assert request == SignIn("0001", "2468") and "2468" not in repr(request)
    assert parse_request("o", "pos") == SignOut()


# --- receipts ----------------------------------------------------------------------------------------------------


def test_receipt_bytes_on_the_escpos_dummy_printer(till, sam):
    card = make_card(sam, opening_balance=10_000)
    sign_in(till, local(23, 10))
    paid = tap(till, card, Charge(1200, "Set meal A"), local(23, 12))
    printer = Dummy()
    till.printer = printer
    till.print_receipt(paid, local(23, 12))
    out = printer.output
    tac = paid.detail["tac"][:8].upper()
    asn = card.state.asn.hex().upper()
    assert b"Test pos\n" in out and b"Terminal 000000000101\n" in out
    assert b"\x1b!\x30" in out  # PAYMENT in double width and height
    assert b"PAYMENT\n" in out and b"Time         2026-11-23 12:00:00\n" in out
    assert f"Card                   **** {asn[-4:]}\n".encode() in out and asn[:-4].encode() not in out
    assert b"Amount                     12.00\n" in out and b"Balance" not in out  # a purchase: unverified
    assert f"TAC                     {tac}\n".encode() in out and paid.detail["tac"].encode() not in out
    assert b"Operator     0001 / batch 000001\n" in out and b"Meal                       Lunch\n" in out
    assert out.endswith(b"\x1dV\x00")  # cut
    from terminal.keypad import Undo

    refund = tap(till, card, Undo(), local(23, 12, 1))
    assert any(
        line.text.startswith("Balance") and line.text.endswith("100.00")
        for line in receipt_lines(refund, till.config, local(23, 12, 1))
    )


def test_a_printer_fault_never_undoes_the_sale(till, sam):
    class Jammed(Dummy):
        def text(self, txt):
            raise OSError("paper out")

    card = make_card(sam, opening_balance=10_000)
    sign_in(till, local(23, 10))
    till.printer = Jammed()
    assert tap(till, card, Charge(300), local(23, 12)).accepted
    assert till.event_log.last_event_of((mr.PURCHASE,)) is not None


def test_no_receipt_for_a_refusal(till):
    from terminal.decision import Decision

    assert receipt_lines(Decision(False, "pos.deny", "x", "no"), till.config, local(23, 12)) == []


def test_print_receipt_lays_out_each_line():
    from terminal.receipt import Line

    printer = Dummy()
    print_receipt(printer, [Line("A", center=True), Line("B", bold=True)])
    assert printer.output.count(b"\x1ba\x01") == 1 and b"\x1bE\x01" in printer.output


# --- X and Z reports, terminal and platform ----------------------------------------------------------------------


def run_day(till, sam):
    a, b = (
        make_card(sam, opening_balance=10_000),
        make_card(sam, opening_balance=10_000, asn=bytes.fromhex("0102030405060799")),
    )
    sign_in(till, local(23, 6))
    assert tap(till, a, Charge(300), local(23, 7)).accepted
    assert tap(till, b, Charge(300), local(23, 7, 5)).accepted
    assert tap(till, a, Charge(1200), local(23, 12)).accepted
    from terminal.keypad import Undo

    assert tap(till, a, Undo(), local(23, 12, 1)).accepted
    till.handle_shift(SignOut(), local(23, 14))
    sign_in(till, local(23, 20))
    assert tap(till, b, Charge(900), local(23, 22)).accepted
    assert tap(till, b, Charge(400), local(24, 0, 30)).accepted  # the calendar day after
    return a, b


def test_x_and_z_reports_from_the_terminal_log(till, sam):
    run_day(till, sam)
    x = report_lines(till.config, till.event_log, 0, 1, None)
    assert x[0] == "X report: terminal 000000000101 'Test pos', batch 000001"
    assert "sales             3       18.00" in x and "undos             1       12.00" in x
    assert "net                        6.00" in x
    z = report_lines(till.config, till.event_log, 0, None, dt.date(2026, 11, 23))
    assert "sales             4       27.00" in z and "subsidy spent     0        0.00" in z
    assert "  breakfast    sales    2        6.00  undos    0        0.00" in z
    assert "  lunch        sales    1       12.00  undos    1       12.00" in z
    assert "  0001         sales    4       27.00  undos    1       12.00" in z
    assert z[-1].startswith("not yet uploaded: 5 record(s), seq ")
    acked = till.event_log.last_seq()
    assert report_lines(till.config, till.event_log, acked, None, dt.date(2026, 11, 23))[-1] == (
        "all counted records acknowledged by the platform"
    )
    with pytest.raises(Exception, match="no sign-in with batch 7"):
        report_lines(till.config, till.event_log, 0, 7, None)


def test_platform_settlement_agrees_with_the_till(till, sam, platform_db):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.store import Platform
    from common import sync_protocol as p

    a, b = run_day(till, sam)
    pf = Platform(platform_db, Ed25519PrivateKey.generate(), unverified_money=True)
    try:
        pf.add_enterprise("00010001", "Test Co")
        pf.add_terminal(till.config.terminal.id, "00010001", kind="pos")
        events = [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in till.event_log.events()
        ]
        upto = next(e.seq for e in events if e.kind == mr.UNDO)  # the undo and all before it reached the platform
        pf.ingest(till.config.terminal.id, events[:upto])
        day = dt.date(2026, 11, 23)
        partial = pf.settlement(till.config.terminal.id, day).splitlines()
        assert f"received up to seq {upto}" in partial
        pf.ingest(till.config.terminal.id, events[upto:])
        platform_lines = pf.settlement(till.config.terminal.id, day).splitlines()
        till_lines = report_lines(till.config, till.event_log, till.event_log.last_seq(), None, day)
        assert totals_part(platform_lines) == totals_part(till_lines)  # every total line, byte for byte
        assert f"received up to seq {till.event_log.last_seq()}" in platform_lines
        assert "of these, 5 record(s) not accounted to the cards (onecard platform held)" in platform_lines
        assert totals_part(partial) != totals_part(platform_lines)
    finally:
        pf.close()


def totals_part(lines):
    """The total lines of a report: after its header, before what it says about uploads."""
    end = next(i for i, line in enumerate(lines) if line.startswith(("received", "not yet", "all counted")))
    return lines[1:end]


def test_seq_ranges():
    assert settlement.seq_ranges([9, 3, 4, 5, 11]) == "3-5, 9, 11" and settlement.seq_ranges([]) == ""


# --- hypothesis: no limit is exceeded offline ----------------------------------------------------------------------

minutes = st.integers(min_value=0, max_value=3 * 24 * 60 - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sales=st.lists(st.tuples(minutes, st.integers(min_value=1, max_value=3000)), min_size=1, max_size=12))
def test_no_limit_is_exceeded_whatever_the_sales(tmp_path_factory, sales):
    """Sales at random times over three days and random amounts, through the real till and card: whatever was
    accepted, no card ever spent more than a period's count or amount, nor the day's amount, in any service day."""
    tmp = tmp_path_factory.mktemp("sales")
    sam = make_sam()
    config = load_config(write_config(tmp))
    term = Terminal(
        config,
        sam,
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
        ConsoleOutputs(config.terminal.name, io.StringIO(), color=False),
    )
    try:
        card = make_card(sam, opening_balance=100_000)
        start = local(23, 0)
        sign_in(term, start)
        accepted = []
        for minute, amount in sorted(sales):
            when = start + dt.timedelta(minutes=minute)
            if tap(term, card, Charge(amount), when).accepted:
                accepted.append(meal_rules.Sale(when, amount))
        periods = config.pos.meal_periods
        days = {meal_rules.service_day(periods, s.local) for s in accepted}
        for day in days:
            for period in (*periods, None):
                in_period, in_day = meal_rules.tally(periods, accepted, day, period)
                if period is not None:
                    assert not period.max_count or in_period.count <= period.max_count
                    assert not period.max_amount or in_period.amount <= period.max_amount
                assert in_day.amount <= config.pos.daily_max_amount
        spent = sum(s.amount for s in accepted)
        assert card.state.purse.balance == 100_000 - spent  # the till's guarantees: each sale charged exactly once
        logged = [e for e in term.event_log.events() if e.kind == mr.PURCHASE]
        assert sum(e.detail["amount"] for e in logged) == spent
    finally:
        term.event_log.close()


def test_the_documented_canteen_examples_load(tmp_path):
    """The commented [pos] examples of the packaged firmware.toml, uncommented, are valid as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "firmware.toml").read_text(encoding="utf-8")
    lines, inside = [], False
    for line in text.splitlines():
        inside = inside or line == "#[pos.meal_periods.breakfast]"
        if inside and line.startswith("#") and line[1:2] not in ("", " ", "#"):
            line = line[1:]  # a commented-out setting, not a comment
        inside = inside and not line.startswith("password_hash")
        lines.append(line.replace("scrypt$16384$8$1$<salt>$<hash>", HASH))
    path = tmp_path / "firmware.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    pos = load_config(path).pos
    assert [m.name for m in pos.meal_periods] == ["breakfast", "lunch", "dinner", "late"]
    assert list(pos.price_keys) == ["F1"] and list(pos.operators) == ["0001"]


def test_running_till_signs_in_and_charges_the_fixed_price_on_a_tap_with_no_typing(tmp_path, sam):
    """The till's loop with a console keypad: sign in, then a card tapped with no amount typed pays the period's
    fixed price (定额); a price key rings its item up; the display never shows the password."""
    from common.config import MealPeriod
    from terminal.keypad import ConsoleKeypad
    from tests.test_pos_terminal import Running

    pos = load_config(write_config(tmp_path)).pos
    pos = dataclasses.replace(pos, meal_periods=(MealPeriod("brunch", dt.time(9, 30), dt.time(10, 30), price=400),))
    card = make_card(sam, opening_balance=10_000)
    reader = InProcessReader()
    lines = io.StringIO(f"s 0001 {PASSWORD}\n")
    till = Running(tmp_path, sam, "pos", reader, "", keypad=ConsoleKeypad("pos", lines), config_changes={"pos": pos})
    try:
        assert till.shows("Signed in: Li Na (0001), batch 000001")
        reader.tap(card)
        assert till.shows("Paid 4.00")
        reader.remove()
    finally:
        events = till.finish()
    assert PASSWORD not in till.screen.getvalue()
    sale = next(e for e in events if e.kind == mr.PURCHASE)
    assert (sale.detail["amount"], sale.detail["meal_period"], sale.detail["batch"]) == (400, "brunch", 1)
    assert card.state.purse.balance == 9600


def sample_receipt_bytes(tmp_path, printer):
    """A lunch sale on a price key by a signed-in cashier, printed on `printer` (for docs/receipt.png as well)."""
    sam = make_sam()
    config = load_config(write_config(tmp_path))
    term = Terminal(
        config,
        sam,
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
        ConsoleOutputs(config.terminal.name, io.StringIO(), color=False),
        printer=printer,
    )
    try:
        sign_in(term, local(23, 11))
        card = make_card(sam, opening_balance=10_000, asn=bytes.fromhex("1000000000004821"))
        assert tap(term, card, Charge(1200, "Set meal A"), local(23, 12, 5)).accepted
    finally:
        term.event_log.close()
    return printer.output


def test_the_receipt_as_the_printer_receives_it_renders_line_for_line(tmp_path):
    from tests.escpos_render import UnknownCommand, interpret, render

    out = sample_receipt_bytes(tmp_path, Dummy())
    lines = interpret(out)  # every byte is a command terminal/receipt.py means to send
    texts = [t for t, _ in lines]
    assert texts[:4] == ["Test pos", "Terminal 000000000101", "-" * 32, "PAYMENT"]
    assert "Card                   **** 4821" in texts and texts[-1] == "--cut--"
    assert [m["big"] for t, m in lines if t == "PAYMENT"] == [True]
    assert render(out).size[0] == 32 * 12 + 32
    with pytest.raises(UnknownCommand):
        interpret(b"\x1b@")  # ESC @ (initialise) is not part of our receipts


# --- meal usage across tills: platform -> agent's inbox -> the other till ---------------------------------------


def wire(log):
    from common import sync_protocol as p

    return [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in log.events()
    ]


def test_a_lunch_at_one_till_counts_at_the_other_once_the_platform_confirmed_it(tmp_path, sam, platform_db):
    """Till A sells a lunch; the platform receives it and publishes the card's usage; till B's agent stores the
    signed message; till B then refuses a second lunch (max_count 1) and names the limit. An undo at A, once
    received, gives the meal back at B."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.store import Platform
    from common import sync_protocol as p
    from sync_agent.store import SyncStore
    from terminal.inbox import Inbox
    from terminal.keypad import Undo

    key = Ed25519PrivateKey.generate()
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    till_a_config = load_config(write_config(a_dir))
    till_a = Terminal(
        till_a_config,
        sam,
        EventLog.open(till_a_config.terminal.database, till_a_config.terminal.id),
        Blacklist.open(till_a_config.terminal.blacklist),
        ConsoleOutputs("A", io.StringIO(), color=False),
    )
    b_path = write_config(b_dir)
    b_path.write_text(b_path.read_text().replace('id = "000000000101"', 'id = "000000000102"'))
    b_config = load_config(b_path)
    sync_db = b_dir / "sync.db"
    agent_store = SyncStore.open(sync_db, b_config.terminal.id)
    inbox = Inbox(sync_db)
    till_b = Terminal(
        b_config,
        sam,
        EventLog.open(b_config.terminal.database, b_config.terminal.id),
        Blacklist.open(b_config.terminal.blacklist),
        ConsoleOutputs("B", io.StringIO(), color=False),
        inbox=inbox,
    )
    pf = Platform(platform_db, key, unverified_money=True)
    card = make_card(sam, opening_balance=10_000)
    asn = card.state.asn.hex().upper()

    def deliver():
        """What the agent does with each queued downlink message addressed to B's enterprise."""
        for row_id, _topic, payload in pf.unpublished():
            env = p.open_envelope(payload, key.public_key())
            if env.type == "meal_usage":
                agent_store.store_meal_usage(
                    env.body, env.id, p.format_time(env.issued_at), p.format_time(env.issued_at)
                )
            pf.mark_published([row_id])

    try:
        pf.add_enterprise("00010001", "Test Co")
        for tid in ("000000000101", "000000000102"):
            pf.add_terminal(tid, "00010001", kind="pos")
        deliver()
        sign_in(till_a, local(23, 11))
        sign_in(till_b, local(23, 11))
        assert tap(till_a, card, Charge(1000), local(23, 12)).accepted
        # Offline (nothing confirmed yet), B knows only its own sales: the documented limit of the offline case.
        assert till_b.purse.canteen.usage(b_config, asn, local(23, 12, 0, 10)) == (
            meal_rules.Usage(),
            meal_rules.Usage(),
        )
        pf.ingest("000000000101", wire(till_a.event_log))
        deliver()
        assert till_b.purse.canteen.usage(b_config, asn, local(23, 12, 0, 10)) == (
            meal_rules.Usage(1, 1000),
            meal_rules.Usage(1, 1000),
        )
        refused = tap(till_b, card, Charge(500), local(23, 12, 0, 10))
        assert (refused.accepted, refused.reason_code) == (False, "meal_count_limit")
        assert "Lunch limit reached: 1 of 1" in refused.message
        # A's own figures are not counted twice at A: its log counts them, the platform's row for A is skipped.
        assert till_a.purse.canteen.usage(till_a_config, asn, local(23, 12, 0, 10))[0] == meal_rules.Usage(1, 1000)
        assert tap(till_a, card, Undo(), local(23, 12, 0, 30)).accepted
        pf.ingest("000000000101", wire(till_a.event_log))
        deliver()
        assert tap(till_b, card, Charge(500), local(23, 12, 0, 40)).accepted
        assert card.state.purse.balance == 9500
    finally:
        pf.close()
        agent_store.close()
        inbox.close()
        till_a.event_log.close()
        till_b.event_log.close()


def test_meal_usage_messages_are_strict_and_the_newest_figures_stand(tmp_path):
    from common import sync_protocol as p
    from sync_agent.store import SyncStore
    from terminal.inbox import Inbox

    row = {"asn": "0102030405060708", "terminal_id": "000000000102", "period": "lunch", "count": 1, "amount": 800}
    body = {"enterprise_id": "00010001", "day": "2026-11-23", "usage": [row]}
    p.BODY_CHECKS["meal_usage"](body)
    for bad, problem in (
        ({**body, "usage": [row, row]}, "a second row"),
        ({**body, "usage": [{**row, "count": -1}]}, "out of range"),
        ({**body, "usage": [{**row, "period": "lunch time"}]}, "is not 0-20 characters"),
        ({**body, "day": "2026-02-30"}, "not a real date"),
        ({**body, "extra": 1}, "unknown field"),
        ({**body, "usage": [row] * (p.MAX_MEAL_USAGE_ROWS + 1)}, "more than"),
    ):
        with pytest.raises(p.ProtocolError, match=problem):
            p.BODY_CHECKS["meal_usage"](bad)
    store = SyncStore.open(tmp_path / "sync.db", "000000000101")
    inbox = Inbox(tmp_path / "sync.db")
    try:
        store.store_meal_usage(body, "m2", "2026-11-23T04:00:00.000000Z", "2026-11-23T04:00:01.000000Z")
        older = {**body, "usage": [{**row, "count": 0, "amount": 0}]}
        assert store.store_meal_usage(older, "m1", "2026-11-23T03:00:00.000000Z", "2026-11-23T04:00:02.000000Z") == 0
        usage = inbox.other_tills("000000000101")("0102030405060708", dt.date(2026, 11, 23))
        assert usage == {"": meal_rules.Usage(1, 800), "lunch": meal_rules.Usage(1, 800)}
        assert inbox.other_tills("000000000102")("0102030405060708", dt.date(2026, 11, 23)) == {"": meal_rules.Usage()}
        later = {**body, "day": "2026-11-27", "usage": [row]}
        store.store_meal_usage(later, "m3", "2026-11-27T04:00:00.000000Z", "2026-11-27T04:00:01.000000Z")
        assert inbox.other_tills("000000000101")("0102030405060708", dt.date(2026, 11, 23)) == {"": meal_rules.Usage()}
    finally:
        store.close()
        inbox.close()


def test_report_and_hash_password_commands(till, sam, tmp_path, capsys, monkeypatch):
    from onecard.cli import main

    run_day(till, sam)
    path = str(till.config.path)
    assert main(["terminal", "report", "--config", path, "--day", "2026-11-23"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Z report: terminal 000000000101 'Test pos', 2026-11-23 (Asia/Shanghai)\n")
    assert "not yet uploaded: 5 record(s)" in out
    assert main(["terminal", "report", "--config", path, "--shift", "2"]) == 0
    assert "sales             2       13.00" in capsys.readouterr().out
    assert main(["terminal", "report", "--config", path, "--day", "23/11/2026"]) == 2
    assert "is not YYYY-MM-DD" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("13579\n"))
    assert main(["terminal", "hash-password"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith('password_hash = "scrypt$16384$8$1$') and "13579" not in line
    assert verify_password(line.split('"')[1], "13579")
    monkeypatch.setattr("sys.stdin", io.StringIO("12\n"))
    assert main(["terminal", "hash-password"]) == 2


@pytest.mark.parametrize("tear_after", [1, 2, 3])
def test_a_torn_lunch_is_settled_once_in_its_shift_and_period_and_counts_once(till, sam, tear_after):
    """Torn at each APDU of the sale: the next tap settles it (the debit happened or not), the settled record keeps
    the operator, batch and meal period of its intent, and the lunch limit counts it exactly once."""
    card = make_card(sam, opening_balance=10_000)
    sign_in(till, local(23, 11))
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    torn = till.handle_tap(reader.wait_for_card(0), local(23, 12), Charge(1000))
    assert torn.kind == "tap.incomplete"
    again = tap(till, card, Charge(1000), local(23, 12, 0, 20))
    assert again.accepted
    paid = card.state.purse.balance == 9000
    outcome = till.event_log.last_event_of((mr.PURCHASE,))
    assert (outcome.detail["operator"], outcome.detail["batch"], outcome.detail["meal_period"]) == ("0001", 1, "lunch")
    assert [e.kind for e in till.event_log.events() if e.kind == mr.PURCHASE] == [mr.PURCHASE]
    assert paid  # one lunch charged, whether at the torn tap or at the re-tap
    second = tap(till, card, Charge(500), local(23, 12, 1))
    assert second.reason_code == "meal_count_limit" and card.state.purse.balance == 9000


def test_receipt_printers_over_the_network_and_a_serial_line(tmp_path):
    """python-escpos's own Network and Serial printers, against a TCP listener on a free port and a real pty."""
    import os
    import pty
    import socket
    import threading
    import tty
    from contextlib import ExitStack

    from common.config import PrinterSection
    from common.errors import UserError
    from terminal.adapters import open_receipt_printer
    from terminal.receipt import Line

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    received = []

    def accept():
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(4096):
                received.append(chunk)

    thread = threading.Thread(target=accept)
    thread.start()
    config = load_config(write_config(tmp_path))
    net = dataclasses.replace(
        config, printer=PrinterSection(driver="network", host="127.0.0.1", port=server.getsockname()[1])
    )
    with ExitStack() as stack:
        printer = open_receipt_printer(net, stack)
        print_receipt(printer, [Line("NET")])
    thread.join(5)
    server.close()
    assert b"NET\n" in b"".join(received) and b"".join(received).endswith(b"\x1dV\x00")

    master, slave = pty.openpty()
    tty.setraw(slave)
    serial_config = dataclasses.replace(config, printer=PrinterSection(driver="serial", device=os.ttyname(slave)))
    try:
        with ExitStack() as stack:
            print_receipt(open_receipt_printer(serial_config, stack), [Line("SER")])
        out = b""
        while not out.endswith(b"\x1dV\x00"):
            out += os.read(master, 4096)
        assert b"SER\n" in out
    finally:
        os.close(master)
        os.close(slave)

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(UserError, match=r"\[printer\] driver = 'network' cannot be opened"), ExitStack() as stack:
        open_receipt_printer(
            dataclasses.replace(config, printer=PrinterSection(driver="network", host="127.0.0.1", port=port)), stack
        )
