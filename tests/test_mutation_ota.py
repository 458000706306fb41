"""Pins of common/ota.py that the mutation run asked for: every refusal's message, PoR status and the TAR and
counter it carries, and each boundary (counter, key version, CPL, padding, compact response)."""

from __future__ import annotations

import pytest

from common import ota

KEYS = ota.OtaKeys(bytes(range(16)), bytes(range(16, 32)), 1)
TAR = ota.ONECARD_TAR
CLEAR = ota.Spi(ciphered=False, por_ciphered=False)


def raw_command(cntr: int, data: bytes, pcntr: int, keys: ota.OtaKeys = KEYS, spi: ota.Spi = CLEAR) -> bytes:
    """An unciphered command packet with any PCNTR, correctly checksummed (what a buggy server could send)."""
    head = spi.to_bytes() + bytes([0x12, 0x12]) + TAR
    cpl, chl = 1 + ota.CHL_CC + len(data), ota.CHL_CC
    cp = cntr.to_bytes(5) + bytes([pcntr])
    cc = ota.cmac8(keys.kid, cpl.to_bytes(2) + bytes([chl]) + head + cp + data)
    return cpl.to_bytes(2) + bytes([chl]) + head + cp + cc + data


def refused(pkt: bytes, status: ota.PorStatus, match: str, min_spi: ota.Spi = ota.SPI_ONECARD) -> ota.OtaRefused:
    with pytest.raises(ota.OtaRefused, match=match) as e:
        ota.open_command(pkt, KEYS, min_spi)
    assert e.value.status is status and e.value.tar == TAR
    return e.value


def test_build_command_boundaries_and_messages():
    with pytest.raises(ota.OtaError, match=r"^TAR is 2 bytes, expected 3$"):
        ota.build_command(KEYS, b"\x00\x00", 1, b"")
    assert ota.open_command(ota.build_command(KEYS, TAR, ota.MAX_CNTR, b"\x80\x5c\x00\x02"), KEYS).cntr == ota.MAX_CNTR
    with pytest.raises(ota.OtaError, match=r"^counter 1099511627776 does not fit in 5 bytes$"):
        ota.build_command(KEYS, TAR, ota.MAX_CNTR + 1, b"")
    with pytest.raises(ota.OtaError, match="does not fit"):
        ota.build_command(KEYS, TAR, -1, b"")
    fits = bytes(0xFFFF - 1 - ota.CHL_CC)
    pkt = ota.build_command(KEYS, TAR, 1, fits, CLEAR)
    assert pkt[:2] == b"\xff\xff" and ota.open_command(pkt, KEYS, CLEAR).data == fits
    with pytest.raises(ota.OtaError, match=r"^command packet longer than 65535 bytes$"):
        ota.build_command(KEYS, TAR, 1, fits + b"\x00", CLEAR)


def test_ciphered_padding_fills_exactly_to_the_block():
    # CNTR(5) PCNTR(1) CC(8) + data: 14 + 2 = 16 -> no padding; 14 + 3 -> 15 bytes of padding.
    assert ota.cbc_decrypt(KEYS.kic, ota.build_command(KEYS, TAR, 1, b"ab")[10:])[5] == 0
    assert ota.cbc_decrypt(KEYS.kic, ota.build_command(KEYS, TAR, 1, b"abc")[10:])[5] == 15
    por = ota.build_por(KEYS, ota.SPI_ONECARD, TAR, 1, ota.PorStatus.OK, b"a")  # 5+1+1+8+1 = 16
    assert len(por) == 3 + 2 + 1 + 3 + 16 and ota.cbc_decrypt(KEYS.kic, por[9:])[5] == 0
    assert ota.cbc_decrypt(KEYS.kic, ota.build_por(KEYS, ota.SPI_ONECARD, TAR, 1, ota.PorStatus.OK, b"ab")[9:])[5] == 15


def test_key_identifier_boundaries_and_messages():
    assert ota.key_identifier(15) == 0xF2 and ota.key_version(0xF2, "KIc") == 15
    with pytest.raises(ota.OtaError, match=r"^OTA key version 16 is outside 1\.\.15$"):
        ota.key_identifier(16)
    with pytest.raises(ota.OtaError, match=r"^KIc 11 is not AES with a key version 1\.\.15$"):
        ota.key_version(0x11, "KIc")


def test_open_command_fields():
    c = ota.open_command(ota.build_command(KEYS, TAR, 3, b"\x80\x5c\x00\x02"), KEYS)
    assert (c.kic, c.kid, c.tar, c.cntr) == (0x12, 0x12, TAR, 3)


def test_refusal_messages_status_tar_and_counter():
    e = refused(
        ota.build_command(KEYS, TAR, 4, b"x", CLEAR),
        ota.PorStatus.INSUFFICIENT_SECURITY_LEVEL,
        r"^SPI 1229 is below Spi\(",
    )
    assert e.cntr is None
    other_version = ota.OtaKeys(KEYS.kic, KEYS.kid, 2)
    refused(
        ota.build_command(other_version, TAR, 4, b"x"),
        ota.PorStatus.UNIDENTIFIED_SECURITY_ERROR,
        r"^no OTA keys of version 2/2$",
    )
    # Only the KID names another version (the packet is not ciphered): still refused.
    kid_only = bytearray(ota.build_command(KEYS, TAR, 4, b"x", CLEAR))
    kid_only[6] = 0x22
    refused(bytes(kid_only), ota.PorStatus.UNIDENTIFIED_SECURITY_ERROR, r"^no OTA keys of version 1/2$", CLEAR)
    kic_only = bytearray(ota.build_command(KEYS, TAR, 4, b"x"))
    kic_only[5] = 0x32
    refused(bytes(kic_only), ota.PorStatus.UNIDENTIFIED_SECURITY_ERROR, r"^no OTA keys of version 3/1$")
    with pytest.raises(ota.OtaError, match=r"^KIc 13 is not AES"):
        bad = bytearray(ota.build_command(KEYS, TAR, 4, b"x"))
        bad[5] = 0x13
        ota.open_command(bytes(bad), KEYS)
    with pytest.raises(ota.OtaError, match=r"^KID 13 is not AES"):
        bad = bytearray(ota.build_command(KEYS, TAR, 4, b"x"))
        bad[6] = 0x13
        ota.open_command(bytes(bad), KEYS)
    pkt = ota.build_command(KEYS, TAR, 4, b"x")
    cut = (len(pkt) - 3).to_bytes(2) + pkt[2:-1]
    e = refused(cut, ota.PorStatus.CIPHERING_ERROR, r"^ciphered part is 15 bytes, not whole blocks$")
    wrong_mac = ota.build_command(ota.OtaKeys(KEYS.kic, bytes(16)), TAR, 9, b"x")
    e = refused(wrong_mac, ota.PorStatus.RC_CC_DS_FAILED, r"^cryptographic checksum does not verify$")
    assert e.cntr == 9


def test_padding_rules():
    # PCNTR equal to the whole (zero) data: allowed, the data is empty.
    assert ota.open_command(raw_command(1, bytes(4), 4), KEYS, CLEAR).data == b""
    assert ota.open_command(raw_command(1, b"\x80\x00\x00", 2), KEYS, CLEAR).data == b"\x80"
    e = refused(
        raw_command(2, bytes(4), 5), ota.PorStatus.CIPHERING_ERROR, r"^PCNTR 5 does not match the padding$", CLEAR
    )
    assert e.cntr == 2
    refused(raw_command(2, b"\x00\x01", 1), ota.PorStatus.CIPHERING_ERROR, "PCNTR 1", CLEAR)
    # Ciphered: PCNTR 15 is the most a block can need; 16 is refused.
    for pcntr, ok in ((15, True), (16, False)):
        data = bytes(18)  # CNTR PCNTR CC (14) + 18 = 32 bytes: whole blocks
        head = ota.SPI_ONECARD.to_bytes() + bytes([0x12, 0x12]) + TAR
        cpl = 1 + ota.CHL_CC + len(data)
        cp = (3).to_bytes(5) + bytes([pcntr])
        cc = ota.cmac8(KEYS.kid, cpl.to_bytes(2) + bytes([ota.CHL_CC]) + head + cp + data)
        pkt = cpl.to_bytes(2) + bytes([ota.CHL_CC]) + head + ota.cbc_encrypt(KEYS.kic, cp + cc + data)
        if ok:
            assert ota.open_command(pkt, KEYS).data == bytes(3)
        else:
            refused(pkt, ota.PorStatus.CIPHERING_ERROR, "PCNTR 16")


def test_packets_without_data():
    pkt = raw_command(1, b"", 0)
    assert ota.open_command(pkt, KEYS, CLEAR).data == b""
    no_cc = ota.Spi(cc=False, ciphered=False, por_cc=False, por_ciphered=False)
    p2 = ota.build_command(KEYS, TAR, 1, b"", no_cc)
    assert p2[2] == 13 and ota.open_command(p2, KEYS, no_cc).data == b""


def test_peek_messages():
    pkt = ota.build_command(KEYS, TAR, 1, b"x")
    for raw, msg in (
        (b"\x00\x01", r"^command packet is 2 bytes; it needs at least CPL and CHL$"),
        (b"\x00\x02\x15\x16", r"^CHL 21 does not fit the packet$"),
        (pkt[:-1], rf"^CPL says {len(pkt) - 2} bytes follow, {len(pkt) - 3} do$"),
        (b"\x00\x0e\x0c" + bytes(13), r"^CHL 12 does not fit the packet$"),
        (pkt[:2] + b"\x0d" + pkt[3:], r"^CHL 13 does not match the SPI \(expected 21\)$"),
    ):
        with pytest.raises(ota.OtaError, match=msg):
            ota.peek_command(raw)
    exact = (14).to_bytes(2) + b"\x0d" + ota.Spi(cc=False).to_bytes() + bytes([0x12, 0x12]) + TAR + bytes(6)
    assert ota.peek_command(exact[:16])[3] == TAR


def test_spi_messages():
    for raw, msg in (
        (b"\x16", r"^SPI is 1 bytes, expected 2$"),
        (b"\x36\x39", r"^SPI 3639 sets reserved bits$"),
        (b"\x16\x79", r"^SPI 1679 sets reserved bits$"),
        (b"\x15\x39", r"^SPI 1539 asks for a redundancy check or signature"),
        (b"\x16\x35", r"^SPI 1635 asks for a redundancy check"),
        (b"\x16\x3b", r"^SPI 163b: PoR request 11 is reserved$"),
    ):
        with pytest.raises(ota.OtaError, match=msg):
            ota.Spi.from_bytes(raw)
    s = ota.Spi.from_bytes(b"\x1e\x12")
    assert s.counter is ota.CounterMode.ONE_HIGHER and s.por is ota.PorRequest.ON_ERROR and not s.por_cc
    assert s.por_ciphered and not s.por_by_submit and s.ciphered and s.cc


def test_por_messages_and_fields():
    good = ota.build_por(KEYS, ota.SPI_ONECARD, TAR, 7, ota.PorStatus.CNTR_LOW, b"")
    p = ota.open_por(good, KEYS)
    assert (p.tar, p.cntr, p.status, p.data) == (TAR, 7, ota.PorStatus.CNTR_LOW, b"")
    for raw, msg in (
        (b"\x02\x70\x00", r"^PoR does not start with the UDH 02 71 00 \(got 027000\)$"),
        (b"\x02\x71\x00\x00\x01\x0a", r"^PoR ends inside its header$"),
        (good[:-1], rf"^RPL says {len(good) - 5} bytes follow, {len(good) - 6} do$"),
        (good[:5] + b"\x11" + good[6:], r"^RHL 17 is neither 10 nor 18$"),
        (
            good[:-1][:3] + (len(good) - 6).to_bytes(2) + good[5:-1],
            r"^ciphered PoR part is 15 bytes, not whole blocks$",
        ),
    ):
        with pytest.raises(ota.OtaError, match=msg):
            ota.open_por(raw, KEYS)
    clear = ota.build_por(None, ota.SPI_ONECARD, TAR, 0, ota.PorStatus.TAR_UNKNOWN)
    bad_status = clear[:-1] + b"\x0b"
    with pytest.raises(ota.OtaError, match=r"^PoR status 0b is not defined$"):
        ota.open_por(bad_status, KEYS)
    tiny = b"\x02\x71\x00\x00\x0a\x0a" + TAR + bytes(7)[:6]
    with pytest.raises(ota.OtaError, match="RHL 10"):
        ota.open_por(tiny[:3] + (len(tiny) - 5).to_bytes(2) + tiny[5:], KEYS)
    padded_clear = ota.build_por(None, ota.SPI_ONECARD, TAR, 0, ota.PorStatus.TAR_UNKNOWN, b"\x00")
    forged = padded_clear[:-2] + b"\x01" + padded_clear[-1:]  # PCNTR 1 on a clear PoR
    with pytest.raises(ota.OtaError, match=r"^PoR PCNTR 1 does not match its padding$"):
        ota.open_por(forged[:9] + bytes([0, 0, 0, 0, 0, 1, 9, 0]), KEYS)
    with pytest.raises(ota.OtaError, match=r"^PoR cryptographic checksum does not verify"):
        ota.open_por(ota.build_por(ota.OtaKeys(KEYS.kic, bytes(16)), ota.SPI_ONECARD, TAR, 1, ota.PorStatus.OK), KEYS)
    unciphered = ota.Spi(por_ciphered=False)
    por = ota.build_por(KEYS, unciphered, TAR, 2, ota.PorStatus.OK, b"\x01\x90\x00")
    assert por[9:14] == (2).to_bytes(5) and ota.open_por(por, KEYS, unciphered).data == b"\x01\x90\x00"


def test_cbc_and_compact_response_boundaries():
    for f in (ota.cbc_encrypt, ota.cbc_decrypt):
        with pytest.raises(ValueError, match=r"^CBC input must be whole blocks$"):
            f(KEYS.kic, bytes(15))
    with pytest.raises(ValueError, match="whole blocks"):
        ota.cbc_decrypt(KEYS.kic, b"")
    assert ota.cbc_encrypt(KEYS.kic, b"") == b""
    assert ota.compact_response(1, b"\x90\x00") == b"\x01\x90\x00"
    with pytest.raises(ota.OtaError, match=r"^an R-APDU has at least a status word$"):
        ota.compact_response(1, b"\x90")
    assert ota.parse_compact_response(b"\x01\x90\x00") == (1, b"\x90\x00", b"")
    with pytest.raises(ota.OtaError, match=r"^compact response is 2 bytes; it needs a count and a status word$"):
        ota.parse_compact_response(b"\x01\x90")
    with pytest.raises(ValueError, match=r"^KIc and KID are 16-byte AES-128 keys$"):
        ota.OtaKeys(bytes(15), bytes(16))
    with pytest.raises(ValueError, match="16-byte"):
        ota.OtaKeys(bytes(16), bytes(17))
    assert "00010203" not in repr(KEYS) and repr(KEYS) == "OtaKeys(version=1)"
    e = ota.OtaRefused(ota.PorStatus.CNTR_LOW, "m", TAR, 5)
    assert (str(e), e.status, e.tar, e.cntr) == ("m", ota.PorStatus.CNTR_LOW, TAR, 5)


def test_split_and_parse_user_data_boundaries():
    payload = bytes(137)
    assert ota.split_sms(b"\x70\x00", payload, 1) == [b"\x02\x70\x00" + payload]
    parts = ota.split_sms(b"\x70\x00", payload + b"\x01", 0xABCD)
    assert [len(p) for p in parts] == [140, 1 + 6 + 7]
    assert parts[0][:9] == bytes.fromhex("080804abcd02017000") and parts[1][:7] == bytes.fromhex("060804abcd0202")
    assert parts[0][9:] + parts[1][7:] == payload + b"\x01"
    long = bytes(131 + 133 * 2)
    assert [len(p) for p in ota.split_sms(b"\x70\x00", long, 0)] == [140, 140, 140]
    with pytest.raises(ota.OtaError, match=r"^concatenation reference 65536 does not fit in 2 bytes$"):
        ota.split_sms(b"\x70\x00", long, 0x10000)
    assert len(ota.split_sms(b"", bytes(133 * 255), 0)) == 255
    with pytest.raises(ota.OtaError, match=r"^33916 bytes need 256 SMS; at most 255 can be concatenated$"):
        ota.split_sms(b"", bytes(133 * 255 + 1), 0)
    for raw, msg in (
        (b"", r"^empty user data; a secured packet needs a user data header$"),
        (b"\x03\x70\x00", r"^UDHL 3 is longer than the user data$"),
        (b"\x01\x70", r"^an information element runs past the end of the UDH$"),
        (b"\x03\x70\x02\x00", r"^an information element runs past the end of the UDH$"),
        (b"\x04\x00\x02\x01\x01", r"^concatenation element 00 has length 2$"),
        (b"\x05\x08\x03\x00\x01\x01", r"^concatenation element 08 has length 3$"),
        (b"\x05\x00\x03\x01\x00\x01", r"^concatenation part 1 of 0 is impossible$"),
        (b"\x05\x00\x03\x01\x02\x00", r"^concatenation part 0 of 2 is impossible$"),
    ):
        with pytest.raises(ota.OtaError, match=msg):
            ota.parse_user_data(raw)
    seg = ota.parse_user_data(b"\x08\x70\x00\x08\x04\x01\x02\x02\x02xy")
    assert (seg.reference, seg.count, seg.seq, seg.data, seg.ies) == (
        0x102,
        2,
        2,
        b"xy",
        ((0x70, b""), (8, b"\x01\x02\x02\x02")),
    )
    assert ota.parse_user_data(b"\x05\x00\x03\x09\x01\x01z").reference == 9
    plain = ota.parse_user_data(b"\x02\x70\x00ab")
    assert (plain.reference, plain.count, plain.seq, plain.has(0x70), plain.has(0x71)) == (None, 1, 1, True, False)


def test_reassembler():
    r = ota.Reassembler()
    one = ota.parse_user_data(b"\x02\x70\x00ab")
    assert r.add("a", one) is one
    p1 = ota.parse_user_data(b"\x08\x08\x04\x00\x07\x02\x01\x70\x00AB")
    p2 = ota.parse_user_data(b"\x06\x08\x04\x00\x07\x02\x02CD")
    other = ota.parse_user_data(b"\x06\x08\x04\x00\x07\x02\x02EF")
    assert r.add("a", p1) is None and r.add("b", other) is None and r.pending() == 2
    whole = r.add("a", p2)
    assert whole is not None and (whole.data, whole.ies, whole.reference, whole.count, whole.seq) == (
        b"ABCD",
        ((0x70, b""),),
        None,
        1,
        1,
    )
    assert r.pending() == 1
    bad = ota.parse_user_data(b"\x06\x08\x04\x00\x07\x03\x01GH")
    with pytest.raises(ota.OtaError, match=r"^concatenation reference 7 changes its part count$"):
        r.add("b", bad)
    r.add("c", ota.parse_user_data(b"\x05\x00\x03\x07\x02\x02CD"))
    assert r.add("c", ota.parse_user_data(b"\x07\x00\x03\x07\x02\x01\x70\x00AB")).data == b"ABCD"


def test_parse_apdus_boundaries():
    assert ota.parse_apdus(b"\x80\x5c\x00\x02\x04") == [b"\x80\x5c\x00\x02\x04"]
    two = b"\x80\xe2\x00\x00\x01\xaa" + b"\x80\x5c\x00\x02"
    assert ota.parse_apdus(two) == [b"\x80\xe2\x00\x00\x01\xaa", b"\x80\x5c\x00\x02"]
    with_le = b"\x80\xe2\x00\x00\x01\xaa\x10"
    assert ota.parse_apdus(with_le) == [with_le]
    for raw, msg in (
        (b"", r"^secured data holds no command$"),
        (b"\x80\x5c\x00", r"^a command APDU is cut after 3 bytes$"),
        (b"\x80\xe2\x00\x00\x00\x01", r"^a command APDU's Lc 0 runs past the secured data$"),
        (b"\x80\xe2\x00\x00\x05\x01", r"^a command APDU's Lc 5 runs past the secured data$"),
    ):
        with pytest.raises(ota.OtaError, match=msg):
            ota.parse_apdus(raw)
    with pytest.raises(ota.OtaError, match=r"^a remote APDU is malformed, or carries Le other than as the last"):
        ota.pack_apdus([with_le, b"\x80\x5c\x00\x02"])
    with pytest.raises(ota.OtaError, match="malformed"):
        ota.pack_apdus([])


# --- the second mutation run's survivors (issue 15) ------------------------------------------------------------------

NO_CC = ota.Spi(cc=False, ciphered=False, por_cc=False, por_ciphered=False)


def forged_por(cntr: int, pcntr: int, status: int, padded: bytes, ciphered: bool = True) -> bytes:
    """A PoR with a CC, any PCNTR and any padding, correctly checksummed under KEYS (what a buggy SIM could send)."""
    rhl = ota.RHL_CC
    rpl = 1 + rhl + len(padded)
    clear = cntr.to_bytes(5) + bytes([pcntr, status])
    cc = ota.cmac8(KEYS.kid, ota.POR_UDH + rpl.to_bytes(2) + bytes([rhl]) + TAR + clear + padded)
    tail = clear + cc + padded
    if ciphered:
        tail = ota.cbc_encrypt(KEYS.kic, tail)
    return ota.POR_UDH + rpl.to_bytes(2) + bytes([rhl]) + TAR + tail


def test_command_without_cc_keeps_every_data_byte():
    # CHL 13: CNTR(5) PCNTR(1) and the data right after, no CC bytes between them to skip
    apdu = b"\x80\x5c\x00\x02\x04"
    pkt = ota.build_command(KEYS, TAR, 6, apdu, NO_CC)
    # CPL 0013, CHL 0D, SPI 10 21, KIc 12, KID 12, TAR B01CA0, CNTR 0000000006, PCNTR 00, data
    assert pkt == bytes.fromhex("0013 0D 1021 12 12 B01CA0 0000000006 00 805C000204")
    c = ota.open_command(pkt, KEYS, NO_CC)
    assert (c.spi, c.cntr, c.data) == (NO_CC, 6, apdu)
    # ciphered without CC: the deciphered block holds CNTR PCNTR, the data and its 5 bytes of padding
    ciphered_no_cc = ota.Spi(cc=False, ciphered=True, por_cc=False, por_ciphered=False)
    c = ota.open_command(ota.build_command(KEYS, TAR, 7, apdu, ciphered_no_cc), KEYS, NO_CC)
    assert (c.cntr, c.data) == (7, apdu)


def test_por_without_cc_keeps_every_data_byte():
    # the SIM could not authenticate the command: clear PoR, no CC, its additional data right after the status
    clear = ota.build_por(None, ota.SPI_ONECARD, TAR, 5, ota.PorStatus.CNTR_LOW, b"\x01\x69\x85")
    assert clear == bytes.fromhex("027100000E0A") + TAR + bytes.fromhex("00000000050002016985")
    p = ota.open_por(clear, KEYS)
    assert (p.cntr, p.status, p.data) == (5, ota.PorStatus.CNTR_LOW, b"\x01\x69\x85")
    # the command asked for a PoR without CC: OK with data, in clear
    p = ota.open_por(ota.build_por(KEYS, NO_CC, TAR, 9, ota.PorStatus.OK, b"\x01\x90\x00"), KEYS, NO_CC)
    assert (p.cntr, p.status, p.data) == (9, ota.PorStatus.OK, b"\x01\x90\x00")
    with pytest.raises(ota.OtaError, match=r"^PoR says OK without the CC the command asked for$"):
        ota.open_por(ota.build_por(None, ota.SPI_ONECARD, TAR, 1, ota.PorStatus.OK), KEYS)


def test_ciphered_por_padding_refusals():
    # 7 clear bytes + CC (8) + 1 byte = one block; + 17 bytes = two blocks
    assert ota.open_por(forged_por(3, 1, 0, b"\x00"), KEYS).data == b""
    assert ota.open_por(forged_por(3, 0, 0, b"\x42"), KEYS).data == b"\x42"
    assert ota.open_por(forged_por(3, 15, 0, b"\x01\x90" + bytes(15)), KEYS).data == b"\x01\x90"
    for pcntr, padded in (
        (5, b"\x00"),  # PCNTR longer than what follows the CC
        (16, b"\x42" + bytes(16)),  # a whole block of padding: never needed
        (1, b"\x07"),  # the padding byte is not zero
        (2, b"\x01\x90" + bytes(13) + b"\x00\x01"),  # the last padding byte is not zero
    ):
        with pytest.raises(ota.OtaError, match=rf"^PoR PCNTR {pcntr} does not match its padding$"):
            ota.open_por(forged_por(3, pcntr, 0, padded), KEYS)


def test_por_header_boundaries():
    with pytest.raises(ota.OtaError, match=r"^PoR does not start with the UDH 02 71 00 \(got 027000\)$"):
        ota.open_por(b"\x02\x70\x00\x00\x0a\x0a", KEYS)
    # 5 bytes after the UDH end inside RPL RHL TAR; 6 bytes hold them, and RPL is then checked
    with pytest.raises(ota.OtaError, match=r"^PoR ends inside its header$"):
        ota.open_por(ota.POR_UDH + b"\x00\x04\x0a" + TAR[:2], KEYS)
    with pytest.raises(ota.OtaError, match=r"^RPL says 5 bytes follow, 4 do$"):
        ota.open_por(ota.POR_UDH + b"\x00\x05\x0a" + TAR, KEYS)


def test_peek_command_boundaries():
    # 3 bytes hold CPL and CHL: CPL is checked, then CHL
    with pytest.raises(ota.OtaError, match=r"^CPL says 5 bytes follow, 1 do$"):
        ota.peek_command(b"\x00\x05\x15")
    with pytest.raises(ota.OtaError, match=r"^CHL 21 does not fit the packet$"):
        ota.peek_command(b"\x00\x01\x15")
    # CHL 21 (with CC) on an SPI without CC: 13 expected
    rest = ota.Spi(cc=False).to_bytes() + b"\x12\x12" + TAR + bytes(14)
    with pytest.raises(ota.OtaError, match=r"^CHL 21 does not match the SPI \(expected 13\)$"):
        ota.peek_command((len(rest) + 1).to_bytes(2) + b"\x15" + rest)


def test_split_sms_largest_reference():
    parts = ota.split_sms(b"\x70\x00", bytes(138), 0xFFFF)
    assert parts[0][:9] == bytes.fromhex("08 0804FFFF0201 7000") and parts[1][:7] == bytes.fromhex("06 0804FFFF0202")
