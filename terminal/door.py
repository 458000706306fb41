"""Door access: grant or deny an authenticated card at this door, now. Pure decision, no I/O."""

from __future__ import annotations

import datetime as dt

from common.config import DoorSection, TimeProfile
from terminal.decision import AuthenticatedCard, Decision, ListedCard, Refusal
from terminal.rules import check_blacklist, check_validity


def decide_door(
    card: AuthenticatedCard,
    blacklist_entry: ListedCard | None,
    door: DoorSection,
    profiles: dict[int, TimeProfile],
    local_now: dt.datetime,
) -> Decision:
    """local_now: the terminal's local time (time windows are local)."""
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
    if not profile.allows(local_now):
        raise Refusal(
            "outside_hours",
            f"Outside your permitted hours ({profile.describe_day(local_now.weekday())})",
            asn,
            {"time_profile": profile.number},
        )
    name = card.read.holder.name or card.read.holder.employee_no
    return Decision(
        accepted=True,
        kind="door.grant",
        reason_code="granted",
        message=f"Welcome, {name}",
        card=card,
        asn=asn,
        detail={"door_group": door.group, "counter": card.read.counter},
    )
