"""terminal/card_protocol.py, version 2 (docs/card-application.md section 9) byte for byte: the directory SELECT and
READ RECORD, sub-application SELECT, the version 2 ACCESS READ envelope and the secured reads of 9.5, with the exact
bytes of the worked example (9.10), every refusal with its exact words, and the boundaries (names of 0/1/16/17 bytes,
8 entries, status values, wrong tags and lengths, trailing bytes). Issue 15."""

import datetime as dt

import pytest

from sam.interface import Algorithm
from terminal import card_protocol as cp

H = bytes.fromhex
OK = H("9000")


def fails(exc_type, message, call, *args):
    """call(*args) raises exactly exc_type (not a subclass, not a parent) with exactly this message."""
    with pytest.raises(Exception) as caught:
        call(*args)
    assert type(caught.value) is exc_type, caught.value
    assert str(caught.value) == message
    return caught.value


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag, len(value)]) + value


# --- the worked example of section 9.10 ------------------------------------------------------------------------

DIRECTORY_SELECT = H(
    "6F 20 84 09 F0 4F 4E 45 43 41 52 44 02 A5 13 C0 08 0C 0C 0C 0C 0C 0C 0C 0C C4 01 01 C6 01 02 C8 01 02 90 00"
)
RECORD_1 = H("61 1A 4F 0D F0 4F 4E 45 43 41 52 44 02 00 01 00 01 50 06 4F 66 66 69 63 65 C2 01 01 90 00")
RECORD_2 = H("61 1D 4F 0D F0 4F 4E 45 43 41 52 44 02 00 02 00 02 50 09 43 6F 6D 6D 75 6E 69 74 79 C2 01 01 90 00")
SELECT_00010001 = H(
    "6F 36 84 0D F0 4F 4E 45 43 41 52 44 02 00 01 00 01 A5 25 C0 08 11 22 33 44 55 66 77 88 C1 04 00 01 00 01"
    " C2 01 01 C3 01 01 C4 01 01 C5 01 01 C6 01 02 C7 04 20 27 12 31 90 00"
)
ACCESS_READ_00010001 = H(
    "01 C0 C7 4F EA E2 5E C8 44 9E FD E8 A3 C8 16 D0 A1 09 34 1B 09 1D 6A 7B"
    " 96 74 77 E7 AE C2 F7 06 95 85 1D 50 C5 2E 78 18 6D C9 C5 52 BE 52 50 4E"
    " 56 0E 8C BE 6F 75 C4 D4 DB 60 DD EF 98 BE 42 E0 EB DB 9B 9F B6 BD 87 3D"
    " FB CD 7D 43 3D BF C1 D0 C6 00 00 00 01 3A 97 98 D7 CC D8 29 34 90 00"
)
NONCE = H("0102030405060708")
TERMINAL = H("000000000001")


def test_constants_of_section_9():
    assert cp.AID_V2 == H("F04F4E454341524402")
    assert cp.SFI_DIRECTORY == 0x1E
    assert cp.MAX_SUB_APPLICATIONS == 8
    assert cp.NAME_MAX == 16
    assert cp.ISSUER_ENTERPRISE == H("00000000")
    assert (cp.INS_READ_BINARY, cp.INS_READ_RECORD, cp.INS_GET_BALANCE, cp.INS_DELETE, cp.INS_CREATE) == (
        0xB0,
        0xB2,
        0x5C,
        0xE4,
        0xE0,
    )


def test_sub_application_aid_and_its_select_command():
    assert cp.sub_application_aid(H("00010001")) == H("F04F4E45434152440200010001")
    assert cp.select_command(cp.sub_application_aid(H("00010001"))) == H("00A404000DF04F4E4543415244020001000100")
    assert cp.select_command(cp.AID_V2) == H("00A4040009F04F4E45434152440200")
    for bad in (H("000100"), H("0001000100"), b""):
        fails(ValueError, "enterprise ID must be 4 bytes", cp.sub_application_aid, bad)


def test_the_directory_select_of_the_worked_example():
    info = cp.parse_directory_select(DIRECTORY_SELECT)
    assert info == cp.DirectoryInfo(serial=H("0C0C0C0C0C0C0C0C"), algorithm=Algorithm.AES128, count=2)
    assert type(info.algorithm) is Algorithm


def test_the_directory_records_of_the_worked_example():
    assert cp.read_directory_command(1) == H("00B201F400")
    assert cp.read_directory_command(2) == H("00B202F400")
    assert cp.read_directory_command(8) == H("00B208F400")
    assert cp.parse_directory_record(RECORD_1) == cp.DirectoryEntry(H("00010001"), "Office", cp.STATUS_ACTIVE)
    assert cp.parse_directory_record(RECORD_2) == cp.DirectoryEntry(H("00020002"), "Community", cp.STATUS_ACTIVE)
    assert cp.parse_directory_record(H("6A83")) is None


def test_the_sub_application_select_of_the_worked_example():
    card = cp.parse_select(SELECT_00010001, cp.sub_application_aid(H("00010001")))
    assert card == cp.CardInfo(
        asn=H("1122334455667788"),
        enterprise_id=H("00010001"),
        status=1,
        key_version=1,
        algorithm=Algorithm.AES128,
        card_type=1,
        app_version=2,
        purse_expiry=dt.date(2027, 12, 31),
    )
    assert card.private
    # aid None: the answer may name a sub-application
    assert cp.parse_select(SELECT_00010001) == card


def test_the_access_read_envelope_of_the_worked_example():
    card = cp.parse_select(SELECT_00010001)
    rapdu = ACCESS_READ_00010001
    envelope = cp.split_access_read(rapdu, card, NONCE, TERMINAL)
    assert envelope.status == 1
    assert envelope.private == rapdu[1:81]
    assert envelope.counter == 1
    assert envelope.mac == H("3A9798D7CCD82934")
    assert envelope.mac_input == H("1122334455667788 00010001 01") + NONCE + TERMINAL + rapdu[:85]
    # context = terminal nonce || access counter after the read (9.4)
    assert envelope.context == NONCE + H("00000001")


def test_envelope_context_tells_nonce_and_counter_apart():
    card = cp.parse_select(SELECT_00010001)
    body = bytes([1]) + bytes(range(80)) + H("01020304")
    envelope = cp.split_access_read(body + bytes(8) + OK, card, H("A1A2A3A4A5A6A7A8"), H("B1B2B3B4B5B6"))
    assert envelope.counter == 0x01020304
    assert envelope.context == H("A1A2A3A4A5A6A7A8 01020304")
    assert envelope.private == bytes(range(80))


def test_open_access_read_with_deciphered_private_part():
    card = cp.parse_select(SELECT_00010001)
    envelope = cp.split_access_read(ACCESS_READ_00010001, card, NONCE, TERMINAL)
    access = cp.encode_access_file(dt.date(2026, 1, 1), dt.date(2028, 12, 31), [1, 3, 64], 7)
    holder = b"E1001".ljust(16, b"\x00") + b"Zhang Wei".ljust(32, b"\x00")
    opened = cp.open_access_read(envelope, access + holder)
    assert opened.status == 1
    assert opened.rights == cp.AccessRights(dt.date(2026, 1, 1), dt.date(2028, 12, 31), frozenset({1, 3, 64}), 7)
    assert opened.holder == cp.Holder("E1001", "Zhang Wei")
    assert opened.counter == 1
    assert opened.mac == envelope.mac
    assert opened.mac_input == envelope.mac_input
    for size in (79, 81, 0):
        fails(
            cp.CardProtocolError,
            f"ACCESS READ private data is {size} bytes, expected 80",
            cp.open_access_read,
            envelope,
            bytes(size),
        )


def test_access_read_refusals():
    card = cp.parse_select(SELECT_00010001)
    fails(
        cp.ApplicationInactive,
        "card refused ACCESS READ (6985: application not active or counter exhausted)",
        cp.split_access_read,
        H("6985"),
        card,
        NONCE,
        TERMINAL,
    )
    fails(
        cp.CardProtocolError, "ACCESS READ returned 92 bytes, expected 93", cp.split_access_read,
        ACCESS_READ_00010001[1:], card, NONCE, TERMINAL,
    )  # fmt: skip
    fails(
        cp.CardProtocolError, "ACCESS READ answered status 6A82", cp.split_access_read,
        H("6A82"), card, NONCE, TERMINAL,
    )  # fmt: skip


# --- directory SELECT: every refusal ---------------------------------------------------------------------------


def directory_select(prop: bytes, named: bytes = cp.AID_V2, extra: bytes = b"") -> bytes:
    fci = tlv(0x84, named) + tlv(0xA5, prop) + extra
    return tlv(0x6F, fci) + OK


PROP = tlv(0xC0, H("0102030405060708")) + tlv(0xC4, H("02")) + tlv(0xC6, H("02")) + tlv(0xC8, H("08"))


def test_directory_select_boundaries():
    info = cp.parse_directory_select(directory_select(PROP))
    assert info == cp.DirectoryInfo(serial=H("0102030405060708"), algorithm=Algorithm.SM4, count=8)
    zero = tlv(0xC0, bytes(8)) + tlv(0xC4, H("01")) + tlv(0xC8, H("00"))
    assert cp.parse_directory_select(directory_select(zero)).count == 0
    one = tlv(0xC8, H("01")) + tlv(0xC0, bytes(8)) + tlv(0xC4, H("01"))
    assert cp.parse_directory_select(directory_select(one)).count == 1


@pytest.mark.parametrize("sw", ["6A82", "6A81", "6D00", "6E00", "6A86"])
def test_directory_select_of_a_card_without_version_2(sw):
    fails(cp.NotOneCard, f"SELECT of the one-card directory answered {sw}", cp.parse_directory_select, H(sw))


@pytest.mark.parametrize("sw", ["6A88", "6283", "9001", "6999"])
def test_directory_select_other_status(sw):
    fails(cp.CardProtocolError, f"SELECT of the directory answered status {sw}", cp.parse_directory_select, H(sw))


def test_directory_select_refusals():
    not_fci = "directory SELECT response is not a single FCI template (tag 6F)"
    fails(cp.CardProtocolError, not_fci, cp.parse_directory_select, OK)
    fails(cp.CardProtocolError, not_fci, cp.parse_directory_select, tlv(0x6E, DIRECTORY_SELECT[2:-2]) + OK)
    fails(cp.CardProtocolError, not_fci, cp.parse_directory_select, DIRECTORY_SELECT[:-2] + H("9F00") + OK)
    fails(
        cp.CardProtocolError,
        "TLV truncated at offset 34",
        cp.parse_directory_select,
        DIRECTORY_SELECT[:-2] + H("00") + OK,
    )
    other = "directory SELECT response names another application or has no A5 template"
    fails(cp.CardProtocolError, other, cp.parse_directory_select, directory_select(PROP, cp.AID))
    fails(cp.CardProtocolError, other, cp.parse_directory_select, directory_select(PROP, cp.AID_V2 + H("00010001")))
    fails(cp.CardProtocolError, other, cp.parse_directory_select, tlv(0x6F, tlv(0x84, cp.AID_V2)) + OK)
    fails(cp.CardProtocolError, other, cp.parse_directory_select, tlv(0x6F, tlv(0xA5, PROP)) + OK)
    count = "directory FCI tag C8 (number of sub-applications) missing or above 8"
    base = tlv(0xC0, bytes(8)) + tlv(0xC4, H("01"))
    fails(cp.CardProtocolError, count, cp.parse_directory_select, directory_select(base))
    fails(cp.CardProtocolError, count, cp.parse_directory_select, directory_select(base + tlv(0xC8, H("09"))))
    fails(cp.CardProtocolError, count, cp.parse_directory_select, directory_select(base + tlv(0xC8, H("FF"))))
    fails(cp.CardProtocolError, count, cp.parse_directory_select, directory_select(base + tlv(0xC8, b"")))
    fails(cp.CardProtocolError, count, cp.parse_directory_select, directory_select(base + tlv(0xC8, H("0001"))))
    sizes = "directory FCI tag C0 (card serial) or C4 (algorithm) missing or of the wrong size"
    c8 = tlv(0xC8, H("02"))
    for prop in (
        c8 + tlv(0xC4, H("01")),
        c8 + tlv(0xC0, bytes(7)) + tlv(0xC4, H("01")),
        c8 + tlv(0xC0, bytes(9)) + tlv(0xC4, H("01")),
        c8 + tlv(0xC0, bytes(8)),
        c8 + tlv(0xC0, bytes(8)) + tlv(0xC4, b""),
        c8 + tlv(0xC0, bytes(8)) + tlv(0xC4, H("0101")),
    ):
        fails(cp.CardProtocolError, sizes, cp.parse_directory_select, directory_select(prop))
    for alg in ("00", "03", "FF"):
        prop = c8 + tlv(0xC0, bytes(8)) + tlv(0xC4, H(alg))
        fails(cp.CardProtocolError, f"unknown algorithm ID {alg}", cp.parse_directory_select, directory_select(prop))


# --- directory READ RECORD: every refusal, names of 0/1/16/17 bytes, statuses ------------------------------------


def record(aid: bytes = cp.AID_V2 + H("00030003"), name: bytes = b"Shop", status: bytes = H("01")) -> bytes:
    return tlv(0x61, tlv(0x4F, aid) + tlv(0x50, name) + tlv(0xC2, status)) + OK


def test_read_directory_command_bounds():
    for bad in (0, 9, -1, 10):
        fails(ValueError, "the directory has records 1 to 8", cp.read_directory_command, bad)
    assert [cp.read_directory_command(n)[2] for n in range(1, 9)] == list(range(1, 9))


@pytest.mark.parametrize(
    "name, text",
    [(b"", ""), (b"A", "A"), (b"0123456789ABCDEF", "0123456789ABCDEF"), (b"0123456789ABCDEFG", "0123456789ABCDEFG")],
)
def test_directory_record_names(name, text):
    # the parser reads what the card holds; the 16-byte limit is the card's (CREATE refuses longer names)
    assert cp.parse_directory_record(record(name=name)) == cp.DirectoryEntry(H("00030003"), text, 1)


def test_directory_record_utf8_and_padding():
    assert cp.parse_directory_record(record(name="张伟".encode())).name == "张伟"
    assert cp.parse_directory_record(record(name=b"Shop\x00\x00")).name == "Shop"
    fails(cp.CardProtocolError, "sub-application name is not UTF-8", cp.parse_directory_record, record(name=H("FF41")))


@pytest.mark.parametrize("status", [0x00, 0x01, 0x02, 0xFF])
def test_directory_record_statuses(status):
    entry = cp.parse_directory_record(record(status=bytes([status])))
    assert entry is not None and entry.status == status


def test_directory_record_fields_in_any_order_and_ids_kept_apart():
    body = tlv(0xC2, H("02")) + tlv(0x50, b"Garden") + tlv(0x4F, cp.AID_V2 + H("12345678"))
    assert cp.parse_directory_record(tlv(0x61, body) + OK) == cp.DirectoryEntry(H("12345678"), "Garden", 2)


@pytest.mark.parametrize("sw", ["6A86", "6700", "6982", "6A82", "9001", "6A84"])
def test_directory_record_status_words(sw):
    fails(
        cp.CardProtocolError,
        f"READ RECORD of the directory answered status {sw}",
        cp.parse_directory_record,
        H(sw),
    )


def test_directory_record_refusals():
    template = "directory record is not one application template (tag 61)"
    fails(cp.CardProtocolError, template, cp.parse_directory_record, OK)
    fails(cp.CardProtocolError, template, cp.parse_directory_record, b"\x70" + RECORD_1[1:])
    fails(cp.CardProtocolError, template, cp.parse_directory_record, RECORD_1[:-2] + H("6100") + OK)
    fails(cp.CardProtocolError, "TLV truncated at offset 28", cp.parse_directory_record, RECORD_1[:-2] + H("61") + OK)
    fails(
        cp.CardProtocolError, "TLV tag 61 says 26 bytes, 25 present", cp.parse_directory_record,
        RECORD_1[:-3] + OK,
    )  # fmt: skip
    lacks = "directory record lacks a sub-application AID (4F), name (50) or status (C2)"
    for bad in (
        record(aid=cp.AID_V2 + H("000300")),
        record(aid=cp.AID_V2 + H("0003000300")),
        record(aid=cp.AID + H("00030003")),
        record(aid=H("F04F4E454341524403") + H("00030003")),
        record(aid=b""),
        record(status=b""),
        record(status=H("0101")),
        tlv(0x61, tlv(0x4F, cp.AID_V2 + H("00030003")) + tlv(0xC2, H("01"))) + OK,
        tlv(0x61, tlv(0x50, b"Shop") + tlv(0xC2, H("01"))) + OK,
        tlv(0x61, tlv(0x4F, cp.AID_V2 + H("00030003")) + tlv(0x50, b"Shop")) + OK,
    ):
        fails(cp.CardProtocolError, lacks, cp.parse_directory_record, bad)


def test_eight_directory_entries():
    entries = []
    for n in range(1, 9):
        eid = bytes([0, n, 0, n])
        entry = cp.parse_directory_record(record(aid=cp.sub_application_aid(eid), name=f"E{n}".encode()))
        entries.append(entry)
    assert [e.enterprise_id for e in entries] == [bytes([0, n, 0, n]) for n in range(1, 9)]
    assert [e.name for e in entries] == [f"E{n}" for n in range(1, 9)]


# --- sub-application SELECT (parse_select, version 2 tags) -------------------------------------------------------


def fci(named: bytes, enterprise: bytes, extra: bytes = b"") -> bytes:
    prop = (
        tlv(0xC0, H("99AABBCCDDEEFF00"))
        + tlv(0xC1, enterprise)
        + tlv(0xC2, H("01"))
        + tlv(0xC3, H("03"))
        + tlv(0xC4, H("02"))
        + tlv(0xC5, H("02"))
        + tlv(0xC6, H("02"))
        + extra
    )
    return tlv(0x6F, tlv(0x84, named) + tlv(0xA5, prop)) + OK


def test_sub_application_select_without_purse():
    aid = cp.sub_application_aid(H("00020002"))
    card = cp.parse_select(fci(aid, H("00020002")), aid)
    assert card == cp.CardInfo(H("99AABBCCDDEEFF00"), H("00020002"), 1, 3, Algorithm.SM4, 2, 2, None)
    assert cp.parse_select(fci(aid, H("00020002"))) == card


def test_sub_application_select_refusals():
    aid = cp.sub_application_aid(H("00020002"))
    fails(
        cp.NoSubApplication,
        "the card has one-card sub-applications, none for this enterprise (6A88)",
        cp.parse_select,
        H("6A88"),
        aid,
    )
    fails(
        cp.NoSubApplication,
        "the card has one-card sub-applications, none for this enterprise (6A88)",
        cp.parse_select,
        H("6A88"),
    )
    fails(
        cp.NoSubApplication,
        "the card has one-card sub-applications, none for this enterprise (6A88)",
        cp.parse_select,
        H("6A88"),
        cp.AID_V2,
    )
    # a version 1 SELECT answered 6A 88 is no version 2 refusal
    fails(cp.CardProtocolError, "SELECT answered status 6A88", cp.parse_select, H("6A88"), cp.AID)
    other = "SELECT response names another application"
    # the asked-for AID must be named exactly
    fails(cp.NotOneCard, other, cp.parse_select, fci(cp.sub_application_aid(H("00030003")), H("00030003")), aid)
    # aid None: only AID or a 13-byte AID_V2 || E
    fails(cp.NotOneCard, other, cp.parse_select, fci(cp.AID_V2, H("00020002")))
    fails(cp.NotOneCard, other, cp.parse_select, fci(aid + H("00"), H("00020002")))
    fails(cp.NotOneCard, other, cp.parse_select, fci(aid[:-1], H("00020002")))
    fails(cp.NotOneCard, other, cp.parse_select, fci(H("F04F4E45434152440300020002"), H("00020002")))
    wrong = "the sub-application names another enterprise than its AID"
    fails(cp.CardProtocolError, wrong, cp.parse_select, fci(aid, H("00020003")), aid)
    fails(cp.CardProtocolError, wrong, cp.parse_select, fci(aid, H("00020003")))
    fails(cp.CardProtocolError, wrong, cp.parse_select, fci(aid, H("00000000")))


def test_version_1_select_is_not_checked_against_an_aid_enterprise():
    card = cp.parse_select(fci(cp.AID, H("00020003")))
    assert card.enterprise_id == H("00020003") and card.app_version == 2
    assert cp.parse_select(fci(cp.AID, H("00020003")), cp.AID) == card


# --- secured reads (9.5) ----------------------------------------------------------------------------------------


def test_secured_read_answer():
    ciphertext = bytes(range(1, 45))
    mac = H("A1A2A3A4A5A6A7A8")
    answer = cp.parse_secured_read(ciphertext + mac + OK, "READ RECORD 1", 44)
    assert answer == cp.SecuredReadAnswer(ciphertext=ciphertext, mac=mac)
    challenge = H("C1C2C3C4C5C6C7C8")
    assert answer.mac_input(challenge, cp.INS_READ_RECORD) == challenge + H("B2") + ciphertext
    assert answer.mac_input(challenge, cp.INS_GET_BALANCE) == challenge + H("5C") + ciphertext
    assert cp.SecuredReadAnswer.context(challenge) == challenge + H("00000000")
    assert answer.context(challenge) == H("C1C2C3C4C5C6C7C8 00000000")
    balance = cp.parse_secured_read(H("0102030405060708") + mac + OK, "GET BALANCE", 8)
    assert balance.ciphertext == H("0102030405060708") and balance.mac == mac


def test_secured_read_refusals():
    fails(
        cp.SecuredCommandRefused,
        "READ BINARY: the card refused the command MAC (6988); nothing changed",
        cp.parse_secured_read,
        H("6988"),
        "READ BINARY",
        32,
    )
    fails(
        cp.SecuredCommandRefused,
        "GET BALANCE: the card had no fresh challenge or no admin key (6982); nothing changed",
        cp.parse_secured_read,
        H("6982"),
        "GET BALANCE",
        8,
    )
    fails(cp.CardProtocolError, "READ RECORD answered status 6A83", cp.parse_secured_read, H("6A83"), "READ RECORD", 44)
    fails(
        cp.CardProtocolError, "GET BALANCE returned 15 bytes, expected 16", cp.parse_secured_read,
        bytes(15) + OK, "GET BALANCE", 8,
    )  # fmt: skip
    fails(
        cp.CardProtocolError, "GET BALANCE returned 17 bytes, expected 16", cp.parse_secured_read,
        bytes(17) + OK, "GET BALANCE", 8,
    )  # fmt: skip
