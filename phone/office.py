"""The card office's side of the one-card service password (业务服务密码): set it, or unblock it after three wrong
tries, with a new password the holder chooses (docs/phone-menu.md 3). The command is MAC'd under the sub-application's
K_UPDATE, which only the enterprise's issuing stations hold, through the station's SAM."""

from __future__ import annotations

from phone.handset import Transmit
from sam.interface import CardIdentity, KeyPurpose, Sam

SW_OK = b"\x90\x00"


class OfficeError(Exception):
    """The SIM refused; the message names the status word and what it means."""


REFUSALS = {
    b"\x69\x82": "no challenge before the command",
    b"\x69\x88": "the MAC does not verify: this station's keys are not the card's",
    b"\x6a\x80": "the new password must be 4 to 8 digits",
    b"\x6a\x82": "the card has no such sub-application",
}


def check_password(password: str) -> None:
    if not (password.isascii() and password.isdigit() and 4 <= len(password) <= 8):
        raise OfficeError("a service password is 4 to 8 digits")


def reset_retry_counter_apdu(challenge: bytes, password: str, index: int, sam: Sam, card: CardIdentity) -> bytes:
    """84 2C 00 <index> 10 <password, ASCII digits padded FF to 8> <MAC8 of challenge || header || password>."""
    check_password(password)
    if len(challenge) != 8 or not 1 <= index <= 8:
        raise OfficeError("a challenge is 8 bytes and a sub-application index 1..8")
    plain = password.encode().ljust(8, b"\xff")
    header = bytes([0x84, 0x2C, 0x00, index, 16])
    return header + plain + sam.card_mac(KeyPurpose.UPDATE, card, challenge + header + plain)


def set_service_password(conn: Transmit, sam: Sam, card: CardIdentity, password: str, index: int = 1) -> None:
    """GET CHALLENGE, then RESET RETRY COUNTER: the password is set and its try counter back at 3."""
    check_password(password)
    answer = conn.transmit(b"\x00\x84\x00\x00\x08")
    if len(answer) != 10 or answer[-2:] != SW_OK:
        raise OfficeError(f"GET CHALLENGE: the SIM answered {answer[-2:].hex(' ').upper()}")
    sw = conn.transmit(reset_retry_counter_apdu(answer[:8], password, index, sam, card))
    if sw != SW_OK:
        why = REFUSALS.get(sw, "unexpected")
        raise OfficeError(f"RESET RETRY COUNTER: the SIM answered {sw.hex(' ').upper()} ({why})")
