"""The one intent -> outcome journal: "I am about to do X to card Y", then what became of it.

Every flow that changes a card (a purchase, a load, an undo, issuing, voiding, restoring a balance, cancelling,
changing keys) first logs an intent holding everything needed to finish it, then exactly one outcome. A flow torn
anywhere (card pulled, garbled answer, terminal killed) leaves its intent open; the card's next tap here finds it
(`Journal.unfinished`) and settles it from what the card proves. This module is the one table of those flows, their
states and the event kind each state is logged as, and the three operations over it: open an intent, record an
outcome, find an unfinished intent.

The journal's records are the terminal's hash-chained event log (terminal/event_log.py, SQLite through common/db.py):
an intent and its outcome are events like any other, so they are chained, uploaded and checked by the platform, and
a journal written by an earlier version (the same kinds, the same detail) is read as it is: a terminal upgraded with
an intent still open settles it at the card's next tap. Every kind here is in common/event_kinds.py (a test checks).

    journal = Journal(event_log)
    intent = journal.open(PURCHASE, now, asn, "Charging ¥1.00", detail)
    ...  # change the card
    journal.record(intent, State.DONE, now, "Payment of ¥1.00", outcome_detail)
    # the next tap, after a kill anywhere above:
    open_one = journal.unfinished(asn, PURCHASE, UNDO, LOAD)
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class State(enum.Enum):
    """Where a flow stands. OPEN is its intent; the others are outcomes (SETTLED is a step some flows log once
    between the intent and DONE: a cancelled card's settled balance, before its purse is erased)."""

    OPEN = "open"
    SETTLED = "settled"
    DONE = "done"
    ABANDONED = "abandoned"


class JournalError(Exception):
    """A flow asked for a state it does not have: a programming error, never a card's or an operator's."""


@dataclass(frozen=True)
class Flow:
    """One journaled flow: the event kind of its intent and of each outcome state it may reach."""

    name: str
    outcomes: Mapping[State, str]
    intent_kind: str = ""  # default: `name.intent`

    def __post_init__(self) -> None:
        if not self.intent_kind:
            object.__setattr__(self, "intent_kind", self.name + ".intent")
        if State.OPEN in self.outcomes or State.DONE not in self.outcomes:
            raise JournalError(f"flow {self.name}: outcomes must include DONE and not OPEN")

    def kind(self, state: State) -> str:
        """The event kind a record of `state` is logged as."""
        if state is State.OPEN:
            return self.intent_kind
        try:
            return self.outcomes[state]
        except KeyError:
            raise JournalError(f"flow {self.name} has no {state.value} outcome") from None

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind of this flow, intent first."""
        return (self.intent_kind, *self.outcomes.values())

    def state_of(self, kind: str) -> State | None:
        if kind == self.intent_kind:
            return State.OPEN
        return next((s for s, k in self.outcomes.items() if k == kind), None)


def _flow(name: str, *states: State, intent_kind: str = "", outcome: str = "") -> Flow:
    """A flow whose outcome kinds follow the house pattern: DONE is `name`, another state is `name.<state>`."""
    outcomes = {State.DONE: outcome or name, **{s: f"{name}.{s.value}" for s in states}}
    return Flow(name, outcomes, intent_kind)


# --- the table ---------------------------------------------------------------------------------------------------
# Money (terminal/purse_flow.py): settled at the card's next tap by GET TRANSACTION PROVE, DONE with the card's TAC
# or ABANDONED (not on the card, or refused by it before it changed).
PURCHASE = _flow("pos.purchase", State.ABANDONED)
UNDO = _flow("pos.undo", State.ABANDONED)
LOAD = _flow("topup.load", State.ABANDONED)
# Issuing (terminal/issuing.py). A replacement is an issue whose outcome is `issue.replace` (same intent kind).
ISSUE = _flow("issue.card")
REPLACE = _flow("issue.replace", intent_kind="issue.card.intent")
VOID = _flow("issue.void")
RESTORE = _flow("issue.restore", State.ABANDONED)
# Replacement of a card with a subsidy purse (docs/card-application.md 8.5): the carried subsidy balance loaded onto
# the new card by a subsidy load with the old expiry, settled as RESTORE is.
RESTORE_SUBSIDY = _flow("issue.restore_subsidy", State.ABANDONED)
CANCEL = _flow("issue.cancel", State.SETTLED)
DELETE = _flow("issue.delete", State.SETTLED)
# Washing and key rotation (terminal/rekey.py): DONE once SELECT announces the target key version.
KEYS = _flow("issue.keys")

# The subsidy purse (docs/card-application.md 5.6): an allowance collected, an expired subsidy withdrawn; settled
# as the money flows are. A two-purse sale is a PURCHASE whose intent carries the split.
SUBSIDY_LOAD = _flow("subsidy.load", State.ABANDONED)
SUBSIDY_WITHDRAW = _flow("subsidy.withdraw", State.ABANDONED)
# The cashier's undo of a two-purse sale: its cash share is a pos.undo, its subsidy share this subsidy load with
# allowance number 0 (card-application.md 5.6), each journaled and settled on its own.
SUBSIDY_REFUND = _flow("subsidy.refund", State.ABANDONED)

FLOWS: tuple[Flow, ...] = (
    PURCHASE,
    UNDO,
    LOAD,
    ISSUE,
    REPLACE,
    VOID,
    RESTORE,
    CANCEL,
    DELETE,
    KEYS,
    SUBSIDY_LOAD,
    SUBSIDY_WITHDRAW,
    RESTORE_SUBSIDY,
    SUBSIDY_REFUND,
)
MONEY_FLOWS: tuple[Flow, ...] = (PURCHASE, UNDO, LOAD, SUBSIDY_LOAD, SUBSIDY_WITHDRAW, SUBSIDY_REFUND)
JOURNAL_KINDS: frozenset[str] = frozenset(k for f in FLOWS for k in f.kinds)


def flow_named(name: str) -> Flow:
    for f in FLOWS:
        if f.name == name:
            return f
    raise JournalError(f"no journaled flow {name!r}")


class EventLog(Protocol):
    """What the journal needs of the terminal's event log (terminal/event_log.EventLog)."""

    def append(
        self, now: dt.datetime, kind: str, *, asn: Any, reason_code: str, message: str, detail: Mapping[str, Any]
    ) -> Any: ...

    def last_event(self, asn: Any, kinds: tuple[str, ...]) -> Any: ...


@dataclass(frozen=True)
class Intent:
    """An intent as logged: its flow, its record's seq (outcomes carry it as `intent_seq`), the card and the detail
    it holds (everything needed to finish or to settle the flow)."""

    flow: Flow
    seq: int
    asn: str
    detail: Mapping[str, Any]

    @property
    def op(self) -> str:
        return self.flow.name


class Journal:
    """Open intents, record outcomes and find the unfinished ones, over one terminal's event log.

    Every write is one durable append (the log's own transaction): when it raises (RecordNotWritten), nothing was
    logged and the caller must not touch the card (for an intent) or must leave the intent open (for an outcome).
    """

    def __init__(self, event_log: EventLog):
        self.event_log = event_log

    def open(
        self,
        flow: Flow,
        now: dt.datetime,
        asn: str,
        message: str,
        detail: Mapping[str, Any],
        reason_code: str = "intent",
    ) -> Intent:
        """Log the intent, before the card changes."""
        event = self.event_log.append(
            now, flow.intent_kind, asn=asn, reason_code=reason_code, message=message, detail=detail
        )
        return Intent(flow, event.seq, asn, detail)

    def record(
        self, intent: Intent, state: State, now: dt.datetime, message: str, detail: Mapping[str, Any], reason_code: str
    ) -> Any:
        """Log an outcome of `intent` (DONE, ABANDONED, or the SETTLED step); returns the logged event."""
        if state is State.OPEN:
            raise JournalError("an outcome cannot be OPEN: use open()")
        return self.record_for(intent.flow, state, now, intent.asn, message, detail, reason_code)

    def record_for(
        self,
        flow: Flow,
        state: State,
        now: dt.datetime,
        asn: str,
        message: str,
        detail: Mapping[str, Any],
        reason_code: str,
    ) -> Any:
        """Log an outcome of `flow` for card `asn` when its intent is not at hand (a re-tap that finishes the flow
        from what the card says). Refuses a state the flow does not have."""
        if state is State.OPEN:
            raise JournalError("an outcome cannot be OPEN: use open()")
        kind = flow.kind(state)
        return self.event_log.append(now, kind, asn=asn, reason_code=reason_code, message=message, detail=detail)

    def unfinished(self, asn: str, *flows: Flow) -> Intent | None:
        """The open intent of card `asn` among `flows`: the newest record of their kinds is an intent (a later
        intent of the same flows supersedes one left open: each flow settles before it opens a new one)."""
        kinds = tuple(dict.fromkeys(k for f in flows for k in f.kinds))
        last = self.event_log.last_event(asn, kinds)
        if last is None:
            return None
        flow = next((f for f in flows if f.intent_kind == last.kind), None)
        return None if flow is None else Intent(flow, last.seq, asn, last.detail)

    def last_intent(self, asn: str, flow: Flow) -> Intent | None:
        """The newest intent of `flow` for card `asn`, finished or not (what an issue flow registers from)."""
        last = self.event_log.last_event(asn, (flow.intent_kind,))
        return None if last is None else Intent(flow, last.seq, asn, last.detail)

    def last(self, asn: str, flow: Flow, *states: State) -> Any:
        """The newest record of card `asn` in one of `states` of `flow` (default: any), or None."""
        kinds = tuple(flow.kind(s) for s in states) if states else flow.kinds
        return self.event_log.last_event(asn, kinds)

    def has(self, asn: str, flow: Flow, state: State) -> bool:
        """Whether card `asn` already has a record of `state` (an outcome logged once per card)."""
        return self.last(asn, flow, state) is not None
