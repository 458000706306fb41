"""firmware.toml and the platform's configuration documents: one schema, read once, validated once, handed down as
typed objects.

Every problem is reported as one ConfigError line naming the file, the key, what is wrong and the fix.
Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

KINDS = ("door", "attendance", "pos", "topup")
READER_DRIVERS = ("pcsc", "nfc", "simulator")
SAM_BACKENDS = ("keystore", "psam")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


# The holiday calendar: local dates on which every time profile's holiday windows replace its weekday windows.
Holidays = Mapping[dt.date, str]  # date -> name, e.g. 2026-10-01 -> "National Day"
EMPTY_HOLIDAYS: Holidays = MappingProxyType({})


@dataclass(frozen=True)
class TimeWindow:
    start: dt.time
    end: dt.time  # exclusive; 24:00 is written as 23:59:59.999999

    def contains(self, t: dt.time) -> bool:
        return self.start <= t < self.end or (self.end == dt.time.max and t == dt.time.max)

    def __str__(self) -> str:
        end = "24:00" if self.end == dt.time.max else self.end.strftime("%H:%M")
        return f"{self.start.strftime('%H:%M')}-{end}"


@dataclass(frozen=True)
class TimeProfile:
    """Weekly time windows in which a card with this profile number is let in."""

    number: int
    name: str
    days: dict[int, tuple[TimeWindow, ...]]  # weekday (0 = Monday) -> windows
    holiday: tuple[TimeWindow, ...] = ()  # the windows on a date of the holiday calendar, whatever its weekday

    def windows_on(self, day: dt.date, holidays: Holidays = EMPTY_HOLIDAYS) -> tuple[TimeWindow, ...]:
        """The windows in force on a local date: the holiday windows on a holiday, else the weekday's."""
        return self.holiday if day in holidays else self.days.get(day.weekday(), ())

    def allows(self, local: dt.datetime, holidays: Holidays = EMPTY_HOLIDAYS) -> bool:
        return any(w.contains(local.time()) for w in self.windows_on(local.date(), holidays))

    def describe_day(self, weekday: int) -> str:
        windows = self.days.get(weekday, ())
        day = WEEKDAYS[weekday].capitalize()
        return f"{day} " + ", ".join(str(w) for w in windows) if windows else f"none on {day}"

    def describe_date(self, day: dt.date, holidays: Holidays = EMPTY_HOLIDAYS) -> str:
        if day not in holidays:
            return self.describe_day(day.weekday())
        name = holidays[day]
        windows = ", ".join(str(w) for w in self.holiday)
        return f"holiday {name}: {windows}" if windows else f"none on holiday {name}"


ALL_DAY = (TimeWindow(dt.time(0, 0), dt.time.max),)
ALWAYS = TimeProfile(0, "always", {d: ALL_DAY for d in range(7)}, holiday=ALL_DAY)


@dataclass(frozen=True)
class TerminalSection:
    id: str
    id_bytes: bytes
    kind: str
    enterprise_id: bytes
    name: str
    timezone: zoneinfo.ZoneInfo
    database: Path
    blacklist: Path


@dataclass(frozen=True)
class ReaderSection:
    driver: str
    name: str = ""  # pcsc: substring of the reader name
    path: str = ""  # nfc: nfcpy device path, e.g. "usb", "tty:AMA0:pn532", "udp:127.0.0.1:54321"
    card: Path | None = None  # simulator: the card file presented on every tap
    # Deadline of one card command: a card slower than this (or answering nothing) is refused, the door stays shut.
    command_timeout_ms: int = 500


@dataclass(frozen=True)
class SamSection:
    backend: str
    keystore: Path | None  # keystore: the encrypted key file
    passphrase_file: Path | None
    device_secret_file: Path | None
    reader: str = ""  # psam: the PC/SC reader (slot) holding the PSAM, any part of its name


@dataclass(frozen=True)
class DoorSection:
    group: int
    open_seconds: float
    held_open_seconds: float = 30.0  # after a grant or REX, the door open longer than this raises door.held_open
    # The door's own wiring (firmware.toml only; the platform sets group and times, never pins). BCM GPIO numbers,
    # 0 = not fitted. See docs/install.md, "Wiring".
    strike_pin: int = 0
    strike_active_high: bool = True  # the relay input: true = pin high energises the relay
    lock: str = "fail-secure"  # fail-secure: energised = unlocked; fail-safe (maglock): energised = locked
    contact_pin: int = 0  # door contact (reed switch) to ground: closed door = pin low
    rex_pin: int = 0  # request-to-exit button to ground: pressed = pin low
    # Normally open: the strike stays unlocked in the windows of this time profile (holidays included), 0 = never.
    normally_open_profile: int = 0
    first_card_unlock: bool = False  # the normally-open window starts only once a card was granted that day
    # Anti-passback: the area this door's reader leads into or out of (0 = none), and which way this reader goes.
    area: int = 0
    direction: str = "entry"  # entry | exit: the [reader]'s direction ([exit_reader], if fitted, is the other one)
    anti_passback: str = "off"  # off | on: an entry after an entry (or exit after exit) in the area is refused
    # When the area's passages at other terminals may be unknown (the sync agent offline): soft = log and allow,
    # hard = refuse as online.
    passback_offline: str = "soft"
    passback_fresh_seconds: float = 300.0  # the platform's area passages are current if received this recently


DOOR_PLATFORM_KEYS = (
    "group",
    "open_seconds",
    "held_open_seconds",
    "normally_open_profile",
    "first_card_unlock",
    "area",
    "direction",
    "anti_passback",
    "passback_offline",
    "passback_fresh_seconds",
)  # what a platform document may set for a door (never its wiring)
DIRECTIONS = ("entry", "exit")
PASSBACK_MODES = ("off", "on")
PASSBACK_OFFLINE = ("soft", "hard")  # what a platform document may set for a door
LOCKS = ("fail-secure", "fail-safe")
OUTPUT_DRIVERS = ("console", "gpio")
DISPLAY_DRIVERS = ("none", "st7735", "ssd1306", "dummy")
KEYPAD_DRIVERS = ("console", "stdin", "evdev", "serial")
PRINTER_DRIVERS = ("none", "usb", "serial", "network")
DEFAULT_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")


@dataclass(frozen=True)
class AttendanceSection:
    repeat_window_seconds: float


@dataclass(frozen=True)
class MealPeriod:
    """[pos.meal_periods.NAME]: a named window of the service day with its own per-card limits (0 = no limit).

    A window may cross midnight ("21:00-02:00"): a sale after midnight belongs to the service day it started on.
    """

    name: str
    start: dt.time
    end: dt.time  # exclusive; 24:00 is dt.time.max; end <= start means the window runs past midnight
    max_count: int = 0  # sales per card in this period of one service day
    max_amount: int = 0  # fen per card in this period of one service day
    price: int = 0  # fen: the fixed price (定额) charged per tap with no typing; 0 = the cashier types the amount

    @property
    def crosses_midnight(self) -> bool:
        return self.end != dt.time.max and self.end <= self.start

    def __str__(self) -> str:
        end = "24:00" if self.end == dt.time.max else self.end.strftime("%H:%M")
        return f"{self.start.strftime('%H:%M')}-{end}"


@dataclass(frozen=True)
class PriceKey:
    """[pos.price_keys.KEY]: a keypad function key (F1..F12) that rings up a configured item at its price."""

    key: str
    item: str
    price: int  # fen


@dataclass(frozen=True)
class Operator:
    """[pos.operators.NUMBER]: a cashier who signs in (签到) with NUMBER and a password kept only as its hash."""

    number: str
    name: str
    password_hash: str  # common/passwords.py format: scrypt$N$r$p$salt$hash


@dataclass(frozen=True)
class PosSection:
    max_purchase: int  # fen, per purchase
    offline_limit: int  # fen, per card, spent here since the sync agent's last acknowledged upload
    undo_window_seconds: float
    card_wait_seconds: float  # how long a sale waits for the card after the cashier entered the amount
    daily_max_amount: int = 0  # fen per card per service day over every till of the enterprise; 0 = no limit
    pin_above: int = 0  # fen: a sale above it needs the card's spending password (消费密码); 0 = never
    meal_periods: tuple[MealPeriod, ...] = ()
    price_keys: dict[str, PriceKey] = field(default_factory=dict)
    operators: dict[str, Operator] = field(default_factory=dict)  # empty: no sign-in, sales carry no shift


@dataclass(frozen=True)
class PrinterSection:
    """[printer]: an ESC/POS receipt printer (python-escpos); driver "none" prints nothing."""

    driver: str = "none"  # none | usb | serial | network
    usb_vendor: int = 0  # usb: idVendor and idProduct, e.g. 0x0416 0x5011
    usb_product: int = 0
    device: str = ""  # serial: the port, e.g. /dev/ttyUSB1
    baudrate: int = 9600  # serial
    host: str = ""  # network: the printer's address (raw TCP, port 9100)
    port: int = 9100
    width: int = 32  # characters per line (58 mm paper: 32; 80 mm: 48)


@dataclass(frozen=True)
class TopupSection:
    max_load: int  # fen, per load


@dataclass(frozen=True)
class OutputSection:
    driver: str  # console: print what the hardware would do; gpio: relay, LEDs and buzzer on GPIO
    color: bool
    green_led_pin: int = 0  # BCM GPIO numbers, 0 = not fitted; LEDs and buzzer active high
    red_led_pin: int = 0
    buzzer_pin: int = 0


@dataclass(frozen=True)
class DisplaySection:
    """[display]: a luma LCD/OLED showing each decision (none: the [output] driver's text only)."""

    driver: str = "none"
    width: int = 160
    height: int = 128
    rotate: int = 0  # 0..3, quarter turns
    spi_port: int = 0  # st7735 (SPI)
    spi_device: int = 0
    gpio_dc: int = 24
    gpio_rst: int = 25
    i2c_port: int = 1  # ssd1306 (I2C)
    i2c_address: int = 0x3C
    font: Path = DEFAULT_FONT  # a TrueType font with CJK glyphs (Debian: fonts-wqy-microhei)


@dataclass(frozen=True)
class KeypadSection:
    """[keypad]: where a POS or top-up terminal reads the cashier's keys."""

    driver: str = "console"  # console: this terminal's TTY; stdin: lines piped in by a till system; evdev; serial
    device: str = ""  # evdev: /dev/input/eventN or the device's name; serial: the port, e.g. /dev/ttyUSB0
    baudrate: int = 9600  # serial
    tap_without_amount: str = (
        "balance"  # balance: a balance inquiry (verified figures only); ask: "Enter the amount first"
    )


@dataclass(frozen=True)
class StatusSection:
    """[status]: the installer's read-only status page; listen = "" (the default) keeps it off."""

    host: str = ""
    port: int = 0


@dataclass(frozen=True)
class SyncSection:
    """[sync]: how the sync agent reaches the platform (docs/sync-protocol.md)."""

    broker_host: str
    broker_port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    platform_public_key: Path
    database: Path
    mqtt_version: str = "auto"  # auto (5, falling back to 3.1.1) | 5 | 3.1.1
    batch_size: int = 500
    max_inflight_batches: int = 4
    max_events_per_s: float = 5000.0
    ack_timeout_seconds: float = 10.0
    heartbeat_seconds: float = 30.0
    keepalive_seconds: int = 30
    clock_tolerance_seconds: float = 5.0
    compact_keep: int = 50_000
    outbox_capacity: int = 200_000
    # Send events uploads as zlib streams (docs/sync-protocol.md "events"): about a quarter of the bytes on the
    # network and through the broker. Only for a platform that takes them (onecard's does, since this version).
    compress_uploads: bool = False
    # A batch that is not full waits up to this long for more records before it is sent (0: sent at once). Fewer,
    # fuller uploads: the broker's and the platform's cost is per message more than per record (docs/sizing.md).
    upload_linger_seconds: float = 0.0
    # Every node of a broker cluster, in the order the agent tries them ("host:port"); broker_host/broker_port
    # are then the first. Empty: the one broker of broker_host/broker_port.
    brokers: tuple[tuple[str, int], ...] = ()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The broker nodes to try, in order: several with `brokers`, else the one of broker_host:broker_port."""
        return self.brokers or ((self.broker_host, self.broker_port),)


@dataclass(frozen=True)
class Config:
    path: Path
    terminal: TerminalSection
    reader: ReaderSection
    sam: SamSection
    door: DoorSection
    attendance: AttendanceSection
    output: OutputSection
    pos: PosSection
    topup: TopupSection
    time_profiles: dict[int, TimeProfile] = field(default_factory=dict)
    exit_reader: ReaderSection | None = None  # a door's second reader, the other direction of the same area
    holidays: Holidays = field(default_factory=lambda: EMPTY_HOLIDAYS)
    shifts: dict[str, Shift] = field(default_factory=dict)  # attendance shifts (the platform computes the bill)
    sync: SyncSection | None = None  # absent: this terminal has no sync agent
    display: DisplaySection = DisplaySection()
    keypad: KeypadSection = KeypadSection()
    status: StatusSection = StatusSection()
    printer: PrinterSection = PrinterSection()


class _Section:
    """Typed reads from one TOML table, with errors that name the key."""

    def __init__(self, path: Path, name: str, table: dict):
        self.path, self.name, self.table = path, name, table

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: [{self.name}].{key} {problem}; {fix}")

    def only(self, known) -> None:
        """Refuse any key not in `known`: a typo must never silently leave a setting at its default."""
        key = first_unknown(self.table, known)
        if key is not None:
            raise self.fail(key, "is not a known key", suggestion(key, known))

    def get(self, key: str, kind: type, default=None, required: bool = False):
        if key not in self.table:
            if required:
                raise self.fail(key, "is missing", f"add it to the [{self.name}] section")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"= {value!r} is not a {kind.__name__}", f"write a {kind.__name__}")
        return value

    def path_value(self, key: str, required: bool = True) -> Path | None:
        raw = self.get(key, str, required=required)
        if raw is None:
            return None
        p = Path(raw)
        return p if p.is_absolute() else (self.path.parent / p)

    def digits(self, key: str, n: int) -> bytes:
        raw = self.get(key, str, required=True)
        if len(raw) != n or not raw.isdigit():
            raise self.fail(key, f"= {raw!r} is not {n} decimal digits", f"write it as a string of {n} digits")
        return bytes.fromhex(raw)

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(key, str, default=default, required=default is None)
        if value not in choices:
            raise self.fail(key, f"= {value!r} is not one of {', '.join(choices)}", "pick one of those")
        return value


def first_unknown(table: dict, known) -> str | None:
    unknown = sorted(str(k) for k in table if k not in known)
    return unknown[0] if unknown else None


def suggestion(key: str, known) -> str:
    """'did you mean ...?' with the nearest valid name (difflib), then the valid names."""
    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    valid = ", ".join(names)
    return f"did you mean {close[0]!r}? (valid: {valid})" if close else f"remove it or use one of: {valid}"


# Every key each section may hold; anything else is refused with the nearest of these suggested.
SECTIONS = (
    "terminal",
    "reader",
    "sam",
    "door",
    "attendance",
    "pos",
    "topup",
    "output",
    "time_profiles",
    "holidays",
    "shifts",
    "exit_reader",
    "sync",
    "display",
    "keypad",
    "status",
    "printer",
)


def keys_of(section: type, derived: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The TOML keys of a section: its dataclass fields (less those computed from others), so a setting added to a
    section is known to the unknown-key check the moment it exists and a forgotten list cannot refuse it."""
    return tuple(name for name in section.__dataclass_fields__ if name not in derived)


TERMINAL_KEYS = keys_of(TerminalSection, derived=("id_bytes",))
READER_KEYS = keys_of(ReaderSection)
SAM_KEYS = keys_of(SamSection)
DOOR_KEYS = keys_of(DoorSection)
ATTENDANCE_KEYS = keys_of(AttendanceSection)
POS_KEYS = keys_of(PosSection)
MEAL_PERIOD_KEYS = keys_of(MealPeriod, derived=("name", "start", "end")) + ("window",)
PRICE_KEY_KEYS = ("item", "price")
OPERATOR_KEYS = ("name", "password_hash")
PRINTER_KEYS = keys_of(PrinterSection)
FUNCTION_KEYS = tuple(f"F{n}" for n in range(1, 13))
TOPUP_KEYS = keys_of(TopupSection)
OUTPUT_KEYS = keys_of(OutputSection)
DISPLAY_KEYS = keys_of(DisplaySection)
KEYPAD_KEYS = keys_of(KeypadSection)
STATUS_KEYS = ("listen",)  # parsed into host and port
PROFILE_KEYS = WEEKDAYS + ("name", "holiday")
DOCUMENT_SECTIONS = ("doors", "attendance", "pos", "topup", "time_profiles", "holidays", "shifts")
SHIFT_KEYS = ("start", "end", "grace_minutes", "early_minutes", "days")


def _parse_clock(text: str) -> dt.time:
    if text == "24:00":
        return dt.time.max
    return dt.datetime.strptime(text, "%H:%M").time()


def _time_profile(path: Path, number_text: str, table: dict) -> TimeProfile:
    sec = _Section(path, f"time_profiles.{number_text}", table)
    if not number_text.isdigit() or not 1 <= int(number_text) <= 255:
        raise ConfigError(f"{path}: [time_profiles.{number_text}] must be numbered 1..255 (0 means always); rename it")
    sec.only(PROFILE_KEYS)
    days: dict[int, tuple[TimeWindow, ...]] = {}
    for i, day in enumerate(WEEKDAYS):
        parsed = _windows(sec, day)
        if parsed:
            days[i] = parsed
    return TimeProfile(
        int(number_text), sec.get("name", str, default=f"profile {number_text}"), days, _windows(sec, "holiday")
    )


def _windows(sec: _Section, key: str) -> tuple[TimeWindow, ...]:
    parsed = []
    for w in sec.get(key, list, default=[]):
        try:
            start_s, end_s = str(w).split("-")
            start, end = _parse_clock(start_s), _parse_clock(end_s)
        except ValueError:
            raise sec.fail(key, f"window {w!r} is not HH:MM-HH:MM", 'write e.g. "07:30-19:00"') from None
        if not start < end:
            raise sec.fail(key, f"window {w!r} ends before it starts", "split windows that cross midnight in two")
        parsed.append(TimeWindow(start, end))
    return tuple(parsed)


def _holidays(path: Path, raw: object) -> Holidays:
    """[holidays]: "YYYY-MM-DD" = "name", one line per holiday date (the terminal's local dates)."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{path}: holidays must be a table of dates, e.g. [holidays] 2026-10-01 = "National Day"')
    days: dict[dt.date, str] = {}
    for key, name in raw.items():
        try:
            day = dt.date.fromisoformat(key) if isinstance(key, str) and len(key) == 10 else None
        except ValueError:
            day = None
        if day is None:
            raise ConfigError(f"{path}: [holidays].{key} is not a date YYYY-MM-DD; write e.g. 2026-10-01")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f'{path}: [holidays].{key} must name the holiday; write e.g. {key} = "National Day"')
        days[day] = name
    return MappingProxyType(dict(sorted(days.items())))


@dataclass(frozen=True)
class Shift:
    """An attendance shift: clock in by start + grace, clock out no earlier than end - early_minutes."""

    name: str
    start: dt.time
    end: dt.time
    grace_minutes: int = 0
    early_minutes: int = 0  # tolerance before the end (leaving earlier than end - early_minutes is "early")
    days: tuple[int, ...] = (0, 1, 2, 3, 4)  # weekdays worked (0 = Monday); holidays are never worked days


def _shifts(path: Path, raw: object) -> dict[str, Shift]:
    """[shifts.NAME]: start = "09:00", end = "18:00", grace_minutes = 5, days = ["mon", ...]."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: shifts must be tables [shifts.NAME]; see docs/door-rules.md")
    shifts: dict[str, Shift] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: shifts.{name} must be a table; see docs/door-rules.md")
        sec = _Section(path, f"shifts.{name}", table)
        sec.only(SHIFT_KEYS)
        times = []
        for key in ("start", "end"):
            text = sec.get(key, str, required=True)
            try:
                times.append(dt.datetime.strptime(text, "%H:%M").time())
            except ValueError:
                raise sec.fail(key, f"= {text!r} is not HH:MM", 'write e.g. "09:00"') from None
        if not times[0] < times[1]:
            raise sec.fail("end", "is not after start", "a shift ends the same day it starts (split a night shift)")
        minutes = []
        for key in ("grace_minutes", "early_minutes"):
            value = sec.get(key, int, default=0)
            if not 0 <= value <= 240:
                raise sec.fail(key, f"= {value} is outside 0..240", "use a few minutes")
            minutes.append(value)
        day_names = sec.get("days", list, default=list(WEEKDAYS[:5]))
        if not day_names or any(d not in WEEKDAYS for d in day_names) or len(set(day_names)) != len(day_names):
            raise sec.fail("days", f"= {day_names!r} is not a list of distinct weekdays", f"use {', '.join(WEEKDAYS)}")
        shifts[name] = Shift(
            name, times[0], times[1], minutes[0], minutes[1], tuple(sorted(WEEKDAYS.index(d) for d in day_names))
        )
    return shifts


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file; pass --config with the path of firmware.toml") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that place") from None
    unknown = first_unknown(raw, SECTIONS)
    if unknown is not None:
        what = "section" if isinstance(raw[unknown], dict) else "key outside any section"
        raise ConfigError(f"{path}: [{unknown}] is not a known {what}; {suggestion(unknown, SECTIONS)}")

    def section(name: str, required: bool = True) -> _Section:
        table = raw.get(name)
        if table is None and required:
            raise ConfigError(f"{path}: section [{name}] is missing; copy it from the documented firmware.toml")
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} must be a [{name}] section")
        return _Section(path, name, table or {})

    t = section("terminal")
    t.only(TERMINAL_KEYS)
    tz_name = t.get("timezone", str, default="Asia/Shanghai")
    try:
        tz = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise t.fail(
            "timezone", f"= {tz_name!r} is not a known time zone", 'use an IANA name such as "Asia/Shanghai"'
        ) from None
    terminal = TerminalSection(
        id=t.get("id", str, required=True),
        id_bytes=t.digits("id", 12),
        kind=t.choice("kind", KINDS),
        enterprise_id=t.digits("enterprise_id", 8),
        name=t.get("name", str, default="onecard terminal"),
        timezone=tz,
        database=t.path_value("database"),
        blacklist=t.path_value("blacklist"),
    )

    reader = _reader_section(section("reader"))

    s = section("sam")
    s.only(SAM_KEYS)
    backend = s.choice("backend", SAM_BACKENDS, default="keystore")
    sam = SamSection(
        backend=backend,
        keystore=s.path_value("keystore", required=backend == "keystore"),
        passphrase_file=s.path_value("passphrase_file", required=False),
        device_secret_file=s.path_value("device_secret_file", required=False),
        reader=s.get("reader", str, required=backend == "psam", default=""),
    )
    if backend == "keystore" and (sam.passphrase_file is None) == (sam.device_secret_file is None):
        raise s.fail(
            "passphrase_file",
            "and device_secret_file: exactly one must be set",
            "set passphrase_file or device_secret_file, not both",
        )

    door = _door_hardware(section("door", required=terminal.kind == "door"))
    attendance = _attendance_section(section("attendance", required=False))
    pos = _pos_section(section("pos", required=terminal.kind == "pos"))
    topup = _topup_section(section("topup", required=False))

    output = _output_section(section("output", required=False))

    profiles = _time_profiles(path, raw.get("time_profiles", {}))
    holidays = _holidays(path, raw.get("holidays", {}))
    shifts = _shifts(path, raw.get("shifts", {}))
    _check_door_profiles(path, "door", door, profiles)
    exit_reader = raw.get("exit_reader")
    if exit_reader is not None:
        if terminal.kind != "door":
            raise ConfigError(f"{path}: [exit_reader] is for a door terminal; remove it")
        if door.area == 0:
            raise ConfigError(f"{path}: [exit_reader] needs [door].area (anti-passback area 1..255); set it")
        if not isinstance(exit_reader, dict):
            raise ConfigError(f"{path}: exit_reader must be an [exit_reader] section")
        exit_reader = _reader_section(_Section(path, "exit_reader", exit_reader))

    return Config(
        path=path,
        terminal=terminal,
        reader=reader,
        sam=sam,
        door=door,
        attendance=attendance,
        output=output,
        pos=pos,
        topup=topup,
        time_profiles=profiles,
        exit_reader=exit_reader,
        holidays=holidays,
        shifts=shifts,
        sync=_sync_section(section("sync", required=False)),
        display=_display_section(section("display", required=False)),
        keypad=_keypad_section(section("keypad", required=False)),
        status=_status_section(section("status", required=False)),
        printer=_printer_section(section("printer", required=False)),
    )


def _reader_section(r: _Section) -> ReaderSection:
    r.only(READER_KEYS)
    driver = r.choice("driver", READER_DRIVERS)
    reader = ReaderSection(
        driver=driver,
        name=r.get("name", str, required=driver == "pcsc", default=""),
        path=r.get("path", str, required=driver == "nfc", default=""),
        card=r.path_value("card", required=driver == "simulator"),
        command_timeout_ms=r.get("command_timeout_ms", int, default=500),
    )
    if not 50 <= reader.command_timeout_ms <= 10_000:
        raise r.fail(
            "command_timeout_ms",
            f"= {reader.command_timeout_ms} is not 50..10000",
            "write the deadline of one card command in milliseconds, e.g. 500",
        )
    return reader


def _check_door_profiles(where: Path, name: str, door: DoorSection, profiles: dict[int, TimeProfile]) -> None:
    """A normally-open profile must exist: a door never stays unlocked by a profile nobody defined."""
    number = door.normally_open_profile
    if number and number not in profiles:
        raise ConfigError(
            f"{where}: [{name}].normally_open_profile = {number} is not a defined time profile; "
            f"add [time_profiles.{number}] or set 0 (never normally open)"
        )


def _pin(sec: _Section, key: str, default: int = 0) -> int:
    pin = sec.get(key, int, default=default)
    if not 0 <= pin <= 27:
        raise sec.fail(key, f"= {pin} is not a BCM GPIO number", "use 1..27 (0 = not fitted); see docs/install.md")
    return pin


def _door_section(d: _Section, known: tuple[str, ...] = DOOR_PLATFORM_KEYS) -> DoorSection:
    """The door's decision settings: group and times (a platform document may set these, never the wiring)."""
    d.only(known)
    door = DoorSection(
        group=d.get("group", int, default=1),
        open_seconds=d.get("open_seconds", float, default=5.0),
        held_open_seconds=d.get("held_open_seconds", float, default=30.0),
        normally_open_profile=d.get("normally_open_profile", int, default=0),
        first_card_unlock=d.get("first_card_unlock", bool, default=False),
        area=d.get("area", int, default=0),
        direction=d.choice("direction", DIRECTIONS, default="entry"),
        anti_passback=d.choice("anti_passback", PASSBACK_MODES, default="off"),
        passback_offline=d.choice("passback_offline", PASSBACK_OFFLINE, default="soft"),
        passback_fresh_seconds=d.get("passback_fresh_seconds", float, default=300.0),
    )
    if not 0 <= door.normally_open_profile <= 255:
        raise d.fail(
            "normally_open_profile", f"= {door.normally_open_profile} is outside 0..255", "name a time profile, 0 = off"
        )
    if door.first_card_unlock and not door.normally_open_profile:
        raise d.fail("first_card_unlock", "is set without normally_open_profile", "set the profile or remove it")
    if not 0 <= door.area <= 255:
        raise d.fail("area", f"= {door.area} is outside 0..255", "number the anti-passback area 1..255, 0 = none")
    if door.anti_passback == "on" and not door.area:
        raise d.fail("anti_passback", "is on without an area", "set area = 1..255 (the same on each door of it)")
    if not 0 < door.passback_fresh_seconds <= 86400:
        raise d.fail("passback_fresh_seconds", "is outside (0, 86400]", "use a few minutes, e.g. 300")
    if not 1 <= door.group <= 64:
        raise d.fail("group", f"= {door.group} is outside 1..64", "door groups are numbered 1 to 64")
    if not 0 < door.open_seconds <= 60:
        raise d.fail("open_seconds", f"= {door.open_seconds} is outside (0, 60]", "use a few seconds")
    if not 0 < door.held_open_seconds <= 3600:
        raise d.fail("held_open_seconds", f"= {door.held_open_seconds} is outside (0, 3600]", "use half a minute or so")
    return door


def _door_hardware(d: _Section) -> DoorSection:
    """[door] of firmware.toml: the decision settings and the door's wiring."""
    door = dataclasses.replace(
        _door_section(d, DOOR_KEYS),
        strike_pin=_pin(d, "strike_pin"),
        strike_active_high=d.get("strike_active_high", bool, default=True),
        lock=d.choice("lock", LOCKS, default="fail-secure"),
        contact_pin=_pin(d, "contact_pin"),
        rex_pin=_pin(d, "rex_pin"),
    )
    pins = [p for p in (door.strike_pin, door.contact_pin, door.rex_pin) if p]
    if len(set(pins)) != len(pins):
        raise d.fail("strike_pin", "contact_pin and rex_pin share a GPIO", "give each its own pin")
    return door


def _output_section(o: _Section) -> OutputSection:
    o.only(OUTPUT_KEYS)
    return OutputSection(
        driver=o.choice("driver", OUTPUT_DRIVERS, default="console"),
        color=o.get("color", bool, default=True),
        green_led_pin=_pin(o, "green_led_pin"),
        red_led_pin=_pin(o, "red_led_pin"),
        buzzer_pin=_pin(o, "buzzer_pin"),
    )


def _display_section(d: _Section) -> DisplaySection:
    d.only(DISPLAY_KEYS)
    default = DisplaySection()

    def bounded(key: str, low: int, high: int) -> int:
        value = d.get(key, int, default=getattr(default, key))
        if not low <= value <= high:
            raise d.fail(key, f"= {value} is outside {low}..{high}", "see the documented [display] section")
        return value

    return DisplaySection(
        driver=d.choice("driver", DISPLAY_DRIVERS, default="none"),
        width=bounded("width", 64, 1024),
        height=bounded("height", 32, 1024),
        rotate=bounded("rotate", 0, 3),
        spi_port=bounded("spi_port", 0, 1),
        spi_device=bounded("spi_device", 0, 2),
        gpio_dc=_pin(d, "gpio_dc", default.gpio_dc),
        gpio_rst=_pin(d, "gpio_rst", default.gpio_rst),
        i2c_port=bounded("i2c_port", 0, 22),
        i2c_address=bounded("i2c_address", 0x03, 0x77),
        font=d.path_value("font", required=False) or default.font,
    )


def _keypad_section(k: _Section) -> KeypadSection:
    k.only(KEYPAD_KEYS)
    keypad = KeypadSection(
        driver=k.choice("driver", KEYPAD_DRIVERS, default="console"),
        device=k.get("device", str, default=""),
        baudrate=k.get("baudrate", int, default=9600),
        tap_without_amount=k.choice("tap_without_amount", ("balance", "ask"), default="balance"),
    )
    if keypad.driver in ("evdev", "serial") and not keypad.device:
        raise k.fail(
            "device",
            "is missing",
            f"name the {keypad.driver} device, e.g. "
            + ('"/dev/input/by-id/usb-...-event-kbd"' if keypad.driver == "evdev" else '"/dev/ttyUSB0"'),
        )
    if keypad.baudrate not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
        raise k.fail("baudrate", f"= {keypad.baudrate} is not a standard rate", "use e.g. 9600")
    return keypad


def _status_section(s: _Section) -> StatusSection:
    s.only(STATUS_KEYS)
    listen = s.get("listen", str, default="")
    if not listen:
        return StatusSection()
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.fail("listen", f"= {listen!r} is not HOST:PORT", 'write e.g. "127.0.0.1:8080", or "" for off')
    return StatusSection(host=host.strip("[]"), port=int(port))


def _attendance_section(a: _Section) -> AttendanceSection:
    a.only(ATTENDANCE_KEYS)
    attendance = AttendanceSection(repeat_window_seconds=a.get("repeat_window_seconds", float, default=60.0))
    if not 0 <= attendance.repeat_window_seconds <= 3600:
        raise a.fail("repeat_window_seconds", "is outside 0..3600", "use a minute or two")
    return attendance


def _pos_section(p: _Section) -> PosSection:
    p.only(POS_KEYS)
    pos = PosSection(
        max_purchase=_yuan(p, "max_purchase", "100.00"),
        offline_limit=_yuan(p, "offline_limit", "500.00"),
        undo_window_seconds=p.get("undo_window_seconds", float, default=300.0),
        card_wait_seconds=p.get("card_wait_seconds", float, default=30.0),
        daily_max_amount=_yuan(p, "daily_max_amount", "0", allow_zero=True),
        pin_above=_yuan(p, "pin_above", "0", allow_zero=True),
        meal_periods=_meal_periods(p),
        price_keys=_price_keys(p),
        operators=_operators(p),
    )
    if not 0 <= pos.undo_window_seconds <= 86400:
        raise p.fail("undo_window_seconds", "is outside 0..86400", "use a few minutes")
    if not 1 <= pos.card_wait_seconds <= 600:
        raise p.fail("card_wait_seconds", "is outside 1..600", "use half a minute")
    return pos


def _subtables(p: _Section, key: str) -> dict[str, _Section]:
    raw = p.get(key, dict, default={})
    out = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise p.fail(f"{key}.{name}", "is not a table", f"write it as [{p.name}.{key}.{name}] with its keys")
        out[str(name)] = _Section(p.path, f"{p.name}.{key}.{name}", table)
    return out


def _meal_periods(p: _Section) -> tuple[MealPeriod, ...]:
    periods = []
    for name, sec in _subtables(p, "meal_periods").items():
        sec.only(MEAL_PERIOD_KEYS)
        if not name.replace("_", "").isalnum() or not name.isascii() or len(name) > 20:
            raise p.fail(f"meal_periods.{name}", "is not a period name", "use 1-20 letters, digits or _ (e.g. lunch)")
        window = sec.get("window", str, required=True)
        try:
            start_s, end_s = window.split("-")
            start, end = _parse_clock(start_s), _parse_clock(end_s)
        except ValueError:
            raise sec.fail("window", f"= {window!r} is not HH:MM-HH:MM", 'write e.g. "11:00-13:30"') from None
        if start == end or start == dt.time.max:
            raise sec.fail("window", f"= {window!r} is empty", "give the period a start and a later end")
        count = sec.get("max_count", int, default=0)
        if not 0 <= count <= 100:
            raise sec.fail("max_count", f"= {count} is outside 0..100", "use 0 for no limit, or e.g. 1")
        periods.append(
            MealPeriod(
                name=name,
                start=start,
                end=end,
                max_count=count,
                max_amount=_yuan(sec, "max_amount", "0", allow_zero=True),
                price=_yuan(sec, "price", "0", allow_zero=True),
            )
        )
    periods.sort(key=lambda m: m.start)
    minutes = [0] * (24 * 60)  # which period owns each minute of the day: two periods may never overlap
    for m in periods:
        first = m.start.hour * 60 + m.start.minute
        last = 24 * 60 if m.end == dt.time.max else m.end.hour * 60 + m.end.minute
        span = range(first, last) if last > first else [*range(first, 24 * 60), *range(0, last)]
        for minute in span:
            if minutes[minute]:
                other = periods[minutes[minute] - 1]
                raise p.fail(
                    f"meal_periods.{m.name}",
                    f"({m}) overlaps meal period {other.name} ({other})",
                    "make the windows of the meal periods disjoint",
                )
            minutes[minute] = periods.index(m) + 1
    return tuple(periods)


def _price_keys(p: _Section) -> dict[str, PriceKey]:
    keys = {}
    for key, sec in _subtables(p, "price_keys").items():
        if key not in FUNCTION_KEYS:
            raise p.fail(f"price_keys.{key}", "is not a function key", f"use one of {FUNCTION_KEYS[0]}..F12")
        sec.only(PRICE_KEY_KEYS)
        keys[key] = PriceKey(key, sec.get("item", str, required=True)[:24], _yuan(sec, "price", "0"))
    return keys


def _operators(p: _Section) -> dict[str, Operator]:
    from common.passwords import PasswordFormatError, check_hash_format

    operators = {}
    for number, sec in _subtables(p, "operators").items():
        if not (number.isdigit() and 1 <= len(number) <= 8):
            raise p.fail(f"operators.{number}", "is not an operator number", "number operators with 1-8 digits")
        sec.only(OPERATOR_KEYS)
        hashed = sec.get("password_hash", str, required=True)
        try:
            check_hash_format(hashed)
        except PasswordFormatError as exc:
            raise sec.fail(
                "password_hash", f"is not a password hash ({exc})", "make one with `onecard terminal hash-password`"
            ) from None
        operators[number] = Operator(number, sec.get("name", str, default=f"operator {number}"), hashed)
    return operators


def _printer_section(p: _Section) -> PrinterSection:
    p.only(PRINTER_KEYS)
    printer = PrinterSection(
        driver=p.choice("driver", PRINTER_DRIVERS, default="none"),
        usb_vendor=p.get("usb_vendor", int, default=0),
        usb_product=p.get("usb_product", int, default=0),
        device=p.get("device", str, default=""),
        baudrate=p.get("baudrate", int, default=9600),
        host=p.get("host", str, default=""),
        port=p.get("port", int, default=9100),
        width=p.get("width", int, default=32),
    )
    needs = {"usb": ("usb_vendor", "usb_product"), "serial": ("device",), "network": ("host",)}
    for key in needs.get(printer.driver, ()):
        if not getattr(printer, key):
            raise p.fail(key, "is missing", f"set it for [printer] driver = {printer.driver!r} (see firmware.toml)")
    if not 0 < printer.port < 65536:
        raise p.fail("port", f"= {printer.port} is not a TCP port", "use 9100 (raw printing)")
    if not 24 <= printer.width <= 64:
        raise p.fail("width", f"= {printer.width} is outside 24..64", "use 32 for 58 mm paper, 48 for 80 mm")
    return printer


def _topup_section(t: _Section) -> TopupSection:
    t.only(TOPUP_KEYS)
    return TopupSection(max_load=_yuan(t, "max_load", "1000.00"))


def document_max_load(document: dict | None) -> int:
    """The per-load top-up limit (fen) that top-up terminals apply under this platform document (the firmware
    default when the document sets none); the platform checks over-the-air top-ups against it."""
    topup = (document or {}).get("topup")
    return _topup_section(
        _Section(Path("platform configuration"), "topup", topup if isinstance(topup, dict) else {})
    ).max_load


def document_calendar(document: dict | None) -> tuple[Holidays, dict[str, Shift]]:
    """The holiday calendar and the attendance shifts of a platform document (the platform's attendance bill uses
    the very dates and shifts the terminals were sent), checked by the same validators."""
    document = document or {}
    where = Path("platform configuration")
    return _holidays(where, document.get("holidays", {})), _shifts(where, document.get("shifts", {}))


def _time_profiles(path: Path, profiles_raw) -> dict[int, TimeProfile]:
    if not isinstance(profiles_raw, dict):
        raise ConfigError(f"{path}: time_profiles must be tables [time_profiles.N]; see firmware.toml")
    profiles = {0: ALWAYS}
    for number_text, table in profiles_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: time_profiles.{number_text} must be a table; see firmware.toml")
        profile = _time_profile(path, number_text, table)
        profiles[profile.number] = profile
    return profiles


def validate_platform_document(document: object, where: str = "platform configuration") -> None:
    """Check a configuration document exactly as a terminal will (the platform runs this before publishing):
    every section, every door entry, every key; ConfigError names the first problem and the fix."""
    _document_changes(Path(where), document, None)


def apply_platform_document(config: Config, version: int, document: dict) -> Config:
    """The configuration with the platform's signed document (docs/sync-protocol.md, "Configuration document")
    laid over it. Each section present replaces the terminal's; ConfigError names what is wrong and nothing applies.
    """
    changes = _document_changes(Path(f"platform configuration v{version}"), document, config.terminal.id)
    if "door" in changes:  # the platform's group and times; the door's wiring stays as firmware.toml has it
        changes["door"] = dataclasses.replace(
            config.door, **{k: getattr(changes["door"], k) for k in DOOR_PLATFORM_KEYS}
        )
    applied = dataclasses.replace(config, **changes)
    _check_door_profiles(Path(f"platform configuration v{version}"), "door", applied.door, applied.time_profiles)
    if applied.exit_reader is not None and not applied.door.area:
        raise ConfigError(
            f"platform configuration v{version}: doors.{config.terminal.id}.area = 0 but this door has an "
            "[exit_reader]; give it an area"
        )
    return applied


def _document_changes(where: Path, document: object, terminal_id: str | None) -> dict:
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: not a JSON object; the platform must publish an object")
    unknown = first_unknown(document, DOCUMENT_SECTIONS)
    if unknown is not None:
        raise ConfigError(f"{where}: unknown section {unknown!r}; {suggestion(unknown, DOCUMENT_SECTIONS)}")

    def table(name: str) -> _Section:
        value = document[name]
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name} must be an object")
        return _Section(where, name, value)

    changes: dict = {}
    doors = document.get("doors")
    if doors is not None:
        if not isinstance(doors, dict):
            raise ConfigError(f"{where}: doors must be an object keyed by terminal ID")
        # Every entry is checked, not only this terminal's: the same document is accepted or refused everywhere.
        for door_id, entry in doors.items():
            if not (isinstance(door_id, str) and len(door_id) == 12 and door_id.isdigit()):
                raise ConfigError(f"{where}: doors.{door_id} is not a terminal ID; key doors by 12-digit terminal IDs")
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: doors.{door_id} must be an object")
            door = _door_section(_Section(where, f"doors.{door_id}", entry))
            if door_id == terminal_id:
                changes["door"] = door
    if "attendance" in document:
        changes["attendance"] = _attendance_section(table("attendance"))
    if "pos" in document:
        changes["pos"] = _pos_section(table("pos"))
    if "topup" in document:
        changes["topup"] = _topup_section(table("topup"))
    if "time_profiles" in document:
        changes["time_profiles"] = _time_profiles(where, document["time_profiles"])
    if "holidays" in document:
        changes["holidays"] = _holidays(where, document["holidays"])
    if "shifts" in document:
        changes["shifts"] = _shifts(where, document["shifts"])
    return changes


def _yuan(section: _Section, key: str, default: str, allow_zero: bool = False) -> int:
    from common.errors import UserError
    from common.money import parse_yuan

    text = section.get(key, str, default=default)
    try:
        fen = parse_yuan(text, key)
    except UserError:
        raise section.fail(key, f"= {text!r} is not an amount in yuan", 'write it as a string, e.g. "100.00"') from None
    if fen < 0 or (fen == 0 and not allow_zero):
        raise section.fail(key, "must be more than 0", 'write e.g. "100.00"')
    return fen


MAX_BROKERS = 16


def _broker_list(y: _Section) -> tuple[tuple[str, int], ...]:
    """[sync].brokers = ["mq1.example:8883", "[fd00::2]:8883", "mq3"]: the port defaults to 8883."""
    raw = y.get("brokers", list, default=[])
    if "brokers" in y.table and not raw:
        raise y.fail("brokers", "is empty", 'list the nodes, e.g. ["mq1:8883", "mq2:8883"], or use broker_host')
    if len(raw) > MAX_BROKERS:
        raise y.fail("brokers", f"lists {len(raw)} nodes", f"list at most {MAX_BROKERS}")
    out: list[tuple[str, int]] = []
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise y.fail("brokers", f'entry {item!r} is not a "host:port" string', 'write e.g. "mq1:8883"')
        text = item.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        elif ":" in text:
            host, port_text = "", None  # a bare IPv6 address: needs brackets to carry a port
        else:
            host, port_text = text, ""
        if not host or port_text is None or (port_text and not port_text.isdigit()):
            raise y.fail("brokers", f"entry {item!r} is not host:port", 'write e.g. "mq1:8883" or "[fd00::1]:8883"')
        port = int(port_text) if port_text else 8883
        if not 0 < port <= 65535:
            raise y.fail("brokers", f"entry {item!r} has port {port} outside 1..65535", "use the TLS port, e.g. 8883")
        if (host, port) in out:
            raise y.fail("brokers", f"lists {host}:{port} twice", "list each node once")
        out.append((host, port))
    return tuple(out)


def _sync_section(y: _Section) -> SyncSection | None:
    if not y.table:
        return None

    def positive(key: str, kind: type, default, upper):
        value = y.get(key, kind, default=default)
        if not 0 < value <= upper:
            raise y.fail(key, f"= {value} is outside (0, {upper}]", f"use a value up to {upper}")
        return value

    y.only(keys_of(SyncSection))
    brokers = _broker_list(y)
    if brokers and ("broker_host" in y.table or "broker_port" in y.table):
        raise y.fail(
            "brokers",
            "is given together with broker_host/broker_port",
            'keep one: brokers = ["host:port", ...] lists every node, the first included',
        )
    sync = SyncSection(
        broker_host=brokers[0][0] if brokers else y.get("broker_host", str, required=True),
        broker_port=brokers[0][1] if brokers else positive("broker_port", int, 8883, 65535),
        brokers=brokers,
        ca_file=y.path_value("ca_file"),
        cert_file=y.path_value("cert_file"),
        key_file=y.path_value("key_file"),
        platform_public_key=y.path_value("platform_public_key"),
        database=y.path_value("database"),
        mqtt_version=y.choice("mqtt_version", ("auto", "5", "3.1.1"), default="auto"),
        batch_size=positive("batch_size", int, 500, 5000),
        max_inflight_batches=positive("max_inflight_batches", int, 4, 64),
        max_events_per_s=positive("max_events_per_s", float, 5000.0, 1_000_000.0),
        ack_timeout_seconds=positive("ack_timeout_seconds", float, 10.0, 3600.0),
        heartbeat_seconds=positive("heartbeat_seconds", float, 30.0, 3600.0),
        keepalive_seconds=positive("keepalive_seconds", int, 30, 3600),
        clock_tolerance_seconds=positive("clock_tolerance_seconds", float, 5.0, 86400.0),
        compact_keep=y.get("compact_keep", int, default=50_000),
        outbox_capacity=positive("outbox_capacity", int, 200_000, 10**9),
        compress_uploads=y.get("compress_uploads", bool, default=False),
        upload_linger_seconds=y.get("upload_linger_seconds", float, default=0.0),
    )
    if not 0 <= sync.upload_linger_seconds <= 3600:
        raise y.fail(
            "upload_linger_seconds",
            f"= {sync.upload_linger_seconds} is outside [0, 3600]",
            "use 0 (send at once) up to 3600 seconds",
        )
    if sync.compact_keep < 0:
        raise y.fail("compact_keep", f"= {sync.compact_keep} is negative", "use 0 or more acknowledged records to keep")
    return sync
