"""Door access: grant or deny an authenticated card at this door, now; whether the door is normally open now;
anti-passback in an area. Pure decisions, no I/O (docs/door-rules.md)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from common.config import EMPTY_HOLIDAYS, DoorSection, Holidays, TimeProfile
from terminal.decision import AuthenticatedCard, Decision, ListedCard, Refusal
from terminal.rules import check_blacklist, check_validity

ENTRY, EXIT = "entry", "exit"


@dataclass(frozen=True)
class Passage:
    """A card's passage through a door of an anti-passback area, as this terminal knows it."""

    direction: str  # entry | exit
    time: dt.datetime
    terminal_id: str


@dataclass(frozen=True)
class PassbackView:
    """What this terminal knows of a card in its area: its latest passage (this terminal's own log, or relayed by
    the platform from another terminal), and whether the passages at the area's other terminals are current."""

    last: Passage | None
    current: bool


def decide_door(
    card: AuthenticatedCard,
    blacklist_entry: ListedCard | None,
    door: DoorSection,
    profiles: dict[int, TimeProfile],
    local_now: dt.datetime,
    *,
    holidays: Holidays = EMPTY_HOLIDAYS,
    direction: str | None = None,
    passback: PassbackView | None = None,
) -> Decision:
    """local_now: the terminal's local time (time windows and holidays are local). direction: the reader the card
    was tapped on (None: the [reader], i.e. door.direction). passback: needed when door.anti_passback is on."""
    asn = card.info.asn_hex
    check_blacklist(card, blacklist_entry)
    check_validity(card, local_now.date())
    rights = card.read.rights
    if door.group not in rights.door_groups:
        raise Refusal(
            "no_rights",
            "No access rights for this door",
            asn,
            {"door_group": door.group, "card_groups": sorted(rights.door_groups)},
        )
    profile = profiles.get(rights.time_profile)
    if profile is None:
        raise Refusal(
            "unknown_time_profile",
            f"Time profile {rights.time_profile} is not set up on this door: see the administrator",
            asn,
        )
    if not profile.allows(local_now, holidays):
        detail: dict[str, object] = {"time_profile": profile.number}
        if local_now.date() in holidays:
            detail["holiday"] = holidays[local_now.date()]
        raise Refusal(
            "outside_hours",
            f"Outside your permitted hours ({profile.describe_date(local_now.date(), holidays)})",
            asn,
            detail,
        )
    way = direction or door.direction
    granted: dict[str, object] = {"door_group": door.group, "counter": card.read.counter}
    if door.area:
        granted.update(area=door.area, direction=way)
    if door.anti_passback == "on" and passback is not None:
        violation = passback_violation(way, passback.last)
        if violation is not None and passback.last is not None:
            detail = _passback_detail(door, way, passback.last, passback.current)
            if passback.current or door.passback_offline == "hard":
                raise Refusal("passback", violation, asn, detail)
            granted.update(passback="offline_allowed", last_passage=detail)
    name = card.read.holder.name or card.read.holder.employee_no
    return Decision(
        accepted=True,
        kind="door.grant",
        reason_code="granted",
        message=f"Welcome, {name}",
        card=card,
        asn=asn,
        detail=granted,
    )


def passback_violation(direction: str, last: Passage | None) -> str | None:
    """The refusal's sentence if this passage repeats the card's last one (in after in, out after out), else None.
    A card with no known passage in the area may go either way (its first use after the rule is switched on)."""
    if last is None or last.direction != direction:
        return None
    at = last.time.strftime("%m-%d %H:%M")
    if direction == ENTRY:
        return f"Anti-passback: you entered at {at} and have not left; exit first"
    return f"Anti-passback: you left at {at} and have not entered; enter first"


def _passback_detail(door: DoorSection, direction: str, last: Passage, current: bool) -> dict[str, object]:
    return {
        "area": door.area,
        "direction": direction,
        "last_direction": last.direction,
        "last_terminal": last.terminal_id,
        "last_time": last.time.isoformat(),
        "current": current,
    }


def normally_open(
    door: DoorSection,
    profiles: dict[int, TimeProfile],
    local_now: dt.datetime,
    started: dt.datetime | None,
    holidays: Holidays = EMPTY_HOLIDAYS,
) -> bool:
    """Whether the strike is held unlocked now by the door's normally-open schedule.

    started: the local time the first card opened the current normally-open period (first_card_unlock), or None.
    It counts only if it lies in the same window of the same date as now: every window needs its own first card.
    """
    profile = profiles.get(door.normally_open_profile) if door.normally_open_profile else None
    if profile is None:
        return False
    window = next((w for w in profile.windows_on(local_now.date(), holidays) if w.contains(local_now.time())), None)
    if window is None:
        return False
    if not door.first_card_unlock:
        return True
    return started is not None and started.date() == local_now.date() and window.contains(started.time())
