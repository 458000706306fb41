"""common/stk.py, the SIM toolkit codec: the published conformance commands of 3GPP TS 31.124 (27.22.4) and the
TS 23.038 packing example byte for byte, text coding (default alphabet / UCS2), and hypothesis over every parser:
whatever arrives is parsed or raises StkError, never another exception, and what we encode parses back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import deletion_request as dr
from common import stk


def x(text: str) -> bytes:
    return bytes.fromhex(text)


ITEMS = tuple(stk.Item(n, f"Item {n}") for n in (1, 2, 3, 4))
ITEM_TLVS = (
    "8F 07 01 49 74 65 6D 20 31 8F 07 02 49 74 65 6D 20 32 8F 07 03 49 74 65 6D 20 33 8F 07 04 49 74 65 6D 20 34"
)

# TS 31.124 27.22.4.x expected sequence 1.1 of each command: (proactive command, its decoded form).
VECTORS = [
    (  # 27.22.4.1.1 DISPLAY TEXT, "Toolkit Test 1", normal priority, wait for the user to clear
        "D0 1A 81 03 01 21 80 82 02 81 02 8D 0F 04 54 6F 6F 6C 6B 69 74 20 54 65 73 74 20 31",
        stk.DisplayText("Toolkit Test 1", wait_for_user=True),
    ),
    (  # 27.22.4.3.1 GET INPUT, "Enter 12345", digits, SMS default alphabet, echo, 5..5
        "D0 1B 81 03 01 23 00 82 02 81 82 8D 0C 04 45 6E 74 65 72 20 31 32 33 34 35 91 02 05 05",
        stk.GetInput("Enter 12345", 5, 5, digits_only=True, hidden=False),
    ),
    (  # 27.22.4.8.1 SET UP MENU, "Toolkit Menu", four items
        "D0 3B 81 03 01 25 00 82 02 81 82 85 0C 54 6F 6F 6C 6B 69 74 20 4D 65 6E 75 " + ITEM_TLVS,
        stk.SetUpMenu("Toolkit Menu", ITEMS),
    ),
    (  # 27.22.4.9.1 SELECT ITEM, "Toolkit Select", four items
        "D0 3D 81 03 01 24 00 82 02 81 82 85 0E 54 6F 6F 6C 6B 69 74 20 53 65 6C 65 63 74 " + ITEM_TLVS,
        stk.SelectItem("Toolkit Select", ITEMS),
    ),
]


@pytest.mark.parametrize("raw, command", VECTORS)
def test_published_proactive_commands_parse_and_encode_byte_for_byte(raw, command):
    details, parsed = stk.parse_command(x(raw))
    assert parsed == command and details.number == 1
    assert stk.encode_command(1, command) == x(raw)


def test_published_terminal_responses_and_menu_selection():
    display = stk.CommandDetails(1, stk.DISPLAY_TEXT, 0x80)
    assert stk.encode_response(stk.TerminalResponse(display, 0)) == x("81 03 01 21 80 82 02 82 81 83 01 00")
    get_input = stk.TerminalResponse(stk.CommandDetails(1, stk.GET_INPUT, 0), 0, text="12345")
    assert stk.encode_response(get_input) == x("81 03 01 23 00 82 02 82 81 83 01 00 8D 06 04 31 32 33 34 35")
    select = stk.TerminalResponse(stk.CommandDetails(1, stk.SELECT_ITEM, 0), 0, item_id=2)
    assert stk.encode_response(select) == x("81 03 01 24 00 82 02 82 81 83 01 00 90 01 02")
    for r in (get_input, select):
        assert stk.parse_response(stk.encode_response(r)) == r
    assert stk.encode_menu_selection(2) == x("D3 07 82 02 01 81 90 01 02")  # 27.22.4.8.1, item 2 chosen
    assert stk.parse_menu_selection(x("D3 07 82 02 01 81 90 01 02")) == 2


def test_published_send_short_message_carries_its_tpdu():
    # 27.22.4.10.1 SEND SHORT MESSAGE 1.1: alpha "Send SM", address, SMS-SUBMIT "Test Message" (packed)
    raw = x(
        "D0 37 81 03 01 13 00 82 02 81 83 85 07 53 65 6E 64 20 53 4D 86 09 91 11 22 33 44 55 66 77 F8"
        " 8B 18 01 00 09 91 10 32 54 76 F8 40 F4 0C 54 65 73 74 20 4D 65 73 73 61 67 65"
    )
    _, command = stk.parse_command(raw)
    assert command == stk.SendShortMessage("Send SM", raw[-0x18:])
    with pytest.raises(stk.StkError, match="data coding F4"):
        stk.parse_sms_submit(command.tpdu)  # the phone menu sends 8-bit data (04) only


def test_gsm_packing_example_of_ts_23038():
    packed = x("E8 32 9B FD 46 97 D9 EC 37")  # "hellohello", 10 septets in 9 bytes
    assert stk.unpack_gsm7(packed, 10) == b"hellohello"
    assert stk.decode_text(b"\x00" + packed) == "hellohello"
    with pytest.raises(stk.StkError, match="do not fit"):
        stk.unpack_gsm7(packed, 11)


def test_text_coding_default_alphabet_and_ucs2():
    assert stk.encode_text("Balance 12.50") == b"\x04Balance 12.50"
    assert stk.encode_text("@$_") == x("04 00 02 11")  # the default alphabet is not ASCII
    assert stk.encode_text("余额") == x("08 4F 59 98 9D")
    assert stk.encode_text("€") == x("08 20 AC")  # only in the extension table: sent in UCS2
    assert stk.encode_alpha("壹卡通") == x("80 58 F9 53 61 90 1A")
    assert stk.encode_alpha("Menu") == b"Menu"
    assert stk.decode_alpha(x("4D 65 6E 75 FF FF")) == "Menu"  # padded as in EF files
    assert stk.decode_text(b"") == ""
    for text in ("Balance 12.50", "@$_ £¥", "余额 12.50 元", "壹卡通 One-card"):
        assert stk.decode_text(stk.encode_text(text)) == text
        assert stk.decode_alpha(stk.encode_alpha(text)) == text
    for bad, why in (
        (x("04 80"), "outside the default alphabet"),
        (x("04 1B"), "outside the default alphabet"),
        (x("08 4F"), "odd number"),
        (x("08 D8 00"), "unpaired surrogate"),
        (x("F6 41"), "data coding scheme F6"),
    ):
        with pytest.raises(stk.StkError, match=why):
            stk.decode_text(bad)
    with pytest.raises(stk.StkError, match="base pointer"):
        stk.decode_alpha(x("81 02 10 41 42"))
    with pytest.raises(stk.StkError, match="basic multilingual plane"):
        stk.encode_text("😀")


def test_lengths_one_and_two_byte_forms():
    assert stk.ctlv(0x0D, bytes(0x7F))[:2] == x("8D 7F")
    assert stk.ctlv(0x0D, bytes(0x80))[:3] == x("8D 81 80")
    assert stk.parse_ctlvs(stk.ctlv(0x0D, bytes(200))) == [stk.Tlv(0x0D, True, bytes(200))]
    with pytest.raises(stk.StkError, match="at most 255"):
        stk.ctlv(0x0D, bytes(256))
    for bad, why in (
        (x("8D 81 7F") + bytes(0x7F), "not 00..7F or 81 80..FF"),  # not the shortest form
        (x("8D 82 00 80"), "not 00..7F or 81 80..FF"),
        (x("8D"), "length missing"),
        (x("8D 05 00"), "says 5 bytes, 1 left"),
        (x("00 00"), "not a one-byte tag"),
        (x("7F 00 01 00"), "not a one-byte tag"),
    ):
        with pytest.raises(stk.StkError, match=why):
            stk.parse_ctlvs(bad)


def test_command_refusals():
    for raw, why in (
        ("D1 03 81 01 00", "tag D1, expected D0"),
        ("D0 05 81 03 01 21", "says 5 bytes, holds 4"),
        ("D0 07 81 03 01 21 80 82 00", "device identities  are not from the UICC"),
        ("D0 09 81 03 01 20 00 82 02 81 03", "command type 20 is not a command of the phone menu"),
        ("D0 0E 81 03 01 21 80 82 02 81 02 8D 01 04 8D 00", "2 TLVs of tag 0D"),
        ("D0 0F 81 03 01 21 80 82 02 81 02 8D 01 04 FE 01 00", "marked comprehension required"),
        ("D0 0F 81 03 01 23 00 82 02 81 82 8D 00 91 02 05 04", "min <= max"),
        ("D0 0F 81 03 01 23 02 82 02 81 82 8D 00 91 02 01 04", "UCS2"),
        ("D0 0D 81 03 01 25 00 82 02 81 82 85 00 8F 00", "remove menu"),
        ("D0 0B 81 03 01 25 00 82 02 81 82 85 00", "at least one item"),
        ("D0 11 81 03 01 24 00 82 02 81 82 8F 02 01 41 8F 02 01 42", "distinct identifiers"),
        ("D0 0A 81 02 01 21 82 02 81 02 8D 00", "command details of 2 bytes"),
    ):
        with pytest.raises(stk.StkError, match=why):
            stk.parse_command(x(raw))
    with pytest.raises(stk.StkError, match="empty toolkit message"):
        stk.parse_command(b"")
    assert stk.parse_command(x("D0 0B 81 03 01 21 80 82 02 81 02 8D 00"))[1] == stk.DisplayText("")


def test_response_and_envelope_refusals():
    for raw, why in (
        ("81 03 01 21 80 82 02 81 82 83 01 00", "not terminal to UICC"),
        ("81 03 01 21 80 82 02 82 81 83 00", "empty result"),
        ("81 03 01 21 80 82 02 82 81 83 01 00 90 02 01 02", "item identifier of 2 bytes"),
        ("81 02 01 21 82 02 82 81 83 01 00", "command details of 2 bytes"),
        ("81 03 01 21 80 82 02 82 81", "0 TLVs of tag 03"),
        ("81 03 01 21 80 82 02 82 81 83 01 00 FE 00", "comprehension required"),
    ):
        with pytest.raises(stk.StkError, match=why):
            stk.parse_response(x(raw))
    for raw, why in (
        ("D3 07 82 02 02 81 90 01 01", "not keypad to UICC"),
        ("D3 07 82 02 01 81 90 01 00", "not one byte 01..FF"),
        ("D3 04 82 02 01 81", "0 TLVs of tag 10"),
    ):
        with pytest.raises(stk.StkError, match=why):
            stk.parse_menu_selection(x(raw))
    with pytest.raises(stk.StkError, match="item identifier 0"):
        stk.encode_menu_selection(0)


def test_apdus_and_status_words():
    assert stk.terminal_profile_apdu(x("0B")) == x("80 10 00 00 01 0B")
    assert stk.fetch_apdu(0x3C) == x("80 12 00 00 3C")
    assert stk.terminal_response_apdu(x("81")) == x("80 14 00 00 01 81")
    assert stk.envelope_apdu(x("D3")) == x("80 C2 00 00 01 D3")
    assert stk.pending_length(x("9000")) is None
    assert stk.pending_length(x("913C")) == 0x3C
    for sw, why in (("9100", "91 00"), ("6985", "69 85"), ("90", "not 2 bytes")):
        with pytest.raises(stk.StkError, match=why):
            stk.pending_length(x(sw))
    for bad in (0, 256):
        with pytest.raises(stk.StkError, match="FETCH length"):
            stk.fetch_apdu(bad)
    with pytest.raises(stk.StkError, match="short APDU"):
        stk.envelope_apdu(b"")
    with pytest.raises(stk.StkError, match="short APDU"):
        stk.envelope_apdu(bytes(256))


def test_terminal_profile_bits():
    profile = stk.profile(*stk.MENU_FACILITIES)
    assert profile == x("09 61 05 23")  # TS 102 223 5.2: bytes 1 to 4
    assert all(stk.profile_supports(profile, f) for f in stk.MENU_FACILITIES)
    assert not stk.profile_supports(profile, stk.PROFILE_SMS_PP_DOWNLOAD)
    assert not stk.profile_supports(x("09"), stk.PROFILE_SET_UP_MENU)
    assert stk.profile() == b""


def test_encoder_refusals():
    with pytest.raises(stk.StkError, match="command number"):
        stk.encode_command(0, stk.DisplayText("a"))
    with pytest.raises(stk.StkError, match="command number"):
        stk.encode_command(0xFF, stk.DisplayText("a"))
    assert stk.encode_command(0xFE, stk.DisplayText("a"))[4] == 0xFE
    with pytest.raises(stk.StkError, match="at least one item"):
        stk.encode_command(1, stk.SelectItem("t", ()))
    with pytest.raises(stk.StkError, match="distinct"):
        stk.encode_command(1, stk.SelectItem("t", (stk.Item(1, "a"), stk.Item(1, "b"))))
    with pytest.raises(stk.StkError, match="distinct"):
        stk.encode_command(1, stk.SelectItem("t", (stk.Item(0, "a"),)))
    with pytest.raises(stk.StkError, match="response length"):
        stk.encode_command(1, stk.GetInput("p", 5, 4))
    hidden = stk.encode_command(1, stk.GetInput("p", 4, 8, digits_only=False, hidden=True))
    assert hidden[:7] == x("D0 11 81 03 01 23 05")
    assert stk.parse_command(hidden)[1] == stk.GetInput("p", 4, 8, digits_only=False, hidden=True)


def test_sms_submit():
    tpdu = stk.encode_sms_submit("8610659500", b"\x01\x02", reference=0x105)
    assert tpdu == x("01 05 0A 91 68 01 56 59 00 00 04 02 01 02")
    assert stk.parse_sms_submit(tpdu) == ("8610659500", b"\x01\x02")
    odd = stk.encode_sms_submit("123", b"")
    assert odd == x("01 00 03 91 21 F3 00 04 00") and stk.parse_sms_submit(odd) == ("123", b"")
    for dest in ("", "12a", "1" * 21, "١٢"):
        with pytest.raises(stk.StkError, match="digits"):
            stk.encode_sms_submit(dest, b"")
    with pytest.raises(stk.StkError, match="140"):
        stk.encode_sms_submit("1", bytes(141))
    for raw, why in (
        ("00 00 01 91 F1 00 04 00", "not an SMS-SUBMIT"),
        ("11 00 01 91 F1 00 04 00", "not an SMS-SUBMIT"),  # with a validity period
        ("01 00 00 91 00 04 00", "0 digits"),
        ("01 00 02 91 1A 00 04 00", "not digits"),
        ("01 00 01 91 F1 00 04 02 00", "says 2 bytes of user data, holds 1"),
        ("01 00 01 91", "does not fit"),
    ):
        with pytest.raises(stk.StkError, match=why):
            stk.parse_sms_submit(x(raw))


def test_deletion_request_layout():
    request = dr.DeletionRequest(x("1122334455667788"), x("00010001"), 1, 1, 2500, 3, 4)
    assert request.signed_part() == x("44 4C 01 1122334455667788 00010001 01 01 000009C4 0003 0004")
    raw = request.encode(bytes(range(8)))
    assert dr.parse(raw) == (request, bytes(range(8)))
    with pytest.raises(dr.DeletionRequestError, match="MAC of 7 bytes"):
        request.encode(bytes(7))
    with pytest.raises(dr.DeletionRequestError, match="frozen balance"):
        dr.DeletionRequest(x("1122334455667788"), x("00010001"), 1, 1, -1, 0, 0)
    with pytest.raises(dr.DeletionRequestError, match="8 bytes"):
        dr.DeletionRequest(x("11"), x("00010001"), 1, 1, 0, 0, 0)


# --- hypothesis -----------------------------------------------------------------------------------------------------

PARSERS = (
    stk.parse_ctlvs,
    stk.parse_command,
    stk.parse_response,
    stk.parse_menu_selection,
    stk.decode_text,
    stk.decode_alpha,
    stk.parse_sms_submit,
    lambda b: stk.pending_length(b[:2]),
    lambda b: stk.parse_ber_tlv(b, stk.TAG_PROACTIVE),
)


@given(st.binary(max_size=300))
def test_every_parser_parses_or_raises_stk_error(data):
    for parse in PARSERS:
        try:
            parse(data)
        except stk.StkError:
            pass
    try:
        dr.parse(data)
    except dr.DeletionRequestError:
        pass


def _tlv_soup():
    tags = st.sampled_from([0x01, 0x02, 0x03, 0x05, 0x0B, 0x0D, 0x0F, 0x10, 0x11, 0x7E, 0x20])
    one = st.tuples(tags, st.booleans(), st.binary(max_size=40)).map(lambda t: stk.ctlv(t[0], t[2], t[1]))
    return st.lists(one, max_size=8).map(b"".join)


@given(_tlv_soup(), st.sampled_from([0x13, 0x21, 0x23, 0x24, 0x25, 0x20]))
def test_well_framed_commands_with_random_contents_parse_or_raise_stk_error(body, kind):
    raw = stk.ber_tlv(stk.TAG_PROACTIVE, stk.ctlv(1, bytes([1, kind, 0])) + stk.ctlv(2, x("8182")) + body)
    try:
        stk.parse_command(raw)
    except stk.StkError:
        pass
    try:
        stk.parse_response(stk.ctlv(1, bytes([1, kind, 0])) + stk.ctlv(2, x("8281")) + body)
    except stk.StkError:
        pass


texts = st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=30)
items = st.lists(texts, min_size=1, max_size=5).map(lambda ts: tuple(stk.Item(i + 1, t) for i, t in enumerate(ts)))
commands = st.one_of(
    st.builds(stk.SetUpMenu, texts, items),
    st.builds(stk.SelectItem, texts, items),
    st.builds(stk.DisplayText, texts, st.booleans()),
    st.integers(0, 255).flatmap(
        lambda lo: st.builds(stk.GetInput, texts, st.just(lo), st.integers(lo, 255), st.booleans(), st.booleans())
    ),
    st.builds(stk.SendShortMessage, texts, st.binary(max_size=60)),
)


@given(st.integers(1, 0xFE), commands)
def test_what_we_encode_parses_back(number, command):
    raw = stk.encode_command(number, command)
    details, parsed = stk.parse_command(raw)
    assert parsed == command and details.number == number


@given(
    st.integers(1, 0xFE), st.integers(0, 0xFF), st.one_of(st.none(), st.integers(1, 255)), st.one_of(st.none(), texts)
)
def test_terminal_responses_parse_back(number, result, item, text):
    r = stk.TerminalResponse(stk.CommandDetails(number, stk.SELECT_ITEM, 0), result, item, text)
    assert stk.parse_response(stk.encode_response(r)) == r
