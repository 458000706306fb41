"""The terminal's adapters opened from its configuration: SAM (checked against its binding), reader, storage, the
whole Terminal. Shared by `onecard terminal run`, the self-test and provisioning; no argparse, no printing."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from common.config import Config, ConfigError, load_config
from common.errors import UserError

log = logging.getLogger("onecard.terminal")


def read_config(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def open_sam(config: Config, check_binding: bool = True, event_log=None):
    """The configured SAM; with check_binding, refuse one other than the SAM bound at provisioning (if any).
    With the terminal's event_log, a software SAM keeps its purse state (TSN) in that log."""
    sam = _open_sam(config, event_log)
    if check_binding:
        from sam.interface import SamError
        from terminal.sam_binding import BindingError, check_bound_sam

        try:
            check_bound_sam(config.path, config.sam.backend, sam)
        except (BindingError, SamError) as exc:
            if hasattr(sam, "close"):
                sam.close()
            raise UserError(str(exc)) from None
    return sam


def _open_sam(config: Config, event_log=None):
    from sam.interface import SamError
    from sam.keystore import KeystoreUnlock
    from sam.sam_state import StateFile
    from sam.software import SoftwareSam, default_state_path
    from terminal.sam_state_log import LoggedSamState

    s = config.sam
    if s.backend == "psam":
        from sam.pcsc_sam import PcscSam
        from terminal.reader import ReaderError

        try:
            return PcscSam(s.reader)
        except (SamError, ReaderError) as exc:
            raise UserError(str(exc)) from None
    try:
        if s.passphrase_file is not None:
            unlock = KeystoreUnlock.from_passphrase_file(s.passphrase_file, f"[sam].passphrase_file in {config.path}")
        else:
            unlock = KeystoreUnlock.from_device_secret_file(
                s.device_secret_file, f"[sam].device_secret_file in {config.path}"
            )
        state = None
        if event_log is not None:
            state = LoggedSamState(event_log, config.terminal.enterprise_id, StateFile(default_state_path(s.keystore)))
        return SoftwareSam.open(s.keystore, unlock, state=state)
    except SamError as exc:
        raise UserError(str(exc)) from None


def _reader_factory(r):
    """A function that opens the configured PC/SC or nfcpy reader (ReaderError if it cannot), or None."""
    if r.driver == "pcsc":
        from terminal.readers.pcsc import PcscReader

        return lambda: PcscReader(r.name)
    if r.driver == "nfc":
        from terminal.readers.nfc import NfcReader

        return lambda: NfcReader(r.path)
    return None


def open_reader(config: Config, wait: bool = False, simulated_reader: Callable[[Path], object] | None = None):
    """The configured reader. With wait (terminal run), a PC/SC or nfcpy reader that is absent or fails later
    is opened again when it is back (terminal/reader.py ReopeningReader) instead of stopping the terminal.
    Driver "simulator" needs `simulated_reader` (card file -> reader holding that card), which only the command
    line's wiring (onecard/wiring.py) or a test hands in."""
    from terminal.reader import TwoReaders

    first = _open_one(config, config.reader, "reader", wait, simulated_reader)
    if config.exit_reader is None:
        return first
    try:
        second = _open_one(config, config.exit_reader, "exit_reader", wait, simulated_reader)
    except BaseException:
        first.close()
        raise
    other = "exit" if config.door.direction == "entry" else "entry"
    return TwoReaders(first, config.door.direction, second, other)


def _open_one(config: Config, r, section: str, wait: bool, simulated_reader):
    from terminal.reader import ReaderError, ReopeningReader

    factory = _reader_factory(r)
    if factory is not None:
        if wait:
            return ReopeningReader(f"{r.driver}:{r.name or r.path}", factory)
        try:
            return factory()
        except ReaderError as exc:
            raise UserError(str(exc)) from None
    if simulated_reader is None:
        raise UserError(
            f'[{section}] driver = "simulator" in {config.path} runs only under the onecard command '
            "(its simulator wiring); use driver pcsc or nfc here"
        )
    return simulated_reader(r.card)


def open_storage(config: Config):
    from common.db import DatabaseError
    from terminal.blacklist import Blacklist
    from terminal.event_log import EventLog

    for path in (config.terminal.database, config.terminal.blacklist):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        event_log = EventLog.open(config.terminal.database, config.terminal.id)
        blacklist = Blacklist.open(config.terminal.blacklist)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    return event_log, blacklist


def open_outputs(config: Config, event_log, snapshot_dir: Path | None = None):
    """The [output] driver (console or gpio) with the [display] driver, if any; UserError naming the setting."""
    from common.logs import log_event
    from terminal.outputs import ConsoleOutputs, WithDisplay

    screen_driver = None
    d = config.display
    if d.driver != "none" or snapshot_dir is not None:
        from terminal.display import DisplayError, Fonts, LumaDisplay, open_device

        try:
            screen_driver = LumaDisplay(open_device(d), Fonts(d.font, d.height), snapshot_dir)
        except DisplayError as exc:
            raise UserError(str(exc)) from None
    if config.output.driver == "console":
        outputs = ConsoleOutputs(config.terminal.name, color=config.output.color)
    else:
        from common.door_events import DOOR_EVENT_KINDS, open_alarm_from_log
        from terminal.gpio_outputs import GpioDoor, GpioError, GpioOutputs, alarm_screen_for

        holder: list = []  # [the GPIO outputs, the outputs as a whole]: the door exists before either

        def on_door_event(event) -> None:  # from the door's thread: sound and show now, log from the tap loop
            if holder:
                holder[0].door_event(event)
                holder[-1].show(alarm_screen_for(event))

        door = None
        try:
            if config.terminal.kind == "door":
                if config.door.lock == "fail-secure" and not config.door.strike_active_high:
                    log_event(
                        log,
                        "door.wiring_warning",
                        logging.WARNING,
                        pin=config.door.strike_pin,
                        msg="an active-low relay board energises when the process dies and the pin floats: "
                        "a killed terminal may leave a fail-secure door unlocked (docs/install.md, Wiring)",
                    )
                last = event_log.last_event_of(DOOR_EVENT_KINDS) if event_log is not None else None
                door = GpioDoor(
                    config.door, open_alarm=open_alarm_from_log(last.kind if last else None), on_event=on_door_event
                )
            gpio = GpioOutputs(config.output, door)
        except GpioError as exc:
            if door is not None:
                door.close()
            raise UserError(str(exc)) from None
        outputs = gpio
        holder.append(gpio)
    if screen_driver is not None:
        outputs = WithDisplay(outputs, screen_driver)
    if config.output.driver == "gpio":
        holder.append(outputs)
    return outputs


def build_terminal(
    config: Config,
    stack: ExitStack,
    *,
    sam=None,
    reader=None,
    outputs=None,
    wait_for_reader=False,
    simulated_reader: Callable[[Path], object] | None = None,
    snapshot_dir: Path | None = None,
):
    """Open every adapter the configuration names (tests may hand in a SAM, reader or outputs of their own);
    each failure is one UserError line. The outputs are closed (the strike released) when the stack unwinds."""
    from terminal.app import Terminal

    if config.sync is not None:
        from common.db import DatabaseError
        from sync_agent.store import check_existing

        try:  # absent is fine (the agent has not run yet); garbage is refused now, not at the first refresh
            check_existing(config.sync.database, config.terminal.id)
        except DatabaseError as exc:
            raise UserError(str(exc)) from None
    event_log, blacklist = open_storage(config)
    stack.callback(event_log.close)
    stack.callback(blacklist.close)
    sam = sam or open_sam(config, event_log=event_log)
    if reader is None:
        reader = open_reader(config, wait=wait_for_reader, simulated_reader=simulated_reader)
        stack.callback(reader.close)
    if outputs is None:
        outputs = open_outputs(config, event_log, snapshot_dir)
        stack.callback(outputs.close)
    sync = {}
    if config.sync is not None:
        # The agent's files are read here, never written: the terminal keeps working when the agent is down.
        from sync_agent.store import outbox_pressure, read_acked_seq
        from terminal.inbox import Inbox

        db, capacity = config.sync.database, config.sync.outbox_capacity
        inbox = Inbox(db)
        stack.callback(inbox.close)
        sync = dict(
            inbox=inbox,
            synced_seq=lambda: read_acked_seq(db),
            outbox_pressure=lambda: outbox_pressure(event_log, db, capacity),
        )
    printer = open_receipt_printer(config, stack)
    return Terminal(config, sam, event_log, blacklist, outputs, printer=printer, **sync), reader


def open_receipt_printer(config: Config, stack: ExitStack):
    """The [printer] a till prints receipts on (None for driver "none"), opened at start so a wrong setting is one
    line now; a printer that is off or out of paper later only costs receipts (Terminal.print_receipt logs it)."""
    if config.printer.driver == "none":
        return None
    from terminal.receipt import open_printer

    try:
        printer = open_printer(config.printer)
    except Exception as exc:  # noqa: BLE001 - python-escpos raises its own, pyusb's, pyserial's and OSError
        raise UserError(
            f"[printer] driver = {config.printer.driver!r} cannot be opened ({type(exc).__name__}: {exc}); check "
            'the cable or address and the settings in [printer], or set driver = "none"'
        ) from None
    stack.callback(lambda: getattr(printer, "close", lambda: None)())
    return printer


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
