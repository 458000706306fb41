"""sam/crypto.py refusals with their exact words and lengths at their limits; the PUT KEY session key and block
decryption against the cipher written out independently. Issue 15."""

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sam import crypto
from sam.interface import Algorithm

H = bytes.fromhex
KEY = H("000102030405060708090A0B0C0D0E0F")


def fails(message, call, *args):
    with pytest.raises(ValueError) as caught:
        call(*args)
    assert type(caught.value) is ValueError and str(caught.value) == message


def ecb(algorithm, key, block, decrypt=False):
    alg = algorithms.AES(key) if algorithm is Algorithm.AES128 else algorithms.SM4(key)
    c = Cipher(alg, modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(block) + op.finalize()


def test_sizes_of_the_spec():
    assert (
        crypto.BLOCK_SIZE,
        crypto.KEY_SIZE,
        crypto.MAC_SIZE,
        crypto.ASN_SIZE,
        crypto.ENTERPRISE_ID_SIZE,
        crypto.CHALLENGE_SIZE,
    ) == (16, 16, 8, 8, 4, 8)


@pytest.mark.parametrize("n", [15, 17, 24, 32, 0])
def test_key_length_refused_with_its_length(n):
    fails(f"key must be 16 bytes, got {n}", crypto.block_encrypt, Algorithm.AES128, bytes(n), bytes(16))
    fails(f"key must be 16 bytes, got {n}", crypto.block_decrypt, Algorithm.SM4, bytes(n), bytes(16))


def test_unsupported_algorithm():
    fails("unsupported algorithm 3", crypto.block_encrypt, 3, KEY, bytes(16))


@pytest.mark.parametrize("n", [15, 17, 0, 32])
def test_block_length_refused(n):
    fails(f"block must be 16 bytes, got {n}", crypto.block_encrypt, Algorithm.AES128, KEY, bytes(n))
    fails(f"block must be 16 bytes, got {n}", crypto.block_decrypt, Algorithm.AES128, KEY, bytes(n))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_block_decrypt_inverts_the_cipher(algorithm):
    block = H("00112233445566778899AABBCCDDEEFF")
    sealed = ecb(algorithm, KEY, block)
    assert crypto.block_encrypt(algorithm, KEY, block) == sealed
    assert crypto.block_decrypt(algorithm, KEY, sealed) == block == ecb(algorithm, KEY, sealed, decrypt=True)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_secure_session_key(algorithm):
    challenge = H("C1C2C3C4C5C6C7C8")
    assert crypto.secure_session_key(algorithm, KEY, challenge) == ecb(algorithm, KEY, challenge + H("01") + bytes(7))


@pytest.mark.parametrize("n", [7, 9, 0, 16])
def test_session_key_challenge_length(n):
    fails(f"challenge must be 8 bytes, got {n}", crypto.secure_session_key, Algorithm.AES128, KEY, bytes(n))


@pytest.mark.parametrize("n", [1, 15, 16, 30, 31])
def test_diversification_input_lengths_accepted(n):
    assert len(crypto.diversify(Algorithm.AES128, KEY, bytes(range(n)))) == 16


@pytest.mark.parametrize("n", [0, 32, 33])
def test_diversification_input_lengths_refused(n):
    fails(f"diversification input must be 1..31 bytes, got {n}", crypto.diversify, Algorithm.AES128, KEY, bytes(n))


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("m", [bytes(range(31)), bytes(range(14)), bytes(range(15)), b"\x01"])
def test_diversify_written_out(algorithm, m):
    """AN10922 step by step: D = 01 || M, padded 80 00.. to 32 bytes unless it is 32 bytes; CBC with K1/K2."""
    zero = ecb(algorithm, KEY, bytes(16))

    def dbl(b):
        v = int.from_bytes(b, "big") << 1
        if v >> 128:
            v = (v ^ 0x87) & ((1 << 128) - 1)
        return v.to_bytes(16, "big")

    k1 = dbl(zero)
    k2 = dbl(k1)
    assert crypto.cmac_subkeys(algorithm, KEY) == (k1, k2)
    d = b"\x01" + m
    if len(d) == 32:
        last_key = k1
    else:
        d = (d + b"\x80").ljust(32, b"\x00")
        last_key = k2
    first = ecb(algorithm, KEY, d[:16])
    expected = ecb(algorithm, KEY, bytes(a ^ b ^ c for a, b, c in zip(first, d[16:], last_key)))
    assert crypto.diversify(algorithm, KEY, m) == expected


def test_double_with_and_without_the_carry():
    assert crypto._double(H("80000000000000000000000000000000")) == H("00000000000000000000000000000087")
    assert crypto._double(H("40000000000000000000000000000001")) == H("80000000000000000000000000000002")
    assert crypto._double(H("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF")) == H("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF79")


def test_xor_of_unequal_lengths_is_refused():
    assert crypto._xor(H("0F0F"), H("FF00")) == H("F00F")
    assert crypto._xor(H("0001"), H("0100")) == H("0101")
    fails("cannot xor 3 bytes with 4 bytes", crypto._xor, bytes(3), bytes(4))
    fails("cannot xor 2 bytes with 1 bytes", crypto._xor, bytes(2), bytes(1))


def test_mac8_matches():
    msg = b"one card"
    mac = crypto.mac8(Algorithm.SM4, KEY, msg)
    assert len(mac) == 8 and mac == crypto.cmac(Algorithm.SM4, KEY, msg)[:8]
    assert crypto.mac8_matches(Algorithm.SM4, KEY, msg, mac) is True
    assert crypto.mac8_matches(Algorithm.SM4, KEY, msg, crypto.cmac(Algorithm.SM4, KEY, msg)) is False
    assert crypto.mac8_matches(Algorithm.AES128, KEY, msg, mac) is False


def test_key_check_value_is_lowercase_first_three_bytes():
    assert crypto.key_check_value(Algorithm.AES128, KEY) == ecb(Algorithm.AES128, KEY, bytes(16))[:3].hex()
    assert len(crypto.key_check_value(Algorithm.SM4, KEY)) == 6


def test_card_diversification_input():
    assert crypto.card_diversification_input(H("1122334455667788"), H("00010001")) == H("112233445566778800010001")
    assert crypto.card_diversification_input(bytearray(8), bytearray(4)) == bytes(12)
    fails("ASN must be 8 bytes, got 7", crypto.card_diversification_input, bytes(7), bytes(4))
    fails("ASN must be 8 bytes, got 9", crypto.card_diversification_input, bytes(9), bytes(4))
    fails("enterprise ID must be 4 bytes, got 3", crypto.card_diversification_input, bytes(8), bytes(3))
    fails("enterprise ID must be 4 bytes, got 5", crypto.card_diversification_input, bytes(8), bytes(5))


# --- version 2 private data: SK_DATA and the counter-mode keystream (card-application.md 9.3) ---------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_data_session_key(algorithm):
    context = H("0102030405060708 0000002A")  # nonce || access counter
    assert crypto.data_session_key(algorithm, KEY, context) == ecb(algorithm, KEY, context + H("02000000"))
    assert crypto.DATA_CONTEXT_SIZE == 12


@pytest.mark.parametrize("n", [0, 11, 13, 16])
def test_data_session_key_context_length(n):
    fails(f"data context must be 12 bytes, got {n}", crypto.data_session_key, Algorithm.AES128, KEY, bytes(n))


def ctr_reference(algorithm, key, data):
    """Keystream block i = E(K, i as 16 big-endian bytes): CTR mode with an all-zero initial counter block."""
    alg = algorithms.AES(key) if algorithm is Algorithm.AES128 else algorithms.SM4(key)
    enc = Cipher(alg, modes.CTR(bytes(16))).encryptor()
    return enc.update(data) + enc.finalize()


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 32, 33, 80])
def test_ctr_crypt_is_counter_mode_from_block_zero(algorithm, n):
    sk = H("F0E1D2C3B4A5968778695A4B3C2D1E0F")
    data = bytes((7 * i + 3) & 0xFF for i in range(n))
    out = crypto.ctr_crypt(algorithm, sk, data)
    assert len(out) == n
    assert out == ctr_reference(algorithm, sk, data)
    assert crypto.ctr_crypt(algorithm, sk, out) == data  # the same operation deciphers
    if n >= 17:  # the second block uses counter 1, not counter 0 again
        zero = ecb(algorithm, sk, bytes(16))
        one = ecb(algorithm, sk, (1).to_bytes(16, "big"))
        assert out[:16] == bytes(a ^ b for a, b in zip(data[:16], zero)) and out[16] == data[16] ^ one[0]
