"""The door's hardware: strike, contact, REX, LEDs and buzzer through gpiozero's MockFactory; the alarm state machine
with time passed in; alarms in the log surviving a restart; the strike released on SIGTERM and on a crash."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.config import DoorSection, OutputSection, load_config
from terminal.door_monitor import CLOSED, FORCED_OPEN, HELD_OPEN, REX, DoorMonitor
from terminal.event_log import EventLog

ROOT = Path(__file__).resolve().parent.parent
STRIKE, CONTACT, BUTTON, GREEN, RED, BUZZER = 17, 5, 6, 27, 22, 23


@pytest.fixture
def pins():
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    old = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = old


def kinds(monitor):
    return [e.kind for e in monitor.take_events()]


# --- the sans-I/O door state machine ---------------------------------------------------------------------------


def test_grant_unlocks_for_open_seconds_then_relocks():
    m = DoorMonitor(5, 30)
    m.grant(100.0)
    m.tick(104.9)
    assert m.unlocked
    m.tick(105.0)
    assert not m.unlocked and m.alarm is None and kinds(m) == []


def test_door_opened_after_grant_and_held_raises_held_open_until_closed():
    m = DoorMonitor(5, 30)
    m.grant(0.0)
    m.contact(True, 2.0)
    m.tick(31.9)
    assert m.alarm is None
    m.tick(32.0)
    assert m.alarm == HELD_OPEN and kinds(m) == [HELD_OPEN]
    m.tick(60.0)
    assert kinds(m) == []  # raised once, not every tick
    m.contact(False, 61.0)
    events = m.take_events()
    assert [e.kind for e in events] == [CLOSED] and events[0].detail == {"alarm": HELD_OPEN}
    assert m.alarm is None


def test_closing_the_door_relocks_at_once_and_one_grant_is_one_opening():
    m = DoorMonitor(5, 30)
    m.grant(0.0)
    m.contact(True, 1.0)
    m.contact(False, 2.0)
    assert not m.unlocked
    m.contact(True, 3.0)  # within the 5 s, but the grant was used
    assert m.alarm == FORCED_OPEN


def test_door_opened_without_grant_is_forced_open():
    m = DoorMonitor(5, 30)
    m.contact(True, 10.0)
    assert m.alarm == FORCED_OPEN and kinds(m) == [FORCED_OPEN]
    m.contact(False, 20.0)
    assert kinds(m) == [CLOSED]


def test_door_opened_after_the_grant_expired_is_forced_open():
    m = DoorMonitor(5, 30)
    m.grant(0.0)
    m.tick(6.0)
    m.contact(True, 7.0)
    assert m.alarm == FORCED_OPEN


def test_rex_unlocks_and_is_logged():
    m = DoorMonitor(5, 30)
    m.request_to_exit(0.0)
    assert m.unlocked and kinds(m) == [REX]
    m.contact(True, 1.0)
    assert m.alarm is None


def test_an_alarm_open_at_a_restart_is_still_open_and_ends_with_door_closed():
    still_open = DoorMonitor(5, 30, door_open=True, open_alarm=FORCED_OPEN)
    assert still_open.alarm == FORCED_OPEN and kinds(still_open) == []
    still_open.tick(1000.0)
    assert kinds(still_open) == []
    still_open.contact(False, 1001.0)
    assert kinds(still_open) == [CLOSED]
    closed_meanwhile = DoorMonitor(5, 30, door_open=False, open_alarm=HELD_OPEN)
    assert closed_meanwhile.alarm is None
    assert [(e.kind, e.detail) for e in closed_meanwhile.take_events()] == [
        (CLOSED, {"alarm": HELD_OPEN, "after_restart": True})
    ]


def test_door_found_open_at_start_gets_the_held_open_allowance():
    m = DoorMonitor(5, 30, door_open=True, now=50.0)
    m.tick(79.0)
    assert m.alarm is None
    m.tick(80.0)
    assert m.alarm == HELD_OPEN


# --- gpiozero adapter, MockFactory pins -------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def door_section(**changes):
    values = dict(
        group=1, open_seconds=5.0, held_open_seconds=30.0, strike_pin=STRIKE, contact_pin=CONTACT, rex_pin=BUTTON
    )
    values.update(changes)
    return DoorSection(**values)


def levels(pin):
    """The pin's level history, repeats folded."""
    out = []
    for s in pin.states:
        if not out or out[-1] != bool(s.state):
            out.append(bool(s.state))
    return out


@pytest.mark.parametrize(
    "lock, active_high, locked_level",
    [
        ("fail-secure", True, False),
        ("fail-secure", False, True),
        ("fail-safe", True, True),
        ("fail-safe", False, False),
    ],
)
def test_strike_levels_for_each_lock_and_relay_polarity(pins, lock, active_high, locked_level):
    from terminal.gpio_outputs import GpioDoor

    clock = FakeClock()
    door = GpioDoor(
        door_section(lock=lock, strike_active_high=active_high, contact_pin=0, rex_pin=0),
        clock=clock,
        start_thread=False,
    )
    strike = pins.pin(STRIKE)
    assert strike.state == locked_level
    door.grant(5.0)
    assert strike.state == (not locked_level)
    clock.t += 4.9
    door.tick()
    assert strike.state == (not locked_level)
    clock.t += 0.1
    door.tick()
    assert strike.state == locked_level
    door.grant(5.0)
    door.close()
    # Released on close: de-energised, whatever the lock; for a fail-secure strike that is locked.
    assert strike.state == (not active_high)
    expected = [locked_level, not locked_level, locked_level, not locked_level]
    if not active_high != expected[-1]:
        expected.append(not active_high)
    assert levels(strike)[-len(expected) :] == expected


def test_contact_rex_and_alarms_through_the_pins(pins):
    from terminal.gpio_outputs import GpioDoor, GpioOutputs

    clock = FakeClock()
    seen = []
    door = GpioDoor(door_section(), clock=clock, on_event=lambda e: seen.append(e.kind), start_thread=False)
    outputs = GpioOutputs(OutputSection("gpio", False, GREEN, RED, BUZZER), door)
    contact, rex, strike, buzzer, red = (pins.pin(n) for n in (CONTACT, BUTTON, STRIKE, BUZZER, RED))
    contact.drive_low()  # the door is shut
    door.take_events()
    rex.drive_low()  # someone presses the exit button
    rex.drive_high()
    assert strike.state is True
    contact.drive_high()  # and walks out
    clock.t += 30
    door.tick()
    assert seen[-1] == HELD_OPEN
    outputs.door_event(door.take_events()[-1][1])  # what the terminal's callback does
    assert red.state is True and buzzer.state is True
    contact.drive_low()
    outputs.door_event(door.take_events()[-1][1])
    assert seen == [REX, HELD_OPEN, CLOSED]
    assert red.state is False and buzzer.state is False
    contact.drive_high()  # opened with nothing granted
    assert seen[-1] == FORCED_OPEN
    outputs.close()
    assert strike.state is False


def test_leds_and_distinct_buzzer_patterns(pins):
    from terminal.gpio_outputs import BEEPS, GpioOutputs

    outputs = GpioOutputs(OutputSection("gpio", False, GREEN, RED, BUZZER))
    outputs.light("green")
    assert (pins.pin(GREEN).state, pins.pin(RED).state) == (True, False)
    outputs.light("red")
    assert (pins.pin(GREEN).state, pins.pin(RED).state) == (False, True)
    outputs.light("off")
    assert (pins.pin(GREEN).state, pins.pin(RED).state) == (False, False)
    buzzer = pins.pin(BUZZER)
    for pattern, count in (("ok", 1), ("error", 3)):
        buzzer.clear_states()
        outputs.beep(pattern)
        deadline = time.monotonic() + 5
        while len(levels(buzzer)) < 2 * count + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert levels(buzzer).count(True) == count, (pattern, levels(buzzer))
    assert BEEPS["alarm"][2] is None  # the alarm sounds until the door closes
    outputs.close()


# --- the whole terminal: alarms in the log, the strike released on every exit path ---------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from tests.test_cli import onecard

    d = tmp_path_factory.mktemp("door-site")
    (d / "pass").write_text("correct horse battery staple\n")
    for args in (
        (
            "sam",
            "create-keystore",
            "--out",
            d / "issuing.ks",
            "--passphrase-file",
            d / "pass",
            "--enterprise",
            "00010001",
        ),
        (
            "sam",
            "restrict",
            "--keystore",
            d / "issuing.ks",
            "--passphrase-file",
            d / "pass",
            "--out",
            d / "terminal.ks",
            "--usages",
            "verify",
            "--purposes",
            "access",
        ),
        (
            "sim",
            "new-card",
            "--out",
            d / "card.json",
            "--keystore",
            d / "issuing.ks",
            "--passphrase-file",
            d / "pass",
            "--enterprise",
            "00010001",
            "--employee",
            "E1001",
            "--name",
            "Zhang Wei",
        ),
    ):
        r = onecard(*args)
        assert r.returncode == 0, r.stderr
    return d


def gpio_config(site, tmp_path, extra=""):
    cfg = tmp_path / "door.toml"
    cfg.write_text(f"""[terminal]
id = "000000000101"
kind = "door"
enterprise_id = "00010001"
name = "Gate 1"
database = "{tmp_path / "events.db"}"
blacklist = "{tmp_path / "bl.db"}"
[reader]
driver = "simulator"
card = "{site / "card.json"}"
[sam]
keystore = "{site / "terminal.ks"}"
passphrase_file = "{site / "pass"}"
[door]
group = 1
open_seconds = 20
held_open_seconds = 30
strike_pin = {STRIKE}
contact_pin = {CONTACT}
rex_pin = {BUTTON}
[output]
driver = "gpio"
green_led_pin = {GREEN}
red_led_pin = {RED}
buzzer_pin = {BUZZER}
{extra}""")
    return cfg


def run_in_main_thread(argv, until, then):
    """onecard.cli.main in this (the main) thread, as the process runs it; `then` is called from a watcher thread
    once `until()` holds."""
    from onecard.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def watch():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not until():
            time.sleep(0.02)
        then()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return main(argv)
    finally:
        watcher.join(5)
        for s, h in saved.items():
            signal.signal(s, h)


def test_sigterm_releases_the_strike_of_a_granted_door(site, tmp_path, pins):
    cfg = gpio_config(site, tmp_path)
    rc = run_in_main_thread(
        ["terminal", "run", "--config", str(cfg)],
        until=lambda: pins.pin(STRIKE).state is True,
        then=lambda: os.kill(os.getpid(), signal.SIGTERM),
    )
    assert rc == 0
    strike = pins.pin(STRIKE)
    assert levels(strike) == [False, True, False]  # locked, unlocked for the grant, released at SIGTERM (< 20 s)
    assert pins.pin(GREEN).state is False


def test_a_crash_releases_the_strike(site, tmp_path, pins, monkeypatch):
    from terminal.app import Terminal

    cfg = gpio_config(site, tmp_path)

    def crash_after_the_grant(self, reader, conn, clock, *args, **kwargs):
        assert self.handle_tap(conn, clock()).accepted
        raise RuntimeError("simulated bug in the tap loop")

    monkeypatch.setattr(Terminal, "_serve_card", crash_after_the_grant)
    with pytest.raises(RuntimeError, match="simulated bug"):
        run_in_main_thread(["terminal", "run", "--config", str(cfg)], until=lambda: True, then=lambda: None)
    assert levels(pins.pin(STRIKE)) == [False, True, False]


def test_alarm_is_logged_shown_and_still_open_after_a_restart(site, tmp_path, pins, monkeypatch):
    """Forced open: logged, red light and alarm; the terminal stops (as at a crash) with the door still open, and
    the next run keeps the alarm open until the door shuts, then logs door.closed."""
    from contextlib import ExitStack

    from simulator.inprocess import InProcessReader
    from terminal.adapters import build_terminal, utc_now

    config = load_config(gpio_config(site, tmp_path, '[display]\ndriver = "dummy"\n'))

    def logged():
        with EventLog.open_readonly(config.terminal.database) as log:
            return [(e.kind, e.detail) for e in log.events()]

    for run in (1, 2):
        stop, ready, held = threading.Event(), threading.Event(), {}

        def serve():  # the terminal's thread owns its SQLite connections, as in the process
            with ExitStack() as stack:
                held["term"], _ = build_terminal(config, stack, reader=InProcessReader("empty"))
                ready.set()
                held["term"].run(InProcessReader("empty"), utc_now, stop, 0.05)

        contact = pins.pin(CONTACT)
        thread = threading.Thread(target=serve)
        if run == 1:
            thread.start()
            assert ready.wait(10)
            contact.drive_low()
            contact.drive_high()  # opened with nothing granted
            deadline = time.monotonic() + 10
            while not any(k == FORCED_OPEN for k, _ in logged()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any(k == FORCED_OPEN for k, _ in logged())
            assert pins.pin(RED).state is True and len(levels(pins.pin(BUZZER))) >= 2  # red, alarm sounding
            assert held["term"].outputs.screen_driver.image is not None
        else:
            thread.start()
            assert ready.wait(10)
            time.sleep(0.3)
            assert held["term"].outputs.inner.door.alarm == FORCED_OPEN  # from the log, across the restart
            contact.drive_low()
            deadline = time.monotonic() + 10
            while logged()[-1][0] != CLOSED and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pins.pin(RED).state is False
        stop.set()
        thread.join(10)
    kinds_logged = [k for k, _ in logged()]
    assert kinds_logged == [FORCED_OPEN, CLOSED], kinds_logged
    assert logged()[-1][1] == {"alarm": FORCED_OPEN}


def test_killed_terminal_restarts_with_the_strike_locked(site, tmp_path):
    """A real SIGKILL in the door-open window. Nothing in the dead process can act: on a Pi the kernel frees the
    GPIO line and the relay's own wiring decides (docs/install.md, Wiring). What software owes is checked here:
    the log is intact, and the next start drives the strike locked before it serves any tap."""
    cfg = gpio_config(site, tmp_path)
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONPATH=str(ROOT))

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    proc = start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (tmp_path / "events.db").exists():
                with EventLog.open_readonly(tmp_path / "events.db") as log:
                    if any(e.kind == "door.grant" for e in log.events()):
                        break
            time.sleep(0.1)
        else:
            pytest.fail("no grant within 30 s")
    finally:
        proc.kill()
        proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    proc = start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with EventLog.open_readonly(tmp_path / "events.db") as log:
                if sum(e.kind == "door.grant" for e in log.events()) >= 2:
                    break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    ready = [line for line in err.splitlines() if "event=door.ready" in line]
    assert ready and "energised=False" in ready[0] and "unlocked=False" in ready[0]
    assert err.index("event=door.ready") < err.index("event=tap.decided")
    released = [line for line in err.splitlines() if "event=door.strike_released" in line]
    assert released and "energised=False" in released[0]
    with EventLog.open_readonly(tmp_path / "events.db") as log:
        assert log.verify().ok


# --- the settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        ("[door]\nstrike_pin = 40\n", "[door].strike_pin = 40 is not a BCM GPIO number"),
        ("[door]\nstrike_pin = 17\ncontact_pin = 17\n", "share a GPIO"),
        ('[door]\nlock = "magnetic"\n', "[door].lock = 'magnetic' is not one of fail-secure, fail-safe"),
        ("[door]\nstrke_pin = 17\n", "[door].strke_pin is not a known key"),
        ("[door]\nheld_open_seconds = 0\n", "[door].held_open_seconds"),
        ('[output]\ndriver = "gpio"\nbuzer_pin = 4\n', "[output].buzer_pin is not a known key"),
        ('[output]\ndriver = "lcd"\n', "[output].driver = 'lcd' is not one of console, gpio"),
        ('[display]\ndriver = "st7789"\n', "[display].driver"),
        ("[display]\nrotate = 4\n", "[display].rotate = 4 is outside 0..3"),
        ('[keypad]\ndriver = "evdev"\n', "[keypad].device is missing"),
        ('[keypad]\ndriver = "serial"\ndevice = "/dev/ttyUSB0"\nbaudrate = 1000\n', "[keypad].baudrate"),
        ('[keypad]\ntap_without_amount = "charge"\n', "[keypad].tap_without_amount"),
    ],
)
def test_hardware_settings_are_checked(tmp_path, extra, words):
    from common.config import ConfigError
    from tests.support import TERMINAL_TOML

    text = TERMINAL_TOML.format(kind="door", db=tmp_path / "e.db", bl=tmp_path / "b.db")
    section = extra.split("\n", 1)[0]
    if section in text:  # add the keys to the existing section instead of repeating it
        text = text.replace(section + "\n", extra, 1)
    else:
        text += extra
    cfg = tmp_path / "t.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert words in str(exc.value)


def test_platform_sets_door_times_but_never_its_wiring(tmp_path):
    import dataclasses

    from common.config import ConfigError, apply_platform_document
    from tests.support import TERMINAL_TOML

    cfg = tmp_path / "t.toml"
    cfg.write_text(
        TERMINAL_TOML.format(kind="door", db=tmp_path / "e.db", bl=tmp_path / "b.db").replace(
            "open_seconds = 4\n", f"open_seconds = 4\nstrike_pin = {STRIKE}\n"
        )
    )
    config = load_config(cfg)
    applied = apply_platform_document(config, 3, {"doors": {config.terminal.id: {"group": 2, "held_open_seconds": 90}}})
    # The section replaces the door's decision settings (open_seconds back to its default), the wiring stays.
    assert applied.door == dataclasses.replace(config.door, group=2, open_seconds=5.0, held_open_seconds=90.0)
    with pytest.raises(ConfigError, match="strike_pin is not a known key"):
        apply_platform_document(config, 4, {"doors": {config.terminal.id: {"strike_pin": 4}}})


def test_an_open_alarm_stays_on_the_display_instead_of_the_idle_screen(tmp_path, pins):
    from terminal.adapters import open_outputs
    from tests.support import MONDAY_10AM, make_sam, make_terminal

    term, _ = make_terminal(tmp_path, make_sam(), "door")
    import dataclasses

    term.config = dataclasses.replace(
        term.config,
        door=door_section(),
        display=dataclasses.replace(term.config.display, driver="dummy"),
        output=OutputSection("gpio", False, GREEN, RED, BUZZER),
    )
    term.outputs = open_outputs(term.config, term.event_log)
    try:
        pins.pin(CONTACT).drive_low()
        pins.pin(CONTACT).drive_high()  # forced open
        term.log_door_events()
        term._screen_since = 0  # long after
        alarm_image = term.outputs.screen_driver.image.copy()
        term.idle(lambda: MONDAY_10AM)
        assert term.outputs.screen_driver.image.tobytes() == alarm_image.tobytes()
        pins.pin(CONTACT).drive_low()
        term.log_door_events()
        term._screen_since, term._idle_checked = 0, 0
        term.idle(lambda: MONDAY_10AM)
        assert term.outputs.screen_driver.image.tobytes() != alarm_image.tobytes()
    finally:
        term.outputs.close()
        term.event_log.close()
    with EventLog.open_readonly(term.config.terminal.database) as log:
        assert [e.kind for e in log.events()] == [FORCED_OPEN, CLOSED]


# --- normally open: the strike held by the running process only --------------------------------------------------

ALL_DAY_OPEN = """[time_profiles.9]
name = "always open (test)"
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]
"""


def normally_open_config(site, tmp_path):
    cfg = gpio_config(site, tmp_path, ALL_DAY_OPEN)
    cfg.write_text(cfg.read_text().replace("rex_pin = ", "normally_open_profile = 9\nrex_pin = "))
    return cfg


def test_sigterm_in_a_normally_open_window_releases_the_strike(site, tmp_path, pins):
    cfg = normally_open_config(site, tmp_path)
    rc = run_in_main_thread(
        ["terminal", "run", "--config", str(cfg)],
        until=lambda: (
            (tmp_path / "events.db").exists()
            and any(e.kind == "door.normally_open" for e in EventLog.open_readonly(tmp_path / "events.db").events())
        ),
        then=lambda: os.kill(os.getpid(), signal.SIGTERM),
    )
    assert rc == 0
    assert levels(pins.pin(STRIKE))[0] is False and levels(pins.pin(STRIKE))[-1] is False
    assert True in levels(pins.pin(STRIKE))


def test_killed_in_a_normally_open_window_restarts_locked_then_holds_again(site, tmp_path):
    """SIGKILL while the schedule holds the strike: the dead process holds nothing (on a Pi the kernel frees the line
    and a fail-secure strike locks). The next start drives the strike locked first, and only then, from its
    schedule, holds it open again: without logging a second start of the same period."""
    cfg = normally_open_config(site, tmp_path)
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONPATH=str(ROOT))

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def logged():
        if not (tmp_path / "events.db").exists():
            return []
        with EventLog.open_readonly(tmp_path / "events.db") as log:
            return [e.kind for e in log.events()]

    proc = start()
    try:
        deadline = time.monotonic() + 30
        while "door.normally_open" not in logged() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "door.normally_open" in logged()
        time.sleep(0.5)  # logged first, then held: kill it while it holds the strike
    finally:
        proc.kill()
        out, first_err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    assert "event=door.hold" in first_err and "on=True" in first_err
    proc = start()
    try:
        deadline = time.monotonic() + 30
        while logged().count("door.grant") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    ready = [line for line in err.splitlines() if "event=door.ready" in line]
    assert ready and "energised=False" in ready[0] and "unlocked=False" in ready[0]
    hold = [line for line in err.splitlines() if "event=door.hold" in line]
    assert hold and "on=True" in hold[0]
    assert err.index("event=door.ready") < err.index("event=door.hold")
    released = [line for line in err.splitlines() if "event=door.strike_released" in line]
    assert released and "energised=False" in released[0]
    assert logged().count("door.normally_open") == 1  # the same period, resumed, not a new one
    with EventLog.open_readonly(tmp_path / "events.db") as log:
        assert log.verify().ok
