"""POS purchase, torn purchase and top-up over the two real transports: pcscd + vpcd, and nfcpy's udp driver."""

import contextlib

import pytest

from simulator.nfc_udp import VirtualPicc
from simulator.vpcd import VirtualIcc
from terminal.keypad import Charge, Load
from terminal.readers.nfc import NfcReader
from terminal.readers.pcsc import PcscReader
from tests.support import MONDAY_10AM, make_card_v2, make_sam, make_terminal

PCSC_SLOT = 2  # slots 0-1 are used by the door/attendance tests, 3 by the PSAM tests


@contextlib.contextmanager
def transport(name, pcscd):
    """(insert(card, tear_after), reader, apdu counter) over a real transport."""
    if name == "pcsc":
        icc = VirtualIcc(pcscd.slots[PCSC_SLOT].port, label="pos-test")
        reader = PcscReader(pcscd.slots[PCSC_SLOT].name)
        try:
            yield icc, reader
        finally:
            icc.remove()
            assert reader.wait_for_removal(3)
            reader.close()
    else:
        with VirtualPicc(label="pos-test") as picc:
            reader = NfcReader(picc.path)
            try:
                yield picc, reader
            finally:
                picc.remove()
                reader.close()


@pytest.fixture(params=["pcsc", "nfc"])
def via(request):
    pcscd = request.getfixturevalue("pcscd") if request.param == "pcsc" else None
    return lambda: transport(request.param, pcscd)


def tap(term, field, reader, card, request, tear_after=None):
    field.insert(card, tear_after=tear_after)
    conn = reader.wait_for_card(5)
    assert conn is not None, "the reader did not see the card"
    try:
        return term.handle_tap(conn, MONDAY_10AM, request)
    finally:
        conn.close()
        field.remove()
        reader.wait_for_removal(3)


def test_purchase(via, tmp_path):
    sam = make_sam()
    term, screen = make_terminal(tmp_path, sam, "pos")
    card = make_card_v2(sam, opening_balance=10000)
    with via() as (field, reader):
        decision = tap(term, field, reader, card, Charge(1250))
        assert field.apdu_count == 3
    assert decision.message == "Paid 12.50"
    assert card.state.purse.balance == 8750


def test_purchase_torn_after_debit_then_retapped(via, tmp_path):
    sam = make_sam()
    term, screen = make_terminal(tmp_path, sam, "pos")
    card = make_card_v2(sam, opening_balance=10000)
    with via() as (field, reader):
        first = tap(term, field, reader, card, Charge(1250), tear_after=3)
        assert first.reason_code == "removed" and card.state.purse.balance == 8750
        second = tap(term, field, reader, card, Charge(1250))
    assert second.message == "Paid 12.50"
    assert card.state.purse.balance == 8750
    assert [e.kind for e in term.event_log.events()] == ["pos.purchase.intent", "pos.purchase"]


def test_top_up(via, tmp_path):
    sam = make_sam()
    term, _ = make_terminal(tmp_path, sam, "topup")
    card = make_card_v2(sam, opening_balance=0)
    with via() as (field, reader):
        decision = tap(term, field, reader, card, Load(3000))
    assert decision.message == "Loaded 30.00 - balance 30.00"
