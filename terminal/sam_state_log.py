"""The software SAM's purse state (sam/sam_state.py) kept in the event log, not in a file of its own.

Every change of the state reaches a card only through a record the terminal commits first: the TSN of a
purchase is in its intent (committed before DEBIT carries MAC1 to the card), "debited" is its outcome,
the reversal counter is in the undo's intent (committed before CREDIT carries the reversal MAC2). So the
state is derived from the log at start-up, and a purchase costs the log's two commits and no state file
writes. A TSN the SAM handed out but whose intent never committed never reached a card: using it again is
harmless. Compaction keeps the highest TSN it removes (EventLog.compact, table `carried`).
"""

from __future__ import annotations

from common import journal as jn
from sam.sam_state import LastPurchase, SamState, StateFile

# The journal's kinds (common/journal.py) this state is derived from.
PURCHASE_INTENT, PURCHASE, UNDO_INTENT = jn.PURCHASE.intent_kind, jn.PURCHASE.kind(jn.State.DONE), jn.UNDO.intent_kind
REFUND_INTENT = jn.SUBSIDY_REFUND.intent_kind


class LoggedSamState:
    """A StateStore whose durability is the event log's: save() keeps the state in memory only.

    `legacy` is the `<keystore>.state` file older firmware wrote: read (never written) so that an upgraded
    terminal continues from the highest TSN either of them knows.
    """

    def __init__(self, event_log, enterprise_id: bytes, legacy: StateFile | None = None):
        self.event_log = event_log
        self.enterprise_id = enterprise_id
        self.legacy = legacy

    def load(self) -> SamState:
        state = derive_state(self.event_log, self.enterprise_id)
        if self.legacy is not None:
            old = self.legacy.load()
            if old.last_tsn > state.last_tsn:
                return old
        return state

    def save(self, state: SamState) -> None:
        pass  # durable with the log record that carries it (module docstring)


def derive_state(event_log, enterprise_id: bytes) -> SamState:
    """The SAM state the log implies: last TSN and the last purchase with its debited flag and reversal."""
    floor = event_log.carried_tsn()
    intent = event_log.last_event_of((PURCHASE_INTENT,))
    if intent is None:
        return SamState(floor, None)
    d = intent.detail
    last_tsn = max(floor, d["tsn"])
    outcome = event_log.find_detail(PURCHASE, "intent_seq", intent.seq)
    reversal_counter = subsidy_reversal_counter = None
    if outcome is not None:
        undo = event_log.find_detail(UNDO_INTENT, "purchase_seq", outcome.seq)
        if undo is not None:
            reversal_counter = undo.detail["counter"]
        refund = event_log.find_detail(REFUND_INTENT, "purchase_seq", outcome.seq)
        if refund is not None:
            subsidy_reversal_counter = refund.detail["counter"]
    last = LastPurchase(
        bytes.fromhex(intent.asn),
        enterprise_id,
        d["amount"],
        d["tsn"],
        debited=outcome is not None,
        reversal_counter=reversal_counter,
        subsidy_part=d.get("subsidy_part", 0),
        subsidy_reversal_counter=subsidy_reversal_counter,
    )
    return SamState(last_tsn, last)
