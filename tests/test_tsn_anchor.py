"""Whatever the SAM, no sale may reuse a transaction sequence number (TSN) the terminal's log already holds: each TSN
is committed with its purchase intent before it reaches a card, so a SAM behind the log (a PSAM swapped for a fresh
one with the same keys, a state restored from an old backup) is refused before anything is charged
(docs/key-handling.md 8). The software SAM's own state is derived from the log (terminal/sam_state_log.py)."""

import pytest

from sam.software import SoftwareSam
from terminal.event_log import EventLog
from terminal.keypad import Charge
from tests.support import make_card, make_keystore, make_terminal
from tests.test_disk_full import Clock, tap


def purchase_tsns(log: EventLog) -> list[int]:
    return [e.detail["tsn"] for e in log.events() if e.kind == "pos.purchase.intent"]


@pytest.mark.parametrize("compacted", [False, True])
def test_a_sam_behind_the_log_cannot_sell(tmp_path, compacted):
    keystore = make_keystore()
    clock = Clock()
    pos, _ = make_terminal(tmp_path, SoftwareSam(keystore), "pos")
    card = make_card(pos.sam, opening_balance=10000)
    for _ in range(3):
        assert tap(pos, card, Charge(100), clock()).accepted
    if compacted:  # every intent compacted away: the floor is what compaction carried
        pos.event_log.append(clock(), "door.grant", asn=None, reason_code="ok", message="x", detail={})
        pos.event_log.compact(pos.event_log.last_seq())
    assert pos.event_log.last_tsn() == 3
    pos.event_log.close()

    # Restarted with a SAM that starts again at TSN 1 (its own memory, like a fresh PSAM with the same keys).
    pos, _ = make_terminal(tmp_path, SoftwareSam(keystore), "pos")
    before = card.state.purse.balance
    refused = tap(pos, card, Charge(100), clock())
    assert (refused.accepted, refused.reason_code) == (False, "sam_sequence")
    assert refused.message == (
        "Terminal fault: SAM transaction numbers behind the log, nothing charged. Call maintenance"
    )
    assert card.state.purse.balance == before
    assert purchase_tsns(pos.event_log) == ([] if compacted else [1, 2, 3])  # no intent with a reused TSN
    [deny] = [e for e in pos.event_log.events() if e.reason_code == "sam_sequence"]
    assert deny.detail["last_logged_tsn"] == 3
