"""The door's alarm event kinds and how to tell from a log whether an alarm is open: one definition for the
terminal that logs them (terminal/door_monitor.py) and the platform that shows open alarms."""

from __future__ import annotations

HELD_OPEN, FORCED_OPEN, CLOSED, REX = "door.held_open", "door.forced_open", "door.closed", "door.rex"
# Normally open (terminal/door.py normally_open): the strike held unlocked from START until END.
NORMALLY_OPEN_START, NORMALLY_OPEN_END = "door.normally_open", "door.normally_open.end"
NORMALLY_OPEN_KINDS = (NORMALLY_OPEN_START, NORMALLY_OPEN_END)
ALARM_KINDS = (HELD_OPEN, FORCED_OPEN)
DOOR_EVENT_KINDS = (HELD_OPEN, FORCED_OPEN, CLOSED)  # the last of these in a log says whether an alarm is open


def open_alarm_from_log(last_kind: str | None) -> str | None:
    """The alarm still open: the last door event of a log, if it is an alarm (door.closed ends one)."""
    return last_kind if last_kind in ALARM_KINDS else None
