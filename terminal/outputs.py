"""What a terminal does with a decision: relay, lights, beeper and display, behind one interface.

The console implementation prints what the hardware would do (development and the demo); terminal/gpio_outputs.py
drives a strike, LEDs and a buzzer through gpiozero, and terminal/display.py a luma LCD/OLED, behind the same one.
"""

from __future__ import annotations

import sys
import threading
from typing import Protocol, TextIO

from terminal.decision import Decision
from terminal.screens import Screen, decision_screen, notice_screen


class Outputs(Protocol):
    def open_relay(self, seconds: float) -> None: ...
    def light(self, color: str) -> None: ...  # "green" | "red" | "off"
    def beep(self, pattern: str) -> None: ...  # "ok" | "error" | "alarm" | "off"
    def display(self, text: str) -> None: ...  # a plain sentence: show(notice_screen(text))
    def show(self, screen: Screen) -> None: ...  # a whole screen (terminal/screens.py)
    def close(self) -> None: ...  # release the relay and every pin; called on every exit path


class WithDisplay:
    """Outputs plus a display driver: every screen goes to both (e.g. GPIO or console lines plus a luma LCD)."""

    def __init__(self, inner, screen_driver):
        self.inner, self.screen_driver = inner, screen_driver

    shows_idle = True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def display(self, text: str) -> None:
        self.show(notice_screen(text))

    def show(self, screen: Screen) -> None:
        self.inner.show(screen)
        self.screen_driver.show(screen)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.screen_driver.close()


GREEN, RED, RESET = "\033[32m", "\033[31m", "\033[0m"


class ConsoleOutputs:
    """Prints one line per action, prefixed with the terminal's name, so several terminals share a console."""

    shows_idle = False  # no clock line a minute on a shared console

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

    def hold_open(self, on: bool) -> None:
        self._print("relay: door held unlocked (normally open)" if on else "relay: normally-open period over, locked")

    def light(self, color: str) -> None:
        self._light = color

    def beep(self, pattern: str) -> None:
        # Shown with the next display line: one short beep for yes, three for no, as door readers do.
        self._beep = {"ok": "beep", "error": "beep-beep-beep", "alarm": "alarm sounding", "off": ""}.get(
            pattern, pattern
        )

    def show(self, screen: Screen) -> None:
        if screen.kind != "idle":  # the clock ticking over is for a real display, not a line a minute
            self.display(screen.text)

    def close(self) -> None:
        pass

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
    outputs.show(decision_screen(decision))
    if decision.accepted and relay_seconds and decision.kind == "door.grant":
        outputs.open_relay(relay_seconds)
