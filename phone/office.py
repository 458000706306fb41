"""The card office's side of the one-card service password (业务服务密码): set it, change it, or unblock it after
three wrong tries, with a new password the holder chooses (docs/phone-menu.md 4). On the SIM's contact interface the
office first finds the sub-application of its enterprise (SELECT, READ RECORD: its directory index and the FCI that
names its key), then sends RESET RETRY COUNTER under secure messaging: the new password enciphered and the command
MAC'd under the sub-application's K_UPDATE, which only the enterprise's issuing stations hold, through the station's
SAM. The password never crosses the interface in clear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from phone.handset import Transmit
from sam.interface import CardIdentity, KeyPurpose
from terminal import card_protocol as cp

SW_OK = b"\x90\x00"
PASSWORD_BLOCK = 8


class OfficeError(Exception):
    """The SIM refused, or is not a one-card SIM of this enterprise; the message says what to do."""


class OfficeSam(Protocol):
    """What the card office needs of its SAM (sam/software.py SoftwareSam)."""

    def card_mac(self, purpose: KeyPurpose, card: CardIdentity, message: bytes) -> bytes: ...

    def encipher_card_data(
        self, purpose: KeyPurpose, card: CardIdentity, context: bytes, plaintext: bytes
    ) -> bytes: ...


REFUSALS = {
    b"\x67\x00": "wrong length",
    b"\x69\x82": "no challenge before the command",
    b"\x69\x88": "the MAC does not verify: this station's keys are not the card's",
    b"\x6a\x80": "the new password must be 4 to 8 digits",
    b"\x6a\x82": "the card has no such sub-application",
}


def check_password(password: str) -> None:
    if not (password.isascii() and password.isdigit() and 4 <= len(password) <= 8):
        raise OfficeError("a service password is 4 to 8 digits")


@dataclass(frozen=True)
class SubApplication:
    """The sub-application of the office's enterprise as the SIM announced it."""

    index: int  # 1..8: its directory record (1 on a version 1 card)
    name: str
    card: cp.CardInfo


def find_sub_application(conn: Transmit, enterprise_id: bytes) -> SubApplication:
    """SELECT the version 2 directory and read it to find `enterprise_id`'s index, then SELECT that sub-application
    for its FCI; a version 1 card (6A 82 to the directory) is index 1 when its one application is of that
    enterprise. OfficeError otherwise."""
    try:
        answer = conn.transmit(cp.select_command(cp.AID_V2))
        try:
            directory = cp.parse_directory_select(answer)
        except cp.NotOneCard:
            info = cp.parse_select(conn.transmit(cp.select_command(cp.AID)))
            if info.enterprise_id != enterprise_id:
                raise OfficeError(
                    f"this SIM's one-card application is of enterprise {info.enterprise_id.hex()}, not "
                    f"{enterprise_id.hex()}: its own card office sets the password"
                ) from None
            return SubApplication(1, f"Enterprise {enterprise_id.hex().upper()}", info)
        for number in range(1, directory.count + 1):
            entry = cp.parse_directory_record(conn.transmit(cp.read_directory_command(number)))
            if entry is not None and entry.enterprise_id == enterprise_id:
                info = cp.parse_select(conn.transmit(cp.select_command(cp.sub_application_aid(enterprise_id))))
                return SubApplication(number, entry.name, info)
    except cp.NotOneCard:
        raise OfficeError("this SIM has no one-card application") from None
    except cp.CardProtocolError as exc:
        raise OfficeError(f"the SIM does not answer as a one-card SIM: {exc}") from None
    raise OfficeError(
        f"this SIM has no sub-application of enterprise {enterprise_id.hex()}; add one first "
        "(onecard issue add-application)"
    )


def reset_retry_counter_apdu(challenge: bytes, password: str, index: int, sam: OfficeSam, card: CardIdentity) -> bytes:
    """84 2C 00 <index> 10 <(password, ASCII digits padded FF to 8) XOR keystream> <MAC8 of challenge || header ||
    ciphertext>; keystream under SK_WRITE = E(K_UPDATE, challenge || 00 00 00 00 || 03 00 00 00)."""
    check_password(password)
    if len(challenge) != 8 or not 1 <= index <= 8:
        raise OfficeError("a challenge is 8 bytes and a sub-application index 1..8")
    plain = password.encode().ljust(PASSWORD_BLOCK, b"\xff")
    ciphertext = sam.encipher_card_data(KeyPurpose.UPDATE, card, challenge + bytes(4), plain)
    header = bytes([0x84, 0x2C, 0x00, index, 16])
    return header + ciphertext + sam.card_mac(KeyPurpose.UPDATE, card, challenge + header + ciphertext)


def set_service_password(conn: Transmit, sam: OfficeSam, enterprise_id: bytes, password: str) -> SubApplication:
    """Find the enterprise's sub-application, GET CHALLENGE, then RESET RETRY COUNTER: the password is set (a new
    one, or the old one unblocked) and its try counter back at 3. Returns the sub-application it went through."""
    check_password(password)
    sub = find_sub_application(conn, enterprise_id)
    if sub.card.key_version == 0:
        raise OfficeError(f"the sub-application {sub.name} is not issued yet (transport keys): issue it first")
    answer = conn.transmit(b"\x00\x84\x00\x00\x08")
    if len(answer) != 10 or answer[-2:] != SW_OK:
        raise OfficeError(f"GET CHALLENGE: the SIM answered {answer[-2:].hex(' ').upper()}")
    sw = conn.transmit(reset_retry_counter_apdu(answer[:8], password, sub.index, sam, sub.card.identity()))
    if sw != SW_OK:
        why = REFUSALS.get(sw, "unexpected")
        raise OfficeError(f"RESET RETRY COUNTER: the SIM answered {sw.hex(' ').upper()} ({why})")
    return sub
