"""What the cashier asks for at a POS or top-up terminal, and the key sources that read it: the console or a till
system's pipe (whole lines), a serial keypad (pyserial) and a USB keypad (evdev), one key at a time."""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Protocol, TextIO

from common.errors import UserError
from common.money import format_yuan, parse_yuan


@dataclass(frozen=True)
class Charge:
    amount: int  # fen
    item: str = ""  # rung up on a price key ([pos.price_keys]): the item's name

    def prompt(self) -> str:
        what = f"{self.item} " if self.item else ""
        return f"Pay {what}{format_yuan(self.amount)}: please tap your card"


@dataclass(frozen=True)
class Load:
    amount: int

    def prompt(self) -> str:
        return f"Top-up {format_yuan(self.amount)}: please tap your card"


@dataclass(frozen=True)
class Undo:
    def prompt(self) -> str:
        return "Undo the last payment: tap the card that paid"


@dataclass(frozen=True)
class Balance:
    def prompt(self) -> str:
        return "Balance: please tap your card"


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class SignIn:
    """签到: a cashier opens a shift. The password is checked against its hash and never shown, logged or kept."""

    operator: str
    password: str = dataclasses.field(repr=False)


@dataclass(frozen=True)
class SignOut:
    """签退: the cashier signed in closes the shift."""


Request = Charge | Load | Undo | Balance | Cancel | SignIn | SignOut

HELP = {
    "pos": "type an amount (12.50) to charge, F1..F12 for a price key, u to undo the last payment, b for a balance, "
    "s NUMBER PASSWORD to sign in, o to sign out, c to cancel",
    "topup": "type an amount (50.00) to load, b for a balance, c to cancel",
}


def masked(line: str) -> str:
    """What the display shows of a line being typed: a sign-in's password as asterisks."""
    parts = line.split(" ")
    if len(parts) >= 3 and parts[0].lower() == "s":
        return " ".join(parts[:2] + ["*" * len(" ".join(parts[2:]))])
    return line


def parse_request(line: str, kind: str, price_keys: dict | None = None) -> Request:
    """One keypad line -> request; UserError with the help text for anything else. `price_keys` is [pos].price_keys
    (F1 -> PriceKey)."""
    text = line.strip().lower()
    if kind == "pos" and price_keys and text.upper() in price_keys:
        key = price_keys[text.upper()]
        return Charge(key.price, key.item)
    if kind == "pos" and text.startswith("s "):
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            raise UserError("sign in as: s NUMBER PASSWORD (e.g. s 0001 ******)")
        return SignIn(parts[1], parts[2])
    if kind == "pos" and text == "o":
        return SignOut()
    if text == "c":
        return Cancel()
    if text == "b":
        return Balance()
    if text == "u" and kind == "pos":
        return Undo()
    try:
        amount = parse_yuan(text)
    except UserError:
        raise UserError(f"{line.strip()!r} not understood: {HELP[kind]}") from None
    if amount == 0:
        raise UserError(f"the amount must be more than 0.00: {HELP[kind]}")
    return Charge(amount) if kind == "pos" else Load(amount)


@dataclass(frozen=True)
class Typed:
    """The cashier's line so far (shown on the display as it is typed)."""

    text: str


@dataclass(frozen=True)
class Rejected:
    """A line that is not a request (`12,50`, `-3`, `abc`): its message goes to the display."""

    message: str


@dataclass(frozen=True)
class PinTyped:
    """How many digits of the spending password are typed so far (the display shows that many asterisks)."""

    count: int


@dataclass(frozen=True, eq=False)
class PinEntered:
    """The spending password, on Enter: its raw ASCII digits in a bytearray the terminal wipes after VERIFY."""

    digits: bytearray = dataclasses.field(repr=False)


Item = Request | Typed | Rejected | PinTyped | PinEntered

# Keys other than characters; a source maps its own codes onto these names.
BACKSPACE, CLEAR, CANCEL, ENTER = "backspace", "clear", "cancel", "enter"


class KeyLine:
    """Single keys -> the line being typed -> a request when Enter is pressed. Sans-I/O, one per key source."""

    def __init__(self, kind: str, price_keys: dict | None = None):
        self.kind = kind
        self.price_keys = price_keys or {}
        self.line = ""
        self.pin: bytearray | None = None  # spending-password mode: the digits typed so far

    def pin_mode(self, on: bool) -> None:
        if self.pin is not None:
            self.pin[:] = bytes(len(self.pin))
        self.pin, self.line = (bytearray() if on else None), ""

    def _pin_key(self, pin: bytearray, key: str) -> list[Item]:
        if key == CANCEL:
            return [Cancel()]
        if key == ENTER:
            self.pin = bytearray()
            return [PinEntered(pin)]
        if key == BACKSPACE:
            if pin:
                pin[-1] = 0
                del pin[-1]
        elif key == CLEAR:
            pin[:] = bytes(len(pin))
            del pin[:]
        elif len(key) == 1 and key.isdigit() and len(pin) < 12:
            pin.append(ord(key))
        else:
            return []  # letters, function keys, a 13th digit: nothing
        return [PinTyped(len(pin))]

    def key(self, key: str) -> list[Item]:
        if self.pin is not None:
            return self._pin_key(self.pin, key)
        if key in self.price_keys:  # a function key rings its item up at once, whatever was typed before
            self.line = ""
            return [parse_request(key, self.kind, self.price_keys)]
        if key == CANCEL:
            self.line = ""
            return [Cancel()]
        if key == ENTER:
            line, self.line = self.line, ""
            if not line.strip():
                return []
            try:
                return [parse_request(line, self.kind, self.price_keys)]
            except UserError as exc:
                return [Rejected(str(exc))]
        if key == BACKSPACE:
            self.line = self.line[:-1]
        elif key == CLEAR:
            self.line = ""
        elif len(key) == 1 and key.isprintable():
            if len(self.line) >= 24:
                return [Rejected(f"{masked(self.line + key)!r} is too long: {HELP[self.kind]}")]
            self.line += key
        else:
            return []
        return [Typed(masked(self.line))]


class Keypad(Protocol):
    def next_request(self, timeout: float) -> Item | None:
        """The next request (or what was typed, or a refused line), or None when nothing came within timeout s."""

    def pin_mode(self, on: bool) -> None:
        """Spending-password entry on / off: digits become PinTyped / PinEntered, anything queued is dropped."""

    def close(self) -> None: ...


class _QueuedKeypad:
    """A key source read in its own thread; what it yields waits in a queue for the tap loop."""

    def __init__(self, kind: str, name: str):
        self.kind = kind
        self._queue: queue.Queue[Item] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True, name=name)

    def _guarded(self) -> None:
        try:
            self._read()
        except Exception as exc:  # a keypad unplugged mid-shift: say so on the display, keep the terminal up
            if not self._stop.is_set():
                self._queue.put(
                    Rejected(
                        f"keypad stopped ({type(exc).__name__}: {exc}); check its cable, then restart the terminal"
                    )
                )

    def _read(self) -> None:
        raise NotImplementedError

    _line: KeyLine | None = None
    _pin_lock = threading.Lock()

    def pin_mode(self, on: bool) -> None:
        with self._pin_lock:
            if self._line is not None:
                self._line.pin_mode(on)
            self._pin = on
            while True:  # what was typed before the password prompt is not the password
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, PinEntered):
                    item.digits[:] = bytes(len(item.digits))

    _pin = False

    def _put_keys(self, key: str) -> None:
        with self._pin_lock:
            assert self._line is not None
            for item in self._line.key(key):
                self._queue.put(item)

    def next_request(self, timeout: float) -> Item | None:
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()


class ConsoleKeypad(_QueuedKeypad):
    """Reads one request per line from a text stream (the console, or a pipe from a till system)."""

    def __init__(self, kind: str, stream: TextIO | None = None, price_keys: dict | None = None):
        super().__init__(kind, "keypad")
        self._stream = stream or sys.stdin
        self.price_keys = price_keys or {}
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            if not line.strip():
                continue
            if self._pin:  # a line is the password (a console echoes it: the console is for labs and till systems)
                text = line.strip()
                self._queue.put(Cancel() if text.lower() == "c" else PinEntered(bytearray(text.encode())))
                continue
            try:
                self._queue.put(parse_request(line, self.kind, self.price_keys))
            except UserError as exc:
                self._queue.put(Rejected(str(exc)))


# Serial keypads send characters; these bytes are the editing keys.
SERIAL_KEYS = {b"\r": ENTER, b"\n": ENTER, b"\x08": BACKSPACE, b"\x7f": BACKSPACE, b"\x1b": CANCEL, b"\x18": CLEAR}


class SerialKeypad(_QueuedKeypad):
    """A serial (RS-232/USB-serial) keypad through pyserial: one character per key, Enter ends the line."""

    def __init__(self, kind: str, port: str, baudrate: int = 9600, price_keys: dict | None = None):
        import serial

        super().__init__(kind, "keypad-serial")
        try:
            self._serial = serial.Serial(port, baudrate, timeout=0.2)
        except (serial.SerialException, ValueError) as exc:
            raise UserError(
                f"[keypad] device {port!r} cannot be opened ({exc}); check the cable and the port "
                "(ls /dev/ttyUSB* /dev/serial/by-id), and that the onecard user is in dialout"
            ) from None
        self._line = KeyLine(kind, price_keys)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            data = self._serial.read(1)
            if not data:
                continue
            key = SERIAL_KEYS.get(data) or data.decode("latin-1")
            if key == ENTER and data == b"\n" and self._last == b"\r":
                self._last = data
                continue  # CR LF is one Enter
            self._last = data
            self._put_keys(key)

    _last = b""

    def close(self) -> None:
        super().close()
        self._thread.join(timeout=1)
        self._serial.close()


def evdev_key(code_name: str) -> str | None:
    """An evdev key name (KEY_KP5, KEY_BACKSPACE, ...) -> a KeyLine key; None for keys a cashier does not use."""
    name = code_name.removeprefix("KEY_")
    named = {
        "ENTER": ENTER,
        "KPENTER": ENTER,
        "BACKSPACE": BACKSPACE,
        "ESC": CANCEL,
        "DELETE": CLEAR,
        "NUMLOCK": CLEAR,
        "DOT": ".",
        "KPDOT": ".",
        "COMMA": ",",
        "KPCOMMA": ",",
        "MINUS": "-",
        "KPMINUS": "-",
        "KPASTERISK": "u",
        "KPSLASH": "b",
        "KPPLUS": "c",
    }
    if name in named:
        return named[name]
    if name.startswith("KP") and name[2:].isdigit():
        return name[2:]
    if len(name) == 1 and name.isalnum():
        return name.lower()
    if name in ("SPACE",):
        return " "
    if name.startswith("F") and name[1:].isdigit() and 1 <= int(name[1:]) <= 12:
        return name  # a function key: a price key when [pos.price_keys] maps it
    return None


def keys_from_events(events) -> list[str]:
    """Recorded or live evdev input events -> KeyLine keys: key presses and auto-repeats, not releases."""
    from evdev import ecodes

    keys = []
    for event in events:
        if event.type != ecodes.EV_KEY or event.value not in (1, 2):
            continue
        names = ecodes.KEY.get(event.code) or ecodes.BTN.get(event.code)
        for name in [names] if isinstance(names, str) else names or []:
            key = evdev_key(name)
            if key is not None:
                keys.append(key)
                break
    return keys


def find_evdev_device(device: str):
    """[keypad].device as a /dev/input path, or the name (any part) of an input device; grabbed exclusively so the
    keys reach no console or other program."""
    import evdev

    try:
        if device.startswith("/"):
            dev = evdev.InputDevice(device)
        else:
            matches = []
            for path in evdev.list_devices():
                candidate = evdev.InputDevice(path)
                if device.lower() in candidate.name.lower():
                    matches.append(candidate)
                else:
                    candidate.close()
            if not matches:
                raise UserError(
                    f"[keypad] device {device!r}: no input device has that name (found: "
                    + (", ".join(repr(evdev.InputDevice(p).name) for p in evdev.list_devices()) or "none")
                    + "); plug the keypad in or set device to its /dev/input/by-id path"
                )
            dev = matches[0]
        dev.grab()
        return dev
    except OSError as exc:
        raise UserError(
            f"[keypad] device {device!r} cannot be opened ({exc.strerror or exc}); check it is "
            "plugged in and that the onecard user is in the input group"
        ) from None


class EvdevKeypad(_QueuedKeypad):
    """A USB numeric keypad or keyboard through evdev, grabbed exclusively."""

    def __init__(self, kind: str, device: str, price_keys: dict | None = None):
        super().__init__(kind, "keypad-evdev")
        self._device = find_evdev_device(device)
        self._line = KeyLine(kind, price_keys)
        self._thread.start()

    def _read(self) -> None:
        for event in self._device.read_loop():
            if self._stop.is_set():
                return
            for key in keys_from_events([event]):
                self._put_keys(key)

    def close(self) -> None:
        super().close()
        try:
            self._device.ungrab()
        except OSError:
            pass
        self._device.close()


def open_keypad(
    kind: str,
    driver: str,
    device: str = "",
    baudrate: int = 9600,
    stdin: TextIO | None = None,
    price_keys: dict | None = None,
):
    """The key source [keypad] names; UserError (one line naming [keypad]) when there is no usable one."""
    stdin = stdin or sys.stdin
    if driver == "evdev":
        return EvdevKeypad(kind, device, price_keys)
    if driver == "serial":
        return SerialKeypad(kind, device, baudrate, price_keys)
    if driver == "console" and not _is_tty(stdin):
        raise UserError(
            '[keypad] driver = "console" needs a terminal on standard input, and there is none (under '
            'systemd it is /dev/null): set [keypad] driver = "evdev" or "serial" with its device, or '
            '"stdin" for a till system piping amounts in'
        )
    if driver == "stdin" and _is_null(stdin):
        raise UserError(
            '[keypad] driver = "stdin" but standard input is /dev/null (as under systemd): set '
            '[keypad] driver = "evdev" or "serial" with its device'
        )
    return ConsoleKeypad(kind, stdin, price_keys)


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_null(stream) -> bool:
    import os
    import stat

    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return stat.S_ISCHR(st.st_mode) and not stream.isatty()
