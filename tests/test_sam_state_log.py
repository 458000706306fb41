"""The software SAM's purse state kept in the event log (terminal/sam_state_log.py): derived at start-up,
never in a file of its own, surviving compaction."""

import pytest

from sam.sam_state import ReversalRefused, SamState, StateFile, encode_state
from sam.software import SoftwareSam
from simulator.inprocess import InProcessReader
from terminal.sam_state_log import LoggedSamState
from tests.support import MONDAY_10AM, make_card, make_keystore
from tests.test_purse import make_purse_terminal


def reopen(tmp_path, keystore, legacy=None):
    pos = make_purse_terminal(tmp_path, None)
    pos.sam = SoftwareSam(keystore, LoggedSamState(pos.event_log, pos.config.terminal.enterprise_id, legacy))
    return pos


def tapped(card):
    reader = InProcessReader()
    reader.tap(card)
    return reader.wait_for_card(0).transmit


def tsns(pos):
    return [e.detail["tsn"] for e in pos.event_log.events() if e.kind == "pos.purchase.intent"]


@pytest.fixture
def keystore():
    return make_keystore()


def test_next_tsn_and_undo_state_come_from_the_log(tmp_path, keystore):
    pos = reopen(tmp_path, keystore)
    card = make_card(SoftwareSam(keystore), opening_balance=10000)
    pos.purchase(tapped(card), 500, MONDAY_10AM)
    pos.purchase(tapped(card), 700, MONDAY_10AM)
    pos.event_log.close()
    pos = reopen(tmp_path, keystore)  # a restart: no state file anywhere
    assert pos.sam._state.last_tsn == 2 and pos.sam._state.last_purchase.debited
    refund = pos.undo_last(tapped(card), MONDAY_10AM)
    assert refund.accepted and card.state.purse.balance == 10000 - 500
    pos.event_log.close()
    pos = reopen(tmp_path, keystore)
    last = pos.sam._state.last_purchase
    assert last.tsn == 2 and last.reversed  # the reversal counter came back from the undo's intent
    with pytest.raises(ReversalRefused) as refused:  # the SAM itself refuses a second undo at another counter
        pos.sam._state.check_reversal(_identity(card), 700, 2, last.reversal_counter + 1)
    assert refused.value.reason == "reversed"
    pos.purchase(tapped(card), 100, MONDAY_10AM)
    assert tsns(pos) == [1, 2, 3]
    assert not list(tmp_path.glob("*.state"))


def _identity(card):
    from sam.interface import Algorithm, CardIdentity

    s = card.state
    return CardIdentity(asn=s.asn, enterprise_id=s.enterprise_id, key_version=1, algorithm=Algorithm.AES128)


def test_compaction_keeps_the_highest_tsn(tmp_path, keystore):
    pos = reopen(tmp_path, keystore)
    card = make_card(SoftwareSam(keystore), opening_balance=10000)
    for _ in range(3):
        pos.purchase(tapped(card), 100, MONDAY_10AM)
    pos.event_log.append(MONDAY_10AM, "door.grant", asn=None, reason_code="ok", message="x", detail={})
    assert pos.event_log.compact(pos.event_log.last_seq() - 1) == 6
    assert pos.event_log.carried_tsn() == 3
    pos.event_log.close()
    pos = reopen(tmp_path, keystore)
    assert pos.sam._state == SamState(3, None)
    pos.purchase(tapped(card), 100, MONDAY_10AM)
    assert tsns(pos) == [4]


def test_an_older_firmwares_state_file_is_a_floor_and_never_written(tmp_path, keystore):
    legacy = tmp_path / "keystore.state"
    legacy.write_bytes(encode_state(SamState(41, None)))
    before = legacy.read_bytes()
    pos = reopen(tmp_path, keystore, StateFile(legacy))
    pos.purchase(tapped(make_card(SoftwareSam(keystore), opening_balance=10000)), 100, MONDAY_10AM)
    assert tsns(pos) == [42] and legacy.read_bytes() == before
