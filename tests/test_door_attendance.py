"""The door and the attendance clock, end to end over the in-process reader with real SAM, card and SQLite."""

import datetime as dt

import pytest

from sam.interface import Algorithm
from simulator.card import STATUS_TRANSPORT, STATUS_VOIDED, ForeignCard
from simulator.inprocess import InProcessReader
from tests.support import MONDAY_10AM, OTHER_ENTERPRISE, make_card, make_card_v2, make_sam, make_terminal


@pytest.fixture
def sam():
    return make_sam()


@pytest.fixture
def door(tmp_path, sam):
    return make_terminal(tmp_path, sam, "door")


def tap(terminal, card, now=MONDAY_10AM, tear_after=None):
    reader = InProcessReader()
    reader.tap(card, tear_after=tear_after)
    conn = reader.wait_for_card(0)
    decision = terminal.handle_tap(conn, now)
    return decision, reader.apdu_count


def test_grant_takes_two_apdus_logs_then_opens(door, sam):
    term, screen = door
    decision, apdus = tap(term, make_card_v2(sam))
    assert decision.accepted and decision.reason_code == "granted"
    assert decision.message == "Welcome, Zhang Wei"
    assert apdus == 2
    [event] = term.event_log.events()
    assert (event.kind, event.reason_code, event.asn) == ("door.grant", "granted", decision.asn)
    assert "relay: door unlocked for 4 s" in screen.getvalue()


def test_sm4_card_is_granted(door, sam):
    decision, _ = tap(door[0], make_card(sam, algorithm=Algorithm.SM4))
    assert decision.accepted


@pytest.mark.parametrize(
    "overrides, reason, words",
    [
        ({"door_groups": frozenset({2})}, "no_rights", "No access rights for this door"),
        ({"valid_to": dt.date(2026, 11, 22)}, "expired", "Card expired on 2026-11-22"),
        ({"valid_from": dt.date(2026, 12, 1)}, "not_yet_valid", "Card not valid until 2026-12-01"),
        ({"time_profile": 9}, "unknown_time_profile", "Time profile 9 is not set up"),
    ],
)
def test_refusals_carry_reasons(door, sam, overrides, reason, words):
    term, screen = door
    decision, _ = tap(term, make_card(sam, **overrides))
    assert not decision.accepted and decision.reason_code == reason
    assert words in decision.message
    assert "relay" not in screen.getvalue()
    assert term.event_log.events()[-1].reason_code == reason


def test_time_window(door, sam):
    term, _ = door
    card = make_card(sam, time_profile=1)
    assert tap(term, card, MONDAY_10AM)[0].accepted
    evening = MONDAY_10AM + dt.timedelta(hours=11)  # 21:00 local
    decision, _ = tap(term, card, evening)
    assert decision.reason_code == "outside_hours"
    assert decision.message == "Outside your permitted hours (Mon 07:00-20:00)"
    wednesday = MONDAY_10AM + dt.timedelta(days=2)
    assert tap(term, card, wednesday)[0].message == "Outside your permitted hours (none on Wed)"


def test_blacklisted_card(door, sam):
    term, _ = door
    card = make_card(sam)
    term.blacklist.apply_snapshot(3, [(card.state.asn, "lost")])
    decision, _ = tap(term, card)
    assert decision.reason_code == "blacklisted"
    assert decision.message.startswith("Card reported lost")


def test_version_1_card_is_granted_with_one_more_select(door, sam):
    """During migration a version 1 card still opens the door: SELECT of the sub-application (6A 82 from a version 1
    card), SELECT of the version 1 application, ACCESS READ."""
    decision, apdus = tap(door[0], make_card(sam))
    assert decision.accepted and decision.message == "Welcome, Zhang Wei"
    assert apdus == 3


def test_other_enterprise_card(door):
    other = make_sam(OTHER_ENTERPRISE)
    decision, apdus = tap(door[0], make_card_v2(other, enterprise_id=OTHER_ENTERPRISE))
    assert decision.reason_code == "other_enterprise"
    assert decision.message == "This card has no application for this site"
    assert apdus == 1
    decision, apdus = tap(door[0], make_card(other, enterprise_id=OTHER_ENTERPRISE))  # version 1: 6A 82, then SELECT
    assert decision.reason_code == "other_enterprise"
    assert decision.message == "This card has no application for this site"
    assert apdus == 2


def test_phone_without_rfid_sim(door):
    term, _ = door
    decision, _ = tap(term, ForeignCard())
    assert decision.reason_code == "not_supported"
    assert decision.message.startswith("Card not supported")
    assert term.event_log.events()[-1].asn is None


def test_clone_with_wrong_key_fails_authentication(door):
    forger = make_sam()  # same enterprise ID, but not the enterprise's keys
    decision, _ = tap(door[0], make_card(forger))
    assert decision.reason_code == "auth_failed"


def test_replayed_answer_fails_authentication(door, sam):
    term, _ = door
    genuine = make_card(sam)
    recorded = {}

    class Recorder:
        atr = genuine.atr
        power_on, power_off = genuine.power_on, genuine.power_off

        def transmit(self, apdu):
            recorded[apdu[:2]] = genuine.transmit(apdu)
            return recorded[apdu[:2]]

    assert tap(term, Recorder())[0].accepted

    class Replayer(Recorder):
        def transmit(self, apdu):
            return recorded[apdu[:2]]

    assert tap(term, Replayer())[0].reason_code == "auth_failed"


def test_unknown_key_version(door, sam):
    other_version = make_sam(versions=(7,))
    decision, _ = tap(door[0], make_card(other_version, key_version=7, purse_key_version=7))
    assert decision.reason_code == "unknown_key_version"
    assert "key version 7" in decision.message


@pytest.mark.parametrize("status, reason", [(STATUS_TRANSPORT, "not_issued"), (STATUS_VOIDED, "voided")])
def test_card_status(door, sam, status, reason):
    assert tap(door[0], make_card(sam, status=status))[0].reason_code == reason


@pytest.mark.parametrize("k", [1, 2])
def test_tear_keeps_door_shut_and_logs_nothing(door, sam, k):
    term, screen = door
    decision, _ = tap(term, make_card(sam), tear_after=k)
    assert not decision.accepted and decision.reason_code == "removed"
    assert "tap again" in decision.message
    assert term.event_log.events() == []
    assert "relay" not in screen.getvalue()


def test_log_failure_keeps_door_shut(door, sam):
    term, screen = door
    term.event_log.close()
    decision, _ = tap(term, make_card(sam))
    assert not decision.accepted and decision.reason_code == "log_unavailable"
    assert "relay" not in screen.getvalue()


def test_counter_persists_and_advances(tmp_path, door, sam):
    term, _ = door
    card = make_card(sam, path=tmp_path / "card.json")
    tap(term, card)
    tap(term, card)
    from simulator.card import CardStateFile

    assert CardStateFile(tmp_path / "card.json").load().access_counter == 2
    assert [e.detail["counter"] for e in term.event_log.events()] == [1, 2]


def test_attendance_in_repeat_out_next_day(tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "attendance")
    card = make_card(sam)
    t0 = MONDAY_10AM - dt.timedelta(hours=1)  # 09:00 local
    first = tap(term, card, t0)[0]
    assert (first.kind, first.message) == ("attendance.in", "Zhang Wei: clocked in at 09:00")
    again = tap(term, card, t0 + dt.timedelta(seconds=30))[0]
    assert again.kind == "attendance.repeat" and again.message == "Zhang Wei: already clocked in at 09:00"
    out = tap(term, card, t0 + dt.timedelta(hours=9))[0]
    assert out.kind == "attendance.out"
    tomorrow = tap(term, card, t0 + dt.timedelta(days=1))[0]
    assert tomorrow.kind == "attendance.in"
    assert [e.kind for e in term.event_log.events()] == ["attendance.in", "attendance.out", "attendance.in"]
    assert term.event_log.verify().ok


def test_attendance_refuses_blacklisted(tmp_path, sam):
    term, _ = make_terminal(tmp_path, sam, "attendance")
    card = make_card(sam)
    term.blacklist.apply_snapshot(1, [(card.state.asn, "cancelled")])
    decision = tap(term, card)[0]
    assert (decision.kind, decision.reason_code) == ("attendance.deny", "blacklisted")
