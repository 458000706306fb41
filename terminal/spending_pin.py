"""The spending password (消费密码) of a sub-application: the PIN block, VERIFY and its answers, and the secured
commands that set or unblock it (docs/card-application.md 5.5). Sans-I/O: bytes in, bytes or decisions out.

The PIN the holder types is kept in a `Pin`, a bytearray that `wipe()` overwrites with zeros once the card has
answered; nothing here formats a PIN into a string, a log line or an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import UserError

PIN_MIN, PIN_MAX = 4, 12  # ISO 9564-1 format 2 carries 4..12 digits
MAX_TRIES = 3  # the card's try counter after VERIFY succeeds, a PIN is set or the counter is reset
PIN_BLOCK_LEN = 8
P2_SPENDING_PIN = 0x80  # VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER: the selected application's PIN
INS_VERIFY = 0x20
INS_CHANGE_PIN = 0x24  # CHANGE REFERENCE DATA, secured (CLA 84): set or change the PIN, counter back to 3
INS_RESET_RETRY = 0x2C  # RESET RETRY COUNTER, secured (CLA 84), P1 03: counter back to 3, the PIN unchanged
P1_RESET_ONLY = 0x03
PIN_PAD = b"\xff" * 8  # the second half of the block CHANGE REFERENCE DATA enciphers


class PinFormatError(UserError):
    """What was typed is not a PIN (the message never repeats what was typed)."""


class Pin:
    """A PIN being used: its ASCII digits in a bytearray that `wipe()` zeroes. Never printed or compared by ==."""

    __slots__ = ("_digits",)

    def __init__(self, digits: bytearray):
        self._digits = digits

    def __repr__(self) -> str:
        return "Pin(<hidden>)"

    def __len__(self) -> int:
        return len(self._digits)

    def block(self) -> bytearray:
        """The ISO 9564-1 format 2 PIN block: 2N, then the N digits in BCD, padded with nibbles F to 8 bytes."""
        if not self._digits:
            raise ValueError("the PIN was wiped")
        nibbles = bytearray([0x2, len(self._digits)])
        nibbles.extend(d - 0x30 for d in self._digits)
        nibbles.extend([0xF] * (2 * PIN_BLOCK_LEN - len(nibbles)))
        block = bytearray(nibbles[i] << 4 | nibbles[i + 1] for i in range(0, len(nibbles), 2))
        wipe(nibbles)
        return block

    def wipe(self) -> None:
        wipe(self._digits)
        del self._digits[:]


def wipe(buffer: bytearray) -> None:
    """Overwrite a buffer that held a PIN (or its block) with zeros, in place."""
    buffer[:] = bytes(len(buffer))


def parse_pin(typed: bytearray | bytes | str) -> Pin:
    """The holder's keys -> Pin: 4..12 decimal digits, nothing else. PinFormatError (one line) otherwise."""
    digits = bytearray(typed.encode("ascii", "replace") if isinstance(typed, str) else typed)
    if not all(0x30 <= d <= 0x39 for d in digits):
        wipe(digits)
        raise PinFormatError("the spending password is digits only: type it again")
    if not PIN_MIN <= len(digits) <= PIN_MAX:
        wipe(digits)
        raise PinFormatError(f"the spending password has {PIN_MIN} to {PIN_MAX} digits: type it again")
    return Pin(digits)


def parse_pin_block(block: bytes) -> str | None:
    """A PIN block's digits, or None when the 8 bytes are not a format 2 block of 4..12 digits padded F."""
    if len(block) != PIN_BLOCK_LEN or block[0] >> 4 != 0x2:
        return None
    n = block[0] & 0x0F
    nibbles = [x for b in block[1:] for x in (b >> 4, b & 0x0F)]
    if not PIN_MIN <= n <= PIN_MAX or any(x > 9 for x in nibbles[:n]) or any(x != 0xF for x in nibbles[n:]):
        return None
    return "".join(str(x) for x in nibbles[:n])


def verify_command(block: bytes | bytearray) -> bytearray:
    """VERIFY: 00 20 00 80 08 <PIN block>. A bytearray, so the caller can wipe it after sending."""
    if len(block) != PIN_BLOCK_LEN:
        raise ValueError("a PIN block is 8 bytes")
    return bytearray([0x00, INS_VERIFY, 0x00, P2_SPENDING_PIN, PIN_BLOCK_LEN]) + block


def status_command() -> bytes:
    """VERIFY without data (ISO 7816-4 case 1): how many tries are left, or whether this session is verified."""
    return bytes([0x00, INS_VERIFY, 0x00, P2_SPENDING_PIN])


@dataclass(frozen=True)
class PinAnswer:
    """The card's answer to VERIFY. `state`: verified | wrong | blocked | not_set | refused."""

    state: str
    tries_left: int = 0  # wrong: what remains (0: this try blocked it); the status command: before any try
    sw: str = ""

    @property
    def verified(self) -> bool:
        return self.state == "verified"


def parse_verify(rapdu: bytes) -> PinAnswer:
    """VERIFY's R-APDU -> PinAnswer. Any answer but 90 00, 63 Cx, 69 83, 69 84 is `refused` with its SW."""
    if len(rapdu) != 2:
        return PinAnswer("refused", sw=rapdu[-2:].hex().upper() if len(rapdu) > 2 else "")
    sw1, sw2 = rapdu[0], rapdu[1]
    if (sw1, sw2) == (0x90, 0x00):
        return PinAnswer("verified", MAX_TRIES, "9000")
    if sw1 == 0x63 and sw2 >> 4 == 0xC and sw2 & 0x0F <= MAX_TRIES:
        return PinAnswer("wrong", sw2 & 0x0F, rapdu.hex().upper())
    if (sw1, sw2) == (0x69, 0x83):
        return PinAnswer("blocked", 0, "6983")
    if (sw1, sw2) == (0x69, 0x84):
        return PinAnswer("not_set", 0, "6984")
    return PinAnswer("refused", 0, rapdu.hex().upper())


def pin_cryptogram_input(block: bytes | bytearray) -> bytearray:
    """The 16 bytes CHANGE REFERENCE DATA enciphers: PIN block (8) || FF x 8."""
    if len(block) != PIN_BLOCK_LEN:
        raise ValueError("a PIN block is 8 bytes")
    return bytearray(block) + PIN_PAD


def needs_pin(amount: int, pin_above: int) -> bool:
    """Does a sale of `amount` fen need the spending password? [pos].pin_above (fen), 0 = never."""
    return pin_above > 0 and amount > pin_above


def wrong_pin_message(tries_left: int) -> str:
    if tries_left == 0:
        return "Wrong spending password: now blocked, nothing charged. Unblock it at the card office"
    return f"Wrong spending password: {tries_left} {'try' if tries_left == 1 else 'tries'} left, nothing charged"


BLOCKED_MESSAGE = "Spending password blocked: nothing charged. Unblock it at the card office"
NOT_SET_MESSAGE = "No spending password on this card: nothing charged. Set one at the card office"
CANCELLED_MESSAGE = "Spending password not entered: cancelled, nothing charged"
