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
from sam.crypto import (
    block_decrypt,
    ctr_crypt,
    data_session_key,
    key_check_value,
    mac8,
    pin_session_key,
    secure_session_key,
    write_session_key,
)
from sam.interface import Algorithm
from simulator.state_file import StateFile

AID = bytes.fromhex("F04F4E454341524401")

STATE_FORMAT = "onecard-sim-card/1"

STATUS_TRANSPORT = 0x00
STATUS_ACTIVE = 0x01
STATUS_VOIDED = 0x02
STATUS_LOCKED = 0x03  # reported lost and locked over the air (docs/card-application.md 6); unlock: back to 01

CARD_TYPE_RFID_SIM = 0x01
CARD_TYPE_IC_CARD = 0x02

SFI_APP = 1
SFI_HOLDER = 2
SFI_ACCESS = 3
SFI_PURSE = 4
SFI_SUBSIDY = 5  # write-only: the maximum subsidy balance; the first write creates the subsidy purse (5.6)

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
SW_ALLOWANCE_LOADED = b"\x94\x07"  # subsidy load of an allowance number not above the last loaded (section 5.6)
SW_MAC = b"\x93\x02"
SW_NO_CHALLENGE = b"\x69\x82"  # secured command without a fresh GET CHALLENGE just before it (= SW_SECURITY)
SW_SM_MAC = b"\x69\x88"  # secured command whose MAC does not verify: nothing changed
SW_NO_RECORD = b"\x6a\x83"
SW_PIN_BLOCKED = b"\x69\x83"  # VERIFY: the try counter is at 0 (unblock at the card office)
SW_PIN_NOT_SET = b"\x69\x84"  # VERIFY / RESET RETRY COUNTER: this application has no spending PIN

# The spending PIN (消费密码, docs/card-application.md 5.5): 4..12 digits, 3 tries, P2 80 of VERIFY.
PIN_TRIES = 3
PIN_P2 = 0x80

SFI_RECORDS = 5
NAME_MAX = 16  # bytes of UTF-8 in a sub-application's directory name
# Key IDs of PUT KEY (P2), docs/card-application.md section 8.4.
KEY_IDS = {0x01: "access", 0x02: "update", 0x03: "purchase", 0x04: "load", 0x05: "tac", 0x06: "kic", 0x07: "kid"}
# A version 2 sub-application's OTA key set (docs/ota.md 2): KIc and KID, written by PUT KEY 06 / 07 with the others.
OTA_KEY_NAMES = ("kic", "kid")
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
class SubsidyPurse:
    """The subsidy purse (补助钱包) of section 5.6: its own balance, counters, expiry and records; the keys are the
    cash purse's (K_PURCHASE, K_LOAD, K_TAC), the transaction types (01, 04, 05) keep the two apart."""

    balance: int = 0
    # BCD: the last day the balance may be spent; a load moves it later; 00000000 while the balance is 0 (section 5.5)
    expiry: bytes = bytes(4)
    max_balance: int = 100_000_00
    offline_counter: int = 0  # purchases and withdrawals
    online_counter: int = 0  # loads
    records: list[dict] = field(default_factory=list)
    # The number of the last allowance loaded (FCI tag CA): a load of an allowance is accepted only above it, so no
    # allowance is loaded twice, whichever terminals hold it offline; 0 = none yet (a refund, number 0, keeps it).
    last_allowance: int = 0

    def record(self, tx_type: int, counter: int) -> dict | None:
        return next((r for r in self.records if r["type"] == tx_type and r["counter"] == counter), None)

    def to_json(self) -> dict:
        return {
            "balance": self.balance,
            "expiry": self.expiry.hex(),
            "max_balance": self.max_balance,
            "offline_counter": self.offline_counter,
            "online_counter": self.online_counter,
            "records": self.records,
            "last_allowance": self.last_allowance,
        }

    @classmethod
    def from_json(cls, doc: dict) -> SubsidyPurse:
        return cls(
            balance=int(doc["balance"]),
            expiry=bytes.fromhex(doc["expiry"]),
            max_balance=int(doc["max_balance"]),
            offline_counter=int(doc["offline_counter"]),
            online_counter=int(doc["online_counter"]),
            records=list(doc["records"]),
            last_allowance=int(doc.get("last_allowance", 0)),
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
    # Version 2 (sub-application of a multi-enterprise card): its directory name and application version 02.
    name: str = ""
    app_version: int = 1
    # The spending PIN of this (sub-)application, ASCII digits, and its try counter; None: no PIN set.
    pin: str | None = field(default=None, repr=False)
    pin_tries: int = PIN_TRIES
    # Version 2 only: the subsidy purse (补助, section 5.6), under the cash purse's keys; None = no subsidy purse.
    subsidy: SubsidyPurse | None = None
    # Version 2 only: this sub-application's OTA key set (docs/ota.md 2, 3.1): KIc, KID and the last counter
    # processed under them. None: no OTA keys (the SIM's OTA applet then skips this sub-application).
    ota_kic: bytes | None = field(default=None, repr=False)
    ota_kid: bytes | None = field(default=None, repr=False)
    ota_counter: int = 0

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
            (len(self.name.encode()) <= NAME_MAX, f"sub-application name longer than {NAME_MAX} bytes of UTF-8"),
            (self.app_version in (1, 2), "app_version must be 1 or 2"),
            (self.pin is None or (self.pin.isdigit() and 4 <= len(self.pin) <= 12), "pin must be 4..12 digits"),
            (0 <= self.pin_tries <= PIN_TRIES, f"pin_tries must be 0..{PIN_TRIES}"),
            (
                (self.ota_kic is None) == (self.ota_kid is None)
                and all(k is None or len(k) == 16 for k in (self.ota_kic, self.ota_kid)),
                "ota keys must be KIc and KID of 16 bytes, or neither",
            ),
            (
                self.subsidy is None or (self.app_version == 2 and self.purse is not None),
                "subsidy purse needs v2+purse",
            ),
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
            **({} if self.app_version == 1 else {"name": self.name, "app_version": self.app_version}),
            **({} if self.pin is None else {"spending_pin": {"pin": self.pin, "tries_left": self.pin_tries}}),
            **({} if self.subsidy is None else {"subsidy": self.subsidy.to_json()}),
            **(
                {}
                if self.ota_kic is None or self.ota_kid is None
                else {"ota": {"kic": self.ota_kic.hex(), "kid": self.ota_kid.hex(), "counter": self.ota_counter}}
            ),
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
            name=str(doc.get("name", "")),
            app_version=int(doc.get("app_version", 1)),
            pin=None if doc.get("spending_pin") is None else str(doc["spending_pin"]["pin"]),
            pin_tries=PIN_TRIES if doc.get("spending_pin") is None else int(doc["spending_pin"]["tries_left"]),
            subsidy=None if doc.get("subsidy") is None else SubsidyPurse.from_json(doc["subsidy"]),
            ota_kic=None if doc.get("ota") is None else bytes.fromhex(doc["ota"]["kic"]),
            ota_kid=None if doc.get("ota") is None else bytes.fromhex(doc["ota"]["kid"]),
            ota_counter=0 if doc.get("ota") is None else int(doc["ota"]["counter"]),
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
    # VERIFY succeeded in this card session and no DEBIT FOR PURCHASE has used it yet (section 5.5), volatile.
    pin_verified: bool = field(default=False, init=False)

    def power_on(self) -> None:
        self.selected, self.session, self.challenge, self.pin_verified = False, None, None, False

    def power_off(self) -> None:
        self.selected, self.session, self.challenge, self.pin_verified = False, None, None, False

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
            if handler is None and self.VERSION >= 2:
                handler = SECURED_V2_INS.get(cmd.ins)
            if handler is None:
                return SW_INS
            return self._secured(cmd, challenge, handler)
        if cmd.cla == 0x00 and cmd.ins == 0xA4:
            return self._select(cmd)
        if cmd.cla == 0x00 and cmd.ins == 0xB0:
            return self._read_binary(cmd)
        if cmd.cla == 0x80 and cmd.ins == 0x3A:
            return self._access_read(cmd)
        if cmd.cla == 0x00 and cmd.ins == 0x20:
            return self._verify(cmd)
        if cmd.cla == 0x80 and cmd.ins in PURSE_INS:
            session, self.session = self.session, None  # any purse command ends a pending session
            if cmd.ins == 0x54:  # a DEBIT uses the verification up, whatever its outcome
                self.debit_pin, self.pin_verified = self.pin_verified, False
            if not self.selected:
                return SW_NO_CURRENT_EF
            if self.state.purse is None:
                return SW_NO_PURSE
            return PURSE_INS[cmd.ins](self, cmd, session)
        if cmd.cla not in (0x00, 0x80, 0x84):
            return SW_CLA
        return SW_INS

    debit_pin = False  # the PIN verification the DEBIT being processed may use

    def _select(self, cmd: Command) -> bytes:
        self.session, self.pin_verified = None, False
        if cmd.p1 != 0x04 or cmd.p2 != 0x00:
            self.selected = False
            return SW_WRONG_P1P2
        if cmd.data != AID:
            self.selected = False
            return SW_NOT_FOUND
        self.selected = True
        return fci(AID, self.state)

    VERSION = 1  # the card's application version: 1 one enterprise, 2 up to 8 sub-applications (OneCardV2Applet)

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
        if sfi != SFI_APP and self._private_files():
            return SW_SECURITY  # version 2: holder, access and purse files only under secure messaging (84 B0)
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
        # Persist before answering: a counter value a terminal has seen is never handed out again.
        self._persist()
        counter = s.access_counter.to_bytes(4, "big")
        nonce, terminal_id = cmd.data[:8], cmd.data[8:]
        private = s.access + s.holder
        if s.app_version >= 2:
            # Version 2: the holder's data leaves the card only enciphered for this answer (section 2.5).
            private = ctr_crypt(s.algorithm, data_session_key(s.algorithm, s.access_key, nonce + counter), private)
        body = bytes([s.status]) + private + counter
        message = s.asn + s.enterprise_id + bytes([s.key_version]) + nonce + terminal_id + body
        return body + mac8(s.algorithm, s.access_key, message) + SW_OK

    def _private_files(self) -> bool:
        """Version 2 keeps holder, access and purse data behind the enterprise's keys (section 2.5)."""
        return self.selected and self.state.app_version >= 2

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
        # Version 2 (section 5.2a): no 94 01 here, which would bound the balance for anyone; DEBIT checks it after
        # MAC1, and the POS's SAM, which deciphers the balance, refuses MAC1 first.
        if purse.balance < amount and self.state.app_version < 2:
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
            self._purse_field(purse.purchase_key, random, purse.offline_counter, purse.balance.to_bytes(4, "big"))
            + purse.offline_counter.to_bytes(2, "big")
            + bytes(3)
            + bytes([purse.key_version, int(self.state.algorithm)])
            + random
            + SW_OK
        )

    def _purse_field(self, key: bytes, random: bytes, counter: int, clear: bytes) -> bytes:
        """The balance fields of an INITIALIZE answer: in clear on version 1 (PBOC), sealed under SK_BAL on
        version 2, so only a SAM holding the enterprise's purse key reads them (section 5.2a)."""
        if self.state.app_version < 2:
            return clear
        return pc.seal_purse_data(self.state.algorithm, key, random, counter, clear)

    def _debit(self, cmd: Command, session) -> bytes:
        if cmd.p1 != 0x01 or cmd.p2 not in (0x00, PIN_P2):
            return SW_WRONG_P1P2
        if len(cmd.data) != 19:
            return SW_WRONG_LENGTH
        if session is None or session["type"] != tx.PURCHASE:
            return SW_NO_SESSION
        with_pin = cmd.p2 == PIN_P2
        if with_pin and not self.debit_pin:
            return SW_SECURITY  # flagged as PIN-verified, but no VERIFY succeeded in this session since
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
            tx_type=tx.PURCHASE_WITH_PIN_TAC if with_pin else tx.PURCHASE,
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
        if amount == 0 or (purse.balance + amount > purse.max_balance and self.state.app_version < 2):
            return SW_WRONG_DATA  # version 2 checks the maximum at CREDIT, after MAC2 (section 5.2a)
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
            self._purse_field(purse.load_key, random, purse.online_counter, purse.balance.to_bytes(4, "big"))
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
        if purse.balance + amount > purse.max_balance:
            return SW_WRONG_DATA  # version 2: checked here, after MAC2, not at INITIALIZE (section 5.2a)
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
        if self._private_files():
            return SW_SECURITY  # version 2: the balance only under secure messaging (84 5C)
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

    # --- the spending PIN (section 5.5) ---------------------------------------------------------------

    def _verify(self, cmd: Command) -> bytes:
        """VERIFY 00 20 00 80 [08 <PIN block>]: compare with the selected application's PIN, counting the try first."""
        if not self.selected:
            return SW_NO_CURRENT_EF
        if (cmd.p1, cmd.p2) != (0x00, PIN_P2):
            return SW_WRONG_P1P2
        if cmd.data and len(cmd.data) != 8:
            return SW_WRONG_LENGTH
        s = self.state
        if s.status != STATUS_ACTIVE:
            return SW_CONDITIONS
        if s.pin is None:
            return SW_PIN_NOT_SET
        if not cmd.data:  # case 1: the state, nothing compared, nothing counted
            if self.pin_verified:
                return SW_OK
            return SW_PIN_BLOCKED if s.pin_tries == 0 else bytes([0x63, 0xC0 | s.pin_tries])
        if s.pin_tries == 0:
            return SW_PIN_BLOCKED
        typed = pin_block_digits(cmd.data)
        if typed is None:
            return SW_WRONG_DATA  # not a PIN block: not compared, not counted
        self.pin_verified = False
        # The try is counted and persisted before the comparison's answer exists: a tear never saves a try.
        s.pin_tries -= 1
        self._persist()
        if not hmac.compare_digest(typed.encode(), s.pin.encode()):
            return bytes([0x63, 0xC0 | s.pin_tries])
        s.pin_tries = PIN_TRIES
        self._persist()
        self.pin_verified = True
        return SW_OK

    def _change_pin(self, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
        """CHANGE REFERENCE DATA 84 24 00 80: a new PIN, enciphered under SK_PIN; the try counter back to 3."""
        s = self.state
        if (cmd.p1, cmd.p2) != (0x00, PIN_P2):
            return SW_WRONG_P1P2
        if len(plain) != 16:
            return SW_WRONG_LENGTH
        if s.status == STATUS_VOIDED or s.key_version == 0:
            return SW_CONDITIONS
        block = block_decrypt(s.algorithm, pin_session_key(s.algorithm, s.update_key, challenge), plain)
        digits = pin_block_digits(block[:8])
        if digits is None or block[8:] != b"\xff" * 8:
            return SW_WRONG_DATA
        s.pin, s.pin_tries = digits, PIN_TRIES
        self.pin_verified = False
        self._persist()
        return SW_OK

    def _reset_pin_tries(self, cmd: Command, plain: bytes, _challenge: bytes) -> bytes:
        """RESET RETRY COUNTER 84 2C 03 80: unblock, the PIN unchanged."""
        s = self.state
        if (cmd.p1, cmd.p2) != (0x03, PIN_P2):
            return SW_WRONG_P1P2
        if plain:
            return SW_WRONG_LENGTH
        if s.status == STATUS_VOIDED:
            return SW_CONDITIONS
        if s.pin is None:
            return SW_PIN_NOT_SET
        s.pin_tries = PIN_TRIES
        self._persist()
        return SW_OK

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
        if self._private_files():
            return SW_SECURITY  # version 2: records only under secure messaging (84 B2)
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
        if KEY_IDS[cmd.p2] in OTA_KEY_NAMES and s.app_version != 2:
            return SW_WRONG_P1P2  # OTA key sets belong to the sub-applications of a version 2 card (a SIM)
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
            or len([n for n in OTA_KEY_NAMES if n in keys]) == 1
        ):
            return SW_CONDITIONS  # a card never runs on a half set: the purse must move with the rest
        v = cmd.p2
        s.key_version, s.access_key, s.update_key, s.staged = v, keys["access"], keys["update"], None
        if "kic" in keys:
            # The counter stays: a packet recorded under the old keys fails its CC, and the platform's counter for
            # this sub-application only ever grows.
            s.ota_kic, s.ota_kid = keys["kic"], keys["kid"]
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

    def _update_binary(self, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
        s = self.state
        if not cmd.p1 & 0x80 or cmd.p1 & 0x60:
            return SW_WRONG_P1P2
        if not plain:
            return SW_WRONG_LENGTH
        if s.status == STATUS_VOIDED:
            return SW_CONDITIONS
        sfi, offset, end = cmd.p1 & 0x1F, cmd.p2, cmd.p2 + len(plain)
        if s.app_version >= 2 and sfi in (SFI_HOLDER, SFI_ACCESS, SFI_PURSE, SFI_SUBSIDY):
            # Version 2: holder, access and purse data arrive enciphered under SK_WRITE, MAC'd over the ciphertext
            # (checked by _secured before this): section 8.2, 9.11.
            plain = ctr_crypt(s.algorithm, write_session_key(s.algorithm, s.update_key, challenge + bytes(4)), plain)
        if sfi == SFI_APP:
            # Only the status byte, only on a washed card: 00/01/03 -> 01 (activation, unlock), 01/03 -> 03 (lock);
            # voiding is 84 1E.
            if (offset, len(plain)) != (12, 1):
                return SW_OFFSET
            if s.key_version == 0:
                return SW_CONDITIONS
            if plain[0] not in (STATUS_ACTIVE, STATUS_LOCKED):
                return SW_WRONG_DATA
            if plain[0] == STATUS_LOCKED and s.status == STATUS_TRANSPORT:
                return SW_CONDITIONS  # a card never issued cannot be locked: there is nothing to protect yet
            s.status = plain[0]
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
        elif sfi == SFI_SUBSIDY and s.app_version == 2:
            # EF_SUBSIDY (section 5.6): the maximum subsidy balance, 4 bytes at offset 0; the first write creates the
            # subsidy purse (balance 0, expiry 00000000, counters 0), a later one changes only its maximum.
            if s.purse is None:
                return SW_NO_PURSE
            if (offset, len(plain)) != (0, 4):
                return SW_OFFSET
            max_balance = int.from_bytes(plain, "big")
            if s.subsidy is None:
                s.subsidy = SubsidyPurse(max_balance=max_balance)
            elif max_balance < s.subsidy.balance:
                return SW_WRONG_DATA
            else:
                s.subsidy.max_balance = max_balance
        else:
            return SW_NOT_FOUND
        self._persist()
        return SW_OK

    def _application_block(self, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
        s = self.state
        # P1 01 (version 2 only): the subsidy purse is proven with the cash purse (card-application.md 8.2).
        with_subsidy = cmd.p1 == 0x01 and self.VERSION >= 2
        if (cmd.p1, cmd.p2) != (0, 0) and not (with_subsidy and cmd.p2 == 0):
            return SW_WRONG_P1P2
        if plain:
            return SW_WRONG_LENGTH
        if with_subsidy and s.subsidy is None:
            return SW_NO_PURSE  # nothing changed: a card without a subsidy purse is voided with P1 00
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
        if with_subsidy:
            sub = s.subsidy
            frozen += (
                sub.balance.to_bytes(4, "big")
                + sub.expiry
                + sub.offline_counter.to_bytes(2, "big")
                + sub.online_counter.to_bytes(2, "big")
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
        s.holder, s.access, s.purse, s.staged, s.subsidy = bytes(48), bytes(32), None, None, None
        s.pin, s.pin_tries = None, PIN_TRIES
        self._persist()
        return SW_OK


def _secured_answer(card: OneCardApplet, ins: int, challenge: bytes, private: bytes) -> bytes:
    """A secured read's answer (section 3.7): the data enciphered under SK_DATA(K_ADMIN, challenge || 00000000),
    then mac8(K_ADMIN, challenge || INS || ciphertext)."""
    s = card.state
    ct = ctr_crypt(s.algorithm, data_session_key(s.algorithm, s.update_key, challenge + bytes(4)), private)
    return ct + mac8(s.algorithm, s.update_key, challenge + bytes([ins]) + ct) + SW_OK


def _secured_read_binary(card: OneCardApplet, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
    if not cmd.p1 & 0x80 or cmd.p1 & 0x60:
        return SW_WRONG_P1P2
    if plain:
        return SW_WRONG_LENGTH
    s = card.state
    files = {SFI_APP: s.app_file(), SFI_HOLDER: s.holder, SFI_ACCESS: s.access}
    if s.purse is not None:
        files[SFI_PURSE] = s.purse.file()
    content = files.get(cmd.p1 & 0x1F)
    if content is None:
        return SW_NO_PURSE if cmd.p1 & 0x1F == SFI_PURSE else SW_NOT_FOUND
    if cmd.p2 >= len(content):
        return SW_OFFSET
    return _secured_answer(card, 0xB0, challenge, content[cmd.p2 :])


def _secured_read_record(card: OneCardApplet, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
    if cmd.p2 != (SFI_RECORDS << 3) | 0x04 or not 1 <= cmd.p1 <= MAX_RECORDS:
        return SW_WRONG_P1P2
    if plain:
        return SW_WRONG_LENGTH
    purse = card.state.purse
    if purse is None:
        return SW_NO_PURSE
    if cmd.p1 > len(purse.records):
        return SW_NO_RECORD
    return _secured_answer(card, 0xB2, challenge, record_bytes(purse.records[-cmd.p1]))


def _secured_get_balance(card: OneCardApplet, cmd: Command, plain: bytes, challenge: bytes) -> bytes:
    if (cmd.p1, cmd.p2) != (0x00, 0x02):
        return SW_WRONG_P1P2
    if plain:
        return SW_WRONG_LENGTH
    purse = card.state.purse
    if purse is None:
        return SW_NO_PURSE
    return _secured_answer(
        card,
        0x5C,
        challenge,
        purse.balance.to_bytes(4, "big")
        + purse.offline_counter.to_bytes(2, "big")
        + purse.online_counter.to_bytes(2, "big"),
    )


def _delete_sub_application(card: OneCardApplet, cmd: Command, plain: bytes, _challenge: bytes) -> bytes:
    if (cmd.p1, cmd.p2) != (0, 0):
        return SW_WRONG_P1P2
    if plain:
        return SW_WRONG_LENGTH
    if card.state.status != STATUS_VOIDED:
        return SW_CONDITIONS  # void first (84 1E): deletion never loses a balance nobody proved
    assert isinstance(card, OneCardV2Applet)
    return card.delete_selected()


def _initialize(card: OneCardApplet, cmd: Command, session) -> bytes:
    if (cmd.p1, cmd.p2) in SUBSIDY_INITIALIZE and card.VERSION >= 2:
        return subsidy_initialize(card, cmd)
    return (card._init_purchase if cmd.p1 == 0x01 else card._init_load)(cmd, session)


def _debit(card: OneCardApplet, cmd: Command, session) -> bytes:
    if session is not None and session["type"] in (tx.SUBSIDY_PURCHASE, tx.SUBSIDY_WITHDRAW):
        return subsidy_debit(card, cmd, session)
    return card._debit(cmd, session)


def _credit(card: OneCardApplet, cmd: Command, session) -> bytes:
    if session is not None and session["type"] == tx.SUBSIDY_LOAD:
        return subsidy_credit(card, cmd, session)
    return card._credit(cmd, session)


def _prove(card: OneCardApplet, cmd: Command, session) -> bytes:
    if cmd.p1 == 0x00 and cmd.p2 in SUBSIDY_RECORD_TYPES and card.VERSION >= 2:
        return SW_NO_PURSE if card.state.subsidy is None else subsidy_prove(card, cmd)
    return card._prove(cmd, session)


PURSE_INS = {
    0x50: _initialize,
    0x54: _debit,
    0x52: _credit,
    0x5C: OneCardApplet._get_balance,
    0x5A: _prove,
}


# --- the subsidy purse (补助钱包, docs/card-application.md 5.6): version 2 sub-applications only -----------------

SUBSIDY_INITIALIZE = {(0x01, tx.PURSE_BOTH), (0x00, tx.PURSE_SUBSIDY), (0x02, tx.PURSE_SUBSIDY)}
SUBSIDY_RECORD_TYPES = (tx.SUBSIDY_LOAD, tx.SUBSIDY_WITHDRAW, tx.SUBSIDY_PURCHASE)


def _split(policy: int, amount: int, subsidy: int, cash: int) -> tuple[int, int]:
    """(subsidy part, cash part) of a two-purse sale by policy; a part may exceed its balance (then DEBIT answers
    94 01 after MAC1, and the SAM, which deciphers the split, refuses MAC1 before: section 5.6)."""
    if policy == tx.POLICY_SUBSIDY_FIRST:
        s = min(amount, subsidy)
        return (s, amount - s)
    c = min(amount, cash)
    return (amount - c, c)


def _covered(parts: tuple[int, int], subsidy: int, cash: int) -> bool:
    return parts[0] <= subsidy and parts[1] <= cash


def subsidy_initialize(card: OneCardApplet, cmd: Command) -> bytes:
    """INITIALIZE FOR PURCHASE of both purses (01 03), FOR LOAD of the subsidy purse (00 01), FOR WITHDRAW (02 01)."""
    two_purse, loading = cmd.p1 == 0x01, cmd.p1 == 0x00
    if len(cmd.data) != (12 if two_purse else 17 if loading else 11):
        return SW_WRONG_LENGTH
    s = card.state
    if s.status != STATUS_ACTIVE:
        return SW_CONDITIONS
    sub, purse = s.subsidy, s.purse
    if sub is None:
        return SW_NO_PURSE
    if cmd.data[0] != 0x01:
        return SW_KEY_INDEX
    amount, terminal, alg = int.from_bytes(cmd.data[1:5], "big"), cmd.data[5:11], s.algorithm
    random = os.urandom(4)
    if loading:
        expiry, number = cmd.data[11:15], int.from_bytes(cmd.data[15:17], "big")
        if amount == 0 or not bcd.is_date(expiry):
            return SW_WRONG_DATA  # the maximum is checked at CREDIT, after MAC2 (section 5.2a)
        if number and number <= sub.last_allowance:
            return SW_ALLOWANCE_LOADED  # this allowance (or a later one) is already on the card: nothing changes
        if sub.online_counter >= 0xFFFF:
            return SW_CONDITIONS
        sk = pc.load_session_key(alg, purse.load_key, random, sub.online_counter)
        card.session = {
            "type": tx.SUBSIDY_LOAD,
            "amount": amount,
            "terminal": terminal,
            "random": random,
            "counter": sub.online_counter,
            "sk": sk,
            "expiry": expiry,
            "allowance": number,
        }
        mac1 = pc.load_mac1(alg, sk, sub.balance, amount, terminal, tx.SUBSIDY_LOAD)
        return (
            pc.seal_purse_data(alg, purse.load_key, random, sub.online_counter, sub.balance.to_bytes(4, "big"))
            + sub.online_counter.to_bytes(2, "big")
            + bytes([purse.key_version, int(alg)])
            + random
            + mac1
            + SW_OK
        )
    if amount == 0 and two_purse:
        return SW_WRONG_DATA
    if not two_purse:  # withdrawal: amount 00000000 = the whole balance, which the answer announces
        if amount != 0:
            return SW_WRONG_DATA
        if sub.balance == 0:
            return SW_INSUFFICIENT
        amount = sub.balance
        if sub.offline_counter >= 0xFFFF:
            return SW_CONDITIONS
        card.session = {
            "type": tx.SUBSIDY_WITHDRAW,
            "amount": amount,
            "terminal": terminal,
            "random": random,
            "counter": sub.offline_counter,
        }
        return (
            pc.seal_purse_data(alg, purse.purchase_key, random, sub.offline_counter, sub.balance.to_bytes(4, "big"))
            + sub.offline_counter.to_bytes(2, "big")
            + bytes(3)
            + bytes([purse.key_version, int(alg)])
            + random
            + SW_OK
        )
    policy = cmd.data[11]
    if policy not in (tx.POLICY_SUBSIDY_FIRST, tx.POLICY_CASH_FIRST):
        return SW_WRONG_DATA
    parts = _split(policy, amount, sub.balance, purse.balance)
    if sub.offline_counter >= 0xFFFF or purse.offline_counter >= 0xFFFF:
        return SW_CONDITIONS
    card.session = {
        "type": tx.SUBSIDY_PURCHASE,
        "amount": amount,
        "terminal": terminal,
        "random": random,
        "counter": purse.offline_counter,
        "subsidy_counter": sub.offline_counter,
        "parts": parts,
    }
    clear = b"".join(v.to_bytes(4, "big") for v in (*parts, sub.balance, purse.balance))
    sealed = pc.seal_purse_data(alg, purse.purchase_key, random, purse.offline_counter, clear)
    return (
        sealed[0:12]
        + sub.offline_counter.to_bytes(2, "big")
        + sealed[12:16]
        + purse.offline_counter.to_bytes(2, "big")
        + bytes([purse.key_version, int(alg)])
        + random
        + SW_OK
    )


def _tac(card: OneCardApplet, tx_type: int, amount: int, terminal: bytes, tsn: int, date, time_, counter, after):
    s = card.state
    return pc.tac(
        s.algorithm,
        s.purse.tac_key,
        amount=amount,
        tx_type=tx_type,
        terminal_id=terminal,
        tsn=tsn,
        date=date,
        time=time_,
        counter=counter,
        balance_after=after,
    )


def _record(tx_type, counter, amount, terminal, tsn, date, time_, after, proof, tac_) -> dict:
    return {
        "type": tx_type,
        "counter": counter,
        "amount": amount,
        "terminal": terminal.hex(),
        "tsn": tsn,
        "date": date.hex(),
        "time": time_.hex(),
        "balance_after": after,
        "proof": proof.hex(),
        "tac": tac_.hex(),
    }


def subsidy_debit(card: OneCardApplet, cmd: Command, session: dict) -> bytes:
    """DEBIT FOR PURCHASE of a two-purse sale or a withdrawal: both purses (or the withdrawal) in one atomic write.
    A two-purse DEBIT may carry the spending-password flag (P2 80, section 5.5): refused (69 82) unless a VERIFY
    succeeded in this session; both TACs then carry the flagged types (85, 86). A withdrawal is never flagged."""
    flags = (0x00, PIN_P2) if session["type"] == tx.SUBSIDY_PURCHASE else (0x00,)
    if cmd.p1 != 0x01 or cmd.p2 not in flags:
        return SW_WRONG_P1P2
    if len(cmd.data) != 19:
        return SW_WRONG_LENGTH
    with_pin = cmd.p2 == PIN_P2
    if with_pin and not card.debit_pin:
        return SW_SECURITY  # flagged as PIN-verified, but no VERIFY succeeded in this session since
    s = card.state
    purse, sub, alg = s.purse, s.subsidy, s.algorithm
    tsn, date, time_, mac1 = int.from_bytes(cmd.data[:4], "big"), cmd.data[4:8], cmd.data[8:11], cmd.data[11:]
    kind, amount, terminal = session["type"], session["amount"], session["terminal"]
    sk = pc.purchase_session_key(alg, purse.purchase_key, session["random"], session["counter"], tsn)
    if not hmac.compare_digest(mac1, pc.purchase_mac1(alg, sk, amount, terminal, date, time_, kind)):
        return SW_MAC
    if kind == tx.SUBSIDY_WITHDRAW:
        if date.hex() <= sub.expiry.hex():
            return SW_CONDITIONS  # only an expired subsidy balance is withdrawn
        proof = pc.purchase_mac2(alg, sk, amount)
        tac_ = _tac(card, kind, amount, terminal, tsn, date, time_, session["counter"], 0)
        sub.balance, sub.expiry = 0, bytes(4)
        sub.offline_counter += 1
        sub.records.append(_record(kind, session["counter"], amount, terminal, tsn, date, time_, 0, proof, tac_))
        del sub.records[:-MAX_RECORDS]
        card._persist()
        return tac_ + proof + SW_OK
    part_s, part_c = session["parts"]
    if not _covered(session["parts"], sub.balance, purse.balance):
        return SW_INSUFFICIENT  # after MAC1: a reader without the purse key learns nothing from it
    if (part_s and date.hex() > sub.expiry.hex()) or (part_c and date.hex() > purse.expiry.hex()):
        return SW_CONDITIONS
    proof = pc.purchase_mac2(alg, sk, amount, part_s)
    tac_s = tac_c = bytes(8)
    if part_s:
        after = sub.balance - part_s
        type_s = tx.SUBSIDY_PURCHASE_WITH_PIN_TAC if with_pin else tx.SUBSIDY_PURCHASE
        tac_s = _tac(card, type_s, part_s, terminal, tsn, date, time_, session["subsidy_counter"], after)
        sub.balance, sub.offline_counter = after, sub.offline_counter + 1
        if after == 0:
            sub.expiry = bytes(4)  # an empty subsidy purse has nothing to expire: no withdrawal is ever asked for
        sub.records.append(
            _record(
                tx.SUBSIDY_PURCHASE, session["subsidy_counter"], part_s, terminal, tsn, date, time_, after, proof, tac_s
            )
        )
        del sub.records[:-MAX_RECORDS]
    if part_c:
        after = purse.balance - part_c
        type_c = tx.PURCHASE_WITH_PIN_TAC if with_pin else tx.PURCHASE
        tac_c = _tac(card, type_c, part_c, terminal, tsn, date, time_, session["counter"], after)
        purse.balance, purse.offline_counter = after, purse.offline_counter + 1
        purse.records.append(
            _record(tx.PURCHASE, session["counter"], part_c, terminal, tsn, date, time_, after, proof, tac_c)
        )
        del purse.records[:-MAX_RECORDS]
    card._persist()  # both purses, their counters and records in one write: the sale happened wholly or not at all
    return tac_s + tac_c + proof + SW_OK


def subsidy_credit(card: OneCardApplet, cmd: Command, session: dict) -> bytes:
    if (cmd.p1, cmd.p2) != (0x00, 0x00):
        return SW_WRONG_P1P2
    if len(cmd.data) != 15:
        return SW_WRONG_LENGTH
    s = card.state
    sub, alg = s.subsidy, s.algorithm
    date, time_, mac2 = cmd.data[:4], cmd.data[4:7], cmd.data[7:]
    amount, sk, terminal, expiry = session["amount"], session["sk"], session["terminal"], session["expiry"]
    number = session["allowance"]
    expected = pc.load_mac2(alg, sk, amount, terminal, date, time_, tx.SUBSIDY_LOAD, expiry, number)
    if not hmac.compare_digest(mac2, expected):
        return SW_MAC
    if sub.balance + amount > sub.max_balance:
        return SW_WRONG_DATA  # after MAC2, so that 6A 80 bounds no balance for a reader (section 5.2a)
    after = sub.balance + amount
    proof = pc.load_mac3(alg, sk, after, amount)
    # The TAC's TSN field carries the allowance number (00 00 || number): the platform verifies which was loaded.
    tac_ = _tac(card, tx.SUBSIDY_LOAD, amount, terminal, number, date, time_, session["counter"], after)
    sub.balance, sub.online_counter = after, sub.online_counter + 1
    sub.expiry = max(sub.expiry, expiry, key=bytes.hex)
    sub.last_allowance = max(sub.last_allowance, number)  # a refund (number 0) leaves it
    sub.records.append(
        _record(tx.SUBSIDY_LOAD, session["counter"], amount, terminal, number, date, time_, after, proof, tac_)
    )
    del sub.records[:-MAX_RECORDS]
    card._persist()
    return tac_ + proof + SW_OK


def subsidy_prove(card: OneCardApplet, cmd: Command) -> bytes:
    if len(cmd.data) != 2:
        return SW_WRONG_LENGTH
    record = card.state.subsidy.record(cmd.p2, int.from_bytes(cmd.data, "big"))
    if record is None:
        return SW_NO_PROOF
    return bytes.fromhex(record["proof"]) + bytes.fromhex(record["tac"]) + SW_OK


SECURED_INS = {
    0xD4: OneCardApplet._put_key,
    0xD8: OneCardApplet._commit_keys,
    0xD6: OneCardApplet._update_binary,
    0x1E: OneCardApplet._application_block,
    0x0E: OneCardApplet._erase,
    0x24: OneCardApplet._change_pin,
    0x2C: OneCardApplet._reset_pin_tries,
}

# Version 2 only (section 3.7): reads of private data under secure messaging, and DELETE SUB-APPLICATION.
SECURED_V2_INS = {
    0xB0: _secured_read_binary,
    0xB2: _secured_read_record,
    0x5C: _secured_get_balance,
    0xE4: _delete_sub_application,
}

RECORD_LEN = 44


def pin_block_digits(block: bytes) -> str | None:
    """An ISO 9564-1 format 2 PIN block (2N, N BCD digits, F padding; 8 bytes) -> its digits; None if it is not one."""
    if len(block) != 8 or block[0] >> 4 != 2 or not 4 <= block[0] & 0x0F <= 12:
        return None
    n = block[0] & 0x0F
    nibbles = [x for b in block[1:] for x in (b >> 4, b & 0x0F)]
    if any(x > 9 for x in nibbles[:n]) or any(x != 0x0F for x in nibbles[n:]):
        return None
    return "".join(map(str, nibbles[:n]))


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


def fci(aid: bytes, s: CardState) -> bytes:
    """SELECT's answer for one application (section 3.1): FCI template 6F with the AID and the A5 template."""
    prop = (
        _tlv(0xC0, s.asn)
        + _tlv(0xC1, s.enterprise_id)
        + _tlv(0xC2, bytes([s.status]))
        + _tlv(0xC3, bytes([s.key_version]))
        + _tlv(0xC4, bytes([int(s.algorithm)]))
        + _tlv(0xC5, bytes([s.card_type]))
        + _tlv(0xC6, bytes([s.app_version]))
        + (b"" if s.purse is None else _tlv(0xC7, s.purse.expiry))
        + (b"" if s.subsidy is None else _subsidy_tlvs(s.subsidy))
    )
    return _tlv(0x6F, _tlv(0x84, aid) + _tlv(0xA5, prop)) + SW_OK


def _subsidy_tlvs(sub: SubsidyPurse) -> bytes:
    """C9 the subsidy expiry, CA the last allowance number (section 5.6)."""
    return _tlv(0xC9, sub.expiry) + _tlv(0xCA, sub.last_allowance.to_bytes(2, "big"))


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


# --- version 2: a card with up to 8 enterprise sub-applications (docs/card-application.md section 9) ------------

AID_V2 = bytes.fromhex("F04F4E454341524402")  # the card directory; AID_V2 || enterprise ID selects a sub-application
STATE_FORMAT_V2 = "onecard-sim-card/2"
MAX_SUB_APPLICATIONS = 8
SFI_DIRECTORY = 0x1E  # READ RECORD P2 = F4 while the directory is selected
SW_NO_SUB_APPLICATION = b"\x6a\x88"  # a one-card version 2 card without a sub-application for that enterprise
SW_NO_ROOM = b"\x6a\x84"
SW_EXISTS = b"\x6a\x89"
ISSUER_ENTERPRISE = bytes(4)  # 00000000: the card issuer, whose TRANSPORT master key secures CREATE (section 9.6)
ATR_V2 = _with_tck(bytes.fromhex("3B888001") + b"ONECARD2")


def sub_application_aid(enterprise_id: bytes) -> bytes:
    if len(enterprise_id) != 4:
        raise ValueError("enterprise ID must be 4 bytes")
    return AID_V2 + enterprise_id


@dataclass(frozen=True)
class DirectoryEntry:
    """One line of the card directory: all that the phone menu and the issuing station see without keys."""

    enterprise_id: bytes
    name: str
    status: int

    @property
    def aid(self) -> bytes:
        return sub_application_aid(self.enterprise_id)


def directory_record(app: CardState) -> bytes:
    """A directory record (section 9.2): 61 L 4F 0D <sub-application AID> 50 L <name> C2 01 <status>."""
    return _tlv(
        0x61,
        _tlv(0x4F, sub_application_aid(app.enterprise_id))
        + _tlv(0x50, app.name.encode())
        + _tlv(0xC2, bytes([app.status])),
    )


@dataclass
class MultiCardState:
    """A version 2 card: the card-level data and its sub-applications, each a CardState of app_version 2."""

    serial: bytes  # 8 bytes, the card's own number (diversifies K_CARD); never used as any sub-application's ASN
    card_type: int
    algorithm: Algorithm  # of K_CARD
    card_key: bytes | None  # K_CARD: secures CREATE SUB-APPLICATION; None = sub-applications only by personalisation
    apps: list[CardState] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        if len(self.serial) != 8:
            raise ValueError("card serial must be 8 bytes")
        if self.card_key is not None and len(self.card_key) != 16:
            raise ValueError("card key must be 16 bytes")
        if len(self.apps) > MAX_SUB_APPLICATIONS:
            raise ValueError(f"a card holds at most {MAX_SUB_APPLICATIONS} sub-applications")
        ids = [a.enterprise_id for a in self.apps]
        if len(set(ids)) != len(ids) or any(a.app_version != 2 for a in self.apps):
            raise ValueError("sub-applications must be version 2 and of distinct enterprises")

    def app(self, enterprise_id: bytes) -> CardState | None:
        return next((a for a in self.apps if a.enterprise_id == enterprise_id), None)

    def to_json(self) -> dict:
        return {
            "format": STATE_FORMAT_V2,
            "label": self.label,
            "serial": self.serial.hex(),
            "card_type": self.card_type,
            "algorithm": self.algorithm.name,
            "card_key": None if self.card_key is None else self.card_key.hex(),
            "apps": [a.to_json() for a in self.apps],
        }

    @classmethod
    def from_json(cls, doc: dict) -> MultiCardState:
        if doc.get("format") != STATE_FORMAT_V2:
            raise ValueError(f"not a simulated version 2 one-card state file (format {doc.get('format')!r})")
        return cls(
            serial=bytes.fromhex(doc["serial"]),
            card_type=int(doc["card_type"]),
            algorithm=Algorithm[doc["algorithm"]],
            card_key=None if doc.get("card_key") is None else bytes.fromhex(doc["card_key"]),
            apps=[CardState.from_json(a) for a in doc["apps"]],
            label=str(doc.get("label", "")),
        )


class MultiCardStateFile(StateFile[MultiCardState]):
    """The version 2 card's EEPROM: the whole card in one atomic write (no fsync, as CardStateFile)."""

    SYNC = False

    def from_json(self, doc: Any) -> MultiCardState:
        return MultiCardState.from_json(doc)

    def to_json(self, state: MultiCardState) -> Any:
        return state.to_json()

    def damaged(self, exc: Exception) -> str:
        return f"card file {self.path} is not a valid simulated version 2 card: {exc}"


class OneCardV2Applet(OneCardApplet):
    """A version 2 card: the card directory and up to 8 sub-applications, each behaving as a version 1
    application of its own enterprise once selected, except that its private data never leaves in clear.

    Besides APDUs it offers a small Python API for the parts of the SIM that are not on the contactless
    interface (the SIM toolkit menu reads the directory and a sub-application's purse the way an applet on
    the same chip would): directory(), sub_application(), balance(), transactions()."""

    VERSION = 2

    def __init__(self, card: MultiCardState, store: MultiCardStateFile | None = None, atr: bytes = ATR_V2) -> None:
        self.card, self.card_store, self.atr = card, store, atr
        self.store = None  # the per-application store of version 1: unused, _persist writes the whole card
        self.selected, self.session, self.challenge, self.pin_verified = False, None, None, False
        self.directory_selected = False
        # The last selected sub-application (commands act on it only while `selected` is set); the first one
        # before any SELECT, so that tests and tools can look at a one-application card as at a version 1 card.
        self.state = card.apps[0] if card.apps else None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OneCardV2Applet(<{len(self.card.apps)} sub-applications>)"

    # --- Python API (not APDUs): what the SIM's other applets may read on the chip itself -------------------

    @property
    def label(self) -> str:
        return self.card.label

    def directory(self) -> list[DirectoryEntry]:
        """The card directory, as READ RECORD of the directory returns it: enterprise ID, name, status."""
        return [DirectoryEntry(a.enterprise_id, a.name, a.status) for a in self.card.apps]

    def sub_application(self, enterprise_id: bytes) -> CardState | None:
        return self.card.app(enterprise_id)

    def balance(self, enterprise_id: bytes) -> int | None:
        """The purse balance of that sub-application in fen (None: no such sub-application or no purse)."""
        app = self.card.app(enterprise_id)
        return None if app is None or app.purse is None else app.purse.balance

    def transactions(self, enterprise_id: bytes) -> list[dict]:
        """That sub-application's last purse transactions, newest first (the fields of READ RECORD)."""
        app = self.card.app(enterprise_id)
        return [] if app is None or app.purse is None else list(reversed(app.purse.records))

    def add_sub_application(self, app: CardState) -> None:
        """Personalisation (factory / simulator): put a sub-application on the card; ValueError when it cannot."""
        if app.app_version != 2:
            raise ValueError("only a version 2 sub-application can go on a version 2 card")
        if self.card.app(app.enterprise_id) is not None:
            raise ValueError(f"the card already has a sub-application of enterprise {app.enterprise_id.hex()}")
        if len(self.card.apps) >= MAX_SUB_APPLICATIONS:
            raise ValueError(f"the card already holds {MAX_SUB_APPLICATIONS} sub-applications")
        self.card.apps.append(app)
        self._persist()

    # --- APDUs -----------------------------------------------------------------------------------------

    def power_on(self) -> None:
        super().power_on()
        self.directory_selected = False

    def power_off(self) -> None:
        self.power_on()

    def _persist(self) -> None:
        if self.card_store is not None:
            self.card_store.save(self.card)

    def _process(self, apdu: bytes) -> bytes:
        if self.directory_selected:
            challenge = self.challenge
            cmd = parse_command(apdu)
            if cmd is not None and cmd.cla == 0x00 and cmd.ins == 0xB2:
                self.challenge = None
                return self._read_directory(cmd)
            if cmd is not None and cmd.cla == 0x00 and cmd.ins == 0x84:
                self.challenge = None
                return self._card_challenge(cmd)
            if cmd is not None and cmd.cla == 0x84 and cmd.ins == 0xE0:
                self.challenge = None
                return self._create(cmd, challenge)
        elif apdu[:2] == b"\x84\xe0":
            self.challenge = None
            return SW_NO_CURRENT_EF  # CREATE needs the directory selected
        return super()._process(apdu)

    def _select(self, cmd: Command) -> bytes:
        self.session, self.pin_verified = None, False
        self.selected, self.directory_selected = False, False
        if cmd.p1 != 0x04 or cmd.p2 != 0x00:
            return SW_WRONG_P1P2
        if cmd.data == AID_V2:
            self.directory_selected = True
            prop = (
                _tlv(0xC0, self.card.serial)
                + _tlv(0xC4, bytes([int(self.card.algorithm)]))
                + _tlv(0xC6, b"\x02")
                + _tlv(0xC8, bytes([len(self.card.apps)]))
            )
            return _tlv(0x6F, _tlv(0x84, AID_V2) + _tlv(0xA5, prop)) + SW_OK
        if len(cmd.data) != len(AID_V2) + 4 or not cmd.data.startswith(AID_V2):
            return SW_NOT_FOUND
        app = self.card.app(cmd.data[len(AID_V2) :])
        if app is None:
            return SW_NO_SUB_APPLICATION
        self.selected, self.state = True, app
        return fci(cmd.data, app)

    def _read_directory(self, cmd: Command) -> bytes:
        if cmd.p2 != (SFI_DIRECTORY << 3) | 0x04 or not 1 <= cmd.p1 <= MAX_SUB_APPLICATIONS:
            return SW_WRONG_P1P2
        if cmd.data:
            return SW_WRONG_LENGTH
        if cmd.p1 > len(self.card.apps):
            return SW_NO_RECORD
        return directory_record(self.card.apps[cmd.p1 - 1]) + SW_OK

    def _card_challenge(self, cmd: Command) -> bytes:
        if (cmd.p1, cmd.p2) != (0, 0):
            return SW_WRONG_P1P2
        if cmd.data or cmd.le != 8:
            return SW_WRONG_LENGTH
        self.challenge = os.urandom(8)
        return self.challenge + SW_OK

    def _create(self, cmd: Command, challenge: bytes | None) -> bytes:
        """CREATE SUB-APPLICATION (section 9.6), secured under K_CARD: a new sub-application at transport state."""
        if len(cmd.data) < 8:
            return SW_WRONG_LENGTH
        c = self.card
        if challenge is None or c.card_key is None:
            return SW_NO_CHALLENGE
        plain, mac = cmd.data[:-8], cmd.data[-8:]
        header = bytes([cmd.cla, cmd.ins, cmd.p1, cmd.p2, len(cmd.data)])
        if not hmac.compare_digest(mac8(c.algorithm, c.card_key, challenge + header + plain), mac):
            return SW_SM_MAC
        if (cmd.p1, cmd.p2) != (0, 0):
            return SW_WRONG_P1P2
        if len(plain) < 30 or len(plain) != 30 + plain[13] or plain[13] > NAME_MAX:
            return SW_WRONG_LENGTH
        enterprise_id, asn, algorithm_id = plain[0:4], plain[4:12], plain[12]
        name_raw, cryptogram = plain[14 : 14 + plain[13]], plain[14 + plain[13] :]
        try:
            algorithm, name = Algorithm(algorithm_id), name_raw.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return SW_WRONG_DATA
        if not bcd.is_bcd(enterprise_id) or enterprise_id == ISSUER_ENTERPRISE or algorithm is not c.algorithm:
            return SW_WRONG_DATA
        if c.app(enterprise_id) is not None:
            return SW_EXISTS
        if any(a.asn == asn for a in c.apps) or asn == c.serial:
            return SW_WRONG_DATA
        if len(c.apps) >= MAX_SUB_APPLICATIONS:
            return SW_NO_ROOM
        transport = block_decrypt(c.algorithm, secure_session_key(c.algorithm, c.card_key, challenge), cryptogram)
        c.apps.append(
            CardState(
                asn=asn,
                enterprise_id=enterprise_id,
                status=STATUS_TRANSPORT,
                key_version=0,
                algorithm=algorithm,
                card_type=c.card_type,
                access_key=os.urandom(16),
                holder=bytes(48),
                access=bytes(32),
                update_key=transport,
                name=name,
                app_version=2,
            )
        )
        self._persist()  # one atomic write: the sub-application exists wholly or not at all
        return bytes.fromhex(key_check_value(c.algorithm, transport)) + SW_OK

    def delete_selected(self) -> bytes:
        """DELETE SUB-APPLICATION of the selected (voided) sub-application: one atomic write frees its slot."""
        app = self.state
        self.card.apps = [a for a in self.card.apps if a is not app]
        self.selected, self.session = False, None
        self.state = self.card.apps[0] if self.card.apps else None  # type: ignore[assignment]
        self._persist()
        return SW_OK
