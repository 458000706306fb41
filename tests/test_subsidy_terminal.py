"""The subsidy purse (补助) at the till and the top-up terminal: collection, two-purse sales by policy, withdrawal of
an expired subsidy, and tears at every APDU of each, settled exactly once per purse (docs/canteen.md "Subsidy")."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import bcd
from common import transactions as tx
from sam.interface import Algorithm, CardIdentity, KeyUsage, KeyUsageError, LoadSession
from simulator.card import SubsidyPurse
from terminal.decision import Refusal
from terminal.reader import CardRemoved
from terminal.subsidy_protocol import Allowance
from tests.support import ALL_USAGES, MONDAY_10AM, make_card_v2, make_sam
from tests.test_purse import make_purse_terminal, present

SUBSIDY_KINDS = ("pos.purchase", "subsidy.load", "subsidy.withdraw")


def subsidy_card(sam, cash=10_000, subsidy=0, expiry=dt.date(2026, 12, 31)):
    card = make_card_v2(sam, opening_balance=cash)
    card.state.subsidy = SubsidyPurse(subsidy, bcd.encode_date(expiry) if subsidy or expiry else bytes(4), 100_000)
    return card


def terminal(tmp_path, sam, kind="pos", allowances=()):
    t = make_purse_terminal(tmp_path, sam, kind)
    t.pending_allowances = lambda asn: [a for a in allowances if a.asn == asn]
    return t


def outcomes(t, kind=None):
    return [e for e in t.event_log.events() if e.kind in SUBSIDY_KINDS and (kind is None or e.kind == kind)]


def tac_ok(sam, card, t, tx_type, amount, counter, balance_after, tsn, d, tac):
    sam.verify_tac(
        CardIdentity(card.state.asn, card.state.enterprise_id, 1, Algorithm.AES128),
        amount=amount,
        tx_type=tx_type,
        terminal_id=t.config.terminal.id_bytes,
        tsn=tsn,
        date=bytes.fromhex(d["date"]),
        time=bytes.fromhex(d["time"]),
        counter=counter,
        balance_after=balance_after,
        tac=bytes.fromhex(tac),
    )


@pytest.fixture
def sam():
    return make_sam(usages=(*ALL_USAGES, KeyUsage.SUBSIDY))


@pytest.mark.parametrize(
    "policy, subsidy, cash, parts",
    [
        ("subsidy_first", 500, 10_000, (500, 700)),
        ("subsidy_first", 5_000, 10_000, (1200, 0)),
        ("cash_first", 5_000, 1_000, (200, 1000)),
        ("cash_first", 5_000, 10_000, (0, 1200)),
    ],
)
def test_a_two_purse_sale_splits_by_policy_in_three_apdus(tmp_path, sam, policy, subsidy, cash, parts):
    card = subsidy_card(sam, cash=cash, subsidy=subsidy)
    allowance = Allowance("A1", card.state.asn.hex().upper(), 1, dt.date(2026, 1, 1), policy)  # expired: policy only
    pos = terminal(tmp_path, sam, allowances=[allowance])
    reader, transmit = present(card)
    decision = pos.purchase(transmit, 1200, MONDAY_10AM)
    s, c = parts
    assert decision.message == f"Paid 12.00 (subsidy {s / 100:.2f}, cash {c / 100:.2f})"
    assert reader.apdu_count == 3
    assert (card.state.subsidy.balance, card.state.purse.balance) == (subsidy - s, cash - c)
    d = pos.event_log.events()[-1].detail
    assert (d["amount"], d["subsidy_amount"], d["policy"]) == (1200, s, policy)
    assert d["balance_after"] == cash - c and d["subsidy_balance_after"] == subsidy - s
    if s:
        tac_ok(sam, card, pos, tx.SUBSIDY_PURCHASE, s, 0, subsidy - s, d["tsn"], d, d["subsidy_tac"])
    else:
        assert d["subsidy_tac"] == "0" * 16 and card.state.subsidy.offline_counter == 0
    if c:
        tac_ok(sam, card, pos, tx.PURCHASE, c, 0, cash - c, d["tsn"], d, d["tac"])
    else:
        assert d["tac"] == "0" * 16 and card.state.purse.offline_counter == 0


def test_the_two_purses_together_too_low_is_refused_without_a_figure(tmp_path, sam):
    card = subsidy_card(sam, cash=300, subsidy=400)
    pos = terminal(tmp_path, sam)
    with pytest.raises(Refusal) as r:
        pos.purchase(present(card)[1], 1200, MONDAY_10AM)
    assert r.value.reason_code == "insufficient_balance" and "3.00" not in r.value.message
    assert (card.state.subsidy.balance, card.state.purse.balance) == (400, 300) and outcomes(pos) == []


def test_an_allowance_is_collected_at_the_next_tap_of_a_till_once(tmp_path, sam):
    card = subsidy_card(sam, cash=1_000)
    assert card.state.subsidy.expiry == bytes.fromhex("20261231")
    card.state.subsidy.expiry = bytes(4)  # empty purse
    a = Allowance("2026-11-E1001", card.state.asn.hex().upper(), 30_000, dt.date(2026, 11, 30), "subsidy_first")
    pos = terminal(tmp_path, sam, allowances=[a])
    reader, transmit = present(card)
    decision = pos.purchase(transmit, 1200, MONDAY_10AM)
    assert decision.message == (
        "Paid 12.00 (subsidy 12.00, cash 0.00) (subsidy of 300.00 collected - subsidy balance 300.00)"
    )
    assert reader.apdu_count == 5  # SELECT, INITIALIZE FOR LOAD, CREDIT, INITIALIZE (two purses), DEBIT
    assert card.state.subsidy.balance == 28_800 and card.state.subsidy.expiry == bytes.fromhex("20261130")
    load = outcomes(pos, "subsidy.load")[0].detail
    assert (load["allowance_id"], load["amount"], load["balance_after"], load["expiry"]) == (
        a.allowance_id,
        30_000,
        30_000,
        "20261130",
    )
    # the TAC's TSN field is the allowance number (card-application.md 5.6)
    tac_ok(sam, card, pos, tx.SUBSIDY_LOAD, 30_000, 0, 30_000, 1, load, load["tac"])
    pos.purchase(present(card)[1], 100, MONDAY_10AM + dt.timedelta(minutes=1))
    assert len(outcomes(pos, "subsidy.load")) == 1 and card.state.subsidy.balance == 28_700


def test_an_expired_allowance_is_not_collected(tmp_path, sam):
    card = subsidy_card(sam)
    a = Allowance("old", card.state.asn.hex().upper(), 30_000, dt.date(2026, 11, 22), "subsidy_first")
    pos = terminal(tmp_path, sam, allowances=[a])
    pos.purchase(present(card)[1], 100, MONDAY_10AM)
    assert outcomes(pos, "subsidy.load") == [] and card.state.subsidy.balance == 0


def test_an_expired_subsidy_is_withdrawn_at_the_next_tap_and_logged(tmp_path, sam):
    card = subsidy_card(sam, cash=5_000, subsidy=2_345, expiry=dt.date(2026, 11, 22))
    pos = terminal(tmp_path, sam)
    reader, transmit = present(card)
    decision = pos.purchase(transmit, 1200, MONDAY_10AM)
    assert decision.message == "Paid 12.00 (subsidy 0.00, cash 12.00) (expired subsidy of 23.45 withdrawn)"
    assert (card.state.subsidy.balance, card.state.purse.balance) == (0, 3_800)
    w = outcomes(pos, "subsidy.withdraw")[0].detail
    assert (w["amount"], w["balance_after"]) == (2_345, 0)
    tac_ok(sam, card, pos, tx.SUBSIDY_WITHDRAW, 2_345, 0, 0, w["tsn"], w, w["tac"])
    pos.purchase(present(card)[1], 100, MONDAY_10AM + dt.timedelta(minutes=1))
    assert len(outcomes(pos, "subsidy.withdraw")) == 1


def test_the_top_up_terminal_collects_on_a_balance_tap(tmp_path, sam):
    card = subsidy_card(sam)
    a = Allowance("one-off-1", card.state.asn.hex().upper(), 5_000, dt.date(2026, 12, 31), "cash_first")
    topup = terminal(tmp_path, sam, "topup", [a])
    decision = topup.balance_inquiry(present(card)[1], MONDAY_10AM)
    assert "subsidy of 50.00 collected - subsidy balance 50.00" in decision.message
    assert card.state.subsidy.balance == 5_000


def test_a_till_whose_sam_lacks_the_subsidy_usage_says_where_to_collect(tmp_path, sam):
    from sam.interface import KeyPurpose
    from sam.roles import ROLE_KEYS
    from sam.software import SoftwareSam

    assert KeyUsage.SUBSIDY in ROLE_KEYS["pos"][KeyPurpose.LOAD]  # the packaged POS role can collect
    card = subsidy_card(sam)
    card.state.subsidy.expiry = bytes(4)
    old_pos = SoftwareSam(
        sam._keystore.restricted_per_purpose(
            {KeyPurpose.PURCHASE: {KeyUsage.MAC, KeyUsage.VERIFY}, KeyPurpose.LOAD: {KeyUsage.REVERSAL}}
        )
    )
    a = Allowance("x", card.state.asn.hex().upper(), 5_000, dt.date(2026, 12, 31), "subsidy_first")
    pos = terminal(tmp_path, old_pos, allowances=[a])
    decision = pos.purchase(present(card)[1], 100, MONDAY_10AM)
    assert "allowance to collect at the top-up terminal" in decision.message
    assert card.state.subsidy.balance == 0 and outcomes(pos, "subsidy.load") == []
    pos_role = SoftwareSam(sam._keystore.restricted_per_purpose(ROLE_KEYS["pos"]))
    (tmp_path / "b").mkdir()
    pos2 = terminal(tmp_path / "b", pos_role, allowances=[a])
    identity = CardIdentity(card.state.asn, card.state.enterprise_id, 1, Algorithm.AES128)
    cash_load = LoadSession(identity, bytes(4), 0, 0, 100, bytes(6), bytes.fromhex("20261123"), bytes(3))
    with pytest.raises(KeyUsageError):
        pos_role.load_mac2(cash_load, bytes(8))  # the subsidy usage never signs a cash load
    assert "subsidy of 50.00 collected" in pos2.purchase(present(card)[1], 100, MONDAY_10AM).message


def _settled_once(t, card):
    """Every card record appears in the log exactly once with its TAC, per purse."""
    done = outcomes(t)
    cash_tacs = [e.detail["tac"] for e in done if e.kind == "pos.purchase" and e.detail["tac"] != "0" * 16]
    sub_tacs = [
        e.detail["subsidy_tac"] for e in done if e.kind == "pos.purchase" and e.detail["subsidy_tac"] != "0" * 16
    ]
    sub_tacs += [e.detail["tac"] for e in done if e.kind.startswith("subsidy.")]
    assert sorted(cash_tacs) == sorted(r["tac"] for r in card.state.purse.records if r["type"] == tx.PURCHASE)
    assert sorted(sub_tacs) == sorted(r["tac"] for r in card.state.subsidy.records)


@pytest.mark.parametrize("policy", ["subsidy_first", "cash_first"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_two_purse_sale_torn_after_each_apdu_settles_once_per_purse(tmp_path, sam, k, policy):
    card = subsidy_card(sam, cash=1_000, subsidy=500)
    pos = terminal(
        tmp_path, sam, allowances=[Allowance("p", card.state.asn.hex().upper(), 1, dt.date(2026, 1, 1), policy)]
    )
    with pytest.raises(CardRemoved):
        pos.purchase(present(card, tear_after=k)[1], 1200, MONDAY_10AM)
    decision = pos.purchase(present(card)[1], 1200, MONDAY_10AM + dt.timedelta(seconds=5))
    assert decision.accepted
    assert card.state.subsidy.balance + card.state.purse.balance == 1_500 - 1_200
    assert len(outcomes(pos, "pos.purchase")) == 1
    if k == 3:
        assert outcomes(pos, "pos.purchase")[0].detail["resolved_at_next_tap"] is True
        assert decision.message == "Paid 12.00"
    _settled_once(pos, card)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_a_collection_then_sale_torn_after_each_apdu_settles_once(tmp_path, sam, k):
    card = subsidy_card(sam, cash=1_000)
    a = Allowance("A", card.state.asn.hex().upper(), 3_000, dt.date(2026, 11, 30), "subsidy_first")
    pos = terminal(tmp_path, sam, allowances=[a])
    with pytest.raises(CardRemoved):
        pos.purchase(present(card, tear_after=k)[1], 1200, MONDAY_10AM)
    for i in range(3):  # the retaps settle what was torn and finish the sale
        try:
            decision = pos.purchase(present(card)[1], 1200, MONDAY_10AM + dt.timedelta(seconds=5 + i))
        except Refusal:
            continue
        if decision.accepted and "Paid" in decision.message:
            break
    assert len(outcomes(pos, "subsidy.load")) == 1 and card.state.subsidy.online_counter == 1
    assert len(outcomes(pos, "pos.purchase")) == 1
    assert card.state.subsidy.balance + card.state.purse.balance == 1_000 + 3_000 - 1_200
    _settled_once(pos, card)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_withdrawal_torn_after_each_apdu_settles_once(tmp_path, sam, k):
    card = subsidy_card(sam, cash=5_000, subsidy=700, expiry=dt.date(2026, 11, 1))
    pos = terminal(tmp_path, sam)
    with pytest.raises(CardRemoved):
        pos.purchase(present(card, tear_after=k)[1], 100, MONDAY_10AM)
    for i in range(2):
        decision = pos.purchase(present(card)[1], 100, MONDAY_10AM + dt.timedelta(seconds=5 + i))
        if "Paid" in decision.message:
            break
    assert card.state.subsidy.balance == 0 and len(outcomes(pos, "subsidy.withdraw")) == 1
    assert outcomes(pos, "subsidy.withdraw")[0].detail["amount"] == 700
    _settled_once(pos, card)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sales=st.lists(st.tuples(st.integers(1, 3_000), st.integers(0, 600)), min_size=1, max_size=8),
    policy=st.sampled_from(["subsidy_first", "cash_first"]),
    subsidy=st.integers(0, 4_000),
    cash=st.integers(0, 4_000),
)
def test_subsidy_plus_cash_is_conserved_and_the_offline_limit_holds(
    tmp_path_factory, sam, sales, policy, subsidy, cash
):
    tmp = tmp_path_factory.mktemp("hyp")
    card = subsidy_card(sam, cash=cash, subsidy=subsidy)
    pos = terminal(tmp, sam, allowances=[Allowance("p", card.state.asn.hex().upper(), 1, dt.date(2026, 1, 1), policy)])
    paid = 0
    for amount, minutes in sales:  # across the day's hours, so across meal periods when configured
        try:
            d = pos.purchase(present(card)[1], amount, MONDAY_10AM + dt.timedelta(minutes=minutes))
        except Refusal:
            continue
        paid += d.detail["amount"]
        s, c = d.detail["subsidy_amount"], d.detail["amount"] - d.detail["subsidy_amount"]
        if policy == "subsidy_first":
            assert c == 0 or d.detail["subsidy_balance_after"] == 0
        else:
            assert s == 0 or d.detail["balance_after"] == 0
    assert card.state.subsidy.balance + card.state.purse.balance == subsidy + cash - paid
    assert paid <= pos.config.pos.offline_limit
    _settled_once(pos, card)
