"""Card flows on the card (ONECARD.md 7.3) and the secured commands under them: replacement with and without the old
card (money conserved and logged), cancellation and application deletion (balance settled first, personalisation
erased), replayed / altered MACs refused with nothing changed, and malformed APDUs answered only with documented SWs."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.station_registry import InProcessRegistry
from central.store import Platform
from sam.software import SoftwareSam
from simulator.card import CardStateFile, OneCardApplet
from simulator.inprocess import InProcessReader
from simulator.personalise import Personalisation, personalise
from terminal import card_protocol as cp
from terminal import rekey
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.issuing import IssueRequest, IssuingTerminal
from terminal.reader import CardRemoved
from tests.support import ENTERPRISE, MONDAY_10AM, make_terminal
from tests.test_card_washing import (
    ISSUING_TERMINAL,
    door_decision,
    door_sam,
    issuing_keystore,
    new_transport_card,
    reload,
    tap_run,
)

EID = "00010001"
KEYSTORE = issuing_keystore()
SAM = SoftwareSam(KEYSTORE)


@pytest.fixture
def platform(platform_db):
    pf = Platform(platform_db, Ed25519PrivateKey.generate())
    pf.add_enterprise(EID, "Acme")
    pf.add_holder(EID, "E1001", "Zhang Wei", phone="13800000001")
    yield pf
    pf.close()


@pytest.fixture
def issuing(platform, tmp_path):
    with EventLog.open(tmp_path / "issuing.db", ISSUING_TERMINAL) as log:
        yield IssuingTerminal(SAM, InProcessRegistry(platform), log, ENTERPRISE, bytes.fromhex(ISSUING_TERMINAL))


def old_card(path, platform, balance=3_456) -> OneCardApplet:
    """An issued card with a purse balance, registered on the platform with the same balance."""
    state = personalise(
        SAM,
        Personalisation(
            enterprise_id=ENTERPRISE,
            employee_no="E1001",
            name="Zhang Wei",
            door_groups=frozenset({1, 5}),
            valid_from=dt.date(2026, 1, 1),
            valid_to=dt.date(2028, 12, 31),
            time_profile=1,
            opening_balance=balance,
        ),
    )
    store = CardStateFile(path)
    store.save(state)
    platform.issue_card(EID, "E1001", state.asn.hex(), {"door_groups": [1, 5]}, balance_cents=balance)
    return OneCardApplet(state=state, store=store)


def washed(path, issuing) -> OneCardApplet:
    card = new_transport_card(SAM, path)
    tap_run(card, lambda t: rekey.rekey_card(t, SAM, ENTERPRISE, 1, issuing.event_log, MONDAY_10AM, rekey.WASH))
    return card


def request():
    return IssueRequest(ENTERPRISE, "E1001", frozenset({1}), dt.date(2026, 1, 1), dt.date(2028, 12, 31))


# --- replacement ----------------------------------------------------------------------------------------


def test_replacement_with_the_old_card_backs_up_voids_and_restores(issuing, platform, tmp_path):
    old = old_card(tmp_path / "old.json", platform)
    backup, _ = tap_run(old, lambda t: issuing.backup_and_void(t, MONDAY_10AM))
    assert (backup.balance, backup.source, backup.employee_no) == (3_456, "card", "E1001")
    voided = CardStateFile(tmp_path / "old.json").load()
    assert voided.status == 2
    new = washed(tmp_path / "new.json", issuing)
    new_asn, _ = tap_run(new, lambda t: issuing.replace(t, backup, MONDAY_10AM))
    state = CardStateFile(tmp_path / "new.json").load()
    # Money conserved: the old card's frozen (proven) balance is the new card's balance, loaded by a TAC'd load.
    assert state.purse.balance == voided.purse.balance == 3_456
    assert (state.holder, state.access) == (voided.holder, voided.access)
    kinds = [e.kind for e in issuing.event_log.events()]
    assert "issue.void" in kinds and "issue.restore" in kinds and kinds[-1] == "issue.replace"
    restore = [e for e in issuing.event_log.events() if e.kind == "issue.restore"][0]
    assert restore.detail["amount"] == 3_456 and len(restore.detail["tac"]) == 16
    assert platform.card(new_asn)["balance_cents"] == 3_456
    assert platform.card(voided.asn.hex())["status"] == "REPLACED"
    door, _ = make_terminal(tmp_path, door_sam(KEYSTORE, (1,)), "door")
    assert door_decision(door, reload(new)).accepted
    assert door_decision(door, reload(old)).reason_code == "voided"
    # The voided card cannot spend its frozen balance any more.
    reader = InProcessReader()
    reader.tap(reload(old))
    conn = reader.wait_for_card(0)
    conn.transmit(cp.select_command())
    assert conn.transmit(bytes.fromhex("805001020B01000000010000000000010F"))[-2:] == b"\x69\x85"


def test_replacement_torn_anywhere_on_the_new_card_finishes_once(issuing, platform, tmp_path):
    for k in range(1, 14):
        old = old_card(tmp_path / f"old{k}.json", platform, balance=1_000 + k)
        backup, _ = tap_run(old, lambda t: issuing.backup_and_void(t, MONDAY_10AM))
        new = washed(tmp_path / f"new{k}.json", issuing)
        try:
            tap_run(new, lambda t: issuing.replace(t, backup, MONDAY_10AM), tear_after=k)
        except CardRemoved:
            new = reload(new)
            tap_run(new, lambda t: issuing.replace(t, backup, MONDAY_10AM))
        state = CardStateFile(tmp_path / f"new{k}.json").load()
        assert state.purse.balance == 1_000 + k, k  # loaded exactly once
        platform.cancel(state.asn.hex(), settle=True)  # frees the phone number for the next round


def test_replacement_torn_while_voiding_the_old_card_keeps_the_backup(issuing, platform, tmp_path):
    old = old_card(tmp_path / "old.json", platform)
    with pytest.raises(CardRemoved):
        tap_run(
            old, lambda t: issuing.backup_and_void(t, MONDAY_10AM), tear_after=8
        )  # APPLICATION BLOCK (version 1 card: 2 SELECTs)
    assert CardStateFile(tmp_path / "old.json").load().status == 2  # voided, but the answer was lost
    intent = issuing.event_log.last_event(old.state.asn, ("issue.void.intent",))
    assert intent.detail["holder"] == old.state.holder.hex()
    backup, _ = tap_run(reload(old), lambda t: issuing.backup_and_void(t, MONDAY_10AM))
    assert backup.balance == 3_456


def test_replacement_without_the_old_card_uses_the_platform_records(issuing, platform, tmp_path):
    old = old_card(tmp_path / "old.json", platform, balance=2_000)
    platform.report_loss(old.state.asn.hex())
    backup = issuing.backup_from_platform(old.state.asn.hex(), request())
    assert (backup.balance, backup.source) == (2_000, "platform")
    new = washed(tmp_path / "new.json", issuing)
    new_asn, _ = tap_run(new, lambda t: issuing.replace(t, backup, MONDAY_10AM))
    assert CardStateFile(tmp_path / "new.json").load().purse.balance == 2_000
    assert platform.card(new_asn)["balance_cents"] == 2_000
    assert platform.card(old.state.asn.hex())["status"] == "REPLACED"


# --- cancellation and deletion --------------------------------------------------------------------------


def test_cancellation_refuses_while_a_balance_remains_then_settles(issuing, platform, tmp_path):
    card = old_card(tmp_path / "c.json", platform, balance=800)
    with pytest.raises(Refusal) as exc:
        tap_run(card, lambda t: issuing.cancel(t, MONDAY_10AM))
    assert exc.value.reason_code == "balance_remains" and "8.00" in exc.value.message
    assert CardStateFile(tmp_path / "c.json").load().status == 1  # nothing changed
    settled, _ = tap_run(card, lambda t: issuing.cancel(t, MONDAY_10AM, settle=True))
    assert settled == 800
    state = CardStateFile(tmp_path / "c.json").load()
    assert (state.status, state.holder, state.access, state.purse) == (2, bytes(48), bytes(32), None)
    assert platform.card(state.asn.hex())["status"] == "CANCELLED"
    ev = [e for e in issuing.event_log.events() if e.kind == "issue.cancel.settled"]
    assert ev[0].detail["balance"] == 800


def test_cancellation_of_an_empty_purse_needs_no_settlement(issuing, platform, tmp_path):
    card = old_card(tmp_path / "c.json", platform, balance=0)
    assert tap_run(card, lambda t: issuing.cancel(t, MONDAY_10AM))[0] == 0
    assert platform.card(card.state.asn.hex())["status"] == "CANCELLED"


def test_application_deletion_erases_and_a_torn_one_finishes(issuing, platform, tmp_path):
    card = old_card(tmp_path / "c.json", platform, balance=0)
    with pytest.raises(CardRemoved):
        tap_run(
            card, lambda t: issuing.cancel(t, MONDAY_10AM, deletion=True), tear_after=7
        )  # at ERASE (version 1 card: 2 SELECTs)
    card = reload(card)
    assert card.state.status == 2 and card.state.purse is None  # ERASE stored, its answer lost
    tap_run(card, lambda t: issuing.cancel(t, MONDAY_10AM, deletion=True))
    state = CardStateFile(tmp_path / "c.json").load()
    assert (state.holder, state.purse) == (bytes(48), None)
    kinds = [e.kind for e in issuing.event_log.events()]
    assert kinds[-1] == "issue.delete" and kinds.count("issue.delete.settled") == 1


# --- secured commands ------------------------------------------------------------------------------------


def _selected(card):
    reader = InProcessReader()
    reader.tap(card)
    conn = reader.wait_for_card(0)
    info = cp.parse_select(conn.transmit(cp.select_command()))
    return conn.transmit, info


def _update_holder(transmit, info, data=b"X"):
    channel = rekey.AdminChannel(transmit, SAM, info)
    challenge = channel.challenge()
    mac = SAM.card_mac(channel.purpose, channel.identity, cp.secured_mac_input(challenge, 0xD6, 0x82, 0, data))
    return challenge, cp.secured_command(0xD6, 0x82, 0, data, mac)


def test_a_replayed_secured_command_is_refused_and_changes_nothing(issuing, platform, tmp_path):
    card = old_card(tmp_path / "c.json", platform)
    transmit, info = _selected(card)
    _, apdu = _update_holder(transmit, info, b"Z")
    assert transmit(apdu)[-2:] == b"\x90\x00"
    before = CardStateFile(tmp_path / "c.json").load().holder
    assert transmit(apdu) == b"\x69\x82"  # no fresh challenge: the recorded command is dead
    transmit(cp.get_challenge_command())
    assert transmit(apdu) == b"\x69\x88"  # a fresh challenge: the old MAC does not match it
    assert CardStateFile(tmp_path / "c.json").load().holder == before


@pytest.mark.parametrize("where", ["data", "p2", "mac"])
def test_an_altered_secured_command_is_refused_and_changes_nothing(issuing, platform, tmp_path, where):
    card = old_card(tmp_path / "c.json", platform)
    before = CardStateFile(tmp_path / "c.json").load().to_json()
    transmit, info = _selected(card)
    _, apdu = _update_holder(transmit, info, b"ABCD")
    apdu = bytearray(apdu)
    apdu[{"data": 5, "p2": 3, "mac": -1}[where]] ^= 0x01
    assert transmit(bytes(apdu)) == b"\x69\x88"
    assert CardStateFile(tmp_path / "c.json").load().to_json() == before


def test_put_key_cryptogram_hides_the_key_and_a_wrong_admin_key_is_refused(tmp_path, issuing):
    card = new_transport_card(SAM, tmp_path / "t.json")
    transmit, info = _selected(card)
    channel = rekey.AdminChannel(transmit, SAM, info)
    challenge = channel.challenge()
    cryptogram, kcv = SAM.wrap_card_key(channel.identity, challenge, rekey.KeyPurpose.ACCESS, 1)
    other_sam = SoftwareSam(issuing_keystore())  # same enterprise, other (wrong) master keys
    mac = other_sam.card_mac(channel.purpose, channel.identity, cp.secured_mac_input(challenge, 0xD4, 1, 1, cryptogram))
    assert transmit(cp.secured_command(0xD4, 1, 1, cryptogram, mac, 3)) == b"\x69\x88"
    assert CardStateFile(tmp_path / "t.json").load().staged is None
    from sam import crypto

    for k in KEYSTORE:
        assert crypto.diversify(k.algorithm, k.key.reveal(), info.asn + info.enterprise_id) != cryptogram


DOCUMENTED = {
    b"\x90\x00",
    b"\x67\x00",
    b"\x69\x82",
    b"\x69\x85",
    b"\x69\x86",
    b"\x69\x88",
    b"\x6a\x80",
    b"\x6a\x81",
    b"\x6a\x82",
    b"\x6a\x83",
    b"\x6a\x86",
    b"\x6b\x00",
    b"\x6d\x00",
    b"\x6e\x00",
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ins=st.sampled_from([0x84, 0xB2, 0xD4, 0xD8, 0xD6, 0x1E, 0x0E]),
    cla=st.sampled_from([0x00, 0x84, 0x80]),
    p1=st.integers(0, 255),
    p2=st.integers(0, 255),
    body=st.binary(max_size=40),
    challenge_first=st.booleans(),
)
def test_malformed_apdus_to_the_new_commands_get_only_documented_status_words(ins, cla, p1, p2, body, challenge_first):
    card = OneCardApplet(
        state=personalise(
            SAM,
            Personalisation(
                enterprise_id=ENTERPRISE,
                employee_no="E1",
                name="N",
                door_groups=frozenset({1}),
                valid_from=dt.date(2026, 1, 1),
                valid_to=dt.date(2028, 12, 31),
                opening_balance=10,
            ),
        )
    )
    card.power_on()
    card.transmit(cp.select_command())
    if challenge_first:
        card.transmit(cp.get_challenge_command())
    r = card.transmit(bytes([cla, ins, p1, p2]) + body)
    assert r[-2:] in DOCUMENTED
    assert len(r) == 2 or r[-2:] == b"\x90\x00"
