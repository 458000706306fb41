"""common/journal.py: its table pinned kind by kind, every refusal with its words, and the operations as a
conversation over a real event log file (terminal/event_log.py on SQLite): which intent is unfinished, which flow
finds it, what each record carries. Issue 15 (the journal is a sans-I/O core: tests/layering.py SANS_IO_CORES)."""

from __future__ import annotations

import datetime as dt

import pytest

from common import journal as jn
from terminal.event_log import EventLog

TERMINAL = "000000000900"
ASN_A, ASN_B = "0102030405060708", "1112131415161718"
T0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=1)


def refused(message, call, *args, **kwargs):
    with pytest.raises(jn.JournalError) as caught:
        call(*args, **kwargs)
    assert str(caught.value) == message


@pytest.fixture
def log(tmp_path):
    with EventLog.open(tmp_path / "events.db", TERMINAL) as event_log:
        yield event_log


# --- the table -------------------------------------------------------------------------------------------------------


def test_states_are_the_words_the_log_uses():
    assert [(s.name, s.value) for s in jn.State] == [
        ("OPEN", "open"),
        ("SETTLED", "settled"),
        ("DONE", "done"),
        ("ABANDONED", "abandoned"),
    ]


TABLE = {
    "pos.purchase": ("pos.purchase.intent", {"done": "pos.purchase", "abandoned": "pos.purchase.abandoned"}),
    "pos.undo": ("pos.undo.intent", {"done": "pos.undo", "abandoned": "pos.undo.abandoned"}),
    "topup.load": ("topup.load.intent", {"done": "topup.load", "abandoned": "topup.load.abandoned"}),
    "issue.card": ("issue.card.intent", {"done": "issue.card"}),
    "issue.replace": ("issue.card.intent", {"done": "issue.replace"}),
    "issue.void": ("issue.void.intent", {"done": "issue.void"}),
    "issue.restore": ("issue.restore.intent", {"done": "issue.restore", "abandoned": "issue.restore.abandoned"}),
    "issue.cancel": ("issue.cancel.intent", {"done": "issue.cancel", "settled": "issue.cancel.settled"}),
    "issue.delete": ("issue.delete.intent", {"done": "issue.delete", "settled": "issue.delete.settled"}),
    "issue.keys": ("issue.keys.intent", {"done": "issue.keys"}),
    "subsidy.load": ("subsidy.load.intent", {"done": "subsidy.load", "abandoned": "subsidy.load.abandoned"}),
    "subsidy.withdraw": (
        "subsidy.withdraw.intent",
        {"done": "subsidy.withdraw", "abandoned": "subsidy.withdraw.abandoned"},
    ),
    "issue.restore_subsidy": (
        "issue.restore_subsidy.intent",
        {"done": "issue.restore_subsidy", "abandoned": "issue.restore_subsidy.abandoned"},
    ),
    "subsidy.refund": ("subsidy.refund.intent", {"done": "subsidy.refund", "abandoned": "subsidy.refund.abandoned"}),
}


def test_the_table_flow_by_flow():
    assert [f.name for f in jn.FLOWS] == list(TABLE)
    assert jn.FLOWS == (
        jn.PURCHASE,
        jn.UNDO,
        jn.LOAD,
        jn.ISSUE,
        jn.REPLACE,
        jn.VOID,
        jn.RESTORE,
        jn.CANCEL,
        jn.DELETE,
        jn.KEYS,
        jn.SUBSIDY_LOAD,
        jn.SUBSIDY_WITHDRAW,
        jn.RESTORE_SUBSIDY,
        jn.SUBSIDY_REFUND,
    )
    assert jn.MONEY_FLOWS == (
        jn.PURCHASE,
        jn.UNDO,
        jn.LOAD,
        jn.SUBSIDY_LOAD,
        jn.SUBSIDY_WITHDRAW,
        jn.SUBSIDY_REFUND,
    )
    for flow in jn.FLOWS:
        intent_kind, outcomes = TABLE[flow.name]
        assert flow.intent_kind == intent_kind
        assert {s.value: k for s, k in flow.outcomes.items()} == outcomes
        assert list(flow.outcomes)[0] is jn.State.DONE  # DONE first: `kinds` lists intent, DONE, then the others
        assert flow.kinds == (intent_kind, *outcomes.values())
        assert flow.kind(jn.State.OPEN) == intent_kind
        assert flow.state_of(intent_kind) is jn.State.OPEN
        for state in jn.State:
            if state is not jn.State.OPEN and state.value in outcomes:
                assert flow.kind(state) == outcomes[state.value]
                assert flow.state_of(outcomes[state.value]) is state
            elif state is not jn.State.OPEN:
                refused(f"flow {flow.name} has no {state.value} outcome", flow.kind, state)
        assert flow.state_of("door.grant") is None
        assert jn.flow_named(flow.name) is flow
    kinds = {intent for intent, _ in TABLE.values()} | {k for _, o in TABLE.values() for k in o.values()}
    assert jn.JOURNAL_KINDS == frozenset(kinds)
    assert len(jn.JOURNAL_KINDS) == 37


def test_flows_are_built_the_house_way():
    f = jn._flow("a.b", jn.State.ABANDONED, jn.State.SETTLED)
    assert f == jn.Flow(
        "a.b", {jn.State.DONE: "a.b", jn.State.ABANDONED: "a.b.abandoned", jn.State.SETTLED: "a.b.settled"}
    )
    assert f.intent_kind == "a.b.intent"
    assert jn._flow("a.b", outcome="c.d").outcomes == {jn.State.DONE: "c.d"}
    assert jn._flow("a.b", intent_kind="x.intent").intent_kind == "x.intent"
    assert jn.Flow("a.b", {jn.State.DONE: "a.b"}, "own.intent").intent_kind == "own.intent"
    assert jn.Flow("a.b", {jn.State.DONE: "a.b"}).intent_kind == "a.b.intent"


def test_a_flow_without_done_or_with_open_is_refused():
    message = "flow x.y: outcomes must include DONE and not OPEN"
    refused(message, jn.Flow, "x.y", {jn.State.ABANDONED: "x.y.abandoned"})
    refused(message, jn.Flow, "x.y", {})
    refused(message, jn.Flow, "x.y", {jn.State.DONE: "x.y", jn.State.OPEN: "x.y.open"})
    refused(message, jn.Flow, "x.y", {jn.State.OPEN: "x.y.open"})


def test_an_unknown_flow_name_is_refused():
    refused("no journaled flow 'door.blow-up'", jn.flow_named, "door.blow-up")
    refused("no journaled flow 'pos.purchase.intent'", jn.flow_named, "pos.purchase.intent")


# --- the operations, as conversations over a real log ---------------------------------------------------------------


def test_open_logs_the_intent_and_returns_it(log):
    journal = jn.Journal(log)
    assert journal.event_log is log
    intent = journal.open(jn.LOAD, T0, ASN_A, "Crediting ¥1.00", {"amount": 100})
    assert intent == jn.Intent(jn.LOAD, 1, ASN_A, {"amount": 100})
    assert intent.op == "topup.load"
    event = log.last_event(ASN_A, ("topup.load.intent",))
    assert (event.seq, event.time, event.kind, event.asn, event.reason_code, event.message, event.detail) == (
        1,
        T0,
        "topup.load.intent",
        ASN_A,
        "intent",
        "Crediting ¥1.00",
        {"amount": 100},
    )
    second = journal.open(jn.VOID, T1, ASN_B, "Voiding", {"why": "lost"}, reason_code="operator")
    assert second == jn.Intent(jn.VOID, 2, ASN_B, {"why": "lost"})
    assert log.last_event(ASN_B, ("issue.void.intent",)).reason_code == "operator"


def test_record_logs_the_outcome_for_the_intents_card(log):
    journal = jn.Journal(log)
    intent = journal.open(jn.CANCEL, T0, ASN_A, "Cancelling", {"balance": 5})
    settled = journal.record(intent, jn.State.SETTLED, T1, "Settled ¥0.05", {"intent_seq": 1}, "settled")
    assert (settled.seq, settled.time, settled.kind, settled.asn, settled.reason_code, settled.message) == (
        2,
        T1,
        "issue.cancel.settled",
        ASN_A,
        "settled",
        "Settled ¥0.05",
    )
    assert settled.detail == {"intent_seq": 1}
    done = journal.record(intent, jn.State.DONE, T1, "Cancelled", {"intent_seq": 1}, "cancelled")
    assert (done.seq, done.kind, done.asn, done.reason_code) == (3, "issue.cancel", ASN_A, "cancelled")
    assert log.last_event(ASN_A, ("issue.cancel",)) == done


def test_an_outcome_cannot_be_open_and_a_state_must_be_the_flows(log):
    journal = jn.Journal(log)
    intent = journal.open(jn.LOAD, T0, ASN_A, "Crediting", {"amount": 1})
    refused("an outcome cannot be OPEN: use open()", journal.record, intent, jn.State.OPEN, T0, "no", {}, "x")
    refused("an outcome cannot be OPEN: use open()", journal.record_for, jn.LOAD, jn.State.OPEN, T0, ASN_A, "", {}, "x")
    refused("flow topup.load has no settled outcome", journal.record, intent, jn.State.SETTLED, T0, "no", {}, "x")
    refused(
        "flow issue.keys has no abandoned outcome",
        journal.record_for,
        jn.KEYS,
        jn.State.ABANDONED,
        T0,
        ASN_A,
        "",
        {},
        "x",
    )
    assert log.last_event_of(tuple(jn.JOURNAL_KINDS)).seq == 1  # nothing was written by the refusals
    assert journal.unfinished(ASN_A, jn.LOAD) == intent  # nothing was written by the refusals


def test_record_for_finishes_a_flow_without_its_intent(log):
    journal = jn.Journal(log)
    journal.open(jn.REPLACE, T0, ASN_A, "Replacing", {"replaces": ASN_B})
    event = journal.record_for(jn.REPLACE, jn.State.DONE, T1, ASN_A, "Replaces", {"old_asn": ASN_B}, "replaced")
    assert (event.seq, event.time, event.kind, event.asn, event.reason_code, event.message, event.detail) == (
        2,
        T1,
        "issue.replace",
        ASN_A,
        "replaced",
        "Replaces",
        {"old_asn": ASN_B},
    )


def test_unfinished_is_the_newest_record_of_the_flows_when_it_is_an_intent(log):
    journal = jn.Journal(log)
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) is None
    assert journal.unfinished(ASN_A) is None  # no flows asked: nothing can be open
    load = journal.open(jn.LOAD, T0, ASN_A, "Crediting", {"amount": 100, "counter": 7})
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) == jn.Intent(jn.LOAD, 1, ASN_A, {"amount": 100, "counter": 7})
    assert journal.unfinished(ASN_A, jn.LOAD) == load
    assert journal.unfinished(ASN_A, jn.PURCHASE, jn.UNDO) is None  # another flow's intent
    assert journal.unfinished(ASN_B, *jn.MONEY_FLOWS) is None  # another card
    assert journal.unfinished(ASN_A) is None
    # another card's records in between change nothing for this one
    journal.open(jn.PURCHASE, T0, ASN_B, "Charging", {"amount": 3})
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) == load
    # its outcome closes it
    journal.record(load, jn.State.DONE, T1, "Credited", {"intent_seq": 1}, "tac")
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) is None
    assert journal.unfinished(ASN_A, jn.LOAD) is None
    # a later intent is open again; an outcome of ANOTHER flow logged after it does not close it
    purchase = journal.open(jn.PURCHASE, T1, ASN_A, "Charging", {"amount": 5})
    assert purchase.seq == 4
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) == jn.Intent(jn.PURCHASE, 4, ASN_A, {"amount": 5})
    journal.record_for(jn.KEYS, jn.State.DONE, T1, ASN_A, "Keys", {}, "keys")
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) == purchase
    # asked among flows that do not include it, the newest record of those flows decides: the load's outcome
    assert journal.unfinished(ASN_A, jn.LOAD, jn.UNDO) is None


def test_an_intent_shared_by_two_flows_is_found_as_the_flow_that_asks(log):
    journal = jn.Journal(log)
    opened = journal.open(jn.REPLACE, T0, ASN_A, "Replacing", {"replaces": ASN_B})
    assert opened.seq == 1
    assert journal.unfinished(ASN_A, jn.REPLACE).flow is jn.REPLACE
    assert journal.unfinished(ASN_A, jn.ISSUE) == jn.Intent(jn.ISSUE, 1, ASN_A, {"replaces": ASN_B})
    assert journal.unfinished(ASN_A, jn.ISSUE, jn.REPLACE).flow is jn.ISSUE  # the first flow asked that matches
    assert journal.unfinished(ASN_A, jn.REPLACE, jn.ISSUE).flow is jn.REPLACE
    assert journal.unfinished(ASN_A, jn.KEYS, jn.REPLACE).flow is jn.REPLACE
    # ISSUE's DONE kind closes it for both
    journal.record_for(jn.ISSUE, jn.State.DONE, T1, ASN_A, "Issued", {}, "issued")
    assert journal.unfinished(ASN_A, jn.REPLACE, jn.ISSUE) is None


def test_last_intent_is_found_finished_or_not(log):
    journal = jn.Journal(log)
    assert journal.last_intent(ASN_A, jn.ISSUE) is None
    first = journal.open(jn.ISSUE, T0, ASN_A, "Issuing", {"employee_no": "E1"})
    journal.record(first, jn.State.DONE, T1, "Issued", {"intent_seq": 1}, "issued")
    assert journal.last_intent(ASN_A, jn.ISSUE) == jn.Intent(jn.ISSUE, 1, ASN_A, {"employee_no": "E1"})
    assert journal.last_intent(ASN_A, jn.REPLACE) == jn.Intent(jn.REPLACE, 1, ASN_A, {"employee_no": "E1"})
    assert journal.last_intent(ASN_B, jn.ISSUE) is None
    journal.open(jn.ISSUE, T1, ASN_A, "Issuing again", {"employee_no": "E2"})
    assert journal.last_intent(ASN_A, jn.ISSUE).seq == 3
    assert journal.last_intent(ASN_A, jn.ISSUE).detail == {"employee_no": "E2"}


def test_last_and_has_look_at_the_states_asked(log):
    journal = jn.Journal(log)
    assert journal.last(ASN_A, jn.RESTORE) is None
    assert not journal.has(ASN_A, jn.RESTORE, jn.State.OPEN)
    intent = journal.open(jn.RESTORE, T0, ASN_A, "Restoring", {"balance": 10})
    assert journal.last(ASN_A, jn.RESTORE).seq == 1  # any state: the intent
    assert journal.last(ASN_A, jn.RESTORE, jn.State.OPEN).kind == "issue.restore.intent"
    assert journal.last(ASN_A, jn.RESTORE, jn.State.DONE) is None
    assert journal.has(ASN_A, jn.RESTORE, jn.State.OPEN)
    assert not journal.has(ASN_A, jn.RESTORE, jn.State.ABANDONED)
    assert not journal.has(ASN_A, jn.RESTORE, jn.State.DONE)
    journal.record(intent, jn.State.ABANDONED, T1, "Not restored", {"intent_seq": 1}, "refused")
    assert journal.last(ASN_A, jn.RESTORE).kind == "issue.restore.abandoned"
    assert journal.last(ASN_A, jn.RESTORE, jn.State.OPEN).seq == 1
    assert journal.last(ASN_A, jn.RESTORE, jn.State.DONE, jn.State.ABANDONED).seq == 2
    assert journal.has(ASN_A, jn.RESTORE, jn.State.ABANDONED)
    assert not journal.has(ASN_A, jn.RESTORE, jn.State.DONE)
    assert not journal.has(ASN_B, jn.RESTORE, jn.State.ABANDONED)
    refused("flow issue.restore has no settled outcome", journal.last, ASN_A, jn.RESTORE, jn.State.SETTLED)
    refused("flow issue.restore has no settled outcome", journal.has, ASN_A, jn.RESTORE, jn.State.SETTLED)
