"""Door, attendance and the shared rules as exact decisions: boundary days, window edges, midnight, groups above 8.

Each test states the whole Decision or Refusal the person would see and the log would keep, so a change to any
field (a code, a word of the message, a detail) fails here. Issue 15.
"""

import dataclasses
import datetime as dt
import zoneinfo

import pytest

from common.config import ALWAYS, AttendanceSection, DoorSection, TimeProfile, TimeWindow
from sam.interface import Algorithm
from simulator.inprocess import InProcessReader
from terminal import card_protocol as cp
from terminal.attendance import KIND_IN, KIND_OUT, decide_attendance
from terminal.blacklist import BlacklistEntry
from terminal.decision import AuthenticatedCard, Decision, Refusal
from terminal.door import decide_door
from terminal.rules import check_blacklist, check_validity
from tests.support import make_card, make_sam, make_terminal

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
ASN = bytes.fromhex("A1B2C3D4E5F60718")
FIRST, LAST = dt.date(2026, 3, 1), dt.date(2026, 3, 31)
OFFICE = TimeProfile(
    3,
    "office",
    {
        0: (TimeWindow(dt.time(7, 0), dt.time(20, 0)),),
        1: (TimeWindow(dt.time(7, 0), dt.time(12, 0)), TimeWindow(dt.time(13, 0), dt.time.max)),
    },
)
PROFILES = {0: ALWAYS, 3: OFFICE}


def card(
    groups=frozenset({1}), profile=0, name="Li Na", employee_no="E2002", counter=4242, valid_from=FIRST, valid_to=LAST
) -> AuthenticatedCard:
    info = cp.CardInfo(
        asn=ASN,
        enterprise_id=bytes.fromhex("00010001"),
        status=1,
        key_version=7,
        algorithm=Algorithm.AES128,
        card_type=1,
        app_version=1,
    )
    rights = cp.AccessRights(
        valid_from=valid_from, valid_to=valid_to, door_groups=frozenset(groups), time_profile=profile
    )
    read = cp.AccessReadResponse(
        status=1,
        rights=rights,
        holder=cp.Holder(employee_no=employee_no, name=name),
        counter=counter,
        mac=bytes(8),
        mac_input=b"",
    )
    return AuthenticatedCard(info=info, read=read)


def refusal(call) -> tuple:
    with pytest.raises(Refusal) as caught:
        call()
    r = caught.value
    assert str(r) == r.message
    return r.reason_code, r.message, r.asn, r.detail


def local(day: dt.date, hh: int, mm: int = 0, ss: int = 0, us: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, us, tzinfo=SHANGHAI)


# --- validity: the first and the last day are valid, the days around them are not -----------------------------


@pytest.mark.parametrize("today", [FIRST, LAST, FIRST + dt.timedelta(days=15)])
def test_validity_includes_its_first_and_last_day(today):
    assert check_validity(card(), today) is None


def test_day_before_first_is_not_yet_valid():
    assert refusal(lambda: check_validity(card(), FIRST - dt.timedelta(days=1))) == (
        "not_yet_valid",
        "Card not valid until 2026-03-01",
        "A1B2C3D4E5F60718",
        {},
    )


def test_day_after_last_is_expired():
    assert refusal(lambda: check_validity(card(), LAST + dt.timedelta(days=1))) == (
        "expired",
        "Card expired on 2026-03-31: please see the administrator",
        "A1B2C3D4E5F60718",
        {},
    )


def test_one_day_card_is_valid_on_that_day_only():
    c = card(valid_from=FIRST, valid_to=FIRST)
    check_validity(c, FIRST)
    assert refusal(lambda: check_validity(c, FIRST + dt.timedelta(days=1)))[0] == "expired"
    assert refusal(lambda: check_validity(c, FIRST - dt.timedelta(days=1)))[0] == "not_yet_valid"


def test_door_uses_the_local_date_at_the_boundary():
    """23:30 on the last valid day in Shanghai is 15:30 UTC the same day; 00:30 the next day (local) is expired."""
    door = DoorSection(group=1, open_seconds=4)
    assert decide_door(card(), None, door, PROFILES, local(LAST, 23, 30)).accepted
    assert (
        refusal(lambda: decide_door(card(), None, door, PROFILES, local(LAST + dt.timedelta(days=1), 0, 30)))[0]
        == "expired"
    )
    assert decide_door(card(), None, door, PROFILES, local(FIRST, 0, 0)).accepted


# --- blacklist ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason, message",
    [
        ("lost", "Card reported lost: refused. If it is yours, see the administrator to unlock it"),
        ("cancelled", "Card cancelled: refused"),
        ("replaced", "This card was replaced: use your new card"),
        ("stolen", "Card blocked (stolen): refused, see the administrator"),
    ],
)
def test_blacklist_refusal_names_reason_and_version(reason, message):
    entry = BlacklistEntry(asn=ASN, reason=reason, listed_in_version=17)
    assert refusal(lambda: check_blacklist(card(), entry)) == (
        "blacklisted",
        message,
        "A1B2C3D4E5F60718",
        {"blacklist_reason": reason, "blacklist_version": 17},
    )


def test_no_blacklist_entry_passes():
    assert check_blacklist(card(), None) is None


def test_blacklist_is_checked_before_validity_at_the_door():
    entry = BlacklistEntry(asn=ASN, reason="lost", listed_in_version=2)
    when = local(LAST + dt.timedelta(days=3), 10)
    assert refusal(lambda: decide_door(card(), entry, DoorSection(1, 4), PROFILES, when))[0] == "blacklisted"


# --- door: the whole decision ---------------------------------------------------------------------------------


def test_door_grant_is_exact():
    c = card(groups={1, 5})
    d = decide_door(c, None, DoorSection(group=5, open_seconds=4), PROFILES, local(FIRST, 9))
    assert d == Decision(
        accepted=True,
        kind="door.grant",
        reason_code="granted",
        message="Welcome, Li Na",
        card=c,
        asn="A1B2C3D4E5F60718",
        logged=True,
        detail={"door_group": 5, "counter": 4242},
    )


def test_door_greets_by_employee_number_when_the_name_is_empty():
    d = decide_door(card(name=""), None, DoorSection(1, 4), PROFILES, local(FIRST, 9))
    assert d.message == "Welcome, E2002"


def test_door_without_the_group_is_refused_with_the_groups_sorted():
    assert refusal(
        lambda: decide_door(card(groups={12, 2, 9}), None, DoorSection(1, 4), PROFILES, local(FIRST, 9))
    ) == (
        "no_rights",
        "No access rights for this door",
        "A1B2C3D4E5F60718",
        {"door_group": 1, "card_groups": [2, 9, 12]},
    )


def test_unknown_time_profile_is_refused():
    assert refusal(lambda: decide_door(card(profile=9), None, DoorSection(1, 4), PROFILES, local(FIRST, 9))) == (
        "unknown_time_profile",
        "Time profile 9 is not set up on this door: see the administrator",
        "A1B2C3D4E5F60718",
        {},
    )


MONDAY = dt.date(2026, 3, 2)  # a Monday
TUESDAY = dt.date(2026, 3, 3)


@pytest.mark.parametrize(
    "when, allowed",
    [
        (local(MONDAY, 6, 59, 59, 999999), False),
        (local(MONDAY, 7, 0), True),  # windows include their start
        (local(MONDAY, 19, 59, 59, 999999), True),
        (local(MONDAY, 20, 0), False),  # and exclude their end
        (local(TUESDAY, 12, 0), False),  # the lunch gap
        (local(TUESDAY, 13, 0), True),
        (local(TUESDAY, 23, 59, 59, 999999), True),  # a window up to 24:00 includes the last instant of the day
        (local(dt.date(2026, 3, 4), 10, 0), False),  # Wednesday: no window
    ],
)
def test_time_window_edges(when, allowed):
    c = card(profile=3)
    door = DoorSection(1, 4)
    if allowed:
        assert decide_door(c, None, door, PROFILES, when).reason_code == "granted"
    else:
        code, message, asn, detail = refusal(lambda: decide_door(c, None, door, PROFILES, when))
        assert (code, asn, detail) == ("outside_hours", "A1B2C3D4E5F60718", {"time_profile": 3})
        assert message.startswith("Outside your permitted hours (")


def test_outside_hours_message_describes_the_day():
    c = card(profile=3)
    assert refusal(lambda: decide_door(c, None, DoorSection(1, 4), PROFILES, local(TUESDAY, 12, 30)))[1] == (
        "Outside your permitted hours (Tue 07:00-12:00, 13:00-24:00)"
    )


# --- door groups above 8: issued on a real card, read back over ACCESS READ, used at a door ----------------------


@pytest.mark.parametrize("group", [8, 9, 12, 16, 17, 33, 64])
def test_card_issued_with_a_high_group_opens_only_that_groups_door(tmp_path, group):
    sam = make_sam()
    term, _ = make_terminal(tmp_path, sam, "door")
    term.config = dataclasses.replace(term.config, door=DoorSection(group=group, open_seconds=4))
    applet = make_card(sam, door_groups=frozenset({group}))
    now = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)  # Monday 10:00 in Shanghai
    reader = InProcessReader()
    reader.tap(applet)
    decision = term.handle_tap(reader.wait_for_card(0), now)
    assert (decision.accepted, decision.reason_code, decision.detail["door_group"]) == (True, "granted", group)
    assert decision.card.read.rights.door_groups == {group}
    for other in {1, group - 8, group - 1, group + 1, group + 8} - {group} & set(range(1, 65)):
        term.config = dataclasses.replace(term.config, door=DoorSection(group=other, open_seconds=4))
        reader.tap(applet)
        d = term.handle_tap(reader.wait_for_card(0), now)
        assert (d.accepted, d.reason_code, d.detail.get("card_groups")) == (False, "no_rights", [group]), other


# --- attendance: alternation per local day, double taps, midnight in the terminal's time zone --------------------

SETTINGS = AttendanceSection(repeat_window_seconds=60)


def clock(last_kind, last_time, now, c=None):
    return decide_attendance(c or card(), None, last_kind, last_time, SETTINGS, now, SHANGHAI)


def test_first_tap_clocks_in_exactly():
    c = card()
    now = local(FIRST, 8, 5).astimezone(dt.timezone.utc)
    assert clock(None, None, now, c) == Decision(
        accepted=True,
        kind=KIND_IN,
        reason_code="clock_in",
        message="Li Na: clocked in at 08:05",
        card=c,
        asn="A1B2C3D4E5F60718",
        logged=True,
        detail={"counter": 4242},
    )


def test_clock_out_after_clock_in_the_same_day_exactly():
    c = card(name="")
    morning = local(FIRST, 8, 5).astimezone(dt.timezone.utc)
    evening = local(FIRST, 18, 2).astimezone(dt.timezone.utc)
    assert clock(KIND_IN, morning, evening, c) == Decision(
        accepted=True,
        kind=KIND_OUT,
        reason_code="clock_out",
        message="E2002: clocked out at 18:02",
        card=c,
        asn="A1B2C3D4E5F60718",
        logged=True,
        detail={"counter": 4242},
    )


def test_after_clock_out_the_next_tap_clocks_in_again():
    t0 = local(FIRST, 12, 0).astimezone(dt.timezone.utc)
    assert clock(KIND_OUT, t0, t0 + dt.timedelta(hours=1)).kind == KIND_IN


def test_clocked_in_yesterday_and_never_out_clocks_in_today():
    """Across local midnight: the first tap of a new local day is always a clock-in."""
    yesterday_evening = local(FIRST, 23, 50).astimezone(dt.timezone.utc)
    just_after_midnight = local(FIRST + dt.timedelta(days=1), 0, 5).astimezone(dt.timezone.utc)
    d = clock(KIND_IN, yesterday_evening, just_after_midnight)
    assert (d.kind, d.reason_code, d.message, d.logged) == (KIND_IN, "clock_in", "Li Na: clocked in at 00:05", True)


def test_the_day_is_the_terminals_local_day_not_utc():
    """07:30 and 08:30 Shanghai are 23:30 and 00:30 UTC on different UTC days, but one local day."""
    t_in = local(FIRST, 7, 30).astimezone(dt.timezone.utc)
    t_out = local(FIRST, 8, 30).astimezone(dt.timezone.utc)
    assert t_in.date() != t_out.date()
    assert clock(KIND_IN, t_in, t_out).kind == KIND_OUT
    # and 23:59 / 00:01 local are the same UTC day but two local days
    late = local(FIRST, 23, 59).astimezone(dt.timezone.utc)
    early = local(FIRST + dt.timedelta(days=1), 0, 1).astimezone(dt.timezone.utc)
    assert late.date() == early.date()
    assert clock(KIND_IN, late, early).kind == KIND_IN


@pytest.mark.parametrize("last_kind, verb", [(KIND_IN, "in"), (KIND_OUT, "out")])
def test_double_tap_within_the_window_is_a_repeat_not_logged(last_kind, verb):
    c = card()
    last = local(FIRST, 9, 7).astimezone(dt.timezone.utc)
    d = clock(last_kind, last, last + dt.timedelta(seconds=59.999), c)
    assert d == Decision(
        accepted=True,
        kind="attendance.repeat",
        reason_code="repeat",
        message=f"Li Na: already clocked {verb} at 09:07",
        card=c,
        asn="A1B2C3D4E5F60718",
        logged=False,
    )


def test_repeat_window_edge():
    last = local(FIRST, 9, 7).astimezone(dt.timezone.utc)
    assert clock(KIND_IN, last, last + dt.timedelta(seconds=60)).kind == KIND_OUT  # exactly 60 s: a real tap
    assert clock(KIND_IN, last, last + dt.timedelta(seconds=59)).kind == "attendance.repeat"


def test_double_tap_across_midnight_is_not_a_repeat():
    last = local(FIRST, 23, 59, 50).astimezone(dt.timezone.utc)
    d = clock(KIND_OUT, last, last + dt.timedelta(seconds=20))
    assert (d.kind, d.logged) == (KIND_IN, True)


def test_attendance_checks_blacklist_and_local_validity():
    entry = BlacklistEntry(asn=ASN, reason="cancelled", listed_in_version=4)
    now = local(FIRST, 9).astimezone(dt.timezone.utc)
    assert refusal(lambda: decide_attendance(card(), entry, None, None, SETTINGS, now, SHANGHAI))[0] == "blacklisted"
    # 00:30 on the first valid day in Shanghai is still the day before in UTC: valid, by the local date
    early = local(FIRST, 0, 30).astimezone(dt.timezone.utc)
    assert early.date() < FIRST
    assert clock(None, None, early).kind == KIND_IN
    late = local(LAST + dt.timedelta(days=1), 0, 30).astimezone(dt.timezone.utc)
    assert late.date() == LAST
    assert refusal(lambda: clock(None, None, late))[0] == "expired"
