"""The card application's command builders shared by every party that talks to the card (docs/card-application.md):
the issuing station (terminal/, over a reader) and the platform (central/, over the air). Sans-I/O: bytes out, and a
minimal FCI reader for the answers the platform needs; the terminal's full parsers stay in terminal/card_protocol.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from common import bcd

AID = bytes.fromhex("F04F4E454341524401")
# Version 2 (section 9): the card directory, and AID_V2 || enterprise ID for that enterprise's sub-application.
AID_V2 = bytes.fromhex("F04F4E454341524402")
SFI_DIRECTORY = 0x1E
MAX_SUB_APPLICATIONS = 8
NAME_MAX = 16  # bytes of UTF-8 in a sub-application's directory name
ISSUER_ENTERPRISE = bytes(4)  # 00000000: the card issuer, whose TRANSPORT master key diversifies K_CARD

STATUS_TRANSPORT = 0x00
STATUS_ACTIVE = 0x01
STATUS_VOIDED = 0x02
STATUS_LOCKED = 0x03

MAC_LEN = 8
CHALLENGE_LEN = 8
KEY_IDS = {"access": 0x01, "update": 0x02, "purchase": 0x03, "load": 0x04, "tac": 0x05}
# PUT KEY key IDs of a version 2 sub-application's OTA key set (docs/ota.md 2): KIc, KID.
OTA_KEY_IDS = {"kic": 0x06, "kid": 0x07}
INS_PUT_KEY, INS_COMMIT_KEYS, INS_UPDATE_BINARY, INS_BLOCK, INS_ERASE = 0xD4, 0xD8, 0xD6, 0x1E, 0x0E
INS_READ_BINARY, INS_READ_RECORD, INS_GET_BALANCE, INS_DELETE, INS_CREATE = 0xB0, 0xB2, 0x5C, 0xE4, 0xE0
SFI_APP, SFI_HOLDER, SFI_ACCESS, SFI_PURSE = 1, 2, 3, 4


def sub_application_aid(enterprise_id: bytes) -> bytes:
    if len(enterprise_id) != 4:
        raise ValueError("enterprise ID must be 4 bytes")
    return AID_V2 + enterprise_id


def select_command(aid: bytes = AID, le: bool = True) -> bytes:
    """SELECT by DF name: the version 1 application by default, or sub_application_aid(E) / AID_V2. `le` False:
    without Le, as a command inside a compact remote-APDU script that is not its last (docs/ota.md 5)."""
    return bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + (b"\x00" if le else b"")


def get_challenge_command() -> bytes:
    return bytes([0x00, 0x84, 0x00, 0x00, CHALLENGE_LEN])


def secured_mac_input(challenge: bytes, ins: int, p1: int, p2: int, plain: bytes) -> bytes:
    """challenge || 84 INS P1 P2 Lc || data: Lc counts the 8 MAC bytes that follow the data on the wire."""
    if len(challenge) != CHALLENGE_LEN or len(plain) + MAC_LEN > 255:
        raise ValueError("a secured command takes an 8-byte challenge and at most 247 data bytes")
    return challenge + bytes([0x84, ins, p1, p2, len(plain) + MAC_LEN]) + plain


def secured_command(ins: int, p1: int, p2: int, plain: bytes, mac: bytes, le: int | None = None) -> bytes:
    if len(mac) != MAC_LEN:
        raise ValueError("the MAC of a secured command is 8 bytes")
    return bytes([0x84, ins, p1, p2, len(plain) + MAC_LEN]) + plain + mac + (b"" if le is None else bytes([le]))


def encode_access_file(
    valid_from: dt.date, valid_to: dt.date, door_groups: Collection[int], time_profile: int
) -> bytes:
    """EF_ACCESS (section 2.3) as an issuer writes it; ValueError for values the file cannot hold."""
    if any(not 1 <= g <= 64 for g in door_groups) or not 0 <= time_profile <= 255 or valid_to < valid_from:
        raise ValueError("door groups must be 1..64, the time profile 0..255, valid-to not before valid-from")
    bitmap = bytearray(8)
    for g in door_groups:
        bitmap[(g - 1) // 8] |= 0x80 >> ((g - 1) % 8)
    dates = bcd.encode_date(valid_from) + bcd.encode_date(valid_to)
    return dates + bytes(bitmap) + bytes([time_profile]) + bytes(15)


def fci_proprietary(data: bytes, aid: bytes) -> dict[int, bytes]:
    """The proprietary template (A5) of a SELECT answer's FCI (without its status word) naming `aid`, tag -> value;
    ValueError when the bytes are not such an FCI. One level, one-byte tags, short lengths (section 3.1)."""

    def tlvs(raw: bytes) -> list[tuple[int, bytes]]:
        out, i = [], 0
        while i < len(raw):
            if i + 2 > len(raw) or raw[i + 1] > 127 or i + 2 + raw[i + 1] > len(raw):
                raise ValueError(f"FCI TLV cut or long at offset {i}")
            out.append((raw[i], raw[i + 2 : i + 2 + raw[i + 1]]))
            i += 2 + raw[i + 1]
        return out

    top = tlvs(data)
    if len(top) != 1 or top[0][0] != 0x6F:
        raise ValueError("not a single FCI template (tag 6F)")
    fci = dict(tlvs(top[0][1]))
    if fci.get(0x84) != aid or 0xA5 not in fci:
        raise ValueError("the FCI names another application or has no proprietary template")
    return dict(tlvs(fci[0xA5]))
