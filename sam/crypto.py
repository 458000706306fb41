"""Block-cipher primitives of the SAM: single-block encryption, CMAC, AN10922 key diversification, KCV.

Pure functions over bytes for both card algorithms (AES-128 and SM4); no I/O, no state.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from sam.interface import Algorithm

BLOCK_SIZE = 16
KEY_SIZE = 16
MAC_SIZE = 8
ASN_SIZE = 8
ENTERPRISE_ID_SIZE = 4

# AN10922 prefixes the diversification input with a constant naming the output key type; 0x01 is
# AES-128. SM4 has the same block and key size, so onecard uses the same constant for it.
_DIVERSIFICATION_CONSTANT = b"\x01"
_MAX_DIVERSIFICATION_INPUT = 2 * BLOCK_SIZE - len(_DIVERSIFICATION_CONSTANT)
# The reduction constant of GF(2^128) used to double a block (SP 800-38B, Rb for 128-bit blocks).
_RB = 0x87


def _cipher_algorithm(algorithm: Algorithm, key: bytes) -> algorithms.AES | algorithms.SM4:
    if len(key) != KEY_SIZE:
        # algorithms.AES would silently accept 24- or 32-byte keys; card keys are AES-128 only.
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    if algorithm is Algorithm.AES128:
        return algorithms.AES(key)
    if algorithm is Algorithm.SM4:
        return algorithms.SM4(key)
    raise ValueError(f"unsupported algorithm {algorithm!r}")


def block_encrypt(algorithm: Algorithm, key: bytes, block: bytes) -> bytes:
    """Encrypt exactly one 16-byte block (raw block cipher, no mode)."""
    if len(block) != BLOCK_SIZE:
        raise ValueError(f"block must be {BLOCK_SIZE} bytes, got {len(block)}")
    encryptor = Cipher(_cipher_algorithm(algorithm, key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    if len(a) != len(b):
        raise ValueError(f"cannot xor {len(a)} bytes with {len(b)} bytes")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _double(block: bytes) -> bytes:
    value = int.from_bytes(block, "big") << 1
    if value >> (8 * BLOCK_SIZE):
        value ^= (1 << (8 * BLOCK_SIZE)) | _RB
    return value.to_bytes(BLOCK_SIZE, "big")


def cmac_subkeys(algorithm: Algorithm, key: bytes) -> tuple[bytes, bytes]:
    """The CMAC subkeys (K1, K2) of SP 800-38B: K1 = dbl(E_K(0^128)), K2 = dbl(K1)."""
    k1 = _double(block_encrypt(algorithm, key, bytes(BLOCK_SIZE)))
    return k1, _double(k1)


def cmac(algorithm: Algorithm, key: bytes, message: bytes) -> bytes:
    """Full 16-byte CMAC (NIST SP 800-38B) of message."""
    mac = CMAC(_cipher_algorithm(algorithm, key))
    mac.update(message)
    return mac.finalize()


def mac8(algorithm: Algorithm, key: bytes, message: bytes) -> bytes:
    """The 8-byte MAC cards and terminals exchange: the first 8 bytes of the CMAC."""
    return cmac(algorithm, key, message)[:MAC_SIZE]


def mac8_matches(algorithm: Algorithm, key: bytes, message: bytes, mac: bytes) -> bool:
    """True when mac is the 8-byte MAC of message, compared in constant time."""
    return hmac.compare_digest(mac8(algorithm, key, message), mac)


def diversify(algorithm: Algorithm, master_key: bytes, diversification_input: bytes) -> bytes:
    """Derive a 16-byte card key from a master key, NXP AN10922 AES-128 style (used as is for SM4).

    D = 0x01 || M is always padded to two blocks (0x80 then zeros) unless it already is 32 bytes,
    which differs from plain CMAC for M shorter than 16 bytes; hence the explicit CBC-MAC here.
    """
    if not 1 <= len(diversification_input) <= _MAX_DIVERSIFICATION_INPUT:
        raise ValueError(
            f"diversification input must be 1..{_MAX_DIVERSIFICATION_INPUT} bytes, got {len(diversification_input)}"
        )
    # One ECB encryptor for the three block encryptions (every tap diversifies: this is on the tap path).
    encrypt = Cipher(_cipher_algorithm(algorithm, master_key), modes.ECB()).encryptor().update
    k1 = _double(encrypt(bytes(BLOCK_SIZE)))
    data = _DIVERSIFICATION_CONSTANT + diversification_input
    if len(data) == 2 * BLOCK_SIZE:
        subkey = k1
    else:
        data = (data + b"\x80").ljust(2 * BLOCK_SIZE, b"\x00")
        subkey = _double(k1)
    first = encrypt(data[:BLOCK_SIZE])
    return encrypt(_xor(_xor(first, data[BLOCK_SIZE:]), subkey))


def key_check_value(algorithm: Algorithm, key: bytes) -> str:
    """KCV: lowercase hex of the first 3 bytes of the key encrypting 16 zero bytes."""
    return block_encrypt(algorithm, key, bytes(BLOCK_SIZE))[:3].hex()


def card_diversification_input(asn: bytes, enterprise_id: bytes) -> bytes:
    """M for a onecard card key: the 8-byte application serial number, then the 4-byte enterprise ID."""
    if len(asn) != ASN_SIZE:
        raise ValueError(f"ASN must be {ASN_SIZE} bytes, got {len(asn)}")
    if len(enterprise_id) != ENTERPRISE_ID_SIZE:
        raise ValueError(f"enterprise ID must be {ENTERPRISE_ID_SIZE} bytes, got {len(enterprise_id)}")
    return bytes(asn) + bytes(enterprise_id)


def block_decrypt(algorithm: Algorithm, key: bytes, block: bytes) -> bytes:
    """Decrypt exactly one 16-byte block (raw block cipher): how a card opens a PUT KEY cryptogram."""
    if len(block) != BLOCK_SIZE:
        raise ValueError(f"block must be {BLOCK_SIZE} bytes, got {len(block)}")
    decryptor = Cipher(_cipher_algorithm(algorithm, key), modes.ECB()).decryptor()
    return decryptor.update(block) + decryptor.finalize()


CHALLENGE_SIZE = 8


def secure_session_key(algorithm: Algorithm, admin_key: bytes, challenge: bytes) -> bytes:
    """SK_ENC of PUT KEY (card-application.md 8.2): E(K_admin, challenge || 01 || 00*7), fresh per challenge."""
    if len(challenge) != CHALLENGE_SIZE:
        raise ValueError(f"challenge must be {CHALLENGE_SIZE} bytes, got {len(challenge)}")
    return block_encrypt(algorithm, admin_key, challenge + b"\x01" + bytes(7))


def pin_session_key(algorithm: Algorithm, admin_key: bytes, challenge: bytes) -> bytes:
    """SK_PIN of CHANGE REFERENCE DATA (card-application.md 5.5): E(K_admin, challenge || 04 || 00*7). Byte 8 differs
    from SK_ENC's 01, so a PUT KEY cryptogram can never be deciphered as a PIN, nor the other way round."""
    if len(challenge) != CHALLENGE_SIZE:
        raise ValueError(f"challenge must be {CHALLENGE_SIZE} bytes, got {len(challenge)}")
    return block_encrypt(algorithm, admin_key, challenge + b"\x04" + bytes(7))


DATA_CONTEXT_SIZE = 12


def data_session_key(algorithm: Algorithm, card_key: bytes, context: bytes) -> bytes:
    """SK_DATA of card-application.md (version 2): E(K, context (12) || 02 00 00 00), the key that enciphers
    private card data in one answer. The context is nonce || access counter (ACCESS READ) or challenge || 00 00 00 00
    (secured reads), so a key is never used for two answers."""
    if len(context) != DATA_CONTEXT_SIZE:
        raise ValueError(f"data context must be {DATA_CONTEXT_SIZE} bytes, got {len(context)}")
    return block_encrypt(algorithm, card_key, context + b"\x02\x00\x00\x00")


def write_session_key(algorithm: Algorithm, card_key: bytes, context: bytes) -> bytes:
    """SK_WRITE of card-application.md 9.11: E(K, context (12) || 03 00 00 00), the key that enciphers private data
    a station writes to a version-2 card (the card office's secure messaging). Byte 12 is `03`, never the `02` of
    SK_DATA, so no write keystream is ever a read keystream, whatever the challenge."""
    if len(context) != DATA_CONTEXT_SIZE:
        raise ValueError(f"data context must be {DATA_CONTEXT_SIZE} bytes, got {len(context)}")
    return block_encrypt(algorithm, card_key, context + b"\x03\x00\x00\x00")


def ctr_crypt(algorithm: Algorithm, session_key: bytes, data: bytes) -> bytes:
    """Counter-mode encipherment (and decipherment, the same operation) under a one-answer session key:
    keystream block i = E(SK_DATA, i as 16 big-endian bytes), i = 0, 1, ..."""
    blocks = (len(data) + BLOCK_SIZE - 1) // BLOCK_SIZE
    encrypt = Cipher(_cipher_algorithm(algorithm, session_key), modes.ECB()).encryptor().update
    stream = encrypt(b"".join(i.to_bytes(BLOCK_SIZE, "big") for i in range(blocks)))
    return bytes(a ^ b for a, b in zip(data, stream, strict=False))
