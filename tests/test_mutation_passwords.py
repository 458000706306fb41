"""common/passwords.py: the stored form pinned byte for byte, the scrypt parameters at their edges, every refusal with
its words, and a hash checked against hashlib.scrypt computed here (not through the module). Issue 15."""

from __future__ import annotations

import hashlib

import pytest

from common import passwords as pw

SALT = bytes(range(16))


def scrypt_hex(password: str, salt: bytes, n: int, r: int, p: int) -> str:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32).hex()


def stored(n=16, r=8, p=1, salt="00" * 16, digest="ab" * 32, n_text=None):
    return f"scrypt${n if n_text is None else n_text}${r}${p}${salt}${digest}"


def test_the_house_parameters_are_pinned():
    assert (pw.SCHEME, pw.N, pw.R, pw.P) == ("scrypt", 16384, 8, 1)


def test_a_hash_with_the_house_parameters_is_pinned():
    text = pw.hash_password("2468", SALT)
    assert text == "scrypt$16384$8$1$000102030405060708090a0b0c0d0e0f$" + scrypt_hex("2468", SALT, 16384, 8, 1)
    assert pw.check_hash_format(text) == (16384, 8, 1, SALT, bytes.fromhex(scrypt_hex("2468", SALT, 16384, 8, 1)))
    assert pw.verify_password(text, "2468")
    assert not pw.verify_password(text, "2469")
    assert not pw.verify_password(text, "")


def test_every_parameter_is_used_and_stored():
    for n, r, p in ((2, 1, 1), (16, 2, 3), (32, 3, 2)):
        text = pw.hash_password("密码 1", SALT, n=n, r=r, p=p)  # UTF-8: a non-ASCII password
        assert text == f"scrypt${n}${r}${p}${SALT.hex()}${scrypt_hex('密码 1', SALT, n, r, p)}"
        assert pw.verify_password(text, "密码 1")
        assert not pw.verify_password(text, "密码 2")
    # a hash made with other parameters does not verify under these
    other = pw.hash_password("x", SALT, n=16, r=2, p=3)
    for tampered in (other.replace("$16$", "$32$"), other.replace("$2$", "$3$"), other.replace("$3$", "$2$", 1)):
        assert tampered != other and not pw.verify_password(tampered, "x")
    # the salt is used: another salt, another digest
    assert pw.hash_password("x", bytes(16), n=16) != pw.hash_password("x", b"\x01" * 16, n=16)
    salted = pw.hash_password("x", b"\x01" * 16, n=16)
    assert not pw.verify_password(salted.replace("01" * 16, "02" * 16), "x")


def test_the_salt_is_16_bytes():
    for bad in (b"", bytes(15), bytes(17)):
        with pytest.raises(ValueError) as caught:
            pw.hash_password("x", bad, n=16)
        assert type(caught.value) is ValueError
        assert str(caught.value) == "the salt must be 16 bytes (os.urandom(16))"


def test_usable_parameters_at_their_edges():
    for n, r, p in ((2, 1, 1), (2**20, 1, 1), (16, 32, 1), (16, 1, 16), (1024, 8, 16)):
        assert pw.check_hash_format(stored(n, r, p))[:3] == (n, r, p)
    assert pw.check_hash_format(stored(n_text="0000016"))[0] == 16  # 7 digits
    assert pw.check_hash_format(stored(r="08", p="01"))[1:3] == (8, 1)  # 2 digits each
    n, r, p, salt, digest = pw.check_hash_format(stored(salt="0f" * 16, digest="e1" * 32))
    assert (salt, digest) == (b"\x0f" * 16, b"\xe1" * 32)


@pytest.mark.parametrize(
    "n, r, p",
    [(0, 8, 1), (1, 8, 1), (3, 8, 1), (12, 8, 1), (2**20 + 2**19, 8, 1), (2**21, 8, 1), (16, 0, 1), (16, 33, 1)]
    + [(16, 8, 0), (16, 8, 17), (6, 8, 1)],
)
def test_unusable_parameters_are_refused(n, r, p):
    with pytest.raises(pw.PasswordFormatError) as caught:
        pw.check_hash_format(stored(n, r, p))
    assert str(caught.value) == f"N={n} r={r} p={p} are not usable scrypt parameters"


@pytest.mark.parametrize(
    "text",
    [
        "",
        stored().replace("scrypt", "bcrypt"),
        stored().replace("scrypt", "SCRYPT"),
        "x" + stored(),
        stored() + "0",
        stored() + "\n",
        stored()[:-1],
        stored(salt="00" * 15),
        stored(salt="00" * 17),
        stored(salt="AB" * 16),
        stored(digest="AB" * 32),
        stored(digest="ab" * 31),
        stored(n_text="00000016"),  # 8 digits
        stored(n_text=""),
        stored(r="008"),
        stored(p="001"),
        stored(r=""),
        stored().replace("$", ":"),
    ],
)
def test_a_malformed_stored_hash_is_refused(text):
    with pytest.raises(pw.PasswordFormatError) as caught:
        pw.check_hash_format(text)
    assert str(caught.value) == "expected scrypt$N$r$p$<32 hex salt>$<64 hex hash>"
    with pytest.raises(pw.PasswordFormatError):
        pw.verify_password(text, "x")
    assert issubclass(pw.PasswordFormatError, ValueError)
