"""SCP80 core (common/ota.py): published vectors, the documented worked example byte for byte, refusals with the
right PoR status, concatenation, and hypothesis over every parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central import ota_ops
from common import ota

KEYS = ota.OtaKeys(bytes(range(16)), bytes(range(16, 32)), 1)
OTHER = ota.OtaKeys(bytes(range(1, 17)), bytes(range(17, 33)), 1)

# docs/ota.md section 8 (the worked example): these bytes are copied there.
EXAMPLE_DATA = "00a4040009f04f4e454341524401805c000204"
EXAMPLE_PACKET = (
    "00381516391212b01ca055d43ace1958008243ad581e782698e22e40b600"
    "16049a618897617d56b6224e846f01edf345d74f3df9332cc7bdddec"
)
EXAMPLE_CLEAR_TAIL = "00000000010fde3436c60ed0eaa700a4040009f04f4e454341524401805c000204000000000000000000000000000000"
EXAMPLE_POR = "027100002412b01ca0b7de9e17126577e2ce0c2aa86e39a5313ce9187090e33352152def069f1d26be"
EXAMPLE_POR_CLEAR = "00000000010a004e1d768d0d4822a70290000000271000000000000000000000"


# --- published vectors -------------------------------------------------------------------------------------

RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MSG = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)


@pytest.mark.parametrize(
    "length, mac",
    [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ],
)
def test_cc_is_the_leftmost_8_bytes_of_rfc4493_cmac(length, mac):
    assert ota.cmac8(RFC4493_KEY, RFC4493_MSG[:length]).hex() == mac[:16]


def test_cbc_matches_sp800_38a_f21():
    ct = ota.cbc_encrypt(RFC4493_KEY, RFC4493_MSG)
    # SP 800-38A F.2.1 uses IV 000102..0f; with IV zero the first block is E(K, P1) = 3ad77bb4... (F.1.1 ECB).
    assert ct[:16].hex() == "3ad77bb40d7a3660a89ecaf32466ef97"
    assert ota.cbc_decrypt(RFC4493_KEY, ct) == RFC4493_MSG


# --- the worked example -----------------------------------------------------------------------------------


def test_worked_example_command_packet_exact_bytes():
    data = ota.pack_apdus([ota_ops.select(), bytes.fromhex("805C000204")])
    assert data.hex() == EXAMPLE_DATA
    pkt = ota.build_command(KEYS, ota.ONECARD_TAR, 1, data)
    assert pkt.hex() == EXAMPLE_PACKET
    assert ota.cbc_decrypt(KEYS.kic, pkt[10:]).hex() == EXAMPLE_CLEAR_TAIL
    assert ota.split_sms(b"\x70\x00", pkt, 0) == [bytes.fromhex("027000") + pkt]
    c = ota.open_command(pkt, KEYS)
    assert (c.tar, c.cntr, c.data.hex(), c.spi) == (ota.ONECARD_TAR, 1, EXAMPLE_DATA, ota.SPI_ONECARD)


def test_worked_example_por_exact_bytes():
    data = ota.compact_response(2, bytes.fromhex("000027109000"))
    por = ota.build_por(KEYS, ota.SPI_ONECARD, ota.ONECARD_TAR, 1, ota.PorStatus.OK, data)
    assert por.hex() == EXAMPLE_POR
    assert ota.cbc_decrypt(KEYS.kic, por[9:]).hex() == EXAMPLE_POR_CLEAR
    p = ota.open_por(por, KEYS)
    assert (p.status, p.cntr, ota.parse_compact_response(p.data)) == (
        ota.PorStatus.OK,
        1,
        (2, b"\x90\x00", bytes.fromhex("00002710")),
    )


def test_spi_onecard_is_1639_and_round_trips():
    assert ota.SPI_ONECARD.to_bytes() == b"\x16\x39"
    for raw in (b"\x16\x39", b"\x00\x00", b"\x12\x21", b"\x1e\x19", b"\x06\x12"):
        assert ota.Spi.from_bytes(raw).to_bytes() == raw


@pytest.mark.parametrize("raw", [b"\x36\x39", b"\x15\x39", b"\x17\x39", b"\x16\x79", b"\x16\x3b", b"\x16\x35"])
def test_spi_refuses_reserved_and_foreign_codings(raw):
    with pytest.raises(ota.OtaError):
        ota.Spi.from_bytes(raw)


def test_key_identifier():
    assert ota.key_identifier(1) == 0x12 and ota.key_version(0x12, "KIc") == 1
    for bad in (0, 16):
        with pytest.raises(ota.OtaError):
            ota.key_identifier(bad)
    for bad in (0x11, 0x02, 0x15):
        with pytest.raises(ota.OtaError):
            ota.key_version(bad, "KID")


# --- refusals ---------------------------------------------------------------------------------------------


def _pkt(cntr=5, data=b"\x80\x5c\x00\x02\x04", keys=KEYS, spi=ota.SPI_ONECARD, tar=ota.ONECARD_TAR):
    return ota.build_command(keys, tar, cntr, data, spi)


def test_wrong_mac_is_refused_rc_cc_ds_failed():
    with pytest.raises(ota.OtaRefused) as e:
        ota.open_command(_pkt(keys=ota.OtaKeys(KEYS.kic, OTHER.kid)), KEYS)
    assert e.value.status is ota.PorStatus.RC_CC_DS_FAILED and e.value.cntr == 5


def test_wrong_kic_is_refused_before_anything_runs():
    with pytest.raises(ota.OtaRefused) as e:
        ota.open_command(_pkt(keys=OTHER), KEYS)
    assert e.value.status in (ota.PorStatus.RC_CC_DS_FAILED, ota.PorStatus.CIPHERING_ERROR)


def test_flipped_clear_header_byte_fails_the_cc():
    pkt = bytearray(_pkt(spi=ota.Spi(ciphered=False)))
    pkt[7] ^= 0  # TAR unchanged
    pkt[-1] ^= 1  # last data byte
    with pytest.raises(ota.OtaRefused) as e:
        ota.open_command(bytes(pkt), KEYS, min_spi=ota.Spi(ciphered=False))
    assert e.value.status is ota.PorStatus.RC_CC_DS_FAILED


def test_truncated_packet_is_not_a_packet():
    pkt = _pkt()
    for n in (0, 2, 9, 20, len(pkt) - 1):
        with pytest.raises((ota.OtaError, ota.OtaRefused)):
            ota.open_command(pkt[:n], KEYS)


def test_truncated_with_fixed_cpl_is_a_ciphering_error():
    pkt = _pkt()
    cut = pkt[:-1]
    cut = (len(cut) - 2).to_bytes(2, "big") + cut[2:]
    with pytest.raises(ota.OtaRefused) as e:
        ota.open_command(cut, KEYS)
    assert e.value.status is ota.PorStatus.CIPHERING_ERROR


def test_weaker_spi_is_insufficient_security_level():
    for spi in (ota.Spi(ciphered=False), ota.Spi(cc=False), ota.Spi(counter=ota.CounterMode.AVAILABLE)):
        with pytest.raises(ota.OtaRefused) as e:
            ota.open_command(_pkt(spi=spi), KEYS)
        assert e.value.status is ota.PorStatus.INSUFFICIENT_SECURITY_LEVEL


def test_other_key_version_is_a_security_error():
    with pytest.raises(ota.OtaRefused) as e:
        ota.open_command(_pkt(keys=ota.OtaKeys(KEYS.kic, KEYS.kid, 2)), KEYS)
    assert e.value.status is ota.PorStatus.UNIDENTIFIED_SECURITY_ERROR


@pytest.mark.parametrize(
    "mode, stored, received, status",
    [
        (ota.CounterMode.HIGHER, 5, 6, ota.PorStatus.OK),
        (ota.CounterMode.HIGHER, 5, 9, ota.PorStatus.OK),
        (ota.CounterMode.HIGHER, 5, 5, ota.PorStatus.CNTR_LOW),
        (ota.CounterMode.HIGHER, 5, 4, ota.PorStatus.CNTR_LOW),
        (ota.CounterMode.ONE_HIGHER, 5, 6, ota.PorStatus.OK),
        (ota.CounterMode.ONE_HIGHER, 5, 7, ota.PorStatus.CNTR_HIGH),
        (ota.CounterMode.ONE_HIGHER, 5, 5, ota.PorStatus.CNTR_LOW),
        (ota.CounterMode.HIGHER, ota.MAX_CNTR, 0, ota.PorStatus.CNTR_BLOCKED),
        (ota.CounterMode.HIGHER, ota.MAX_CNTR - 1, ota.MAX_CNTR, ota.PorStatus.OK),
        (ota.CounterMode.AVAILABLE, 5, 1, ota.PorStatus.OK),
        (ota.CounterMode.NONE, 5, 0, ota.PorStatus.OK),
    ],
)
def test_counter_check(mode, stored, received, status):
    assert ota.check_counter(mode, stored, received) is status


def test_por_forged_or_unsecured_ok_is_refused():
    por = bytearray(ota.build_por(KEYS, ota.SPI_ONECARD, ota.ONECARD_TAR, 1, ota.PorStatus.OK, b"\x01\x90\x00"))
    with pytest.raises(ota.OtaError):
        ota.open_por(bytes(por), OTHER)
    por[-1] ^= 1
    with pytest.raises(ota.OtaError):
        ota.open_por(bytes(por), KEYS)
    clear_ok = ota.build_por(None, ota.SPI_ONECARD, ota.ONECARD_TAR, 1, ota.PorStatus.OK)
    with pytest.raises(ota.OtaError, match="without the CC"):
        ota.open_por(clear_ok, KEYS)
    clear_err = ota.build_por(None, ota.SPI_ONECARD, ota.ONECARD_TAR, 3, ota.PorStatus.RC_CC_DS_FAILED)
    assert clear_err.hex() == "027100000b0ab01ca000000000030001"
    assert ota.open_por(clear_err, KEYS).status is ota.PorStatus.RC_CC_DS_FAILED


def test_round_trip_lengths_and_padding():
    for n in range(0, 60):
        data = bytes([0x80, 0xE2, 0x00, 0x00, n]) + bytes(range(n)) if n else b"\x80\x5c\x00\x02"
        for spi in (ota.SPI_ONECARD, ota.Spi(ciphered=False, por_ciphered=False)):
            pkt = ota.build_command(KEYS, ota.ONECARD_TAR, n + 1, data, spi)
            assert ota.open_command(pkt, KEYS, min_spi=spi).data == data
            por = ota.build_por(KEYS, spi, ota.ONECARD_TAR, n + 1, ota.PorStatus.OK, data)
            assert ota.open_por(por, KEYS, spi).data == data


# --- concatenation and remote APDUs ----------------------------------------------------------------------


def test_long_packet_is_concatenated_and_reassembled_in_any_order():
    data = ota.pack_apdus([bytes([0x80, 0xE2, 0x00, 0x00, 200]) + bytes(200)])
    pkt = ota.build_command(KEYS, ota.ONECARD_TAR, 9, data)
    parts = ota.split_sms(b"\x70\x00", pkt, 0x1234)
    assert len(parts) == 2 and all(len(p) <= ota.SMS_UD_MAX for p in parts)
    assert parts[0][:9] == bytes.fromhex("0808041234020170 00".replace(" ", ""))
    assert parts[1][:7] == bytes.fromhex("06080412340202")
    r = ota.Reassembler()
    assert r.add("1", ota.parse_user_data(parts[1])) is None and r.pending() == 1
    whole = r.add("1", ota.parse_user_data(parts[0]))
    assert whole is not None and whole.has(ota.IEI_CPI) and whole.data == pkt and r.pending() == 0
    assert ota.open_command(whole.data, KEYS).data == data


def test_concat8_is_understood():
    seg = ota.parse_user_data(bytes.fromhex("0500030a0201") + b"xy")
    assert (seg.reference, seg.count, seg.seq, seg.data) == (10, 2, 1, b"xy")


@pytest.mark.parametrize("ud", ["", "05", "0300030a", "050003000200", "05000300020300", "0400030a02", "0500040a020101"])
def test_bad_user_data_headers(ud):
    with pytest.raises(ota.OtaError):
        seg = ota.parse_user_data(bytes.fromhex(ud))
        assert seg.count >= 1


def test_remote_apdu_script():
    apdus = [ota_ops.select(), bytes.fromhex("805A000202000110")]
    assert ota.parse_apdus(ota.pack_apdus(apdus)) == apdus
    assert ota.parse_apdus(b"\x80\x5c\x00\x02") == [b"\x80\x5c\x00\x02"]
    for bad in ([], [bytes.fromhex("00A4040009F04F4E45434152440100"), b"\x80\x5c\x00\x02\x04"], [b"\x80\x5c"]):
        with pytest.raises(ota.OtaError):
            ota.pack_apdus(bad)
    assert ota.compact_response(1, b"\x12\x90\x00") == b"\x01\x90\x00\x12"
    with pytest.raises(ota.OtaError):
        ota.parse_compact_response(b"\x01\x90")


# --- hypothesis: parse, or raise our own error --------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_never_crash(raw):
    for f in (
        lambda: ota.open_command(raw, KEYS),
        lambda: ota.open_por(raw, KEYS),
        lambda: ota.parse_user_data(raw),
        lambda: ota.parse_apdus(raw),
        lambda: ota.open_por(b"\x02\x71\x00" + raw, KEYS),
    ):
        try:
            f()
        except (ota.OtaError, ota.OtaRefused):
            pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.integers(0, ota.MAX_CNTR), st.integers(0, 200), st.integers(0, 255))
def test_any_single_byte_change_is_refused(data, cntr, pos, flip):
    pkt = ota.build_command(KEYS, ota.ONECARD_TAR, cntr, data)
    pos %= len(pkt)
    mutated = bytearray(pkt)
    mutated[pos] ^= flip or 1
    with pytest.raises((ota.OtaError, ota.OtaRefused)):
        ota.open_command(bytes(mutated), KEYS)
