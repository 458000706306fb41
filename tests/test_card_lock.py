"""Card status 03 (locked, docs/card-application.md 6 and 8.2): a secured UPDATE BINARY of EF_APP's status byte
locks an issued sub-application (doors and purse refuse it) and unlocks it again; nothing else moves."""

from __future__ import annotations

from sam.interface import Algorithm, CardIdentity, KeyPurpose
from simulator.card import STATUS_ACTIVE, STATUS_LOCKED
from tests.support import ENTERPRISE, make_card, make_sam

SELECT = bytes.fromhex("00A4040009F04F4E45434152440100")


def _write_status(card, sam, value: int) -> bytes:
    ident = CardIdentity(card.state.asn, ENTERPRISE, card.state.key_version, Algorithm.AES128)
    assert card.transmit(SELECT)[-2:] == b"\x90\x00"
    challenge = card.transmit(bytes.fromhex("0084000008"))[:-2]
    header = bytes([0x84, 0xD6, 0x81, 12, 9])
    mac = sam.card_mac(KeyPurpose.UPDATE, ident, challenge + header + bytes([value]))
    return card.transmit(header + bytes([value]) + mac)


def test_lock_refuses_access_and_purse_then_unlock_restores_them():
    sam = make_sam()
    card = make_card(sam)
    assert _write_status(card, sam, STATUS_LOCKED) == b"\x90\x00" and card.state.status == STATUS_LOCKED
    card.transmit(SELECT)
    assert card.transmit(bytes.fromhex("803A00000E") + bytes(14) + b"\x00")[-2:] == b"\x69\x85"  # ACCESS READ
    init = bytes.fromhex("805000020B01") + (100).to_bytes(4, "big") + bytes.fromhex("00000000090110")
    assert card.transmit(init)[-2:] == b"\x69\x85"  # INITIALIZE FOR LOAD
    assert _write_status(card, sam, STATUS_LOCKED) == b"\x90\x00"  # idempotent
    assert _write_status(card, sam, STATUS_ACTIVE) == b"\x90\x00" and card.state.status == STATUS_ACTIVE
    card.transmit(SELECT)
    assert card.transmit(init)[-2:] == b"\x90\x00"


def test_other_status_values_and_unissued_cards_are_refused():
    sam = make_sam()
    card = make_card(sam)
    assert _write_status(card, sam, 0x02) == b"\x6a\x80"  # voiding is APPLICATION BLOCK, never a write
    assert _write_status(card, sam, 0x00) == b"\x6a\x80"
    card.state.status = 0x00  # washed, not yet issued
    assert _write_status(card, sam, STATUS_LOCKED) == b"\x69\x85" and card.state.status == 0x00
