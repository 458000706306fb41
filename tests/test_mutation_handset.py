"""phone/handset.py as conversations with a scripted SIM (its proactive commands built by common/stk.py): what the
holder is shown, the exact TERMINAL RESPONSE for every answer (chosen, typed, cleared, back, sent, not sent, beyond
capabilities), every HandsetError with its words, and validate_input at its edges (issue 15); and its network side:
SMS-PP downloads handed to the SIM, their PoRs back, text messages to the inbox (issue 12)."""

from __future__ import annotations

import datetime as dt

import pytest

from common import sms_tpdu, stk
from phone.handset import PROFILE, RESULT_NETWORK_UNABLE, Handset, HandsetError, validate_input

MENU = stk.SetUpMenu("壹卡通 One-card", (stk.Item(1, "Enterprise 00010001"), stk.Item(2, "Help")))


class ScriptedSim:
    """Hands out `commands` one at a time (91 xx, FETCH), records every TERMINAL RESPONSE it receives."""

    def __init__(self, after_profile=(), after_selection=()):
        self.after_profile, self.after_selection = list(after_profile), list(after_selection)
        self.queue: list[bytes] = []
        self.apdus: list[bytes] = []
        self.responses: list[stk.TerminalResponse] = []
        self.number = 0

    def _pending(self):
        if not self.queue:
            return stk.SW_OK
        return bytes([0x91, len(self.queue[0])])

    def _load(self, commands):
        for c in commands:
            if isinstance(c, bytes):
                self.queue.append(c)
            else:
                self.number += 1
                self.queue.append(stk.encode_command(self.number, c))

    def transmit(self, apdu):
        self.apdus.append(apdu)
        ins = apdu[1]
        if ins == stk.INS_TERMINAL_PROFILE:
            assert apdu[5:] == PROFILE
            self._load(self.after_profile)
            return self._pending()
        if ins == stk.INS_ENVELOPE:
            self._load(self.after_selection)
            return self._pending()
        if ins == stk.INS_FETCH:
            assert apdu[4] == len(self.queue[0])
            return self.queue.pop(0) + stk.SW_OK
        assert ins == stk.INS_TERMINAL_RESPONSE
        self.responses.append(stk.parse_response(apdu[5:]))
        return self._pending()


class Holder:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.shown: list[tuple] = []

    def select_item(self, title, items):
        self.shown.append(("select", title, items))
        return self.answers.pop(0)

    def display_text(self, text):
        self.shown.append(("display", text))
        return self.answers.pop(0)

    def get_input(self, prompt, command):
        self.shown.append(("input", prompt, command))
        return self.answers.pop(0)

    def sending(self, alpha):
        self.shown.append(("sending", alpha))


def details(number, kind, qualifier=0):
    return stk.CommandDetails(number, kind, qualifier)


def test_power_on_reads_the_menu_and_answers_ok():
    sim = ScriptedSim([MENU])
    handset = Handset(sim, Holder(), lambda d, u: None)
    assert handset.start() == MENU and handset.menu == MENU
    assert sim.responses == [stk.TerminalResponse(details(1, stk.SET_UP_MENU), stk.RESULT_OK)]
    assert handset.apdus == 3 and len(sim.apdus) == 3
    assert Handset(ScriptedSim(), Holder(), lambda d, u: None).start() is None  # a SIM with no menu


PIN = stk.GetInput("Service password", 4, 6, digits_only=True, hidden=True)


def test_a_dialogue_answer_by_answer():
    sms_ok = stk.SendShortMessage("Sending request", stk.encode_sms_submit("8610659500", b"\x01\x02"))
    sms_down = stk.SendShortMessage("Sending again", stk.encode_sms_submit("8610659501", b"\x03"))
    sms_bad = stk.SendShortMessage("Sending garbage", b"\x00")
    pick = stk.SelectItem("Enterprise 00010001", (stk.Item(3, "Balance"), stk.Item(5, "Delete")))
    script = [
        pick,
        PIN,
        stk.DisplayText("Balance 25.00 yuan"),
        stk.DisplayText("Press back"),
        stk.GetInput("Name", 1, 10, digits_only=False),
        stk.SelectItem("Sure?", (stk.Item(1, "Yes"),)),
        sms_ok,
        sms_down,
        sms_bad,
    ]
    sim = ScriptedSim([MENU], script)
    holder = Holder(5, "123456", True, False, None, None)
    sent = []

    def send_sms(destination, data):
        sent.append((destination, data))
        return None if destination.endswith("00") else "no network"

    handset = Handset(sim, holder, send_sms)
    handset.start()
    handset.choose(2)
    assert sim.apdus[3] == stk.envelope_apdu(stk.encode_menu_selection(2))
    assert holder.shown == [
        ("select", "Enterprise 00010001", pick.items),
        ("input", "Service password", PIN),
        ("display", "Balance 25.00 yuan"),
        ("display", "Press back"),
        ("input", "Name", stk.GetInput("Name", 1, 10, digits_only=False)),
        ("select", "Sure?", (stk.Item(1, "Yes"),)),
        ("sending", "Sending request"),
        ("sending", "Sending again"),
        ("sending", "Sending garbage"),
    ]
    assert sent == [("8610659500", b"\x01\x02"), ("8610659501", b"\x03")]
    assert sim.responses[1:] == [
        stk.TerminalResponse(details(2, stk.SELECT_ITEM), stk.RESULT_OK, item_id=5),
        stk.TerminalResponse(details(3, stk.GET_INPUT, 0x04), stk.RESULT_OK, text="123456"),
        stk.TerminalResponse(details(4, stk.DISPLAY_TEXT, 0x80), stk.RESULT_OK),
        stk.TerminalResponse(details(5, stk.DISPLAY_TEXT, 0x80), stk.RESULT_BACKWARD),
        stk.TerminalResponse(details(6, stk.GET_INPUT, 0x01), stk.RESULT_BACKWARD),
        stk.TerminalResponse(details(7, stk.SELECT_ITEM), stk.RESULT_BACKWARD),
        stk.TerminalResponse(details(8, stk.SEND_SHORT_MESSAGE), stk.RESULT_OK),
        stk.TerminalResponse(details(9, stk.SEND_SHORT_MESSAGE), RESULT_NETWORK_UNABLE),
        stk.TerminalResponse(details(10, stk.SEND_SHORT_MESSAGE), stk.RESULT_BEYOND_CAPABILITIES),
    ]
    assert RESULT_NETWORK_UNABLE == 0x21
    assert handset.apdus == 3 + 1 + 2 * len(script)


def test_only_an_item_of_the_menu_can_be_chosen():
    handset = Handset(ScriptedSim([MENU]), Holder(), lambda d, u: None)
    with pytest.raises(HandsetError) as caught:
        handset.choose(1)  # before power-on: no menu yet
    assert str(caught.value) == "item 1 is not in the SIM's menu"
    handset.start()
    for item in (0, 3, 255):
        with pytest.raises(HandsetError) as caught:
            handset.choose(item)
        assert str(caught.value) == f"item {item} is not in the SIM's menu"
    assert handset.apdus == 3  # nothing was sent for them


PLAY_TONE = bytes.fromhex("D0 09 81 03 07 20 01 82 02 81 03")


def test_a_command_it_does_not_know_is_answered_beyond_its_capabilities():
    sim = ScriptedSim([MENU], [PLAY_TONE])
    handset = Handset(sim, Holder(), lambda d, u: None)
    handset.start()
    handset.choose(1)
    assert sim.responses[-1] == stk.TerminalResponse(details(7, 0x20, 0x01), stk.RESULT_BEYOND_CAPABILITIES)


def test_a_command_that_cannot_be_read_at_all():
    for unreadable in (bytes.fromhex("D0 05 82 02 81 03 00"), bytes.fromhex("D0 04 81 02 07 20"), b"\x00\x00"):
        with pytest.raises(stk.StkError) as why:
            stk.parse_command(unreadable)
        sim = ScriptedSim([unreadable])
        with pytest.raises(HandsetError) as caught:
            Handset(sim, Holder(), lambda d, u: None).start()
        assert str(caught.value) == f"the SIM sent a proactive command that cannot be read: {why.value}"


class Answering:
    """A SIM that answers each APDU from a list."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def transmit(self, apdu):
        return self.answers.pop(0)


def refused(message, sim, choose=None):
    handset = Handset(sim, Holder(True), lambda d, u: None)
    with pytest.raises(HandsetError) as caught:
        if choose is None:
            handset.start()
        else:
            handset.menu = MENU
            handset.choose(choose)
    assert str(caught.value) == message


def test_a_sim_outside_the_protocol():
    refused("the SIM answered 1 byte(s), without a status word", Answering(b"\x90"))
    refused("the SIM answered 0 byte(s), without a status word", Answering(b""))
    refused(
        "the SIM answered TERMINAL PROFILE with 2 data bytes; expected a status word only",
        Answering(b"\x01\x02\x90\x00"),
    )
    refused("TERMINAL PROFILE: the SIM answered 6F 00", Answering(b"\x6f\x00"))
    refused("TERMINAL PROFILE: the SIM answered 91 00", Answering(b"\x91\x00"))
    refused(
        "the SIM answered MENU SELECTION with 1 data bytes; expected a status word only", Answering(b"\x01\x90\x00"), 1
    )
    refused("MENU SELECTION: the SIM answered 6A 82", Answering(b"\x6a\x82"), 1)
    refused("FETCH: the SIM answered 6F 00", Answering(b"\x91\x10", b"\x6f\x00"))
    refused("FETCH: the SIM answered 91 10", Answering(b"\x91\x10", b"\x91\x10"))
    text = stk.encode_command(1, stk.DisplayText("Hi"))
    refused(
        "TERMINAL RESPONSE: the SIM answered 6F 00",
        Answering(bytes([0x91, len(text)]), text + b"\x90\x00", b"\x6f\x00"),
    )
    refused(
        "the SIM answered TERMINAL RESPONSE with 1 data bytes; expected a status word only",
        Answering(bytes([0x91, len(text)]), text + b"\x90\x00", b"\x00\x90\x00"),
    )


@pytest.mark.parametrize(
    "typed, command, problem",
    [
        ("1234", PIN, None),
        ("123456", PIN, None),
        ("123", PIN, "enter 4 to 6 characters"),
        ("1234567", PIN, "enter 4 to 6 characters"),
        ("", stk.GetInput("x", 0, 0, digits_only=False), None),
        ("1", stk.GetInput("x", 0, 0), "enter 0 to 0 characters"),
        ("", stk.GetInput("x", 0, 6), None),  # digits only, nothing typed, none required: nothing to refuse
        ("1a", stk.GetInput("x", 0, 6), "enter digits only"),
        ("12a4", PIN, "enter digits only"),
        ("１２３４", PIN, "enter digits only"),  # full-width digits are digits, but not ASCII
        ("١٢٣٤", PIN, "enter digits only"),  # Arabic-Indic digits likewise
        ("abcd", stk.GetInput("x", 4, 6, digits_only=False), None),
        ("１２３４", stk.GetInput("x", 4, 6, digits_only=False), None),
    ],
)
def test_validate_input(typed, command, problem):
    assert validate_input(typed, command) == problem


# --- the network side: SMS-PP downloads to the SIM, text messages to the inbox (issue 12) -------------------------


WHEN = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.timezone.utc)


def deliver(pid, dcs, udhi, user_data, originator="10657000"):
    return sms_tpdu.deliver(sms_tpdu.Sms(originator, pid, dcs, udhi, user_data), WHEN)


def test_an_sms_pp_download_goes_to_the_sim_and_its_pors_go_back_to_the_network():
    por_1 = sms_tpdu.submit(sms_tpdu.Sms("10657000", 0x7F, 0xF6, True, b"\x02\x71\x00\x00\x01"), 1)
    por_2 = sms_tpdu.submit(sms_tpdu.Sms("10657000", 0x7F, 0xF6, True, b"\x02\x71\x00\x00\x02"), 2)
    sim = ScriptedSim(after_selection=[stk.SendShortMessage("", por_1), stk.SendShortMessage("PoR", por_2)])
    sent = []
    holder = Holder()
    handset = Handset(sim, holder, lambda d, u: sent.append((d, u)))
    tpdu = deliver(0x7F, 0xF6, True, b"\x02\x70\x00\x00\x01\x02")
    assert handset.receive(tpdu) == [por_1, por_2]
    assert (
        sim.apdus[0]
        == bytes([0x80, 0xC2, 0, 0, 8 + len(tpdu)])
        + bytes([0xD1, 6 + len(tpdu)])
        + bytes([0x82, 2, 0x83, 0x81, 0x8B, len(tpdu)])
        + tpdu
    )
    first = stk.encode_command(1, stk.SendShortMessage("", por_1))
    assert sim.apdus[1] == bytes([0x80, 0x12, 0, 0, len(first)])  # FETCH of what 91 XX announced
    assert [r.result for r in sim.responses] == [stk.RESULT_OK, stk.RESULT_OK]
    assert [r.details.number for r in sim.responses] == [1, 2]
    assert sent == [] and holder.shown == [] and handset.inbox == [] and handset.apdus == 5
    # Afterwards the menu's own short messages go to the network as before, not to a download's answer.
    sim.after_selection = [stk.SendShortMessage("Sending", stk.encode_sms_submit("8610659500", b"\x01"))]
    handset.menu = MENU
    handset.choose(1)
    assert sent == [("8610659500", b"\x01")] and holder.shown == [("sending", "Sending")]


def test_a_download_the_sim_refuses_or_cannot_take_answers_nothing():
    class Refusing(ScriptedSim):
        def __init__(self, sw):
            super().__init__()
            self.sw = sw

        def transmit(self, apdu):
            self.apdus.append(apdu)
            return self.sw

    for sw in (b"\x93\x00", b"\x6a\x80", b"\x6f\x00"):
        sim = Refusing(sw)
        handset = Handset(sim, Holder(), lambda d, u: None)
        assert handset.receive(deliver(0x7F, 0xF6, True, b"\x02\x70\x00")) == [] and len(sim.apdus) == 1
        assert handset._replies is None
    sim = Refusing(b"\x90\x00")
    handset = Handset(sim, Holder(), lambda d, u: None)
    assert handset.receive(deliver(0x7F, 0xF6, True, b"\x02\x70\x00")) == [] and len(sim.apdus) == 1
    too_long = deliver(0x7F, 0xF6, True, bytes(140))
    assert handset.receive(too_long + bytes(120)) == []  # trailing bytes: not an SMS-DELIVER
    assert len(sim.apdus) == 1


def test_text_messages_are_kept_whole_and_decoded():
    sim = ScriptedSim()
    handset = Handset(sim, Holder(), lambda d, u: None)
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, False, "余额 12.00".encode("utf-16-be"))) == []
    assert handset.receive(deliver(0x00, 0x04, False, "caf\xe9".encode("latin-1"))) == []
    one = bytes([5, 0, 3, 9, 2, 1]) + "第一".encode("utf-16-be")
    two = bytes([5, 0, 3, 9, 2, 2]) + "第二".encode("utf-16-be")
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, True, two)) == []
    assert handset.inbox == ["余额 12.00", "café"]  # part 2 waits for part 1
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, True, one)) == []
    assert handset.inbox == ["余额 12.00", "café", "第一第二"]
    assert handset.receive(b"") == [] and handset.receive(b"\x01\x00") == []  # nothing, and an SMS-SUBMIT
    assert len(handset.inbox) == 3 and sim.apdus == []  # no text message is given to the SIM


def test_parts_are_joined_per_sender_and_undecodable_text_is_shown_replaced():
    handset = Handset(ScriptedSim(), Holder(), lambda d, u: None)

    def part(seq, text):
        return bytes([5, 0, 3, 7, 2, seq]) + text.encode("utf-16-be")

    # two senders use the same concatenation reference at the same time: each message stays its own
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, True, part(1, "Hello "), "10657000")) == []
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, True, part(1, "Other "), "10658888")) == []
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, True, part(2, "world"), "10657000")) == []
    assert handset.inbox == ["Hello world"]
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, True, part(2, "text"), "10658888")) == []
    assert handset.inbox == ["Hello world", "Other text"]
    # UCS2 that is not UTF-16 (an odd byte count, a lone surrogate) is shown with U+FFFD, never refused
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, False, b"\x00A\x00")) == []
    assert handset.receive(deliver(0x00, sms_tpdu.DCS_UCS2, False, b"\xd8\x00\x00B")) == []
    assert handset.inbox[2:] == ["A\ufffd", "\ufffdB"]
