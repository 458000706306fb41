"""The e-purse at a canteen POS and a top-up terminal: exact money, limits, undo, and tears at every APDU."""

import datetime as dt

import pytest

from common.config import load_config
from sam.interface import Algorithm, CardIdentity
from simulator.card import ForeignCard
from simulator.inprocess import InProcessReader
from terminal.blacklist import Blacklist
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.purse_flow import MONEY_KINDS, Incomplete, PurseTerminal
from terminal.reader import CardRemoved
from tests.support import MONDAY_10AM, OTHER_ENTERPRISE, TERMINAL_TOML, make_card, make_card_v2, make_sam

POS_TOML = TERMINAL_TOML


def make_purse_terminal(tmp, sam, kind="pos"):
    cfg = tmp / f"{kind}.toml"
    cfg.write_text(POS_TOML.format(kind=kind, db=tmp / f"{kind}.db", bl=tmp / f"{kind}-bl.db"))
    config = load_config(cfg)
    return PurseTerminal(
        config,
        sam,
        EventLog.open(config.terminal.database, config.terminal.id),
        Blacklist.open(config.terminal.blacklist),
    )


@pytest.fixture
def sam():
    return make_sam()


@pytest.fixture
def pos(tmp_path, sam):
    return make_purse_terminal(tmp_path, sam)


def present(card, tear_after=None):
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    return reader, reader.wait_for_card(0).transmit


def money_events(pos):
    return [(e.kind, e.detail.get("amount")) for e in pos.event_log.events() if e.kind in MONEY_KINDS]


def test_purchase_three_apdus_exact_balance_and_tac(pos, sam):
    card = make_card_v2(sam, opening_balance=10000)
    reader, transmit = present(card)
    decision = pos.purchase(transmit, 1200, MONDAY_10AM)
    assert decision.accepted and decision.message == "Paid 12.00"
    assert reader.apdu_count == 3
    assert card.state.purse.balance == 8800
    assert money_events(pos) == [("pos.purchase.intent", 1200), ("pos.purchase", 1200)]
    done = pos.event_log.events()[-1].detail
    record = card.state.purse.records[-1]
    assert done["tac"] == record["tac"] and done["counter"] == record["counter"] == 0
    assert done["balance_after"] == 8800 and done["tsn"] == record["tsn"]


def test_tac_is_checkable_only_with_the_tac_key(pos, sam):
    """The TAC the terminal logged verifies under the platform's TAC master key."""
    card = make_card_v2(sam, opening_balance=5000)
    pos.purchase(present(card)[1], 300, MONDAY_10AM)
    d = pos.event_log.events()[-1].detail
    sam.verify_tac(
        CardIdentity(card.state.asn, card.state.enterprise_id, 1, Algorithm.AES128),
        amount=300,
        tx_type=0x06,
        terminal_id=pos.config.terminal.id_bytes,
        tsn=d["tsn"],
        date=bytes.fromhex(d["date"]),
        time=bytes.fromhex(d["time"]),
        counter=0,
        balance_after=4700,
        tac=bytes.fromhex(d["tac"]),
    )


def test_insufficient_balance_shows_no_unverified_figure(pos, sam):
    card = make_card_v2(sam, opening_balance=550)
    with pytest.raises(Refusal) as r:
        pos.purchase(present(card)[1], 1200, MONDAY_10AM)
    # GET BALANCE carries no MAC: its figure is neither shown nor put in the refusal's detail.
    assert (r.value.reason_code, r.value.message) == (
        "insufficient_balance",
        "Insufficient balance for 12.00: top up first",
    )
    assert "balance" not in r.value.detail
    assert card.state.purse.balance == 550 and money_events(pos) == []


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda sam: make_card_v2(sam, opening_balance=5000, purse_expiry=dt.date(2026, 11, 1)), "purse_expired"),
        (lambda sam: make_card_v2(make_sam(OTHER_ENTERPRISE), enterprise_id=OTHER_ENTERPRISE), "other_enterprise"),
        (lambda sam: ForeignCard(), "not_supported"),
        (lambda sam: make_card_v2(sam, purse=False), "no_purse"),
    ],
)
def test_refusals(pos, sam, make, reason):
    with pytest.raises(Refusal) as r:
        pos.purchase(present(make(sam))[1], 100, MONDAY_10AM)
    assert r.value.reason_code == reason


def test_blacklisted_card_cannot_pay(pos, sam):
    card = make_card_v2(sam, opening_balance=5000)
    pos.blacklist.apply_snapshot(1, [(card.state.asn, "lost")])
    with pytest.raises(Refusal) as r:
        pos.purchase(present(card)[1], 100, MONDAY_10AM)
    assert r.value.reason_code == "blacklisted" and card.state.purse.balance == 5000


def test_offline_limits(pos, sam):
    card = make_card_v2(sam, opening_balance=50000)
    with pytest.raises(Refusal) as r:
        pos.purchase(present(card)[1], 10001, MONDAY_10AM)
    assert r.value.reason_code == "over_purchase_limit"
    pos.purchase(present(card)[1], 10000, MONDAY_10AM)
    pos.purchase(present(card)[1], 5000, MONDAY_10AM)
    with pytest.raises(Refusal) as r:
        pos.purchase(present(card)[1], 1, MONDAY_10AM)
    assert r.value.reason_code == "offline_limit"
    assert "150.00 of 150.00" in r.value.message
    synced = pos.event_log.last_seq()
    pos.synced_seq = lambda: synced  # the sync agent uploaded everything: the allowance starts again
    pos.purchase(present(card)[1], 1, MONDAY_10AM)


def test_undo_last_purchase_once_same_card_in_window(pos, sam):
    card, other = make_card_v2(sam, opening_balance=5000), make_card_v2(sam, opening_balance=5000)
    pos.purchase(present(card)[1], 700, MONDAY_10AM)
    with pytest.raises(Refusal) as r:
        pos.undo_last(present(other)[1], MONDAY_10AM + dt.timedelta(seconds=30))
    assert r.value.reason_code == "undo_other_card"
    decision = pos.undo_last(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=60))
    assert decision.message == "Refunded 7.00 - balance 50.00"
    assert card.state.purse.balance == 5000
    undo = pos.event_log.events()[-1]
    assert undo.kind == "pos.undo" and undo.detail["purchase_seq"] == pos.event_log.last_event_of(("pos.purchase",)).seq
    with pytest.raises(Refusal) as r:
        pos.undo_last(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=90))
    assert r.value.reason_code == "nothing_to_undo"
    assert card.state.purse.balance == 5000


def test_undo_too_late(pos, sam):
    card = make_card_v2(sam, opening_balance=5000)
    pos.purchase(present(card)[1], 700, MONDAY_10AM)
    with pytest.raises(Refusal) as r:
        pos.undo_last(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=121))
    assert r.value.reason_code == "undo_too_late" and card.state.purse.balance == 4300


def test_top_up(tmp_path, sam):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=1000)
    reader, transmit = present(card)
    decision = topup.top_up(transmit, 5000, MONDAY_10AM)
    assert decision.message == "Loaded 50.00 - balance 60.00" and card.state.purse.balance == 6000
    assert reader.apdu_count == 3
    with pytest.raises(Refusal) as r:
        topup.top_up(present(card)[1], 50001, MONDAY_10AM)
    assert r.value.reason_code == "over_load_limit"


def test_load_over_maximum_balance_is_refused(tmp_path, sam):
    # A version 1 card refuses at INITIALIZE FOR LOAD (6A 80): nothing is even intended.
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card(sam, opening_balance=199_000)
    with pytest.raises(Refusal):
        topup.top_up(present(card)[1], 2000, MONDAY_10AM)
    assert card.state.purse.balance == 199_000 and money_events(topup) == []


def test_load_over_maximum_balance_of_a_v2_card_is_refused_at_credit(tmp_path, sam):
    # A version 2 card checks its maximum only after MAC2 (card-application.md 5.2a), so that 6A 80 bounds no
    # balance for a reader without keys: the intent is logged, then abandoned as the card's refusal.
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=199_000)
    with pytest.raises(Refusal) as r:
        topup.top_up(present(card)[1], 2000, MONDAY_10AM)
    assert r.value.reason_code == "card_error" and "maximum balance" in r.value.message
    assert card.state.purse.balance == 199_000 and card.state.purse.online_counter == 0
    assert [k for k, _ in money_events(topup)] == ["topup.load.intent", "topup.load.abandoned"]


def logged_balance(pos, opening):
    """What the log says the card holds: opening + credits - debits, over completed transactions only."""
    sign = {"pos.purchase": -1, "pos.undo": 1, "topup.load": 1}
    return opening + sum(sign[e.kind] * e.detail["amount"] for e in pos.event_log.events() if e.kind in sign)


def counters_logged_once(pos, card):
    done = [
        (e.kind, e.detail["counter"])
        for e in pos.event_log.events()
        if e.kind in ("pos.purchase", "pos.undo", "topup.load")
    ]
    assert len(done) == len(set(done))
    purchases = sorted(c for k, c in done if k == "pos.purchase")
    loads = sorted(c for k, c in done if k != "pos.purchase")
    assert purchases == list(range(card.state.purse.offline_counter))
    assert loads == list(range(card.state.purse.online_counter))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_purchase_torn_after_each_apdu_then_retapped(pos, sam, k):
    card = make_card_v2(sam, opening_balance=10000)
    with pytest.raises(CardRemoved):
        pos.purchase(present(card, tear_after=k)[1], 1200, MONDAY_10AM)
    decision = pos.purchase(present(card)[1], 1200, MONDAY_10AM + dt.timedelta(seconds=5))
    assert decision.accepted and decision.message == "Paid 12.00"
    assert card.state.purse.balance == 8800
    assert logged_balance(pos, 10000) == 8800
    counters_logged_once(pos, card)
    kinds = [k for k, _ in money_events(pos)]
    if k == 3:  # the debit happened before the tear: the re-tap finds it on the card and does not charge again
        assert kinds == ["pos.purchase.intent", "pos.purchase"]
        assert pos.event_log.events()[-1].detail["resolved_at_next_tap"] is True
    else:
        assert kinds.count("pos.purchase") == 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_up_torn_after_each_apdu_then_retapped(tmp_path, sam, k):
    topup = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=0)
    with pytest.raises(CardRemoved):
        topup.top_up(present(card, tear_after=k)[1], 5000, MONDAY_10AM)
    decision = topup.top_up(present(card)[1], 5000, MONDAY_10AM)
    if k == 3:
        # The credit happened: the re-tap reports it as done, the way a fresh load is, and loads nothing more.
        assert decision.accepted and decision.message == "Loaded 50.00 - balance 50.00"
        assert card.state.purse.balance == 5000
    else:
        assert decision.accepted and card.state.purse.balance == 5000
    assert logged_balance(topup, 0) == card.state.purse.balance
    counters_logged_once(topup, card)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_undo_torn_after_each_apdu_then_retapped(pos, sam, k):
    card = make_card_v2(sam, opening_balance=5000)
    pos.purchase(present(card)[1], 700, MONDAY_10AM)
    with pytest.raises(CardRemoved):
        pos.undo_last(present(card, tear_after=k)[1], MONDAY_10AM + dt.timedelta(seconds=10))
    decision = pos.undo_last(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=20))
    assert decision.accepted and card.state.purse.balance == 5000
    assert logged_balance(pos, 5000) == 5000
    counters_logged_once(pos, card)


def test_garbled_debit_answer_is_settled_by_the_next_tap(pos, sam):
    card = make_card_v2(sam, opening_balance=3000)

    class Garbling:
        atr = card.atr
        power_on, power_off = card.power_on, card.power_off

        def transmit(self, apdu):
            answer = card.transmit(apdu)
            return answer[:5] + b"\x90\x00" if apdu[1] == 0x54 else answer

    with pytest.raises(Incomplete):
        pos.purchase(present(Garbling())[1], 1000, MONDAY_10AM)
    assert card.state.purse.balance == 2000  # the card did debit: only the answer was lost
    decision = pos.purchase(present(card)[1], 1000, MONDAY_10AM)
    assert decision.message == "Paid 10.00"
    assert logged_balance(pos, 3000) == 2000


def test_intent_of_another_terminal_counter_is_abandoned(tmp_path, sam):
    """A torn purchase whose counter another terminal then used: the proof is not ours, so it did not happen."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make_purse_terminal(tmp_path / "a", sam), make_purse_terminal(tmp_path / "b", sam)
    card = make_card_v2(sam, opening_balance=5000)

    class LeavesBeforeDebit:
        atr = card.atr
        power_on, power_off = card.power_on, card.power_off

        def transmit(self, apdu):
            if apdu[1] == 0x54:
                raise CardRemoved("left the field before DEBIT reached it")
            return card.transmit(apdu)

    with pytest.raises(CardRemoved):
        a.purchase(present(LeavesBeforeDebit())[1], 500, MONDAY_10AM)  # intent logged, DEBIT never processed
    b.purchase(present(card)[1], 800, MONDAY_10AM)  # uses the same offline counter 0
    a.sale_intent_seq = None  # the cashier at A gave up on that sale
    decision = a.purchase(present(card)[1], 100, MONDAY_10AM)
    assert decision.accepted
    assert [k for k, _ in money_events(a)] == [
        "pos.purchase.intent",
        "pos.purchase.abandoned",
        "pos.purchase.intent",
        "pos.purchase",
    ]
    assert card.state.purse.balance == 5000 - 800 - 100


def test_undo_lost_before_the_card_got_it_can_be_retried_and_refunds_once(pos, sam):
    """The SAM gave the reversal MAC2, the card never received CREDIT: a second undo is allowed, credited once."""
    card = make_card_v2(sam, opening_balance=5000)
    pos.purchase(present(card)[1], 700, MONDAY_10AM)

    class LeavesBeforeCredit:
        atr = card.atr
        power_on, power_off = card.power_on, card.power_off

        def transmit(self, apdu):
            if apdu[1] == 0x52:
                raise CardRemoved("left before CREDIT reached it")
            return card.transmit(apdu)

    with pytest.raises(CardRemoved):
        pos.undo_last(present(LeavesBeforeCredit())[1], MONDAY_10AM + dt.timedelta(seconds=10))
    decision = pos.undo_last(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=20))
    assert decision.message == "Refunded 7.00 - balance 50.00"
    assert card.state.purse.balance == 5000
    with pytest.raises(Refusal):
        pos.undo_last(present(card)[1], MONDAY_10AM + dt.timedelta(seconds=30))
    assert card.state.purse.balance == 5000 and logged_balance(pos, 5000) == 5000
