"""A software RFID-SIM carrying the one-card application exactly as docs/card-application.md specifies.

The card is a state machine fed command APDUs. Its persistent state (files, keys, counter) lives in one
JSON file per card, playing the part of the chip's EEPROM: written atomically before a response leaves
the card, so a tear or a crash never loses a counter step that a terminal may have seen.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import bcd
from common import transactions as tx
from sam import purse_crypto as pc
from sam.crypto import block_decrypt, key_check_value, mac8, secure_session_key
from sam.interface import Algorithm
from simulator.state_file import StateFile

AID = bytes.fromhex("F04F4E454341524401")

STATE_FORMAT = "onecard-sim-card/1"

STATUS_TRANSPORT = 0x00
STATUS_ACTIVE = 0x01
STATUS_VOIDED = 0x02

CARD_TYPE_RFID_SIM = 0x01
CARD_TYPE_IC_CARD = 0x02

SFI_APP = 1
SFI_HOLDER = 2
SFI_ACCESS = 3
SFI_PURSE = 4

COUNTER_MAX = 0xFFFFFFFF

SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_SECURITY = b"\x69\x82"
SW_CONDITIONS = b"\x69\x85"
SW_NO_CURRENT_EF = b"\x69\x86"
SW_WRONG_DATA = b"\x6a\x80"
SW_NOT_FOUND = b"\x6a\x82"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_OFFSET = b"\x6b\x00"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"
SW_UNKNOWN = b"\x6f\x00"
SW_NO_SESSION = b"\x69\x01"
SW_NO_PURSE = b"\x6a\x81"
SW_INSUFFICIENT = b"\x94\x01"
SW_KEY_INDEX = b"\x94\x03"
SW_NO_PROOF = b"\x94\x06"
SW_MAC = b"\x93\x02"
SW_NO_CHALLENGE = b"\x69\x82"  # secured command without a fresh GET CHALLENGE just before it (= SW_SECURITY)
SW_SM_MAC = b"\x69\x88"  # secured command whose MAC does not verify: nothing changed
SW_NO_RECORD = b"\x6a\x83"

SFI_RECORDS = 5
# Key IDs of PUT KEY (P2), docs/card-application.md section 8.4.
KEY_IDS = {0x01: "access", 0x02: "update", 0x03: "purchase", 0x04: "load", 0x05: "tac"}
PURSE_KEY_NAMES = ("purchase", "load", "tac")
# A purse created by COMMIT KEYS on a washed card: expired and with no room for a load until issuing sets
# EF_PURSE, so nothing can be spent or loaded on a card nobody has been issued.
UNISSUED_PURSE_EXPIRY = bytes.fromhex("20000101")


def _with_tck(atr_without_tck: bytes) -> bytes:
    # T=1 capable ATRs carry TCK, the XOR of every byte after TS.
    tck = 0
    for b in atr_without_tck[1:]:
        tck ^= b
    return atr_without_tck + bytes([tck])


ATR = _with_tck(bytes.fromhex("3B888001") + b"ONECARD1")


MAX_RECORDS = 10


@dataclass
class Purse:
    """The e-purse of docs/card-application.md section 5: balance, counters, keys and the last 10 transactions."""

    balance: int
    expiry: bytes  # BCD date, last day a purchase is accepted
    max_balance: int
    key_version: int
    purchase_key: bytes
    load_key: bytes
    tac_key: bytes
    offline_counter: int = 0
    online_counter: int = 0
    records: list[dict] = field(default_factory=list)  # newest last: type, counter, proof (hex), tac (hex), ...

    def file(self) -> bytes:
        return self.expiry + self.max_balance.to_bytes(4, "big") + bytes([self.key_version]) + bytes(3)

    def record(self, tx_type: int, counter: int) -> dict | None:
        return next((r for r in self.records if r["type"] == tx_type and r["counter"] == counter), None)

    def to_json(self) -> dict:
        return {
            "balance": self.balance,
            "expiry": self.expiry.hex(),
            "max_balance": self.max_balance,
            "key_version": self.key_version,
            "offline_counter": self.offline_counter,
            "online_counter": self.online_counter,
            "records": self.records,
            "keys": {"purchase": self.purchase_key.hex(), "load": self.load_key.hex(), "tac": self.tac_key.hex()},
        }

    @classmethod
    def from_json(cls, doc: dict) -> Purse:
        return cls(
            balance=int(doc["balance"]),
            expiry=bytes.fromhex(doc["expiry"]),
            max_balance=int(doc["max_balance"]),
            key_version=int(doc["key_version"]),
            purchase_key=bytes.fromhex(doc["keys"]["purchase"]),
            load_key=bytes.fromhex(doc["keys"]["load"]),
            tac_key=bytes.fromhex(doc["keys"]["tac"]),
            offline_counter=int(doc["offline_counter"]),
            online_counter=int(doc["online_counter"]),
            records=list(doc["records"]),
        )


@dataclass
class CardState:
    """Everything the card keeps across power cycles."""

    asn: bytes
    enterprise_id: bytes
    status: int
    key_version: int
    algorithm: Algorithm
    card_type: int
    access_key: bytes
    holder: bytes  # EF_HOLDER, 48 bytes
    access: bytes  # EF_ACCESS, 32 bytes
    access_counter: int = 0
    label: str = ""  # who the simulated card belongs to, for people running demos; not on a real card
    purse: Purse | None = None  # None: a card issued without the e-purse
    # The key that secures the administration commands (section 8): K_UPDATE of key_version, or K_TRANSPORT
    # while key_version is 0. None on a card personalised without one: it refuses secured commands.
    update_key: bytes | None = None
    # The shadow key slot of PUT KEY: {"version": v, "keys": {name: hex}}; COMMIT KEYS switches to it at once.
    staged: dict | None = None

    def __post_init__(self) -> None:
        checks = [
            (len(self.asn) == 8, "asn must be 8 bytes"),
            (len(self.enterprise_id) == 4, "enterprise_id must be 4 bytes"),
            (len(self.access_key) == 16, "access_key must be 16 bytes"),
            (len(self.holder) == 48, "holder file must be 48 bytes"),
            (len(self.access) == 32, "access file must be 32 bytes"),
            (0 <= self.access_counter <= COUNTER_MAX, "access_counter out of range"),
            (0 <= self.key_version <= 255, "key_version out of range"),
            (self.update_key is None or len(self.update_key) == 16, "update_key must be 16 bytes"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ValueError(problem)

    def app_file(self) -> bytes:
        return (
            self.asn
            + self.enterprise_id
            + bytes([self.status, self.key_version, int(self.algorithm), self.card_type])
            + bytes(4)
        )

    def to_json(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "label": self.label,
            "asn": self.asn.hex(),
            "enterprise_id": self.enterprise_id.hex(),
            "status": self.status,
            "key_version": self.key_version,
            "algorithm": self.algorithm.name,
            "card_type": self.card_type,
            "keys": {
                "access": self.access_key.hex(),
                **({} if self.update_key is None else {"update": self.update_key.hex()}),
            },
            "staged": self.staged,
            "files": {"holder": self.holder.hex(), "access": self.access.hex()},
            "access_counter": self.access_counter,
            "purse": None if self.purse is None else self.purse.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict) -> CardState:
        if doc.get("format") != STATE_FORMAT:
            raise ValueError(f"not a simulated one-card state file (format {doc.get('format')!r})")
        return cls(
            asn=bytes.fromhex(doc["asn"]),
            enterprise_id=bytes.fromhex(doc["enterprise_id"]),
            status=int(doc["status"]),
            key_version=int(doc["key_version"]),
            algorithm=Algorithm[doc["algorithm"]],
            card_type=int(doc["card_type"]),
            access_key=bytes.fromhex(doc["keys"]["access"]),
            holder=bytes.fromhex(doc["files"]["holder"]),
            access=bytes.fromhex(doc["files"]["access"]),
            access_counter=int(doc["access_counter"]),
            label=str(doc.get("label", "")),
            purse=None if doc.get("purse") is None else Purse.from_json(doc["purse"]),
            update_key=bytes.fromhex(doc["keys"]["update"]) if "update" in doc["keys"] else None,
            staged=doc.get("staged"),
        )


class CardStateFile(StateFile[CardState]):
    """The card's EEPROM. No fsync: a simulated card's EEPROM need not survive a power cut of the host, and the
    simulator sits on the tap path that the benchmarks time (the rename still makes every change all-or-nothing)."""

    SYNC = False

    def from_json(self, doc: Any) -> CardState:
        return CardState.from_json(doc)

    def to_json(self, state: CardState) -> Any:
        return state.to_json()

    def damaged(self, exc: Exception) -> str:
        return f"card file {self.path} is not a valid simulated card: {exc}"


@dataclass
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None  # None: no Le field; 0: Le = 00 (up to 256)


def parse_command(apdu: bytes) -> Command | None:
    """ISO 7816-4 short APDU cases 1-4; None when the bytes are not a well-formed short APDU."""
    if len(apdu) < 4:
        return None
    cla, ins, p1, p2 = apdu[:4]
    body = apdu[4:]
    if not body:
        return Command(cla, ins, p1, p2, b"", None)
    if len(body) == 1:
        return Command(cla, ins, p1, p2, b"", body[0])
    lc = body[0]
    if lc == 0:
        return None  # extended length is not supported by this application
    if len(body) == 1 + lc:
        return Command(cla, ins, p1, p2, body[1:], None)
    if len(body) == 2 + lc:
        return Command(cla, ins, p1, p2, body[1 : 1 + lc], body[-1])
    return None


@dataclass
class OneCardApplet:
    """The card: feed it command APDUs, get response APDUs. Never raises on bad input."""

    state: CardState
    store: CardStateFile | None = None
    atr: bytes = ATR
    selected: bool = field(default=False, init=False)

    session: dict | None = field(default=None, init=False)  # the open purchase/load session, volatile
    challenge: bytes | None = field(default=None, init=False)  # GET CHALLENGE's answer, for the next APDU only

    def power_on(self) -> None:
        self.selected, self.session, self.challenge = False, None, None

    def power_off(self) -> None:
        self.selected, self.session, self.challenge = False, None, None

    def transmit(self, apdu: bytes) -> bytes:
        try:
            return self._process(apdu)
        except Exception:  # a card answers 6F00 rather than dying, whatever happens inside
            return SW_UNKNOWN

    def _process(self, apdu: bytes) -> bytes:
        # A challenge is good for the one APDU that follows it, whatever that APDU is: a recorded secured
        # command can never meet the challenge it was MACed with again.
        challenge, self.challenge = self.challenge, None
        cmd = parse_command(apdu)
        if cmd is None:
            return SW_WRONG_LENGTH
        if cmd.cla == 0x00 and cmd.ins == 0x84:
            return self._get_challenge(cmd)
        if cmd.cla == 0x00 and cmd.ins == 0xB2:
            return self._read_record(cmd)
        if cmd.cla == 0x84:
            handler = SECURED_INS.get(cmd.ins)
            if handler is None:
                return SW_INS
            return self._secured(cmd, challenge, handler)
        if cmd.cla == 0x00 and cmd.ins == 0xA4:
            return self._select(cmd)
        if cmd.cla == 0x00 and cmd.ins == 0xB0:
            return self._read_binary(cmd)
        if cmd.cla == 0x80 and cmd.ins == 0x3A:
            return self._access_read(cmd)
        if cmd.cla == 0x80 and cmd.ins in PURSE_INS:
            session, self.session = self.session, None  # any purse command ends a pending session
            if not self.selected:
                return SW_NO_CURRENT_EF
            if self.state.purse is None:
                return SW_NO_PURSE
            return PURSE_INS[cmd.ins](self, cmd, session)
        if cmd.cla not in (0x00, 0x80, 0x84):
            return SW_CLA
        return SW_INS

    def _select(self, cmd: Command) -> bytes:
        self.session = None
        if cmd.p1 != 0x04 or cmd.p2 != 0x00:
            self.selected = False
            return SW_WRONG_P1P2
        if cmd.data != AID:
            self.selected = False
            return SW_NOT_FOUND
        self.selected = True
        s = self.state
        prop = (
            _tlv(0xC0, s.asn)
            + _tlv(0xC1, s.enterprise_id)
            + _tlv(0xC2, bytes([s.status]))
            + _tlv(0xC3, bytes([s.key_version]))
            + _tlv(0xC4, bytes([int(s.algorithm)]))
            + _tlv(0xC5, bytes([s.card_type]))
            + _tlv(0xC6, b"\x01")
            + (b"" if s.purse is None else _tlv(0xC7, s.purse.expiry))
        )
        return _tlv(0x6F, _tlv(0x84, AID) + _tlv(0xA5, prop)) + SW_OK

    def _read_binary(self, cmd: Command) -> bytes:
        if not self.selected:
            return SW_NO_CURRENT_EF
        if not cmd.p1 & 0x80 or cmd.p1 & 0x60:
            return SW_WRONG_P1P2  # only the short-file-identifier form is supported
        sfi = cmd.p1 & 0x1F
        files = {SFI_APP: self.state.app_file(), SFI_HOLDER: self.state.holder, SFI_ACCESS: self.state.access}
        if self.state.purse is not None:
            files[SFI_PURSE] = self.state.purse.file()
        if sfi not in files or cmd.data:
            return SW_NOT_FOUND if sfi not in files else SW_WRONG_LENGTH
        content = files[sfi]
        offset = cmd.p2
        if offset > len(content):
            return SW_OFFSET
        want = 256 if cmd.le in (None, 0) else cmd.le
        return content[offset : offset + want] + SW_OK

    def _access_read(self, cmd: Command) -> bytes:
        if not self.selected:
            return SW_NO_CURRENT_EF
        if cmd.p1 != 0 or cmd.p2 != 0:
            return SW_WRONG_P1P2
        if len(cmd.data) != 14:
            return SW_WRONG_LENGTH
        s = self.state
        if s.status != STATUS_ACTIVE or s.access_counter >= COUNTER_MAX:
            return SW_CONDITIONS
        s.access_counter += 1
        if self.store is not None:
            # Persist before answering: a counter value a terminal has seen is never handed out again.
            self.store.save(s)
        body = bytes([s.status]) + s.access + s.holder + s.access_counter.to_bytes(4, "big")
        nonce, terminal_id = cmd.data[:8], cmd.data[8:]
        message = s.asn + s.enterprise_id + bytes([s.key_version]) + nonce + terminal_id + body
        return body + mac8(s.algorithm, s.access_key, message) + SW_OK

    def _persist(self) -> None:
        if self.store is not None:
            self.store.save(self.state)

    def _init_purchase(self, cmd: Command, _session) -> bytes:
        if (cmd.p1, cmd.p2) != (0x01, 0x02):
            return SW_WRONG_P1P2
        if len(cmd.data) != 11:
            return SW_WRONG_LENGTH
        if self.state.status != STATUS_ACTIVE:
            return SW_CONDITIONS
        purse, amount = self.state.purse, int.from_bytes(cmd.data[1:5], "big")
        if cmd.data[0] != 0x01:
            return SW_KEY_INDEX
        if amount == 0:
            return SW_WRONG_DATA
        if purse.balance < amount:
            return SW_INSUFFICIENT
        if purse.offline_counter >= 0xFFFF:
            return SW_CONDITIONS
        random = os.urandom(4)
        self.session = {
            "type": tx.PURCHASE,
            "amount": amount,
            "terminal": cmd.data[5:11],
            "random": random,
            "counter": purse.offline_counter,
        }
        return (
            purse.balance.to_bytes(4, "big")
            + purse.offline_counter.to_bytes(2, "big")
            + bytes(3)
            + bytes([purse.key_version, int(self.state.algorithm)])
            + random
            + SW_OK
        )

    def _debit(self, cmd: Command, session) -> bytes:
        if (cmd.p1, cmd.p2) != (0x01, 0x00):
            return SW_WRONG_P1P2
        if len(cmd.data) != 19:
            return SW_WRONG_LENGTH
        if session is None or session["type"] != tx.PURCHASE:
            return SW_NO_SESSION
        purse, alg = self.state.purse, self.state.algorithm
        tsn, date, time_, mac1 = int.from_bytes(cmd.data[:4], "big"), cmd.data[4:8], cmd.data[8:11], cmd.data[11:]
        sk = pc.purchase_session_key(alg, purse.purchase_key, session["random"], session["counter"], tsn)
        expected = pc.purchase_mac1(alg, sk, session["amount"], session["terminal"], date, time_)
        if not hmac.compare_digest(mac1, expected):
            return SW_MAC
        if date.hex() > purse.expiry.hex():
            return SW_CONDITIONS
        amount = session["amount"]
        if purse.balance < amount:
            return SW_INSUFFICIENT
        balance_after = purse.balance - amount
        proof = pc.purchase_mac2(alg, sk, amount)
        tac = pc.tac(
            alg,
            purse.tac_key,
            amount=amount,
            tx_type=tx.PURCHASE,
            terminal_id=session["terminal"],
            tsn=tsn,
            date=date,
            time=time_,
            counter=session["counter"],
            balance_after=balance_after,
        )
        self._commit(tx.PURCHASE, session, amount, balance_after, tsn, date, time_, proof, tac)
        return tac + proof + SW_OK

    def _commit(self, tx_type, session, amount, balance_after, tsn, date, time_, proof, tac) -> None:
        # Balance, counter and record change together and reach the "EEPROM" before the answer leaves.
        purse = self.state.purse
        purse.balance = balance_after
        if tx_type == tx.PURCHASE:
            purse.offline_counter += 1
        else:
            purse.online_counter += 1
        purse.records.append(
            {
                "type": tx_type,
                "counter": session["counter"],
                "amount": amount,
                "terminal": session["terminal"].hex(),
                "tsn": tsn,
                "date": date.hex(),
                "time": time_.hex(),
                "balance_after": balance_after,
                "proof": proof.hex(),
                "tac": tac.hex(),
            }
        )
        del purse.records[:-MAX_RECORDS]
        self._persist()

    def _init_load(self, cmd: Command, _session) -> bytes:
        if (cmd.p1, cmd.p2) != (0x00, 0x02):
            return SW_WRONG_P1P2
        if len(cmd.data) != 11:
            return SW_WRONG_LENGTH
        if self.state.status != STATUS_ACTIVE:
            return SW_CONDITIONS
        purse, alg, amount = self.state.purse, self.state.algorithm, int.from_bytes(cmd.data[1:5], "big")
        if cmd.data[0] != 0x01:
            return SW_KEY_INDEX
        if amount == 0 or purse.balance + amount > purse.max_balance:
            return SW_WRONG_DATA
        if purse.online_counter >= 0xFFFF:
            return SW_CONDITIONS
        random = os.urandom(4)
        terminal = cmd.data[5:11]
        sk = pc.load_session_key(alg, purse.load_key, random, purse.online_counter)
        self.session = {
            "type": tx.LOAD,
            "amount": amount,
            "terminal": terminal,
            "random": random,
            "counter": purse.online_counter,
            "sk": sk,
        }
        mac1 = pc.load_mac1(alg, sk, purse.balance, amount, terminal)
        return (
            purse.balance.to_bytes(4, "big")
            + purse.online_counter.to_bytes(2, "big")
            + bytes([purse.key_version, int(alg)])
            + random
            + mac1
            + SW_OK
        )

    def _credit(self, cmd: Command, session) -> bytes:
        if (cmd.p1, cmd.p2) != (0x00, 0x00):
            return SW_WRONG_P1P2
        if len(cmd.data) != 15:
            return SW_WRONG_LENGTH
        if session is None or session["type"] != tx.LOAD:
            return SW_NO_SESSION
        purse, alg = self.state.purse, self.state.algorithm
        date, time_, mac2 = cmd.data[:4], cmd.data[4:7], cmd.data[7:]
        amount, sk = session["amount"], session["sk"]
        if not hmac.compare_digest(mac2, pc.load_mac2(alg, sk, amount, session["terminal"], date, time_)):
            return SW_MAC
        balance_after = purse.balance + amount
        proof = pc.load_mac3(alg, sk, balance_after, amount)
        tac = pc.tac(
            alg,
            purse.tac_key,
            amount=amount,
            tx_type=tx.LOAD,
            terminal_id=session["terminal"],
            tsn=0,
            date=date,
            time=time_,
            counter=session["counter"],
            balance_after=balance_after,
        )
        self._commit(tx.LOAD, session, amount, balance_after, 0, date, time_, proof, tac)
        return tac + proof + SW_OK

    def _get_balance(self, cmd: Command, _session) -> bytes:
        if (cmd.p1, cmd.p2) != (0x00, 0x02):
            return SW_WRONG_P1P2
        if cmd.data:
            return SW_WRONG_LENGTH
        return self.state.purse.balance.to_bytes(4, "big") + SW_OK

    def _prove(self, cmd: Command, _session) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 not in (tx.LOAD, tx.PURCHASE):
            return SW_WRONG_P1P2
        if len(cmd.data) != 2:
            return SW_WRONG_LENGTH
        record = self.state.purse.record(cmd.p2, int.from_bytes(cmd.data, "big"))
        if record is None:
            return SW_NO_PROOF
        return bytes.fromhex(record["proof"]) + bytes.fromhex(record["tac"]) + SW_OK

    # --- administration: GET CHALLENGE, secured commands, READ RECORD (section 8) --------------------

    def _get_challenge(self, cmd: Command) -> bytes:
        if not self.selected:
            return SW_NO_CURRENT_EF
        if (cmd.p1, cmd.p2) != (0, 0):
            return SW_WRONG_P1P2
        if cmd.data or cmd.le != 8:
            return SW_WRONG_LENGTH
        self.challenge = os.urandom(8)
        return self.challenge + SW_OK

    def _read_record(self, cmd: Command) -> bytes:
        if not self.selected:
            return SW_NO_CURRENT_EF
        if cmd.p2 != (SFI_RECORDS << 3) | 0x04 or not 1 <= cmd.p1 <= MAX_RECORDS:
            return SW_WRONG_P1P2
        if cmd.data:
            return SW_WRONG_LENGTH
        purse = self.state.purse
        if purse is None:
            return SW_NO_PURSE
        if cmd.p1 > len(purse.records):
            return SW_NO_RECORD
        return record_bytes(purse.records[-cmd.p1]) + SW_OK

    def _secured(self, cmd: Command, challenge: bytes | None, handler) -> bytes:
        """Check the command MAC (challenge || header || data) under the card's current admin key, then act."""
        if not self.selected:
            return SW_NO_CURRENT_EF
        if len(cmd.data) < 8:
            return SW_WRONG_LENGTH
        s = self.state
        if challenge is None or s.update_key is None:
            return SW_NO_CHALLENGE
        plain, mac = cmd.data[:-8], cmd.data[-8:]
        header = bytes([cmd.cla, cmd.ins, cmd.p1, cmd.p2, len(cmd.data)])
        if not hmac.compare_digest(mac8(s.algorithm, s.update_key, challenge + header + plain), mac):
            return SW_SM_MAC
        return handler(self, cmd, plain, challenge)

    def _put_key(self, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
        s = self.state
        if cmd.p2 not in KEY_IDS or not 1 <= cmd.p1 <= 255 or cmd.p1 == s.key_version:
            return SW_WRONG_P1P2
        if len(plain) != 16:
            return SW_WRONG_LENGTH
        if s.status == STATUS_VOIDED:
            return SW_CONDITIONS
        key = block_decrypt(s.algorithm, secure_session_key(s.algorithm, s.update_key, challenge), plain)
        if s.staged is None or s.staged.get("version") != cmd.p1:
            s.staged = {"version": cmd.p1, "keys": {}}  # a new target version starts the shadow slot afresh
        s.staged["keys"][KEY_IDS[cmd.p2]] = key.hex()
        self._persist()  # the shadow slot only: the card still answers with its current keys
        return bytes.fromhex(key_check_value(s.algorithm, key)) + SW_OK

    def _commit_keys(self, cmd: Command, plain: bytes, _challenge: bytes) -> bytes:
        s = self.state
        if cmd.p1 != 0 or not 1 <= cmd.p2 <= 255:
            return SW_WRONG_P1P2
        if plain:
            return SW_WRONG_LENGTH
        staged = s.staged
        if staged is None or staged.get("version") != cmd.p2 or s.status == STATUS_VOIDED:
            return SW_CONDITIONS
        keys = {name: bytes.fromhex(h) for name, h in staged["keys"].items()}
        purse_keys = [n for n in PURSE_KEY_NAMES if n in keys]
        if (
            "access" not in keys
            or "update" not in keys
            or len(purse_keys) not in (0, 3)
            or (s.purse is not None and len(purse_keys) != 3)
        ):
            return SW_CONDITIONS  # a card never runs on a half set: the purse must move with the rest
        v = cmd.p2
        s.key_version, s.access_key, s.update_key, s.staged = v, keys["access"], keys["update"], None
        if purse_keys:
            if s.purse is None:
                s.purse = Purse(
                    balance=0,
                    expiry=UNISSUED_PURSE_EXPIRY,
                    max_balance=0,
                    key_version=v,
                    purchase_key=keys["purchase"],
                    load_key=keys["load"],
                    tac_key=keys["tac"],
                )
            else:
                s.purse.key_version = v
                s.purse.purchase_key, s.purse.load_key, s.purse.tac_key = keys["purchase"], keys["load"], keys["tac"]
        self._persist()  # one atomic write: before it the old key version, after it the new one
        return SW_OK

    def _update_binary(self, cmd: Command, plain: bytes, _challenge: bytes) -> bytes:
        s = self.state
        if not cmd.p1 & 0x80 or cmd.p1 & 0x60:
            return SW_WRONG_P1P2
        if not plain:
            return SW_WRONG_LENGTH
        if s.status == STATUS_VOIDED:
            return SW_CONDITIONS
        sfi, offset, end = cmd.p1 & 0x1F, cmd.p2, cmd.p2 + len(plain)
        if sfi == SFI_APP:
            # Only the status byte, only 00 -> 01 (activation), only on a washed card: voiding is 84 1E.
            if (offset, len(plain)) != (12, 1):
                return SW_OFFSET
            if plain != bytes([STATUS_ACTIVE]) or s.key_version == 0:
                return SW_CONDITIONS if s.key_version == 0 else SW_WRONG_DATA
            s.status = STATUS_ACTIVE
        elif sfi in (SFI_HOLDER, SFI_ACCESS):
            current = s.holder if sfi == SFI_HOLDER else s.access
            if end > len(current):
                return SW_OFFSET
            updated = current[:offset] + plain + current[end:]
            if sfi == SFI_HOLDER:
                s.holder = updated
            else:
                s.access = updated
        elif sfi == SFI_PURSE:
            if s.purse is None:
                return SW_NO_PURSE
            if end > 8:
                return SW_OFFSET  # the purse key version and RFU bytes are not writable
            updated = s.purse.file()[:8]
            updated = updated[:offset] + plain + updated[end:]
            expiry, max_balance = updated[:4], int.from_bytes(updated[4:8], "big")
            if not bcd.is_date(expiry) or max_balance < s.purse.balance:
                return SW_WRONG_DATA
            s.purse.expiry, s.purse.max_balance = expiry, max_balance
        else:
            return SW_NOT_FOUND
        self._persist()
        return SW_OK

    def _application_block(self, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
        s = self.state
        if (cmd.p1, cmd.p2) != (0, 0):
            return SW_WRONG_P1P2
        if plain:
            return SW_WRONG_LENGTH
        if s.status != STATUS_VOIDED:
            s.status = STATUS_VOIDED  # from now on every purse command answers 69 85: the balance is frozen
            self._persist()
        purse = s.purse
        frozen = (
            bytes(8)
            if purse is None
            else purse.balance.to_bytes(4, "big")
            + purse.offline_counter.to_bytes(2, "big")
            + purse.online_counter.to_bytes(2, "big")
        )
        # The card proves the frozen balance under its admin key: challenge || INS || data (INS 1E, never 84,
        # so a response MAC can never be taken for a command MAC).
        return frozen + mac8(s.algorithm, s.update_key, challenge + b"\x1e" + frozen) + SW_OK

    def _erase(self, cmd: Command, plain: bytes, _challenge: bytes) -> bytes:
        s = self.state
        if (cmd.p1, cmd.p2) != (0, 0):
            return SW_WRONG_P1P2
        if plain:
            return SW_WRONG_LENGTH
        if s.status != STATUS_VOIDED:
            return SW_CONDITIONS  # void first (84 1E), which proves the balance that is being given up
        s.holder, s.access, s.purse, s.staged = bytes(48), bytes(32), None, None
        self._persist()
        return SW_OK


PURSE_INS = {
    0x50: lambda card, cmd, session: (card._init_purchase if cmd.p1 == 0x01 else card._init_load)(cmd, session),
    0x54: OneCardApplet._debit,
    0x52: OneCardApplet._credit,
    0x5C: OneCardApplet._get_balance,
    0x5A: OneCardApplet._prove,
}


SECURED_INS = {
    0xD4: OneCardApplet._put_key,
    0xD8: OneCardApplet._commit_keys,
    0xD6: OneCardApplet._update_binary,
    0x1E: OneCardApplet._application_block,
    0x0E: OneCardApplet._erase,
}

RECORD_LEN = 44


def record_bytes(r: dict) -> bytes:
    """A transaction record as READ RECORD returns it (section 8.7), 44 bytes."""
    return (
        bytes([r["type"]])
        + r["counter"].to_bytes(2, "big")
        + r["amount"].to_bytes(4, "big")
        + bytes.fromhex(r["terminal"])
        + r["tsn"].to_bytes(4, "big")
        + bytes.fromhex(r["date"])
        + bytes.fromhex(r["time"])
        + r["balance_after"].to_bytes(4, "big")
        + bytes.fromhex(r["proof"])
        + bytes.fromhex(r["tac"])
    )


def _tlv(tag: int, value: bytes) -> bytes:
    if len(value) > 127:
        raise ValueError("TLV values above 127 bytes are not used by this application")
    return bytes([tag, len(value)]) + value


@dataclass
class ForeignCard:
    """A contactless card or phone that has no one-card application (a bank card, a phone without RFID-SIM)."""

    atr: bytes = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
    label: str = "card without one-card application"

    def power_on(self) -> None:
        pass

    def power_off(self) -> None:
        pass

    def transmit(self, apdu: bytes) -> bytes:
        if len(apdu) >= 2 and apdu[1] == 0xA4:
            return SW_NOT_FOUND
        return SW_INS


def write_foreign_card(path: str | Path, label: str) -> None:
    Path(path).write_text(json.dumps({"format": "onecard-sim-foreign/1", "label": label}) + "\n", encoding="utf-8")
