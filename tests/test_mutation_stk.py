"""The SIM toolkit codec's edges that bench/mutation.py showed untested: every refusal's exact message (it names what
and where), the boundaries of every length and identifier, the packed-text padding rule, and the CR bit."""

from __future__ import annotations

import pytest

from common import stk


def x(text: str) -> bytes:
    return bytes.fromhex(text)


def pack(septets: bytes) -> bytes:
    """TS 23.038 6.1.2.1.1 packing, written out independently of the codec's unpacking."""
    value = sum(s << (7 * i) for i, s in enumerate(septets))
    return value.to_bytes((len(septets) * 7 + 7) // 8, "little")


REFUSALS = [
    ("parse_command", "", "empty toolkit message"),
    ("parse_command", "D0 00", "proactive command: 0 TLVs of tag 01, expected exactly one"),
    ("parse_command", "D0 05 81 03 01 21 80", "proactive command: 0 TLVs of tag 02, expected exactly one"),
    ("parse_command", "D0 09 81 03 01 21 80 82 02 81 02", "DISPLAY TEXT: 0 TLVs of tag 0D, expected exactly one"),
    (
        "parse_command",
        "D0 0B 81 03 01 21 80 82 02 81 02 FE 00",
        "DISPLAY TEXT: TLV FE is marked comprehension required and is not known",
    ),
    (
        "parse_command",
        "D0 0B 81 03 01 25 00 82 02 81 82 FE 00",
        "SET UP MENU: TLV FE is marked comprehension required and is not known",
    ),
    (
        "parse_command",
        "D0 0B 81 03 01 24 00 82 02 81 82 FE 00",
        "SELECT ITEM: TLV FE is marked comprehension required and is not known",
    ),
    (
        "parse_command",
        "D0 0B 81 03 01 23 00 82 02 81 82 FE 00",
        "GET INPUT: TLV FE is marked comprehension required and is not known",
    ),
    (
        "parse_command",
        "D0 0B 81 03 01 13 00 82 02 81 83 FE 00",
        "SEND SHORT MESSAGE: TLV FE is marked comprehension required and is not known",
    ),
    ("parse_command", "D0 09 81 03 01 25 00 82 02 81 82", "SET UP MENU: 0 TLVs of tag 05, expected exactly one"),
    (
        "parse_command",
        "D0 0D 81 03 01 24 00 82 02 81 82 85 00 85 00",
        "SELECT ITEM: 2 TLVs of tag 05, expected at most one",
    ),
    (
        "parse_command",
        "D0 0D 81 03 01 23 00 82 02 81 82 91 02 01 02",
        "GET INPUT: 0 TLVs of tag 0D, expected exactly one",
    ),
    ("parse_command", "D0 09 81 03 01 13 00 82 02 81 83", "SEND SHORT MESSAGE: 0 TLVs of tag 0B, expected exactly one"),
    (
        "parse_command",
        "D0 0F 81 03 01 13 00 82 02 81 83 85 00 85 00 8B 00",
        "SEND SHORT MESSAGE: 2 TLVs of tag 05, expected at most one",
    ),
    (
        "parse_command",
        "D0 0D 81 03 01 25 00 82 02 81 82 85 00 8F 00",
        "an empty item (the 'remove menu' form) is not used by the phone menu",
    ),
    (
        "parse_command",
        "D0 0E 81 03 01 25 00 82 02 81 82 85 00 8F 01 00",
        "a menu needs at least one item, with distinct identifiers 01..FF",
    ),
    ("parse_command", "D1 00", "BER-TLV tag D1, expected D0"),
    ("parse_command", "D0 01 00", "COMPREHENSION-TLV tag 00 at offset 0 is not a one-byte tag"),
    ("parse_command", "D0 09 81 03 01 20 00 82 02 81 03", "command type 20 is not a command of the phone menu"),
    ("parse_response", "", "TERMINAL RESPONSE: 0 TLVs of tag 01, expected exactly one"),
    ("parse_response", "81 03 01 21 80", "TERMINAL RESPONSE: 0 TLVs of tag 02, expected exactly one"),
    ("parse_response", "81 03 01 21 80 82 02 82 81", "TERMINAL RESPONSE: 0 TLVs of tag 03, expected exactly one"),
    (
        "parse_response",
        "81 03 01 21 80 82 02 82 81 83 01 00 90 01 01 90 01 02",
        "TERMINAL RESPONSE: 2 TLVs of tag 10, expected at most one",
    ),
    (
        "parse_response",
        "81 03 01 21 80 82 02 82 81 83 01 00 8D 00 8D 00",
        "TERMINAL RESPONSE: 2 TLVs of tag 0D, expected at most one",
    ),
    (
        "parse_response",
        "81 03 01 21 80 82 02 82 81 83 01 00 FE 00",
        "TERMINAL RESPONSE: TLV FE is marked comprehension required and is not known",
    ),
    ("parse_response", "81 02 01 21 82 02 82 81 83 01 00", "command details of 2 bytes, expected 3"),
    (
        "parse_response",
        "81 03 01 21 80 82 02 81 82 83 01 00",
        "device identities 8182 are not terminal to UICC (82 81)",
    ),
    ("parse_response", "81 03 01 21 80 82 02 82 81 83 00", "empty result"),
    ("parse_response", "81 03 01 21 80 82 02 82 81 83 01 00 90 00", "item identifier of 0 bytes, expected 1"),
    ("parse_menu_selection", "D3 00", "MENU SELECTION: 0 TLVs of tag 02, expected exactly one"),
    ("parse_menu_selection", "D3 04 82 02 01 81", "MENU SELECTION: 0 TLVs of tag 10, expected exactly one"),
    (
        "parse_menu_selection",
        "D3 09 82 02 01 81 FE 00 90 01 01",
        "MENU SELECTION: TLV FE is marked comprehension required and is not known",
    ),
    ("parse_menu_selection", "D3 07 82 02 02 81 90 01 01", "device identities 0281 are not keypad to UICC (01 81)"),
    ("parse_menu_selection", "D3 06 82 02 01 81 90 00", "item identifier  is not one byte 01..FF"),
    ("decode_text", "04 80", "text string: byte outside the default alphabet (80..FF or the 1B escape)"),
    ("decode_text", "04 1B", "text string: byte outside the default alphabet (80..FF or the 1B escape)"),
    ("decode_text", "08 41", "text string: UCS2 text of an odd number of bytes (1)"),
    ("decode_text", "08 D8 00", "text string: UCS2 text with an unpaired surrogate"),
    ("decode_text", "00 1B", "packed text string: byte outside the default alphabet (80..FF or the 1B escape)"),
    ("decode_text", "F6", "text string data coding scheme F6 is not 00, 04 or 08"),
    ("decode_alpha", "80 41", "alpha identifier: UCS2 text of an odd number of bytes (1)"),
    ("decode_alpha", "81 02", "alpha identifier coding 81 (UCS2 with a base pointer) is not supported"),
    ("decode_alpha", "82 02", "alpha identifier coding 82 (UCS2 with a base pointer) is not supported"),
    ("decode_alpha", "C1", "alpha identifier: byte outside the default alphabet (80..FF or the 1B escape)"),
    ("parse_ctlvs", "8D 81 7F 00 00", "TLV length 817f at offset 1 is not 00..7F or 81 80..FF"),
    ("parse_ctlvs", "8D 81 80", "COMPREHENSION-TLV 8D at offset 0 says 128 bytes, 0 left"),
    ("parse_ctlvs", "8D 80 00", "TLV length 8000 at offset 1 is not 00..7F or 81 80..FF"),
    ("parse_ctlvs", "FF 00", "COMPREHENSION-TLV tag FF at offset 0 is not a one-byte tag"),
    ("parse_ctlvs", "8D", "TLV length missing at offset 1"),
    ("parse_ctlvs", "8D 82 00 80", "TLV length 8200 at offset 1 is not 00..7F or 81 80..FF"),
    ("parse_sms_submit", "00 00", "not an SMS-SUBMIT without validity period"),
    ("parse_sms_submit", "01 00 01 91 F1 00 04 02 00", "SMS-SUBMIT says 2 bytes of user data, holds 1"),
    ("parse_sms_submit", "01 00 15 91", "SMS-SUBMIT destination of 21 digits does not fit"),
    ("parse_sms_submit", "01 00 01 91 F1 00 00 00", "SMS-SUBMIT data coding 00 is not 8-bit data (04)"),
]


@pytest.mark.parametrize("function, data, message", REFUSALS)
def test_refusals_say_exactly_what_and_where(function, data, message):
    with pytest.raises(stk.StkError) as exc:
        getattr(stk, function)(x(data))
    assert str(exc.value) == message


def test_packed_text_drops_only_the_cr_that_pads_a_multiple_of_seven_bytes():
    assert stk.decode_text(b"\x00" + pack(b"1234567\r")) == "1234567"  # 7 bytes: the 8th septet is padding
    assert stk.decode_text(b"\x00" + pack(b"12345678")) == "12345678"  # 7 bytes, 8 real characters
    assert stk.decode_text(b"\x00" + pack(b"12345678\r")) == "12345678\r"  # 8 bytes: a CR that is text
    assert stk.decode_text(x("00 0D")) == "\r"
    assert stk.decode_text(b"\x00" + pack(b"1234567\r12345678")) == "1234567\r12345678"
    assert stk.unpack_gsm7(bytes(7), 8) == bytes(8)
    with pytest.raises(stk.StkError, match="9 septets do not fit 7 bytes"):
        stk.unpack_gsm7(bytes(7), 9)


def test_boundaries_of_lengths_and_identifiers():
    assert stk.ctlv(0x0D, bytes(255))[:3] == x("8D 81 FF")
    assert stk.parse_ctlvs(x("8D 81 FF") + bytes(255))[0].value == bytes(255)
    assert stk.envelope_apdu(bytes(255))[:5] == x("80 C2 00 00 FF")
    assert stk.fetch_apdu(1) == x("80 12 00 00 01") and stk.fetch_apdu(255) == x("80 12 00 00 FF")
    with pytest.raises(stk.StkError, match="^FETCH length 0 is not 1..255$"):
        stk.fetch_apdu(0)
    with pytest.raises(stk.StkError, match="^command data of 256 bytes does not fit a short APDU"):
        stk.envelope_apdu(bytes(256))
    assert stk.encode_menu_selection(255) == x("D3 07 82 02 01 81 90 01 FF")
    with pytest.raises(stk.StkError, match="^item identifier 256 is not 01..FF$"):
        stk.encode_menu_selection(256)
    top = stk.encode_command(1, stk.SelectItem("t", (stk.Item(255, "a"),)))
    assert top.endswith(x("8F 02 FF 61"))
    for bad in (0, 256):
        with pytest.raises(stk.StkError) as exc:
            stk.encode_command(1, stk.SelectItem("t", (stk.Item(bad, "a"),)))
        assert str(exc.value) == "item identifiers must be distinct and 01..FF"
    with pytest.raises(stk.StkError) as exc:
        stk.encode_command(1, stk.SetUpMenu("t", ()))
    assert str(exc.value) == "a menu needs at least one item"
    assert stk.encode_command(1, stk.GetInput("p", 0, 0))[-4:] == x("91 02 00 00")
    assert stk.encode_command(1, stk.GetInput("p", 255, 255))[-4:] == x("91 02 FF FF")
    with pytest.raises(stk.StkError) as exc:
        stk.encode_command(1, stk.GetInput("p", 0, 256))
    assert str(exc.value) == "response length 0..256 is not 0 <= min <= max <= 255"


def test_qualifiers_and_the_cr_bit():
    assert stk.encode_command(1, stk.DisplayText("a", wait_for_user=False)) == x(
        "D0 0D 81 03 01 21 00 82 02 81 02 8D 02 04 61"
    )
    assert stk.ctlv(0x0D, b"", cr=False) == x("0D 00")
    assert stk.parse_ctlvs(x("01 00 81 00")) == [stk.Tlv(1, False, b""), stk.Tlv(1, True, b"")]
    assert stk.parse_command(x("D0 0D 81 03 01 21 80 82 02 81 02 0D 00 7E 00"))[1] == stk.DisplayText("")  # CR clear
    assert stk.profile_supports(x("09"), (1, 0x01)) is False
    assert stk.profile_supports(x("09 01"), (1, 0x01)) is True


def test_optional_titles_and_alpha():
    assert stk.parse_command(x("D0 0D 81 03 01 24 00 82 02 81 82 8F 02 01 41"))[1] == stk.SelectItem(
        "", (stk.Item(1, "A"),)
    )
    assert stk.parse_command(x("D0 0B 81 03 01 13 00 82 02 81 83 8B 00"))[1] == stk.SendShortMessage("", b"")
    assert stk.decode_alpha(b"TAXX\xff\xff") == "TAXX"


def test_ucs2_covers_exactly_the_basic_multilingual_plane():
    assert stk.encode_text("\uffff") == x("08 FF FF")
    with pytest.raises(stk.StkError) as exc:
        stk.encode_text("\U00010000")
    assert str(exc.value) == "text outside the basic multilingual plane cannot be coded in UCS2"


def test_sms_submit_boundaries():
    twenty = "1" * 20
    tpdu = stk.encode_sms_submit(twenty, bytes(140))
    assert tpdu[:14] == x("01 00 14 91 11 11 11 11 11 11 11 11 11 11") and tpdu[14:17] == x("00 04 8C")
    assert stk.parse_sms_submit(tpdu) == (twenty, bytes(140))
    assert stk.encode_sms_submit("1", b"") == x("01 00 01 91 F1 00 04 00")
    with pytest.raises(stk.StkError) as exc:
        stk.encode_sms_submit("1", bytes(141))
    assert str(exc.value) == "141 bytes do not fit one short message (140)"
    with pytest.raises(stk.StkError) as exc:
        stk.encode_sms_submit("1" * 21, b"")
    assert str(exc.value) == "destination '111111111111111111111' is not 1..20 digits"


def test_last_edges():
    assert stk.ctlv(0x10, b"", cr=False) == x("10 00")
    assert stk.parse_command(x("D0 0B 81 03 01 21 01 82 02 81 02 8D 00"))[1] == stk.DisplayText("", False)
    for data, message in (
        ("8D 81", "TLV length 81 at offset 1 is not 00..7F or 81 80..FF"),
        ("D0 0B 81 03 01 23 00 82 02 81 82 8D 00", "GET INPUT: 0 TLVs of tag 11, expected exactly one"),
        (
            "D0 0F 81 03 01 23 02 82 02 81 82 8D 00 91 02 01 04",
            "GET INPUT in UCS2 (qualifier bit 2) is not used by the phone menu",
        ),
    ):
        with pytest.raises(stk.StkError) as exc:
            (stk.parse_ctlvs if data.startswith("8D") else stk.parse_command)(x(data))
        assert str(exc.value) == message
    with pytest.raises(stk.StkError) as exc:
        stk.parse_sms_submit(x("01 00 15 91 11 11 11 11 11 11 11 11 11 11 F1 00 04 00"))
    assert str(exc.value) == "SMS-SUBMIT destination of 21 digits does not fit"


def test_sms_pp_download_envelope_exact_bytes():
    """TS 31.111 7.1.1.2: D1, device identities 82 02 83 81 (network -> UICC), SMS TPDU 8B (issue 12)."""
    assert stk.TAG_SMS_PP_DOWNLOAD == 0xD1
    assert stk.encode_sms_pp_download(b"\x44\x00").hex() == "d108820283818b024400"
    envelope = stk.encode_sms_pp_download(bytes(150))  # lengths above 7F: 81 XX
    assert envelope[:10].hex() == "d1819d820283818b8196" and len(envelope) == 3 + 4 + 3 + 150
    with pytest.raises(stk.StkError):
        stk.encode_sms_pp_download(bytes(256))
