"""The one-card application protocol, terminal side: builds command APDUs and parses responses. No I/O.

Byte layouts and status words are those of docs/card-application.md; every parser either returns a
typed value or raises CardProtocolError (or NotOneCard) naming what was wrong with the bytes.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sam.interface import Algorithm

AID = bytes.fromhex("F04F4E454341524401")

STATUS_TRANSPORT = 0x00
STATUS_ACTIVE = 0x01
STATUS_VOIDED = 0x02
STATUS_NAMES = {STATUS_TRANSPORT: "not issued (transport keys)", STATUS_ACTIVE: "active", STATUS_VOIDED: "voided"}

CARD_TYPES = {0x01: "RFID-SIM", 0x02: "IC card"}

ACCESS_READ_BODY_LEN = 1 + 32 + 48 + 4
MAC_LEN = 8


class CardProtocolError(Exception):
    """The card answered, but not as the one-card application specifies."""


class NotOneCard(CardProtocolError):
    """The card has no one-card application (a bank card, a phone without RFID-SIM)."""


@dataclass(frozen=True)
class CardInfo:
    """What SELECT tells about the application, before any authentication."""

    asn: bytes
    enterprise_id: bytes
    status: int
    key_version: int
    algorithm: Algorithm
    card_type: int
    app_version: int
    purse_expiry: dt.date | None = None  # None: the card has no e-purse

    @property
    def asn_hex(self) -> str:
        return self.asn.hex().upper()


@dataclass(frozen=True)
class Holder:
    employee_no: str
    name: str


@dataclass(frozen=True)
class AccessRights:
    valid_from: dt.date
    valid_to: dt.date
    door_groups: frozenset[int]
    time_profile: int


@dataclass(frozen=True)
class AccessReadResponse:
    """An ACCESS READ answer, parsed; `mac_input` is what the card's MAC must cover."""

    status: int
    rights: AccessRights
    holder: Holder
    counter: int
    mac: bytes
    mac_input: bytes


def status_word(rapdu: bytes) -> int:
    if len(rapdu) < 2:
        raise CardProtocolError(f"response of {len(rapdu)} byte(s) has no status word")
    return int.from_bytes(rapdu[-2:], "big")


def select_command() -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(AID)]) + AID + b"\x00"


def access_read_command(nonce: bytes, terminal_id: bytes) -> bytes:
    if len(nonce) != 8 or len(terminal_id) != 6:
        raise ValueError("ACCESS READ takes an 8-byte nonce and a 6-byte terminal ID")
    return bytes([0x80, 0x3A, 0x00, 0x00, 14]) + nonce + terminal_id + b"\x00"


def read_binary_command(sfi: int, offset: int = 0, le: int = 0) -> bytes:
    return bytes([0x00, 0xB0, 0x80 | sfi, offset, le])


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """One level of BER-TLV with one-byte tags and short-form lengths (all this application uses)."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise CardProtocolError(f"TLV truncated at offset {i}")
        tag, length = data[i], data[i + 1]
        if length > 127:
            raise CardProtocolError(f"TLV tag {tag:02X} has a long-form length, not used by this application")
        value = data[i + 2:i + 2 + length]
        if len(value) != length:
            raise CardProtocolError(f"TLV tag {tag:02X} says {length} bytes, {len(value)} present")
        out.append((tag, value))
        i += 2 + length
    return out


def parse_select(rapdu: bytes) -> CardInfo:
    sw = status_word(rapdu)
    if sw in (0x6A82, 0x6A81, 0x6D00, 0x6E00, 0x6A86):
        raise NotOneCard(f"SELECT of the one-card application answered {sw:04X}")
    if sw != 0x9000:
        raise CardProtocolError(f"SELECT answered status {sw:04X}")
    top = parse_tlvs(rapdu[:-2])
    if len(top) != 1 or top[0][0] != 0x6F:
        raise CardProtocolError("SELECT response is not a single FCI template (tag 6F)")
    fci = dict(parse_tlvs(top[0][1]))
    if fci.get(0x84) != AID:
        raise NotOneCard("SELECT response names another application")
    if 0xA5 not in fci:
        raise CardProtocolError("FCI has no proprietary template (tag A5)")
    prop = dict(parse_tlvs(fci[0xA5]))
    sizes = {0xC0: 8, 0xC1: 4, 0xC2: 1, 0xC3: 1, 0xC4: 1, 0xC5: 1, 0xC6: 1}
    for tag, size in sizes.items():
        if len(prop.get(tag, b"")) != size:
            raise CardProtocolError(f"FCI tag {tag:02X} missing or not {size} byte(s)")
    try:
        algorithm = Algorithm(prop[0xC4][0])
    except ValueError:
        raise CardProtocolError(f"unknown algorithm ID {prop[0xC4][0]:02X}") from None
    purse_expiry = None
    if 0xC7 in prop:
        if len(prop[0xC7]) != 4:
            raise CardProtocolError("FCI tag C7 (purse expiry) is not 4 bytes")
        purse_expiry = parse_bcd_date(prop[0xC7], "purse expiry")
    return CardInfo(
        asn=prop[0xC0], enterprise_id=prop[0xC1], status=prop[0xC2][0], key_version=prop[0xC3][0],
        algorithm=algorithm, card_type=prop[0xC5][0], app_version=prop[0xC6][0], purse_expiry=purse_expiry,
    )


def parse_bcd_date(raw: bytes, what: str) -> dt.date:
    text = raw.hex()
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        raise CardProtocolError(f"{what} {text} is not a BCD date YYYYMMDD") from None


def parse_door_groups(bitmap: bytes) -> frozenset[int]:
    """Group g (1..64) is bit 7 - (g-1) % 8 of byte (g-1) // 8: group 1 is the top bit of the first byte."""
    return frozenset(g for g in range(1, 8 * len(bitmap) + 1) if bitmap[(g - 1) // 8] & (0x80 >> ((g - 1) % 8)))


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        raise CardProtocolError(f"{what} is not UTF-8") from None


def parse_access_read(rapdu: bytes, card: CardInfo, nonce: bytes, terminal_id: bytes) -> AccessReadResponse:
    sw = status_word(rapdu)
    if sw == 0x6985:
        raise CardProtocolError("card refused ACCESS READ (6985: application not active or counter exhausted)")
    if sw != 0x9000:
        raise CardProtocolError(f"ACCESS READ answered status {sw:04X}")
    data = rapdu[:-2]
    if len(data) != ACCESS_READ_BODY_LEN + MAC_LEN:
        raise CardProtocolError(f"ACCESS READ returned {len(data)} bytes, expected {ACCESS_READ_BODY_LEN + MAC_LEN}")
    body, mac = data[:ACCESS_READ_BODY_LEN], data[ACCESS_READ_BODY_LEN:]
    access, holder = body[1:33], body[33:81]
    rights = AccessRights(
        valid_from=parse_bcd_date(access[0:4], "valid-from date"),
        valid_to=parse_bcd_date(access[4:8], "valid-to date"),
        door_groups=parse_door_groups(access[8:16]),
        time_profile=access[16],
    )
    mac_input = card.asn + card.enterprise_id + bytes([card.key_version]) + nonce + terminal_id + body
    return AccessReadResponse(
        status=body[0],
        rights=rights,
        holder=Holder(employee_no=_text(holder[:16], "employee number"), name=_text(holder[16:], "holder name")),
        counter=int.from_bytes(body[81:85], "big"),
        mac=mac,
        mac_input=mac_input,
    )
