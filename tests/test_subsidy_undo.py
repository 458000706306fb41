"""Issue 13: the cashier's undo (撤销) of a two-purse sale (docs/card-application.md 5.6 "Refund of an undone sale's
subsidy part"): the cash share back as a cash load (pos.undo), the subsidy share as a subsidy load with allowance
number 0 (subsidy.refund, keeping the sale's subsidy expiry), both with their proofs, each exactly once across
tears; the receipt shows both; the till's and the platform's Z reports count each undo in its own purse."""

from __future__ import annotations

import datetime as dt

import pytest

from common import bcd
from common import journal as jn
from common import settlement as st
from common import transactions as tx
from terminal.decision import Refusal
from terminal.reader import CardRemoved
from terminal.receipt import receipt_lines
from terminal.subsidy_protocol import Allowance
from tests.support import MONDAY_10AM
from tests.test_purse import present
from tests.test_subsidy_terminal import outcomes, sam, subsidy_card, tac_ok, terminal  # noqa: F401 (fixture)

EXPIRY = dt.date(2026, 12, 31)
LATER = MONDAY_10AM + dt.timedelta(seconds=20)


def policy_till(tmp_path, sam, card, policy):
    """A till whose announced (expired) allowance only sets the sale's policy."""
    return terminal(
        tmp_path,
        sam,
        allowances=[Allowance("p", card.state.asn.hex().upper(), 1, dt.date(2026, 1, 1), policy, False, 1)],
    )


def state(card):
    sub = card.state.subsidy
    return card.state.purse.balance, sub.balance, sub.expiry, sub.last_allowance


# (policy, subsidy, cash, sale, subsidy part, cash part): subsidy part 0, cash part 0, both
CASES = [
    ("cash_first", 500, 1_000, 700, 0, 700),
    ("subsidy_first", 5_000, 1_000, 700, 700, 0),
    ("subsidy_first", 500, 1_000, 1_200, 500, 700),
]


@pytest.mark.parametrize(("policy", "subsidy", "cash", "sale", "s_part", "c_part"), CASES)
def test_an_undo_gives_each_share_back_to_its_own_purse_once(
    tmp_path, sam, policy, subsidy, cash, sale, s_part, c_part
):
    card = subsidy_card(sam, cash=cash, subsidy=subsidy, expiry=EXPIRY)
    card.state.subsidy.last_allowance = 7
    before = state(card)
    pos = policy_till(tmp_path, sam, card, policy)
    paid = pos.purchase(present(card)[1], sale, MONDAY_10AM)
    assert (paid.detail["subsidy_amount"], paid.detail["amount"] - paid.detail["subsidy_amount"]) == (s_part, c_part)
    reader, transmit = present(card)
    undo = pos.undo_last(transmit, LATER)
    assert undo.accepted and undo.kind == "pos.undo"
    # the whole purse is back, the expiry the sale had (an emptied subsidy purse gets it back), the number unmoved
    assert state(card) == before
    assert reader.apdu_count == 1 + 2 * (bool(s_part) + bool(c_part))
    cash_undos, refunds = outcomes_of(pos, "pos.undo"), outcomes_of(pos, "subsidy.refund")
    assert [e.detail["amount"] for e in cash_undos] == ([c_part] if c_part else [])
    assert [e.detail["amount"] for e in refunds] == ([s_part] if s_part else [])
    for e in cash_undos:
        tac_ok(sam, card, pos, tx.LOAD, c_part, e.detail["counter"], e.detail["balance_after"], 0, e.detail,
               e.detail["tac"])  # fmt: skip
    for e in refunds:  # a refund's TAC: type 01, TSN field 0 (allowance number 0), the subsidy online counter
        assert e.detail["expiry"] == bcd.encode_date(EXPIRY).hex() and e.detail["purchase_seq"] == paid_seq(pos)
        tac_ok(sam, card, pos, tx.SUBSIDY_LOAD, s_part, e.detail["counter"], e.detail["balance_after"], 0, e.detail,
               e.detail["tac"])  # fmt: skip
    assert (
        undo.message
        == "Refunded "
        + f"{sale / 100:.2f}"
        + " ("
        + "; ".join(
            ([f"cash {c_part / 100:.2f} - balance {cash / 100:.2f}"] if c_part else [])
            + ([f"subsidy {s_part / 100:.2f} - subsidy balance {subsidy / 100:.2f}"] if s_part else [])
        )
        + ")"
    )
    with pytest.raises(Refusal) as again:
        pos.undo_last(present(card)[1], LATER + dt.timedelta(seconds=1))
    assert again.value.reason_code == "nothing_to_undo" and state(card) == before


def outcomes_of(pos, kind):
    return [e for e in pos.event_log.events() if e.kind == kind]


def paid_seq(pos):
    return outcomes_of(pos, "pos.purchase")[-1].seq


def test_the_receipt_of_a_two_purse_undo_shows_both_shares(tmp_path, sam):
    card = subsidy_card(sam, cash=1_000, subsidy=500, expiry=EXPIRY)
    pos = policy_till(tmp_path, sam, card, "subsidy_first")
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
    undo = pos.undo_last(present(card)[1], LATER)
    text = [line.text for line in receipt_lines(undo, pos.config, LATER.astimezone(pos.config.terminal.timezone))]
    width = pos.config.printer.width
    cash_tac = outcomes_of(pos, "pos.undo")[0].detail["tac"][:8].upper()
    sub_tac = outcomes_of(pos, "subsidy.refund")[0].detail["tac"][:8].upper()
    for label, value in [
        ("REFUND", None),
        ("Amount", "12.00"),
        ("Cash refunded", "7.00"),
        ("Subsidy refunded", "5.00"),
        ("Balance", "10.00"),
        ("Subsidy balance", "5.00"),
        ("TAC", cash_tac),
        ("Subsidy TAC", sub_tac),
    ]:
        if value is None:
            assert label in text
        else:
            assert label + " " * (width - len(label) - len(value)) + value in text, (label, text)


def test_the_z_report_counts_each_share_of_an_undo_in_its_own_purse(tmp_path, sam):
    card = subsidy_card(sam, cash=1_000, subsidy=500, expiry=EXPIRY)
    pos = policy_till(tmp_path, sam, card, "subsidy_first")
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
    pos.undo_last(present(card)[1], LATER)
    records = [st.Record(e.seq, e.time, e.kind, e.detail) for e in pos.event_log.events()]
    totals = st.settle(st.select_day(records, dt.date(2026, 11, 23), pos.config.terminal.timezone))
    assert (totals.sales.amount, totals.undos.amount, totals.undos.count, totals.net) == (1_200, 1_200, 2, 0)
    assert (totals.subsidy_spent.amount, totals.subsidy_undone.amount, totals.subsidy_undone.count) == (500, 500, 1)
    lines = st.format_totals(totals)
    assert "undos             2       12.00" in lines and "subsidy undone    1        5.00" in lines


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_an_undo_torn_at_each_apdu_gives_each_share_back_exactly_once(tmp_path, sam, k):
    """SELECT (1), the cash INITIALIZE FOR LOAD (2) and CREDIT (3), the subsidy INITIALIZE FOR LOAD (4) and CREDIT
    (5): torn after any, the next undo taps settle what the card did and give back what is left, once."""
    card = subsidy_card(sam, cash=1_000, subsidy=500, expiry=EXPIRY)
    before = state(card)
    pos = policy_till(tmp_path, sam, card, "subsidy_first")
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
    with pytest.raises(CardRemoved):
        pos.undo_last(present(card, tear_after=k)[1], LATER)
    for i in range(3):
        try:
            pos.undo_last(present(card)[1], LATER + dt.timedelta(seconds=5 + i))
        except Refusal as r:
            assert r.reason_code == "nothing_to_undo"
    assert state(card) == before
    assert [e.detail["amount"] for e in outcomes_of(pos, "pos.undo")] == [700]
    assert [e.detail["amount"] for e in outcomes_of(pos, "subsidy.refund")] == [500]
    loads = [r for r in card.state.purse.records if r["type"] == tx.LOAD]
    refunds = [r for r in card.state.subsidy.records if r["type"] == tx.SUBSIDY_LOAD]
    assert [r["tac"] for r in loads] == [e.detail["tac"] for e in outcomes_of(pos, "pos.undo")]
    assert [r["tac"] for r in refunds] == [e.detail["tac"] for e in outcomes_of(pos, "subsidy.refund")]
    assert [r["tsn"] for r in refunds] == [0]  # a refund, not an allowance
    assert pos.journal.unfinished(card.state.asn.hex().upper(), *jn.MONEY_FLOWS) is None


def test_an_undo_after_another_sale_or_too_late_is_refused(tmp_path, sam):
    card = subsidy_card(sam, cash=1_000, subsidy=500, expiry=EXPIRY)
    pos = policy_till(tmp_path, sam, card, "subsidy_first")
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
    late = MONDAY_10AM + dt.timedelta(seconds=pos.config.pos.undo_window_seconds + 1)
    with pytest.raises(Refusal) as r:
        pos.undo_last(present(card)[1], late)
    assert r.value.reason_code == "undo_too_late"
    assert outcomes_of(pos, "pos.undo") == outcomes_of(pos, "subsidy.refund") == []


def test_the_platform_accounts_each_share_of_an_undo_in_its_own_purse_and_its_settlement_agrees(
    platform_db, tmp_path, sam
):
    from central.store import Platform
    from tests.test_subsidy_platform import ENT, KEY, TID, upload

    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM, tac_sam=sam)
    try:
        pf.add_enterprise(ENT, "Test Co")
        pf.add_terminal(TID, ENT, kind="pos")
        pf.add_holder(ENT, "E1001", "Zhang Wei")
        card = subsidy_card(sam, cash=1_000, subsidy=500, expiry=EXPIRY)
        asn = card.state.asn.hex().upper()
        pf.issue_card(ENT, "E1001", asn, balance_cents=1_000)
        pos = policy_till(tmp_path, sam, card, "subsidy_first")
        pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
        pos.undo_last(present(card)[1], LATER)
        upload(pf, pos.event_log)
        rows = pf.conn.execute(
            "SELECT kind, amount_cents, tac_status FROM subsidy_transactions ORDER BY seq"
        ).fetchall()
        assert rows == [("purchase", 500, "ok"), ("refund", 500, "ok")]
        report = pf.subsidy_report(ENT)
        assert (report["spent"], report["refunded"]) == (500, 500)
        assert pf.card(asn)["balance_cents"] == card.state.purse.balance == 1_000  # the cash share came back
        till = st.settle(
            st.select_day(
                [st.Record(e.seq, e.time, e.kind, e.detail) for e in pos.event_log.events()],
                dt.date(2026, 11, 23),
                pos.config.terminal.timezone,
            )
        )
        z = pf.settlement(TID, dt.date(2026, 11, 23))
        for line in st.format_totals(till):
            assert line in z
        assert "subsidy undone    1        5.00" in z
    finally:
        pf.close()


# --- the SAM: each share of a two-purse sale is reversed once, for exactly its amount --------------------------


def test_the_sam_reverses_each_share_once_for_exactly_its_amount_and_its_state_survives():
    from sam.interface import Algorithm, CardIdentity
    from sam.sam_state import LastPurchase, ReversalRefused, SamState, state_from_json, state_to_json

    card = CardIdentity(bytes(range(8)), bytes.fromhex("00010001"), 1, Algorithm.AES128)
    state = SamState().after_purchase(card, 1_200, 500)
    assert state.last_purchase == LastPurchase(bytes(range(8)), bytes.fromhex("00010001"), 1_200, 1, subsidy_part=500)
    state = state.after_debit_proven(card, 1_200, 1)
    for amount, subsidy in [(1_200, False), (500, False), (700, True), (1_200, True), (0, True)]:
        with pytest.raises(ReversalRefused):
            state.check_reversal(card, amount, 1, 0, subsidy)
    state.check_reversal(card, 700, 1, 3, False)
    state.check_reversal(card, 500, 1, 0, True)
    state = state.after_reversal(3).after_reversal(0, subsidy=True)
    state.check_reversal(card, 700, 1, 3, False)  # a retry at the same counter (the first MAC2 never applied)
    state.check_reversal(card, 500, 1, 0, True)
    with pytest.raises(ReversalRefused, match="already been undone once"):
        state.check_reversal(card, 700, 1, 4, False)
    with pytest.raises(ReversalRefused, match="already been undone once"):
        state.check_reversal(card, 500, 1, 1, True)
    doc = state_to_json(state)
    assert doc["last_purchase"]["subsidy_part"] == 500 and doc["last_purchase"]["subsidy_reversal_counter"] == 0
    assert state_from_json(doc) == state
    plain = SamState().after_purchase(card, 1_200)  # a one-purse sale's state file is as before
    assert set(state_to_json(plain)["last_purchase"]) == {
        "asn", "enterprise_id", "amount", "tsn", "debited", "reversal_counter"
    }  # fmt: skip
    assert state_from_json(state_to_json(plain)) == plain
    for bad in ({"subsidy_part": 0}, {"subsidy_part": 1_201}, {"subsidy_reversal_counter": 70_000}):
        broken = state_to_json(state)
        broken["last_purchase"].update(bad)
        with pytest.raises(ValueError):
            state_from_json(broken)


def test_the_sam_state_derived_from_the_log_knows_both_reversals(tmp_path, sam):
    from terminal.sam_state_log import derive_state

    card = subsidy_card(sam, cash=1_000, subsidy=500, expiry=EXPIRY)
    pos = policy_till(tmp_path, sam, card, "subsidy_first")
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
    last = derive_state(pos.event_log, card.state.enterprise_id).last_purchase
    assert (last.amount, last.subsidy_part, last.debited, last.reversal_counter, last.subsidy_reversal_counter) == (
        1_200, 500, True, None, None
    )  # fmt: skip
    pos.undo_last(present(card)[1], LATER)
    last = derive_state(pos.event_log, card.state.enterprise_id).last_purchase
    assert (last.reversal_counter, last.subsidy_reversal_counter) == (0, 0)


def test_the_software_sam_refuses_an_allowance_as_a_reversal(sam):
    from sam.interface import Algorithm, CardIdentity, LoadSession
    from sam.sam_state import InvalidPurseInput

    card = subsidy_card(sam)
    session = LoadSession(
        card=CardIdentity(card.state.asn, card.state.enterprise_id, 1, Algorithm.AES128),
        card_random=bytes(4),
        counter=0,
        balance_before=0,
        amount=500,
        terminal_id=bytes(6),
        date=bytes.fromhex("20261123"),
        time=bytes.fromhex("100000"),
        tx_type=tx.SUBSIDY_LOAD,
        expiry=bytes.fromhex("20261231"),
        allowance=3,
    )
    with pytest.raises(InvalidPurseInput, match="allowance number 0"):
        sam.reversal_mac2(session, bytes(8), 1)
