"""What a POS or top-up screen says about money: done is said as done, and only balances a MAC proves are shown.

issue 8: a torn top-up re-tapped said "tap again to load", a card's claimed balance was shown and logged, and a
card action the card refused blocked every later tap.
"""

import logging
from dataclasses import replace

import pytest

from terminal.decision import Refusal
from terminal.purse_flow import ACTION_FAILED
from terminal.reader import CardRemoved
from tests.support import MONDAY_10AM, make_card_v2, make_sam
from tests.test_purse import logged_balance, make_purse_terminal, money_events, present


@pytest.fixture
def sam():
    return make_sam()


def lying_init(transmit, claimed: int = 0xFFFFFFFF):
    """A relay that rewrites the balance in INITIALIZE FOR PURCHASE / LOAD answers (the card is genuine)."""

    def relay(apdu: bytes) -> bytes:
        rapdu = transmit(apdu)
        if apdu[:2] == b"\x80\x50" and rapdu[-2:] == b"\x90\x00":
            rapdu = claimed.to_bytes(4, "big") + rapdu[4:]
        return rapdu

    return relay


def test_torn_top_up_retapped_says_loaded_and_the_same_amount_again_loads_nothing(tmp_path, sam):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=1000)
    with pytest.raises(CardRemoved):
        topup.top_up(present(card, tear_after=3)[1], 100, MONDAY_10AM)  # torn after CREDIT reached the card
    assert card.state.purse.balance == 1100
    # The operator types 1.00 again (the terminal restarted, or the request was re-entered): nothing more loads.
    decision = topup.top_up(present(card)[1], 100, MONDAY_10AM)
    assert (decision.accepted, decision.message) == (True, "Loaded 1.00 - balance 11.00")
    assert "again" not in decision.message
    assert card.state.purse.balance == 1100 and logged_balance(topup, 1000) == 1100


def test_torn_top_up_retapped_with_another_amount_reports_the_first_and_loads_nothing(tmp_path, sam):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=0)
    with pytest.raises(CardRemoved):
        topup.top_up(present(card, tear_after=3)[1], 100, MONDAY_10AM)
    decision = topup.top_up(present(card)[1], 2000, MONDAY_10AM)
    assert decision.message == "Loaded 1.00 - balance 1.00 (earlier top-up confirmed; top-up of 20.00 not done)"
    assert card.state.purse.balance == 100


def test_torn_payment_retapped_after_a_restart_says_paid_and_charges_nothing_more(tmp_path, sam):
    pos = make_purse_terminal(tmp_path, sam, "pos")
    card = make_card_v2(sam, opening_balance=5000)
    with pytest.raises(CardRemoved):
        pos.purchase(present(card, tear_after=3)[1], 800, MONDAY_10AM)
    assert card.state.purse.balance == 4200
    restarted = make_purse_terminal(tmp_path, sam, "pos")  # the sale in memory is gone; the log is not
    decision = restarted.purchase(present(card)[1], 800, MONDAY_10AM)
    assert (decision.accepted, decision.message) == (True, "Paid 8.00")
    assert card.state.purse.balance == 4200


def test_a_claimed_purchase_balance_is_neither_shown_nor_logged(tmp_path, sam, caplog):
    pos = make_purse_terminal(tmp_path, sam, "pos")
    card = make_card_v2(sam, opening_balance=5000)
    caplog.set_level(logging.DEBUG)
    decision = pos.purchase(lying_init(present(card)[1]), 200, MONDAY_10AM)
    # MAC2 covers the amount only: the debit is proven, the balance the card announced is not.
    assert (decision.accepted, decision.message) == (True, "Paid 2.00")
    assert "42949670" not in caplog.text and "42949670" not in decision.message
    assert card.state.purse.balance == 4800


def test_a_claimed_load_balance_is_refused_before_anything_moves(tmp_path, sam):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=5000)
    with pytest.raises(Refusal) as r:
        topup.top_up(lying_init(present(card)[1], 0x00FFFFFF), 100, MONDAY_10AM)
    # MAC1 covers the balance before: the SAM refuses to MAC a load for a balance the card did not prove.
    assert r.value.reason_code == "sam_refused"
    assert card.state.purse.balance == 5000 and money_events(topup) == []


def test_balance_tap_never_shows_get_balance(tmp_path, sam):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=5000)
    decision = topup.balance_inquiry(present(card)[1], MONDAY_10AM)
    assert "50.00" not in decision.message and decision.message.startswith("Balance not shown")


class Actions:
    """The inbox's pending card actions (what sync.db holds), as PurseTerminal reads them."""

    def __init__(self, *actions):
        self.actions = list(actions)

    def __call__(self, asn):
        return [a for a in self.actions if a["asn"] == asn]


def ota_terminal(tmp_path, sam, actions):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    topup.pending_actions = actions
    return topup


def test_a_card_action_the_card_refuses_is_reported_failed_and_blocks_nothing(tmp_path, sam):
    card = make_card_v2(sam, opening_balance=0, max_balance=200_000)
    asn = card.state.asn.hex().upper()
    actions = Actions({"action_id": "a-20000", "asn": asn, "action": "topup", "params": {"amount": 2_000_001}})
    topup = ota_terminal(tmp_path, sam, actions)
    topup.config = replace(topup.config, topup=replace(topup.config.topup, max_load=5_000_000))
    decision = topup.top_up(present(card)[1], 5000, MONDAY_10AM)
    # The cash top-up went through in the same tap; the refused action is logged with the card's status word.
    assert decision.accepted and decision.message.startswith("Loaded 50.00 - balance 50.00")
    [failed] = [e for e in topup.event_log.events() if e.kind == ACTION_FAILED]
    assert failed.detail == {"action_id": "a-20000", "reason_code": "card_error", "sw": "6A80"}
    assert failed.asn == asn
    # Marked failed locally: the next tap does not try it again, and cash loads keep working.
    again = topup.top_up(present(card)[1], 1000, MONDAY_10AM)
    assert again.message == "Loaded 10.00 - balance 60.00"
    assert [e.kind for e in topup.event_log.events()].count(ACTION_FAILED) == 1
    assert card.state.purse.balance == 6000


def test_a_card_action_over_the_terminal_limit_is_reported_failed(tmp_path, sam):
    card = make_card_v2(sam, opening_balance=0)
    asn = card.state.asn.hex().upper()
    topup = ota_terminal(
        tmp_path, sam, Actions({"action_id": "big", "asn": asn, "action": "topup", "params": {"amount": 2_000_000}})
    )
    decision = topup.balance_inquiry(present(card)[1], MONDAY_10AM)
    assert "refused" in decision.message
    [failed] = [e for e in topup.event_log.events() if e.kind == ACTION_FAILED]
    assert failed.detail == {"action_id": "big", "reason_code": "over_load_limit", "sw": None}
    assert card.state.purse.balance == 0


def test_a_completed_over_the_air_top_up_is_shown_with_its_balance(tmp_path, sam):
    card = make_card_v2(sam, opening_balance=700)
    asn = card.state.asn.hex().upper()
    topup = ota_terminal(
        tmp_path, sam, Actions({"action_id": "ota1", "asn": asn, "action": "topup", "params": {"amount": 5000}})
    )
    decision = topup.balance_inquiry(present(card)[1], MONDAY_10AM)
    assert decision.message == "Loaded 50.00 - balance 57.00 (over-the-air top-up)"
