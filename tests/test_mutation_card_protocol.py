"""terminal/card_protocol.py byte for byte: every command, every status word of docs/card-application.md, every field
at a value that tells it apart from its neighbours, every refusal with its exact words. Issue 15."""

import datetime as dt

import pytest

from sam.interface import Algorithm
from terminal import card_protocol as cp

H = bytes.fromhex


def fails(exc_type, message, call, *args):
    """call(*args) raises exactly exc_type (not a subclass, not a parent) with exactly this message."""
    with pytest.raises(Exception) as caught:
        call(*args)
    assert type(caught.value) is exc_type, caught.value
    assert str(caught.value) == message
    return caught.value


# --- status words and short commands ---------------------------------------------------------------------------


def test_status_word():
    assert cp.status_word(H("9000")) == 0x9000
    assert cp.status_word(H("01026A83")) == 0x6A83
    fails(cp.CardProtocolError, "response of 1 byte(s) has no status word", cp.status_word, H("90"))
    fails(cp.CardProtocolError, "response of 0 byte(s) has no status word", cp.status_word, b"")


def test_commands_exact_bytes():
    assert cp.select_command() == H("00A4040009F04F4E45434152440100")
    assert cp.access_read_command(H("0102030405060708"), H("000000000101")) == H(
        "803A00000E010203040506070800000000010100"
    )
    assert cp.read_binary_command(3) == H("00B0830000")
    assert cp.read_binary_command(2, 0x10, 0x20) == H("00B0821020")
    assert cp.get_challenge_command() == H("0084000008")
    assert cp.read_record_command(1) == H("00B2012C2C")
    assert cp.read_record_command(10) == H("00B20A2C2C")
    assert cp.AID == H("F04F4E454341524401") and cp.ACCESS_READ_BODY_LEN == 85 and cp.MAC_LEN == 8


@pytest.mark.parametrize(
    "nonce, tid", [(bytes(7), bytes(6)), (bytes(9), bytes(6)), (bytes(8), bytes(5)), (bytes(8), bytes(7))]
)
def test_access_read_command_refuses_wrong_lengths(nonce, tid):
    fails(ValueError, "ACCESS READ takes an 8-byte nonce and a 6-byte terminal ID", cp.access_read_command, nonce, tid)


@pytest.mark.parametrize("number", [0, 11, -1])
def test_read_record_numbers(number):
    fails(ValueError, "the card keeps records 1 (newest) to 10", cp.read_record_command, number)


# --- TLV -------------------------------------------------------------------------------------------------------


def test_tlvs():
    assert cp.parse_tlvs(b"") == []
    assert cp.parse_tlvs(H("C00100C2020102C300")) == [(0xC0, H("00")), (0xC2, H("0102")), (0xC3, b"")]
    long_ok = bytes([0xC9, 127]) + bytes(range(127))
    assert cp.parse_tlvs(long_ok) == [(0xC9, bytes(range(127)))]
    fails(cp.CardProtocolError, "TLV truncated at offset 3", cp.parse_tlvs, H("C00100C2"))
    fails(
        cp.CardProtocolError,
        "TLV tag C9 has a long-form length, not used by this application",
        cp.parse_tlvs,
        bytes([0xC9, 128]) + bytes(128),
    )
    fails(cp.CardProtocolError, "TLV tag C2 says 3 bytes, 2 present", cp.parse_tlvs, H("C00100C2030102"))


# --- SELECT ----------------------------------------------------------------------------------------------------

ASN8, ENT4 = H("1122334455667788"), H("00010001")


def fci(
    asn=ASN8,
    ent=ENT4,
    status=0,
    key_version=5,
    algorithm=2,
    card_type=1,
    app_version=3,
    extra=b"",
    order=None,
    aid=cp.AID,
    drop=None,
    sizes=None,
):
    items = {
        0xC0: asn,
        0xC1: ent,
        0xC2: bytes([status]),
        0xC3: bytes([key_version]),
        0xC4: bytes([algorithm]),
        0xC5: bytes([card_type]),
        0xC6: bytes([app_version]),
    }
    for tag, value in (sizes or {}).items():
        items[tag] = value
    if drop is not None:
        del items[drop]
    tags = order or list(items)
    prop = b"".join(bytes([t, len(items[t])]) + items[t] for t in tags if t in items) + extra
    body = bytes([0x84, len(aid)]) + aid + bytes([0xA5, len(prop)]) + prop
    return bytes([0x6F, len(body)]) + body + H("9000")


def test_select_reads_every_field_from_its_own_tag():
    info = cp.parse_select(fci())
    # every one-byte field holds a value no other field holds, so reading one from another's tag fails
    assert info == cp.CardInfo(
        asn=H("1122334455667788"),
        enterprise_id=H("00010001"),
        status=0,
        key_version=5,
        algorithm=Algorithm.SM4,
        card_type=1,
        app_version=3,
        purse_expiry=None,
    )
    assert info.asn_hex == "1122334455667788"
    assert cp.parse_select(fci(asn=H("abcdef0102030405"))).asn_hex == "ABCDEF0102030405"


def test_select_accepts_any_order_and_ignores_unknown_tags():
    info = cp.parse_select(fci(order=[0xC6, 0xC5, 0xC4, 0xC3, 0xC2, 0xC1, 0xC0], extra=H("DF03AABBCC")))
    assert (info.status, info.key_version, info.algorithm, info.card_type, info.app_version) == (
        0,
        5,
        Algorithm.SM4,
        1,
        3,
    )


def test_select_with_purse_expiry():
    info = cp.parse_select(fci(algorithm=1, extra=H("C70420271231")))
    assert (info.algorithm, info.purse_expiry) == (Algorithm.AES128, dt.date(2027, 12, 31))
    fails(cp.CardProtocolError, "FCI tag C7 (purse expiry) is not 4 bytes", cp.parse_select, fci(extra=H("C703202712")))
    fails(
        cp.CardProtocolError,
        "purse expiry 20271332 is not a BCD date YYYYMMDD",
        cp.parse_select,
        fci(extra=H("C70420271332")),
    )


def test_select_with_subsidy_purse():
    """card-application.md 5.6: FCI tag C9 04 (after C7) says the card has a subsidy purse, and its expiry; 00000000
    while the subsidy balance is 0 (no expiry to read); CA 02 after it, the last allowance number it loaded."""
    plain = cp.parse_select(fci(extra=H("C70420271231")))
    assert (plain.has_subsidy, plain.subsidy_expiry, plain.last_allowance) == (False, None, 0)
    info = cp.parse_select(fci(extra=H("C70420271231 C90420280630 CA020102")))
    assert (info.has_subsidy, info.subsidy_expiry, info.purse_expiry, info.last_allowance) == (
        True,
        dt.date(2028, 6, 30),
        dt.date(2027, 12, 31),
        0x0102,
    )
    empty = cp.parse_select(fci(extra=H("C70420271231 C90400000000 CA020000")))
    assert (empty.has_subsidy, empty.subsidy_expiry, empty.last_allowance) == (True, None, 0)
    top = cp.parse_select(fci(extra=H("C90420280101 CA02FFFF")))  # C9 without C7
    assert (top.subsidy_expiry, top.last_allowance) == (dt.date(2028, 1, 1), 0xFFFF)
    no_purse = cp.parse_select(fci(extra=H("CA020001")))  # CA without a subsidy purse (C9): ignored
    assert (no_purse.has_subsidy, no_purse.last_allowance) == (False, 0)
    assert cp.parse_select(fci(extra=H("CB0420280101"))).has_subsidy is False  # another tag is not C9
    for bad in ("C903202806", "C9052028063000", "C900"):
        fails(
            cp.CardProtocolError,
            "FCI tag C9 (subsidy expiry) is not 4 bytes",
            cp.parse_select,
            fci(extra=H(bad + "CA020000")),
        )
    for bad in ("", "CA0100", "CA03000001", "CA00"):
        fails(
            cp.CardProtocolError,
            "FCI tag CA (last allowance number) is missing or not 2 bytes",
            cp.parse_select,
            fci(extra=H("C90420280101" + bad)),
        )
    for bad in ("20281332", "00000001", "FFFFFFFF"):
        fails(
            cp.CardProtocolError,
            f"subsidy expiry {bad.lower()} is not a BCD date YYYYMMDD",
            cp.parse_select,
            fci(extra=H("C904" + bad + "CA020000")),
        )


@pytest.mark.parametrize("sw", ["6A82", "6A81", "6D00", "6E00", "6A86"])
def test_select_status_words_meaning_no_application(sw):
    fails(cp.NotOneCard, f"SELECT of the one-card application answered {sw}", cp.parse_select, H(sw))


@pytest.mark.parametrize("sw", ["6700", "6F00", "6985", "9001"])
def test_select_other_status_words(sw):
    fails(cp.CardProtocolError, f"SELECT answered status {sw}", cp.parse_select, H(sw))


def test_select_malformed():
    fails(cp.CardProtocolError, "SELECT response is not a single FCI template (tag 6F)", cp.parse_select, H("9000"))
    fails(
        cp.CardProtocolError,
        "SELECT response is not a single FCI template (tag 6F)",
        cp.parse_select,
        H("6E00") + H("9000"),
    )
    fails(
        cp.CardProtocolError,
        "SELECT response is not a single FCI template (tag 6F)",
        cp.parse_select,
        fci()[:-2] + H("C000") + H("9000"),
    )
    fails(cp.NotOneCard, "SELECT response names another application", cp.parse_select, fci(aid=H("F04F4E454341524402")))
    no_a5 = H("84") + bytes([9]) + cp.AID
    fails(
        cp.CardProtocolError,
        "FCI has no proprietary template (tag A5)",
        cp.parse_select,
        bytes([0x6F, len(no_a5)]) + no_a5 + H("9000"),
    )


@pytest.mark.parametrize("tag, size", [(0xC0, 8), (0xC1, 4), (0xC2, 1), (0xC3, 1), (0xC4, 1), (0xC5, 1), (0xC6, 1)])
def test_select_field_sizes(tag, size):
    message = f"FCI tag {tag:02X} missing or not {size} byte(s)"
    fails(cp.CardProtocolError, message, cp.parse_select, fci(drop=tag))
    fails(cp.CardProtocolError, message, cp.parse_select, fci(sizes={tag: bytes(size + 1)}))
    fails(cp.CardProtocolError, message, cp.parse_select, fci(sizes={tag: bytes(size - 1)}))


@pytest.mark.parametrize("alg", [0, 3, 0xFF])
def test_select_unknown_algorithm(alg):
    fails(cp.CardProtocolError, f"unknown algorithm ID {alg:02X}", cp.parse_select, fci(algorithm=alg))


# --- EF_ACCESS and ACCESS READ ---------------------------------------------------------------------------------


def test_encode_access_file_exact():
    raw = cp.encode_access_file(dt.date(2026, 1, 31), dt.date(2028, 12, 1), {1, 9, 16, 17, 64}, 0xA7)
    assert raw == H("202601312028120180 81 80 00 00 00 00 01".replace(" ", "") + "A7") + bytes(15)
    assert len(raw) == 32


@pytest.mark.parametrize("group", list(range(1, 65)))
def test_every_door_group_round_trips_alone(group):
    raw = cp.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {group}, 0)
    bitmap = raw[8:16]
    assert bitmap[(group - 1) // 8] == 0x80 >> ((group - 1) % 8) and sum(b != 0 for b in bitmap) == 1
    assert cp.parse_door_groups(bitmap) == {group}


def test_group_9_is_the_top_bit_of_the_second_byte():
    assert cp.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {9}, 0)[8:16] == H("0080000000000000")
    assert cp.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {8}, 0)[8:16] == H("0100000000000000")
    assert cp.parse_door_groups(H("FFFFFFFFFFFFFFFF")) == frozenset(range(1, 65))
    assert cp.parse_door_groups(bytes(8)) == frozenset()


@pytest.mark.parametrize(
    "groups, profile, first, last", [({0}, 0, 1, 1), ({65}, 0, 1, 1), ({1}, -1, 1, 1), ({1}, 256, 1, 1), ({1}, 0, 2, 1)]
)
def test_encode_access_file_refuses(groups, profile, first, last):
    fails(
        ValueError,
        "door groups must be 1..64, the time profile 0..255, valid-to not before valid-from",
        cp.encode_access_file,
        dt.date(2026, 1, first),
        dt.date(2026, 1, last),
        groups,
        profile,
    )


def test_encode_access_file_limits_accepted():
    raw = cp.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), {1, 64}, 255)
    assert raw[16] == 255 and raw[8:16] == H("8000000000000001")
    assert cp.encode_access_file(dt.date(2026, 1, 1), dt.date(2026, 1, 1), set(), 0)[16] == 0


CARD = cp.CardInfo(
    asn=H("1122334455667788"),
    enterprise_id=H("00010001"),
    status=1,
    key_version=5,
    algorithm=Algorithm.SM4,
    card_type=1,
    app_version=1,
)
NONCE, TID = H("0102030405060708"), H("000000000101")


ZHANG_WEI = "张伟".encode()


def access_body(status=1, counter=0x01020304, employee=b"E1001", name=ZHANG_WEI):
    access = cp.encode_access_file(dt.date(2026, 1, 2), dt.date(2028, 11, 30), {2, 9, 15}, 6)
    holder = employee.ljust(16, b"\x00") + name.ljust(32, b"\x00")
    return bytes([status]) + access + holder + counter.to_bytes(4, "big")


def test_access_read_every_field():
    body = access_body()
    mac = H("A1A2A3A4A5A6A7A8")
    r = cp.parse_access_read(body + mac + H("9000"), CARD, NONCE, TID)
    assert r == cp.AccessReadResponse(
        status=1,
        rights=cp.AccessRights(
            valid_from=dt.date(2026, 1, 2),
            valid_to=dt.date(2028, 11, 30),
            door_groups=frozenset({2, 9, 15}),
            time_profile=6,
        ),
        holder=cp.Holder(employee_no="E1001", name="张伟"),
        counter=0x01020304,
        mac=mac,
        mac_input=H("1122334455667788") + H("00010001") + H("05") + NONCE + TID + body,
    )
    assert len(r.mac_input) == 112


def test_access_read_counter_limits_and_status_byte():
    r = cp.parse_access_read(access_body(status=7, counter=0xFFFFFFFF) + bytes(8) + H("9000"), CARD, NONCE, TID)
    assert (r.status, r.counter) == (7, 0xFFFFFFFF)
    r = cp.parse_access_read(access_body(counter=256) + bytes(8) + H("9000"), CARD, NONCE, TID)
    assert r.counter == 256


def test_access_read_holder_text_keeps_everything_but_the_zero_padding():
    r = cp.parse_access_read(access_body(employee=b"E10X", name=b"MAX  X") + bytes(8) + H("9000"), CARD, NONCE, TID)
    assert (r.holder.employee_no, r.holder.name) == ("E10X", "MAX  X")


def test_access_read_holder_fields_full_width():
    r = cp.parse_access_read(
        access_body(employee=b"1234567890ABCDEF", name=("x" * 32).encode()) + bytes(8) + H("9000"), CARD, NONCE, TID
    )
    assert (r.holder.employee_no, r.holder.name) == ("1234567890ABCDEF", "x" * 32)


def test_access_read_refusals():
    fails(
        cp.ApplicationInactive,
        "card refused ACCESS READ (6985: application not active or counter exhausted)",
        cp.parse_access_read,
        H("6985"),
        CARD,
        NONCE,
        TID,
    )
    for sw in ("6986", "6700", "6A86"):
        fails(cp.CardProtocolError, f"ACCESS READ answered status {sw}", cp.parse_access_read, H(sw), CARD, NONCE, TID)
    fails(
        cp.CardProtocolError,
        "ACCESS READ returned 92 bytes, expected 93",
        cp.parse_access_read,
        access_body() + bytes(7) + H("9000"),
        CARD,
        NONCE,
        TID,
    )
    fails(
        cp.CardProtocolError,
        "ACCESS READ returned 94 bytes, expected 93",
        cp.parse_access_read,
        access_body() + bytes(9) + H("9000"),
        CARD,
        NONCE,
        TID,
    )
    bad_date = bytearray(access_body())
    bad_date[1:5] = H("20261301")
    fails(
        cp.CardProtocolError,
        "valid-from date 20261301 is not a BCD date YYYYMMDD",
        cp.parse_access_read,
        bytes(bad_date) + bytes(8) + H("9000"),
        CARD,
        NONCE,
        TID,
    )
    bad_date = bytearray(access_body())
    bad_date[5:9] = H("20260230")
    fails(
        cp.CardProtocolError,
        "valid-to date 20260230 is not a BCD date YYYYMMDD",
        cp.parse_access_read,
        bytes(bad_date) + bytes(8) + H("9000"),
        CARD,
        NONCE,
        TID,
    )
    fails(
        cp.CardProtocolError,
        "employee number is not UTF-8",
        cp.parse_access_read,
        access_body(employee=b"\xff\xfe") + bytes(8) + H("9000"),
        CARD,
        NONCE,
        TID,
    )
    fails(
        cp.CardProtocolError,
        "holder name is not UTF-8",
        cp.parse_access_read,
        access_body(name=b"\xc3") + bytes(8) + H("9000"),
        CARD,
        NONCE,
        TID,
    )


# --- administration --------------------------------------------------------------------------------------------


def test_challenge():
    assert cp.parse_challenge(H("0102030405060708") + H("9000")) == H("0102030405060708")
    fails(cp.CardProtocolError, "GET CHALLENGE answered status 6D00", cp.parse_challenge, H("6D00"))
    fails(cp.CardProtocolError, "GET CHALLENGE returned 7 bytes, expected 8", cp.parse_challenge, bytes(7) + H("9000"))
    fails(cp.CardProtocolError, "GET CHALLENGE returned 9 bytes, expected 8", cp.parse_challenge, bytes(9) + H("9000"))


CHALLENGE = H("C1C2C3C4C5C6C7C8")


def test_secured_mac_input_and_command():
    assert cp.secured_mac_input(CHALLENGE, 0xD6, 0x83, 0x04, H("AABB")) == CHALLENGE + H("84D683040A") + H("AABB")
    assert cp.secured_mac_input(CHALLENGE, 0x1E, 0, 0, b"") == CHALLENGE + H("841E000008")
    assert len(cp.secured_mac_input(CHALLENGE, 0xD4, 1, 2, bytes(247))) == 8 + 5 + 247
    mac = H("0102030405060708")
    assert cp.secured_command(0xD6, 0x83, 0x04, H("AABB"), mac) == H("84D683040AAABB0102030405060708")
    assert cp.secured_command(0x1E, 1, 2, b"", mac, le=0) == H("841E010208010203040506070800")
    assert cp.secured_command(0x1E, 1, 2, b"", mac, le=0x10) == H("841E010208010203040506070810")


@pytest.mark.parametrize("challenge, plain", [(bytes(7), b""), (bytes(9), b""), (bytes(8), bytes(248))])
def test_secured_mac_input_refuses(challenge, plain):
    fails(
        ValueError,
        "a secured command takes an 8-byte challenge and at most 247 data bytes",
        cp.secured_mac_input,
        challenge,
        0xD6,
        0,
        0,
        plain,
    )


@pytest.mark.parametrize("mac", [bytes(7), bytes(9)])
def test_secured_command_mac_length(mac):
    fails(ValueError, "the MAC of a secured command is 8 bytes", cp.secured_command, 0xD6, 0, 0, b"", mac)


def test_check_secured_status_words():
    assert cp.check_secured(H("9000"), "PUT KEY") == b""
    assert cp.check_secured(H("0102") + H("9000"), "X", 2) == H("0102")
    fails(
        cp.SecuredCommandRefused,
        "PUT KEY: the card refused the command MAC (6988); nothing changed",
        cp.check_secured,
        H("6988"),
        "PUT KEY",
    )
    fails(
        cp.SecuredCommandRefused,
        "ERASE: the card had no fresh challenge or no admin key (6982); nothing changed",
        cp.check_secured,
        H("6982"),
        "ERASE",
    )
    fails(cp.CardProtocolError, "COMMIT KEYS answered status 6A80", cp.check_secured, H("6A80"), "COMMIT KEYS")
    fails(cp.CardProtocolError, "X returned 1 bytes, expected 0", cp.check_secured, H("01") + H("9000"), "X")
    fails(cp.CardProtocolError, "X returned 1 bytes, expected 2", cp.check_secured, H("01") + H("9000"), "X", 2)


def test_frozen_purse_fields_apart():
    raw = H("010000000100FFFF")  # balance 2^24, offline 256, online 65535
    mac = H("D1D2D3D4D5D6D7D8")
    frozen = cp.parse_frozen_purse(raw + mac + H("9000"))
    assert frozen == cp.FrozenPurse(balance=2**24, offline_counter=256, online_counter=65535, mac=mac, raw=raw)
    assert cp.block_response_mac_input(CHALLENGE, frozen) == CHALLENGE + H("1E") + raw
    fails(
        cp.CardProtocolError,
        "APPLICATION BLOCK returned 15 bytes, expected 16",
        cp.parse_frozen_purse,
        bytes(15) + H("9000"),
    )
    fails(
        cp.SecuredCommandRefused,
        "APPLICATION BLOCK: the card refused the command MAC (6988); nothing changed",
        cp.parse_frozen_purse,
        H("6988"),
    )


def test_frozen_purse_with_the_subsidy_purse_fields_apart():
    """APPLICATION BLOCK P1 01 (card-application.md 8.2): 20 data bytes, then the MAC."""
    raw = H("010000000100FFFF") + H("80010002") + H("20261231") + H("0102") + H("FFFE")
    mac = H("D1D2D3D4D5D6D7D8")
    frozen = cp.parse_frozen_purse(raw + mac + H("9000"), True)
    subsidy = cp.FrozenSubsidy(
        balance=0x80010002, expiry=dt.date(2026, 12, 31), offline_counter=258, online_counter=65534
    )
    assert frozen == cp.FrozenPurse(
        balance=2**24, offline_counter=256, online_counter=65535, mac=mac, raw=raw, subsidy=subsidy
    )
    assert cp.block_response_mac_input(CHALLENGE, frozen) == CHALLENGE + H("1E") + raw
    empty = cp.parse_frozen_purse(raw[:12] + bytes(4) + raw[16:] + mac + H("9000"), True)
    assert empty.subsidy == cp.FrozenSubsidy(0x80010002, None, 258, 65534)  # 00000000: an empty purse has no expiry
    assert cp.parse_frozen_purse(raw[:8] + mac + H("9000")).subsidy is None
    assert cp.parse_frozen_purse(raw[:8] + mac + H("9000"), False).subsidy is None
    fails(
        cp.CardProtocolError,
        "APPLICATION BLOCK returned 16 bytes, expected 28",
        cp.parse_frozen_purse,
        raw[:8] + mac + H("9000"),
        True,
    )
    fails(
        cp.CardProtocolError,
        "APPLICATION BLOCK returned 28 bytes, expected 16",
        cp.parse_frozen_purse,
        raw + mac + H("9000"),
    )
    bad = raw[:12] + H("20261331") + raw[16:]
    fails(
        cp.CardProtocolError,
        "frozen subsidy expiry 20261331 is not a BCD date YYYYMMDD",
        cp.parse_frozen_purse,
        bad + mac + H("9000"),
        True,
    )


RECORD = (
    H("06")
    + H("0100")
    + H("FFFFFFFF")
    + H("000000000101")
    + H("0A010203")
    + H("20261123")
    + H("101112")
    + H("01000000")
    + H("E1E2E3E4E5E6E7E8")
    + H("F1F2F3F4F5F6F7F8")
)


def test_record_every_field():
    assert len(RECORD) == 44
    rec = cp.parse_record(RECORD + H("9000"))
    assert rec == cp.TransactionRecord(
        tx_type=6,
        counter=256,
        amount=0xFFFFFFFF,
        terminal_id=H("000000000101"),
        tsn=0x0A010203,
        date=H("20261123"),
        time=H("101112"),
        balance_after=2**24,
        proof=H("E1E2E3E4E5E6E7E8"),
        tac=H("F1F2F3F4F5F6F7F8"),
    )
    assert rec.to_json() == {
        "type": 6,
        "counter": 256,
        "amount": 4294967295,
        "terminal": "000000000101",
        "tsn": 167838211,
        "date": "20261123",
        "time": "101112",
        "balance_after": 16777216,
        "proof": "e1e2e3e4e5e6e7e8",
        "tac": "f1f2f3f4f5f6f7f8",
    }


def test_record_status_words():
    assert cp.parse_record(H("6A83")) is None
    fails(cp.CardProtocolError, "READ RECORD answered status 6A81", cp.parse_record, H("6A81"))
    fails(cp.CardProtocolError, "READ RECORD returned 43 bytes, expected 44", cp.parse_record, RECORD[:-1] + H("9000"))
    fails(
        cp.CardProtocolError,
        "READ RECORD returned 45 bytes, expected 44",
        cp.parse_record,
        RECORD + H("00") + H("9000"),
    )


def test_read_binary():
    assert cp.parse_read_binary(H("010203") + H("9000"), "EF_PURSE", 3) == H("010203")
    fails(
        cp.CardProtocolError,
        "READ BINARY of EF_PURSE answered status 6B00",
        cp.parse_read_binary,
        H("6B00"),
        "EF_PURSE",
        12,
    )
    fails(
        cp.CardProtocolError,
        "READ BINARY of EF_PURSE returned 11 bytes, expected 12",
        cp.parse_read_binary,
        bytes(11) + H("9000"),
        "EF_PURSE",
        12,
    )


def test_constants_of_the_spec():
    assert cp.KEY_IDS == {"access": 0x01, "update": 0x02, "purchase": 0x03, "load": 0x04, "tac": 0x05}
    assert (cp.INS_PUT_KEY, cp.INS_COMMIT_KEYS, cp.INS_UPDATE_BINARY, cp.INS_BLOCK, cp.INS_ERASE) == (
        0xD4,
        0xD8,
        0xD6,
        0x1E,
        0x0E,
    )
    assert (cp.SFI_APP, cp.SFI_HOLDER, cp.SFI_ACCESS, cp.SFI_PURSE, cp.RECORD_LEN) == (1, 2, 3, 4, 44)
    assert cp.STATUS_NAMES == {
        0: "not issued (transport keys)",
        1: "active",
        2: "voided",
        3: "locked (reported lost)",
    }
    assert cp.CARD_TYPES == {0x01: "RFID-SIM", 0x02: "IC card"}


def test_identity_is_the_announced_keys_unless_an_intent_names_others():
    """A transaction finished on a later tap derives its keys at the version and algorithm its intent logged (the
    card may have been re-keyed or may announce another algorithm since): each given value is used, each omitted one
    is the card's."""
    from sam.interface import CardIdentity

    assert CARD.identity() == CardIdentity(CARD.asn, CARD.enterprise_id, 5, Algorithm.SM4)
    assert CARD.identity(4) == CardIdentity(CARD.asn, CARD.enterprise_id, 4, Algorithm.SM4)
    assert CARD.identity(algorithm=Algorithm.AES128) == CardIdentity(CARD.asn, CARD.enterprise_id, 5, Algorithm.AES128)
    assert CARD.identity(0, Algorithm.AES128) == CardIdentity(CARD.asn, CARD.enterprise_id, 0, Algorithm.AES128)
