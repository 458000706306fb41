"""The software SAM's keystore: enterprise master keys in one AES-256-GCM file (format in docs/key-handling.md).

encode_keystore/decode_keystore work on bytes; load_keystore/save_keystore are the thin file layer.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from common import files
from sam.crypto import KEY_SIZE, key_check_value
from sam.interface import Algorithm, KeyInfo, KeyPurpose, KeyUsage, SamError

MAGIC = b"ONECARD-KEYSTORE"
FORMAT_VERSION = 1

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
# Bounds on what a file may ask for: a corrupted or hostile header must not make us allocate
# gigabytes; the floor lets tests use cheap files while refusing trivially weak ones.
SCRYPT_MIN_N = 2**10
SCRYPT_MAX_N = 2**20
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024  # scrypt needs 128 * r * n bytes
HKDF_INFO = "onecard-keystore-kek-v1"
DEVICE_SECRET_MIN_SIZE = 16

SALT_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
KEK_SIZE = 32
MAX_HEADER_SIZE = 512
MAX_FILE_SIZE = 1024 * 1024

TRANSPORT_VERSION = 0

ALGORITHM_NAMES = {Algorithm.AES128: "aes128", Algorithm.SM4: "sm4"}
_ALGORITHMS_BY_NAME = {name: algorithm for algorithm, name in ALGORITHM_NAMES.items()}

_ENTERPRISE_RE = re.compile(r"[0-9]{8}")
_HEX_SALT_RE = re.compile(rb"[0-9a-f]{%d}" % (2 * SALT_SIZE))
_DECIMAL_RE = re.compile(rb"[1-9][0-9]{0,9}")
_INFO_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class KeystoreError(SamError):
    """The keystore cannot be read, unlocked, or written; the message names the fix."""


# --- names ----------------------------------------------------------------------------------------


def parse_enterprise_id(text: str) -> bytes:
    """'00010001' -> b'\\x00\\x01\\x00\\x01' (4-byte BCD, written as its 8 decimal digits)."""
    if not _ENTERPRISE_RE.fullmatch(text):
        raise ValueError(f"enterprise ID {text!r} is not 8 decimal digits (4-byte BCD); write it like 00010001")
    return bytes.fromhex(text)


def format_enterprise_id(enterprise_id: bytes) -> str:
    return enterprise_id.hex()


def parse_algorithm(name: str) -> Algorithm:
    try:
        return _ALGORITHMS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; use one of {', '.join(_ALGORITHMS_BY_NAME)}") from None


def algorithm_name(algorithm: Algorithm) -> str:
    return ALGORITHM_NAMES.get(algorithm, f"0x{int(algorithm):02x}")


def describe_key(enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> str:
    """How messages name a master key: never by its bytes."""
    return (
        f"enterprise {format_enterprise_id(enterprise_id)} purpose {purpose.value} "
        f"version {version} algorithm {algorithm_name(algorithm)}"
    )


# --- keys -----------------------------------------------------------------------------------------


class SecretKey:
    """16 key bytes that do not show themselves in repr, str, f-strings, logs or pickles."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray)) or len(value) != KEY_SIZE:
            raise ValueError(f"a key must be {KEY_SIZE} bytes")
        self._value = bytes(value)

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(KEY_SIZE))

    def reveal(self) -> bytes:
        """The raw bytes; call only inside sam/ where a cipher needs them."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretKey(<{KEY_SIZE} bytes hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # nothing should index by key bytes

    def __reduce__(self):
        raise TypeError("SecretKey cannot be pickled: keys leave the SAM only through derive_card_keys")


@dataclass(frozen=True)
class MasterKey:
    """One enterprise master key and what it may be used for."""

    enterprise_id: bytes
    purpose: KeyPurpose
    version: int
    algorithm: Algorithm
    usages: frozenset[KeyUsage]
    key: SecretKey

    def __post_init__(self) -> None:
        if not isinstance(self.enterprise_id, bytes) or len(self.enterprise_id) != 4:
            raise ValueError("enterprise ID must be 4 bytes")
        parse_enterprise_id(self.enterprise_id.hex())  # rejects non-BCD nibbles
        if not isinstance(self.purpose, KeyPurpose):
            raise ValueError(f"purpose must be a KeyPurpose, got {self.purpose!r}")
        if not isinstance(self.algorithm, Algorithm):
            raise ValueError(f"algorithm must be an Algorithm, got {self.algorithm!r}")
        if type(self.version) is not int or not 0 <= self.version <= 255:
            raise ValueError(f"key version must be an integer 0..255, got {self.version!r}")
        if (self.purpose is KeyPurpose.TRANSPORT) != (self.version == TRANSPORT_VERSION):
            raise ValueError(
                f"{self.purpose.value} key has version {self.version}: version 0 is reserved for, "
                "and required of, transport keys; all other keys use 1..255"
            )
        if not isinstance(self.usages, frozenset) or not all(isinstance(u, KeyUsage) for u in self.usages):
            raise ValueError("usages must be a frozenset of KeyUsage")
        if not self.usages:
            raise ValueError(f"key {self.describe()} has no usage; give it at least one")
        if not isinstance(self.key, SecretKey):
            raise ValueError("key must be a SecretKey")

    @classmethod
    def generate(
        cls, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm, usages: Iterable[KeyUsage]
    ) -> MasterKey:
        return cls(enterprise_id, purpose, version, algorithm, frozenset(usages), SecretKey.generate())

    @property
    def ident(self) -> tuple[bytes, KeyPurpose, int, Algorithm]:
        return (self.enterprise_id, self.purpose, self.version, self.algorithm)

    def describe(self) -> str:
        return describe_key(*self.ident)

    def info(self) -> KeyInfo:
        return KeyInfo(
            self.enterprise_id,
            self.purpose,
            self.version,
            self.algorithm,
            self.usages,
            key_check_value(self.algorithm, self.key.reveal()),
        )


@dataclass(frozen=True)
class MasterCardAnchor:
    """The key master card a keystore was loaded from (docs/keys.md 6): later versions are accepted only from it.

    public_key: the card's Ed25519 identity public key (32 bytes); last_counter: the highest export counter accepted,
    so an older export of the same card cannot be loaded back.
    """

    enterprise_id: bytes
    public_key: bytes
    last_counter: int

    def __post_init__(self) -> None:
        if not isinstance(self.enterprise_id, bytes) or len(self.enterprise_id) != 4:
            raise ValueError("master card enterprise ID must be 4 bytes")
        parse_enterprise_id(self.enterprise_id.hex())
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise ValueError("master card public key must be 32 bytes")
        if type(self.last_counter) is not int or not 0 <= self.last_counter <= 0xFFFFFFFF:
            raise ValueError("master card export counter must be an integer 0..4294967295")


class Keystore:
    """An immutable set of master keys, unique by (enterprise, purpose, version, algorithm).

    master_card: the key master card the keys were loaded from, if any (None for create-keystore's keystores).
    """

    def __init__(self, keys: Iterable[MasterKey], master_card: MasterCardAnchor | None = None) -> None:
        if master_card is not None and not isinstance(master_card, MasterCardAnchor):
            raise TypeError(f"expected MasterCardAnchor, got {type(master_card).__name__}")
        self.master_card = master_card
        by_ident: dict[tuple[bytes, KeyPurpose, int, Algorithm], MasterKey] = {}
        for key in keys:
            if not isinstance(key, MasterKey):
                raise TypeError(f"expected MasterKey, got {type(key).__name__}")
            if key.ident in by_ident:
                raise ValueError(f"duplicate key: {key.describe()}")
            by_ident[key.ident] = key
        self._keys = by_ident

    def __iter__(self) -> Iterator[MasterKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keystore(<{len(self)} keys>)"

    def get(self, enterprise_id: bytes, purpose: KeyPurpose, version: int, algorithm: Algorithm) -> MasterKey | None:
        return self._keys.get((bytes(enterprise_id), purpose, version, algorithm))

    def infos(self) -> list[KeyInfo]:
        return [key.info() for key in self]

    def restricted_per_purpose(
        self,
        rules: Mapping[KeyPurpose, Iterable[KeyUsage]],
        algorithms: Iterable[Algorithm] | None = None,
        enterprise_ids: Iterable[bytes] | None = None,
    ) -> Keystore:
        """A copy keeping, of each purpose named in rules, at most that purpose's usages; other purposes are dropped.

        What a POS needs, PURCHASE with mac+verify but LOAD with reversal only, is not a single usage filter.
        """
        kept: list[MasterKey] = []
        for purpose, usages in rules.items():
            kept += self.restricted(usages, {purpose}, algorithms, enterprise_ids)
        return Keystore(kept, self.master_card)

    def restricted(
        self,
        usages: Iterable[KeyUsage],
        purposes: Iterable[KeyPurpose] | None = None,
        algorithms: Iterable[Algorithm] | None = None,
        enterprise_ids: Iterable[bytes] | None = None,
    ) -> Keystore:
        """A copy with at most these usages; keys left without any usage, or filtered out, are dropped."""
        allowed = frozenset(usages)
        purposes = None if purposes is None else frozenset(purposes)
        algorithms = None if algorithms is None else frozenset(algorithms)
        enterprise_ids = None if enterprise_ids is None else frozenset(enterprise_ids)
        kept = []
        for key in self:
            if purposes is not None and key.purpose not in purposes:
                continue
            if algorithms is not None and key.algorithm not in algorithms:
                continue
            if enterprise_ids is not None and key.enterprise_id not in enterprise_ids:
                continue
            remaining = key.usages & allowed
            if remaining:
                kept.append(replace(key, usages=remaining))
        return Keystore(kept, self.master_card)


# --- unlocking ------------------------------------------------------------------------------------


class KeystoreUnlock:
    """What opens a keystore: a passphrase (KEK by scrypt) or a device secret (KEK by HKDF-SHA256)."""

    PASSPHRASE = "passphrase"
    DEVICE_SECRET = "device-secret"

    __slots__ = ("kind", "source", "_secret")

    def __init__(self, kind: str, secret: bytes, source: str) -> None:
        if kind not in (self.PASSPHRASE, self.DEVICE_SECRET):
            raise ValueError(f"unknown unlock kind {kind!r}")
        self.kind = kind
        self.source = source
        self._secret = bytes(secret)

    @classmethod
    def from_passphrase(cls, passphrase: str | bytes, source: str = "passphrase") -> KeystoreUnlock:
        secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
        if not secret:
            raise KeystoreError(f"{source} is empty; use a non-empty passphrase")
        return cls(cls.PASSPHRASE, secret, source)

    @classmethod
    def from_device_secret(cls, secret: bytes, source: str = "device secret") -> KeystoreUnlock:
        if len(secret) < DEVICE_SECRET_MIN_SIZE:
            raise KeystoreError(
                f"{source} holds {len(secret)} bytes, need at least {DEVICE_SECRET_MIN_SIZE}; "
                "provision a device secret of 32 random bytes"
            )
        return cls(cls.DEVICE_SECRET, secret, source)

    @classmethod
    def from_passphrase_file(cls, path: str | os.PathLike[str], setting: str = "--passphrase-file") -> KeystoreUnlock:
        """Read a passphrase file; one trailing newline (LF or CRLF) is an editor's, not the passphrase's.

        setting: where the person running this named the file, for the error message.
        """
        data = _read_secret_file(path, "passphrase file", setting)
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        return cls.from_passphrase(data, source=f"passphrase file {path}")

    @classmethod
    def from_device_secret_file(
        cls, path: str | os.PathLike[str], setting: str = "--device-secret-file"
    ) -> KeystoreUnlock:
        """Read a device secret file; every byte counts, nothing is stripped."""
        data = _read_secret_file(path, "device secret file", setting)
        return cls.from_device_secret(data, source=f"device secret file {path}")

    def __repr__(self) -> str:
        return f"KeystoreUnlock({self.kind}, source={self.source!r}, <secret hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("KeystoreUnlock cannot be pickled")


def _read_secret_file(path: str | os.PathLike[str], what: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_SIZE)
    except FileNotFoundError:
        raise KeystoreError(f"{what} not found: {path}; check {option}") from None
    except OSError as e:
        raise KeystoreError(f"cannot read {what} {path} ({e.strerror}); check its path and permissions") from None


# --- header ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ScryptParams:
    salt: bytes
    n: int
    r: int
    p: int

    def line(self) -> bytes:
        return b"kek=scrypt salt=%s n=%d r=%d p=%d\n" % (self.salt.hex().encode(), self.n, self.r, self.p)


@dataclass(frozen=True)
class _HkdfParams:
    salt: bytes
    info: str

    def line(self) -> bytes:
        return b"kek=device-secret hkdf=sha256 salt=%s info=%s\n" % (self.salt.hex().encode(), self.info.encode())


def _magic_line(version: int) -> bytes:
    return MAGIC + b" %d\n" % version


def _check_scrypt_params(n: int, r: int, p: int) -> str | None:
    """Why these scrypt parameters are refused, or None when acceptable."""
    if n & (n - 1) or not SCRYPT_MIN_N <= n <= SCRYPT_MAX_N:
        return f"scrypt n={n} is not a power of two in {SCRYPT_MIN_N}..{SCRYPT_MAX_N}"
    if not 1 <= r <= 32 or not 1 <= p <= 16:
        return f"scrypt r={r} p={p} out of range (r 1..32, p 1..16)"
    if 128 * r * n > SCRYPT_MAX_MEMORY:
        return f"scrypt n={n} r={r} needs more than {SCRYPT_MAX_MEMORY // 2**20} MiB"
    return None


def _parse_kek_line(line: bytes) -> _ScryptParams | _HkdfParams | None:
    """Parse the KEK line (without its LF); None when it is not exactly one of the two forms."""
    fields = line.split(b" ")
    values: dict[bytes, bytes] = {}
    for field in fields:
        name, sep, value = field.partition(b"=")
        if not sep or name in values:
            return None
        values[name] = value
    names = list(values)
    if names == [b"kek", b"salt", b"n", b"r", b"p"] and values[b"kek"] == b"scrypt":
        if not _HEX_SALT_RE.fullmatch(values[b"salt"]):
            return None
        if not all(_DECIMAL_RE.fullmatch(values[k]) for k in (b"n", b"r", b"p")):
            return None
        return _ScryptParams(
            bytes.fromhex(values[b"salt"].decode()), int(values[b"n"]), int(values[b"r"]), int(values[b"p"])
        )
    if names == [b"kek", b"hkdf", b"salt", b"info"] and values[b"kek"] == b"device-secret":
        if values[b"hkdf"] != b"sha256" or not _HEX_SALT_RE.fullmatch(values[b"salt"]):
            return None
        if not _INFO_RE.fullmatch(values[b"info"]):
            return None
        return _HkdfParams(bytes.fromhex(values[b"salt"].decode()), values[b"info"].decode())
    return None


def _derive_kek(params: _ScryptParams | _HkdfParams, unlock: KeystoreUnlock) -> bytes:
    if isinstance(params, _ScryptParams):
        return Scrypt(salt=params.salt, length=KEK_SIZE, n=params.n, r=params.r, p=params.p).derive(unlock._secret)
    return HKDF(algorithm=hashes.SHA256(), length=KEK_SIZE, salt=params.salt, info=params.info.encode()).derive(
        unlock._secret
    )


# --- payload --------------------------------------------------------------------------------------

_ENTRY_FIELDS = {"enterprise_id", "purpose", "version", "algorithm", "usages", "key"}


def _payload(keystore: Keystore) -> bytes:
    entries = [
        {
            "enterprise_id": format_enterprise_id(key.enterprise_id),
            "purpose": key.purpose.value,
            "version": key.version,
            "algorithm": algorithm_name(key.algorithm),
            "usages": sorted(u.value for u in key.usages),
            "key": key.key.reveal().hex(),
        }
        for key in keystore
    ]
    document: dict = {"keys": entries}
    anchor = keystore.master_card
    if anchor is not None:
        # Only keystores loaded from a key master card carry it; others keep the exact format of 5.2.
        document["master_card"] = {
            "enterprise_id": format_enterprise_id(anchor.enterprise_id),
            "public_key": anchor.public_key.hex(),
            "last_counter": anchor.last_counter,
        }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _parse_payload(payload: bytes) -> Keystore:
    """Rebuild the keystore from its JSON; ValueError messages never quote a key."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("payload is not JSON") from None
    if (
        not isinstance(document, dict)
        or set(document) not in ({"keys"}, {"keys", "master_card"})
        or not isinstance(document["keys"], list)
    ):
        raise ValueError("payload is not an object with a 'keys' list")
    anchor = _parse_anchor(document["master_card"]) if "master_card" in document else None
    keys = []
    for index, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
            raise ValueError(f"key entry {index} must have exactly the fields {sorted(_ENTRY_FIELDS)}")
        key_hex = entry["key"]
        if not isinstance(key_hex, str) or not re.fullmatch(rf"[0-9a-f]{{{2 * KEY_SIZE}}}", key_hex):
            raise ValueError(f"key entry {index}: key is not {KEY_SIZE} bytes of lowercase hex")
        usages = entry["usages"]
        if (
            not isinstance(usages, list)
            or not all(isinstance(u, str) for u in usages)
            or len(set(usages)) != len(usages)
        ):
            raise ValueError(f"key entry {index}: usages must be a list of distinct names")
        for name in ("enterprise_id", "purpose", "algorithm"):
            if not isinstance(entry[name], str):
                raise ValueError(f"key entry {index}: {name} must be text")
        try:
            keys.append(
                MasterKey(
                    enterprise_id=parse_enterprise_id(entry["enterprise_id"]),
                    purpose=KeyPurpose(entry["purpose"]),
                    version=entry["version"],
                    algorithm=parse_algorithm(entry["algorithm"]),
                    usages=frozenset(KeyUsage(u) for u in usages),
                    key=SecretKey(bytes.fromhex(key_hex)),
                )
            )
        except ValueError as e:
            raise ValueError(f"key entry {index}: {e}") from None
    return Keystore(keys, anchor)


def _parse_anchor(doc: object) -> MasterCardAnchor:
    if not isinstance(doc, dict) or set(doc) != {"enterprise_id", "public_key", "last_counter"}:
        raise ValueError("master_card must have exactly the fields enterprise_id, public_key, last_counter")
    if not isinstance(doc["enterprise_id"], str) or not isinstance(doc["public_key"], str):
        raise ValueError("master_card enterprise_id and public_key must be text")
    if not re.fullmatch(r"[0-9a-f]{64}", doc["public_key"]):
        raise ValueError("master_card public_key is not 32 bytes of lowercase hex")
    return MasterCardAnchor(
        parse_enterprise_id(doc["enterprise_id"]), bytes.fromhex(doc["public_key"]), doc["last_counter"]
    )


# --- bytes <-> keystore ---------------------------------------------------------------------------


def encode_keystore(
    keystore: Keystore,
    unlock: KeystoreUnlock,
    *,
    scrypt_n: int = SCRYPT_N,
    scrypt_r: int = SCRYPT_R,
    scrypt_p: int = SCRYPT_P,
) -> bytes:
    """The complete keystore file for these keys, sealed under a fresh salt and nonce."""
    salt = secrets.token_bytes(SALT_SIZE)
    params: _ScryptParams | _HkdfParams
    if unlock.kind == KeystoreUnlock.PASSPHRASE:
        problem = _check_scrypt_params(scrypt_n, scrypt_r, scrypt_p)
        if problem:
            raise ValueError(problem)
        params = _ScryptParams(salt, scrypt_n, scrypt_r, scrypt_p)
    else:
        params = _HkdfParams(salt, HKDF_INFO)
    header = _magic_line(FORMAT_VERSION) + params.line()
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = AESGCM(_derive_kek(params, unlock)).encrypt(nonce, _payload(keystore), header)
    return header + nonce + sealed


def decode_keystore(data: bytes, unlock: KeystoreUnlock, source: str = "keystore") -> Keystore:
    """Open a keystore file's bytes; every failure is one KeystoreError naming source and the fix."""
    corrupt = f"keystore {source} is truncated or corrupted ({{}}); restore it from backup"
    magic_prefix = MAGIC + b" "
    if not data.startswith(magic_prefix):
        if magic_prefix.startswith(data):
            raise KeystoreError(corrupt.format(f"only {len(data)} bytes"))
        raise KeystoreError(
            f"{source} is not a onecard keystore (it does not start with {MAGIC.decode()}); "
            "check the keystore path, or restore from backup if this was your keystore"
        )
    magic_end = data.find(b"\n", 0, MAX_HEADER_SIZE)
    if magic_end < 0:
        raise KeystoreError(corrupt.format("no end of the first header line"))
    version_text = data[len(magic_prefix) : magic_end]
    if not _DECIMAL_RE.fullmatch(version_text):
        raise KeystoreError(corrupt.format("format version is not a number"))
    version = int(version_text)
    if version != FORMAT_VERSION:
        raise KeystoreError(
            f"keystore {source} has format version {version}, this onecard reads version {FORMAT_VERSION}; "
            "open it with the onecard release that wrote it, or upgrade onecard"
        )
    kek_end = data.find(b"\n", magic_end + 1, MAX_HEADER_SIZE)
    if kek_end < 0:
        raise KeystoreError(corrupt.format("no end of the KEK header line"))
    params = _parse_kek_line(data[magic_end + 1 : kek_end])
    if params is None:
        raise KeystoreError(corrupt.format("KEK header line is malformed"))
    header = data[: kek_end + 1]
    if isinstance(params, _ScryptParams):
        problem = _check_scrypt_params(params.n, params.r, params.p)
        if problem:
            raise KeystoreError(corrupt.format(problem))
    body = data[len(header) :]
    if len(body) < NONCE_SIZE + TAG_SIZE + 1:
        raise KeystoreError(corrupt.format(f"{len(body)} bytes after the header"))

    wanted = KeystoreUnlock.PASSPHRASE if isinstance(params, _ScryptParams) else KeystoreUnlock.DEVICE_SECRET
    if unlock.kind != wanted:
        if wanted == KeystoreUnlock.PASSPHRASE:
            raise KeystoreError(
                f"keystore {source} is locked with a passphrase, not a device secret; "
                "unlock it with its passphrase file"
            )
        raise KeystoreError(
            f"keystore {source} is locked with a device secret, not a passphrase; unlock it with its device secret file"
        )

    try:
        payload = AESGCM(_derive_kek(params, unlock)).decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], header)
    except InvalidTag:
        # GCM cannot tell a wrong KEK from altered bytes, so the message must offer both.
        if unlock.kind == KeystoreUnlock.PASSPHRASE:
            raise KeystoreError(
                f"wrong passphrase or corrupted keystore {source}: check the passphrase file; "
                "restore from backup if the passphrase is right"
            ) from None
        raise KeystoreError(
            f"wrong device secret or corrupted keystore {source}: check the device secret file; "
            "restore from backup if the device secret is right"
        ) from None
    try:
        return _parse_payload(payload)
    except ValueError as e:
        # Authentic but unusable: written by a buggy or newer writer, not by corruption in storage.
        raise KeystoreError(
            f"keystore {source} decrypted but its contents are invalid ({e}); restore it from backup"
        ) from None


# --- files ----------------------------------------------------------------------------------------


def load_keystore(path: str | os.PathLike[str], unlock: KeystoreUnlock) -> Keystore:
    """Read and open a keystore file; never writes."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise KeystoreError(
            f"keystore file not found: {path}; check the path or create one with 'onecard sam create-keystore'"
        ) from None
    except OSError as e:
        raise KeystoreError(f"cannot read keystore {path} ({e.strerror}); check its path and permissions") from None
    if len(data) > MAX_FILE_SIZE:
        raise KeystoreError(
            f"{path} is larger than {MAX_FILE_SIZE} bytes, so not a onecard keystore; check the keystore path"
        )
    return decode_keystore(data, unlock, source=str(path))


def save_keystore(
    path: str | os.PathLike[str],
    keystore: Keystore,
    unlock: KeystoreUnlock,
    *,
    overwrite: bool = False,
    scrypt_n: int = SCRYPT_N,
) -> None:
    """Write the keystore atomically with mode 0600; an existing file is replaced only if overwrite."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise KeystoreError(
            f"keystore {path} already exists; choose another path or explicitly ask to overwrite it (--force)"
        )
    data = encode_keystore(keystore, unlock, scrypt_n=scrypt_n)
    try:
        files.write_atomically(path, data, overwrite=overwrite)
    except FileExistsError:
        raise KeystoreError(
            f"keystore {path} already exists; choose another path or explicitly ask to overwrite it (--force)"
        ) from None
    except OSError as e:
        raise KeystoreError(
            f"cannot write keystore {path} ({e.strerror}); check that the directory exists, free space and permissions"
        ) from None
