"""What a terminal does with a decision: relay, lights, beeper and display, behind one interface.

The console implementation prints what the hardware would do; a GPIO implementation plugs in the same way.
"""
from __future__ import annotations

import sys
import threading
from typing import Protocol, TextIO

from terminal.decision import Decision


class Outputs(Protocol):
    def open_relay(self, seconds: float) -> None: ...
    def light(self, color: str) -> None: ...        # "green" | "red" | "off"
    def beep(self, pattern: str) -> None: ...       # "ok" | "error"
    def display(self, text: str) -> None: ...


GREEN, RED, RESET = "\033[32m", "\033[31m", "\033[0m"


class ConsoleOutputs:
    """Prints one line per action, prefixed with the terminal's name, so several terminals share a console."""

    def __init__(self, terminal_name: str, stream: TextIO | None = None, color: bool = True):
        self.name = terminal_name
        self.stream = stream or sys.stdout
        self.color = color and self.stream.isatty()
        self._lock = threading.Lock()
        self._light = "off"
        self._beep = ""

    def _print(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"[{self.name}] {text}\n")
            self.stream.flush()

    def open_relay(self, seconds: float) -> None:
        self._print(f"relay: door unlocked for {seconds:g} s")

    def light(self, color: str) -> None:
        self._light = color

    def beep(self, pattern: str) -> None:
        # Shown with the next display line: one short beep for yes, three for no, as door readers do.
        self._beep = {"ok": "beep", "error": "beep-beep-beep"}.get(pattern, pattern)

    def display(self, text: str) -> None:
        mark = {"green": "OK ", "red": "NO ", "off": "   "}[self._light]
        if self.color and self._light in ("green", "red"):
            mark = (GREEN if self._light == "green" else RED) + mark + RESET
        beep, self._beep = self._beep, ""
        self._print(f"{mark} {text}" + (f"  ({beep})" if beep else ""))


def present(decision: Decision, outputs: Outputs, relay_seconds: float | None) -> None:
    """Drive the outputs for one decision; the relay only for a granted door."""
    outputs.light("green" if decision.accepted else "red")
    outputs.beep("ok" if decision.accepted else "error")
    outputs.display(decision.message)
    if decision.accepted and relay_seconds and decision.kind == "door.grant":
        outputs.open_relay(relay_seconds)
