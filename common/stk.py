"""The SIM toolkit (card application toolkit, ETSI TS 102 223) as the phone menu uses it: the four APDUs between a
handset and its SIM, the proactive commands SET UP MENU, SELECT ITEM, DISPLAY TEXT, GET INPUT and SEND SHORT MESSAGE,
TERMINAL RESPONSE and the MENU SELECTION envelope, as BER-TLV holding COMPREHENSION-TLVs (docs/phone-menu.md).

Sans-I/O: bytes in, objects out and back. Both sides use it: the handset driver (phone/) and the simulated SIM
(simulator/sim_toolkit.py). Anything that is not what this module writes raises StkError, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- APDUs (TS 102 221 10.1.2: CLA 80 for the CAT commands) ---------------------------------------------------------
CLA_CAT = 0x80
INS_TERMINAL_PROFILE = 0x10
INS_FETCH = 0x12
INS_TERMINAL_RESPONSE = 0x14
INS_ENVELOPE = 0xC2

SW_OK = b"\x90\x00"
SW1_PROACTIVE = 0x91  # 91 XX: normal ending, a proactive command of XX bytes is waiting for FETCH

# --- BER-TLV tags (TS 101 220 7.2) ----------------------------------------------------------------------------------
TAG_PROACTIVE = 0xD0
TAG_SMS_PP_DOWNLOAD = 0xD1
TAG_MENU_SELECTION = 0xD3
TAG_SMS_PP_DOWNLOAD = 0xD1  # TS 31.111 7.1.1: an SMS-DELIVER with TP-PID 7F, handed to the SIM

# --- COMPREHENSION-TLV tags (TS 101 220 7.3, CR bit 80 not included) ------------------------------------------------
T_COMMAND_DETAILS = 0x01
T_DEVICE_IDENTITIES = 0x02
T_RESULT = 0x03
T_RESPONSE_LENGTH = 0x11
T_ALPHA = 0x05
T_ADDRESS = 0x06
T_SMS_TPDU = 0x0B
T_TEXT = 0x0D
T_ITEM = 0x0F
T_ITEM_ID = 0x10

# --- device identities (TS 102 223 8.7) -----------------------------------------------------------------------------
DEV_KEYPAD = 0x01
DEV_DISPLAY = 0x02
DEV_UICC = 0x81
DEV_TERMINAL = 0x82
DEV_NETWORK = 0x83

# --- type of command (TS 102 223 9.4) -------------------------------------------------------------------------------
SEND_SHORT_MESSAGE = 0x13
DISPLAY_TEXT = 0x21
GET_INPUT = 0x23
SELECT_ITEM = 0x24
SET_UP_MENU = 0x25
COMMAND_NAMES = {
    SEND_SHORT_MESSAGE: "SEND SHORT MESSAGE",
    DISPLAY_TEXT: "DISPLAY TEXT",
    GET_INPUT: "GET INPUT",
    SELECT_ITEM: "SELECT ITEM",
    SET_UP_MENU: "SET UP MENU",
}

# --- general result (TS 102 223 8.12) -------------------------------------------------------------------------------
RESULT_OK = 0x00
RESULT_TERMINATED_BY_USER = 0x10
RESULT_BACKWARD = 0x11
RESULT_NO_RESPONSE = 0x12
RESULT_TERMINAL_BUSY = 0x20
RESULT_BEYOND_CAPABILITIES = 0x30

# --- data coding scheme of a text string (TS 23.038 4; TS 102 223 8.15) ---------------------------------------------
DCS_GSM7_PACKED = 0x00
DCS_GSM8 = 0x04
DCS_UCS2 = 0x08

# --- TERMINAL PROFILE (TS 102 223 5.2): (byte index, bit) of each facility the phone menu needs ---------------------
PROFILE_DOWNLOAD = (0, 0x01)
PROFILE_SMS_PP_DOWNLOAD = (0, 0x02)
PROFILE_MENU_SELECTION = (0, 0x08)
PROFILE_COMMAND_RESULT = (1, 0x01)
PROFILE_UCS2_ENTRY = (1, 0x20)
PROFILE_UCS2_DISPLAY = (1, 0x40)
PROFILE_DISPLAY_TEXT = (2, 0x01)
PROFILE_GET_INPUT = (2, 0x04)
PROFILE_SELECT_ITEM = (3, 0x01)
PROFILE_SEND_SHORT_MESSAGE = (3, 0x02)
PROFILE_SET_UP_MENU = (3, 0x20)
#: What the phone menu needs of a handset; a handset that lacks one is offered no menu.
MENU_FACILITIES = (
    PROFILE_DOWNLOAD,
    PROFILE_MENU_SELECTION,
    PROFILE_COMMAND_RESULT,
    PROFILE_UCS2_ENTRY,
    PROFILE_UCS2_DISPLAY,
    PROFILE_DISPLAY_TEXT,
    PROFILE_GET_INPUT,
    PROFILE_SELECT_ITEM,
    PROFILE_SEND_SHORT_MESSAGE,
    PROFILE_SET_UP_MENU,
)


class StkError(ValueError):
    """Bytes that are not a toolkit message this module understands; the message says what and where."""


def profile(*facilities: tuple[int, int]) -> bytes:
    """A TERMINAL PROFILE with exactly these facilities set (as long as the highest byte used)."""
    out = bytearray(max((i for i, _ in facilities), default=-1) + 1)
    for i, bit in facilities:
        out[i] |= bit
    return bytes(out)


def profile_supports(terminal_profile: bytes, facility: tuple[int, int]) -> bool:
    i, bit = facility
    return i < len(terminal_profile) and bool(terminal_profile[i] & bit)


# --- APDUs ----------------------------------------------------------------------------------------------------------


def _case3(ins: int, data: bytes) -> bytes:
    if not 1 <= len(data) <= 255:
        raise StkError(f"command data of {len(data)} bytes does not fit a short APDU (1..255)")
    return bytes([CLA_CAT, ins, 0x00, 0x00, len(data)]) + data


def terminal_profile_apdu(terminal_profile: bytes) -> bytes:
    return _case3(INS_TERMINAL_PROFILE, terminal_profile)


def fetch_apdu(length: int) -> bytes:
    if not 1 <= length <= 255:
        raise StkError(f"FETCH length {length} is not 1..255")
    return bytes([CLA_CAT, INS_FETCH, 0x00, 0x00, length])


def terminal_response_apdu(response: bytes) -> bytes:
    return _case3(INS_TERMINAL_RESPONSE, response)


def envelope_apdu(envelope: bytes) -> bytes:
    return _case3(INS_ENVELOPE, envelope)


def pending_length(sw: bytes) -> int | None:
    """The length of the proactive command waiting (91 XX), None for 90 00; StkError for any other status word."""
    if len(sw) != 2:
        raise StkError(f"status word {sw.hex()} is not 2 bytes")
    if sw == SW_OK:
        return None
    if sw[0] == SW1_PROACTIVE and sw[1]:
        return sw[1]
    raise StkError(f"the SIM answered {sw.hex(' ').upper()}")


# --- TLV ------------------------------------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    raise StkError(f"a value of {n} bytes does not fit a toolkit TLV (at most 255)")


def _read_length(data: bytes, at: int) -> tuple[int, int]:
    """(length, offset of the value) of the length field at `at` (TS 101 220 7.1.2: 00..7F, or 81 80..FF)."""
    if at >= len(data):
        raise StkError(f"TLV length missing at offset {at}")
    first = data[at]
    if first < 0x80:
        return first, at + 1
    if first == 0x81 and at + 1 < len(data) and data[at + 1] >= 0x80:
        return data[at + 1], at + 2
    raise StkError(f"TLV length {data[at : at + 2].hex()} at offset {at} is not 00..7F or 81 80..FF")


def ber_tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def parse_ber_tlv(data: bytes, tag: int) -> bytes:
    """The value of the one BER-TLV `tag` that makes up all of `data`."""
    if not data:
        raise StkError("empty toolkit message")
    if data[0] != tag:
        raise StkError(f"BER-TLV tag {data[0]:02X}, expected {tag:02X}")
    n, at = _read_length(data, 1)
    if at + n != len(data):
        raise StkError(f"BER-TLV {tag:02X} says {n} bytes, holds {len(data) - at}")
    return data[at:]


def ctlv(tag: int, value: bytes, cr: bool = True) -> bytes:
    """A COMPREHENSION-TLV with a one-byte tag; `cr` sets comprehension required (bit 8)."""
    return bytes([tag | (0x80 if cr else 0)]) + _length(len(value)) + value


@dataclass(frozen=True)
class Tlv:
    tag: int  # without the CR bit
    cr: bool
    value: bytes


def parse_ctlvs(data: bytes) -> list[Tlv]:
    """The COMPREHENSION-TLVs of `data` in order (one-byte tags only; 00, FF and 80 are not tags, 7F is the
    three-byte form, which nothing in the phone menu uses)."""
    out: list[Tlv] = []
    at = 0
    while at < len(data):
        t = data[at]
        if t in (0x00, 0x80, 0x7F, 0xFF):
            raise StkError(f"COMPREHENSION-TLV tag {t:02X} at offset {at} is not a one-byte tag")
        n, start = _read_length(data, at + 1)
        if start + n > len(data):
            raise StkError(f"COMPREHENSION-TLV {t:02X} at offset {at} says {n} bytes, {len(data) - start} left")
        out.append(Tlv(t & 0x7F, bool(t & 0x80), data[start : start + n]))
        at = start + n
    return out


def _one(tlvs: list[Tlv], tag: int, what: str) -> bytes:
    found = [t.value for t in tlvs if t.tag == tag]
    if len(found) != 1:
        raise StkError(f"{what}: {len(found)} TLVs of tag {tag:02X}, expected exactly one")
    return found[0]


def _optional(tlvs: list[Tlv], tag: int, what: str) -> bytes | None:
    found = [t.value for t in tlvs if t.tag == tag]
    if len(found) > 1:
        raise StkError(f"{what}: {len(found)} TLVs of tag {tag:02X}, expected at most one")
    return found[0] if found else None


def _unknown_required(tlvs: list[Tlv], known: set[int], what: str) -> None:
    for t in tlvs:
        if t.cr and t.tag not in known:
            raise StkError(f"{what}: TLV {t.tag | 0x80:02X} is marked comprehension required and is not known")


# --- text (TS 23.038 6.2.1 default alphabet; TS 102 221 annex A for alpha identifiers) ------------------------------

GSM_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_INDEX = {c: i for i, c in enumerate(GSM_ALPHABET) if c != "\x1b"}  # 1B is the escape to the extension table


def _gsm8(text: str) -> bytes | None:
    """`text` in the default alphabet, one character a byte (bit 8 zero); None when a character is not in it."""
    try:
        return bytes(_GSM_INDEX[c] for c in text)
    except KeyError:
        return None


def _ucs2(text: str) -> bytes:
    if any(ord(c) > 0xFFFF for c in text):
        raise StkError("text outside the basic multilingual plane cannot be coded in UCS2")
    return text.encode("utf-16-be")


def _from_gsm8(data: bytes, what: str) -> str:
    if any(b >= 0x80 or b == 0x1B for b in data):
        raise StkError(f"{what}: byte outside the default alphabet (80..FF or the 1B escape)")
    return "".join(GSM_ALPHABET[b] for b in data)


def _from_ucs2(data: bytes, what: str) -> str:
    if len(data) % 2:
        raise StkError(f"{what}: UCS2 text of an odd number of bytes ({len(data)})")
    try:
        return data.decode("utf-16-be")
    except UnicodeDecodeError:
        raise StkError(f"{what}: UCS2 text with an unpaired surrogate") from None


def unpack_gsm7(data: bytes, count: int) -> bytes:
    """The `count` septets packed into `data` (TS 23.038 6.1.2.1.1)."""
    if count * 7 > len(data) * 8:
        raise StkError(f"{count} septets do not fit {len(data)} bytes")
    value = int.from_bytes(data, "little")
    return bytes((value >> (7 * i)) & 0x7F for i in range(count))


def encode_text(text: str) -> bytes:
    """A text string value (TS 102 223 8.15): DCS 04 (default alphabet, 8-bit) when every character is in it,
    else DCS 08 (UCS2, big-endian), which is how Chinese is sent."""
    gsm = _gsm8(text)
    return bytes([DCS_GSM8]) + gsm if gsm is not None else bytes([DCS_UCS2]) + _ucs2(text)


def decode_text(value: bytes) -> str:
    """A text string value: DCS 00 (packed; the count of septets is what fits, a trailing CR-padding dropped as
    TS 23.038 says), 04 or 08; an empty value is the null text string."""
    if not value:
        return ""
    dcs, body = value[0], value[1:]
    if dcs == DCS_GSM8:
        return _from_gsm8(body, "text string")
    if dcs == DCS_UCS2:
        return _from_ucs2(body, "text string")
    if dcs == DCS_GSM7_PACKED:
        septets = unpack_gsm7(body, len(body) * 8 // 7)
        if len(body) % 7 == 0 and septets.endswith(b"\r"):
            septets = septets[:-1]
        return _from_gsm8(septets, "packed text string")
    raise StkError(f"text string data coding scheme {dcs:02X} is not 00, 04 or 08")


def encode_alpha(text: str) -> bytes:
    """An alpha identifier or item text (TS 102 221 annex A): the default alphabet, or 80 then UCS2."""
    gsm = _gsm8(text)
    return gsm if gsm is not None else b"\x80" + _ucs2(text)


def decode_alpha(value: bytes) -> str:
    if value[:1] == b"\x80":
        return _from_ucs2(value[1:], "alpha identifier")
    if value[:1] in (b"\x81", b"\x82"):
        raise StkError(f"alpha identifier coding {value[0]:02X} (UCS2 with a base pointer) is not supported")
    return _from_gsm8(value.rstrip(b"\xff"), "alpha identifier")


# --- proactive commands (TS 102 223 6.6) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandDetails:
    number: int
    type: int
    qualifier: int

    def encode(self) -> bytes:
        return bytes([self.number, self.type, self.qualifier])


@dataclass(frozen=True)
class Item:
    id: int
    text: str


@dataclass(frozen=True)
class SetUpMenu:
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class SelectItem:
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class DisplayText:
    text: str
    wait_for_user: bool = True  # qualifier bit 8: the text stays until the user clears it


@dataclass(frozen=True)
class GetInput:
    prompt: str
    min_length: int
    max_length: int
    digits_only: bool = True  # qualifier bit 1 clear
    hidden: bool = False  # qualifier bit 3: the input is not shown (a password)


@dataclass(frozen=True)
class SendShortMessage:
    alpha: str  # what the handset shows while it sends
    tpdu: bytes  # an SMS-SUBMIT (TS 23.040 9.2.2.2)


ProactiveCommand = SetUpMenu | SelectItem | DisplayText | GetInput | SendShortMessage

_DEVICES_TO_TERMINAL = bytes([DEV_UICC, DEV_TERMINAL])
_DEVICES_TO_DISPLAY = bytes([DEV_UICC, DEV_DISPLAY])
_DEVICES_TO_NETWORK = bytes([DEV_UICC, DEV_NETWORK])


def _items(items: tuple[Item, ...]) -> bytes:
    if not items:
        raise StkError("a menu needs at least one item")
    if len({i.id for i in items}) != len(items) or any(not 1 <= i.id <= 0xFF for i in items):
        raise StkError("item identifiers must be distinct and 01..FF")
    return b"".join(ctlv(T_ITEM, bytes([i.id]) + encode_alpha(i.text)) for i in items)


def encode_command(number: int, command: ProactiveCommand) -> bytes:
    """The proactive command (BER-TLV D0) the SIM hands out on FETCH."""
    if not 1 <= number <= 0xFE:
        raise StkError(f"command number {number} is not 01..FE")
    if isinstance(command, SetUpMenu):
        kind, qualifier, devices = SET_UP_MENU, 0x00, _DEVICES_TO_TERMINAL
        body = ctlv(T_ALPHA, encode_alpha(command.title)) + _items(command.items)
    elif isinstance(command, SelectItem):
        kind, qualifier, devices = SELECT_ITEM, 0x00, _DEVICES_TO_TERMINAL
        body = ctlv(T_ALPHA, encode_alpha(command.title)) + _items(command.items)
    elif isinstance(command, DisplayText):
        kind, qualifier, devices = DISPLAY_TEXT, 0x80 if command.wait_for_user else 0x00, _DEVICES_TO_DISPLAY
        body = ctlv(T_TEXT, encode_text(command.text))
    elif isinstance(command, GetInput):
        if not 0 <= command.min_length <= command.max_length <= 0xFF:
            raise StkError(f"response length {command.min_length}..{command.max_length} is not 0 <= min <= max <= 255")
        qualifier = (0x00 if command.digits_only else 0x01) | (0x04 if command.hidden else 0x00)
        kind, devices = GET_INPUT, _DEVICES_TO_TERMINAL
        body = ctlv(T_TEXT, encode_text(command.prompt)) + ctlv(
            T_RESPONSE_LENGTH, bytes([command.min_length, command.max_length])
        )
    else:
        kind, qualifier, devices = SEND_SHORT_MESSAGE, 0x00, _DEVICES_TO_NETWORK
        body = ctlv(T_ALPHA, encode_alpha(command.alpha)) + ctlv(T_SMS_TPDU, command.tpdu)
    head = ctlv(T_COMMAND_DETAILS, bytes([number, kind, qualifier])) + ctlv(T_DEVICE_IDENTITIES, devices)
    return ber_tlv(TAG_PROACTIVE, head + body)


def _parse_items(tlvs: list[Tlv]) -> tuple[Item, ...]:
    items = []
    for t in tlvs:
        if t.tag == T_ITEM:
            if not t.value:
                raise StkError("an empty item (the 'remove menu' form) is not used by the phone menu")
            items.append(Item(t.value[0], decode_alpha(t.value[1:])))
    if not items or len({i.id for i in items}) != len(items) or any(i.id == 0 for i in items):
        raise StkError("a menu needs at least one item, with distinct identifiers 01..FF")
    return tuple(items)


def parse_command(data: bytes) -> tuple[CommandDetails, ProactiveCommand]:
    """A proactive command as FETCH returns it; StkError for anything else (a command the phone menu never
    sends is 'beyond the terminal's capabilities' to the handset, which answers it so)."""
    tlvs = parse_ctlvs(parse_ber_tlv(data, TAG_PROACTIVE))
    raw = _one(tlvs, T_COMMAND_DETAILS, "proactive command")
    if len(raw) != 3:
        raise StkError(f"command details of {len(raw)} bytes, expected 3")
    details = CommandDetails(raw[0], raw[1], raw[2])
    devices = _one(tlvs, T_DEVICE_IDENTITIES, "proactive command")
    if len(devices) != 2 or devices[0] != DEV_UICC:
        raise StkError(f"device identities {devices.hex()} are not from the UICC")
    what = COMMAND_NAMES.get(details.type, f"command type {details.type:02X}")
    command: ProactiveCommand
    if details.type == SET_UP_MENU:
        _unknown_required(tlvs, {T_COMMAND_DETAILS, T_DEVICE_IDENTITIES, T_ALPHA, T_ITEM}, what)
        command = SetUpMenu(decode_alpha(_one(tlvs, T_ALPHA, what)), _parse_items(tlvs))
    elif details.type == SELECT_ITEM:
        _unknown_required(tlvs, {T_COMMAND_DETAILS, T_DEVICE_IDENTITIES, T_ALPHA, T_ITEM}, what)
        title = _optional(tlvs, T_ALPHA, what)
        command = SelectItem("" if title is None else decode_alpha(title), _parse_items(tlvs))
    elif details.type == DISPLAY_TEXT:
        _unknown_required(tlvs, {T_COMMAND_DETAILS, T_DEVICE_IDENTITIES, T_TEXT}, what)
        command = DisplayText(decode_text(_one(tlvs, T_TEXT, what)), bool(details.qualifier & 0x80))
    elif details.type == GET_INPUT:
        _unknown_required(tlvs, {T_COMMAND_DETAILS, T_DEVICE_IDENTITIES, T_TEXT, T_RESPONSE_LENGTH}, what)
        lengths = _one(tlvs, T_RESPONSE_LENGTH, what)
        if len(lengths) != 2 or lengths[0] > lengths[1]:
            raise StkError(f"response length {lengths.hex()} is not min max with min <= max")
        if details.qualifier & 0x02:
            raise StkError("GET INPUT in UCS2 (qualifier bit 2) is not used by the phone menu")
        command = GetInput(
            decode_text(_one(tlvs, T_TEXT, what)),
            lengths[0],
            lengths[1],
            digits_only=not details.qualifier & 0x01,
            hidden=bool(details.qualifier & 0x04),
        )
    elif details.type == SEND_SHORT_MESSAGE:
        _unknown_required(tlvs, {T_COMMAND_DETAILS, T_DEVICE_IDENTITIES, T_ALPHA, T_ADDRESS, T_SMS_TPDU}, what)
        alpha = _optional(tlvs, T_ALPHA, what)
        command = SendShortMessage("" if alpha is None else decode_alpha(alpha), _one(tlvs, T_SMS_TPDU, what))
    else:
        raise StkError(f"{what} is not a command of the phone menu")
    return details, command


# --- TERMINAL RESPONSE (TS 102 223 6.8) and the MENU SELECTION envelope (7.3) ---------------------------------------


@dataclass(frozen=True)
class TerminalResponse:
    details: CommandDetails
    result: int
    item_id: int | None = None  # SELECT ITEM: the item chosen
    text: str | None = None  # GET INPUT: what the user typed


def encode_response(r: TerminalResponse) -> bytes:
    out = (
        ctlv(T_COMMAND_DETAILS, r.details.encode())
        + ctlv(T_DEVICE_IDENTITIES, bytes([DEV_TERMINAL, DEV_UICC]))
        + ctlv(T_RESULT, bytes([r.result]))
    )
    if r.item_id is not None:
        out += ctlv(T_ITEM_ID, bytes([r.item_id]))
    if r.text is not None:
        out += ctlv(T_TEXT, encode_text(r.text))
    return out


def parse_response(data: bytes) -> TerminalResponse:
    tlvs = parse_ctlvs(data)
    _unknown_required(tlvs, {T_COMMAND_DETAILS, T_DEVICE_IDENTITIES, T_RESULT, T_ITEM_ID, T_TEXT}, "TERMINAL RESPONSE")
    raw = _one(tlvs, T_COMMAND_DETAILS, "TERMINAL RESPONSE")
    if len(raw) != 3:
        raise StkError(f"command details of {len(raw)} bytes, expected 3")
    devices = _one(tlvs, T_DEVICE_IDENTITIES, "TERMINAL RESPONSE")
    if devices != bytes([DEV_TERMINAL, DEV_UICC]):
        raise StkError(f"device identities {devices.hex()} are not terminal to UICC (82 81)")
    result = _one(tlvs, T_RESULT, "TERMINAL RESPONSE")
    if not result:
        raise StkError("empty result")
    item = _optional(tlvs, T_ITEM_ID, "TERMINAL RESPONSE")
    if item is not None and len(item) != 1:
        raise StkError(f"item identifier of {len(item)} bytes, expected 1")
    text = _optional(tlvs, T_TEXT, "TERMINAL RESPONSE")
    return TerminalResponse(
        CommandDetails(raw[0], raw[1], raw[2]),
        result[0],
        None if item is None else item[0],
        None if text is None else decode_text(text),
    )


def encode_sms_pp_download(tpdu: bytes) -> bytes:
    """The SMS-PP DOWNLOAD envelope (TS 31.111 7.1.1.2): D1 L, device identities network -> UICC, the SMS-DELIVER
    TPDU (no SMSC address: it is optional)."""
    return ber_tlv(
        TAG_SMS_PP_DOWNLOAD, ctlv(T_DEVICE_IDENTITIES, bytes([DEV_NETWORK, DEV_UICC])) + ctlv(T_SMS_TPDU, tpdu)
    )


def encode_menu_selection(item_id: int) -> bytes:
    if not 1 <= item_id <= 0xFF:
        raise StkError(f"item identifier {item_id} is not 01..FF")
    return ber_tlv(
        TAG_MENU_SELECTION, ctlv(T_DEVICE_IDENTITIES, bytes([DEV_KEYPAD, DEV_UICC])) + ctlv(T_ITEM_ID, bytes([item_id]))
    )


def parse_menu_selection(data: bytes) -> int:
    tlvs = parse_ctlvs(parse_ber_tlv(data, TAG_MENU_SELECTION))
    _unknown_required(tlvs, {T_DEVICE_IDENTITIES, T_ITEM_ID}, "MENU SELECTION")
    devices = _one(tlvs, T_DEVICE_IDENTITIES, "MENU SELECTION")
    if devices != bytes([DEV_KEYPAD, DEV_UICC]):
        raise StkError(f"device identities {devices.hex()} are not keypad to UICC (01 81)")
    item = _one(tlvs, T_ITEM_ID, "MENU SELECTION")
    if len(item) != 1 or item[0] == 0:
        raise StkError(f"item identifier {item.hex()} is not one byte 01..FF")
    return item[0]


# --- the SMS-SUBMIT inside SEND SHORT MESSAGE (TS 23.040 9.2.2.2), 8-bit data --------------------------------------


def encode_sms_submit(destination: str, user_data: bytes, reference: int = 0) -> bytes:
    """SMS-SUBMIT to `destination` (digits, international), no validity period, TP-DCS 04 (8-bit data)."""
    if not destination.isdigit() or not destination.isascii() or not 1 <= len(destination) <= 20:
        raise StkError(f"destination {destination!r} is not 1..20 digits")
    if len(user_data) > 140:
        raise StkError(f"{len(user_data)} bytes do not fit one short message (140)")
    digits = destination + ("F" if len(destination) % 2 else "")
    address = bytes(int(digits[i + 1], 16) << 4 | int(digits[i]) for i in range(0, len(digits), 2))
    return (
        bytes([0x01, reference & 0xFF, len(destination), 0x91])
        + address
        + bytes([0x00, DCS_GSM8, len(user_data)])
        + user_data
    )


def parse_sms_submit(tpdu: bytes) -> tuple[str, bytes]:
    """(destination, user data) of an SMS-SUBMIT as encode_sms_submit writes it."""
    if len(tpdu) < 4 or tpdu[0] & 0x03 != 0x01 or tpdu[0] & 0x18:
        raise StkError("not an SMS-SUBMIT without validity period")
    n = tpdu[2]
    at = 4 + (n + 1) // 2
    if n == 0 or n > 20 or len(tpdu) < at + 3:
        raise StkError(f"SMS-SUBMIT destination of {n} digits does not fit")
    digits = "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in tpdu[4:at])[:n]
    if not digits.isdigit():
        raise StkError(f"SMS-SUBMIT destination {digits} is not digits")
    dcs, udl = tpdu[at + 1], tpdu[at + 2]
    if dcs != DCS_GSM8:
        raise StkError(f"SMS-SUBMIT data coding {dcs:02X} is not 8-bit data (04)")
    if len(tpdu) != at + 3 + udl:
        raise StkError(f"SMS-SUBMIT says {udl} bytes of user data, holds {len(tpdu) - at - 3}")
    return digits, tpdu[at + 3 :]
