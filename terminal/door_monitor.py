"""The door's own state machine: strike timing, door contact, REX, held-open and forced-open alarms. Sans-I/O.

Fed what happened (a grant, a REX press, the contact opening or closing) and the time (monotonic seconds), it says
whether the strike is unlocked and hands back the events to log. The GPIO adapter (terminal/gpio_outputs.py) is the
only thing that touches pins; the terminal's event log is the only memory that survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.door_events import CLOSED, FORCED_OPEN, HELD_OPEN, REX

MESSAGES = {
    HELD_OPEN: "Door held open: please close the door",
    FORCED_OPEN: "Door forced open: security has been alerted",
    CLOSED: "Door closed",
    REX: "Exit button: door unlocked",
}


@dataclass(frozen=True)
class DoorEvent:
    kind: str
    message: str
    detail: dict[str, object] = field(default_factory=dict)


class DoorMonitor:
    """One door. `now` is monotonic seconds from the caller's clock; nothing here reads a clock."""

    def __init__(
        self,
        open_seconds: float,
        held_open_seconds: float,
        *,
        door_open: bool = False,
        open_alarm: str | None = None,
        now: float = 0.0,
    ):
        self.open_seconds = open_seconds
        self.held_open_seconds = held_open_seconds
        self.alarm = open_alarm  # the alarm in force, or None
        self.door_open = door_open
        self._unlock_until: float | None = None  # strike energised (unlocked) until this time
        # Normally open (terminal/door.py normally_open): held unlocked until hold(False). Never restored by the
        # constructor: a restarted terminal starts locked and holds again only when its schedule says so.
        self.holding = False
        self._authorised_until: float | None = None  # the door may be opened until this time without an alarm
        # A door found open at start (e.g. a restart while someone held it) gets the held-open allowance from now.
        self._held_deadline = now + held_open_seconds if door_open and open_alarm is None else None
        self.events: list[DoorEvent] = []
        if open_alarm is not None and not door_open:
            self.alarm = None
            self._emit(CLOSED, alarm=open_alarm, after_restart=True)

    @property
    def unlocked(self) -> bool:
        return self._unlock_until is not None or self.holding

    def hold(self, on: bool, now: float) -> None:
        """Normally open: keep the strike unlocked (on) until told otherwise; opening the door meanwhile is free.
        At the end a door still open gets the held-open allowance from now, then raises door.held_open."""
        if on == self.holding:
            return
        self.holding = on
        if on:
            self._held_deadline = None
        elif self.door_open and self.alarm is None:
            self._held_deadline = now + self.held_open_seconds

    def _emit(self, kind: str, **detail: object) -> None:
        self.events.append(DoorEvent(kind, MESSAGES[kind], detail))

    def take_events(self) -> list[DoorEvent]:
        events, self.events = self.events, []
        return events

    def grant(self, now: float, seconds: float | None = None) -> None:
        """A granted card: unlock for `seconds` (default open_seconds); opening the door meanwhile is expected."""
        seconds = self.open_seconds if seconds is None else seconds
        self._unlock_until = max(self._unlock_until or now, now + seconds)
        self._authorised_until = self._unlock_until
        if self.door_open and self.alarm is None and not self.holding:
            self._held_deadline = now + self.held_open_seconds

    def request_to_exit(self, now: float) -> None:
        """The REX button: unlock exactly as for a grant, and log it."""
        self._emit(REX, seconds=self.open_seconds)
        self.grant(now)

    def contact(self, door_open: bool, now: float) -> None:
        if door_open == self.door_open:
            return
        self.door_open = door_open
        if door_open:
            if self.holding:
                return  # normally open: people pass freely, no held-open timer until the period ends
            if self._authorised_until is not None and now <= self._authorised_until:
                self._held_deadline = now + self.held_open_seconds
            elif self.alarm is None:
                self.alarm = FORCED_OPEN
                self._emit(FORCED_OPEN)
            return
        self._held_deadline = None
        self._authorised_until = None  # one opening per grant
        self._unlock_until = None  # relock as soon as the door has shut behind the person
        if self.alarm is not None:
            alarm, self.alarm = self.alarm, None
            self._emit(CLOSED, alarm=alarm)

    def tick(self, now: float) -> None:
        if self._unlock_until is not None and now >= self._unlock_until:
            self._unlock_until = None
        if self._authorised_until is not None and now > self._authorised_until and not self.door_open:
            self._authorised_until = None
        if self._held_deadline is not None and now >= self._held_deadline and self.alarm is None:
            self._held_deadline = None
            self.alarm = HELD_OPEN
            self._emit(HELD_OPEN, seconds=self.held_open_seconds)

    def next_deadline(self) -> float | None:
        """When tick() next has something to do (for an adapter that sleeps until then)."""
        times = [t for t in (self._unlock_until, self._held_deadline) if t is not None]
        return min(times) if times else None
