"""What the cashier or operator asks for at a POS or top-up terminal, and the console keypad that reads it."""
from __future__ import annotations

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

    def prompt(self) -> str:
        return f"Pay {format_yuan(self.amount)}: please tap your card"


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


Request = Charge | Load | Undo | Balance | Cancel

HELP = {
    "pos": "type an amount (12.50) to charge, u to undo the last payment, b for a balance, c to cancel",
    "topup": "type an amount (50.00) to load, b for a balance, c to cancel",
}


def parse_request(line: str, kind: str) -> Request:
    """One keypad line -> request; UserError with the help text for anything else."""
    text = line.strip().lower()
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


class Keypad(Protocol):
    def next_request(self, timeout: float) -> Request | None:
        """The next request, or None when nothing was entered within timeout seconds."""


class ConsoleKeypad:
    """Reads one request per line from a text stream (the console, or a pipe from a till system)."""

    def __init__(self, kind: str, stream: TextIO | None = None, errors: TextIO | None = None):
        self.kind = kind
        self._queue: queue.Queue[Request] = queue.Queue()
        self._errors = errors or sys.stderr
        self._thread = threading.Thread(target=self._read, args=(stream or sys.stdin,), daemon=True,
                                        name="keypad")
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                self._queue.put(parse_request(line, self.kind))
            except UserError as exc:
                self._errors.write(f"keypad: {exc}\n")
                self._errors.flush()

    def next_request(self, timeout: float) -> Request | None:
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
