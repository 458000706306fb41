"""Structured logs: one event per line, `event=name key=value ...`, with a sentence saying what happened."""

from __future__ import annotations

import logging
import os
import sys


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_event(event: str, **fields: object) -> str:
    return " ".join([f"event={event}"] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None])


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, format_event(event, **fields))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (a test harness swaps it per test)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


# syslog priorities journald reads from a "<N>" line prefix on a service's stdout/stderr (sd-daemon(3)).
JOURNAL_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """Prefixes each line with its journald priority, so `journalctl -p warning` shows warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in JOURNAL_PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        return f"<{JOURNAL_PRIORITY[level]}>" + super().format(record)


def stream_is_journal(stream, environ=os.environ) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM is its "device:inode")."""
    try:
        device, inode = (int(x) for x in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup_logging(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    fmt = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
    if stream_is_journal(stream if stream is not None else sys.stderr):
        # journald stamps every line itself; keep the rest of the line as it is elsewhere.
        handler.setFormatter(JournalFormatter("level=%(levelname)s logger=%(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
