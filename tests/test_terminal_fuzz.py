"""Arbitrary or mutated card answers never crash the terminal and never open the door."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.inprocess import InProcessReader
from terminal import card_protocol as cp
from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    sam = make_sam()
    term, screen = make_terminal(tmp_path_factory.mktemp("fuzz"), sam, "door")
    return sam, term, screen


def run_tap(term, card):
    reader = InProcessReader()
    reader.tap(card)
    return term.handle_tap(reader.wait_for_card(0), MONDAY_10AM)


class ScriptedCard:
    atr = b"\x3b\x00"

    def __init__(self, answers):
        self.answers = list(answers)

    def power_on(self):
        pass

    def power_off(self):
        pass

    def transmit(self, apdu):
        return self.answers.pop(0) if self.answers else b"\x6f\x00"


@FUZZ
@given(answers=st.lists(st.binary(max_size=120), min_size=0, max_size=3))
def test_garbage_answers_never_open(rig, answers):
    sam, term, screen = rig
    decision = run_tap(term, ScriptedCard(answers))
    assert not decision.accepted


@FUZZ
@given(data=st.data())
def test_mutated_genuine_answers_never_open_unless_authentic(rig, data):
    sam, term, screen = rig
    genuine = make_card(sam)
    target = data.draw(st.sampled_from(["select", "read"]))
    original = {}
    # Drawn up front: the terminal sends card commands from its deadline thread, where hypothesis cannot draw.
    flips = data.draw(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 255)), min_size=1, max_size=3))
    cut, truncate = data.draw(st.integers(0, 255)), data.draw(st.booleans())

    class Mutating:
        atr = genuine.atr
        power_on, power_off = genuine.power_on, genuine.power_off

        def transmit(self, apdu):
            answer = genuine.transmit(apdu)
            which = "select" if apdu[1] == 0xA4 else "read"
            original[which] = answer
            if which != target:
                return answer
            raw = bytearray(answer)
            for position, mask in flips:
                raw[position % len(raw)] ^= mask
            mutated = bytes(raw[: min(cut, len(raw))]) if truncate else bytes(raw)
            original["mutated"] = mutated
            return mutated

    decision = run_tap(term, Mutating())
    if not decision.accepted:
        return
    if target == "read":
        assert original["mutated"] == original["read"]
    else:
        a, b = cp.parse_select(original["mutated"]), cp.parse_select(original["select"])
        assert (a.asn, a.enterprise_id, a.key_version, a.algorithm, a.status) == (
            b.asn,
            b.enterprise_id,
            b.key_version,
            b.algorithm,
            b.status,
        )
