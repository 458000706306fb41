"""Attendance clock: alternate clock-in / clock-out per card and local day, ignoring double taps. No I/O."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from common.config import AttendanceSection
from terminal.decision import AuthenticatedCard, Decision, ListedCard
from terminal.rules import check_blacklist, check_validity

KIND_IN = "attendance.in"
KIND_OUT = "attendance.out"
CLOCK_KINDS = (KIND_IN, KIND_OUT)


def decide_attendance(
    card: AuthenticatedCard,
    blacklist_entry: ListedCard | None,
    last_kind: str | None,
    last_time: dt.datetime | None,
    settings: AttendanceSection,
    now: dt.datetime,
    tz: zoneinfo.ZoneInfo,
) -> Decision:
    """last_kind/last_time: this card's latest clock event on this terminal (UTC-aware), or None."""
    asn = card.info.asn_hex
    local_now = now.astimezone(tz)
    check_blacklist(card, blacklist_entry)
    check_validity(card, local_now.date())
    name = card.read.holder.name or card.read.holder.employee_no
    same_day = last_time is not None and last_time.astimezone(tz).date() == local_now.date()
    if last_time is not None and same_day and (now - last_time).total_seconds() < settings.repeat_window_seconds:
        at = last_time.astimezone(tz).strftime("%H:%M")
        verb = "in" if last_kind == KIND_IN else "out"
        return Decision(
            accepted=True,
            kind="attendance.repeat",
            reason_code="repeat",
            message=f"{name}: already clocked {verb} at {at}",
            card=card,
            asn=asn,
            logged=False,
        )
    kind = KIND_OUT if same_day and last_kind == KIND_IN else KIND_IN
    verb = "in" if kind == KIND_IN else "out"
    return Decision(
        accepted=True,
        kind=kind,
        reason_code=f"clock_{verb}",
        message=f"{name}: clocked {verb} at {local_now.strftime('%H:%M')}",
        card=card,
        asn=asn,
        detail={"counter": card.read.counter},
    )
