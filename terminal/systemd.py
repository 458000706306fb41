"""systemd service notifications (sd_notify): READY when serving, WATCHDOG from the tap loop, STOPPING at exit.

The protocol is one datagram of `KEY=value` lines to the unix socket in $NOTIFY_SOCKET (sd_notify(3)); it is
written here directly rather than through a package: the maintained binding (systemd-python) needs libsystemd's
headers and a compiler on the Pi, the small pure-Python one (sdnotify) has not been released since 2017.
Outside systemd (no $NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from common.logs import log_event

log = logging.getLogger("onecard.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address or None
        self.watchdog_seconds = self._watchdog_interval(environ)
        self._last_ping = float("-inf")

    @staticmethod
    def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6

    @property
    def active(self) -> bool:
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """One notification, e.g. send(READY="1", STATUS="serving taps"); False if it could not be delivered."""
        if self._address is None:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            log_event(
                log,
                "systemd.notify_failed",
                logging.WARNING,
                socket=self._address,
                error=str(exc),
                msg="could not notify systemd; the unit may be restarted by its watchdog",
            )
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def stopping(self) -> None:
        self.send(STOPPING="1")

    def heartbeat(self) -> None:
        """Ping the watchdog, at most every quarter of its interval: call it from the loop that must not hang."""
        if self.watchdog_seconds is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_seconds / 4:
            self._last_ping = now
            self.send(WATCHDOG="1")
