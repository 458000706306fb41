"""The one intent -> outcome journal (common/journal.py): its table, its operations over a real event log file, and a
terminal upgraded with an intent the pre-journal code left open, which the next tap still settles."""

from __future__ import annotations

import datetime as dt

import pytest

from common import journal as jn
from common.event_kinds import KNOWN_KINDS
from terminal.event_log import EventLog
from tests.support import MONDAY_10AM
from tests.test_card_washing import ISSUING_TERMINAL, keystore, reload, sam, tap_run  # noqa: F401  (fixtures)
from tests.test_rekey import issued_card, rotate

ASN_A, ASN_B = "0102030405060708", "1112131415161718"
T0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)


def test_every_journal_kind_is_a_known_event_kind_and_every_intent_kind_is_journaled():
    assert jn.JOURNAL_KINDS <= KNOWN_KINDS
    intents = {k for k in KNOWN_KINDS if k.endswith(".intent")}
    assert intents == {f.intent_kind for f in jn.FLOWS}  # no flow keeps an intent of its own outside the table


def test_the_table_names_each_state_as_the_house_logs_it():
    assert jn.PURCHASE.kinds == ("pos.purchase.intent", "pos.purchase", "pos.purchase.abandoned")
    assert jn.LOAD.kind(jn.State.ABANDONED) == "topup.load.abandoned"
    assert jn.CANCEL.kinds == ("issue.cancel.intent", "issue.cancel", "issue.cancel.settled")
    assert jn.REPLACE.intent_kind == jn.ISSUE.intent_kind == "issue.card.intent"
    assert jn.REPLACE.kind(jn.State.DONE) == "issue.replace"
    assert jn.KEYS.kinds == ("issue.keys.intent", "issue.keys")
    assert jn.RESTORE.state_of("issue.restore.abandoned") is jn.State.ABANDONED
    assert jn.RESTORE.state_of("issue.restore.intent") is jn.State.OPEN
    assert jn.RESTORE.state_of("issue.card") is None
    assert jn.flow_named("topup.load") is jn.LOAD
    with pytest.raises(jn.JournalError):
        jn.flow_named("door.blow-up")


def test_a_state_a_flow_does_not_have_is_refused():
    with pytest.raises(jn.JournalError, match="issue.card has no abandoned"):
        jn.ISSUE.kind(jn.State.ABANDONED)
    with pytest.raises(jn.JournalError, match="issue.keys has no settled"):
        jn.KEYS.kind(jn.State.SETTLED)
    with pytest.raises(jn.JournalError):
        jn.Flow("x.y", {jn.State.ABANDONED: "x.y.abandoned"})  # no DONE outcome


@pytest.fixture
def event_log(tmp_path):
    with EventLog.open(tmp_path / "events.db", ISSUING_TERMINAL) as log:
        yield log


def test_open_record_and_find_unfinished_over_the_event_log(event_log, tmp_path):
    journal = jn.Journal(event_log)
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) is None
    intent = journal.open(jn.LOAD, T0, ASN_A, "Crediting", {"op": "topup.load", "amount": 100, "counter": 7})
    assert isinstance(intent, jn.Intent) and intent.flow is jn.LOAD and intent.op == "topup.load"
    found = journal.unfinished(ASN_A, *jn.MONEY_FLOWS)
    assert found == jn.Intent(jn.LOAD, intent.seq, ASN_A, {"op": "topup.load", "amount": 100, "counter": 7})
    assert journal.unfinished(ASN_B, *jn.MONEY_FLOWS) is None  # another card
    assert journal.unfinished(ASN_A, jn.KEYS, jn.RESTORE) is None  # another flow
    assert event_log.last_event(ASN_A, ("topup.load.intent",)).reason_code == "intent"

    with pytest.raises(jn.JournalError):
        journal.record(intent, jn.State.OPEN, T0, "no", {}, "x")
    with pytest.raises(jn.JournalError):
        journal.record(intent, jn.State.SETTLED, T0, "no", {}, "x")  # a load has no SETTLED step
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) == found  # nothing was written by the refusals

    done = journal.record(intent, jn.State.ABANDONED, T0, "did not happen", {"intent_seq": intent.seq}, "not_on_card")
    assert (done.kind, done.reason_code, done.detail) == ("topup.load.abandoned", "not_on_card", {"intent_seq": 1})
    assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) is None
    assert journal.has(ASN_A, jn.LOAD, jn.State.ABANDONED) and not journal.has(ASN_A, jn.LOAD, jn.State.DONE)
    assert journal.last(ASN_A, jn.LOAD).seq == done.seq
    # A later intent of the same card is the open one again, and it survives the process (a kill, a restart).
    again = journal.open(jn.PURCHASE, T0, ASN_A, "Charging", {"op": "pos.purchase", "amount": 5})
    event_log.close()
    with EventLog.open(tmp_path / "events.db", ISSUING_TERMINAL) as reopened:
        journal = jn.Journal(reopened)
        assert journal.unfinished(ASN_A, *jn.MONEY_FLOWS) == again
        assert journal.last_intent(ASN_A, jn.LOAD).seq == intent.seq  # finished or not
        assert reopened.verify().ok


def test_an_issue_intent_is_found_by_the_flow_that_asks(event_log):
    journal = jn.Journal(event_log)
    opened = journal.open(jn.REPLACE, T0, ASN_A, "Replacing", {"employee_no": "E1", "replaces": ASN_B})
    assert journal.unfinished(ASN_A, jn.REPLACE).flow is jn.REPLACE
    assert journal.unfinished(ASN_A, jn.ISSUE).flow is jn.ISSUE  # the same record, asked as an issue
    journal.record_for(jn.REPLACE, jn.State.DONE, T0, ASN_A, "Replaces", {"old_asn": ASN_B}, "replaced")
    assert journal.unfinished(ASN_A, jn.REPLACE) is None
    assert journal.last_intent(ASN_A, jn.ISSUE).seq == opened.seq


def test_upgraded_terminal_settles_a_key_change_the_pre_journal_code_left_open(sam, tmp_path):  # noqa: F811
    """A record exactly as rekey.py wrote it before the journal (plain append, its own kind strings and detail):
    the card's next tap after the upgrade finds it open and records its outcome once."""
    card = issued_card(sam, tmp_path / "c.json")
    with EventLog.open(tmp_path / "old.db", ISSUING_TERMINAL) as old_log:
        old = old_log.append(
            MONDAY_10AM,
            "issue.keys.intent",
            asn=card.state.asn,
            reason_code="intent",
            message="Changing keys 1 -> 2",
            detail={
                "op": "rotate",
                "from_version": 1,
                "to_version": 2,
                "key_version": 1,
                "algorithm": card.state.algorithm.name,
                "purposes": ["access", "update", "purchase", "load", "tac"],
            },
        )
    # The torn run's COMMIT KEYS reached the card (here: done through another terminal's log).
    with EventLog.open(tmp_path / "other.db", ISSUING_TERMINAL) as other:
        tap_run(card, rotate(sam, other))
    with EventLog.open(tmp_path / "old.db", ISSUING_TERMINAL) as upgraded:
        assert jn.Journal(upgraded).unfinished(card.state.asn.hex().upper(), jn.KEYS).seq == old.seq
        result, _ = tap_run(reload(card), rotate(sam, upgraded))
        assert result.outcome == "already"
        changed = upgraded.last_event(card.state.asn, ("issue.keys",))
        assert changed.detail["intent_seq"] == old.seq and changed.detail["resolved_at_next_tap"] is True
        assert jn.Journal(upgraded).unfinished(card.state.asn.hex().upper(), jn.KEYS) is None
        tap_run(reload(card), rotate(sam, upgraded))  # once: a further tap logs nothing
        assert [e.kind for e in upgraded.events()] == ["issue.keys.intent", "issue.keys"]
        assert upgraded.verify().ok
