"""A software PSAM card: the one-card SAM application of docs/psam.md, as a VirtualCard fed command APDUs.

It holds enterprise master keys and does the SAM's MACs, TSN and reversal bookkeeping behind APDUs; no command
reads a key. Its persistent state (keys, last TSN, last purchase) lives in one JSON file per PSAM, playing the
chip's EEPROM: replaced atomically and fsync'd before an answer leaves the card, so a TSN that may have reached a
terminal is never handed out again, whatever the moment of a tear.

The key operations and the TSN/reversal rules are sam.software.SoftwareSam's, run inside the card: the PSAM
adds the APDU layer (parsing, status words) and the EEPROM. A real PSAM is an independent implementation of
docs/psam.md; sam.pcsc_sam.PcscSam talks to either.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sam.interface import (
    Algorithm,
    BalanceTooLow,
    CardIdentity,
    InvalidCardIdentity,
    KeyNotFound,
    KeyPurpose,
    KeyUsage,
    KeyUsageError,
    LoadSession,
    MacVerificationError,
    PurchaseSession,
    SamError,
)
from sam.keystore import (
    Keystore,
    MasterCardAnchor,
    MasterKey,
    SecretKey,
    algorithm_name,
    parse_algorithm,
    parse_enterprise_id,
)
from sam.sam_state import (
    InvalidPurseInput,
    ReversalRefused,
    SamState,
    StateFileError,
    TsnExhausted,
    state_from_json,
    state_to_json,
)
from sam.software import SoftwareSam
from simulator.card import Command, _with_tck, parse_command
from simulator.state_file import StateFile

AID = bytes.fromhex("F04F4E454341524450")
ATR = _with_tck(bytes.fromhex("3B888001") + b"ONEPSAM1")
APPLICATION_VERSION = 0x01
STATE_FORMAT = "onecard-sim-psam/1"

# docs/psam.md 2: one byte per purpose, one bit per usage.
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
# A PSAM has no command that hands out card keys, and terminals never hold TAC keys (docs/key-handling.md 3).
PSAM_USAGES = frozenset({KeyUsage.VERIFY, KeyUsage.MAC, KeyUsage.REVERSAL})
KEY_INFO_SIZE = 11
KEY_INFOS_PER_RESPONSE = 20

INS_INIT_PURCHASE = 0x70
INS_VERIFY_PURCHASE_MAC2 = 0x72
INS_LOAD_MAC2 = 0x74
INS_VERIFY_LOAD_MAC3 = 0x76
INS_REVERSAL_MAC2 = 0x78
INS_VERIFY_CARD_MAC = 0x7A
INS_CARD_MAC = 0x7C
INS_DECIPHER_CARD_DATA = 0x7E
INS_GET_KEY_INFO = 0xCA
INS_BEGIN_KEY_LOAD = 0xE0
INS_LOAD_KEYS = 0xE2
# LOAD KEYS collects a chained export of at most this many bytes (docs/psam.md 4.9).
MAX_LOAD_SIZE = 8192

CARD_BLOCK_SIZE = 14  # ASN 8, enterprise ID 4, key version 1, algorithm ID 1
LC = {
    INS_INIT_PURCHASE: CARD_BLOCK_SIZE + 4 + 2 + 4 + 6 + 4 + 3,  # 0x25
    INS_VERIFY_PURCHASE_MAC2: CARD_BLOCK_SIZE + 4 + 2 + 4 + 4 + 8,  # 0x24
    INS_LOAD_MAC2: CARD_BLOCK_SIZE + 4 + 2 + 4 + 4 + 6 + 4 + 3 + 8,  # 0x31
    INS_VERIFY_LOAD_MAC3: CARD_BLOCK_SIZE + 4 + 2 + 4 + 4 + 8,  # 0x24
    INS_REVERSAL_MAC2: CARD_BLOCK_SIZE + 4 + 2 + 4 + 4 + 6 + 4 + 3 + 8 + 4,  # 0x35
}

SW_OK = b"\x90\x00"
SW_BALANCE_TOO_LOW = b"\x94\x01"
# P1 01 of these: the card is a version 2 one, its balance field is sealed (docs/psam.md 4.2a)
SEALED_P1 = frozenset({INS_INIT_PURCHASE, INS_LOAD_MAC2, INS_REVERSAL_MAC2})
SW_MEMORY_FAILURE = b"\x65\x81"
SW_WRONG_LENGTH = b"\x67\x00"
SW_USAGE = b"\x69\x82"
SW_NOT_DEBITED = b"\x69\x83"
SW_ALREADY_REVERSED = b"\x69\x84"
SW_NOT_LAST_PURCHASE = b"\x69\x85"
SW_NOT_SELECTED = b"\x69\x86"
SW_WRONG_DATA = b"\x6a\x80"
SW_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_TSN_EXHAUSTED = b"\x6a\x84"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_KEY_NOT_FOUND = b"\x6a\x88"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"
SW_UNKNOWN = b"\x6f\x00"
SW_MAC = b"\x93\x02"
SW_NOT_FOR_THIS_PSAM = b"\x69\x88"
SW_KEY_EXISTS = b"\x6a\x89"

_REVERSAL_SW = {"not-last": SW_NOT_LAST_PURCHASE, "not-debited": SW_NOT_DEBITED, "reversed": SW_ALREADY_REVERSED}


# --- the EEPROM -------------------------------------------------------------------------------------


@dataclass
class PsamState:
    """Everything the PSAM keeps across power cycles."""

    keys: Keystore
    sam_state: SamState = field(default_factory=SamState)
    label: str = ""
    # Key loading from the key master card (docs/psam.md 4.9): the PSAM's 8-byte serial (made at the first BEGIN
    # KEY LOAD), and the master card it trusts since its first load (None: never loaded from a master card).
    serial: bytes = b""
    master_card: MasterCardAnchor | None = None

    def __post_init__(self) -> None:
        for key in self.keys:
            if key.purpose is KeyPurpose.TAC:
                raise ValueError(f"a PSAM never holds TAC keys ({key.describe()}): only the platform does")
            if not key.usages <= PSAM_USAGES:
                raise ValueError(f"key {key.describe()} has usages a PSAM does not offer (only verify, mac, reversal)")

    def to_json(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "label": self.label,
            # Keys in clear: this file plays the chip's EEPROM, which no command can read. Keep it 0600.
            "keys": [
                {
                    "enterprise_id": k.enterprise_id.hex(),
                    "purpose": k.purpose.value,
                    "version": k.version,
                    "algorithm": algorithm_name(k.algorithm),
                    "usages": sorted(u.value for u in k.usages),
                    "key": k.key.reveal().hex(),
                }
                for k in self.keys
            ],
            "sam_state": state_to_json(self.sam_state),
            # Written only once set, so PSAM files that never met a master card keep their exact format.
            **({"serial": self.serial.hex()} if self.serial else {}),
            **(
                {
                    "master_card": {
                        "enterprise_id": self.master_card.enterprise_id.hex(),
                        "public_key": self.master_card.public_key.hex(),
                        "last_counter": self.master_card.last_counter,
                    }
                }
                if self.master_card
                else {}
            ),
        }

    @classmethod
    def from_json(cls, doc: object) -> PsamState:
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a simulated PSAM state file (format {doc.get('format') if isinstance(doc, dict) else None!r})"
            )
        keys = [
            MasterKey(
                parse_enterprise_id(k["enterprise_id"]),
                KeyPurpose(k["purpose"]),
                k["version"],
                parse_algorithm(k["algorithm"]),
                frozenset(KeyUsage(u) for u in k["usages"]),
                SecretKey(bytes.fromhex(k["key"])),
            )
            for k in doc["keys"]
        ]
        anchor = doc.get("master_card")
        return cls(
            Keystore(keys),
            state_from_json(doc["sam_state"]),
            str(doc.get("label", "")),
            bytes.fromhex(doc.get("serial", "")),
            None
            if anchor is None
            else MasterCardAnchor(
                parse_enterprise_id(anchor["enterprise_id"]),
                bytes.fromhex(anchor["public_key"]),
                anchor["last_counter"],
            ),
        )


class PsamStateFile(StateFile[PsamState]):
    """The PSAM's EEPROM, fsync'd."""

    def from_json(self, doc: Any) -> PsamState:
        return PsamState.from_json(doc)

    def to_json(self, state: PsamState) -> Any:
        return state.to_json()

    def damaged(self, exc: Exception) -> str:
        # The messages name fields and positions, never the document's contents: it holds keys.
        return (
            f"PSAM file {self.path} is not a valid simulated PSAM ({type(exc).__name__}: {exc}); "
            "make a new one with 'onecard sim new-psam'"
        )

    def write_failed(self, exc: OSError) -> None:
        raise StateFileError(
            f"cannot write PSAM file {self.path} ({exc.strerror}); check free space, permissions "
            "and that the directory exists"
        ) from None


class _EepromStore:
    """The StateStore the PSAM's SoftwareSam writes through: the whole EEPROM file, before the answer leaves."""

    def __init__(self, psam: PsamApplet) -> None:
        self._psam = psam

    def load(self) -> SamState:
        return self._psam.state.sam_state

    def save(self, sam_state: SamState) -> None:
        new = replace(self._psam.state, sam_state=sam_state)
        if self._psam.store is not None:
            self._psam.store.save(new)
        self._psam.state = new


# --- the application --------------------------------------------------------------------------------


class PsamApplet:
    """The PSAM: feed it command APDUs, get response APDUs. Never raises on bad input."""

    def __init__(self, state: PsamState, store: PsamStateFile | None = None, atr: bytes = ATR) -> None:
        self.state = state
        self.store = store
        self.atr = atr
        self.selected = False
        self._sam = SoftwareSam(state.keys, _EepromStore(self))
        # Volatile (RAM) state of a key load: the ephemeral X25519 private key of BEGIN KEY LOAD and the chained
        # blob so far. Cleared at power-on, reset and after every final LOAD KEYS, so each ephemeral key opens at
        # most one export.
        self._load_private = None
        self._load_buffer = bytearray()

    def __repr__(self) -> str:
        return f"PsamApplet(<{len(self.state.keys)} keys>, last TSN {self.state.sam_state.last_tsn})"

    def power_on(self) -> None:
        self.selected = False
        self._end_key_load()

    def power_off(self) -> None:
        self.selected = False
        self._end_key_load()

    def transmit(self, apdu: bytes) -> bytes:
        try:
            return self._process(bytes(apdu))
        except Exception:  # a card answers 6F00 rather than dying, whatever happens inside
            return SW_UNKNOWN

    def _process(self, apdu: bytes) -> bytes:
        cmd = parse_command(apdu)
        if cmd is None:
            return SW_WRONG_LENGTH
        if cmd.cla == 0x00 and cmd.ins == 0xA4:
            return self._select(cmd)
        if cmd.cla == 0x00:
            return SW_INS
        if cmd.cla != 0x80:
            return SW_CLA
        handler = {
            INS_INIT_PURCHASE: self._init_purchase,
            INS_VERIFY_PURCHASE_MAC2: self._verify_purchase_mac2,
            INS_LOAD_MAC2: self._load_mac2,
            INS_VERIFY_LOAD_MAC3: self._verify_load_mac3,
            INS_REVERSAL_MAC2: self._reversal_mac2,
            INS_VERIFY_CARD_MAC: self._verify_card_mac,
            INS_CARD_MAC: self._card_mac,
            INS_DECIPHER_CARD_DATA: self._decipher_card_data,
            INS_GET_KEY_INFO: self._get_key_info,
            INS_BEGIN_KEY_LOAD: self._begin_key_load,
            INS_LOAD_KEYS: self._load_keys,
        }.get(cmd.ins)
        if handler is None:
            return SW_INS
        if not self.selected:
            return SW_NOT_SELECTED
        if cmd.ins in LC:
            if cmd.p1 not in ((0, 1) if cmd.ins in SEALED_P1 else (0,)) or cmd.p2 != 0:
                return SW_WRONG_P1P2
            sealed_extra = 4 if (cmd.ins, cmd.p1) == (INS_INIT_PURCHASE, 1) else 0
            if len(cmd.data) != LC[cmd.ins] + sealed_extra:
                return SW_WRONG_LENGTH
        try:
            return handler(cmd)
        except MacVerificationError:
            return SW_MAC
        except BalanceTooLow:
            return SW_BALANCE_TOO_LOW
        except ReversalRefused as exc:
            return _REVERSAL_SW[exc.reason]
        except KeyUsageError:
            return SW_USAGE
        except KeyNotFound:
            return SW_KEY_NOT_FOUND
        except (InvalidCardIdentity, InvalidPurseInput):
            return SW_WRONG_DATA
        except TsnExhausted:
            return SW_TSN_EXHAUSTED
        except StateFileError:
            return SW_MEMORY_FAILURE
        except SamError:
            return SW_UNKNOWN

    def _select(self, cmd: Command) -> bytes:
        if cmd.p1 != 0x04 or cmd.p2 != 0x00:
            self.selected = False
            return SW_WRONG_P1P2
        if cmd.data != AID:
            self.selected = False
            return SW_NOT_FOUND
        self.selected = True
        return _tlv(0x6F, _tlv(0x84, AID) + _tlv(0xA5, _tlv(0xC0, bytes([APPLICATION_VERSION])))) + SW_OK

    # Each purse command carries every public input; the reader below takes them in docs/psam.md order.

    def _init_purchase(self, cmd: Command) -> bytes:
        r = _Fields(cmd.data)
        card, random, counter, amount = r.card(), r.take(4), r.u16(), r.u32()
        session = PurchaseSession(card, random, counter, amount, r.take(6), r.take(4), r.take(3))
        if cmd.p1 == 0x01:  # version 2 card: decipher and check its sealed balance first (docs/psam.md 4.2a)
            tsn, mac1, balance = self._sam.purchase_mac1_sealed(session, r.take(4))
            return tsn.to_bytes(4, "big") + mac1 + balance + SW_OK
        tsn, mac1 = self._sam.purchase_mac1(session)
        return tsn.to_bytes(4, "big") + mac1 + SW_OK

    def _verify_purchase_mac2(self, cmd: Command) -> bytes:
        r = _Fields(cmd.data)
        card, random, counter, tsn, amount, mac2 = r.card(), r.take(4), r.u16(), r.u32(), r.u32(), r.take(8)
        # MAC2 covers neither terminal ID, date nor time: the command does not carry them (docs/psam.md 4.3).
        session = PurchaseSession(card, random, counter, amount, bytes(6), bytes(4), bytes(3))
        self._sam.verify_purchase_mac2(session, tsn, mac2)
        return SW_OK

    def _load_session(self, r: _Fields) -> tuple[LoadSession, bytes]:
        card, random, counter, balance, amount = r.card(), r.take(4), r.u16(), r.take(4), r.u32()
        session = LoadSession(
            card, random, counter, int.from_bytes(balance, "big"), amount, r.take(6), r.take(4), r.take(3)
        )
        return session, balance

    def _load_mac2(self, cmd: Command) -> bytes:
        r = _Fields(cmd.data)
        session, balance = self._load_session(r)
        if cmd.p1 == 0x01:  # version 2: the balance field is the card's sealed balance (docs/psam.md 4.4)
            mac2, before = self._sam.load_mac2_sealed(replace(session, balance_before=0), r.take(8), balance)
            return mac2 + before.to_bytes(4, "big") + SW_OK
        return self._sam.load_mac2(session, r.take(8)) + SW_OK

    def _verify_load_mac3(self, cmd: Command) -> bytes:
        r = _Fields(cmd.data)
        card, random, counter, balance, amount, mac3 = r.card(), r.take(4), r.u16(), r.u32(), r.u32(), r.take(8)
        # MAC3 covers neither terminal ID, date nor time (docs/card-application.md 5.2).
        self._sam.verify_load_mac3(
            LoadSession(card, random, counter, balance, amount, bytes(6), bytes(4), bytes(3)), mac3
        )
        return SW_OK

    def _reversal_mac2(self, cmd: Command) -> bytes:
        r = _Fields(cmd.data)
        session, balance = self._load_session(r)
        mac1, purchase_tsn = r.take(8), r.u32()
        if cmd.p1 == 0x01:  # version 2: the balance field is the card's sealed balance (docs/psam.md 4.6)
            mac2, before = self._sam.reversal_mac2_sealed(
                replace(session, balance_before=0), mac1, purchase_tsn, balance
            )
            return mac2 + before.to_bytes(4, "big") + SW_OK
        return self._sam.reversal_mac2(session, mac1, purchase_tsn) + SW_OK

    def _purpose(self, cmd: Command) -> KeyPurpose | None:
        return PURPOSES_BY_CODE.get(cmd.p2) if cmd.p1 == 0 else None

    def _verify_card_mac(self, cmd: Command) -> bytes:
        purpose = self._purpose(cmd)
        if purpose is None:
            return SW_WRONG_P1P2
        if len(cmd.data) < CARD_BLOCK_SIZE + 8:
            return SW_WRONG_LENGTH
        r = _Fields(cmd.data)
        card, mac = r.card(), r.take(8)
        self._sam.verify_card_mac(purpose, card, r.rest(), mac)
        return SW_OK

    def _card_mac(self, cmd: Command) -> bytes:
        purpose = self._purpose(cmd)
        if purpose is None:
            return SW_WRONG_P1P2
        if len(cmd.data) < CARD_BLOCK_SIZE:
            return SW_WRONG_LENGTH
        r = _Fields(cmd.data)
        card = r.card()
        return self._sam.card_mac(purpose, card, r.rest()) + SW_OK

    def _decipher_card_data(self, cmd: Command) -> bytes:
        # P1 00: DECIPHER under SK_DATA (usage verify); P1 01: ENCIPHER under SK_WRITE (usage mac), the data a
        # station writes to a version 2 card (docs/psam.md 4.7b, card-application.md 9.11).
        purpose = PURPOSES_BY_CODE.get(cmd.p2) if cmd.p1 in (0x00, 0x01) else None
        if purpose is None:
            return SW_WRONG_P1P2
        if len(cmd.data) < CARD_BLOCK_SIZE + 12 + 1:
            return SW_WRONG_LENGTH
        r = _Fields(cmd.data)
        card, context = r.card(), r.take(12)
        if cmd.p1 == 0x01:
            return self._sam.encipher_card_data(purpose, card, context, r.rest()) + SW_OK
        return self._sam.decipher_card_data(purpose, card, context, r.rest()) + SW_OK

    def _get_key_info(self, cmd: Command) -> bytes:
        if cmd.p1 != 0:
            return SW_WRONG_P1P2
        if cmd.data:
            return SW_WRONG_LENGTH
        entries = [
            encode_key_info(info)
            for info in sorted(
                self._sam.key_infos(),
                key=lambda i: (i.enterprise_id, PURPOSE_CODES[i.purpose], i.version, int(i.algorithm)),
            )
        ]
        start = cmd.p2
        if start > len(entries):
            return SW_RECORD_NOT_FOUND
        return bytes([len(entries)]) + b"".join(entries[start : start + KEY_INFOS_PER_RESPONSE]) + SW_OK

    # --- key loading from the key master card (docs/psam.md 4.9, docs/keys.md 6) ---------------------

    def _end_key_load(self) -> None:
        self._load_private = None
        self._load_buffer = bytearray()

    def _begin_key_load(self, cmd: Command) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if cmd.p1 != 0 or cmd.p2 != 0:
            return SW_WRONG_P1P2
        if cmd.data:
            return SW_WRONG_LENGTH
        if not self.state.serial:
            # The serial names this PSAM in every export made for it; in EEPROM before it is ever shown.
            self.state_write(replace(self.state, serial=secrets.token_bytes(8)))
        self._end_key_load()
        self._load_private = X25519PrivateKey.generate()
        anchor = self.state.master_card
        trust = 0x02 if anchor else (0x01 if len(self.state.keys) else 0x00)
        return (
            self.state.serial
            + self._load_private.public_key().public_bytes_raw()
            + bytes([trust])
            + (anchor.enterprise_id + anchor.public_key if anchor else bytes(36))
            + SW_OK
        )

    def state_write(self, new: PsamState) -> None:
        """EEPROM first, then the PSAM's state (raises StateFileError: the caller answers 6581)."""
        if self.store is not None:
            self.store.save(new)
        self.state = new

    def _load_keys(self, cmd: Command) -> bytes:
        from sam import master_card as mc

        if cmd.p1 not in (0x00, 0x01) or cmd.p2 != 0:
            return SW_WRONG_P1P2
        if not cmd.data:
            return SW_WRONG_LENGTH
        if self._load_private is None:
            return SW_NOT_LAST_PURCHASE  # 69 85: conditions of use not satisfied (no BEGIN KEY LOAD)
        if len(self._load_buffer) + len(cmd.data) > MAX_LOAD_SIZE:
            self._end_key_load()
            return SW_WRONG_LENGTH
        self._load_buffer += cmd.data
        if cmd.p1 == 0x01:  # more blocks follow
            return SW_OK
        private, blob = self._load_private, bytes(self._load_buffer)
        self._end_key_load()  # one attempt per ephemeral key, whatever its outcome
        try:
            parsed = mc.parse_export(blob)
        except mc.ExportError:
            return SW_WRONG_DATA
        h = parsed.header
        if h.kind not in (mc.KIND_TARGET, mc.KIND_TARGET_SET) or h.target_kind != mc.TARGET_PSAM:
            return SW_WRONG_DATA
        if h.target_id != self.state.serial or h.target_public_key != private.public_key().public_bytes_raw():
            return SW_NOT_FOR_THIS_PSAM  # made for another PSAM or another session: a replay
        anchor = self.state.master_card
        if anchor is None:
            if len(self.state.keys):
                # Keys put in without a master card (sim new-psam): nothing can prove a later load is the
                # enterprise's, so 二次洗卡 is refused for good.
                return SW_USAGE
            signer = h.master_public_key  # first load: the blank PSAM learns its master card (docs/keys.md 6)
        else:
            if h.master_public_key != anchor.public_key or h.enterprise_id != anchor.enterprise_id:
                return SW_USAGE
            signer = anchor.public_key
        try:
            mc.verify_export_signature(parsed, signer)
        except mc.ExportError:
            return SW_USAGE
        if anchor is not None and h.counter <= anchor.last_counter:
            return SW_NOT_FOR_THIS_PSAM
        try:
            keys = mc.decode_entries(mc.open_export(parsed, private))
        except mc.ExportError:
            return SW_NOT_FOR_THIS_PSAM
        # A complete set (the signed header says so) replaces the enterprise's keys: what it leaves out is retired.
        merged = {
            key.ident: key
            for key in self.state.keys
            if h.kind == mc.KIND_TARGET or key.enterprise_id != h.enterprise_id
        }
        if h.kind == mc.KIND_TARGET_SET and not keys:
            return SW_WRONG_DATA
        held = {key.ident: key for key in self.state.keys}
        for key in keys:
            if key.enterprise_id != h.enterprise_id or key.purpose is KeyPurpose.TAC or not key.usages <= PSAM_USAGES:
                return SW_WRONG_DATA
            old = held.get(key.ident)
            if old is not None and old.key != key.key:
                return SW_KEY_EXISTS  # a key name never changes its bytes: that would silently re-key every card
            merged[key.ident] = key
        new = replace(
            self.state,
            keys=Keystore(merged.values()),
            master_card=MasterCardAnchor(h.enterprise_id, h.master_public_key, h.counter),
        )
        self.state_write(new)
        self._sam = SoftwareSam(new.keys, _EepromStore(self))
        return bytes([min(len(new.keys), 255)]) + SW_OK


def encode_key_info(info) -> bytes:
    """enterprise ID (4) || purpose (1) || version (1) || algorithm (1) || usages (1, bits) || KCV (3)."""
    usages = 0
    for usage in info.usages:
        usages |= USAGE_BITS[usage]
    return (
        info.enterprise_id
        + bytes([PURPOSE_CODES[info.purpose], info.version, int(info.algorithm), usages])
        + bytes.fromhex(info.kcv)
    )


class _Fields:
    """Reads a command's data field left to right; the caller checked Lc, so every take succeeds."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, n: int) -> bytes:
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def card(self) -> CardIdentity:
        asn, enterprise_id, version, algorithm = self.take(8), self.take(4), self.take(1)[0], self.take(1)[0]
        # The raw algorithm byte goes through: an unknown one is refused as malformed card data (6A80).
        try:
            algorithm = Algorithm(algorithm)
        except ValueError:
            pass
        return CardIdentity(asn, enterprise_id, version, algorithm)

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._at)


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag, len(value)]) + value


# --- making PSAMs -----------------------------------------------------------------------------------


def psam_from_keystore(keystore: Keystore, label: str = "") -> PsamState:
    """The PSAM a keystore becomes: usages cut to verify/mac/reversal; refuses TAC keys outright."""
    tac = [key.describe() for key in keystore if key.purpose is KeyPurpose.TAC]
    if tac:
        raise ValueError(
            f"the keystore holds TAC keys ({tac[0]}{', ...' if len(tac) > 1 else ''}), "
            "which only the platform may hold; "
            "make a terminal keystore first: onecard sam restrict --role pos (or top-up, door)"
        )
    kept = [key for key in keystore.restricted(PSAM_USAGES)]
    if not kept:
        raise ValueError(
            "no key of the keystore has a usage a PSAM offers (verify, mac, reversal); check it with 'onecard sam list'"
        )
    return PsamState(Keystore(kept), SamState(), label)


def load_psam(path: str | os.PathLike[str]) -> PsamApplet:
    """Open a PSAM file as it would sit in a SAM slot."""
    store = PsamStateFile(path)
    return PsamApplet(store.load(), store)


def write_psam(path: str | os.PathLike[str], state: PsamState, overwrite: bool = False) -> Path:
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"PSAM file {path} exists; pick another name or pass --force to replace that PSAM")
    PsamStateFile(path).save(state)
    return path
