"""sam.keystore file format, unlocking, failure paths and key hiding; the `onecard sam` CLI end to end."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam import cli
from sam.interface import Algorithm, KeyPurpose, KeyUsage, SamError
from sam.keystore import (
    Keystore,
    KeystoreError,
    KeystoreUnlock,
    MasterKey,
    SecretKey,
    decode_keystore,
    encode_keystore,
    load_keystore,
    parse_enterprise_id,
    save_keystore,
)

REPO = Path(__file__).resolve().parent.parent
FAST_N = 2**10
ENTERPRISE = parse_enterprise_id("00010001")
OTHER_ENTERPRISE = parse_enterprise_id("20240315")
ALL_USAGES = frozenset(KeyUsage)
PASS = KeystoreUnlock.from_passphrase("correct horse battery staple")
DEVICE = KeystoreUnlock.from_device_secret(bytes(range(32)))


def sample_keystore() -> Keystore:
    keys = []
    for algorithm in Algorithm:
        keys += [
            MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 1, algorithm, {KeyUsage.VERIFY, KeyUsage.MAC}),
            MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 2, algorithm, {KeyUsage.VERIFY}),
            MasterKey.generate(ENTERPRISE, KeyPurpose.UPDATE, 1, algorithm, ALL_USAGES),
            MasterKey.generate(ENTERPRISE, KeyPurpose.TRANSPORT, 0, algorithm, {KeyUsage.MAC, KeyUsage.PERSONALISE}),
        ]
    keys.append(MasterKey.generate(OTHER_ENTERPRISE, KeyPurpose.ACCESS, 7, Algorithm.SM4, {KeyUsage.VERIFY}))
    return Keystore(keys)


KEYSTORE = sample_keystore()
ENCODED = encode_keystore(KEYSTORE, PASS, scrypt_n=FAST_N)
HEADER_LEN = ENCODED.index(b"\n", ENCODED.index(b"\n") + 1) + 1


def key_hexes(keystore: Keystore) -> list[str]:
    return [h for key in keystore for h in (key.key.reveal().hex(), key.key.reveal().hex().upper())]


def assert_same_keys(a: Keystore, b: Keystore) -> None:
    assert len(a) == len(b)
    for key in a:
        assert b.get(*key.ident) == key


# --- round trips ----------------------------------------------------------------------------------


def test_round_trip_passphrase_file(tmp_path):
    (tmp_path / "pw").write_bytes(b"correct horse battery staple\n")
    unlock = KeystoreUnlock.from_passphrase_file(tmp_path / "pw")
    save_keystore(tmp_path / "ks", KEYSTORE, unlock, scrypt_n=FAST_N)
    assert_same_keys(KEYSTORE, load_keystore(tmp_path / "ks", unlock))
    # The same passphrase given directly opens it too: the newline was not part of it.
    assert_same_keys(KEYSTORE, load_keystore(tmp_path / "ks", PASS))


def test_round_trip_device_secret_file(tmp_path):
    (tmp_path / "dev").write_bytes(bytes(range(32)))
    unlock = KeystoreUnlock.from_device_secret_file(tmp_path / "dev")
    save_keystore(tmp_path / "ks", KEYSTORE, unlock)
    assert_same_keys(KEYSTORE, load_keystore(tmp_path / "ks", DEVICE))
    assert (tmp_path / "ks").read_bytes().startswith(b"ONECARD-KEYSTORE 1\nkek=device-secret hkdf=sha256 salt=")


def test_header_is_self_describing():
    lines = ENCODED[:HEADER_LEN].split(b"\n")
    assert lines[0] == b"ONECARD-KEYSTORE 1"
    assert re.fullmatch(rb"kek=scrypt salt=[0-9a-f]{32} n=1024 r=8 p=1", lines[1])


def test_default_scrypt_cost_is_recorded(tmp_path):
    save_keystore(tmp_path / "ks", Keystore([]), PASS)
    assert b" n=32768 r=8 p=1\n" in (tmp_path / "ks").read_bytes()


def test_each_save_uses_fresh_salt_and_nonce():
    again = encode_keystore(KEYSTORE, PASS, scrypt_n=FAST_N)
    assert again[:HEADER_LEN] != ENCODED[:HEADER_LEN]
    assert again[HEADER_LEN : HEADER_LEN + 12] != ENCODED[HEADER_LEN : HEADER_LEN + 12]


def test_empty_keystore_round_trips():
    assert len(decode_keystore(encode_keystore(Keystore([]), DEVICE), DEVICE)) == 0


# --- the documented format, reimplemented from docs/key-handling.md -------------------------------


def doc_decrypt(data: bytes, passphrase: bytes | None = None, device_secret: bytes | None = None) -> dict:
    first = data.index(b"\n") + 1
    second = data.index(b"\n", first) + 1
    header = data[:second]
    fields = dict(f.split(b"=", 1) for f in data[first : second - 1].split(b" "))
    salt = bytes.fromhex(fields[b"salt"].decode())
    if fields[b"kek"] == b"scrypt":
        kek = Scrypt(salt=salt, length=32, n=int(fields[b"n"]), r=int(fields[b"r"]), p=int(fields[b"p"])).derive(
            passphrase
        )
    else:
        kek = HKDF(hashes.SHA256(), 32, salt, fields[b"info"]).derive(device_secret)
    nonce, sealed = data[second : second + 12], data[second + 12 :]
    return json.loads(AESGCM(kek).decrypt(nonce, sealed, header))


def test_documented_format_decrypts_independently():
    document = doc_decrypt(ENCODED, passphrase=b"correct horse battery staple")
    entries = {(e["enterprise_id"], e["purpose"], e["version"], e["algorithm"]): e for e in document["keys"]}
    for key in KEYSTORE:
        entry = entries[
            (key.enterprise_id.hex(), key.purpose.value, key.version, {1: "aes128", 2: "sm4"}[key.algorithm])
        ]
        assert entry["key"] == key.key.reveal().hex()
        assert entry["usages"] == sorted(u.value for u in key.usages)
    document = doc_decrypt(encode_keystore(KEYSTORE, DEVICE), device_secret=bytes(range(32)))
    assert len(document["keys"]) == len(KEYSTORE)


def test_file_written_from_the_documentation_loads(tmp_path):
    secret = b"\x5a" * 32
    salt, nonce = bytes(range(16)), bytes(range(12))
    header = (
        b"ONECARD-KEYSTORE 1\nkek=device-secret hkdf=sha256 salt="
        + salt.hex().encode()
        + b" info=onecard-keystore-kek-v1\n"
    )
    payload = json.dumps(
        {
            "keys": [
                {
                    "enterprise_id": "00010001",
                    "purpose": "access",
                    "version": 3,
                    "algorithm": "sm4",
                    "usages": ["verify"],
                    "key": "00112233445566778899aabbccddeeff",
                }
            ]
        }
    ).encode()
    kek = HKDF(hashes.SHA256(), 32, salt, b"onecard-keystore-kek-v1").derive(secret)
    (tmp_path / "ks").write_bytes(header + nonce + AESGCM(kek).encrypt(nonce, payload, header))
    keystore = load_keystore(tmp_path / "ks", KeystoreUnlock.from_device_secret(secret))
    key = keystore.get(ENTERPRISE, KeyPurpose.ACCESS, 3, Algorithm.SM4)
    assert key.usages == {KeyUsage.VERIFY}
    assert key.key.reveal() == bytes.fromhex("00112233445566778899aabbccddeeff")


def seal_payload(payload: bytes, passphrase: bytes = b"correct horse battery staple") -> bytes:
    salt, nonce = b"\x01" * 16, b"\x02" * 12
    header = b"ONECARD-KEYSTORE 1\nkek=scrypt salt=" + salt.hex().encode() + b" n=1024 r=8 p=1\n"
    kek = Scrypt(salt=salt, length=32, n=1024, r=8, p=1).derive(passphrase)
    return header + nonce + AESGCM(kek).encrypt(nonce, payload, header)


SECRET_HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


@pytest.mark.parametrize(
    "entries",
    [
        "not json",
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 0,
                "algorithm": "aes128",
                "usages": ["verify"],
                "key": SECRET_HEX,
            }
        ],
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 1,
                "algorithm": "des",
                "usages": ["verify"],
                "key": SECRET_HEX,
            }
        ],
        [
            {
                "enterprise_id": "0001000A",
                "purpose": "access",
                "version": 1,
                "algorithm": "sm4",
                "usages": ["verify"],
                "key": SECRET_HEX,
            }
        ],
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 1,
                "algorithm": "sm4",
                "usages": ["sign"],
                "key": SECRET_HEX,
            }
        ],
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 1,
                "algorithm": "sm4",
                "usages": [],
                "key": SECRET_HEX,
            }
        ],
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 1,
                "algorithm": "sm4",
                "usages": ["verify"],
                "key": SECRET_HEX[:-2],
            }
        ],
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 1,
                "algorithm": "sm4",
                "usages": ["verify"],
                "key": SECRET_HEX,
            }
        ]
        * 2,
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": 1,
                "algorithm": "sm4",
                "usages": ["verify"],
                "key": SECRET_HEX,
                "x": 1,
            }
        ],
        [
            {
                "enterprise_id": "00010001",
                "purpose": "access",
                "version": True,
                "algorithm": "sm4",
                "usages": ["verify"],
                "key": SECRET_HEX,
            }
        ],
    ],
)
def test_authentic_but_invalid_payload(entries):
    payload = entries.encode() if isinstance(entries, str) else json.dumps({"keys": entries}).encode()
    with pytest.raises(KeystoreError, match="contents are invalid") as excinfo:
        decode_keystore(seal_payload(payload), PASS, "ks")
    assert SECRET_HEX[:20] not in str(excinfo.value)


# --- failure paths --------------------------------------------------------------------------------


def test_wrong_passphrase_is_clear_and_writes_nothing(tmp_path):
    path = tmp_path / "ks"
    save_keystore(path, KEYSTORE, PASS, scrypt_n=FAST_N)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(KeystoreError) as excinfo:
        load_keystore(path, KeystoreUnlock.from_passphrase("Correct horse battery staple"))
    assert str(excinfo.value) == (
        f"wrong passphrase or corrupted keystore {path}: check the passphrase file; "
        "restore from backup if the passphrase is right"
    )
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == ["ks"]


def test_wrong_device_secret():
    data = encode_keystore(KEYSTORE, DEVICE)
    with pytest.raises(
        KeystoreError, match=r"^wrong device secret or corrupted keystore ks: check the device secret file"
    ):
        decode_keystore(data, KeystoreUnlock.from_device_secret(bytes(32)), "ks")


def test_unlock_of_the_wrong_kind():
    with pytest.raises(KeystoreError, match="locked with a passphrase, not a device secret"):
        decode_keystore(ENCODED, DEVICE, "ks")
    with pytest.raises(KeystoreError, match="locked with a device secret, not a passphrase"):
        decode_keystore(encode_keystore(KEYSTORE, DEVICE), PASS, "ks")


def corrupted_positions() -> list[int]:
    body = range(HEADER_LEN, len(ENCODED))
    return sorted(set(range(HEADER_LEN)) | set(body[:40]) | set(body[-24:]) | set(body[:: max(1, len(body) // 30)]))


@pytest.mark.parametrize("position", corrupted_positions())
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_single_byte_corruption_is_a_keystore_error(position, mask):
    data = bytearray(ENCODED)
    data[position] ^= mask
    with pytest.raises(KeystoreError) as excinfo:
        decode_keystore(bytes(data), PASS, "ks")
    assert "\n" not in str(excinfo.value)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(ENCODED) - 1), st.integers(0, 255))
def test_any_byte_replacement_is_a_keystore_error(position, value):
    data = bytearray(ENCODED)
    if data[position] == value:
        return
    data[position] = value
    with pytest.raises(KeystoreError):
        decode_keystore(bytes(data), PASS, "ks")


@pytest.mark.parametrize(
    "length",
    sorted(
        {
            0,
            1,
            10,
            16,
            17,
            18,
            19,
            30,
            HEADER_LEN - 1,
            HEADER_LEN,
            HEADER_LEN + 12,
            HEADER_LEN + 28,
            HEADER_LEN + 29,
            len(ENCODED) - 16,
            len(ENCODED) - 1,
        }
    ),
)
def test_truncated_file(tmp_path, length):
    (tmp_path / "ks").write_bytes(ENCODED[:length])
    with pytest.raises(KeystoreError, match="truncated or corrupted|wrong passphrase or corrupted"):
        load_keystore(tmp_path / "ks", PASS)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"ONECARD-KEYSTORE 2\n", "format version 2, this onecard reads version 1; .*upgrade onecard"),
        (b"ONECARD-KEYSTORE 01\n", "format version is not a number"),
        (b"ONECARD-KEYSTORE one\n", "format version is not a number"),
    ],
)
def test_format_version_line(header, message):
    with pytest.raises(KeystoreError, match=message):
        decode_keystore(header + ENCODED[len(b"ONECARD-KEYSTORE 1\n") :], PASS, "ks")


@pytest.mark.parametrize(
    "kek_line",
    [
        b"kek=scrypt salt=%s n=3 r=8 p=1",
        b"kek=scrypt salt=%s n=33554432 r=8 p=1",
        b"kek=scrypt salt=%s n=1048576 r=32 p=1",
        b"kek=scrypt salt=%s n=512 r=8 p=1",
        b"kek=scrypt salt=%s n=1024 r=8 p=1 x=1",
        b"kek=scrypt n=1024 salt=%s r=8 p=1",
        b"kek=scrypt salt=%s n=01024 r=8 p=1",
        b"kek=pbkdf2 salt=%s n=1024 r=8 p=1",
        b"kek=device-secret hkdf=sha1 salt=%s info=x",
        b"kek=device-secret hkdf=sha256 salt=%s info=a b",
    ],
)
def test_hostile_or_malformed_kek_line_is_refused_before_any_kdf(kek_line):
    salt = b"00" * 16
    data = b"ONECARD-KEYSTORE 1\n" + kek_line.replace(b"%s", salt) + b"\n" + ENCODED[HEADER_LEN:]
    with pytest.raises(KeystoreError, match="truncated or corrupted"):
        decode_keystore(data, PASS, "ks")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x89PNG\r\n\x1a\n" + bytes(100), b'{"keys": []}'])
def test_not_a_keystore(tmp_path, content):
    (tmp_path / "ks").write_bytes(content)
    with pytest.raises(KeystoreError, match="not a onecard keystore|truncated or corrupted"):
        load_keystore(tmp_path / "ks", PASS)


def test_missing_file(tmp_path):
    with pytest.raises(
        KeystoreError, match=f"keystore file not found: {re.escape(str(tmp_path / 'nope'))}; .*create-keystore"
    ):
        load_keystore(tmp_path / "nope", PASS)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(KeystoreError, match="cannot read keystore"):
        load_keystore(tmp_path, PASS)


def test_oversized_file(tmp_path):
    (tmp_path / "ks").write_bytes(b"ONECARD-KEYSTORE 1\n" + bytes(2 * 1024 * 1024))
    with pytest.raises(KeystoreError, match="not a onecard keystore"):
        load_keystore(tmp_path / "ks", PASS)


# --- writing --------------------------------------------------------------------------------------


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "ks"
    path.write_bytes(b"precious")
    with pytest.raises(KeystoreError, match="already exists; .*--force"):
        save_keystore(path, KEYSTORE, PASS, scrypt_n=FAST_N)
    assert path.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["ks"]
    save_keystore(path, KEYSTORE, PASS, scrypt_n=FAST_N, overwrite=True)
    assert_same_keys(KEYSTORE, load_keystore(path, PASS))


def test_final_link_does_not_replace_a_file_that_appeared_meanwhile(tmp_path):
    # save_keystore checks for an existing file first; this is the race after that check.
    from common import files

    (tmp_path / "ks").write_bytes(b"appeared")
    with pytest.raises(FileExistsError):
        files.write_atomically(tmp_path / "ks", b"new", overwrite=False)
    assert (tmp_path / "ks").read_bytes() == b"appeared"
    assert sorted(os.listdir(tmp_path)) == ["ks"]


def test_refuses_to_overwrite_a_dangling_symlink(tmp_path):
    (tmp_path / "ks").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeystoreError, match="already exists"):
        save_keystore(tmp_path / "ks", KEYSTORE, PASS, scrypt_n=FAST_N)
    assert not (tmp_path / "elsewhere").exists()


def test_file_mode_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        save_keystore(tmp_path / "ks", KEYSTORE, PASS, scrypt_n=FAST_N)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ks").stat().st_mode) == 0o600


def test_missing_directory(tmp_path):
    with pytest.raises(KeystoreError, match="cannot write keystore .*directory exists"):
        save_keystore(tmp_path / "no" / "ks", KEYSTORE, PASS, scrypt_n=FAST_N)


def test_keys_are_not_in_the_file_in_clear(tmp_path):
    save_keystore(tmp_path / "ks", KEYSTORE, PASS, scrypt_n=FAST_N)
    data = (tmp_path / "ks").read_bytes()
    for key in KEYSTORE:
        assert key.key.reveal() not in data
        assert key.key.reveal().hex().encode() not in data


# --- unlock secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "passphrase"),
    [(b"pw\n", b"pw"), (b"pw\r\n", b"pw"), (b"pw", b"pw"), (b"pw\n\n", b"pw\n"), (b" pw \n", b" pw ")],
)
def test_passphrase_file_strips_one_trailing_newline(tmp_path, content, passphrase):
    (tmp_path / "pw").write_bytes(content)
    data = encode_keystore(KEYSTORE, KeystoreUnlock.from_passphrase_file(tmp_path / "pw"), scrypt_n=FAST_N)
    assert len(decode_keystore(data, KeystoreUnlock.from_passphrase(passphrase))) == len(KEYSTORE)


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_passphrase_file(tmp_path, content):
    (tmp_path / "pw").write_bytes(content)
    with pytest.raises(KeystoreError, match="is empty"):
        KeystoreUnlock.from_passphrase_file(tmp_path / "pw")


def test_missing_secret_files(tmp_path):
    with pytest.raises(KeystoreError, match="passphrase file not found: .*; check --passphrase-file"):
        KeystoreUnlock.from_passphrase_file(tmp_path / "nope")
    with pytest.raises(KeystoreError, match="device secret file not found: .*; check --device-secret"):
        KeystoreUnlock.from_device_secret_file(tmp_path / "nope")


def test_short_device_secret(tmp_path):
    (tmp_path / "dev").write_bytes(b"short")
    with pytest.raises(KeystoreError, match="holds 5 bytes, need at least 16"):
        KeystoreUnlock.from_device_secret_file(tmp_path / "dev")


def test_device_secret_is_used_byte_exact(tmp_path):
    (tmp_path / "dev").write_bytes(bytes(range(32)) + b"\n")
    with pytest.raises(KeystoreError, match="wrong device secret"):
        decode_keystore(encode_keystore(KEYSTORE, DEVICE), KeystoreUnlock.from_device_secret_file(tmp_path / "dev"))


# --- model rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "version"),
    [
        (KeyPurpose.ACCESS, 0),
        (KeyPurpose.UPDATE, 0),
        (KeyPurpose.TRANSPORT, 1),
        (KeyPurpose.ACCESS, 256),
        (KeyPurpose.ACCESS, -1),
    ],
)
def test_key_versions(purpose, version):
    with pytest.raises(ValueError, match="version"):
        MasterKey.generate(ENTERPRISE, purpose, version, Algorithm.AES128, {KeyUsage.VERIFY})


def test_key_rules():
    with pytest.raises(ValueError, match="no usage"):
        MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.AES128, set())
    with pytest.raises(ValueError):
        MasterKey.generate(bytes.fromhex("0001000a"), KeyPurpose.ACCESS, 1, Algorithm.AES128, {KeyUsage.VERIFY})
    with pytest.raises(ValueError):
        MasterKey.generate(bytes(3), KeyPurpose.ACCESS, 1, Algorithm.AES128, {KeyUsage.VERIFY})
    with pytest.raises(ValueError):
        SecretKey(bytes(24))
    key = MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.AES128, {KeyUsage.VERIFY})
    with pytest.raises(
        ValueError, match="duplicate key: enterprise 00010001 purpose access version 1 algorithm aes128"
    ):
        Keystore([key, MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.AES128, {KeyUsage.MAC})])
    # Same enterprise, purpose and version under the other algorithm is a different key.
    assert (
        len(Keystore([key, MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.SM4, {KeyUsage.VERIFY})]))
        == 2
    )


@pytest.mark.parametrize("text", ["0001000", "000100010", "0001000A", "abcdefgh", " 00010001"])
def test_enterprise_id_text(text):
    with pytest.raises(ValueError, match="8 decimal digits"):
        parse_enterprise_id(text)


def test_restricted():
    door = KEYSTORE.restricted({KeyUsage.VERIFY}, purposes={KeyPurpose.ACCESS})
    assert {(k.enterprise_id, k.purpose, k.version) for k in door} == {
        (ENTERPRISE, KeyPurpose.ACCESS, 1),
        (ENTERPRISE, KeyPurpose.ACCESS, 2),
        (OTHER_ENTERPRISE, KeyPurpose.ACCESS, 7),
    }
    assert all(k.usages == {KeyUsage.VERIFY} for k in door)
    assert all(k.key == KEYSTORE.get(*k.ident).key for k in door)
    issuing = KEYSTORE.restricted(
        {KeyUsage.MAC, KeyUsage.PERSONALISE}, algorithms={Algorithm.SM4}, enterprise_ids={ENTERPRISE}
    )
    assert {(k.purpose, k.version, k.usages) for k in issuing} == {
        (KeyPurpose.ACCESS, 1, frozenset({KeyUsage.MAC})),
        (KeyPurpose.UPDATE, 1, frozenset({KeyUsage.MAC, KeyUsage.PERSONALISE})),
        (KeyPurpose.TRANSPORT, 0, frozenset({KeyUsage.MAC, KeyUsage.PERSONALISE})),
    }


# --- secrets stay hidden --------------------------------------------------------------------------


def test_keys_never_in_repr_str_or_pickles():
    shown = " ".join(
        [repr(KEYSTORE), str(KEYSTORE), repr(list(KEYSTORE)), str(list(KEYSTORE)), repr(PASS), str(DEVICE)]
        + [f"{key} {key.key} {key.key!r} {key.info()}" for key in KEYSTORE]
    )
    for hexed in key_hexes(KEYSTORE):
        assert hexed not in shown
    assert "correct horse" not in shown and bytes(range(32)).hex() not in shown
    assert "hidden" in repr(next(iter(KEYSTORE)).key)
    with pytest.raises(TypeError):
        pickle.dumps(next(iter(KEYSTORE)).key)
    with pytest.raises(TypeError):
        pickle.dumps(PASS)


def test_keystore_errors_are_sam_errors():
    assert issubclass(KeystoreError, SamError)


# --- CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def secrets_dir(tmp_path):
    (tmp_path / "pw").write_text("issuing station passphrase\n")
    (tmp_path / "door-secret").write_bytes(os.urandom(32))
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sam", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_key_in(text: str, *keystores: Keystore) -> None:
    for keystore in keystores:
        for hexed in key_hexes(keystore):
            assert hexed not in text


def test_cli_create_list_restrict(secrets_dir, capsys):
    d = secrets_dir
    code, out, err = run_cli(
        capsys,
        "create-keystore",
        "--out",
        str(d / "master.ks"),
        "--passphrase-file",
        str(d / "pw"),
        "--enterprise",
        "00010001",
    )
    assert (code, err) == (0, "")
    master = load_keystore(d / "master.ks", KeystoreUnlock.from_passphrase_file(d / "pw"))
    assert {(k.purpose, k.version, k.algorithm) for k in master} == {
        (p, v, a)
        for a in Algorithm
        for p, v in (
            (KeyPurpose.ACCESS, 1),
            (KeyPurpose.UPDATE, 1),
            (KeyPurpose.TRANSPORT, 0),
            (KeyPurpose.PURCHASE, 1),
            (KeyPurpose.LOAD, 1),
            (KeyPurpose.TAC, 1),
        )
    }
    # Every usage that means something for the purpose: reversal and subsidy only on LOAD, never mac on TAC.
    without_reversal = ALL_USAGES - {KeyUsage.REVERSAL, KeyUsage.SUBSIDY}
    for k in master:
        expected = {
            KeyPurpose.LOAD: ALL_USAGES - {KeyUsage.SUBSIDY},
            KeyPurpose.TAC: without_reversal - {KeyUsage.MAC},
        }.get(k.purpose, without_reversal)
        assert k.usages == expected and k.enterprise_id == ENTERPRISE, k.describe()
    for info in master.infos():
        assert info.kcv in out
    all_output = out + err

    code, out, err = run_cli(capsys, "list", "--keystore", str(d / "master.ks"), "--passphrase-file", str(d / "pw"))
    assert code == 0 and err == ""
    rows = out.splitlines()
    assert rows[0].split() == ["ENTERPRISE", "PURPOSE", "VERSION", "ALGORITHM", "USAGES", "KCV"]
    assert rows[1].split() == [
        "00010001",
        "access",
        "1",
        "aes128",
        "mac,personalise,verify",
        master.get(ENTERPRISE, KeyPurpose.ACCESS, 1, Algorithm.AES128).info().kcv,
    ]
    assert len(rows) == 13
    all_output += out + err

    code, out, err = run_cli(
        capsys,
        "restrict",
        "--keystore",
        str(d / "master.ks"),
        "--passphrase-file",
        str(d / "pw"),
        "--out",
        str(d / "door.ks"),
        "--usages",
        "verify",
        "--purposes",
        "access",
        "--out-device-secret-file",
        str(d / "door-secret"),
    )
    assert code == 0 and err == ""
    all_output += out + err
    door = load_keystore(d / "door.ks", KeystoreUnlock.from_device_secret_file(d / "door-secret"))
    assert {(k.purpose, k.algorithm, k.usages) for k in door} == {
        (KeyPurpose.ACCESS, a, frozenset({KeyUsage.VERIFY})) for a in Algorithm
    }
    assert all(k.key == master.get(*k.ident).key for k in door)
    assert stat.S_IMODE((d / "door.ks").stat().st_mode) == 0o600

    code, out, err = run_cli(
        capsys, "list", "--keystore", str(d / "door.ks"), "--device-secret-file", str(d / "door-secret")
    )
    assert code == 0 and len(out.splitlines()) == 3
    all_output += out + err
    assert_no_key_in(all_output, master)


def test_cli_create_options(secrets_dir, capsys):
    d = secrets_dir
    code, _, err = run_cli(
        capsys,
        "create-keystore",
        "--out",
        str(d / "ks"),
        "--device-secret-file",
        str(d / "door-secret"),
        "--enterprise",
        "20240315",
        "--algorithm",
        "sm4",
        "--usages",
        "verify, mac",
    )
    assert (code, err) == (0, "")
    keystore = load_keystore(d / "ks", KeystoreUnlock.from_device_secret_file(d / "door-secret"))
    assert len(keystore) == 6
    assert all(k.algorithm is Algorithm.SM4 for k in keystore)
    assert all(
        k.usages == ({KeyUsage.VERIFY} if k.purpose is KeyPurpose.TAC else {KeyUsage.VERIFY, KeyUsage.MAC})
        for k in keystore
    )


def test_cli_refuses_overwrite_without_force(secrets_dir, capsys):
    d = secrets_dir
    args = [
        "create-keystore",
        "--out",
        str(d / "ks"),
        "--passphrase-file",
        str(d / "pw"),
        "--enterprise",
        "00010001",
        "--algorithm",
        "aes128",
    ]
    assert run_cli(capsys, *args)[0] == 0
    before = (d / "ks").read_bytes()
    code, out, err = run_cli(capsys, *args)
    assert code == 1 and out == ""
    assert (
        err == f"error: keystore {d / 'ks'} already exists; "
        "choose another path or explicitly ask to overwrite it (--force)\n"
    )
    assert (d / "ks").read_bytes() == before
    assert run_cli(capsys, *args, "--force")[0] == 0
    assert (d / "ks").read_bytes() != before


@pytest.mark.parametrize(
    ("argv", "message", "exit_code"),
    [
        (
            ["create-keystore", "--out", "{d}/x", "--passphrase-file", "{d}/pw", "--enterprise", "1"],
            "is not 8 decimal digits",
            2,
        ),
        (
            [
                "create-keystore",
                "--out",
                "{d}/x",
                "--passphrase-file",
                "{d}/pw",
                "--enterprise",
                "00010001",
                "--algorithm",
                "des",
            ],
            "unknown algorithm 'des'; use one of aes128, sm4 or both",
            2,
        ),
        (
            [
                "create-keystore",
                "--out",
                "{d}/x",
                "--passphrase-file",
                "{d}/pw",
                "--enterprise",
                "00010001",
                "--usages",
                "verify,sign",
            ],
            "unknown usage 'sign' in --usages; use some of",
            2,
        ),
        (
            [
                "create-keystore",
                "--out",
                "{d}/x",
                "--passphrase-file",
                "{d}/pw",
                "--enterprise",
                "00010001",
                "--usages",
                "",
            ],
            "is not a comma-separated list",
            2,
        ),
        (
            ["create-keystore", "--out", "{d}/x", "--passphrase-file", "{d}/nope", "--enterprise", "00010001"],
            "passphrase file not found",
            1,
        ),
        (
            ["create-keystore", "--out", "{d}/no/x", "--passphrase-file", "{d}/pw", "--enterprise", "00010001"],
            "cannot write keystore .*directory exists",
            1,
        ),
        (["list", "--keystore", "{d}/nope", "--passphrase-file", "{d}/pw"], "keystore file not found", 1),
        (["list", "--keystore", "{d}/pw", "--passphrase-file", "{d}/pw"], "is not a onecard keystore", 1),
        (
            ["list", "--keystore", "{d}/master.ks", "--passphrase-file", "{d}/door-secret"],
            "wrong passphrase or corrupted keystore",
            1,
        ),
        (
            ["list", "--keystore", "{d}/master.ks", "--device-secret-file", "{d}/door-secret"],
            "locked with a passphrase",
            1,
        ),
        (
            [
                "restrict",
                "--keystore",
                "{d}/master.ks",
                "--passphrase-file",
                "{d}/pw",
                "--out",
                "{d}/y",
                "--usages",
                "verify",
                "--purposes",
                "doors",
            ],
            "unknown purpose 'doors'",
            2,
        ),
        (
            [
                "restrict",
                "--keystore",
                "{d}/master.ks",
                "--passphrase-file",
                "{d}/pw",
                "--out",
                "{d}/y",
                "--usages",
                "verify",
                "--enterprise",
                "99999999",
            ],
            "no key of .* is left",
            2,
        ),
        (
            [
                "restrict",
                "--keystore",
                "{d}/master.ks",
                "--passphrase-file",
                "{d}/pw",
                "--out",
                "{d}/master.ks",
                "--usages",
                "verify",
            ],
            "already exists",
            1,
        ),
    ],
)
def test_cli_errors_are_one_line(secrets_dir, capsys, argv, message, exit_code):
    # 2: the option values are wrong (README, exit status); 1: the keystore or the SAM refused
    d = secrets_dir
    save_keystore(d / "master.ks", KEYSTORE, KeystoreUnlock.from_passphrase_file(d / "pw"), scrypt_n=FAST_N)
    before = sorted(os.listdir(d))
    code, out, err = run_cli(capsys, *[a.replace("{d}", str(d)) for a in argv])
    assert code == exit_code and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "; " in err
    assert re.search(message, err)
    assert sorted(os.listdir(d)) == before
    assert_no_key_in(err, KEYSTORE)


def test_cli_subprocess_end_to_end(secrets_dir):
    d = secrets_dir
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def onecard(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sam.cli", "sam", *argv], capture_output=True, text=True, env=env, cwd=d
        )

    created = onecard("create-keystore", "--out", "ks", "--passphrase-file", "pw", "--enterprise", "00010001")
    assert created.returncode == 0, created.stderr
    listed = onecard("list", "--keystore", "ks", "--passphrase-file", "pw")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 13
    refused = onecard("create-keystore", "--out", "ks", "--passphrase-file", "pw", "--enterprise", "00010001")
    assert refused.returncode == 1 and refused.stderr.startswith("error: keystore ks already exists; ")
    keystore = load_keystore(d / "ks", KeystoreUnlock.from_passphrase_file(d / "pw"))
    assert_no_key_in(created.stdout + created.stderr + listed.stdout + listed.stderr + refused.stderr, keystore)


def test_add_subcommands_plugs_into_a_parser():
    import argparse

    # Wired the way onecard.cli wires every area: `onecard sam <command>`, args.handler(args) -> int.
    parser = argparse.ArgumentParser(prog="onecard")
    areas = parser.add_subparsers(dest="area", required=True)
    cli.add_subcommands(areas.add_parser("sam").add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sam", "list", "--keystore", "k", "--device-secret-file", "s"])
    assert args.handler is cli.cmd_list and args.keystore == "k" and str(args.device_secret_file) == "s"
    assert (
        parser.parse_args(
            ["sam", "create-keystore", "--out", "o", "--passphrase-file", "p", "--enterprise", "00010001"]
        ).handler
        is cli.cmd_create_keystore
    )
    assert (
        parser.parse_args(
            ["sam", "restrict", "--keystore", "k", "--passphrase-file", "p", "--out", "o", "--usages", "verify"]
        ).handler
        is cli.cmd_restrict
    )
    assert (
        parser.parse_args(
            ["sam", "restrict", "--keystore", "k", "--passphrase-file", "p", "--out", "o", "--role", "pos"]
        ).handler
        is cli.cmd_restrict
    )
    with pytest.raises(SystemExit):  # exactly one of --role, --keep, --usages
        parser.parse_args(
            [
                "sam",
                "restrict",
                "--keystore",
                "k",
                "--passphrase-file",
                "p",
                "--out",
                "o",
                "--role",
                "pos",
                "--usages",
                "mac",
            ]
        )
    with pytest.raises(SystemExit):
        parser.parse_args(["sam", "restrict", "--keystore", "k", "--passphrase-file", "p", "--out", "o"])
    with pytest.raises(SystemExit):
        parser.parse_args(["sam", "list", "--keystore", "k", "--device-secret-file", "s", "--passphrase-file", "p"])


# --- purse roles, TAC separation, state commands --------------------------------------------------

PURSE_MASTER = Keystore(
    [
        MasterKey.generate(
            ENTERPRISE,
            purpose,
            version,
            algorithm,
            ALL_USAGES if purpose is KeyPurpose.LOAD else ALL_USAGES - {KeyUsage.REVERSAL},
        )
        for algorithm in Algorithm
        for purpose, version in (
            (KeyPurpose.ACCESS, 1),
            (KeyPurpose.PURCHASE, 1),
            (KeyPurpose.LOAD, 1),
            (KeyPurpose.TAC, 1),
        )
    ]
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--role", "pos"],
            {
                (KeyPurpose.PURCHASE, frozenset({KeyUsage.MAC, KeyUsage.VERIFY})),
                (KeyPurpose.LOAD, frozenset({KeyUsage.REVERSAL, KeyUsage.SUBSIDY})),
            },
        ),
        (["--role", "top-up"], {(KeyPurpose.LOAD, frozenset({KeyUsage.MAC, KeyUsage.VERIFY}))}),
        (["--role", "platform"], {(KeyPurpose.TAC, frozenset({KeyUsage.VERIFY}))}),
        (["--role", "door"], {(KeyPurpose.ACCESS, frozenset({KeyUsage.VERIFY}))}),
        # The issuing station writes every card key, TAC included, and loads the balance a replacement card carries
        # (LOAD mac), but runs no purchase session and checks no TAC.
        (
            ["--role", "issuing"],
            {(p, frozenset({KeyUsage.PERSONALISE})) for p in (KeyPurpose.ACCESS, KeyPurpose.PURCHASE, KeyPurpose.TAC)}
            | {(KeyPurpose.LOAD, frozenset({KeyUsage.PERSONALISE, KeyUsage.MAC}))},
        ),
        (
            ["--keep", "purchase=mac,verify", "--keep", "load=reversal"],
            {
                (KeyPurpose.PURCHASE, frozenset({KeyUsage.MAC, KeyUsage.VERIFY})),
                (KeyPurpose.LOAD, frozenset({KeyUsage.REVERSAL})),
            },
        ),
        (["--keep", "load=reversal", "--algorithm", "sm4"], {(KeyPurpose.LOAD, frozenset({KeyUsage.REVERSAL}))}),
    ],
)
def test_cli_restrict_roles(secrets_dir, capsys, argv, expected):
    d = secrets_dir
    unlock = KeystoreUnlock.from_passphrase_file(d / "pw")
    save_keystore(d / "master.ks", PURSE_MASTER, unlock, scrypt_n=FAST_N)
    code, out, err = run_cli(
        capsys,
        "restrict",
        "--keystore",
        str(d / "master.ks"),
        "--passphrase-file",
        str(d / "pw"),
        "--out",
        str(d / "role.ks"),
        *argv,
    )
    assert (code, err) == (0, "")
    restricted = load_keystore(d / "role.ks", unlock)
    assert {(k.purpose, k.usages) for k in restricted} == expected
    algorithms = {Algorithm.SM4} if "sm4" in argv else set(Algorithm)
    assert {k.algorithm for k in restricted} == algorithms
    assert all(k.key == PURSE_MASTER.get(*k.ident).key for k in restricted)
    assert_no_key_in(out, PURSE_MASTER)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--usages", "verify"], "would hold TAC keys together with PURCHASE/LOAD keys.*--role platform"),
        (["--keep", "tac=verify", "--keep", "purchase=verify"], "would hold TAC keys together"),
        (["--keep", "purchase"], "is not PURPOSE=USAGES; write it like --keep load=reversal"),
        (["--keep", "purchase,load=mac"], "names several purposes"),
        (["--keep", "load=mac", "--keep", "load=verify"], "names load twice"),
        (["--keep", "load=undo"], "unknown usage 'undo' in --keep"),
        (["--keep", "load=mac", "--purposes", "load"], "--purposes goes with --usages"),
    ],
)
def test_cli_restrict_refusals(secrets_dir, capsys, argv, message):
    d = secrets_dir
    save_keystore(d / "master.ks", PURSE_MASTER, KeystoreUnlock.from_passphrase_file(d / "pw"), scrypt_n=FAST_N)
    before = sorted(os.listdir(d))
    code, out, err = run_cli(
        capsys,
        "restrict",
        "--keystore",
        str(d / "master.ks"),
        "--passphrase-file",
        str(d / "pw"),
        "--out",
        str(d / "x.ks"),
        *argv,
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert sorted(os.listdir(d)) == before


def test_restricted_per_purpose():
    pos = PURSE_MASTER.restricted_per_purpose(
        {KeyPurpose.PURCHASE: {KeyUsage.MAC}, KeyPurpose.LOAD: {KeyUsage.REVERSAL, KeyUsage.PERSONALISE}},
        algorithms={Algorithm.AES128},
    )
    assert {(k.purpose, k.algorithm, k.usages) for k in pos} == {
        (KeyPurpose.PURCHASE, Algorithm.AES128, frozenset({KeyUsage.MAC})),
        (KeyPurpose.LOAD, Algorithm.AES128, frozenset({KeyUsage.REVERSAL, KeyUsage.PERSONALISE})),
    }


def test_cli_init_and_show_state(tmp_path, capsys):
    state = tmp_path / "pos.ks.state"
    code, out, err = run_cli(capsys, "init-state", "--state", str(state), "--last-tsn", "41")
    assert (code, err) == (0, "") and "next purchase gets TSN 42" in out
    code, out, err = run_cli(capsys, "show-state", "--state", str(state))
    assert code == 0 and out == "last TSN 41\nlast purchase: none\n"
    before = state.read_bytes()
    code, out, err = run_cli(capsys, "init-state", "--state", str(state), "--last-tsn", "0")
    assert code == 2 and "already exists; move it aside first" in err and state.read_bytes() == before
    code, out, err = run_cli(capsys, "init-state", "--state", str(tmp_path / "x"), "--last-tsn", str(2**32 - 1))
    assert code == 2 and "is not 0..4294967294" in err
    state.write_bytes(before.replace(b"41", b"40"))
    code, out, err = run_cli(capsys, "show-state", "--state", str(state))
    assert code == 1 and "is corrupted (the checksum does not match" in err and err.count("\n") == 1


def test_cli_restrict_drops_a_retired_version(secrets_dir, capsys):
    d = secrets_dir
    unlock = KeystoreUnlock.from_passphrase_file(d / "pw")
    rotated = Keystore(
        [MasterKey.generate(ENTERPRISE, KeyPurpose.ACCESS, v, Algorithm.AES128, {KeyUsage.VERIFY}) for v in (1, 2)]
    )
    save_keystore(d / "both.ks", rotated, unlock, scrypt_n=FAST_N)
    base = [
        "restrict",
        "--keystore",
        str(d / "both.ks"),
        "--passphrase-file",
        str(d / "pw"),
        "--out",
        str(d / "v2.ks"),
        "--role",
        "door",
        "--drop-version",
        "1",
    ]
    eid = ENTERPRISE.hex()
    (d / "busy.json").write_text(f'{{"{eid}": {{"1": 3, "2": 9}}}}')
    (d / "done.json").write_text(f'{{"{eid}": {{"2": 12}}}}')
    # The platform decides: not without its report, not while it counts cards on version 1.
    code, out, err = run_cli(capsys, *base)
    assert code == 2 and "--drop-version needs --key-versions REPORT" in err and not (d / "v2.ks").exists()
    code, out, err = run_cli(capsys, *base, "--key-versions", str(d / "busy.json"))
    assert code == 1 and "version 1: 3 card(s)" in err and not (d / "v2.ks").exists()
    code, out, err = run_cli(capsys, *base, "--key-versions", str(d / "done.json"))
    assert (code, err) == (0, "")
    assert [k.version for k in load_keystore(d / "v2.ks", unlock)] == [2]
    # The override exists for installers, and it is loud.
    code, out, err = run_cli(capsys, *base, "--force", "--retire-although-cards-use-it")
    assert code == 0 and err.startswith("WARNING: --retire-although-cards-use-it")
