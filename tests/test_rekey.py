"""Key rotation: SAMs hold versions 1 and 2, doors accept both, cards move 1 -> 2 at the issuing terminal (tear-proof
at every APDU: the door grants between the tear and the re-tap), the purse follows, the platform counts versions."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.store import Platform
from common import sync_protocol as p
from sam.software import SoftwareSam
from simulator.card import CardStateFile, OneCardApplet
from simulator.personalise import Personalisation, personalise
from terminal import rekey
from terminal.decision import Refusal
from terminal.keypad import Charge
from terminal.reader import CardRemoved
from tests.support import ENTERPRISE, MONDAY_10AM, make_terminal

# keystore, sam and log are fixtures shared with the washing tests.
from tests.test_card_washing import (  # noqa: F401  (pytest fixtures shared with the washing tests)
    ISSUING_TERMINAL,
    door_decision,
    door_sam,
    keystore,
    log,
    reload,
    sam,
    tap_run,
)

# 2 SELECTs (version 1 card: the sub-application SELECT answers 6A 82), 5 x (GET CHALLENGE + PUT KEY),
# GET CHALLENGE + COMMIT KEYS
FULL = 2 + 2 * 5 + 2


def issued_card(sam, path, balance=5_000) -> OneCardApplet:
    state = personalise(
        sam,
        Personalisation(
            enterprise_id=ENTERPRISE,
            employee_no="E1001",
            name="Zhang Wei",
            door_groups=frozenset({1}),
            valid_from=dt.date(2026, 1, 1),
            valid_to=dt.date(2028, 12, 31),
            opening_balance=balance,
        ),
    )
    store = CardStateFile(path)
    store.save(state)
    return OneCardApplet(state=state, store=store)


def rotate(sam, log, version=2):
    return lambda t: rekey.rekey_card(t, sam, ENTERPRISE, version, log, MONDAY_10AM, rekey.ROTATE)


def subdir(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    return d


def test_rotation_torn_at_every_apdu_door_grants_in_between(sam, keystore, log, tmp_path):
    both, _ = make_terminal(subdir(tmp_path, "both"), door_sam(keystore, (1, 2)), "door")
    for k in range(1, FULL + 1):
        card = issued_card(sam, tmp_path / f"c{k}.json")
        with pytest.raises(CardRemoved):
            tap_run(card, rotate(sam, log), tear_after=k)
        card = reload(card)
        assert card.state.key_version == (2 if k == FULL else 1), k
        # During the rotation the terminals accept both versions: the card works, whichever it now has.
        decision = door_decision(both, card)
        assert decision.accepted, (k, decision.message)
        result, _ = tap_run(card, rotate(sam, log))
        assert result.outcome == ("already" if k == FULL else "rekeyed")
        state = card.store.load()
        assert (state.key_version, state.purse.key_version, state.staged) == (2, 2, None)
        assert door_decision(both, reload(card)).accepted


def test_after_rotation_old_version_doors_refuse_and_new_ones_grant(sam, keystore, log, tmp_path):
    card = issued_card(sam, tmp_path / "c.json")
    tap_run(card, rotate(sam, log))
    v2, _ = make_terminal(subdir(tmp_path, "v2"), door_sam(keystore, (2,)), "door")
    v1, _ = make_terminal(subdir(tmp_path, "v1"), door_sam(keystore, (1,)), "door")
    assert door_decision(v2, reload(card)).accepted
    refused = door_decision(v1, reload(card))
    assert refused.reason_code == "unknown_key_version"
    assert refused.message.startswith("Card key version 2 is not accepted here")


def test_purse_moves_with_the_rotation_and_keeps_its_balance(sam, keystore, log, tmp_path):
    card = issued_card(sam, tmp_path / "c.json", balance=5_000)
    tap_run(card, rotate(sam, log))
    pos, _ = make_terminal(subdir(tmp_path, "pos"), sam, "pos")
    reader_card = reload(card)
    from simulator.inprocess import InProcessReader

    reader = InProcessReader()
    reader.tap(reader_card)
    decision = pos.handle_tap(reader.wait_for_card(0), MONDAY_10AM, Charge(1_250))
    assert decision.accepted, decision.message
    assert decision.detail["key_version"] == 2 and decision.detail["balance_after"] == 3_750


def test_rotating_a_transport_card_is_refused(sam, log, tmp_path):
    from tests.test_card_washing import new_transport_card

    card = new_transport_card(sam, tmp_path / "t.json")
    with pytest.raises(Refusal) as exc:
        tap_run(card, rotate(sam, log))
    assert exc.value.reason_code == "not_washed"


def test_rotation_without_the_new_keys_in_the_sam_changes_nothing(keystore, log, tmp_path):
    from sam.keystore import Keystore

    sam = SoftwareSam(keystore)
    card = issued_card(sam, tmp_path / "c.json")
    old_only = SoftwareSam(Keystore(k for k in keystore if k.version in (0, 1)))
    with pytest.raises(Refusal) as exc:
        tap_run(card, rotate(old_only, log))
    assert exc.value.reason_code == "missing_new_key"
    assert CardStateFile(tmp_path / "c.json").load().staged is None


def test_platform_reports_cards_per_key_version_from_uploads(sam, log, tmp_path):
    pf = Platform(tmp_path / "platform.db", Ed25519PrivateKey.generate())
    pf.add_enterprise("00010001", "Acme")
    pf.add_terminal(ISSUING_TERMINAL, "00010001", kind="issuing")
    for i in range(3):
        pf.add_holder("00010001", f"E{i}", f"Person {i}", phone=f"1380000000{i}")
    cards = [issued_card(sam, tmp_path / f"c{i}.json") for i in range(3)]
    for i, card in enumerate(cards):
        pf.issue_card("00010001", f"E{i}", card.state.asn.hex())
    tap_run(cards[0], rotate(sam, log))
    tap_run(cards[1], rotate(sam, log))
    wire = [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in log.events()
    ]
    assert pf.ingest(ISSUING_TERMINAL, wire).acked_seq == len(wire)
    assert pf.key_versions() == {"00010001": {2: 2, "unknown": 1}}
    tap_run(cards[2], rotate(sam, log))
    last = log.events()[-2:]
    pf.ingest(
        ISSUING_TERMINAL,
        [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in last
        ],
    )
    # No card left on version 1: it can be retired from the SAMs.
    assert pf.key_versions("00010001") == {"00010001": {2: 3}}
    pf.close()
