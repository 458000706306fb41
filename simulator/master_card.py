"""A software key master card (密钥母卡): the application of docs/keys.md as a VirtualCard fed command APDUs.

It holds one enterprise's key set (every purpose and version, both algorithms), generated inside the card, and an
Ed25519 identity key. Keys leave it only sealed for one target (EXPORT FOR TARGET) or for a backup recipient
(BACKUP), and only after VERIFY PIN. Its persistent state lives in one JSON file per card, playing the chip's
EEPROM: replaced atomically and fsync'd before an answer leaves the card (the PIN retry counter is written down
*before* the PIN is compared, so pulling the card cannot save a wrong guess).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sam.crypto import key_check_value
from sam.interface import Algorithm, KeyPurpose, KeyUsage
from sam.keystore import TRANSPORT_VERSION, MasterKey, SecretKey, algorithm_name, parse_algorithm, parse_enterprise_id
from sam.master_card import (
    AID,
    KIND_BACKUP,
    KIND_TARGET,
    KIND_TARGET_SET,
    PIN_MAX,
    PIN_MIN,
    PIN_TRIES,
    PSAM_ROLES,
    PURPOSE_CODES,
    RESTORE_COUNTER_SKIP,
    ROLES_BY_CODE,
    TARGET_BACKUP,
    TARGET_KEYSTORE,
    TARGET_PSAM,
    USAGE_BITS,
    ExportError,
    ExportHeader,
    backup_target_id,
    seal_export,
)
from sam.roles import role_keys
from sam.sam_state import StateFileError
from simulator.card import Command, _with_tck, parse_command
from simulator.state_file import StateFile

ATR = _with_tck(bytes.fromhex("3B888001") + b"ONEMKEY1")
APPLICATION_VERSION = 0x01
STATE_FORMAT = "onecard-sim-master-card/1"
PIN_HASH_ITERATIONS = 20_000
READ_CHUNK = 240
KEY_INFOS_PER_RESPONSE = 20
# GENERATE KEY SET makes these purposes at the new version, for both algorithms; TRANSPORT is version 0 only and
# is made once, when the card is personalised.
VERSIONED_PURPOSES = (KeyPurpose.ACCESS, KeyPurpose.UPDATE, KeyPurpose.PURCHASE, KeyPurpose.LOAD, KeyPurpose.TAC)
ALGORITHMS = (Algorithm.AES128, Algorithm.SM4)

SW_OK = b"\x90\x00"
SW_MEMORY_FAILURE = b"\x65\x81"
SW_WRONG_LENGTH = b"\x67\x00"
SW_SECURITY = b"\x69\x82"
SW_BLOCKED = b"\x69\x83"
SW_CONDITIONS = b"\x69\x85"
SW_NOT_SELECTED = b"\x69\x86"
SW_WRONG_DATA = b"\x6a\x80"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_NO_SPACE = b"\x6a\x84"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_EXISTS = b"\x6a\x89"
SW_OFFSET = b"\x6b\x00"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"
SW_UNKNOWN = b"\x6f\x00"

KeyName = tuple[KeyPurpose, int, Algorithm]


def _pin_hash(salt: bytes, pin: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", pin, salt, PIN_HASH_ITERATIONS)


def _valid_pin(pin: bytes) -> bool:
    return PIN_MIN <= len(pin) <= PIN_MAX and all(0x30 <= b <= 0x39 for b in pin)


# --- the EEPROM -------------------------------------------------------------------------------------


@dataclass
class MasterCardState:
    """Everything the card keeps across power cycles."""

    enterprise_id: bytes
    identity_seed: bytes  # Ed25519 private key (32 bytes)
    pin_salt: bytes
    pin_hash: bytes
    pin_tries_left: int = PIN_TRIES
    export_counter: int = 0
    keys: dict[KeyName, SecretKey] = field(default_factory=dict)
    label: str = ""

    def __repr__(self) -> str:
        return f"MasterCardState(enterprise {self.enterprise_id.hex()}, <{len(self.keys)} keys hidden>)"

    @property
    def latest_version(self) -> int:
        return max((v for (_, v, _) in self.keys if v != TRANSPORT_VERSION), default=0)

    def sorted_names(self) -> list[KeyName]:
        return sorted(self.keys, key=lambda n: (PURPOSE_CODES[n[0]], n[1], int(n[2])))

    def to_json(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "label": self.label,
            "enterprise_id": self.enterprise_id.hex(),
            # In clear: this file plays the chip's EEPROM, which no command reads. Keep it 0600.
            "identity_seed": self.identity_seed.hex(),
            "pin_salt": self.pin_salt.hex(),
            "pin_hash": self.pin_hash.hex(),
            "pin_tries_left": self.pin_tries_left,
            "export_counter": self.export_counter,
            "keys": [
                {
                    "purpose": p.value,
                    "version": v,
                    "algorithm": algorithm_name(a),
                    "key": self.keys[(p, v, a)].reveal().hex(),
                }
                for (p, v, a) in self.sorted_names()
            ],
        }

    @classmethod
    def from_json(cls, doc: object) -> MasterCardState:
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError("not a simulated key master card file (wrong format field)")
        keys = {}
        for k in doc["keys"]:
            name = (KeyPurpose(k["purpose"]), int(k["version"]), parse_algorithm(k["algorithm"]))
            keys[name] = SecretKey(bytes.fromhex(k["key"]))
        state = cls(
            parse_enterprise_id(doc["enterprise_id"]),
            bytes.fromhex(doc["identity_seed"]),
            bytes.fromhex(doc["pin_salt"]),
            bytes.fromhex(doc["pin_hash"]),
            int(doc["pin_tries_left"]),
            int(doc["export_counter"]),
            keys,
            str(doc.get("label", "")),
        )
        if len(state.identity_seed) != 32 or not 0 <= state.pin_tries_left <= PIN_TRIES:
            raise ValueError("identity seed or PIN counter out of range")
        return state


class MasterCardStateFile(StateFile[MasterCardState]):
    SORT_KEYS = False

    def from_json(self, doc: Any) -> MasterCardState:
        return MasterCardState.from_json(doc)

    def to_json(self, state: MasterCardState) -> Any:
        return state.to_json()

    def damaged(self, exc: Exception) -> str:
        # Never quote the document: it holds keys.
        return (
            f"key master card file {self.path} is not valid ({type(exc).__name__}); restore the card from its "
            "backup with 'onecard sim restore-master-card'"
        )

    def write_failed(self, exc: OSError) -> None:
        raise StateFileError(
            f"cannot write key master card file {self.path} ({exc.strerror}); check free space, "
            "permissions and that the directory exists"
        ) from None


def new_master_card_state(enterprise_id: bytes, pin: bytes, label: str = "") -> MasterCardState:
    """The card as personalised for one enterprise: identity key and transport keys made here, no version yet."""
    if not _valid_pin(pin):
        raise ValueError(f"the PIN must be {PIN_MIN}..{PIN_MAX} digits")
    parse_enterprise_id(enterprise_id.hex())
    salt = secrets.token_bytes(16)
    keys = {(KeyPurpose.TRANSPORT, TRANSPORT_VERSION, a): SecretKey.generate() for a in ALGORITHMS}
    return MasterCardState(enterprise_id, secrets.token_bytes(32), salt, _pin_hash(salt, pin), keys=keys, label=label)


def restored_master_card_state(
    enterprise_id: bytes, identity_seed: bytes, counter: int, keys: list[MasterKey], pin: bytes, label: str = ""
) -> MasterCardState:
    """A new card holding a backup's identity, counter and keys, with a fresh PIN."""
    state = new_master_card_state(enterprise_id, pin, label)
    state.identity_seed = bytes(identity_seed)
    state.export_counter = min(counter + RESTORE_COUNTER_SKIP, 0xFFFFFFFF)
    state.keys = {(k.purpose, k.version, k.algorithm): k.key for k in keys}
    return state


# --- the application --------------------------------------------------------------------------------


class MasterCardApplet:
    """The key master card: feed it command APDUs, get response APDUs. Never raises on bad input."""

    def __init__(self, state: MasterCardState, store: MasterCardStateFile | None = None, atr: bytes = ATR) -> None:
        self.state = state
        self.store = store
        self.atr = atr
        self.selected = False
        self.pin_verified = False
        self._export: bytes | None = None

    def __repr__(self) -> str:
        return f"MasterCardApplet({self.state!r})"

    def _reset(self) -> None:
        self.selected = False
        self.pin_verified = False
        self._export = None

    def power_on(self) -> None:
        self._reset()

    def power_off(self) -> None:
        self._reset()

    def transmit(self, apdu: bytes) -> bytes:
        try:
            return self._process(bytes(apdu))
        except StateFileError:
            return SW_MEMORY_FAILURE
        except Exception:  # a card answers 6F00 rather than dying, whatever happens inside
            return SW_UNKNOWN

    def _commit(self, new: MasterCardState) -> None:
        """Write the EEPROM; only then does the card's state (and its answer) change."""
        if self.store is not None:
            self.store.save(new)
        self.state = new

    @property
    def blocked(self) -> bool:
        return self.state.pin_tries_left == 0

    def _process(self, apdu: bytes) -> bytes:
        cmd = parse_command(apdu)
        if cmd is None:
            return SW_WRONG_LENGTH
        handlers = {
            (0x00, 0xA4): self._select,
            (0x00, 0x20): self._verify,
            (0x00, 0x24): self._change_pin,
            (0x80, 0xCA): self._get_info,
            (0x80, 0xD0): self._generate,
            (0x80, 0xE4): self._export_for_target,
            (0x80, 0xE6): self._backup,
            (0x80, 0xC2): self._read_export,
        }
        if cmd.cla not in (0x00, 0x80):
            return SW_CLA
        handler = handlers.get((cmd.cla, cmd.ins))
        if handler is None:
            return SW_INS
        if handler != self._select and not self.selected:
            return SW_NOT_SELECTED
        return handler(cmd)

    def _select(self, cmd: Command) -> bytes:
        # Any SELECT ends the session: the PIN must be presented again, and a pending export is dropped.
        self._reset()
        if cmd.p1 != 0x04 or cmd.p2 != 0x00:
            return SW_WRONG_P1P2
        if cmd.data != AID:
            return SW_NOT_FOUND
        self.selected = True
        return _tlv(0x6F, _tlv(0x84, AID) + _tlv(0xA5, _tlv(0xC0, bytes([APPLICATION_VERSION])))) + SW_OK

    # --- PIN ----------------------------------------------------------------------------------------

    def _pin_status(self) -> bytes:
        return bytes([0x63, 0xC0 | self.state.pin_tries_left])

    def _check_pin(self, pin: bytes) -> bytes | None:
        """None when pin is right (counter back to 3); else the status word. Writes the decrement before comparing."""
        tries = self.state.pin_tries_left
        self._commit(replace(self.state, pin_tries_left=tries - 1))
        if hmac.compare_digest(_pin_hash(self.state.pin_salt, pin), self.state.pin_hash):
            self._commit(replace(self.state, pin_tries_left=PIN_TRIES))
            return None
        self.pin_verified = False
        return self._pin_status()

    def _verify(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x01:
            return SW_WRONG_P1P2
        if self.blocked:
            return SW_BLOCKED
        if not cmd.data:  # ISO 7816-4: VERIFY without data asks for the PIN's state
            return SW_OK if self.pin_verified else self._pin_status()
        if not _valid_pin(cmd.data):
            return SW_WRONG_DATA  # not a PIN at all: no try is used
        wrong = self._check_pin(cmd.data)
        if wrong is not None:
            return wrong
        self.pin_verified = True
        return SW_OK

    def _change_pin(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x01:
            return SW_WRONG_P1P2
        if len(cmd.data) < 1 + 2 * PIN_MIN or 1 + cmd.data[0] > len(cmd.data):
            return SW_WRONG_LENGTH
        if self.blocked:
            return SW_BLOCKED
        old, new = cmd.data[1 : 1 + cmd.data[0]], cmd.data[1 + cmd.data[0] :]
        if not _valid_pin(old) or not _valid_pin(new):
            return SW_WRONG_DATA
        wrong = self._check_pin(old)
        if wrong is not None:
            return wrong
        salt = secrets.token_bytes(16)
        self._commit(replace(self.state, pin_salt=salt, pin_hash=_pin_hash(salt, new), pin_tries_left=PIN_TRIES))
        self.pin_verified = True
        return SW_OK

    def _key_operation_refused(self) -> bytes | None:
        if self.blocked:
            return SW_BLOCKED
        if not self.pin_verified:
            return SW_SECURITY
        return None

    # --- information --------------------------------------------------------------------------------

    def _get_info(self, cmd: Command) -> bytes:
        if cmd.data:
            return SW_WRONG_LENGTH
        if cmd.p1 == 0x01 and cmd.p2 == 0x00:
            s = self.state
            public = Ed25519PrivateKey.from_private_bytes(s.identity_seed).public_key().public_bytes_raw()
            return (
                s.enterprise_id
                + bytes([s.pin_tries_left, s.latest_version, min(len(s.keys), 255)])
                + s.export_counter.to_bytes(4, "big")
                + public
                + SW_OK
            )
        if cmd.p1 != 0x00:
            return SW_WRONG_P1P2
        if self.blocked:
            return SW_BLOCKED
        names = self.state.sorted_names()
        if cmd.p2 > len(names):
            return SW_RECORD_NOT_FOUND
        page = names[cmd.p2 : cmd.p2 + KEY_INFOS_PER_RESPONSE]
        return bytes([min(len(names), 255)]) + b"".join(self._key_info(n) for n in page) + SW_OK

    def _key_info(self, name: KeyName) -> bytes:
        purpose, version, algorithm = name
        # The usages byte is 00: the master card holds keys, the role of each export decides their usages.
        return (
            self.state.enterprise_id
            + bytes([PURPOSE_CODES[purpose], version, int(algorithm), 0x00])
            + bytes.fromhex(key_check_value(algorithm, self.state.keys[name].reveal()))
        )

    # --- keys ---------------------------------------------------------------------------------------

    def _generate(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00:
            return SW_WRONG_P1P2
        if cmd.data:
            return SW_WRONG_LENGTH
        refused = self._key_operation_refused()
        if refused:
            return refused
        latest = self.state.latest_version
        version = cmd.p2 or latest + 1
        if version > 255:
            return SW_NO_SPACE
        if version <= latest:
            return SW_EXISTS  # versions only grow: an old number could name two different key sets
        keys = dict(self.state.keys)
        new_names = [(p, version, a) for a in ALGORITHMS for p in VERSIONED_PURPOSES]
        for name in new_names:
            keys[name] = SecretKey.generate()
        self._commit(replace(self.state, keys=keys))
        return bytes([version, len(new_names)]) + b"".join(self._key_info(n) for n in new_names) + SW_OK

    def _entries(self, names: list[KeyName], usages_for) -> bytes:
        out = bytearray()
        for purpose, version, algorithm in names:
            usages = usages_for(purpose)
            bits = sum(USAGE_BITS[u] for u in usages)
            out += self.state.enterprise_id + bytes([PURPOSE_CODES[purpose], version, int(algorithm), bits])
            out += self.state.keys[(purpose, version, algorithm)].reveal()
        return bytes(out)

    def _seal(
        self, kind: int, role: int, target_kind: int, target_id: bytes, target_public: bytes, plaintext: bytes
    ) -> bytes:
        counter = self.state.export_counter + 1
        if counter > 0xFFFFFFFF:
            return SW_NO_SPACE
        identity = Ed25519PrivateKey.from_private_bytes(self.state.identity_seed)
        ephemeral = X25519PrivateKey.generate()  # fresh per export: its secret dies with this command
        header = ExportHeader(
            kind,
            role,
            target_kind,
            self.state.enterprise_id,
            identity.public_key().public_bytes_raw(),
            target_id,
            target_public,
            ephemeral.public_key().public_bytes_raw(),
            counter,
        )
        try:
            blob = seal_export(header, plaintext, ephemeral, identity)
        except ExportError:
            return SW_WRONG_DATA  # a low-order target key, or a set too large for one export
        # The counter is in EEPROM before the export can leave, so no two exports ever share one.
        self._commit(replace(self.state, export_counter=counter))
        self._export = blob
        return len(blob).to_bytes(2, "big") + SW_OK

    def _export_for_target(self, cmd: Command) -> bytes:
        role = ROLES_BY_CODE.get(cmd.p1)
        if role is None or cmd.p2 != 0x00 and cmd.data[:1] != bytes([TARGET_PSAM]):
            return SW_WRONG_P1P2  # P2 (lowest version kept: a complete set that retires the rest) is for a PSAM only
        if len(cmd.data) != 1 + 8 + 32:
            return SW_WRONG_LENGTH
        refused = self._key_operation_refused()
        if refused:
            return refused
        target_kind = cmd.data[0]
        if target_kind not in (TARGET_PSAM, TARGET_KEYSTORE) or target_kind == TARGET_PSAM and role not in PSAM_ROLES:
            return SW_WRONG_DATA  # a PSAM never gets TAC keys or the personalise usage
        rules = role_keys(role, self.state.enterprise_id)  # the card issuer's master card: MAC of TRANSPORT
        names = [n for n in self.state.sorted_names() if n[0] in rules and n[1] >= cmd.p2]
        if not names:
            return SW_CONDITIONS
        self._export = None
        return self._seal(
            KIND_TARGET_SET if cmd.p2 else KIND_TARGET,
            cmd.p1,
            target_kind,
            cmd.data[1:9],
            cmd.data[9:41],
            # A PSAM has no subsidy-purse commands (docs/psam.md): an export for one leaves that usage out.
            self._entries(names, lambda p: rules[p] - {KeyUsage.SUBSIDY} if target_kind == TARGET_PSAM else rules[p]),
        )

    def _backup(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            return SW_WRONG_P1P2
        if len(cmd.data) != 32:
            return SW_WRONG_LENGTH
        refused = self._key_operation_refused()
        if refused:
            return refused
        self._export = None
        recipient = cmd.data
        plaintext = self.state.identity_seed + self._entries(self.state.sorted_names(), lambda p: ())
        return self._seal(KIND_BACKUP, 0x00, TARGET_BACKUP, backup_target_id(recipient), recipient, plaintext)

    def _read_export(self, cmd: Command) -> bytes:
        if cmd.data:
            return SW_WRONG_LENGTH
        if self._export is None:
            return SW_CONDITIONS
        offset = (cmd.p1 << 8) | cmd.p2
        if offset >= len(self._export):
            return SW_OFFSET
        return self._export[offset : offset + READ_CHUNK] + SW_OK


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag, len(value)]) + value


# --- files ------------------------------------------------------------------------------------------


def load_master_card(path: str | os.PathLike[str]) -> MasterCardApplet:
    """Open a master card file as it would sit in a reader."""
    store = MasterCardStateFile(path)
    return MasterCardApplet(store.load(), store)


def write_master_card(path: str | os.PathLike[str], state: MasterCardState, overwrite: bool = False) -> Path:
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"key master card file {path} exists; pick another name (never overwrite a master card)")
    MasterCardStateFile(path).save(state)
    return path
