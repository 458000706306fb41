"""gpiozero adapter: the door strike relay, door contact, REX button, green/red LEDs and the buzzer.

Thin by design: every timing and alarm decision is in terminal/door_monitor.py; this module turns its state into pin
levels and pin edges into its inputs. gpiozero picks the pin factory (lgpio on a Pi, libgpiod elsewhere, or the one
in GPIOZERO_PIN_FACTORY; tests set gpiozero's MockFactory).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from common.config import DoorSection, OutputSection
from common.logs import log_event
from terminal.door_monitor import DoorEvent, DoorMonitor
from terminal.screens import Screen, alarm_screen

log = logging.getLogger("onecard.gpio")

# (on seconds, off seconds, repeats; None = until told otherwise)
BEEPS = {"ok": (0.15, 0.0, 1), "error": (0.08, 0.08, 3), "alarm": (0.5, 0.5, None)}
TICK_SECONDS = 0.05  # the strike's timing resolution when nothing else wakes the door thread


class GpioError(Exception):
    """A pin could not be claimed (wrong number, in use, no GPIO chip); the message names the setting."""


def _claim(make, setting: str):
    from gpiozero import GPIOZeroError

    try:
        return make()
    except (GPIOZeroError, OSError, RuntimeError, ValueError) as exc:
        raise GpioError(
            f"cannot use the GPIO pin in {setting} ({type(exc).__name__}: {exc}); check the number and "
            "that no other program holds it (docs/install.md, Wiring)"
        ) from None


class GpioDoor:
    """The strike relay and the door's inputs around one DoorMonitor.

    Pin callbacks come from gpiozero's thread and the strike timer runs in this object's thread; both only touch the
    monitor under its lock. Door events wait in `take_events()` for the terminal's own thread, which owns the log.
    """

    def __init__(
        self,
        door: DoorSection,
        *,
        open_alarm: str | None = None,
        on_event: Callable[[DoorEvent], None] = lambda e: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        start_thread: bool = True,
    ):
        from gpiozero import Button, OutputDevice

        self.door = door
        self.clock, self.wall_clock, self.on_event = clock, wall_clock, on_event
        self._lock = threading.RLock()
        self._pending: list[tuple[dt.datetime, DoorEvent]] = []
        self._wake = threading.Event()
        self._closed = False
        # Energised means unlocked for a fail-secure strike, locked for a fail-safe maglock.
        self._energise_to_unlock = door.lock == "fail-secure"
        self.strike = (
            _claim(
                lambda: OutputDevice(
                    door.strike_pin, active_high=door.strike_active_high, initial_value=not self._energise_to_unlock
                ),
                "[door].strike_pin",
            )
            if door.strike_pin
            else None
        )
        self.contact = (
            _claim(lambda: Button(door.contact_pin, pull_up=True, bounce_time=None), "[door].contact_pin")
            if door.contact_pin
            else None
        )
        self.rex = (
            _claim(lambda: Button(door.rex_pin, pull_up=True, bounce_time=None), "[door].rex_pin")
            if door.rex_pin
            else None
        )
        # The contact is a reed switch to ground: closed door = pin pulled low = "pressed".
        door_open = bool(self.contact is not None and not self.contact.is_pressed)
        self.monitor = DoorMonitor(
            door.open_seconds, door.held_open_seconds, door_open=door_open, open_alarm=open_alarm, now=clock()
        )
        if self.contact is not None:
            self.contact.when_released = lambda: self._input(lambda now: self.monitor.contact(True, now))
            self.contact.when_pressed = lambda: self._input(lambda now: self.monitor.contact(False, now))
        if self.rex is not None:
            self.rex.when_pressed = lambda: self._input(self.monitor.request_to_exit)
        self._collect()
        log_event(
            log,
            "door.ready",
            strike_pin=door.strike_pin or None,
            lock=door.lock,
            energised=bool(self.strike.value) if self.strike is not None else None,
            unlocked=self.monitor.unlocked,
            door_open=door_open,
            alarm=open_alarm,
            msg="door hardware ready, strike locked",
        )
        self._thread = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, daemon=True, name="door")
            self._thread.start()

    def _input(self, change: Callable[[float], None]) -> None:
        with self._lock:
            if self._closed:
                return
            change(self.clock())
            self._apply()
        self._wake.set()

    def _apply(self) -> None:
        """Strike level from the monitor's state, then hand on its events."""
        if self.strike is not None:
            energise = self.monitor.unlocked == self._energise_to_unlock
            if self.strike.value != energise:
                self.strike.value = energise
        self._collect()

    def _collect(self) -> None:
        for event in self.monitor.take_events():
            self._pending.append((self.wall_clock(), event))
            self.on_event(event)

    def grant(self, seconds: float) -> None:
        self._input(lambda now: self.monitor.grant(now, seconds))

    def hold(self, on: bool) -> None:
        """Normally open (on) or back to normal (off). Lives only in this process: close(), a crash or a kill
        releases the strike, and a restarted terminal starts locked (docs/door-rules.md, "Normally open")."""
        self._input(lambda now: self.monitor.hold(on, now))

    def tick(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.monitor.tick(self.clock())
            self._apply()

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                deadline = self.monitor.next_deadline()
            wait = TICK_SECONDS if deadline is None else max(0.0, min(TICK_SECONDS, deadline - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()
            self.tick()

    def take_events(self) -> list[tuple[dt.datetime, DoorEvent]]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    @property
    def alarm(self) -> str | None:
        return self.monitor.alarm

    def close(self) -> None:
        """Release the strike (de-energise: a fail-secure strike locks) and every pin. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.strike is not None:
                self.strike.off()
                log_event(
                    log,
                    "door.strike_released",
                    pin=self.door.strike_pin,
                    lock=self.door.lock,
                    energised=bool(self.strike.value),
                    msg="strike relay released",
                )
            for device in (self.strike, self.contact, self.rex):
                if device is not None:
                    device.close()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)


class GpioOutputs:
    """Outputs (terminal/outputs.py) on GPIO: LEDs and buzzer here, the strike through GpioDoor (door terminals)."""

    def __init__(self, output: OutputSection, door: GpioDoor | None = None):
        from gpiozero import LED, Buzzer

        self.door = door
        self.green = (
            _claim(lambda: LED(output.green_led_pin), "[output].green_led_pin") if output.green_led_pin else None
        )
        self.red = _claim(lambda: LED(output.red_led_pin), "[output].red_led_pin") if output.red_led_pin else None
        self.buzzer = _claim(lambda: Buzzer(output.buzzer_pin), "[output].buzzer_pin") if output.buzzer_pin else None
        self.text = ""

    def open_relay(self, seconds: float) -> None:
        if self.door is not None:
            self.door.grant(seconds)

    def hold_open(self, on: bool) -> None:
        if self.door is not None:
            self.door.hold(on)

    def light(self, color: str) -> None:
        if self.green is not None:
            self.green.value = color == "green"
        if self.red is not None:
            self.red.value = color == "red"

    def beep(self, pattern: str) -> None:
        if self.buzzer is None:
            return
        if pattern == "off" or pattern not in BEEPS:
            self.buzzer.off()
            return
        on, off, n = BEEPS[pattern]
        self.buzzer.beep(on_time=on, off_time=off, n=n, background=True)

    def display(self, text: str) -> None:
        self.text = text

    def show(self, screen: Screen) -> None:
        self.text = screen.text

    @property
    def door_alarm(self) -> str | None:
        return self.door.alarm if self.door is not None else None

    def take_door_events(self) -> list[tuple[dt.datetime, DoorEvent]]:
        return self.door.take_events() if self.door is not None else []

    def door_event(self, event: DoorEvent) -> None:
        """An alarm sounds and turns the light red until the door closes."""
        if event.kind in ("door.held_open", "door.forced_open"):
            self.light("red")
            self.beep("alarm")
        elif event.kind == "door.closed":
            self.light("off")
            self.beep("off")

    def close(self) -> None:
        try:
            if self.door is not None:
                self.door.close()
        finally:
            for device in (self.green, self.red, self.buzzer):
                if device is not None:
                    device.off()
                    device.close()


def alarm_screen_for(event: DoorEvent) -> Screen:
    return alarm_screen(event.kind, event.message)
