"""central/ota_issue.py's OtaIssue without the radio: each packet's remote APDUs run on the simulated version 2 card,
the PoR built as the SIM builds it (docs/ota.md 5). A PoR lost after any packet, a card reset between any two
packets (its challenge lost) or both: the issue still ends once, issued, and B's door opens while A's still does.
Refusals: another card's serial, a sub-application at another key version or voided, a SIM that refused a packet."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central import ota_issue as oi
from common import ota
from sam.software import SoftwareSam
from simulator.card import OneCardV2Applet
from simulator.personalise import multi_card, sub_application
from tests.support import make_terminal
from tests.test_card_v2 import ISSUER_SAM, SAMS, A, B, person, tap
from tests.test_ota_issue import NEW_ASN, RIGHTS, issuing_keystore

SAM = SoftwareSam(issuing_keystore())
GO_ON = (0x90, 0x91, 0x61, 0x62, 0x63)


def new_card() -> OneCardV2Applet:
    card = OneCardV2Applet(
        multi_card([sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}), "Office")], ISSUER_SAM)
    )
    card.power_on()
    return card


def new_op(card, version=1) -> oi.OtaIssue:
    files = oi.IssueFiles.make("R-0707", "张伟", RIGHTS)
    return oi.OtaIssue(SAM, B, card.card.serial, NEW_ASN, "Community", version, files)


def run_packet(card, data: bytes) -> ota.Por:
    """What the SIM does with a packet's secured data (docs/ota.md 5): run in order, stop at the first error."""
    n, last = 0, b""
    for apdu in ota.parse_apdus(data):
        last, n = card.transmit(apdu), n + 1
        if last[-2] not in GO_ON:
            break
    return ota.Por(ota.ISSUER_TAR, 1, ota.PorStatus.OK, ota.compact_response(n, last))


def drive(card, op, lose=(), reset=()) -> int:
    """Run the issue; packets numbered from 1: `lose` PoRs never come back, `reset` the card is reset after."""
    data, k = op.start(), 0
    while data is not None:
        k += 1
        por = run_packet(card, data)
        if k in reset:
            card.power_off()
            card.power_on()
        data = op.on_no_por() if k in lose else op.on_por(por)
    return k


def doors(tmp_path, card):
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    return tap(door_b, card)[0].message, tap(door_a, card)[0].message


def test_the_whole_sequence_is_16_packets(tmp_path):
    card = new_card()
    op = new_op(card)
    assert drive(card, op) == 16 and op.step is oi.Step.DONE and op.outcome == "issued"
    assert op.asn == NEW_ASN and op.kv == 1
    assert doors(tmp_path, card) == ("Welcome, 张伟", "Welcome, Zhang Wei")


@pytest.mark.parametrize("k", range(1, 15))
def test_a_lost_por_after_any_packet_ends_once(tmp_path, k):
    card = new_card()
    op = new_op(card)
    drive(card, op, lose={k})
    assert op.step is oi.Step.DONE, (k, op.reason)
    assert [(e.name, e.status) for e in card.directory()] == [("Office", 1), ("Community", 1)]
    assert doors(tmp_path, card) == ("Welcome, 张伟", "Welcome, Zhang Wei")


@pytest.mark.parametrize("k", range(3, 16))
def test_a_card_reset_between_packets_loses_the_challenge_and_restarts(tmp_path, k):
    card = new_card()
    op = new_op(card)
    drive(card, op, reset={k})
    assert op.step is oi.Step.DONE and op.restarts == 1, (k, op.reason)
    assert doors(tmp_path, card) == ("Welcome, 张伟", "Welcome, Zhang Wei")


def test_restarts_are_bounded():
    card = new_card()
    op = new_op(card)
    drive(card, op, reset=set(range(3, 40)))
    assert op.step is oi.Step.FAILED and op.code == "gave_up" and op.restarts == oi.MAX_RESTARTS + 1


def test_an_issued_sub_application_is_refused_unless_this_job_activated_it():
    card = new_card()
    assert drive(card, new_op(card)) == 16
    other = new_op(card)
    drive(card, other)
    assert other.step is oi.Step.FAILED and other.code == "already_issued"
    # The job that sent the activation and lost its PoR: the probe finds its own issue done.
    mine = new_op(card)
    mine.activating = True
    assert drive(card, mine) == 1 and mine.step is oi.Step.DONE


def test_another_cards_serial_is_refused_before_anything_is_written():
    card = new_card()
    op = oi.OtaIssue(SAM, B, bytes(8), NEW_ASN, "Community", 1, oi.IssueFiles.make("R-0707", "W", RIGHTS))
    drive(card, op)
    assert op.step is oi.Step.FAILED and op.code == "wrong_card" and len(card.directory()) == 1


def test_a_sub_application_at_another_key_version_is_refused():
    card = new_card()
    assert drive(card, new_op(card)) == 16
    card.card.apps[1].status = 0  # back to "not issued" at key version 1
    op = new_op(card, version=2)
    drive(card, op)
    assert op.step is oi.Step.FAILED and op.code == "wrong_version"


def test_a_voided_sub_application_is_refused():
    card = new_card()
    assert drive(card, new_op(card)) == 16
    card.card.apps[1].status = 2
    op = new_op(card)
    drive(card, op)
    assert op.step is oi.Step.FAILED and op.code == "not_issuable"


def test_a_refused_packet_fails_the_job_with_its_status():
    card = new_card()
    op = new_op(card)
    op.start()
    assert op.on_por(ota.Por(ota.ISSUER_TAR, 1, ota.PorStatus.CNTR_LOW, b"")) is None
    assert op.step is oi.Step.FAILED and "CNTR_LOW" in op.reason


def test_a_version_1_card_is_not_supported():
    from tests.support import make_card

    card = make_card(SAMS[A], None)
    op = new_op(new_card())
    data = op.start()
    op.on_por(run_packet(card, data))
    assert op.step is oi.Step.FAILED and op.code == "not_supported"


def test_the_state_survives_a_dump_and_load():
    card = new_card()
    op = new_op(card)
    data = op.start()
    for _ in range(6):
        data = op.on_por(run_packet(card, data))
    again = new_op(card)
    import json

    again.load(json.loads(op.dump()))
    assert (again.asn, again.kv, again.algorithm, again.step) == (op.asn, op.kv, op.algorithm, op.step)
    data = again.on_no_por()
    while data is not None:
        data = again.on_por(run_packet(card, data))
    assert again.step is oi.Step.DONE


def por_of(answer: bytes, n: int = 1) -> ota.Por:
    return ota.Por(ota.ISSUER_TAR, 1, ota.PorStatus.OK, ota.compact_response(n, answer))


@pytest.mark.parametrize("mangle", ["short_asn", "no_status", "bad_algorithm", "not_fci"])
def test_a_malformed_select_answer_is_a_card_error_and_nothing_is_sent(mangle):
    card = new_card()
    assert drive(card, new_op(card)) == 16
    card.card.apps[1].status = 0
    answer = card.transmit(bytes(new_op(card).start()) + b"")  # SELECT B with Le
    fci = bytearray(answer[:-2])
    if mangle == "short_asn":
        fci = fci.replace(b"\xc0\x08" + NEW_ASN, b"\xc0\x07" + NEW_ASN[:7])
        fci[1] -= 1
        fci[fci.index(0xA5) + 1] -= 1
    elif mangle == "no_status":
        at = fci.index(b"\xc2\x01")
        del fci[at : at + 3]
        fci[1] -= 3
        fci[fci.index(0xA5) + 1] -= 3
    elif mangle == "bad_algorithm":
        fci[fci.index(b"\xc4\x01") + 2] = 0x7E
    else:
        fci = bytearray(b"\x6f\x00")
    op = new_op(card)
    op.start()
    assert op.on_por(por_of(bytes(fci) + b"\x90\x00")) is None
    assert op.step is oi.Step.FAILED and op.code == "card_error", op.reason


def test_a_command_refused_mid_sequence_fails_with_its_status_word():
    card = new_card()
    op = new_op(card)
    data = op.start()
    for _ in range(4):  # probe, directory, challenge, CREATE: now in the PUT KEY chain
        data = op.on_por(run_packet(card, data))
    assert data is not None and op.sent[0] == "put"
    assert op.on_por(por_of(b"\x6a\x86", 1)) is None
    assert op.step is oi.Step.FAILED and op.code == "card_error" and "6a86" in op.reason


def test_create_answered_6a84_is_card_full_and_6a89_restarts():
    card = new_card()
    op = new_op(card)
    data = op.start()
    for _ in range(3):
        data = op.on_por(run_packet(card, data))
    assert op.sent[0] == "create"
    assert op.on_por(por_of(b"\x6a\x89", 1)) == op.start() and op.restarts == 1
    op2 = new_op(card)
    data = op2.start()
    for _ in range(3):
        data = op2.on_por(run_packet(card, data))
    assert op2.on_por(por_of(b"\x6a\x84", 1)) is None and op2.code == "card_full"


def _snapshots() -> list[tuple[OneCardV2Applet, oi.OtaIssue, bytes]]:
    """The card and the operation paused before each of the 16 PoRs (copied per example; the SAM is shared)."""
    card = new_card()
    op = new_op(card)
    packet = op.start()
    out = []
    while packet is not None:
        out.append(copy.deepcopy((card, op, packet), {id(SAM): SAM}))
        packet = op.on_por(run_packet(card, packet))
    return out


SNAPSHOTS = _snapshots()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 13), st.sampled_from(list(ota.PorStatus)), st.binary(max_size=40), st.booleans())
def test_any_por_at_any_step_gives_a_packet_or_ends_and_never_raises(k, status, data, run_first):
    card, op, packet = copy.deepcopy(SNAPSHOTS[k], {id(SAM): SAM})
    if run_first:  # the packet ran, and its PoR's additional data is replaced by noise
        run_packet(card, packet)
    out = op.on_por(ota.Por(ota.ISSUER_TAR, 1, status, data))
    assert out is None or isinstance(out, bytes)
    assert (out is None) == (op.step in (oi.Step.DONE, oi.Step.FAILED))
    assert op.step is not oi.Step.FAILED or (op.code and op.reason)
