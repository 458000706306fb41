"""sam.crypto against published vectors (RFC 4493, GB/T 32907, NXP AN10922) and independent recomputation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from sam import crypto
from sam.interface import Algorithm

H = bytes.fromhex

# RFC 4493 section 4.
RFC4493_KEY = H("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MESSAGE = H(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
RFC4493_EXAMPLES = [
    (0, "bb1d6929e95937287fa37d129b756746"),
    (16, "070a16b46b4d4144f79bdd9dd04a287c"),
    (40, "dfa66747de9ae63030ca32611497c827"),
    (64, "51f0bebf7e3b9d92fc49741779363cfe"),
]

# NXP AN10922 section 2.2.1 (AES-128): master key, M = UID || AID || system identifier.
AN10922_MASTER = H("00112233445566778899AABBCCDDEEFF")
AN10922_M = H("04782E21801D80") + H("3042F5") + H("4E585020416275")
AN10922_K0 = H("FDE4FBAE4A09E020EFF722969F83832B")
AN10922_K1 = H("FBC9F75C9413C041DFEE452D3F0706D1")
AN10922_K2 = H("F793EEB928278083BFDC8A5A7E0E0D25")
AN10922_DIVERSIFIED = H("A8DD63A3B89D54B37CA802473FDA9175")

# GB/T 32907-2016 appendix A.
SM4_KEY = H("0123456789abcdeffedcba9876543210")
SM4_ONCE = H("681edf34d206965e86b3e94f536e4246")
SM4_MILLION = H("595298c7c6fd271f0402f804c33d3f66")

keys16 = st.binary(min_size=16, max_size=16)
algos = st.sampled_from(list(Algorithm))


def reference_cmac(algorithm: Algorithm, key: bytes, message: bytes) -> bytes:
    """SP 800-38B written out from block_encrypt and cmac_subkeys, independent of cryptography's CMAC."""
    k1, k2 = crypto.cmac_subkeys(algorithm, key)
    blocks = [message[i : i + 16] for i in range(0, len(message), 16)] or [b""]
    last = blocks[-1]
    if len(last) == 16:
        last = bytes(a ^ b for a, b in zip(last, k1))
    else:
        padded = (last + b"\x80").ljust(16, b"\x00")
        last = bytes(a ^ b for a, b in zip(padded, k2))
    state = bytes(16)
    for block in blocks[:-1] + [last]:
        state = crypto.block_encrypt(algorithm, key, bytes(a ^ b for a, b in zip(state, block)))
    return state


def cbc_mac(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    cipher = algorithms.AES(key) if algorithm is Algorithm.AES128 else algorithms.SM4(key)
    encryptor = Cipher(cipher, modes.CBC(bytes(16))).encryptor()
    return (encryptor.update(data) + encryptor.finalize())[-16:]


# --- RFC 4493 -------------------------------------------------------------------------------------


def test_rfc4493_subkeys():
    assert crypto.block_encrypt(Algorithm.AES128, RFC4493_KEY, bytes(16)) == H("7df76b0c1ab899b33e42f047b91b546f")
    k1, k2 = crypto.cmac_subkeys(Algorithm.AES128, RFC4493_KEY)
    assert k1 == H("fbeed618357133667c85e08f7236a8de")
    assert k2 == H("f7ddac306ae266ccf90bc11ee46d513b")


@pytest.mark.parametrize(("length", "expected"), RFC4493_EXAMPLES)
def test_rfc4493_cmac(length, expected):
    message = RFC4493_MESSAGE[:length]
    assert crypto.cmac(Algorithm.AES128, RFC4493_KEY, message) == H(expected)
    assert reference_cmac(Algorithm.AES128, RFC4493_KEY, message) == H(expected)
    assert crypto.mac8(Algorithm.AES128, RFC4493_KEY, message) == H(expected)[:8]


# --- SM4 ------------------------------------------------------------------------------------------


def test_sm4_gbt32907_single_block():
    assert crypto.block_encrypt(Algorithm.SM4, SM4_KEY, SM4_KEY) == SM4_ONCE


def test_sm4_gbt32907_million_iterations():
    # One encryptor reused: the vector checks the cipher, block_encrypt is checked above; a fresh
    # context per block would make this take seconds for no extra coverage.
    encryptor = Cipher(algorithms.SM4(SM4_KEY), modes.ECB()).encryptor()
    block = SM4_KEY
    for _ in range(1_000_000):
        block = encryptor.update(block)
    assert block == SM4_MILLION


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31, 32, 33, 40, 64, 100])
def test_sm4_cmac_two_ways(length):
    message = bytes(range(length))
    assert crypto.cmac(Algorithm.SM4, SM4_KEY, message) == reference_cmac(Algorithm.SM4, SM4_KEY, message)


@given(algos, keys16, st.binary(max_size=80))
def test_cmac_matches_reference(algorithm, key, message):
    assert crypto.cmac(algorithm, key, message) == reference_cmac(algorithm, key, message)


# --- AN10922 diversification ----------------------------------------------------------------------


def test_an10922_aes128_intermediate_values():
    assert crypto.block_encrypt(Algorithm.AES128, AN10922_MASTER, bytes(16)) == AN10922_K0
    assert crypto.cmac_subkeys(Algorithm.AES128, AN10922_MASTER) == (AN10922_K1, AN10922_K2)


def test_an10922_aes128_diversified_key():
    assert crypto.diversify(Algorithm.AES128, AN10922_MASTER, AN10922_M) == AN10922_DIVERSIFIED


@given(algos, keys16, st.binary(min_size=16, max_size=31))
def test_diversify_equals_cmac_when_d_spans_two_blocks(algorithm, key, m):
    # With 0x01 || M of 17..32 bytes, AN10922 padding coincides with CMAC's.
    assert crypto.diversify(algorithm, key, m) == crypto.cmac(algorithm, key, b"\x01" + m)


@given(algos, keys16, st.binary(min_size=1, max_size=15))
def test_diversify_short_input_pads_to_two_blocks(algorithm, key, m):
    # Short M is where AN10922 differs from plain CMAC: D is padded to 32 bytes and K2 applied.
    _, k2 = crypto.cmac_subkeys(algorithm, key)
    padded = (b"\x01" + m + b"\x80").ljust(32, b"\x00")
    expected = cbc_mac(algorithm, key, padded[:16] + bytes(a ^ b for a, b in zip(padded[16:], k2)))
    result = crypto.diversify(algorithm, key, m)
    assert result == expected
    assert result != crypto.cmac(algorithm, key, b"\x01" + m)


def test_onecard_card_key_shape():
    m = crypto.card_diversification_input(H("0102030405060708"), H("00010001"))
    assert m == H("010203040506070800010001")
    for algorithm in Algorithm:
        key = crypto.diversify(algorithm, AN10922_MASTER, m)
        assert len(key) == 16 and key != AN10922_MASTER


def test_sm4_diversification_is_not_aes():
    assert crypto.diversify(Algorithm.SM4, AN10922_MASTER, AN10922_M) != AN10922_DIVERSIFIED


@given(algos, keys16, st.binary(min_size=1, max_size=31), st.binary(min_size=1, max_size=31))
def test_diversify_differs_for_different_input(algorithm, key, m1, m2):
    if m1 != m2:
        assert crypto.diversify(algorithm, key, m1) != crypto.diversify(algorithm, key, m2)


@given(algos, keys16, keys16, st.binary(min_size=12, max_size=12))
def test_diversify_differs_for_different_master(algorithm, key1, key2, m):
    if key1 != key2:
        assert crypto.diversify(algorithm, key1, m) != crypto.diversify(algorithm, key2, m)


@pytest.mark.parametrize("length", [0, 32, 40])
def test_diversify_rejects_bad_input_length(length):
    with pytest.raises(ValueError, match="diversification input"):
        crypto.diversify(Algorithm.AES128, AN10922_MASTER, bytes(length))


# --- MAC, KCV, input checks -----------------------------------------------------------------------


@given(algos, keys16, st.binary(max_size=100))
def test_mac8_is_prefix_of_cmac(algorithm, key, message):
    full = crypto.cmac(algorithm, key, message)
    assert len(full) == 16
    assert crypto.mac8(algorithm, key, message) == full[:8]
    assert crypto.mac8_matches(algorithm, key, message, full[:8])


@given(algos, keys16, st.binary(max_size=40), st.integers(0, 63))
def test_mac8_matches_rejects_flipped_bit(algorithm, key, message, bit):
    mac = bytearray(crypto.mac8(algorithm, key, message))
    mac[bit // 8] ^= 1 << (bit % 8)
    assert not crypto.mac8_matches(algorithm, key, message, bytes(mac))


def test_key_check_value():
    # KCV of the RFC 4493 key is the start of its published L = E_K(0^128).
    assert crypto.key_check_value(Algorithm.AES128, RFC4493_KEY) == "7df76b"
    assert (
        crypto.key_check_value(Algorithm.SM4, SM4_KEY)
        == crypto.block_encrypt(Algorithm.SM4, SM4_KEY, bytes(16))[:3].hex()
    )
    assert crypto.key_check_value(Algorithm.SM4, SM4_KEY) != crypto.key_check_value(Algorithm.AES128, SM4_KEY)


@pytest.mark.parametrize(
    ("asn", "enterprise"), [(bytes(7), bytes(4)), (bytes(9), bytes(4)), (bytes(8), bytes(3)), (bytes(8), bytes(5))]
)
def test_card_diversification_input_checks_lengths(asn, enterprise):
    with pytest.raises(ValueError):
        crypto.card_diversification_input(asn, enterprise)


@pytest.mark.parametrize("key", [bytes(15), bytes(24), bytes(32)])
def test_only_128_bit_keys(key):
    with pytest.raises(ValueError, match="key must be 16 bytes"):
        crypto.block_encrypt(Algorithm.AES128, key, bytes(16))
    with pytest.raises(ValueError, match="key must be 16 bytes"):
        crypto.cmac(Algorithm.AES128, key, b"")


def test_block_encrypt_needs_one_block():
    with pytest.raises(ValueError, match="block must be 16 bytes"):
        crypto.block_encrypt(Algorithm.AES128, RFC4493_KEY, bytes(17))


# --- onecard card-key example published in docs/key-handling.md -----------------------------------
# Values cross-checked once with the openssl command line (ECB for L, CBC with zero IV over the
# padded D with K2 applied), so they are not just this implementation agreeing with itself.

DOC_M = H("8601000000001234") + H("00010001")


@pytest.mark.parametrize(
    ("algorithm", "card_key", "kcv", "mac"),
    [
        (Algorithm.AES128, "f5a198f26a5e69211e7e29cb36da4dc6", "fde4fb", "bd418027c19f417b"),
        (Algorithm.SM4, "8800f3be8ce361f204acabbe7018de81", "72eba3", "effde09205720189"),
    ],
)
def test_documented_card_key_example(algorithm, card_key, kcv, mac):
    m = crypto.card_diversification_input(H("8601000000001234"), H("00010001"))
    assert m == DOC_M
    assert crypto.diversify(algorithm, AN10922_MASTER, m) == H(card_key)
    assert crypto.key_check_value(algorithm, AN10922_MASTER) == kcv
    assert crypto.mac8(algorithm, H(card_key), b"onecard") == H(mac)
