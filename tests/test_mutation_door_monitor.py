"""The door state machine (terminal/door_monitor.py) as whole conversations with time passed in: every event with its
exact message and detail, every deadline at its boundary, next_deadline() at each step. Issue 15."""

from terminal.door_monitor import CLOSED, FORCED_OPEN, HELD_OPEN, MESSAGES, REX, DoorEvent, DoorMonitor


def events(monitor):
    return [(e.kind, e.message, e.detail) for e in monitor.take_events()]


def test_messages_are_the_words_the_display_and_log_show():
    assert MESSAGES == {
        "door.held_open": "Door held open: please close the door",
        "door.forced_open": "Door forced open: security has been alerted",
        "door.closed": "Door closed",
        "door.rex": "Exit button: door unlocked",
    }
    assert DoorEvent("door.closed", "Door closed").detail == {}


def test_a_new_monitor_is_a_shut_locked_quiet_door():
    m = DoorMonitor(5, 30)
    assert (m.door_open, m.alarm, m.unlocked, m.next_deadline(), m.take_events()) == (False, None, False, None, [])
    assert (m.open_seconds, m.held_open_seconds) == (5, 30)
    m.tick(10_000.0)
    assert (m.alarm, m.next_deadline(), m.take_events()) == (None, None, [])
    m.contact(True, 10_001.0)  # closed by default: opening it unannounced is forcing it
    assert events(m) == [(FORCED_OPEN, "Door forced open: security has been alerted", {})]


def test_a_grant_with_the_door_shut_is_one_opening_with_a_held_open_deadline():
    m = DoorMonitor(5, 30)
    m.grant(100.0)
    assert m.unlocked and m.next_deadline() == 105.0
    m.tick(101.0)  # time passing within the grant takes nothing away
    m.contact(True, 102.0)
    assert (
        m.door_open is True and m.alarm is None and m.next_deadline() == 105.0
    )  # the strike first, then the held-open deadline
    m.tick(105.0)
    assert not m.unlocked and m.next_deadline() == 132.0
    m.tick(131.9)
    assert m.alarm is None and events(m) == []
    m.tick(132.0)
    assert m.alarm == HELD_OPEN and m.next_deadline() is None
    assert events(m) == [(HELD_OPEN, "Door held open: please close the door", {"seconds": 30})]
    m.tick(200.0)
    assert events(m) == [] and m.alarm == HELD_OPEN
    m.contact(True, 201.0)  # the same state again is nothing
    assert events(m) == []
    m.contact(False, 202.0)
    assert m.door_open is False and events(m) == [(CLOSED, "Door closed", {"alarm": HELD_OPEN})]
    assert (m.alarm, m.unlocked, m.next_deadline()) == (None, False, None)
    m.tick(10_000.0)
    assert events(m) == []


def test_a_grant_while_shut_never_raises_held_open_by_itself():
    m = DoorMonitor(5, 30)
    m.grant(0.0)
    m.tick(5.0)
    assert m.next_deadline() is None
    m.tick(100.0)
    assert (m.alarm, events(m)) == (None, [])
    m.contact(True, 101.0)  # the grant has long expired
    assert m.door_open is True and events(m) == [(FORCED_OPEN, MESSAGES[FORCED_OPEN], {})]


def test_the_door_may_be_opened_up_to_the_last_instant_of_the_grant():
    m = DoorMonitor(5, 30)
    m.grant(0.0)
    m.tick(5.0)  # strike relocks at 5.0, but opening at 5.0 is still authorised
    assert not m.unlocked
    m.contact(True, 5.0)
    assert m.alarm is None and events(m) == [] and m.next_deadline() == 35.0


def test_opening_just_after_the_grant_is_forced_even_without_a_tick():
    m = DoorMonitor(5, 30)
    m.grant(0.0)
    m.contact(True, 5.1)
    assert m.alarm == FORCED_OPEN and events(m) == [(FORCED_OPEN, MESSAGES[FORCED_OPEN], {})]
    m.tick(100.0)  # a forced door raises no held-open on top
    assert events(m) == []
    m.contact(False, 101.0)
    assert events(m) == [(CLOSED, "Door closed", {"alarm": FORCED_OPEN})]


def test_grant_seconds_and_extensions():
    m = DoorMonitor(5, 30)
    m.grant(0.0, seconds=10)
    assert m.next_deadline() == 10.0
    m.grant(1.0, seconds=2)  # a shorter grant never shortens the one in force
    assert m.next_deadline() == 10.0
    m.grant(8.0)  # the default open_seconds from now
    assert m.next_deadline() == 13.0
    m.tick(12.9)
    assert m.unlocked
    m.contact(True, 13.0)
    assert m.alarm is None


def test_a_grant_while_the_door_stands_open_restarts_its_held_open_allowance():
    m = DoorMonitor(5, 30, door_open=True, now=0.0)
    assert m.next_deadline() == 30.0
    m.grant(20.0)
    assert m.next_deadline() == 25.0
    m.tick(25.0)
    assert m.next_deadline() == 50.0
    m.tick(49.0)
    assert m.alarm is None
    m.tick(50.0)
    assert events(m) == [(HELD_OPEN, MESSAGES[HELD_OPEN], {"seconds": 30})]


def test_a_grant_during_an_alarm_leaves_the_alarm_alone():
    m = DoorMonitor(5, 30)
    m.contact(True, 0.0)
    m.take_events()
    m.grant(1.0)
    m.tick(100.0)
    assert m.alarm == FORCED_OPEN and events(m) == []


def test_rex_logs_and_unlocks_like_a_grant():
    m = DoorMonitor(4, 30)
    m.request_to_exit(10.0)
    assert events(m) == [(REX, "Exit button: door unlocked", {"seconds": 4})]
    assert m.unlocked and m.next_deadline() == 14.0
    m.contact(True, 14.0)
    assert m.alarm is None and m.next_deadline() == 14.0
    m.tick(14.0)
    assert m.next_deadline() == 44.0


def test_a_door_found_open_at_start_counts_from_now():
    m = DoorMonitor(5, 30, door_open=True, now=50.0)
    assert (m.alarm, m.unlocked, m.next_deadline(), m.take_events()) == (None, False, 80.0, [])
    m.tick(79.9)
    assert m.alarm is None
    m.tick(80.0)
    assert events(m) == [(HELD_OPEN, MESSAGES[HELD_OPEN], {"seconds": 30})]
    default_now = DoorMonitor(5, 30, door_open=True)
    assert default_now.next_deadline() == 30.0


def test_an_alarm_at_restart_continues_or_ends():
    still = DoorMonitor(5, 30, door_open=True, open_alarm=HELD_OPEN, now=100.0)
    assert (still.alarm, still.next_deadline(), still.take_events()) == (HELD_OPEN, None, [])
    still.tick(1000.0)
    assert events(still) == []
    still.contact(False, 1001.0)
    assert events(still) == [(CLOSED, "Door closed", {"alarm": HELD_OPEN})]
    assert still.alarm is None
    ended = DoorMonitor(5, 30, door_open=False, open_alarm=FORCED_OPEN)
    assert (ended.alarm, ended.door_open, ended.next_deadline()) == (None, False, None)
    assert events(ended) == [(CLOSED, "Door closed", {"alarm": FORCED_OPEN, "after_restart": True})]
    assert ended.take_events() == []
