"""terminal/purse_protocol.py byte for byte (docs/card-application.md section 5.3), and the recovery branches a
DEBIT answering 93 02 / 69 85 or a CREDIT answering 93 02 takes at a real POS and top-up terminal. Issue 15."""

import pytest

from sam.interface import Algorithm
from simulator.inprocess import InProcessReader
from terminal import card_protocol as cp
from terminal import purse_protocol as pp
from terminal.decision import Refusal
from terminal.purse_flow import MONEY_KINDS
from tests.support import MONDAY_10AM, make_card, make_sam
from tests.test_purse import make_purse_terminal

H = bytes.fromhex
TID = H("000000000101")


def fails(exc_type, message, call, *args):
    with pytest.raises(Exception) as caught:
        call(*args)
    assert type(caught.value) is exc_type, caught.value
    assert str(caught.value) == message


def test_purchase_commands_exact():
    assert pp.init_purchase_command(0x01020304, TID) == H("805001020B01010203040000000001010F")
    assert pp.init_purchase_command(1, TID) == H("805001020B01000000010000000001010F")
    assert pp.init_purchase_command(0xFFFFFFFF, TID) == H("805001020B01FFFFFFFF0000000001010F")
    assert pp.debit_command(0x0A0B0C0D, H("20261123"), H("101112"), H("A1A2A3A4A5A6A7A8")) == H(
        "80540100130A0B0C0D20261123101112A1A2A3A4A5A6A7A810"
    )
    # 5.5: a purchase after a verified spending PIN is flagged in P2 (80); without it P2 stays 00
    flagged = pp.debit_command(0x0A0B0C0D, H("20261123"), H("101112"), H("A1A2A3A4A5A6A7A8"), with_pin=True)
    assert flagged == H("80540180130A0B0C0D20261123101112A1A2A3A4A5A6A7A810")
    assert len(flagged) == 5 + 0x13 + 1
    assert pp.debit_command(1, H("20261123"), H("101112"), bytes(8), with_pin=False)[3] == 0x00


def test_load_commands_exact():
    assert pp.init_load_command(2**24, TID) == H("805000020B010100000000000000010114")
    assert pp.credit_command(H("20261123"), H("235959"), H("B1B2B3B4B5B6B7B8")) == H(
        "805200000F20261123235959B1B2B3B4B5B6B7B810"
    )
    assert pp.get_balance_command() == H("805C000204")
    assert pp.prove_command(0x06, 0x0100) == H("805A000602010010")
    assert pp.prove_command(0x02, 0xFFFF) == H("805A000202FFFF10")


@pytest.mark.parametrize("amount", [0, -1, 2**32])
def test_amounts_outside_u32_are_refused(amount):
    fails(ValueError, f"amount {amount} must be between 1 and 4294967295 fen", pp.init_purchase_command, amount, TID)
    fails(ValueError, f"amount {amount} must be between 1 and 4294967295 fen", pp.init_load_command, amount, TID)


def test_init_purchase_fields_apart():
    # balance 2^24 fen, counter 256, overdraft 000000, key version 9, algorithm 02, random
    answer = H("0100000001000000000902C1C2C3C4") + H("9000")
    assert pp.parse_init_purchase(answer) == pp.PurchaseInit(
        balance=2**24, counter=256, key_version=9, algorithm=Algorithm.SM4, random=H("C1C2C3C4")
    )
    answer = H("FFFFFFFFFFFF000000010100000001") + H("9000")
    assert pp.parse_init_purchase(answer) == pp.PurchaseInit(
        balance=2**32 - 1, counter=65535, key_version=1, algorithm=Algorithm.AES128, random=H("00000001")
    )


def test_init_purchase_status_words():
    fails(pp.InsufficientBalance, "insufficient balance", pp.parse_init_purchase, H("9401"))
    for sw in ("9403", "6985", "6A81", "6700", "6A80"):
        fails(cp.CardProtocolError, f"INITIALIZE FOR PURCHASE answered status {sw}", pp.parse_init_purchase, H(sw))
    fails(
        cp.CardProtocolError,
        "INITIALIZE FOR PURCHASE returned 14 bytes, expected 15",
        pp.parse_init_purchase,
        bytes(14) + H("9000"),
    )
    fails(
        cp.CardProtocolError,
        "INITIALIZE FOR PURCHASE returned 16 bytes, expected 15",
        pp.parse_init_purchase,
        bytes(16) + H("9000"),
    )
    fails(
        cp.CardProtocolError,
        "unknown algorithm ID 03",
        pp.parse_init_purchase,
        H("000000010000000000010300000000") + H("9000"),
    )


def test_debit_answers():
    assert pp.parse_debit(H("A1A2A1A2A1A2A1A2B1B2B1B2B1B2B1B29000")) == pp.Proof(
        tac=H("A1A2A1A2A1A2A1A2"), mac=H("B1B2B1B2B1B2B1B2")
    )
    fails(pp.MacRefused, "the card refused MAC1", pp.parse_debit, H("9302"))
    fails(pp.PurseExpired, "the card says its purse has expired", pp.parse_debit, H("6985"))
    fails(cp.CardProtocolError, "DEBIT FOR PURCHASE answered status 6901", pp.parse_debit, H("6901"))
    fails(
        cp.CardProtocolError, "DEBIT FOR PURCHASE returned 15 bytes, expected 16", pp.parse_debit, bytes(15) + H("9000")
    )


def test_init_load_fields_apart():
    answer = H("0100000001010702D1D2D3D4E1E2E3E4E5E6E7E8") + H("9000")
    assert pp.parse_init_load(answer) == pp.LoadInit(
        balance=2**24,
        counter=257,
        key_version=7,
        algorithm=Algorithm.SM4,
        random=H("D1D2D3D4"),
        mac1=H("E1E2E3E4E5E6E7E8"),
    )
    for sw in ("6A80", "9403", "6985"):
        fails(cp.CardProtocolError, f"INITIALIZE FOR LOAD answered status {sw}", pp.parse_init_load, H(sw))
    fails(
        cp.CardProtocolError,
        "INITIALIZE FOR LOAD returned 19 bytes, expected 20",
        pp.parse_init_load,
        bytes(19) + H("9000"),
    )
    fails(cp.CardProtocolError, "unknown algorithm ID 00", pp.parse_init_load, bytes(20) + H("9000"))


def test_credit_answers():
    assert pp.parse_credit(H("01020304050607081112131415161718") + H("9000")) == pp.Proof(
        tac=H("0102030405060708"), mac=H("1112131415161718")
    )
    fails(pp.MacRefused, "the card refused the load MAC2", pp.parse_credit, H("9302"))
    fails(cp.CardProtocolError, "CREDIT FOR LOAD answered status 6901", pp.parse_credit, H("6901"))
    fails(cp.CardProtocolError, "CREDIT FOR LOAD answered status 6985", pp.parse_credit, H("6985"))
    fails(
        cp.CardProtocolError, "CREDIT FOR LOAD returned 17 bytes, expected 16", pp.parse_credit, bytes(17) + H("9000")
    )


def test_sealed_initialize_answers_keep_the_balance_field_for_the_sam():
    # Version 2 (card-application.md 5.2a): the balance field is handed on as it came, no balance is read from it.
    answer = H("0100000001000000000902C1C2C3C4") + H("9000")
    assert pp.parse_init_purchase(answer, True) == pp.PurchaseInit(
        balance=None, counter=256, key_version=9, algorithm=Algorithm.SM4, random=H("C1C2C3C4"), sealed=H("01000000")
    )
    assert pp.parse_init_purchase(answer, False).sealed == b""
    answer = H("0100000201010702D1D2D3D4E1E2E3E4E5E6E7E8") + H("9000")
    assert pp.parse_init_load(answer, True) == pp.LoadInit(
        balance=None,
        counter=257,
        key_version=7,
        algorithm=Algorithm.SM4,
        random=H("D1D2D3D4"),
        mac1=H("E1E2E3E4E5E6E7E8"),
        sealed=H("01000002"),
    )
    assert pp.parse_init_load(answer).balance == 2**24 + 2 and pp.parse_init_load(answer).sealed == b""


def test_v2_refusals_after_the_mac():
    # A version 2 card answers 94 01 to DEBIT and 6A 80 to CREDIT: nothing changed (5.2a).
    fails(pp.InsufficientBalance, "insufficient balance (DEBIT)", pp.parse_debit, H("9401"))
    fails(pp.OverMaximum, "the load would exceed the card's maximum balance", pp.parse_credit, H("6A80"))


def test_balance_and_prove():
    assert pp.parse_balance(H("FFFFFFFF9000")) == 2**32 - 1
    assert pp.parse_balance(H("010000009000")) == 2**24
    fails(cp.CardProtocolError, "GET BALANCE answered status 6985", pp.parse_balance, H("6985"))
    fails(cp.CardProtocolError, "GET BALANCE returned 3 bytes, expected 4", pp.parse_balance, H("0000009000"))
    assert pp.parse_prove(H("9406")) is None
    assert pp.parse_prove(H("01020304050607081112131415161718") + H("9000")) == pp.Proof(
        mac=H("0102030405060708"), tac=H("1112131415161718")
    )
    fails(cp.CardProtocolError, "GET TRANSACTION PROVE answered status 6A81", pp.parse_prove, H("6A81"))
    fails(
        cp.CardProtocolError,
        "GET TRANSACTION PROVE returned 8 bytes, expected 16",
        pp.parse_prove,
        bytes(8) + H("9000"),
    )


def test_refusal_classes():
    assert issubclass(pp.InsufficientBalance, cp.CardProtocolError)
    assert issubclass(pp.MacRefused, cp.CardProtocolError) and issubclass(pp.PurseExpired, cp.CardProtocolError)


# --- the recovery branches, at a real terminal: the card says no before changing anything --------------------------


def answering(transmit, ins: int, answer: bytes):
    """The card's transmit, except that the command with this INS gets `answer` (the card never sees it)."""

    def wrapped(apdu):
        if len(apdu) > 1 and apdu[1] == ins:
            return answer
        return transmit(apdu)

    return wrapped


def present(card):
    reader = InProcessReader()
    reader.tap(card)
    return reader.wait_for_card(0).transmit


@pytest.mark.parametrize(
    "sw, code, message",
    [
        ("9302", "card_error", "Card refused the transaction: nothing was charged"),
        ("6985", "purse_expired", "Purse expired: balance can no longer be spent"),
    ],
)
def test_debit_refused_settles_the_intent_as_not_done(tmp_path, sw, code, message):
    sam = make_sam()
    pos = make_purse_terminal(tmp_path, sam)
    card = make_card(sam, opening_balance=10000)
    with pytest.raises(Refusal) as caught:
        pos.purchase(answering(present(card), 0x54, H(sw)), 1200, MONDAY_10AM)
    assert (caught.value.reason_code, caught.value.message) == (code, message)
    assert card.state.purse.balance == 10000
    intent, abandoned = [e for e in pos.event_log.events() if e.kind in MONEY_KINDS or e.kind.endswith("abandoned")]
    assert (intent.kind, abandoned.kind, abandoned.reason_code) == (
        "pos.purchase.intent",
        "pos.purchase.abandoned",
        "card_refused",
    )
    assert abandoned.message == ("the card refused MAC1" if sw == "9302" else "the card says its purse has expired")
    assert abandoned.detail == {"intent_seq": intent.seq, "amount": 1200, "counter": 0}
    # the next tap has nothing to settle and pays normally, with the same counter
    decision = pos.purchase(present(card), 1200, MONDAY_10AM)
    assert decision.message == "Paid 12.00"  # a purchase's balance after is never shown (no MAC the POS checks)
    assert pos.event_log.events()[-1].detail["counter"] == 0


def test_credit_refused_settles_the_load_as_not_done(tmp_path):
    sam = make_sam()
    top = make_purse_terminal(tmp_path, sam, "topup")
    card = make_card(sam, opening_balance=500)
    with pytest.raises(Refusal) as caught:
        top.top_up(answering(present(card), 0x52, H("9302")), 2000, MONDAY_10AM)
    assert (caught.value.reason_code, caught.value.message) == (
        "card_error",
        "Card refused the transaction: nothing was loaded",
    )
    assert card.state.purse.balance == 500
    last = top.event_log.events()[-1]
    assert (last.kind, last.reason_code, last.message) == (
        "topup.load.abandoned",
        "card_refused",
        "the card refused the load MAC2",
    )
    top.top_up(present(card), 2000, MONDAY_10AM)
    assert card.state.purse.balance == 2500
