"""terminal/authenticate.py as conversations with simulated cards (real SoftwareSam, in-process reader): what each
card answer leads to, every Refusal with its reason code, words, card and detail, and the APDUs it takes. Includes
cards that hold the genuine key yet answer what no genuine card does (a status that is not active, a private part
that does not parse): the terminal checks what the card proves, not what the simulator happens to send. Issue 15."""

from __future__ import annotations

import pytest

from sam.crypto import mac8
from simulator.card import COUNTER_MAX, STATUS_TRANSPORT, STATUS_VOIDED, ForeignCard
from simulator.inprocess import InProcessReader
from terminal import authenticate as au
from terminal import card_protocol as cp
from terminal.decision import AuthenticatedCard, Refusal
from tests.support import ENTERPRISE, OTHER_ENTERPRISE, make_card, make_card_v2, make_sam

TID = bytes.fromhex("000000000101")
NONCE = bytes.fromhex("0102030405060708")


@pytest.fixture
def sam():
    return make_sam()


def connect(card):
    reader = InProcessReader()
    reader.tap(card)
    return reader, reader.wait_for_card(0)


def authenticate(card, sam, enterprise=ENTERPRISE):
    reader, conn = connect(card)
    return au.authenticate_card(conn.transmit, sam, enterprise, TID, NONCE), reader.apdu_count


def refusal(card, sam, enterprise=ENTERPRISE):
    reader, conn = connect(card)
    with pytest.raises(Refusal) as caught:
        au.authenticate_card(conn.transmit, sam, enterprise, TID, NONCE)
    r = caught.value
    return (r.reason_code, r.message, r.asn, r.detail), reader.apdu_count


def asn(card):
    return card.state.asn.hex().upper()


class Answers:
    """A card that answers each APDU from a list (status words only), then nothing more."""

    atr = ForeignCard().atr

    def __init__(self, *answers):
        self.answers = list(answers)
        self.sent = []

    def power_on(self):
        pass

    def power_off(self):
        pass

    def transmit(self, apdu):
        self.sent.append(apdu)
        return self.answers.pop(0)


def test_a_version_2_card_is_authenticated_in_two_apdus(sam):
    card = make_card_v2(sam)
    got, apdus = authenticate(card, sam)
    assert apdus == 2
    assert isinstance(got, AuthenticatedCard)
    assert got.info.asn_hex == asn(card) and got.info.enterprise_id == ENTERPRISE and got.info.private
    assert (got.read.status, got.read.counter) == (cp.STATUS_ACTIVE, 1)
    assert (got.read.holder.employee_no, got.read.holder.name) == ("E1001", "Zhang Wei")  # deciphered by the SAM
    assert got.read.rights.door_groups == frozenset({1, 2})
    again, _ = authenticate(card, sam)
    assert again.read.counter == 2


def test_a_version_1_card_takes_one_more_select(sam):
    card = make_card(sam)
    got, apdus = authenticate(card, sam)
    assert apdus == 3
    assert got.info.asn_hex == asn(card) and not got.info.private
    assert (got.read.holder.name, got.read.counter, got.read.status) == ("Zhang Wei", 1, cp.STATUS_ACTIVE)


def test_select_application_asks_for_this_enterprises_sub_application_first(sam):
    card = Answers(b"\x6a\x82", b"\x6a\x82")
    with pytest.raises(cp.NotOneCard):
        au.select_application(card.transmit, ENTERPRISE)
    assert card.sent == [cp.select_command(cp.sub_application_aid(ENTERPRISE)), cp.select_command()]
    card = Answers(b"\x6a\x88")
    with pytest.raises(cp.NoSubApplication):
        au.select_application(card.transmit, ENTERPRISE)
    assert len(card.sent) == 1  # a version 2 card without this enterprise: no second SELECT


NOT_ONE_CARD = ("not_supported", "Card not supported: no one-card application on this card or phone", None, {})
OTHER = ("other_enterprise", "This card has no application for this site", None, {})


def test_cards_without_this_sites_application(sam):
    assert refusal(ForeignCard(), sam) == (NOT_ONE_CARD, 2)
    assert refusal(Answers(b"\x6a\x82", b"\x6d\x00"), sam) == (NOT_ONE_CARD, 2)
    assert refusal(Answers(b"\x6a\x88"), sam) == (OTHER, 1)
    assert refusal(Answers(b"\x6a\x82", b"\x6a\x88"), sam) == (OTHER, 2)
    other = make_sam(OTHER_ENTERPRISE)
    assert refusal(make_card_v2(other, enterprise_id=OTHER_ENTERPRISE), sam) == (OTHER, 1)
    v1 = make_card(other, enterprise_id=OTHER_ENTERPRISE)
    assert refusal(v1, sam) == (
        ("other_enterprise", "This card has no application for this site", asn(v1), {"card_enterprise": "00020002"}),
        2,
    )


def test_a_card_that_does_not_answer_like_a_one_card(sam):
    for answers, problem in (
        ((b"\x6f\x00",), "SELECT answered status 6F00"),
        ((b"\x6a\x82", b"\x62\x83"), "SELECT answered status 6283"),
        ((b"\x6a\x82", b"\x90\x00"), "SELECT response is not a single FCI template (tag 6F)"),
    ):
        assert refusal(Answers(*answers), sam) == (
            ("not_supported", "Card not supported: it does not answer like a one-card", None, {"problem": problem}),
            len(answers),
        )


@pytest.mark.parametrize(
    "status, reason, words",
    [
        (STATUS_TRANSPORT, "not_issued", "Card not issued yet: please see the card office"),
        (STATUS_VOIDED, "voided", "This card has been voided: use your new card or see the administrator"),
        (0x05, "card_status", "Card status 05 unknown: please see the administrator"),
        (0xA7, "card_status", "Card status A7 unknown: please see the administrator"),
    ],
)
def test_card_status_at_select(sam, status, reason, words):
    for make in (make_card, make_card_v2):
        card = make(sam, status=status)
        (got, apdus) = refusal(card, sam)
        assert got == (reason, words, asn(card), {})
        assert apdus == (2 if make is make_card else 1)  # SELECTs only, no ACCESS READ


def test_a_key_version_this_terminal_does_not_hold(sam):
    seven = make_sam(versions=(7,))
    card = make_card(seven, key_version=7, purse_key_version=7)
    assert refusal(card, sam) == (
        (
            "unknown_key_version",
            "Card key version 7 is not accepted here: please see the administrator",
            asn(card),
            {"key_version": 7, "algorithm": "AES128"},
        ),
        2,
    )
    got, _ = authenticate(card, seven)  # the terminal that holds version 7 accepts it
    assert got.info.key_version == 7


def test_a_card_whose_access_counter_is_used_up(sam):
    card = make_card(sam)
    card.state.access_counter = COUNTER_MAX
    assert refusal(card, sam) == (
        (
            "application_inactive",
            "Card blocked: its application is not active or used up. Take the card to the card office",
            asn(card),
            {"problem": "card refused ACCESS READ (6985: application not active or counter exhausted)"},
        ),
        3,
    )


class Rewriting:
    """The genuine card, with its ACCESS READ answer rewritten by `change(body)` and MAC'd again under the card's own
    access key: what a card holding the genuine key but answering something else would send."""

    def __init__(self, card, change=None, answer=None):
        self.card, self.change, self.answer = card, change, answer
        self.atr = card.atr

    def power_on(self):
        self.card.power_on()

    def power_off(self):
        self.card.power_off()

    def transmit(self, apdu):
        rapdu = self.card.transmit(apdu)
        if apdu[:2] != b"\x80\x3a":
            return rapdu
        if self.answer is not None:
            return self.answer
        s = self.card.state
        body = self.change(rapdu[: -2 - 8])
        message = s.asn + s.enterprise_id + bytes([s.key_version]) + apdu[5:13] + apdu[13:19] + body
        return body + mac8(s.algorithm, s.access_key, message) + b"\x90\x00"


def test_an_unreadable_access_read_answer(sam):
    card = make_card(sam)
    assert refusal(Rewriting(card, answer=b"\x6f\x00"), sam) == (
        ("card_error", "Card could not be read: please tap again", asn(card), {"problem": problem_of(b"\x6f\x00")}),
        3,
    )
    bad_date = Rewriting(card, lambda body: body[:1] + b"\x20\x26\x02\x30" + body[5:])
    assert refusal(bad_date, sam) == (
        (
            "card_error",
            "Card could not be read: please tap again",
            asn(card),
            {"problem": "valid-from date 20260230 is not a BCD date YYYYMMDD"},
        ),
        3,
    )


def problem_of(rapdu):
    info = cp.parse_select(make_card_select())
    with pytest.raises(cp.CardProtocolError) as caught:
        cp.split_access_read(rapdu, info, NONCE, TID)
    return str(caught.value)


def make_card_select():
    card = make_card(make_sam())
    card.power_on()
    return card.transmit(cp.select_command())


def test_a_genuine_mac_over_a_status_that_is_not_active(sam):
    card = make_card(sam)
    assert refusal(Rewriting(card, lambda body: b"\x02" + body[1:]), sam) == (
        (
            "card_status",
            "Card reports its application is not active: please see the administrator",
            asn(card),
            {},
        ),
        3,
    )
    got, _ = authenticate(Rewriting(card, lambda body: body), sam)  # the same rewriting, unchanged: accepted
    assert got.read.status == cp.STATUS_ACTIVE


def test_a_clone_without_the_enterprises_keys(sam):
    forger = make_sam()
    for make in (make_card, make_card_v2):
        card = make(forger)
        (got, apdus) = refusal(card, sam)
        assert got == (
            "auth_failed",
            "Card authentication failed: this card is not genuine or is damaged",
            asn(card),
            {"counter": 1},
        )


def test_an_answer_naming_another_application_to_the_sub_application_select(sam):
    """A card answering this enterprise's sub-application SELECT with its version 1 application is not taken at its
    word: the terminal selects the version 1 application itself, and only then reads it."""
    card = make_card(sam)

    class AnswersEverySelectAsVersion1:
        atr = card.atr

        def __init__(self):
            self.sent = []

        def power_on(self):
            card.power_on()

        def power_off(self):
            card.power_off()

        def transmit(self, apdu):
            self.sent.append(apdu)
            if apdu[1] == 0xA4:
                return card.transmit(cp.select_command())
            return card.transmit(apdu)

    odd = AnswersEverySelectAsVersion1()
    got, apdus = authenticate(odd, sam)
    assert apdus == 3 and got.info.asn_hex == asn(card)
    assert odd.sent[:2] == [cp.select_command(cp.sub_application_aid(ENTERPRISE)), cp.select_command()]
