"""Issue 13: an allowance is collected once, even by two offline tills (docs/card-application.md 5.6 "Allowance
numbers"). The card keeps the number of the last allowance it loaded (FCI tag CA) and refuses a load not above it
(94 07); the terminal loads only announced allowances above it, in order; tears anywhere settle exactly once."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import journal as jn
from common import transactions as tx
from terminal.decision import Refusal
from terminal.reader import CardRemoved
from terminal.subsidy_protocol import Allowance
from tests.support import MONDAY_10AM
from tests.test_purse import present
from tests.test_subsidy_terminal import _settled_once, outcomes, sam, subsidy_card, terminal  # noqa: F401 (fixture)


def allowance(card, number, amount=3_000, expiry=dt.date(2026, 11, 30), policy="subsidy_first", collected=False):
    return Allowance(f"al-{number}", card.state.asn.hex().upper(), amount, expiry, policy, collected, number)


def two_tills(tmp_path, sam, allowances):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return terminal(tmp_path / "a", sam, allowances=allowances), terminal(tmp_path / "b", sam, allowances=allowances)


def subsidy_loads(card):
    return [r for r in card.state.subsidy.records if r["type"] == tx.SUBSIDY_LOAD]


def test_two_offline_tills_holding_one_allowance_load_it_once_and_the_second_sells(tmp_path, sam):
    card = subsidy_card(sam, cash=1_000, expiry=None)
    till_a, till_b = two_tills(tmp_path, sam, [allowance(card, 1)])  # both offline: neither hears of the other
    first = till_a.purchase(present(card)[1], 1_200, MONDAY_10AM)
    assert first.accepted and "subsidy of 30.00 collected" in first.message
    assert card.state.subsidy.last_allowance == 1
    reader, transmit = present(card)
    second = till_b.purchase(transmit, 500, MONDAY_10AM + dt.timedelta(minutes=1))
    # Till B read CA = 00 01 at SELECT: allowance 1 is already on the card, so it sold at once (3 APDUs).
    assert second.accepted and second.message == "Paid 5.00 (subsidy 5.00, cash 0.00)"
    assert reader.apdu_count == 3
    assert outcomes(till_b, "subsidy.load") == []
    assert len(subsidy_loads(card)) == 1 and card.state.subsidy.online_counter == 1
    assert card.state.subsidy.balance == 3_000 - 1_200 - 500 and card.state.purse.balance == 1_000
    assert [e.detail["tac"] for e in outcomes(till_a, "subsidy.load")] == [r["tac"] for r in subsidy_loads(card)]


def test_a_load_the_card_refuses_is_logged_and_the_tap_goes_on(tmp_path, sam, caplog):
    """Should a terminal ask for an allowance already on the card (a stale SELECT), the card answers 94 07, nothing
    changes, the refusal is logged and the sale goes on."""
    card = subsidy_card(sam, cash=1_000, expiry=None)
    till_a, till_b = two_tills(tmp_path, sam, [allowance(card, 1)])
    till_a.purchase(present(card)[1], 100, MONDAY_10AM)
    before = card.state.subsidy.to_json()
    reader, transmit = present(card)

    def stale_select(command: bytes) -> bytes:  # as if SELECT's CA still said 00 00
        answer = transmit(command)
        return answer.replace(bytes.fromhex("CA020001"), bytes.fromhex("CA020000")) if command[1] == 0xA4 else answer

    with caplog.at_level(logging.WARNING, logger="onecard.subsidy"):
        sale = till_b.purchase(stale_select, 200, MONDAY_10AM + dt.timedelta(minutes=1))
    assert sale.accepted and sale.message == "Paid 2.00 (subsidy 2.00, cash 0.00)"
    assert reader.apdu_count == 4  # SELECT, the refused INITIALIZE FOR LOAD (94 07), INITIALIZE, DEBIT
    assert any("subsidy.allowance_refused" in r.getMessage() for r in caplog.records)
    assert outcomes(till_b, "subsidy.load") == []
    assert [e.kind for e in till_b.event_log.events() if e.kind.startswith("subsidy.")] == []  # no intent either
    after = card.state.subsidy.to_json()
    assert after["online_counter"] == before["online_counter"] and after["last_allowance"] == 1
    assert card.state.subsidy.balance == 3_000 - 100 - 200


def test_allowances_are_loaded_in_number_order_and_an_expired_one_is_skipped_for_good(tmp_path, sam):
    card = subsidy_card(sam, cash=1_000, expiry=None)
    expired = allowance(card, 2, amount=700, expiry=dt.date(2026, 11, 1))
    listed = [allowance(card, 3, amount=500), expired, allowance(card, 1, amount=300)]  # announced out of order
    pos = terminal(tmp_path, sam, allowances=listed)
    d = pos.balance_inquiry(present(card)[1], MONDAY_10AM)
    assert [e.detail["allowance_no"] for e in outcomes(pos, "subsidy.load")] == [1, 3]
    assert "subsidy of 3.00 collected" in d.message and "subsidy of 5.00 collected" in d.message
    assert card.state.subsidy.last_allowance == 3 and card.state.subsidy.balance == 800
    # Allowance 2, had it not expired, could no longer be loaded anywhere: the card refuses a number below 3.
    later = dataclasses.replace(expired, expiry=dt.date(2026, 12, 31))
    (tmp_path / "x").mkdir()
    other = terminal(tmp_path / "x", sam, allowances=[later])
    other.balance_inquiry(present(card)[1], MONDAY_10AM + dt.timedelta(minutes=1))
    assert outcomes(other, "subsidy.load") == [] and card.state.subsidy.balance == 800


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_subsidy_load_torn_at_each_apdu_then_another_till_then_the_first_settles_once(tmp_path, sam, k):
    """Torn after SELECT (1), INITIALIZE FOR LOAD (2) or CREDIT (3) at till A; the card then goes to till B, which
    holds the same allowance offline; back at till A its intent is settled: the allowance is on the card once, and
    each till logged only what the card proves it did."""
    card = subsidy_card(sam, cash=1_000, expiry=None)
    till_a, till_b = two_tills(tmp_path, sam, [allowance(card, 1)])
    with pytest.raises(CardRemoved):
        till_a.balance_inquiry(present(card, tear_after=k)[1], MONDAY_10AM)
    till_b.purchase(present(card)[1], 100, MONDAY_10AM + dt.timedelta(minutes=1))
    till_a.balance_inquiry(present(card)[1], MONDAY_10AM + dt.timedelta(minutes=2))
    assert len(subsidy_loads(card)) == 1 and card.state.subsidy.last_allowance == 1
    logged = outcomes(till_a, "subsidy.load") + outcomes(till_b, "subsidy.load")
    assert len(logged) == 1 and logged[0].detail["tac"] == subsidy_loads(card)[0]["tac"]
    assert (len(outcomes(till_a, "subsidy.load")), len(outcomes(till_b, "subsidy.load"))) == (
        (1, 0) if k == 3 else (0, 1)
    )
    assert card.state.subsidy.balance == 3_000 - 100
    assert till_a.journal.unfinished(card.state.asn.hex().upper(), *jn.MONEY_FLOWS) is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_torn_load_retried_at_the_same_till_settles_once(tmp_path, sam, k):
    card = subsidy_card(sam, cash=1_000, expiry=None)
    pos = terminal(tmp_path, sam, allowances=[allowance(card, 1), allowance(card, 2, amount=100)])
    with pytest.raises(CardRemoved):
        pos.balance_inquiry(present(card, tear_after=k)[1], MONDAY_10AM)
    for i in range(3):
        pos.balance_inquiry(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=5 + i))
    assert [r["tsn"] for r in subsidy_loads(card)] == [1, 2]  # the record's TSN field is the allowance number
    assert sorted(e.detail["allowance_no"] for e in outcomes(pos, "subsidy.load")) == [1, 2]
    assert card.state.subsidy.balance == 3_100
    _settled_once(pos, card)


# --- hypothesis: random taps at several offline tills, random syncs and issues -----------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("tap"), st.integers(0, 2), st.integers(0, 900)),  # till, amount (0: a balance tap)
        st.tuples(st.just("sync"), st.integers(0, 2), st.just(0)),  # the till hears the platform's list
        st.tuples(st.just("issue"), st.integers(100, 2_000), st.booleans()),  # amount, already expired
        st.tuples(st.just("tear"), st.integers(0, 2), st.integers(1, 5)),  # a tap torn after k APDUs
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_no_allowance_is_ever_collected_twice_across_offline_tills(tmp_path_factory, sam, ops):
    tmp = tmp_path_factory.mktemp("tills")
    card = subsidy_card(sam, cash=5_000, expiry=None)
    asn = card.state.asn.hex().upper()
    issued: list[Allowance] = [allowance(card, 1, amount=1_000)]
    heard: list[list[Allowance]] = [list(issued) for _ in range(3)]  # what each till last heard
    tills = []
    for i in range(3):
        (tmp / str(i)).mkdir()
        t = terminal(tmp / str(i), sam)
        t.pending_allowances = lambda a, i=i: [x for x in heard[i] if x.asn == a]
        tills.append(t)
    now = MONDAY_10AM
    for op, x, y in ops:
        now += dt.timedelta(seconds=30)
        if op == "issue":
            expiry = dt.date(2026, 11, 1) if y else dt.date(2026, 12, 31)
            issued.append(allowance(card, len(issued) + 1, amount=x, expiry=expiry))
            continue
        if op == "sync":  # the platform's list: collected once any till's log has its load
            loaded = {e.detail["allowance_id"] for t in tills for e in outcomes(t, "subsidy.load")}
            heard[x] = [dataclasses.replace(a, collected=a.allowance_id in loaded) for a in issued]
            continue
        till = tills[x]
        try:
            if op == "tear":
                till.balance_inquiry(present(card, tear_after=y)[1], now)
            elif y:
                till.purchase(present(card)[1], y, now)
            else:
                till.balance_inquiry(present(card)[1], now)
        except (Refusal, CardRemoved):
            continue
    for t in tills:  # every till sees the card once more: whatever was torn is settled
        now += dt.timedelta(seconds=30)
        try:
            t.balance_inquiry(present(card)[1], now)
        except Refusal:
            pass
    loads = sorted((e for t in tills for e in outcomes(t, "subsidy.load")), key=lambda e: e.detail["counter"])
    ids = [e.detail["allowance_id"] for e in loads]
    assert len(ids) == len(set(ids)), ids  # no allowance twice
    # every load the card made is logged once (its online counter), in strictly increasing allowance numbers
    assert [e.detail["counter"] for e in loads] == list(range(card.state.subsidy.online_counter))
    numbers = [e.detail["allowance_no"] for e in loads]
    assert numbers == sorted(set(numbers))
    by_number = {a.number: a.amount for a in issued}
    collected = sum(by_number[n] for n in numbers)
    spent = sum(e.detail.get("subsidy_amount", 0) for t in tills for e in outcomes(t, "pos.purchase") if e.asn == asn)
    assert card.state.subsidy.balance + spent == collected
    assert card.state.subsidy.last_allowance == (max(numbers) if numbers else 0)
    assert all(t.journal.unfinished(asn, *jn.MONEY_FLOWS) is None for t in tills)
