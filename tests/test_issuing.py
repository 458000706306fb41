"""Issuing (发卡) at the issuing terminal: a washed card personalised by secured commands and registered with the
platform, then granted at a door with its new keys; one phone number, one one-card; tears; refusals."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.station_registry import InProcessRegistry
from central.store import Platform
from simulator.card import CARD_TYPE_IC_CARD, CardStateFile
from terminal import rekey
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.issuing import IssueRequest, IssuingTerminal
from terminal.reader import CardRemoved
from tests.support import ENTERPRISE, MONDAY_10AM, make_terminal

# keystore and sam are fixtures shared with the washing tests.
from tests.test_card_washing import (  # noqa: F401  (pytest fixtures shared with the washing tests)
    ISSUING_TERMINAL,
    door_decision,
    door_sam,
    keystore,
    new_transport_card,
    reload,
    sam,
    tap_run,
)

EID = "00010001"


@pytest.fixture
def platform(platform_db):
    pf = Platform(platform_db, Ed25519PrivateKey.generate())
    pf.add_enterprise(EID, "Acme")
    pf.add_holder(EID, "E1001", "Zhang Wei", phone="13800000001")
    pf.add_holder(EID, "E1002", "Li Na", phone="13800000002")
    pf.add_holder(EID, "E1003", "Wang Fang", phone="")
    yield pf
    pf.close()


@pytest.fixture
def issuing(sam, platform, tmp_path):
    with EventLog.open(tmp_path / "issuing.db", ISSUING_TERMINAL) as log:
        yield IssuingTerminal(sam, InProcessRegistry(platform), log, ENTERPRISE, bytes.fromhex(ISSUING_TERMINAL))


def request(employee="E1001", groups=(1, 2)):
    return IssueRequest(
        ENTERPRISE,
        employee,
        frozenset(groups),
        dt.date(2026, 1, 1),
        dt.date(2028, 12, 31),
        purse_expiry=dt.date(2027, 12, 31),
        max_balance=100_000,
    )


def washed_card(sam, issuing, path, version=1, **kw):
    card = new_transport_card(sam, path, **kw)
    tap_run(card, lambda t: rekey.rekey_card(t, sam, ENTERPRISE, version, issuing.event_log, MONDAY_10AM, rekey.WASH))
    return card


def test_issue_end_to_end_then_door_grant_with_new_keys(sam, keystore, issuing, platform, tmp_path):
    card = washed_card(sam, issuing, tmp_path / "c.json", version=2)
    asn, apdus = tap_run(card, lambda t: issuing.issue(t, request(), MONDAY_10AM))
    # SELECT, then 4 secured writes (holder, access, purse, status), each GET CHALLENGE + UPDATE BINARY.
    assert apdus == 2 + 4 * 2  # version 1 card: 2 SELECTs (sub-application 6A 82, then version 1)
    state = CardStateFile(tmp_path / "c.json").load()
    assert (state.status, state.key_version) == (1, 2)
    assert state.purse.expiry.hex() == "20271231" and state.purse.max_balance == 100_000
    registered = platform.card(asn)
    assert (registered["status"], registered["employee_no"], registered["rights"]["door_groups"]) == (
        "ACTIVE",
        "E1001",
        [1, 2],
    )
    door, _ = make_terminal(tmp_path, door_sam(keystore, (2,)), "door")
    decision = door_decision(door, reload(card))
    assert decision.accepted and decision.message == "Welcome, Zhang Wei"
    (tmp_path / "old-door").mkdir()
    v1_door, _ = make_terminal(tmp_path / "old-door", door_sam(keystore, (1,)), "door")
    refused = door_decision(v1_door, reload(card))
    assert refused.reason_code == "unknown_key_version" and "Card key version 2 is not accepted here" in refused.message
    assert [e.kind for e in issuing.event_log.events()][-2:] == ["issue.card.intent", "issue.card"]


def test_issue_torn_at_every_apdu_finishes_on_the_next_tap(sam, keystore, issuing, platform, tmp_path):
    door, _ = make_terminal(tmp_path, door_sam(keystore, (1, 2)), "door")
    for k in range(1, 11):  # version 1 card: 2 SELECTs, 4 x (GET CHALLENGE + UPDATE BINARY)
        card = washed_card(sam, issuing, tmp_path / f"c{k}.json")
        with pytest.raises(CardRemoved):
            tap_run(card, lambda t: issuing.issue(t, request(), MONDAY_10AM), tear_after=k)
        card = reload(card)
        between = door_decision(door, card)
        # Not issued until the activation (the last write); after it, a sound issued card.
        assert between.reason_code == ("granted" if k == 10 else "not_issued"), (k, between.message)
        asn, _ = tap_run(card, lambda t: issuing.issue(t, request(), MONDAY_10AM))
        assert platform.card(asn)["status"] == "ACTIVE"
        assert door_decision(door, reload(card)).accepted
        platform.cancel(asn)  # frees the phone number for the next round


def test_one_phone_number_holds_one_one_card(sam, issuing, platform, tmp_path):
    first = washed_card(sam, issuing, tmp_path / "a.json")
    asn, _ = tap_run(first, lambda t: issuing.issue(t, request(), MONDAY_10AM))
    second = washed_card(sam, issuing, tmp_path / "b.json")
    with pytest.raises(Refusal) as exc:
        tap_run(second, lambda t: issuing.issue(t, request(), MONDAY_10AM))
    assert exc.value.reason_code == "phone_has_card"
    assert f"Phone number 13800000001 already holds one-card {asn}" in exc.value.message
    assert CardStateFile(tmp_path / "b.json").load().status == 0  # nothing written
    platform.report_loss(asn)
    with pytest.raises(Refusal):  # a lost card still holds the number: replace it instead
        tap_run(second, lambda t: issuing.issue(t, request(), MONDAY_10AM))


def test_rfid_sim_needs_a_phone_number_ic_card_does_not(sam, issuing, platform, tmp_path):
    card = washed_card(sam, issuing, tmp_path / "a.json")
    with pytest.raises(Refusal) as exc:
        tap_run(card, lambda t: issuing.issue(t, request("E1003"), MONDAY_10AM))
    assert exc.value.reason_code == "no_phone"
    ic = new_transport_card(sam, tmp_path / "ic.json")
    ic.state.card_type = CARD_TYPE_IC_CARD
    ic.store.save(ic.state)
    tap_run(ic, lambda t: rekey.rekey_card(t, sam, ENTERPRISE, 1, issuing.event_log, MONDAY_10AM, rekey.WASH))
    asn, _ = tap_run(ic, lambda t: issuing.issue(t, request("E1003"), MONDAY_10AM))
    assert platform.card(asn)["employee_no"] == "E1003"


def test_transport_card_is_not_issued_before_washing(sam, issuing, tmp_path):
    card = new_transport_card(sam, tmp_path / "t.json")
    with pytest.raises(Refusal) as exc:
        tap_run(card, lambda t: issuing.issue(t, request(), MONDAY_10AM))
    assert exc.value.reason_code == "not_washed"


def test_unregistered_employee_is_refused_before_the_card_changes(sam, issuing, tmp_path):
    card = washed_card(sam, issuing, tmp_path / "a.json")
    with pytest.raises(Refusal) as exc:
        tap_run(card, lambda t: issuing.issue(t, request("E9999"), MONDAY_10AM))
    assert exc.value.reason_code == "platform_refused" and "E9999 is not registered" in exc.value.message
    assert CardStateFile(tmp_path / "a.json").load().holder == bytes(48)


def test_issued_card_is_not_issued_twice(sam, issuing, tmp_path):
    card = washed_card(sam, issuing, tmp_path / "a.json")
    tap_run(card, lambda t: issuing.issue(t, request(), MONDAY_10AM))
    with pytest.raises(Refusal) as exc:
        tap_run(card, lambda t: issuing.issue(t, request(), MONDAY_10AM))
    assert exc.value.reason_code == "already_issued"


def test_the_platform_itself_refuses_a_second_card_for_a_phone(platform):
    """The check the issuing station makes is also made where the card is registered, in one transaction."""
    from central.db import PlatformError

    platform.issue_card(EID, "E1001", "1111111111111111")
    with pytest.raises(PlatformError, match="already holds one-card 1111111111111111"):
        platform.issue_card(EID, "E1001", "2222222222222222")
