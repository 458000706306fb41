"""Cashier passwords kept only as salted scrypt hashes (hashlib, stdlib): `scrypt$N$r$p$SALT$HASH` (hex).

firmware.toml and the platform's configuration documents hold the hash; the password itself is typed on the keypad
at sign-in, compared here in constant time, and never logged or stored. Sans-I/O: the salt is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1  # 16 MiB, ~50 ms on a Raspberry Pi 3B+: slow enough against guessing a leaked hash
_FORMAT = re.compile(r"scrypt\$(\d{1,7})\$(\d{1,2})\$(\d{1,2})\$([0-9a-f]{32})\$([0-9a-f]{64})\Z")


class PasswordFormatError(ValueError):
    """A stored hash is not in the scrypt$N$r$p$salt$hash format."""


def hash_password(password: str, salt: bytes, n: int = N, r: int = R, p: int = P) -> str:
    if len(salt) != 16:
        raise ValueError("the salt must be 16 bytes (os.urandom(16))")
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"{SCHEME}${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_hash_format(stored: str) -> tuple[int, int, int, bytes, bytes]:
    m = _FORMAT.match(stored)
    if m is None:
        raise PasswordFormatError("expected scrypt$N$r$p$<32 hex salt>$<64 hex hash>")
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise PasswordFormatError(f"N={n} r={r} p={p} are not usable scrypt parameters")
    return n, r, p, bytes.fromhex(m[4]), bytes.fromhex(m[5])


def verify_password(stored: str, password: str) -> bool:
    n, r, p, salt, digest = check_hash_format(stored)
    candidate = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return hmac.compare_digest(candidate, digest)
