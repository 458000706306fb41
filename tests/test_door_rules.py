"""Issue 13, door half: holiday calendar, normally-open schedules (first_card_unlock, restart inside a window),
anti-passback between the entry and exit readers of an area, each at its boundaries; the configuration checks.

The cores (terminal/door.py, terminal/door_monitor.py) get exact decisions with time passed in; the terminal gets
real cards through the in-process reader and its own SQLite log.
"""

import dataclasses
import datetime as dt
import zoneinfo
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import (
    ALWAYS,
    ConfigError,
    DoorSection,
    TimeProfile,
    TimeWindow,
    apply_platform_document,
    load_config,
    validate_platform_document,
)
from common.door_events import NORMALLY_OPEN_END, NORMALLY_OPEN_START
from simulator.inprocess import InProcessReader
from terminal.door import ENTRY, EXIT, Passage, PassbackView, decide_door, normally_open, passback_violation
from terminal.door_monitor import FORCED_OPEN, HELD_OPEN, DoorMonitor
from tests.support import make_card, make_sam, make_terminal
from tests.test_mutation_door_rules import card, refusal

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")  # a zone with DST: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00
NATIONAL_DAY = dt.date(2026, 10, 1)  # a Thursday
HOLIDAYS = MappingProxyType({NATIONAL_DAY: "National Day"})
OFFICE = TimeProfile(
    3,
    "office",
    {d: (TimeWindow(dt.time(7, 0), dt.time(20, 0)),) for d in range(5)},
    holiday=(TimeWindow(dt.time(9, 0), dt.time(12, 0)),),
)
CLOSED_ON_HOLIDAYS = TimeProfile(4, "weekdays", {d: (TimeWindow(dt.time(7, 0), dt.time(20, 0)),) for d in range(5)})
LUNCH = TimeProfile(
    5,
    "canteen lunch",
    {d: (TimeWindow(dt.time(11, 30), dt.time(13, 0)), TimeWindow(dt.time(17, 0), dt.time(19, 0))) for d in range(7)},
)
PROFILES = {0: ALWAYS, 3: OFFICE, 4: CLOSED_ON_HOLIDAYS, 5: LUNCH}
FIRST_VALID, LAST_VALID = dt.date(2026, 1, 1), dt.date(2026, 12, 31)


def at(day: dt.date, hh: int, mm: int = 0, ss: int = 0, us: int = 0, tz=SHANGHAI) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, us, tzinfo=tz)


def a_card(profile=3):
    return card(profile=profile, valid_from=FIRST_VALID, valid_to=LAST_VALID)


def door(**kw) -> DoorSection:
    return DoorSection(group=1, open_seconds=4, **kw)


# --- holiday calendar: the holiday's windows replace the weekday's, whatever the weekday -------------------------


def test_holiday_windows_replace_the_weekday_windows_at_their_edges():
    d = door()
    # 2026-10-01 is a Thursday: 07:00-20:00 on a normal Thursday, only 09:00-12:00 on National Day.
    normal_thursday = dt.date(2026, 10, 8)
    assert decide_door(a_card(), None, d, PROFILES, at(normal_thursday, 7, 0), holidays=HOLIDAYS).accepted
    for t in (at(NATIONAL_DAY, 9, 0), at(NATIONAL_DAY, 11, 59, 59, 999999)):
        assert decide_door(a_card(), None, d, PROFILES, t, holidays=HOLIDAYS).accepted
    for t in (at(NATIONAL_DAY, 8, 59, 59, 999999), at(NATIONAL_DAY, 12, 0), at(NATIONAL_DAY, 19, 0)):
        assert refusal(lambda t=t: decide_door(a_card(), None, d, PROFILES, t, holidays=HOLIDAYS)) == (
            "outside_hours",
            "Outside your permitted hours (holiday National Day: 09:00-12:00)",
            "A1B2C3D4E5F60718",
            {"time_profile": 3, "holiday": "National Day"},
        )


def test_a_profile_without_holiday_windows_is_closed_all_holiday_and_always_stays_open():
    d = door()
    assert refusal(lambda: decide_door(a_card(4), None, d, PROFILES, at(NATIONAL_DAY, 10), holidays=HOLIDAYS))[1] == (
        "Outside your permitted hours (none on holiday National Day)"
    )
    assert decide_door(a_card(0), None, d, PROFILES, at(NATIONAL_DAY, 3), holidays=HOLIDAYS).accepted


def test_a_holiday_is_the_local_date_midnight_in_the_terminals_time_zone():
    """23:59:59.999999 on 30 September is an ordinary Wednesday (profile 4 open until 20:00: closed anyway);
    00:00 on 1 October in Shanghai is 16:00 UTC on 30 September: already the holiday."""
    always_weekdays = TimeProfile(6, "24h weekdays", {d: (TimeWindow(dt.time(0), dt.time.max),) for d in range(5)})
    profiles = {6: always_weekdays}
    before = at(dt.date(2026, 9, 30), 23, 59, 59, 999999)
    assert decide_door(a_card(6), None, door(), profiles, before, holidays=HOLIDAYS).accepted
    utc_midnight_eve = dt.datetime(2026, 9, 30, 16, 0, tzinfo=dt.timezone.utc).astimezone(SHANGHAI)
    assert refusal(lambda: decide_door(a_card(6), None, door(), profiles, utc_midnight_eve, holidays=HOLIDAYS))[0] == (
        "outside_hours"
    )
    assert decide_door(a_card(6), None, door(), profiles, at(dt.date(2026, 10, 2), 0, 0), holidays=HOLIDAYS).accepted


def test_windows_in_a_zone_with_dst_follow_the_local_wall_clock():
    """Europe/Berlin, the spring-forward Monday after 29 March 2026 and the autumn Sunday: windows are wall-clock."""
    monday_after_change = dt.date(2026, 3, 30)
    utc = dt.datetime(2026, 3, 30, 5, 0, tzinfo=dt.timezone.utc)  # 07:00 CEST (UTC+2): the window opens
    assert decide_door(a_card(4), None, door(), PROFILES, utc.astimezone(BERLIN)).accepted
    utc_before = dt.datetime(2026, 3, 30, 4, 59, 59, tzinfo=dt.timezone.utc)  # 06:59:59 local: still shut
    assert refusal(lambda: decide_door(a_card(4), None, door(), PROFILES, utc_before.astimezone(BERLIN)))[0] == (
        "outside_hours"
    )
    friday_winter = dt.datetime(2026, 10, 30, 6, 0, tzinfo=dt.timezone.utc)  # 07:00 CET (UTC+1)
    assert decide_door(a_card(4), None, door(), PROFILES, friday_winter.astimezone(BERLIN)).accepted
    assert monday_after_change.weekday() == 0


@settings(max_examples=300, deadline=None)
@given(
    day=st.dates(dt.date(2026, 1, 1), dt.date(2026, 12, 31)),
    seconds=st.integers(0, 86399),
    holiday=st.booleans(),
    profile=st.sampled_from([3, 4, 5]),
)
def test_a_grant_is_always_inside_a_window_of_that_date(day, seconds, holiday, profile):
    holidays = MappingProxyType({day: "h"}) if holiday else HOLIDAYS
    now = at(day, 0) + dt.timedelta(seconds=seconds)
    windows = PROFILES[profile].windows_on(now.date(), holidays)
    inside = any(w.start <= now.time() < w.end for w in windows)
    c = card(profile=profile, valid_from=FIRST_VALID, valid_to=LAST_VALID)
    try:
        granted = decide_door(c, None, door(), PROFILES, now, holidays=holidays).accepted
    except Exception as exc:  # only a Refusal may come out
        assert type(exc).__name__ == "Refusal" and exc.reason_code == "outside_hours"
        granted = False
    assert granted == inside


# --- normally open -----------------------------------------------------------------------------------------------


def test_normally_open_follows_the_windows_edges_and_holidays():
    d = door(normally_open_profile=5)
    monday = dt.date(2026, 11, 23)
    assert not normally_open(d, PROFILES, at(monday, 11, 29, 59, 999999), None)
    assert normally_open(d, PROFILES, at(monday, 11, 30), None)
    assert normally_open(d, PROFILES, at(monday, 12, 59, 59, 999999), None)
    assert not normally_open(d, PROFILES, at(monday, 13, 0), None)
    assert normally_open(d, PROFILES, at(monday, 17, 0), None)
    # On a holiday the profile's holiday windows apply: LUNCH has none, so the canteen door stays locked.
    assert not normally_open(d, PROFILES, at(NATIONAL_DAY, 12, 0), None, HOLIDAYS)
    assert not normally_open(door(), PROFILES, at(monday, 12, 0), None)  # profile 0: never
    assert not normally_open(door(normally_open_profile=9), PROFILES, at(monday, 12, 0), None)  # undefined: never


def test_first_card_unlock_needs_a_card_in_the_same_window_of_the_same_day():
    d = door(normally_open_profile=5, first_card_unlock=True)
    monday = dt.date(2026, 11, 23)
    assert not normally_open(d, PROFILES, at(monday, 12, 0), None)
    assert normally_open(d, PROFILES, at(monday, 12, 0), at(monday, 11, 30))
    assert not normally_open(d, PROFILES, at(monday, 12, 0), at(monday, 11, 29, 59))  # before the window: not it
    assert not normally_open(d, PROFILES, at(monday, 17, 30), at(monday, 11, 45))  # the evening needs its own card
    assert not normally_open(d, PROFILES, at(monday + dt.timedelta(days=1), 12, 0), at(monday, 11, 45))
    assert not normally_open(d, PROFILES, at(monday, 13, 0), at(monday, 11, 45))  # the window's end closes it


def test_monitor_holds_the_strike_without_alarms_then_relocks_and_times_a_propped_door():
    m = DoorMonitor(4, 30)
    m.hold(True, 0)
    assert m.unlocked
    m.contact(True, 1)
    m.tick(500)  # open for minutes while normally open: no alarm
    assert m.alarm is None and m.unlocked and m.take_events() == []
    m.hold(False, 600)
    assert not m.unlocked
    m.tick(629.9)
    assert m.alarm is None
    m.tick(630)
    assert m.alarm == HELD_OPEN  # still propped open 30 s after the period ended


def test_monitor_opening_after_the_period_is_forced_and_a_restart_starts_locked():
    m = DoorMonitor(4, 30)
    m.hold(True, 0)
    m.hold(True, 1)  # idempotent
    m.hold(False, 2)
    m.contact(True, 3)
    assert m.alarm == FORCED_OPEN
    assert not DoorMonitor(4, 30, door_open=False).unlocked  # the constructor never restores a hold
    shut = DoorMonitor(4, 30)
    shut.hold(True, 0)
    shut.hold(False, 1)  # the period ends with the door shut: nothing to time
    assert shut.next_deadline() is None
    shut.tick(100)
    assert shut.alarm is None and shut.take_events() == []


# --- anti-passback -------------------------------------------------------------------------------------------


def apb(**kw) -> DoorSection:
    return door(area=7, anti_passback="on", **kw)


def view(direction, current=True, terminal="000000000201"):
    return PassbackView(Passage(direction, at(dt.date(2026, 11, 23), 8, 5), terminal), current)


def test_entry_after_entry_is_refused_and_exit_then_entry_is_allowed():
    now = at(dt.date(2026, 11, 23), 9, 0)
    assert refusal(lambda: decide_door(a_card(0), None, apb(), PROFILES, now, passback=view(ENTRY))) == (
        "passback",
        "Anti-passback: you entered at 11-23 08:05 and have not left; exit first",
        "A1B2C3D4E5F60718",
        {
            "area": 7,
            "direction": "entry",
            "last_direction": "entry",
            "last_terminal": "000000000201",
            "last_time": "2026-11-23T08:05:00+08:00",
            "current": True,
        },
    )
    d = decide_door(a_card(0), None, apb(), PROFILES, now, passback=view(EXIT))
    assert (d.accepted, d.detail) == (True, {"door_group": 1, "counter": 4242, "area": 7, "direction": "entry"})
    assert decide_door(a_card(0), None, apb(), PROFILES, now, direction=EXIT, passback=view(ENTRY)).accepted
    assert refusal(lambda: decide_door(a_card(0), None, apb(), PROFILES, now, direction=EXIT, passback=view(EXIT)))[
        1
    ] == ("Anti-passback: you left at 11-23 08:05 and have not entered; enter first")
    # No known passage: the first use after the rule is switched on goes either way.
    for way in (ENTRY, EXIT):
        assert decide_door(a_card(0), None, apb(), PROFILES, now, direction=way, passback=PassbackView(None, True))


def test_offline_soft_logs_and_allows_offline_hard_refuses():
    now = at(dt.date(2026, 11, 23), 9, 0)
    soft = decide_door(a_card(0), None, apb(), PROFILES, now, passback=view(ENTRY, current=False))
    assert soft.accepted and soft.detail["passback"] == "offline_allowed"
    assert soft.detail["last_passage"] == {
        "area": 7,
        "direction": "entry",
        "last_direction": "entry",
        "last_terminal": "000000000201",
        "last_time": "2026-11-23T08:05:00+08:00",
        "current": False,
    }
    exit_soft = decide_door(a_card(0), None, apb(), PROFILES, now, direction=EXIT, passback=view(EXIT, False))
    assert exit_soft.detail["last_passage"]["direction"] == "exit"
    # The rule on but no view handed in (a caller that knows nothing): nothing to contradict.
    assert decide_door(a_card(0), None, apb(), PROFILES, now).accepted
    assert passback_violation(ENTRY, None) is None
    hard = apb(passback_offline="hard")
    assert refusal(lambda: decide_door(a_card(0), None, hard, PROFILES, now, passback=view(ENTRY, False)))[0] == (
        "passback"
    )
    # Online, soft changes nothing: a known violation is refused.
    assert refusal(lambda: decide_door(a_card(0), None, apb(), PROFILES, now, passback=view(ENTRY, True)))[0] == (
        "passback"
    )
    off = door(area=7)
    assert decide_door(a_card(0), None, off, PROFILES, now, passback=view(ENTRY)).accepted  # rule off: ignored


@given(st.lists(st.sampled_from([ENTRY, EXIT]), max_size=30))
def test_passback_allows_exactly_the_alternating_passages(taps):
    """Replaying taps through the rule: the granted passages always alternate; a refused one changes nothing."""
    last = None
    for way in taps:
        violation = passback_violation(way, last)
        assert (violation is None) == (last is None or last.direction != way)
        if violation is None:
            last = Passage(way, at(dt.date(2026, 11, 23), 9), "000000000201")


# --- configuration: firmware.toml and the platform document, one validator ---------------------------------------

BASE = """[terminal]
id = "000000000101"
kind = "door"
enterprise_id = "00010001"
database = "ev.db"
blacklist = "bl.db"
[reader]
driver = "simulator"
card = "card.json"
[sam]
keystore = "k"
passphrase_file = "p"
[time_profiles.5]
mon = ["11:30-13:00"]
holiday = ["10:00-11:00"]
"""


def cfg(tmp_path, extra):
    p = tmp_path / "f.toml"
    p.write_text(BASE + ("" if "[door]" in extra else "[door]\n") + extra, encoding="utf-8")
    return load_config(p)


def test_holidays_shifts_and_door_rules_are_read_from_firmware_toml(tmp_path):
    c = cfg(
        tmp_path,
        '[door]\nnormally_open_profile = 5\nfirst_card_unlock = true\narea = 3\nanti_passback = "on"\n'
        'passback_offline = "hard"\n[holidays]\n2026-10-01 = "National Day"\n2026-05-01 = "Labour Day"\n'
        '[shifts.day]\nstart = "09:00"\nend = "18:00"\ngrace_minutes = 5\n',
    )
    assert dict(c.holidays) == {dt.date(2026, 5, 1): "Labour Day", NATIONAL_DAY: "National Day"}
    assert c.time_profiles[5].holiday == (TimeWindow(dt.time(10), dt.time(11)),)
    assert (c.door.normally_open_profile, c.door.first_card_unlock, c.door.area) == (5, True, 3)
    assert (c.door.anti_passback, c.door.passback_offline) == ("on", "hard")
    assert c.shifts["day"].grace_minutes == 5 and c.shifts["day"].days == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "extra, words",
    [
        ('[holidays]\n2026-13-01 = "x"\n', "[holidays].2026-13-01 is not a date YYYY-MM-DD"),
        ('[holidays]\n"1 Oct" = "x"\n', "[holidays].1 Oct is not a date"),
        ("[holidays]\n2026-10-01 = 1\n", "[holidays].2026-10-01 must name the holiday"),
        ('[holidays]\n2026-10-01 = " "\n', "must name the holiday"),
        ("[door]\nnormally_open_profile = 6\n", "normally_open_profile = 6 is not a defined time profile"),
        ("[door]\nnormally_open_profile = 256\n", "is outside 0..255"),
        ("[door]\nfirst_card_unlock = true\n", "first_card_unlock is set without normally_open_profile"),
        ('[door]\nanti_passback = "on"\n', "anti_passback is on without an area"),
        ('[door]\nanti_passback = "hard"\narea = 1\n', "[door].anti_passback = 'hard' is not one of off, on"),
        ('[door]\npassback_offline = "lenient"\n', "is not one of soft, hard"),
        ('[door]\ndirection = "in"\n', "is not one of entry, exit"),
        ("[door]\narea = 300\n", "area = 300 is outside 0..255"),
        ("[door]\npassback_fresh_seconds = 0\n", "passback_fresh_seconds is outside"),
        ('[time_profiles.6]\nholiday = ["12:00-11:00"]\n', "[time_profiles.6].holiday window '12:00-11:00' ends"),
        ('[time_profiles.5]\nholiday = ["10:00-11:00"]\n', None),
        ('[shifts.day]\nstart = "9am"\nend = "18:00"\n', "[shifts.day].start = '9am' is not HH:MM"),
        ('[shifts.day]\nstart = "18:00"\nend = "09:00"\n', "[shifts.day].end is not after start"),
        ('[shifts.day]\nstart = "09:00"\nend = "18:00"\ngrace_minutes = 241\n', "grace_minutes = 241"),
        ('[shifts.day]\nstart = "09:00"\nend = "18:00"\ndays = ["monday"]\n', "[shifts.day].days"),
        ('[shifts.day]\nstart = "09:00"\nend = "18:00"\ngrace_minute = 5\n', "did you mean 'grace_minutes'"),
        ('[exit_reader]\ndriver = "simulator"\ncard = "c"\n', "[exit_reader] needs [door].area"),
    ],
)
def test_bad_rules_are_refused_naming_the_key_and_the_fix(tmp_path, extra, words):
    if words is None:  # a duplicate table in TOML: refused by the parser with its place
        with pytest.raises(ConfigError, match="not valid TOML"):
            cfg(tmp_path, extra)
        return
    with pytest.raises(ConfigError) as caught:
        cfg(tmp_path, extra)
    assert words in str(caught.value) and ";" in str(caught.value)


def test_the_platform_document_sets_holidays_and_door_rules_through_the_same_validator(tmp_path):
    c = cfg(tmp_path, "")
    doc = {
        "holidays": {"2026-10-01": "National Day"},
        "time_profiles": {"5": {"mon": ["11:30-13:00"]}},
        "doors": {"000000000101": {"normally_open_profile": 5, "area": 2, "anti_passback": "on"}},
        "shifts": {"day": {"start": "09:00", "end": "18:00", "grace_minutes": 10}},
    }
    validate_platform_document(doc)
    applied = apply_platform_document(c, 3, doc)
    assert applied.holidays == {NATIONAL_DAY: "National Day"}
    assert (applied.door.normally_open_profile, applied.door.area, applied.door.anti_passback) == (5, 2, "on")
    assert applied.shifts["day"].grace_minutes == 10
    for bad, words in (
        ({"holidays": {"2026-02-30": "x"}}, "[holidays].2026-02-30 is not a date"),
        ({"holidays": ["2026-10-01"]}, "holidays must be a table of dates"),
        ({"doors": {"000000000101": {"anti_passback": "on"}}}, "anti_passback is on without an area"),
        ({"shifts": {"day": {"start": "09:00"}}}, "[shifts.day].end is missing"),
    ):
        with pytest.raises(ConfigError) as caught:
            validate_platform_document(bad)
        assert words in str(caught.value)
    # A profile that exists nowhere this terminal looks: refused when applied, the terminal keeps its settings.
    with pytest.raises(ConfigError, match="normally_open_profile = 9 is not a defined time profile"):
        apply_platform_document(c, 4, {"doors": {"000000000101": {"normally_open_profile": 9}}})


# --- the terminal: holidays, normally open with a first card, a restart inside the window, anti-passback ---------


def door_terminal(tmp_path, sam, **door_settings):
    term, screen = make_terminal(tmp_path, sam, "door")
    term.config = dataclasses.replace(
        term.config,
        door=dataclasses.replace(term.config.door, **door_settings),
        time_profiles={**term.config.time_profiles, 5: LUNCH},
        holidays=HOLIDAYS,
    )
    return term, screen


def shanghai(day: dt.date, hh: int, mm: int = 0) -> dt.datetime:
    return at(day, hh, mm).astimezone(dt.timezone.utc)


def kinds(term):
    return [e.kind for e in term.event_log.events()]


def test_first_card_opens_the_lunch_window_a_restart_resumes_it_and_its_end_relocks(tmp_path):
    sam = make_sam()
    applet = make_card(sam)
    monday = dt.date(2026, 11, 23)
    term, screen = door_terminal(tmp_path, sam, normally_open_profile=5, first_card_unlock=True)
    term.update_normally_open(shanghai(monday, 11, 40))
    assert not term.holding_open  # in the window, but no first card yet
    reader = InProcessReader()
    reader.tap(applet)
    d = term.handle_tap(reader.wait_for_card(0), shanghai(monday, 11, 45))
    assert d.accepted and term.holding_open
    assert "relay: door held unlocked (normally open)" in screen.getvalue()
    start = term.event_log.events()[-1]
    assert (start.kind, start.detail) == (NORMALLY_OPEN_START, {"profile": 5, "first_card": d.asn})
    # The terminal is killed at 12:00 (nothing in it runs: the strike drops, fail-secure locks); a new one starts.
    term.event_log.close()
    again, screen2 = door_terminal(
        tmp_path / ".." / tmp_path.name, sam, normally_open_profile=5, first_card_unlock=True
    )
    assert not again.holding_open  # starts locked, whatever the log says
    again.update_normally_open(shanghai(monday, 12, 5))
    assert again.holding_open and kinds(again).count(NORMALLY_OPEN_START) == 1  # resumed: same period, not re-logged
    again.update_normally_open(shanghai(monday, 13, 0))
    assert not again.holding_open and kinds(again)[-1] == NORMALLY_OPEN_END
    assert "relay: normally-open period over, locked" in screen2.getvalue()
    # The evening window needs its own first card.
    again.update_normally_open(shanghai(monday, 17, 30))
    assert not again.holding_open


def test_restart_after_the_window_logs_its_end_and_holiday_keeps_it_shut(tmp_path):
    sam = make_sam()
    monday = dt.date(2026, 11, 23)
    term, _ = door_terminal(tmp_path, sam, normally_open_profile=5)
    term.update_normally_open(shanghai(monday, 12, 0))
    assert term.holding_open and kinds(term) == [NORMALLY_OPEN_START]
    term.event_log.close()
    later, _ = door_terminal(tmp_path, sam, normally_open_profile=5)
    later.update_normally_open(shanghai(monday, 14, 0))
    end = later.event_log.events()[-1]
    assert (end.kind, end.detail) == (NORMALLY_OPEN_END, {"profile": 5, "after_restart": True})
    later.update_normally_open(shanghai(NATIONAL_DAY, 12, 0))
    assert not later.holding_open


def test_two_readers_of_one_terminal_enforce_anti_passback_from_its_own_log(tmp_path):
    sam = make_sam()
    applet = make_card(sam)
    monday = dt.date(2026, 11, 23)
    term, _ = door_terminal(tmp_path, sam, area=4, anti_passback="on")
    reader = InProcessReader()

    def tap(direction, hh, mm):
        reader.tap(applet)
        return term.handle_tap(reader.wait_for_card(0), shanghai(monday, hh, mm), direction=direction)

    assert tap(ENTRY, 8, 0).accepted
    again = tap(ENTRY, 8, 1)
    assert (again.accepted, again.reason_code) == (False, "passback")
    assert again.message == "Anti-passback: you entered at 11-23 08:00 and have not left; exit first"
    assert tap(EXIT, 12, 0).accepted
    assert tap(EXIT, 12, 1).reason_code == "passback"
    assert tap(ENTRY, 13, 0).accepted
    # A standalone terminal's log is complete (current): soft changes nothing for it.
    assert term.passback_view(again.asn, shanghai(monday, 13, 1)).current


def test_a_door_with_an_exit_reader_serves_both_through_its_tap_loop(tmp_path):
    """[reader] is the entry, [exit_reader] the exit: the tap loop serves whichever is tapped, and anti-passback
    refuses the second entry until the card has left through the exit reader."""
    import threading
    import time

    from terminal.event_log import EventLog
    from terminal.reader import TwoReaders

    sam = make_sam()
    applet = make_card(sam)
    entry, exit_ = InProcessReader("entry"), InProcessReader("exit")
    readers = TwoReaders(entry, ENTRY, exit_, EXIT)
    stop, ready = threading.Event(), threading.Event()
    minutes = iter(range(10_000))

    def clock():
        return shanghai(dt.date(2026, 11, 23), 8) + dt.timedelta(minutes=next(minutes))

    def serve():  # the terminal's thread owns its SQLite connections, as in the process
        term, _ = door_terminal(tmp_path, sam, area=4, anti_passback="on")
        ready.set()
        term.run(readers, clock, stop, 0.05)

    def logged():
        with EventLog.open_readonly(tmp_path / "door.db") as log:
            return [(e.kind, e.reason_code, e.detail.get("direction")) for e in log.events()]

    def tap(reader):
        before = len(logged())
        reader.tap(applet)
        deadline = time.monotonic() + 10
        while len(logged()) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        reader.remove()
        time.sleep(0.3)  # the loop sees the card gone (a person steps away) before the next tap

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        for reader in (entry, entry, exit_, entry):
            tap(reader)
    finally:
        stop.set()
        thread.join(10)
    assert logged() == [
        ("door.grant", "granted", "entry"),
        ("door.deny", "passback", "entry"),
        ("door.grant", "granted", "exit"),
        ("door.grant", "granted", "entry"),
    ]
    assert readers.name == "entry (entry) + exit (exit)"


def test_exit_reader_in_firmware_toml_opens_two_readers(tmp_path):
    from terminal.adapters import open_reader
    from terminal.reader import TwoReaders

    c = cfg(tmp_path, '[door]\narea = 2\ndirection = "exit"\n[exit_reader]\ndriver = "simulator"\ncard = "c2.json"\n')
    assert c.exit_reader is not None and c.exit_reader.card == tmp_path / "c2.json"
    opened = []
    r = open_reader(c, simulated_reader=lambda card: opened.append(card) or InProcessReader(card.name))
    assert isinstance(r, TwoReaders) and opened == [tmp_path / "card.json", tmp_path / "c2.json"]
    assert r.name == "card.json (exit) + c2.json (entry)"


def test_check_config_shows_holidays_normally_open_and_the_area(tmp_path, capsys):
    from onecard.cli import main

    cfg(
        tmp_path,
        '[door]\nnormally_open_profile = 5\nfirst_card_unlock = true\narea = 3\nanti_passback = "on"\n'
        '[exit_reader]\ndriver = "simulator"\ncard = "c2.json"\n[holidays]\n2026-10-01 = "National Day"\n',
    )
    assert main(["terminal", "check-config", "--config", str(tmp_path / "f.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "time profile 5 'profile 5': Mon 11:30-13:00; none on Tue; none on Wed; none on Thu; none on Fri; none on "
        "Sat; none on Sun; holiday 10:00-11:00" in out
    )
    assert "holidays 2026-10-01 National Day" in out
    assert "normally open in the windows of time profile 5, after the first card of each window" in out
    assert "area 3: [reader] entry, [exit_reader] the other way; anti-passback on, offline soft" in out


def test_a_schedule_switched_off_by_the_platform_ends_the_open_period(tmp_path):
    sam = make_sam()
    monday = dt.date(2026, 11, 23)
    term, _ = door_terminal(tmp_path, sam, normally_open_profile=5)
    assert term.normally_open_configured()
    term.update_normally_open(shanghai(monday, 12, 0))
    assert term.holding_open
    term.config = dataclasses.replace(term.config, door=dataclasses.replace(term.config.door, normally_open_profile=0))
    assert term.normally_open_configured()  # still held: the loop must still look
    term.update_normally_open(shanghai(monday, 12, 1))
    assert not term.holding_open and kinds(term)[-1] == NORMALLY_OPEN_END
    assert not term.normally_open_configured()
    (tmp_path / "att").mkdir()
    attendance, _ = make_terminal(tmp_path / "att", sam, "attendance")
    assert not attendance.normally_open_configured()
