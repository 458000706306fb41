"""A handset as the SIM toolkit sees it (ETSI TS 102 223): it sends its TERMINAL PROFILE, FETCHes the proactive
commands the SIM hands out, shows them through a `Screen`, answers with TERMINAL RESPONSE, and sends MENU SELECTION
envelopes. It talks to any CardConnection (a SIM in a PC/SC contact reader, or the simulated one through vpcd), and
hands the short messages the SIM sends to `send_sms` (the mobile network's part).

The same handset receives short messages from the network (`receive`): an SMS-PP data download (TP-PID 7F) goes to
the SIM as an ENVELOPE (TS 31.111 7.1.1) and what the SIM sends back (its proofs of receipt) is handed back to the
network; a text message (a bill) is kept in `inbox` once all its parts arrived, as a phone's messages show it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from common import ota, sms_tpdu, stk

#: What this handset offers the SIM: the phone menu's facilities and SMS-PP download.
PROFILE = stk.profile(*stk.MENU_FACILITIES, stk.PROFILE_SMS_PP_DOWNLOAD)


class HandsetError(Exception):
    """The SIM answered something a handset cannot go on with; the message names it."""


class Transmit(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...


class Screen(Protocol):
    """What the holder sees and types. None from a choice or an input is the back key."""

    def select_item(self, title: str, items: tuple[stk.Item, ...]) -> int | None: ...

    def display_text(self, text: str) -> bool:
        """Show `text` until the holder clears it; False when the holder went back instead."""
        ...

    def get_input(self, prompt: str, command: stk.GetInput) -> str | None: ...

    def sending(self, alpha: str) -> None: ...


#: Deliver a short message: (destination, user data) -> None when delivered, else the reason it was not.
SendSms = Callable[[str, bytes], "str | None"]

RESULT_NETWORK_UNABLE = 0x21  # TS 102 223 8.12: network currently unable to process the command


@dataclass
class Handset:
    conn: Transmit
    screen: Screen
    send_sms: SendSms
    menu: stk.SetUpMenu | None = None
    apdus: int = 0
    inbox: list[str] = field(default_factory=list)  # the text messages received, each whole and decoded
    _parts: ota.Reassembler = field(default_factory=ota.Reassembler)
    # While an SMS-PP download runs: the SMS-SUBMIT TPDUs the SIM asked to send (they go back to the network).
    _replies: list[bytes] | None = None

    def _exchange(self, apdu: bytes) -> tuple[bytes, bytes]:
        self.apdus += 1
        response = self.conn.transmit(apdu)
        if len(response) < 2:
            raise HandsetError(f"the SIM answered {len(response)} byte(s), without a status word")
        return response[:-2], response[-2:]

    def _status(self, apdu: bytes, what: str) -> int | None:
        data, sw = self._exchange(apdu)
        if data:
            raise HandsetError(f"the SIM answered {what} with {len(data)} data bytes; expected a status word only")
        try:
            return stk.pending_length(sw)
        except stk.StkError as exc:
            raise HandsetError(f"{what}: {exc}") from None

    def start(self) -> stk.SetUpMenu | None:
        """Power-on procedure: TERMINAL PROFILE, then the SIM's SET UP MENU (None: the SIM offers no menu)."""
        self.menu = None
        self._run(self._status(stk.terminal_profile_apdu(PROFILE), "TERMINAL PROFILE"))
        return self.menu

    def choose(self, item_id: int) -> None:
        """The holder picked `item_id` in the main menu: MENU SELECTION, then the dialogue until the SIM ends it."""
        if self.menu is None or item_id not in {i.id for i in self.menu.items}:
            raise HandsetError(f"item {item_id} is not in the SIM's menu")
        self._run(self._status(stk.envelope_apdu(stk.encode_menu_selection(item_id)), "MENU SELECTION"))

    def receive(self, deliver_tpdu: bytes) -> list[bytes]:
        """One SMS-DELIVER from the network in; the SMS-SUBMIT TPDUs the phone sends in answer (the SIM's PoRs) out.
        A message that does not parse, a part of a longer text still waiting for the others, or a download the SIM
        refused (its status word: the network is told nothing more) answer nothing."""
        try:
            sms = sms_tpdu.parse_deliver(deliver_tpdu)
        except sms_tpdu.TpduError:
            return []
        if sms.pid == sms_tpdu.PID_SIM_DATA_DOWNLOAD:
            return self._download(deliver_tpdu)
        try:
            seg = ota.parse_user_data(sms.user_data) if sms.udhi else ota.Segment((), sms.user_data, None, 1, 1)
            whole = self._parts.add(sms.address, seg)
        except ota.OtaError:
            return []
        if whole is not None:
            codec = "utf-16-be" if sms.dcs == sms_tpdu.DCS_UCS2 else "latin-1"
            self.inbox.append(whole.data.decode(codec, errors="replace"))
        return []

    def _download(self, deliver_tpdu: bytes) -> list[bytes]:
        replies: list[bytes] = []
        self._replies = replies
        try:
            apdu = stk.envelope_apdu(stk.encode_sms_pp_download(deliver_tpdu))
            self._run(self._status(apdu, "ENVELOPE (SMS-PP DOWNLOAD)"))
        except (stk.StkError, HandsetError):
            pass  # too long for an ENVELOPE, or refused / busy: what the SIM already asked to send still goes
        finally:
            self._replies = None
        return replies

    def _run(self, pending: int | None) -> None:
        while pending is not None:
            data, sw = self._exchange(stk.fetch_apdu(pending))
            if sw != stk.SW_OK:
                raise HandsetError(f"FETCH: the SIM answered {sw.hex(' ').upper()}")
            try:
                details, command = stk.parse_command(data)
            except stk.StkError as exc:
                response = self._beyond(data, exc)
            else:
                response = self._perform(details, command)
            pending = self._status(stk.terminal_response_apdu(stk.encode_response(response)), "TERMINAL RESPONSE")

    def _beyond(self, data: bytes, exc: stk.StkError) -> stk.TerminalResponse:
        """A command this handset does not know: 'beyond terminal's capabilities', when its details can be read."""
        try:
            tlvs = stk.parse_ctlvs(stk.parse_ber_tlv(data, stk.TAG_PROACTIVE))
            raw = next(t.value for t in tlvs if t.tag == stk.T_COMMAND_DETAILS)
            details = stk.CommandDetails(raw[0], raw[1], raw[2])
        except (stk.StkError, StopIteration, IndexError):
            raise HandsetError(f"the SIM sent a proactive command that cannot be read: {exc}") from None
        return stk.TerminalResponse(details, stk.RESULT_BEYOND_CAPABILITIES)

    def _perform(self, details: stk.CommandDetails, command: stk.ProactiveCommand) -> stk.TerminalResponse:
        if isinstance(command, stk.SetUpMenu):
            self.menu = command
            return stk.TerminalResponse(details, stk.RESULT_OK)
        if isinstance(command, stk.SelectItem):
            chosen = self.screen.select_item(command.title, command.items)
            if chosen is None:
                return stk.TerminalResponse(details, stk.RESULT_BACKWARD)
            return stk.TerminalResponse(details, stk.RESULT_OK, item_id=chosen)
        if isinstance(command, stk.DisplayText):
            cleared = self.screen.display_text(command.text)
            return stk.TerminalResponse(details, stk.RESULT_OK if cleared else stk.RESULT_BACKWARD)
        if isinstance(command, stk.GetInput):
            typed = self.screen.get_input(command.prompt, command)
            if typed is None:
                return stk.TerminalResponse(details, stk.RESULT_BACKWARD)
            return stk.TerminalResponse(details, stk.RESULT_OK, text=typed)
        if self._replies is not None:  # during an SMS-PP download: the SIM's answer to the network, as it is
            self._replies.append(command.tpdu)
            return stk.TerminalResponse(details, stk.RESULT_OK)
        self.screen.sending(command.alpha)
        try:
            destination, user_data = stk.parse_sms_submit(command.tpdu)
        except stk.StkError:
            return stk.TerminalResponse(details, stk.RESULT_BEYOND_CAPABILITIES)
        problem = self.send_sms(destination, user_data)
        return stk.TerminalResponse(details, stk.RESULT_OK if problem is None else RESULT_NETWORK_UNABLE)


def validate_input(typed: str, command: stk.GetInput) -> str | None:
    """Why `typed` is not an acceptable answer to `command` (a handset checks before it answers), else None."""
    if not command.min_length <= len(typed) <= command.max_length:
        return f"enter {command.min_length} to {command.max_length} characters"
    if command.digits_only and typed and not (typed.isdigit() and typed.isascii()):
        return "enter digits only"
    return None
