"""The RFID-SIM's contact interface as a handset sees it: the SIM toolkit applet of the phone menu
(docs/phone-menu.md). The same chip as the contactless one-card application (simulator/card.py): the menu shows only
what the card itself holds, and deleting a sub-application voids it on the card before the request leaves.

`SimToolkitApplet` is a VirtualCard (vpcd, in-process) fed the toolkit APDUs of common/stk.py. The card is reached
through `CardDirectory`, the seam a version-2 card (several enterprise sub-applications) plugs into; `V1Card` is
today's card: a directory of one sub-application.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from common import bcd, stk
from common import transactions as tx
from common.deletion_request import DeletionRequest
from sam.crypto import ctr_crypt, mac8, write_session_key
from simulator.card import (
    STATE_FORMAT_V2,
    STATUS_ACTIVE,
    STATUS_VOIDED,
    CardState,
    CardStateFile,
    MultiCardStateFile,
    OneCardApplet,
    OneCardV2Applet,
    parse_command,
)
from simulator.state_file import StateFile

# --- what the menu needs of the card (the seam for card application version 2) -------------------------------------


@dataclass(frozen=True)
class Entry:
    """One line of the card directory."""

    index: int  # 1..8, the item identifier of the sub-application in SET UP MENU
    enterprise_id: bytes  # 4 bytes
    name: str
    active: bool  # False: voided (deleted by its holder, or at a card office)


@dataclass(frozen=True)
class PurseView:
    balance: int  # fen
    expiry: dt.date  # last day a purchase is accepted


@dataclass(frozen=True)
class TransactionView:
    kind: int  # common.transactions LOAD / PURCHASE
    amount: int  # fen
    terminal_id: bytes  # 6 bytes: where
    when: dt.datetime
    balance_after: int


class CardDirectory(Protocol):
    """The card as its own SIM toolkit sees it. Every call reads the card's current state."""

    asn: bytes

    def directory(self) -> list[Entry]: ...

    def purse(self, index: int) -> PurseView | None: ...

    def validity(self, index: int) -> tuple[dt.date, dt.date]: ...

    def transactions(self, index: int, count: int) -> list[TransactionView]:
        """The last `count` purse transactions, newest first."""
        ...

    def void_for_deletion(self, index: int) -> bytes:
        """Void the sub-application (idempotent: the balance is frozen once) and return the deletion request's
        25 signed bytes and their MAC under the sub-application's K_TAC (docs/phone-menu.md 4): 33 bytes."""
        ...

    def open_office_data(
        self, index: int, challenge: bytes, header: bytes, ciphertext: bytes, mac: bytes
    ) -> bytes | None:
        """The card office's secure messaging (docs/phone-menu.md 4): None when `mac` is not mac8(K_UPDATE,
        challenge || header || ciphertext) under the sub-application's K_UPDATE; else the plaintext, deciphered
        under SK_WRITE = E(K_UPDATE, challenge || 00 00 00 00 || 03 00 00 00) (card-application.md 9.11)."""
        ...

    def identification(self) -> Any:
        """A fresh one-card applet over the card's current state, for the identification commands the contact
        interface also answers (SELECT, READ RECORD: docs/phone-menu.md 1); never written through."""
        ...


class V1Card:
    """Today's card (docs/card-application.md): one enterprise, so a directory of one sub-application, index 1."""

    def __init__(self, store: CardStateFile):
        self.store = store
        self.asn = store.load().asn

    def _apps(self) -> tuple[list[CardState], Callable[[], None]]:
        """The sub-applications in directory order (index 1 first), and how to write them back."""
        s = self.store.load()
        if s.status == 0:  # transport card: nothing issued yet
            return [], lambda: None
        return [s], lambda: self.store.save(s)

    def _name(self, app: CardState) -> str:
        return f"Enterprise {app.enterprise_id.hex().upper()}"

    def _state(self, index: int) -> CardState:
        apps, _ = self._apps()
        if not 1 <= index <= len(apps):
            raise KeyError(index)
        return apps[index - 1]

    def directory(self) -> list[Entry]:
        apps, _ = self._apps()
        return [Entry(i, a.enterprise_id, self._name(a), a.status == STATUS_ACTIVE) for i, a in enumerate(apps, 1)]

    def purse(self, index: int) -> PurseView | None:
        p = self._state(index).purse
        return None if p is None else PurseView(p.balance, bcd.decode_date(p.expiry))

    def validity(self, index: int) -> tuple[dt.date, dt.date]:
        access = self._state(index).access
        return bcd.decode_date(access[:4]), bcd.decode_date(access[4:8])

    def transactions(self, index: int, count: int) -> list[TransactionView]:
        p = self._state(index).purse
        if p is None:
            return []
        out = []
        for r in reversed(p.records[-count:]):
            when = dt.datetime.strptime(r["date"] + r["time"], "%Y%m%d%H%M%S")
            out.append(TransactionView(r["type"], r["amount"], bytes.fromhex(r["terminal"]), when, r["balance_after"]))
        return out

    def void_for_deletion(self, index: int) -> bytes:
        apps, save = self._apps()
        if not 1 <= index <= len(apps):
            raise KeyError(index)
        s = apps[index - 1]
        if s.purse is None:
            raise LookupError("no purse")
        if s.status != STATUS_VOIDED:
            s.status = STATUS_VOIDED  # every purse and access command refuses from now on: the balance is frozen
            save()
        p = s.purse
        request = DeletionRequest(
            s.asn, s.enterprise_id, int(s.algorithm), p.key_version, p.balance, p.offline_counter, p.online_counter
        )
        return request.encode(mac8(s.algorithm, p.tac_key, request.signed_part()))

    def open_office_data(
        self, index: int, challenge: bytes, header: bytes, ciphertext: bytes, mac: bytes
    ) -> bytes | None:
        s = self._state(index)
        if s.update_key is None or s.key_version == 0:
            return None  # a transport sub-application has no office key yet
        if not hmac.compare_digest(mac8(s.algorithm, s.update_key, challenge + header + ciphertext), mac):
            return None
        key = write_session_key(s.algorithm, s.update_key, challenge + bytes(4))
        return ctr_crypt(s.algorithm, key, ciphertext)

    def identification(self) -> Any:
        return OneCardApplet(self.store.load())


class V2Card(V1Card):
    """A version 2 card (docs/card-application.md 9): its sub-applications in directory order, index 1..8, each with
    its own ASN, keys, purse and status; voiding one for deletion writes the whole card once and touches no other.
    `asn` is the card's serial (what the menu shows as the card's number); a deletion request carries the
    sub-application's own ASN."""

    def __init__(self, store: MultiCardStateFile):
        self.v2_store = store
        self.asn = store.load().serial

    def _apps(self) -> tuple[list[CardState], Callable[[], None]]:
        card = self.v2_store.load()
        return card.apps, lambda: self.v2_store.save(card)

    def _name(self, app: CardState) -> str:
        return app.name or super()._name(app)

    def identification(self) -> Any:
        return OneCardV2Applet(self.v2_store.load())


# --- the one-card service password (业务服务密码), in the SIM's own EEPROM -------------------------------------------

TOOLKIT_FORMAT = "onecard-sim-toolkit/1"
MAX_TRIES = 3
PLATFORM_NUMBER = "8610659500"  # where the SIM sends deletion requests (docs/phone-menu.md 4); personalised per issuer


@dataclass
class ToolkitState:
    password: str | None = None  # None: never set (a card office sets it)
    tries_left: int = MAX_TRIES
    platform_number: str = PLATFORM_NUMBER

    def to_json(self) -> dict:
        return {
            "format": TOOLKIT_FORMAT,
            "password": self.password,
            "tries_left": self.tries_left,
            "platform_number": self.platform_number,
        }


class ToolkitStateFile(StateFile[ToolkitState]):
    """The toolkit's part of the chip's EEPROM, next to the card file (`CARD.toolkit.json`); absent = factory state."""

    def from_json(self, doc: Any) -> ToolkitState:
        if doc.get("format") != TOOLKIT_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        password = doc["password"]
        if password is not None and not (isinstance(password, str) and password.isdigit() and 4 <= len(password) <= 8):
            raise ValueError("password must be 4..8 digits or null")
        tries = doc["tries_left"]
        if type(tries) is not int or not 0 <= tries <= MAX_TRIES:
            raise ValueError(f"tries_left must be 0..{MAX_TRIES}")
        return ToolkitState(password, tries, str(doc["platform_number"]))

    def to_json(self, state: ToolkitState) -> Any:
        return state.to_json()

    def damaged(self, exc: Exception) -> str:
        return f"SIM toolkit file {self.path} is not valid: {exc}"

    def load_or_new(self) -> ToolkitState:
        try:
            return self.load()
        except FileNotFoundError:
            return ToolkitState()


def toolkit_path(card_file: str | os.PathLike[str]) -> Path:
    p = Path(card_file)
    return p.with_name(p.name + ".toolkit.json")


# --- the applet -----------------------------------------------------------------------------------------------------

SIM_ATR_BODY = bytes.fromhex("3B888001") + b"ONECSIM1"
SW_OK = b"\x90\x00"
SW_BUSY = b"\x93\x00"  # a toolkit session is already running (TS 102 221 10.2.1.2)
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_SECURITY = b"\x69\x82"
SW_SM_MAC = b"\x69\x88"
SW_WRONG_DATA = b"\x6a\x80"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_NOT_FOUND = b"\x6a\x82"
SW_INS = b"\x6d\x00"
SW_CLA = b"\x6e\x00"
SW_UNKNOWN = b"\x6f\x00"

TITLE = "壹卡通 One-card"
ITEM_BALANCE, ITEM_TRANSACTIONS, ITEM_STATUS, ITEM_VALIDITY, ITEM_DELETE = 1, 2, 3, 4, 5
SUB_MENU = (
    stk.Item(ITEM_BALANCE, "Balance"),
    stk.Item(ITEM_TRANSACTIONS, "Last transactions"),
    stk.Item(ITEM_STATUS, "Card status"),
    stk.Item(ITEM_VALIDITY, "Validity"),
    stk.Item(ITEM_DELETE, "Delete application"),
)
CONFIRM_DELETE, CONFIRM_KEEP = 1, 2
MAX_TRANSACTIONS = 10
FETCH_MAX = 255


def _atr() -> bytes:
    tck = 0
    for b in SIM_ATR_BODY[1:]:
        tck ^= b
    return SIM_ATR_BODY + bytes([tck])


def _fits(command: stk.ProactiveCommand) -> bool:
    try:
        return len(stk.encode_command(1, command)) <= FETCH_MAX
    except stk.StkError:
        return False


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


Step = Callable[[stk.TerminalResponse], "stk.ProactiveCommand | None"]


@dataclass
class SimToolkitApplet:
    """The SIM's toolkit applet: TERMINAL PROFILE, FETCH, TERMINAL RESPONSE, ENVELOPE (MENU SELECTION), and the
    card office's GET CHALLENGE + RESET RETRY COUNTER. Never raises on bad input."""

    card: CardDirectory
    store: ToolkitStateFile
    atr: bytes = field(default_factory=_atr)
    terminal_profile: bytes | None = field(default=None, init=False)
    # The proactive command waiting for FETCH / for its TERMINAL RESPONSE, its details and what to do with the answer.
    _pending: bytes | None = field(default=None, init=False)
    _outstanding: stk.CommandDetails | None = field(default=None, init=False)
    _step: Step | None = field(default=None, init=False)
    _number: int = field(default=0, init=False)
    _challenge: bytes | None = field(default=None, init=False)
    _identifying: Any = field(default=None, init=False)  # the one-card applet a contact SELECT last went to
    # The SIM's OTA side (simulator/ota_sim.py) behind the same contact interface: SMS-PP DOWNLOAD envelopes go to
    # it, and so do FETCH / TERMINAL RESPONSE while a proof of receipt of it waits. None: a SIM without OTA.
    ota: Any = None

    def power_on(self) -> None:
        self.terminal_profile, self._pending, self._outstanding, self._step = None, None, None, None
        self._challenge, self._number, self._identifying = None, 0, None

    def power_off(self) -> None:
        self.power_on()

    def transmit(self, apdu: bytes) -> bytes:
        try:
            return self._process(apdu)
        except Exception:  # a card answers 6F00 rather than dying, whatever happens inside
            self._pending, self._outstanding, self._step = None, None, None
            return SW_UNKNOWN

    # --- APDU dispatch ------------------------------------------------------------------------------------------

    def _process(self, apdu: bytes) -> bytes:
        challenge, self._challenge = self._challenge, None
        cmd = parse_command(apdu)
        if cmd is None:
            return SW_WRONG_LENGTH
        if cmd.cla == 0x00 and cmd.ins == 0x84:
            if (cmd.p1, cmd.p2) != (0, 0):
                return SW_WRONG_P1P2
            if cmd.data or cmd.le != 8:
                return SW_WRONG_LENGTH
            self._challenge = os.urandom(8)
            return self._challenge + SW_OK
        if cmd.cla == 0x84 and cmd.ins == 0x2C:
            return self._reset_retry_counter(cmd, challenge)
        if cmd.cla == 0x00 and cmd.ins in (0xA4, 0xB2):
            return self._identify(cmd.ins, apdu)
        if cmd.cla != stk.CLA_CAT:
            return SW_CLA
        if cmd.ins not in (stk.INS_TERMINAL_PROFILE, stk.INS_FETCH, stk.INS_TERMINAL_RESPONSE, stk.INS_ENVELOPE):
            return SW_INS
        if (cmd.p1, cmd.p2) != (0, 0):
            return SW_WRONG_P1P2
        if self.ota is not None and self.ota.pending and self._outstanding is None and self._pending is None:
            if cmd.ins in (stk.INS_FETCH, stk.INS_TERMINAL_RESPONSE):
                return self.ota.fetch(apdu) if cmd.ins == stk.INS_FETCH else self.ota.terminal_response(apdu)
        if cmd.ins == stk.INS_FETCH:
            return self._fetch(cmd.data, cmd.le)
        if not cmd.data or cmd.le is not None:
            return SW_WRONG_LENGTH
        if cmd.ins == stk.INS_TERMINAL_PROFILE:
            return self._profile(cmd.data)
        if self.terminal_profile is None:
            return SW_CONDITIONS  # TERMINAL PROFILE comes first (TS 102 221 14.6.2)
        if cmd.ins == stk.INS_TERMINAL_RESPONSE:
            return self._response(cmd.data)
        return self._envelope(cmd.data)

    def _profile(self, data: bytes) -> bytes:
        self.terminal_profile, self._pending, self._outstanding, self._step = data, None, None, None
        if not all(stk.profile_supports(data, f) for f in stk.MENU_FACILITIES):
            return SW_OK  # a handset that cannot show the menu is offered none
        menu = self._main_menu()
        return SW_OK if menu is None else self._issue(menu, lambda r: None)

    def _main_menu(self) -> stk.SetUpMenu | None:
        entries = self.card.directory()
        if not entries:
            return None
        return stk.SetUpMenu(
            TITLE, tuple(stk.Item(e.index, e.name + ("" if e.active else " (voided)")) for e in entries)
        )

    def _fetch(self, data: bytes, le: int | None) -> bytes:
        if data or le is None:
            return SW_WRONG_LENGTH
        if self._pending is None:
            return SW_CONDITIONS
        if le != len(self._pending):
            return bytes([0x6C, len(self._pending)])
        command, self._pending = self._pending, None
        return command + SW_OK

    def _response(self, data: bytes) -> bytes:
        if self._outstanding is None or self._pending is not None:
            return SW_CONDITIONS  # no fetched command waits for its answer
        try:
            r = stk.parse_response(data)
        except stk.StkError:
            return SW_WRONG_DATA
        if r.details != self._outstanding:
            return SW_WRONG_DATA
        step, self._outstanding, self._step = self._step, None, None
        assert step is not None
        if r.result in (stk.RESULT_TERMINATED_BY_USER, stk.RESULT_BEYOND_CAPABILITIES):
            return SW_OK  # the user ended the session, or the handset cannot go on: nothing more to say
        nxt = step(r)
        return SW_OK if nxt is None else self._issue_next(nxt)

    def _envelope(self, data: bytes) -> bytes:
        if data[:1] == bytes([stk.TAG_SMS_PP_DOWNLOAD]) and self.ota is not None:
            if self._outstanding is not None or self._pending is not None:
                return SW_BUSY  # a menu dialogue is running: the handset hands the SMS over after it
            return self.ota.envelope(stk.envelope_apdu(data))
        if data[:1] != bytes([stk.TAG_MENU_SELECTION]):
            return SW_WRONG_DATA
        if self._outstanding is not None or self._pending is not None:
            return SW_BUSY
        try:
            item = stk.parse_menu_selection(data)
        except stk.StkError:
            return SW_WRONG_DATA
        entry = self._entry(item)
        if entry is None:
            return SW_WRONG_DATA
        return self._issue(self._sub_menu(entry), self._on_sub_menu(entry))

    # --- the dialogue -------------------------------------------------------------------------------------------

    def _issue(self, command: stk.ProactiveCommand, step: Step) -> bytes:
        self._number = self._number % 0xFE + 1
        encoded = stk.encode_command(self._number, command)
        if len(encoded) > FETCH_MAX:
            raise ValueError("proactive command too long")
        self._pending = encoded
        self._outstanding = stk.parse_command(encoded)[0]
        self._step = step
        return bytes([stk.SW1_PROACTIVE, len(encoded)])

    def _issue_next(self, nxt: tuple[stk.ProactiveCommand, Step] | stk.ProactiveCommand) -> bytes:
        if isinstance(nxt, tuple):
            return self._issue(nxt[0], nxt[1])
        return self._issue(nxt, lambda r: None)

    def _entry(self, index: int) -> Entry | None:
        return next((e for e in self.card.directory() if e.index == index), None)

    def _sub_menu(self, entry: Entry) -> stk.SelectItem:
        return stk.SelectItem(entry.name, SUB_MENU)

    def _back_to(self, entry: Entry):
        """After a screen the user clears: the sub-application's menu again."""
        return lambda r: (self._sub_menu(entry), self._on_sub_menu(entry))

    def _on_sub_menu(self, entry: Entry) -> Step:
        def step(r: stk.TerminalResponse):
            if r.result != stk.RESULT_OK or r.item_id is None:
                return None  # backward move or no answer: the session ends, the main menu stays
            return self._choose(entry, r.item_id)

        return step

    def _choose(self, entry: Entry, item: int):
        back = self._back_to(entry)
        i = entry.index
        if item == ITEM_BALANCE:
            purse = self.card.purse(i)
            if purse is None:
                return stk.DisplayText(f"{entry.name}\nNo purse on this card"), back
            return stk.DisplayText(
                f"{entry.name}\nBalance {yuan(purse.balance)} yuan\nValid until {purse.expiry.isoformat()}"
                + ("" if entry.active else "\nVoided: frozen, refunded by the platform")
            ), back
        if item == ITEM_TRANSACTIONS:
            records = self.card.transactions(i, MAX_TRANSACTIONS)
            if not records:
                return stk.DisplayText(f"{entry.name}\nNo transactions"), back
            items = tuple(
                stk.Item(n + 1, f"{t.when:%m-%d %H:%M} {'+' if t.kind == tx.LOAD else '-'}{yuan(t.amount)}")
                for n, t in enumerate(records)
            )
            while not _fits(stk.SelectItem("Last transactions", items)):
                items = items[:-1]  # large amounts: the oldest that no longer fit one proactive command are left out

            def detail(r: stk.TerminalResponse):
                if r.result != stk.RESULT_OK or r.item_id is None or not 1 <= r.item_id <= len(records):
                    return self._sub_menu(entry), self._on_sub_menu(entry)
                t = records[r.item_id - 1]
                text = (
                    f"{tx.NAMES.get(t.kind, 'transaction').capitalize()} {yuan(t.amount)} yuan\n"
                    f"{t.when:%Y-%m-%d %H:%M:%S}\nTerminal {t.terminal_id.hex().upper()}\n"
                    f"Balance after {yuan(t.balance_after)} yuan"
                )
                return stk.DisplayText(text), lambda r2: (stk.SelectItem("Last transactions", items), detail)

            return stk.SelectItem("Last transactions", items), detail
        if item == ITEM_STATUS:
            status = "Active" if entry.active else "Voided (deleted)"
            return stk.DisplayText(f"{entry.name}\nStatus: {status}\nCard {self.card.asn.hex().upper()}"), back
        if item == ITEM_VALIDITY:
            start, end = self.card.validity(i)
            return stk.DisplayText(f"{entry.name}\nValid {start.isoformat()} to {end.isoformat()}"), back
        if item == ITEM_DELETE:
            return self._ask_password(entry)
        return self._sub_menu(entry), self._on_sub_menu(entry)

    def _ask_password(self, entry: Entry):
        state = self.store.load_or_new()
        back = self._back_to(entry)
        if state.password is None:
            return stk.DisplayText("No service password is set: set one at the card office"), back
        if state.tries_left == 0:
            return stk.DisplayText("Service password blocked: unblock it at the card office"), back
        prompt = f"Service password to delete {entry.name}"
        return stk.GetInput(prompt, 4, 8, digits_only=True, hidden=True), self._on_password(entry)

    def _on_password(self, entry: Entry) -> Step:
        def step(r: stk.TerminalResponse):
            if r.result != stk.RESULT_OK or r.text is None:
                return self._sub_menu(entry), self._on_sub_menu(entry)
            if not self._verify(r.text):
                left = self.store.load_or_new().tries_left
                text = (
                    "Wrong password: blocked, unblock it at the card office"
                    if left == 0
                    else (f"Wrong password: {left} {'try' if left == 1 else 'tries'} left")
                )
                return stk.DisplayText(text), self._back_to(entry)
            purse = self.card.purse(entry.index)
            if purse is None:
                return stk.DisplayText("This application has no purse: delete it at the card office"), self._back_to(
                    entry
                )
            question = f"Delete {entry.name}? {yuan(purse.balance)} yuan will be refunded"
            items = (stk.Item(CONFIRM_DELETE, "Delete"), stk.Item(CONFIRM_KEEP, "Keep"))
            return stk.SelectItem(question, items), self._on_confirm(entry)

        return step

    def _verify(self, typed: str) -> bool:
        """The card verifies the service password; every wrong try is counted before the answer leaves."""
        state = self.store.load_or_new()
        if state.password is None or state.tries_left == 0:
            return False
        if hmac.compare_digest(typed.encode(), state.password.encode()):
            if state.tries_left != MAX_TRIES:
                state.tries_left = MAX_TRIES
                self.store.save(state)
            return True
        state.tries_left -= 1
        self.store.save(state)
        return False

    def _on_confirm(self, entry: Entry) -> Step:
        def step(r: stk.TerminalResponse):
            if r.result != stk.RESULT_OK or r.item_id != CONFIRM_DELETE:
                return self._sub_menu(entry), self._on_sub_menu(entry)
            request = self.card.void_for_deletion(entry.index)
            number = self.store.load_or_new().platform_number
            sms = stk.SendShortMessage("Sending deletion request", stk.encode_sms_submit(number, request))
            return sms, self._on_sent(entry)

        return step

    def _on_sent(self, entry: Entry) -> Step:
        def step(r: stk.TerminalResponse):
            if r.result == stk.RESULT_OK:
                text = (
                    f"{entry.name} deleted on this card. The platform refunds its balance; "
                    "your other applications keep working"
                )
            else:
                text = f"Not sent ({r.result:02X}): {entry.name} is voided on this card; choose Delete again to resend"
            # Then the main menu as it now is (the sub-application shown as voided), replacing the handset's.
            return stk.DisplayText(text), lambda r2: self._main_menu()

        return step

    # --- the card office: unblock and set the service password --------------------------------------------------

    def _identify(self, ins: int, apdu: bytes) -> bytes:
        """SELECT and READ RECORD on the contact interface reach the chip's one-card application, read-only, so the
        card office finds the sub-application's index and FCI (its key) without a contactless reader: SELECT of the
        version 2 directory or a sub-application, or of the version 1 AID, and READ RECORD after it, answered
        exactly as card-application.md 3.1, 8.3, 9.1, 9.2 say. Nothing else of that application is reachable here."""
        if ins == 0xA4:
            self._identifying = self.card.identification()
            self._identifying.power_on()
        if self._identifying is None:
            return bytes.fromhex("6986")
        answer: bytes = self._identifying.transmit(apdu)
        return answer

    def _reset_retry_counter(self, cmd, challenge: bytes | None) -> bytes:
        """84 2C 00 P2 10 <new password (8: ASCII digits padded FF) XOR keystream> <MAC: 8>: secure messaging under
        K_UPDATE of sub-application P2 (docs/phone-menu.md 4, card-application.md 9.11): the MAC, over challenge ||
        84 2C 00 P2 10 || ciphertext, is checked first, then the password is deciphered under SK_WRITE."""
        if cmd.p1 != 0:
            return SW_WRONG_P1P2
        if len(cmd.data) != 16 or cmd.le is not None:
            return SW_WRONG_LENGTH
        entry = self._entry(cmd.p2)
        if entry is None:
            return SW_NOT_FOUND
        if challenge is None:
            return SW_SECURITY
        ciphertext, mac = cmd.data[:8], cmd.data[8:]
        header = bytes([cmd.cla, cmd.ins, cmd.p1, cmd.p2, len(cmd.data)])
        plain = self.card.open_office_data(entry.index, challenge, header, ciphertext, mac)
        if plain is None:
            return SW_SM_MAC
        digits = plain.rstrip(b"\xff")
        if not (4 <= len(digits) <= 8 and digits.isdigit() and b"\xff" not in digits):
            return SW_WRONG_DATA
        state = self.store.load_or_new()
        state.password, state.tries_left = digits.decode(), MAX_TRIES
        self.store.save(state)
        return SW_OK


def load_sim(card_file: str | os.PathLike[str]) -> SimToolkitApplet:
    """The contact interface of the simulated RFID-SIM in `card_file` (its toolkit state next to it)."""
    card: CardDirectory
    if json.loads(Path(card_file).read_text(encoding="utf-8")).get("format") == STATE_FORMAT_V2:
        card = V2Card(MultiCardStateFile(card_file))
    else:
        card = V1Card(CardStateFile(card_file))
    return SimToolkitApplet(card, ToolkitStateFile(toolkit_path(card_file)))
