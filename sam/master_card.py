"""The key master card (密钥母卡): its export format and the PC/SC client that talks to it (docs/keys.md).

Two halves, both sans-I/O except MasterCardClient.open:

* the **export format** (sections 4-5 of docs/keys.md): the card seals key entries for one target (a PSAM, a
  keystore tool, a backup recipient) with X25519 + HKDF-SHA256 + AES-256-GCM and signs the whole blob with its
  Ed25519 identity key. simulator/master_card.py (the card) seals; the PSAM (simulator/psam.py) and this module
  (KeystoreTarget, open_backup) open. Only the cryptography library's primitives are used.
* **MasterCardClient**: builds and parses the master card's APDUs around a connection (terminal.readers.pcsc or
  any object with transmit/close); status words become MasterCardError subclasses whose messages name the fix.

Key bytes exist in clear only inside the cards and inside sam/ (KeystoreTarget.open, open_backup) on the
administrator's key-management station; they are never logged, printed or put in an exception message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sam.interface import Algorithm, KeyInfo, KeyPurpose, KeyUsage, SamError
from sam.keystore import MasterCardAnchor, MasterKey, SecretKey, format_enterprise_id
from sam.roles import ROLE_KEYS  # noqa: F401  (re-exported: the exports are made per role)

AID = bytes.fromhex("F04F4E45434152444D")  # "ONECARD" + "M"aster
SELECT = bytes([0x00, 0xA4, 0x04, 0x00, len(AID)]) + AID + b"\x00"

PIN_MIN, PIN_MAX = 6, 12
PIN_TRIES = 3

# --- codes shared with the PSAM (docs/psam.md 2) -----------------------------------------------------

PURPOSE_CODES = {
    KeyPurpose.ACCESS: 0x01,
    KeyPurpose.UPDATE: 0x02,
    KeyPurpose.TRANSPORT: 0x03,
    KeyPurpose.PURCHASE: 0x04,
    KeyPurpose.LOAD: 0x05,
    KeyPurpose.TAC: 0x06,
}
PURPOSES_BY_CODE = {code: purpose for purpose, code in PURPOSE_CODES.items()}
USAGE_BITS = {
    KeyUsage.VERIFY: 0x01,
    KeyUsage.MAC: 0x02,
    KeyUsage.PERSONALISE: 0x04,
    KeyUsage.REVERSAL: 0x08,
    KeyUsage.SUBSIDY: 0x10,
}

# --- roles: what one export holds (docs/key-handling.md 3) --------------------------------------------

ROLE_CODES = {"door": 0x01, "pos": 0x02, "top-up": 0x03, "issuing": 0x04, "platform": 0x05}
ROLES_BY_CODE = {code: name for name, code in ROLE_CODES.items()}
# A PSAM offers verify, mac and reversal only and never holds a TAC key (docs/psam.md 2).
PSAM_ROLES = ("door", "pos", "top-up")

# --- export format (docs/keys.md 5) --------------------------------------------------------------------

MAGIC = b"OCKX"
FORMAT_VERSION = 0x01
KIND_TARGET = 0x01
KIND_BACKUP = 0x02
# A PSAM's complete key set for the enterprise (EXPORT FOR TARGET with P2 = lowest version kept): the PSAM drops every
# key of the enterprise the export does not hold. How a retired key version leaves a PSAM (docs/psam.md 4.9).
KIND_TARGET_SET = 0x03
TARGET_PSAM = 0x01
TARGET_KEYSTORE = 0x02
TARGET_BACKUP = 0x03
HEADER_SIZE = 122
SIGNATURE_SIZE = 64
TAG_SIZE = 16
ENTRY_SIZE = 24  # enterprise 4, purpose 1, version 1, algorithm 1, usages 1, key 16
IDENTITY_SEED_SIZE = 32
HKDF_INFO = b"onecard-key-export-v1"
MAX_EXPORT_SIZE = 0xFFFF
# A card restored from a backup resumes its export counter this far beyond the backup's: the lost card may have made
# exports after the backup, and targets refuse any counter not above the last one they accepted (docs/keys.md 5.3).
RESTORE_COUNTER_SKIP = 2**20


class MasterCardError(SamError):
    """The master card refused, or answered something unexpected; the message names the fix."""


class WrongPin(MasterCardError):
    def __init__(self, message: str, tries_left: int) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class CardBlocked(MasterCardError):
    """The PIN is blocked for good (no PUK, docs/keys.md 7): only a restore from backup into a new card helps."""


class ExportError(SamError):
    """An export blob is malformed, not for this target, not from the expected master card, or altered."""


@dataclass(frozen=True)
class ExportHeader:
    kind: int
    role: int
    target_kind: int
    enterprise_id: bytes
    master_public_key: bytes  # the card's Ed25519 identity key
    target_id: bytes  # 8 bytes
    target_public_key: bytes  # X25519: the target's ephemeral key, or the backup recipient's key
    card_ephemeral_key: bytes  # X25519, fresh for every export
    counter: int  # the card's export counter, +1 per export or backup

    def encode(self, ciphertext_size: int) -> bytes:
        return (
            MAGIC
            + bytes([FORMAT_VERSION, self.kind, self.role, self.target_kind])
            + self.enterprise_id
            + self.master_public_key
            + self.target_id
            + self.target_public_key
            + self.card_ephemeral_key
            + self.counter.to_bytes(4, "big")
            + ciphertext_size.to_bytes(2, "big")
        )


@dataclass(frozen=True)
class ParsedExport:
    header: ExportHeader
    signed: bytes  # header || ciphertext: what the signature covers
    header_bytes: bytes
    ciphertext: bytes
    signature: bytes


def _kdf(shared: bytes, header_bytes: bytes) -> tuple[bytes, bytes]:
    # The key and the nonce both come from a secret fresh per export (the card's ephemeral key), so the nonce is
    # never reused under a key; binding the header into the info makes any header change give another key too.
    okm = HKDF(algorithm=hashes.SHA256(), length=32 + 12, salt=None, info=HKDF_INFO + header_bytes).derive(shared)
    return okm[:32], okm[32:]


def _x25519_public(data: bytes) -> X25519PublicKey:
    if len(data) != 32:
        raise ExportError("an X25519 public key must be 32 bytes")
    return X25519PublicKey.from_public_bytes(data)


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(_x25519_public(public))
    except ValueError:
        # cryptography refuses low-order points (an all-zero shared secret): such a key proves nothing.
        raise ExportError("the X25519 public key is a low-order point; it cannot be used") from None


def seal_export(
    header: ExportHeader, plaintext: bytes, card_ephemeral: X25519PrivateKey, identity: Ed25519PrivateKey
) -> bytes:
    """The card's side: encrypt plaintext for header.target_public_key and sign everything with the identity key."""
    size = len(plaintext) + TAG_SIZE
    if HEADER_SIZE + size + SIGNATURE_SIZE > MAX_EXPORT_SIZE:
        raise ExportError("the key set is too large for one export")
    header_bytes = header.encode(size)
    key, nonce = _kdf(_exchange(card_ephemeral, header.target_public_key), header_bytes)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, header_bytes)
    signed = header_bytes + ciphertext
    return signed + identity.sign(signed)


def parse_export(blob: bytes) -> ParsedExport:
    """Split a blob into its fields; ExportError when its framing is wrong. Checks nothing cryptographic."""
    blob = bytes(blob)
    if len(blob) < HEADER_SIZE + TAG_SIZE + SIGNATURE_SIZE or blob[:4] != MAGIC:
        raise ExportError("not a onecard key export (too short or wrong magic)")
    if blob[4] != FORMAT_VERSION:
        raise ExportError(f"key export format {blob[4]} is not the format {FORMAT_VERSION} this onecard reads")
    size = int.from_bytes(blob[120:122], "big")
    if len(blob) != HEADER_SIZE + size + SIGNATURE_SIZE or size < TAG_SIZE:
        raise ExportError("key export length does not match its header (truncated or padded)")
    header = ExportHeader(
        blob[5],
        blob[6],
        blob[7],
        blob[8:12],
        blob[12:44],
        blob[44:52],
        blob[52:84],
        blob[84:116],
        int.from_bytes(blob[116:120], "big"),
    )
    return ParsedExport(
        header,
        blob[: HEADER_SIZE + size],
        blob[:HEADER_SIZE],
        blob[HEADER_SIZE : HEADER_SIZE + size],
        blob[HEADER_SIZE + size :],
    )


def verify_export_signature(parsed: ParsedExport, public_key: bytes) -> None:
    """Raise ExportError unless the blob is signed by this Ed25519 identity key."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(parsed.signature, parsed.signed)
    except (InvalidSignature, ValueError):
        raise ExportError("the key export is not signed by the expected key master card") from None


def open_export(parsed: ParsedExport, target_private: X25519PrivateKey) -> bytes:
    """Decrypt with the target's private key; ExportError if it is not for this key or was altered."""
    key, nonce = _kdf(_exchange(target_private, parsed.header.card_ephemeral_key), parsed.header_bytes)
    try:
        return AESGCM(key).decrypt(nonce, parsed.ciphertext, parsed.header_bytes)
    except InvalidTag:
        raise ExportError(
            "the key export does not decrypt for this target (made for another one, or altered)"
        ) from None


def encode_entries(keys: Iterable[MasterKey]) -> bytes:
    out = bytearray()
    for key in keys:
        usages = sum(USAGE_BITS[u] for u in key.usages)
        out += key.enterprise_id + bytes([PURPOSE_CODES[key.purpose], key.version, int(key.algorithm), usages])
        out += key.key.reveal()
    return bytes(out)


def decode_entries(data: bytes, *, usages_required: bool = True) -> list[MasterKey]:
    """Key entries of a decrypted export; ExportError (never quoting key bytes) when one is invalid.

    usages_required=False for backups: the master card holds keys without usages (the byte is 00).
    """
    if not data or len(data) % ENTRY_SIZE:
        raise ExportError(f"key export holds {len(data)} bytes of entries, not a multiple of {ENTRY_SIZE}")
    keys = []
    for at in range(0, len(data), ENTRY_SIZE):
        e = data[at : at + ENTRY_SIZE]
        purpose = PURPOSES_BY_CODE.get(e[4])
        if purpose is None or e[6] not in (1, 2) or e[7] & ~sum(USAGE_BITS.values()):
            raise ExportError(f"key export entry {at // ENTRY_SIZE} names an unknown purpose, algorithm or usage")
        usages = frozenset(u for u, bit in USAGE_BITS.items() if e[7] & bit)
        if not usages_required:
            usages = frozenset(KeyUsage)  # placeholder: a backup restores into a master card, which ignores usages
        try:
            keys.append(MasterKey(bytes(e[:4]), purpose, e[5], Algorithm(e[6]), usages, SecretKey(bytes(e[8:24]))))
        except ValueError as exc:
            raise ExportError(f"key export entry {at // ENTRY_SIZE} is invalid ({exc})") from None
    return keys


# --- targets ------------------------------------------------------------------------------------------


class KeystoreTarget:
    """The software keystore tool as an export target: an ephemeral X25519 key and a random 8-byte target ID.

    One target opens one export: the private key is dropped after open(), so a recorded export cannot be opened
    again, by this process or any other.
    """

    def __init__(self) -> None:
        self._private: X25519PrivateKey | None = X25519PrivateKey.generate()
        self.target_id = secrets.token_bytes(8)
        self.public_key = self._private.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return f"KeystoreTarget({self.target_id.hex()}, <private key hidden>)"

    def open(self, blob: bytes, trusted: MasterCardAnchor) -> tuple[list[MasterKey], MasterCardAnchor]:
        """Check the export is for this target, from the trusted card, newer than trusted.last_counter; decrypt.

        Returns the keys and the anchor to store in the keystore (same card, this export's counter).
        """
        if self._private is None:
            raise ExportError("this keystore target already opened an export; start a new load")
        private, self._private = self._private, None
        parsed = parse_export(blob)
        h = parsed.header
        if h.kind != KIND_TARGET or h.target_kind != TARGET_KEYSTORE:
            raise ExportError("the key export is not made for a keystore")
        if h.target_id != self.target_id or h.target_public_key != self.public_key:
            raise ExportError("the key export was made for another target (replayed or mixed up)")
        if h.master_public_key != trusted.public_key or h.enterprise_id != trusted.enterprise_id:
            raise ExportError("the key export comes from another key master card than the one this keystore trusts")
        verify_export_signature(parsed, trusted.public_key)
        if h.counter <= trusted.last_counter:
            raise ExportError("the key export is older than one this keystore already loaded (replayed)")
        keys = decode_entries(open_export(parsed, private))
        for key in keys:
            if key.enterprise_id != h.enterprise_id:
                raise ExportError("the key export holds keys of another enterprise than its header names")
        return keys, MasterCardAnchor(h.enterprise_id, h.master_public_key, h.counter)


class SecretKey32:
    """32 secret bytes (the card's Ed25519 identity seed) that never show themselves."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if len(value) != 32:
            raise ValueError("an identity seed must be 32 bytes")
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "SecretKey32(<32 bytes hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("secret bytes cannot be pickled")


@dataclass(frozen=True)
class BackupContents:
    enterprise_id: bytes
    identity_seed: SecretKey32  # the card's Ed25519 identity, so a restored card signs as the old one
    counter: int
    keys: list[MasterKey]


def backup_target_id(recipient_public_key: bytes) -> bytes:
    """A backup's target ID: the first 8 bytes of SHA-256 of the recipient's X25519 public key."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(recipient_public_key)
    return digest.finalize()[:8]


def open_backup(blob: bytes, recipient_private: X25519PrivateKey) -> BackupContents:
    """Check and decrypt a backup: signed by the identity key it carries, for this recipient; ExportError otherwise."""
    parsed = parse_export(blob)
    h = parsed.header
    if h.kind != KIND_BACKUP or h.target_kind != TARGET_BACKUP:
        raise ExportError("not a key master card backup (it is an export for a terminal)")
    recipient_public = recipient_private.public_key().public_bytes_raw()
    if h.target_public_key != recipient_public or h.target_id != backup_target_id(recipient_public):
        raise ExportError("the backup was made for another recipient key")
    verify_export_signature(parsed, h.master_public_key)
    plaintext = open_export(parsed, recipient_private)
    if len(plaintext) < IDENTITY_SEED_SIZE + ENTRY_SIZE:
        raise ExportError("the backup holds no keys")
    seed = plaintext[:IDENTITY_SEED_SIZE]
    identity = Ed25519PrivateKey.from_private_bytes(seed)
    if identity.public_key().public_bytes_raw() != h.master_public_key:
        raise ExportError("the backup's identity key does not match the key that signed it")
    keys = decode_entries(plaintext[IDENTITY_SEED_SIZE:], usages_required=False)
    if any(k.enterprise_id != h.enterprise_id for k in keys):
        raise ExportError("the backup holds keys of another enterprise than its header names")
    return BackupContents(h.enterprise_id, SecretKey32(seed), h.counter, keys)


def new_recipient_key() -> tuple[bytes, bytes]:
    """(private key PEM, public key PEM) of a new X25519 backup recipient key."""
    private = X25519PrivateKey.generate()
    return (
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def load_recipient_public(pem: bytes) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ExportError("not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise ExportError("the recipient key is not an X25519 public key")
    return key.public_bytes_raw()


def load_recipient_private(pem: bytes) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ExportError("not an unencrypted PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise ExportError("the recipient key is not an X25519 private key")
    return key


# --- the client ---------------------------------------------------------------------------------------


class Connection(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CardInfo:
    enterprise_id: bytes
    pin_tries_left: int
    latest_version: int
    key_count: int
    export_counter: int
    public_key: bytes

    @property
    def blocked(self) -> bool:
        return self.pin_tries_left == 0

    def anchor(self) -> MasterCardAnchor:
        """What a new keystore loaded from this card trusts (counter 0: any export of it is newer)."""
        return MasterCardAnchor(self.enterprise_id, self.public_key, 0)


def decode_key_info(entry: bytes) -> KeyInfo:
    purpose = PURPOSES_BY_CODE.get(entry[4])
    if purpose is None or entry[6] not in (1, 2):
        raise ValueError(f"unknown purpose {entry[4]:#04x} or algorithm {entry[6]:#04x}")
    usages = frozenset(u for u, bit in USAGE_BITS.items() if entry[7] & bit)
    return KeyInfo(bytes(entry[:4]), purpose, entry[5], Algorithm(entry[6]), usages, entry[8:11].hex())


def parse_pin(data: bytes, source: str) -> bytes:
    """A PIN from a file: one trailing newline stripped; 6..12 ASCII digits."""
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not (PIN_MIN <= len(data) <= PIN_MAX and data.isdigit() and data.isascii()):
        raise MasterCardError(
            f"{source} does not hold a PIN of {PIN_MIN}..{PIN_MAX} digits; write only the digits in it"
        )
    return data


class MasterCardClient:
    """The key master card in a PC/SC reader (or any connection), selected once when made; the PIN session lasts as
    long as the connection."""

    def __init__(
        self, connection: Connection, name: str = "master card reader", on_close: Callable[[], None] | None = None
    ):
        self._connection = connection
        self.name = name
        self._on_close = on_close
        sw, _ = self._send(SELECT, "SELECT")
        if sw != 0x9000:
            raise MasterCardError(
                f"the card in {name!r} is not a onecard key master card (SELECT answered {sw:04X}); "
                "insert the enterprise's key master card (onecard sim new-master-card makes a simulated one)"
            )

    @classmethod
    def open(cls, reader: str, timeout: float = 3.0) -> MasterCardClient:
        from terminal.reader import ReaderError
        from terminal.readers.pcsc import PcscReader

        try:
            r = PcscReader(reader)
            connection = r.wait_for_card(timeout)
        except ReaderError as exc:
            raise MasterCardError(f"master card reader unusable: {exc}") from None
        if connection is None:
            r.close()
            raise MasterCardError(f"no card in reader {r.name!r} within {timeout:g} s; insert the key master card")
        try:
            return cls(connection, r.name, r.close)
        except BaseException:
            r.close()
            raise

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> MasterCardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, apdu: bytes, what: str) -> tuple[int, bytes]:
        from terminal.reader import CardRemoved, ReaderError

        try:
            answer = self._connection.transmit(apdu)
        except (CardRemoved, ReaderError) as exc:
            raise MasterCardError(
                f"the key master card in {self.name!r} stopped answering during {what} ({exc}); "
                "check it is seated and run the command again"
            ) from None
        if len(answer) < 2:
            raise MasterCardError(f"the key master card answered {what} with {len(answer)} bytes; check the reader")
        return int.from_bytes(answer[-2:], "big"), bytes(answer[:-2])

    def _fail(self, sw: int, what: str) -> MasterCardError:
        if sw == 0x6983:
            return CardBlocked(
                f"the key master card in {self.name!r} is blocked (PIN tried wrong {PIN_TRIES} times) "
                "and stays blocked; restore the latest backup into a new master card "
                "(onecard sim restore-master-card for a simulated one) and destroy this one"
            )
        if sw == 0x63C0:
            # The wrong PIN that used the last try: the card is blocked now (ISO 7816-4: 63 C0, no tries left).
            return CardBlocked(
                f"wrong PIN for the key master card in {self.name!r}: that was the last of {PIN_TRIES} tries and the "
                "card is now blocked for good; restore the latest backup into a new master card (onecard sim "
                "restore-master-card for a simulated one) and destroy this one"
            )
        if 0x63C1 <= sw <= 0x63CF:
            left = sw & 0x0F
            return WrongPin(
                f"wrong PIN for the key master card: {left} tr{'y' if left == 1 else 'ies'} left before it "
                "blocks for good; check the PIN file",
                left,
            )
        if sw == 0x6982:
            return MasterCardError(f"the key master card refused {what}: PIN not verified; pass --pin-file")
        if sw == 0x6A89:
            return MasterCardError(
                f"the key master card refused {what}: that key version exists already; "
                "omit the version to get the next one"
            )
        if sw == 0x6A84:
            return MasterCardError(
                f"the key master card refused {what}: every key version 1..255 is used; "
                "the enterprise needs a new master card"
            )
        if sw == 0x6A80:
            return MasterCardError(f"the key master card refused the data of {what} (6A80); check the PIN or key given")
        if sw == 0x6581:
            return MasterCardError(
                f"the key master card could not write its memory during {what} (6581); replace it from backup"
            )
        return MasterCardError(
            f"the key master card answered {what} with status {sw:04X}; check it is a onecard key "
            "master card (docs/keys.md)"
        )

    def _ok(self, apdu: bytes, what: str) -> bytes:
        sw, data = self._send(apdu, what)
        if sw != 0x9000:
            raise self._fail(sw, what)
        return data

    # --- commands -----------------------------------------------------------------------------------

    def card_info(self) -> CardInfo:
        data = self._ok(bytes([0x80, 0xCA, 0x01, 0x00, 0x00]), "GET CARD INFO")
        if len(data) != 43:
            raise MasterCardError(
                f"the key master card answered GET CARD INFO with {len(data)} bytes, expected 43; "
                "check it is a onecard key master card"
            )
        return CardInfo(data[:4], data[4], data[5], data[6], int.from_bytes(data[7:11], "big"), data[11:43])

    def key_infos(self) -> list[KeyInfo]:
        infos: list[KeyInfo] = []
        while True:
            data = self._ok(bytes([0x80, 0xCA, 0x00, len(infos), 0x00]), "GET KEY INFO")
            if not data or (len(data) - 1) % 11:
                raise MasterCardError(
                    "the key master card answered GET KEY INFO badly; check it is a onecard key master card"
                )
            total, entries = data[0], data[1:]
            try:
                infos += [decode_key_info(entries[i : i + 11]) for i in range(0, len(entries), 11)]
            except ValueError as exc:
                raise MasterCardError(
                    f"the key master card lists a key this onecard does not know ({exc}); upgrade onecard"
                ) from None
            if len(infos) >= total or not entries:
                return infos

    def pin_status(self) -> int:
        """Tries left (0 = blocked); -1 when the PIN is verified in this session."""
        sw, _ = self._send(bytes([0x00, 0x20, 0x00, 0x01]), "VERIFY (status)")
        if sw == 0x9000:
            return -1
        if sw == 0x6983:
            return 0
        if 0x63C0 <= sw <= 0x63CF:
            return sw & 0x0F
        raise self._fail(sw, "VERIFY (status)")

    def verify_pin(self, pin: bytes) -> None:
        self._ok(bytes([0x00, 0x20, 0x00, 0x01, len(pin)]) + pin, "VERIFY PIN")

    def change_pin(self, old: bytes, new: bytes) -> None:
        data = bytes([len(old)]) + old + new
        self._ok(bytes([0x00, 0x24, 0x00, 0x01, len(data)]) + data, "CHANGE PIN")

    def generate_version(self, version: int = 0) -> tuple[int, list[KeyInfo]]:
        data = self._ok(bytes([0x80, 0xD0, 0x00, version, 0x00]), "GENERATE KEY SET")
        if len(data) < 2 or len(data) != 2 + 11 * data[1]:
            raise MasterCardError(
                "the key master card answered GENERATE KEY SET badly; check it is a onecard key master card"
            )
        return data[0], [decode_key_info(data[2 + i : 13 + i]) for i in range(0, 11 * data[1], 11)]

    def _read_export(self, length: int, what: str) -> bytes:
        out = bytearray()
        while len(out) < length:
            chunk = self._ok(bytes([0x80, 0xC2, len(out) >> 8, len(out) & 0xFF, 0x00]), what)
            if not chunk:
                raise MasterCardError(
                    f"the key master card stopped giving its {what} at byte {len(out)}; run the command again"
                )
            out += chunk
        return bytes(out[:length])

    def export_for_target(
        self, role: str, target_kind: int, target_id: bytes, target_public_key: bytes, keep_from_version: int = 0
    ) -> bytes:
        """keep_from_version 1..255 (PSAM only): the export is the PSAM's complete key set, versions below it left
        out, so the PSAM drops them (KIND_TARGET_SET); 0: an ordinary export of every version, added to the PSAM."""
        if not 0 <= keep_from_version <= 255:
            raise MasterCardError(f"keep_from_version {keep_from_version} is not 0..255")
        data = bytes([target_kind]) + target_id + target_public_key
        answer = self._ok(
            bytes([0x80, 0xE4, ROLE_CODES[role], keep_from_version, len(data)]) + data + b"\x00", "EXPORT FOR TARGET"
        )
        if len(answer) != 2:
            raise MasterCardError(
                "the key master card answered EXPORT FOR TARGET badly; check it is a onecard key master card"
            )
        return self._read_export(int.from_bytes(answer, "big"), "export")

    def backup(self, recipient_public_key: bytes) -> bytes:
        answer = self._ok(bytes([0x80, 0xE6, 0x00, 0x00, 32]) + recipient_public_key + b"\x00", "BACKUP")
        if len(answer) != 2:
            raise MasterCardError("the key master card answered BACKUP badly; check it is a onecard key master card")
        return self._read_export(int.from_bytes(answer, "big"), "backup")


def describe_card(info: CardInfo) -> str:
    pin = "BLOCKED" if info.blocked else f"{info.pin_tries_left} of {PIN_TRIES} tries left"
    return (
        f"key master card of enterprise {format_enterprise_id(info.enterprise_id)}: latest key version "
        f"{info.latest_version}, {info.key_count} keys, {info.export_counter} exports so far, PIN {pin}, "
        f"identity key {info.public_key.hex()}"
    )
