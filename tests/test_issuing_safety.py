"""issue 8: replacement and cancellation check they can finish before the first irreversible step, a card voided by
any path is known to the platform with its frozen balance, and the issuing role is enough for every issuing flow."""

import pytest

from central.station_registry import InProcessRegistry
from sam.interface import KeyPurpose, KeyUsage
from sam.roles import ROLE_KEYS
from sam.software import SoftwareSam
from simulator.card import CardStateFile
from terminal.decision import Refusal
from terminal.event_log import EventLog
from terminal.issuing import IssuingTerminal
from tests.support import ENTERPRISE, MONDAY_10AM
from tests.test_card_flows import KEYSTORE, old_card, platform, request, washed  # noqa: F401  (fixtures)
from tests.test_card_washing import ISSUING_TERMINAL, tap_run

_M, _V, _P = KeyUsage.MAC, KeyUsage.VERIFY, KeyUsage.PERSONALISE
# What the key master card's issuing export held before: UPDATE allowed mac and personalise, not verify.
OLD_ISSUING_ROLE = {**ROLE_KEYS["issuing"], KeyPurpose.UPDATE: frozenset({_M, _P}), KeyPurpose.LOAD: frozenset({_P})}


def station(sam, pf, log) -> IssuingTerminal:
    return IssuingTerminal(sam, InProcessRegistry(pf), log, ENTERPRISE, bytes.fromhex(ISSUING_TERMINAL))


@pytest.fixture
def log(tmp_path):
    with EventLog.open(tmp_path / "station.db", ISSUING_TERMINAL) as log:
        yield log


def role_sam(rules) -> SoftwareSam:
    return SoftwareSam(KEYSTORE.restricted_per_purpose(rules))


@pytest.mark.parametrize("flow", ["replace", "cancel"])
def test_a_sam_that_cannot_finish_changes_nothing(platform, log, tmp_path, flow):  # noqa: F811
    card = old_card(tmp_path / "old.json", platform, balance=19_000)
    st = station(role_sam(OLD_ISSUING_ROLE), platform, log)
    run = (
        (lambda t: st.backup_and_void(t, MONDAY_10AM))
        if flow == "replace"
        else (lambda t: st.cancel(t, MONDAY_10AM, settle=True))
    )
    with pytest.raises(Refusal) as r:
        tap_run(card, run)
    assert r.value.reason_code == "sam_cannot_finish" and "verify" in r.value.message
    assert CardStateFile(tmp_path / "old.json").load().status == 0x01  # still active, money where it was
    assert platform.card(card.state.asn.hex())["status"] == "ACTIVE"
    assert [e.kind for e in log.events()] == []


def test_the_issuing_role_finishes_replacement_and_cancellation(platform, log, tmp_path):  # noqa: F811
    sam = role_sam(ROLE_KEYS["issuing"])
    st = station(sam, platform, log)
    old = old_card(tmp_path / "old.json", platform, balance=9_600)
    backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    old_asn = old.state.asn.hex().upper()
    # Voided on the card: the platform knows it at once, with the balance the card proved it froze.
    assert platform.card(old_asn)["status"] == "VOIDED"
    assert platform.voided(old_asn)["frozen_cents"] == 9_600
    new = washed(tmp_path / "new.json", st)
    new_asn, _ = tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    assert CardStateFile(tmp_path / "new.json").load().purse.balance == 9_600
    assert platform.card(old_asn)["status"] == "REPLACED" and platform.card(new_asn)["balance_cents"] == 9_600
    assert platform.key_versions() == {"00010001": {1: 1}}  # the new card's version, before any log is uploaded
    settled, _ = tap_run(new, lambda t: st.cancel(t, MONDAY_10AM, settle=True))
    assert settled == 9_600 and platform.card(new_asn)["status"] == "CANCELLED"


def test_a_replacement_stopped_after_the_void_leaves_the_card_voided_on_the_platform(platform, log, tmp_path):  # noqa: F811,E501
    st = station(SoftwareSam(KEYSTORE), platform, log)
    old = old_card(tmp_path / "old.json", platform, balance=19_000)
    tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    # The new card never comes: the old one is not listed ACTIVE, and its frozen balance is on record.
    c = platform.card(old.state.asn.hex())
    assert c["status"] == "VOIDED" and platform.voided(old.state.asn.hex())["frozen_cents"] == 19_000
    # ... and it can still be replaced from the platform's records.
    assert st.backup_from_platform(old.state.asn.hex().upper(), request()).balance == 19_000


def test_cancellation_refused_before_the_void_when_the_platform_does_not_know_the_card(platform, log, tmp_path):  # noqa: F811,E501
    card = old_card(tmp_path / "c.json", platform, balance=0)
    platform.conn.execute("DELETE FROM cards WHERE asn = ?", (card.state.asn.hex().upper(),))
    st = station(SoftwareSam(KEYSTORE), platform, log)
    with pytest.raises(Refusal) as r:
        tap_run(card, lambda t: st.cancel(t, MONDAY_10AM))
    assert r.value.reason_code == "platform_refused" and "not registered" in r.value.message
    assert CardStateFile(tmp_path / "c.json").load().status == 0x01


def test_replacement_refused_before_the_void_when_the_platform_lists_the_card_closed(platform, log, tmp_path):  # noqa: F811,E501
    card = old_card(tmp_path / "c.json", platform, balance=0)
    platform.cancel(card.state.asn.hex())
    st = station(SoftwareSam(KEYSTORE), platform, log)
    with pytest.raises(Refusal) as r:
        tap_run(card, lambda t: st.backup_and_void(t, MONDAY_10AM))
    assert r.value.reason_code == "platform_refused" and "CANCELLED" in r.value.message
    assert CardStateFile(tmp_path / "c.json").load().status == 0x01


def test_the_platform_records_a_void_once_and_only_for_an_open_card(platform, tmp_path):  # noqa: F811
    from central.db import PlatformError

    card = old_card(tmp_path / "c.json", platform, balance=500)
    asn = card.state.asn.hex().upper()
    platform.record_void(asn, 500, "00" * 8, ISSUING_TERMINAL)
    platform.record_void(asn, 500, "00" * 8, ISSUING_TERMINAL)  # a re-tap reports the same void again
    assert platform.card(asn)["status"] == "VOIDED" and platform.voided(asn)["frozen_cents"] == 500
    assert [r[0] for r in platform.conn.execute("SELECT action FROM card_history WHERE asn = ?", (asn,))].count(
        "void"
    ) == 1
    platform.cancel(asn, settle=True)
    with pytest.raises(PlatformError, match="CANCELLED"):
        platform.record_void(asn, 500, "00" * 8, ISSUING_TERMINAL)


def test_a_garbled_answer_to_the_balance_load_asks_for_a_retap_and_loads_once(platform, log, tmp_path):  # noqa: F811
    st = station(SoftwareSam(KEYSTORE), platform, log)
    old = old_card(tmp_path / "old.json", platform, balance=4_200)
    backup, _ = tap_run(old, lambda t: st.backup_and_void(t, MONDAY_10AM))
    new = washed(tmp_path / "new.json", st)

    def garble_credit(transmit):
        def relay(apdu: bytes) -> bytes:
            answer = transmit(apdu)
            # The card credited; its proof MAC3 was damaged on the way back.
            return answer[:8] + bytes([answer[8] ^ 1]) + answer[9:] if apdu[:2] == b"\x80\x52" else answer

        return relay

    with pytest.raises(Refusal) as r:
        tap_run(new, lambda t: st.replace(garble_credit(t), backup, MONDAY_10AM))
    assert r.value.reason_code == "unconfirmed" and "tap the NEW card again" in r.value.message
    new_asn, _ = tap_run(new, lambda t: st.replace(t, backup, MONDAY_10AM))
    assert CardStateFile(tmp_path / "new.json").load().purse.balance == 4_200  # once
    assert platform.card(new_asn)["balance_cents"] == 4_200
