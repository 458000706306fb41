"""The one-card application protocol, terminal side: builds command APDUs and parses responses. No I/O.

Byte layouts and status words are those of docs/card-application.md; every parser either returns a
typed value or raises CardProtocolError (or NotOneCard) naming what was wrong with the bytes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common import bcd
from common import card_apdu as _ca
from sam.interface import Algorithm, CardIdentity

# The command builders the platform shares (over the air) live in common/card_apdu.py; the terminal's names for them.
AID = _ca.AID
AID_V2 = _ca.AID_V2
CHALLENGE_LEN = _ca.CHALLENGE_LEN
INS_BLOCK = _ca.INS_BLOCK
INS_COMMIT_KEYS = _ca.INS_COMMIT_KEYS
INS_CREATE = _ca.INS_CREATE
INS_DELETE = _ca.INS_DELETE
INS_ERASE = _ca.INS_ERASE
INS_GET_BALANCE = _ca.INS_GET_BALANCE
INS_PUT_KEY = _ca.INS_PUT_KEY
INS_READ_BINARY = _ca.INS_READ_BINARY
INS_READ_RECORD = _ca.INS_READ_RECORD
INS_UPDATE_BINARY = _ca.INS_UPDATE_BINARY
ISSUER_ENTERPRISE = _ca.ISSUER_ENTERPRISE
KEY_IDS = _ca.KEY_IDS
OTA_KEY_IDS = _ca.OTA_KEY_IDS
MAC_LEN = _ca.MAC_LEN
MAX_SUB_APPLICATIONS = _ca.MAX_SUB_APPLICATIONS
NAME_MAX = _ca.NAME_MAX
SFI_ACCESS = _ca.SFI_ACCESS
SFI_APP = _ca.SFI_APP
SFI_DIRECTORY = _ca.SFI_DIRECTORY
SFI_HOLDER = _ca.SFI_HOLDER
SFI_PURSE = _ca.SFI_PURSE
STATUS_ACTIVE = _ca.STATUS_ACTIVE
STATUS_LOCKED = _ca.STATUS_LOCKED
STATUS_TRANSPORT = _ca.STATUS_TRANSPORT
STATUS_VOIDED = _ca.STATUS_VOIDED
encode_access_file = _ca.encode_access_file
get_challenge_command = _ca.get_challenge_command
secured_command = _ca.secured_command
secured_mac_input = _ca.secured_mac_input
select_command = _ca.select_command
sub_application_aid = _ca.sub_application_aid

STATUS_NAMES = {
    STATUS_TRANSPORT: "not issued (transport keys)",
    STATUS_ACTIVE: "active",
    STATUS_VOIDED: "voided",
    STATUS_LOCKED: "locked (reported lost)",
}

CARD_TYPES = {0x01: "RFID-SIM", 0x02: "IC card"}

ACCESS_READ_BODY_LEN = 1 + 32 + 48 + 4


class CardProtocolError(Exception):
    """The card answered, but not as the one-card application specifies."""


class NotOneCard(CardProtocolError):
    """The card has no one-card application (a bank card, a phone without RFID-SIM)."""


class NoSubApplication(CardProtocolError):
    """A version 2 card answered 6A 88: it carries one-card sub-applications, none of this enterprise."""


class ApplicationInactive(CardProtocolError):
    """The card refuses ACCESS READ with 69 85: its application was deactivated or its access counter ran out.

    Tapping again cannot help; the card office must reactivate or replace the card."""


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
    # docs/card-application.md 5.6, FCI tag C9: has_subsidy, and the subsidy expiry (None while its balance is 0)
    has_subsidy: bool = False
    subsidy_expiry: dt.date | None = None
    # FCI tag CA (5.6): the number of the last allowance the subsidy purse loaded; the card refuses any not above it
    last_allowance: int = 0

    @property
    def private(self) -> bool:
        """Version 2: holder, access and purse data only enciphered / under secure messaging (section 9.3)."""
        return self.app_version >= 2

    @property
    def asn_hex(self) -> str:
        return self.asn.hex().upper()

    def identity(self, key_version: int | None = None, algorithm: Algorithm | None = None) -> CardIdentity:
        """What the SAM needs to derive this card's keys: by default at the key version and algorithm the card
        announces, or at those an intent logged earlier (a transaction finished on a later tap)."""
        return CardIdentity(
            asn=self.asn,
            enterprise_id=self.enterprise_id,
            key_version=self.key_version if key_version is None else key_version,
            algorithm=self.algorithm if algorithm is None else algorithm,
        )


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


def expect_ok(rapdu: bytes, what: str, length: int) -> bytes:
    """The data of a 90 00 answer of exactly `length` bytes (the one check every command's answer gets, after its
    own status words); CardProtocolError naming the command otherwise."""
    sw = status_word(rapdu)
    if sw != 0x9000:
        raise CardProtocolError(f"{what} answered status {sw:04X}")
    if len(rapdu) - 2 != length:
        raise CardProtocolError(f"{what} returned {len(rapdu) - 2} bytes, expected {length}")
    return rapdu[:-2]


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
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            raise CardProtocolError(f"TLV tag {tag:02X} says {length} bytes, {len(value)} present")
        out.append((tag, value))
        i += 2 + length
    return out


def parse_select(rapdu: bytes, aid: bytes | None = None) -> CardInfo:
    """The answer to select_command(aid): version 1 application or a version 2 sub-application (aid None: the
    answer may name either)."""
    sw = status_word(rapdu)
    if sw == 0x6A88 and (aid is None or aid.startswith(AID_V2)):
        raise NoSubApplication("the card has one-card sub-applications, none for this enterprise (6A88)")
    if sw in (0x6A82, 0x6A81, 0x6D00, 0x6E00, 0x6A86):
        raise NotOneCard(f"SELECT of the one-card application answered {sw:04X}")
    if sw != 0x9000:
        raise CardProtocolError(f"SELECT answered status {sw:04X}")
    top = parse_tlvs(rapdu[:-2])
    if len(top) != 1 or top[0][0] != 0x6F:
        raise CardProtocolError("SELECT response is not a single FCI template (tag 6F)")
    fci = dict(parse_tlvs(top[0][1]))
    named = fci.get(0x84, b"")
    is_sub_application = len(named) == len(AID_V2) + 4 and named.startswith(AID_V2)
    if (aid is not None and named != aid) or (aid is None and named != AID and not is_sub_application):
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
    subsidy_expiry, last_allowance = None, 0
    if 0xC9 in prop:
        if len(prop[0xC9]) != 4:
            raise CardProtocolError("FCI tag C9 (subsidy expiry) is not 4 bytes")
        if prop[0xC9] != bytes(4):
            subsidy_expiry = parse_bcd_date(prop[0xC9], "subsidy expiry")
        if len(prop.get(0xCA, b"")) != 2:
            raise CardProtocolError("FCI tag CA (last allowance number) is missing or not 2 bytes")
        last_allowance = int.from_bytes(prop[0xCA], "big")
    if is_sub_application and prop[0xC1] != named[len(AID_V2) :]:
        raise CardProtocolError("the sub-application names another enterprise than its AID")
    return CardInfo(
        asn=prop[0xC0],
        enterprise_id=prop[0xC1],
        status=prop[0xC2][0],
        key_version=prop[0xC3][0],
        algorithm=algorithm,
        card_type=prop[0xC5][0],
        app_version=prop[0xC6][0],
        purse_expiry=purse_expiry,
        has_subsidy=0xC9 in prop,
        subsidy_expiry=subsidy_expiry,
        last_allowance=last_allowance,
    )


def parse_bcd_date(raw: bytes, what: str) -> dt.date:
    try:
        return bcd.decode_date(raw)
    except ValueError:
        raise CardProtocolError(f"{what} {raw.hex()} is not a BCD date YYYYMMDD") from None


def parse_door_groups(bitmap: bytes) -> frozenset[int]:
    """Group g (1..64) is bit 7 - (g-1) % 8 of byte (g-1) // 8: group 1 is the top bit of the first byte."""
    return frozenset(g for g in range(1, 8 * len(bitmap) + 1) if bitmap[(g - 1) // 8] & (0x80 >> ((g - 1) % 8)))


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        raise CardProtocolError(f"{what} is not UTF-8") from None


@dataclass(frozen=True)
class AccessReadEnvelope:
    """An ACCESS READ answer before its private part is read: `private` is EF_ACCESS || EF_HOLDER (80 bytes), in
    clear from a version 1 card, enciphered under SK_DATA(K_ACCESS, `context`) from a version 2 card."""

    status: int
    private: bytes
    counter: int
    mac: bytes
    mac_input: bytes

    @property
    def context(self) -> bytes:
        return self.mac_input[13:21] + self.counter.to_bytes(4, "big")  # terminal nonce || access counter


def split_access_read(rapdu: bytes, card: CardInfo, nonce: bytes, terminal_id: bytes) -> AccessReadEnvelope:
    sw = status_word(rapdu)
    if sw == 0x6985:
        raise ApplicationInactive("card refused ACCESS READ (6985: application not active or counter exhausted)")
    data = expect_ok(rapdu, "ACCESS READ", ACCESS_READ_BODY_LEN + MAC_LEN)
    body, mac = data[:ACCESS_READ_BODY_LEN], data[ACCESS_READ_BODY_LEN:]
    mac_input = card.asn + card.enterprise_id + bytes([card.key_version]) + nonce + terminal_id + body
    return AccessReadEnvelope(
        status=body[0], private=body[1:81], counter=int.from_bytes(body[81:85], "big"), mac=mac, mac_input=mac_input
    )


def parse_access_read(rapdu: bytes, card: CardInfo, nonce: bytes, terminal_id: bytes) -> AccessReadResponse:
    """A version 1 answer (private part in clear), parsed whole."""
    envelope = split_access_read(rapdu, card, nonce, terminal_id)
    return open_access_read(envelope, envelope.private)


def open_access_read(envelope: AccessReadEnvelope, private: bytes) -> AccessReadResponse:
    """The answer with its private part in clear (deciphered by the SAM for a version 2 card)."""
    if len(private) != 80:
        raise CardProtocolError(f"ACCESS READ private data is {len(private)} bytes, expected 80")
    access, holder = private[:32], private[32:]
    rights = AccessRights(
        valid_from=parse_bcd_date(access[0:4], "valid-from date"),
        valid_to=parse_bcd_date(access[4:8], "valid-to date"),
        door_groups=parse_door_groups(access[8:16]),
        time_profile=access[16],
    )
    return AccessReadResponse(
        status=envelope.status,
        rights=rights,
        holder=Holder(employee_no=_text(holder[:16], "employee number"), name=_text(holder[16:], "holder name")),
        counter=envelope.counter,
        mac=envelope.mac,
        mac_input=envelope.mac_input,
    )


# --- administration: GET CHALLENGE, secured commands, READ RECORD (docs/card-application.md section 8) ------

SFI_SUBSIDY = 5  # version 2 only, write-only: the maximum subsidy balance; the first write creates the subsidy purse
RECORD_LEN = 44


class SecuredCommandRefused(CardProtocolError):
    """The card refused a secured command's MAC (69 88) or had no fresh challenge for it (69 82): nothing changed."""


@dataclass(frozen=True)
class FrozenPurse:
    """APPLICATION BLOCK's answer: the purse as the card froze it, and the card's MAC over it."""

    balance: int
    offline_counter: int
    online_counter: int
    mac: bytes
    raw: bytes  # the 8 (20 with the subsidy purse) data bytes the MAC covers (after challenge || 1E)
    # APPLICATION BLOCK P1 01 (card-application.md 8.2): the subsidy purse frozen with it; None for P1 00
    subsidy: FrozenSubsidy | None = None


@dataclass(frozen=True)
class FrozenSubsidy:
    """The subsidy purse as APPLICATION BLOCK P1 01 froze it: balance, expiry (None: 00000000, empty), counters."""

    balance: int
    expiry: dt.date | None
    offline_counter: int
    online_counter: int


@dataclass(frozen=True)
class TransactionRecord:
    tx_type: int
    counter: int
    amount: int
    terminal_id: bytes
    tsn: int
    date: bytes
    time: bytes
    balance_after: int
    proof: bytes
    tac: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.tx_type,
            "counter": self.counter,
            "amount": self.amount,
            "terminal": self.terminal_id.hex(),
            "tsn": self.tsn,
            "date": self.date.hex(),
            "time": self.time.hex(),
            "balance_after": self.balance_after,
            "proof": self.proof.hex(),
            "tac": self.tac.hex(),
        }


def parse_challenge(rapdu: bytes) -> bytes:
    return expect_ok(rapdu, "GET CHALLENGE", CHALLENGE_LEN)


def check_secured(rapdu: bytes, what: str, length: int = 0) -> bytes:
    """The data of a secured command's 90 00 answer; SecuredCommandRefused / CardProtocolError otherwise."""
    sw = status_word(rapdu)
    if sw == 0x6988:
        raise SecuredCommandRefused(f"{what}: the card refused the command MAC (6988); nothing changed")
    if sw == 0x6982:
        raise SecuredCommandRefused(f"{what}: the card had no fresh challenge or no admin key (6982); nothing changed")
    return expect_ok(rapdu, what, length)


def parse_frozen_purse(rapdu: bytes, with_subsidy: bool = False) -> FrozenPurse:
    """APPLICATION BLOCK's answer: 16 bytes (P1 00), or 28 with the subsidy purse (P1 01); CardProtocolError else."""
    n = 20 if with_subsidy else 8
    data = check_secured(rapdu, "APPLICATION BLOCK", n + 8)
    subsidy = None
    if with_subsidy:
        expiry = data[12:16]
        subsidy = FrozenSubsidy(
            balance=int.from_bytes(data[8:12], "big"),
            expiry=None if expiry == bytes(4) else parse_bcd_date(expiry, "frozen subsidy expiry"),
            offline_counter=int.from_bytes(data[16:18], "big"),
            online_counter=int.from_bytes(data[18:20], "big"),
        )
    return FrozenPurse(
        balance=int.from_bytes(data[0:4], "big"),
        offline_counter=int.from_bytes(data[4:6], "big"),
        online_counter=int.from_bytes(data[6:8], "big"),
        mac=data[n:],
        raw=data[:n],
        subsidy=subsidy,
    )


def block_response_mac_input(challenge: bytes, frozen: FrozenPurse) -> bytes:
    return challenge + bytes([INS_BLOCK]) + frozen.raw


def read_record_command(number: int) -> bytes:
    if not 1 <= number <= 10:
        raise ValueError("the card keeps records 1 (newest) to 10")
    return bytes([0x00, 0xB2, number, 0x2C, RECORD_LEN])


def parse_record(rapdu: bytes) -> TransactionRecord | None:
    """None when the card has no such record (6A83): fewer transactions than asked for."""
    sw = status_word(rapdu)
    if sw == 0x6A83:
        return None
    d = expect_ok(rapdu, "READ RECORD", RECORD_LEN)
    return TransactionRecord(
        tx_type=d[0],
        counter=int.from_bytes(d[1:3], "big"),
        amount=int.from_bytes(d[3:7], "big"),
        terminal_id=d[7:13],
        tsn=int.from_bytes(d[13:17], "big"),
        date=d[17:21],
        time=d[21:24],
        balance_after=int.from_bytes(d[24:28], "big"),
        proof=d[28:36],
        tac=d[36:44],
    )


def parse_read_binary(rapdu: bytes, what: str, length: int) -> bytes:
    return expect_ok(rapdu, f"READ BINARY of {what}", length)


# --- version 2: card directory and secured reads (docs/card-application.md section 9) ----------------------


@dataclass(frozen=True)
class DirectoryEntry:
    enterprise_id: bytes
    name: str
    status: int


@dataclass(frozen=True)
class SecuredReadAnswer:
    """A secured read's answer: `ciphertext` under SK_DATA(K_ADMIN, challenge || 00000000) and the card's MAC over
    challenge || INS || ciphertext, which the SAM checks before it deciphers."""

    ciphertext: bytes
    mac: bytes

    def mac_input(self, challenge: bytes, ins: int) -> bytes:
        return challenge + bytes([ins]) + self.ciphertext

    @staticmethod
    def context(challenge: bytes) -> bytes:
        return challenge + bytes(4)


def read_directory_command(number: int) -> bytes:
    if not 1 <= number <= MAX_SUB_APPLICATIONS:
        raise ValueError(f"the directory has records 1 to {MAX_SUB_APPLICATIONS}")
    return bytes([0x00, 0xB2, number, (SFI_DIRECTORY << 3) | 0x04, 0x00])


@dataclass(frozen=True)
class DirectoryInfo:
    """The directory's SELECT answer: card serial (diversifies K_CARD), K_CARD's algorithm, sub-applications."""

    serial: bytes
    algorithm: Algorithm
    count: int


def parse_directory_select(rapdu: bytes) -> DirectoryInfo:
    """What a version 2 card announces when its directory is selected (section 9.2)."""
    sw = status_word(rapdu)
    if sw in (0x6A82, 0x6A81, 0x6D00, 0x6E00, 0x6A86):
        raise NotOneCard(f"SELECT of the one-card directory answered {sw:04X}")
    if sw != 0x9000:
        raise CardProtocolError(f"SELECT of the directory answered status {sw:04X}")
    top = parse_tlvs(rapdu[:-2])
    if len(top) != 1 or top[0][0] != 0x6F:
        raise CardProtocolError("directory SELECT response is not a single FCI template (tag 6F)")
    fci = dict(parse_tlvs(top[0][1]))
    if fci.get(0x84) != AID_V2 or 0xA5 not in fci:
        raise CardProtocolError("directory SELECT response names another application or has no A5 template")
    prop = dict(parse_tlvs(fci[0xA5]))
    if len(prop.get(0xC8, b"")) != 1 or prop[0xC8][0] > MAX_SUB_APPLICATIONS:
        raise CardProtocolError("directory FCI tag C8 (number of sub-applications) missing or above 8")
    if len(prop.get(0xC0, b"")) != 8 or len(prop.get(0xC4, b"")) != 1:
        raise CardProtocolError("directory FCI tag C0 (card serial) or C4 (algorithm) missing or of the wrong size")
    try:
        algorithm = Algorithm(prop[0xC4][0])
    except ValueError:
        raise CardProtocolError(f"unknown algorithm ID {prop[0xC4][0]:02X}") from None
    return DirectoryInfo(serial=prop[0xC0], algorithm=algorithm, count=prop[0xC8][0])


def parse_directory_record(rapdu: bytes) -> DirectoryEntry | None:
    """None past the last record (6A83)."""
    if status_word(rapdu) == 0x6A83:
        return None
    if status_word(rapdu) != 0x9000:
        raise CardProtocolError(f"READ RECORD of the directory answered status {status_word(rapdu):04X}")
    top = parse_tlvs(rapdu[:-2])
    if len(top) != 1 or top[0][0] != 0x61:
        raise CardProtocolError("directory record is not one application template (tag 61)")
    fields = dict(parse_tlvs(top[0][1]))
    aid, name, status = fields.get(0x4F, b""), fields.get(0x50), fields.get(0xC2, b"")
    if len(aid) != len(AID_V2) + 4 or not aid.startswith(AID_V2) or name is None or len(status) != 1:
        raise CardProtocolError("directory record lacks a sub-application AID (4F), name (50) or status (C2)")
    return DirectoryEntry(enterprise_id=aid[len(AID_V2) :], name=_text(name, "sub-application name"), status=status[0])


def parse_secured_read(rapdu: bytes, what: str, length: int) -> SecuredReadAnswer:
    data = check_secured(rapdu, what, length + MAC_LEN)
    return SecuredReadAnswer(ciphertext=data[:-MAC_LEN], mac=data[-MAC_LEN:])
