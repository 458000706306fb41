"""The tap daemon behind `onecard sim serve|tap|remove|status` (simulator/tap_cli.py): it holds one vpcd slot and
is scripted over a unix socket (JSON lines).

Requests: {"op":"tap","card":PATH,"tear_after":null|K,"hold":null|SECONDS}, {"op":"remove"}, {"op":"status"}.
Each gets one JSON line back: {"ok":true,...status} or {"ok":false,"error":"..."}.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Callable

from common.logs import log_event
from simulator.virtual_card import VirtualCard
from simulator.vpcd import VirtualIcc, VpcdUnreachable

log = logging.getLogger("onecard.sim.tap")

SOCKET_NAME = "vicc.sock"
LoadCard = Callable[[str], VirtualCard]


class TapControlError(Exception):
    """The tap daemon is unreachable or refused the request; the message names the fix."""


def socket_path(control_dir: str | os.PathLike) -> Path:
    return Path(control_dir) / SOCKET_NAME


class TapDaemon:
    """One vpcd slot and its control socket; `serve_forever()` blocks until `shutdown()`."""

    def __init__(self, port: int, control_dir: str | os.PathLike, load_card: LoadCard, host: str = "127.0.0.1"):
        self.icc = VirtualIcc(port, host=host)
        self.load_card = load_card
        self.control = socket_path(control_dir)
        self._lock = threading.Lock()
        self._generation = 0  # which tap a pending hold timer belongs to
        self._timer: threading.Timer | None = None
        Path(control_dir).mkdir(parents=True, exist_ok=True)
        _claim(self.control)
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if not line.strip():
                        continue
                    reply = daemon.handle_line(line)
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        self._server = socketserver.ThreadingUnixStreamServer(str(self.control), Handler)
        self._server.daemon_threads = True

    def serve_forever(self) -> None:
        log_event(log, "tap-daemon-started", port=self.icc.port, control=self.control)
        try:
            self._server.serve_forever()
        finally:
            self._cancel_hold()
            self.icc.remove(reason="daemon-stopped")
            self._server.server_close()
            self.control.unlink(missing_ok=True)
            log_event(log, "tap-daemon-stopped", port=self.icc.port)

    def shutdown(self) -> None:
        """Stop serve_forever from another thread."""
        self._server.shutdown()

    def handle_line(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            return {"ok": False, "error": 'request is not a JSON object; send e.g. {"op":"status"}'}
        op = request.get("op")
        try:
            if op == "tap":
                return self.tap(request.get("card"), request.get("tear_after"), request.get("hold"))
            if op == "remove":
                return self.remove()
            if op == "status":
                return self.status()
        except TapControlError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": False, "error": f"unknown op {op!r}; use tap, remove or status"}

    def tap(self, card_path: object, tear_after: object = None, hold: object = None) -> dict:
        if not isinstance(card_path, str) or not card_path:
            raise TapControlError('tap needs "card": the path of a card file')
        if tear_after is not None and (
            not isinstance(tear_after, int) or isinstance(tear_after, bool) or tear_after < 1
        ):
            raise TapControlError(f'"tear_after" must be null or an integer >= 1, got {tear_after!r}')
        if hold is not None and (not isinstance(hold, (int, float)) or isinstance(hold, bool) or hold <= 0):
            raise TapControlError(f'"hold" must be null (until removed) or seconds > 0, got {hold!r}')
        try:
            card = self.load_card(card_path)
        except Exception as exc:  # whatever the card file's loader raises, the daemon must keep serving
            raise TapControlError(
                f"cannot load card {card_path}: {exc}; check the file (create one with 'onecard sim new-card')"
            ) from None
        with self._lock:
            self._cancel_hold()
            self._generation += 1
            try:
                self.icc.insert(card, tear_after=tear_after, label=card_path)
            except VpcdUnreachable as exc:
                raise TapControlError(str(exc)) from None
            if hold is not None:
                self._timer = threading.Timer(hold, self._hold_expired, args=(self._generation,))
                self._timer.daemon = True
                self._timer.start()
        return self.status()

    def remove(self) -> dict:
        with self._lock:
            self._cancel_hold()
            self.icc.remove(reason="removed")
        return self.status()

    def status(self) -> dict:
        icc = self.icc
        return {
            "ok": True,
            "port": icc.port,
            "inserted": icc.inserted,
            "card": icc.label,
            "apdus": icc.apdu_count,
            "torn": icc.torn,
            "removal_reason": icc.removal_reason,
        }

    def _hold_expired(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self.icc.remove(reason="hold-expired")

    def _cancel_hold(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _claim(path: Path) -> None:
    # A socket file left by a killed daemon refuses connections; a live daemon answers, and we must not steal it.
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise TapControlError(f"a tap daemon already serves {path}; stop it or use another --control directory")


def request(control_dir: str | os.PathLike, message: dict, timeout: float = 10.0) -> dict:
    """Send one request to the daemon of `control_dir`; TapControlError if unreachable or it says no."""
    path = socket_path(control_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply_line = sock.makefile("rb").readline()
        except FileNotFoundError:
            raise TapControlError(
                f"no tap daemon at {path}; start one: onecard sim serve --port P --control {control_dir}"
            ) from None
        except ConnectionRefusedError:
            raise TapControlError(
                f"the tap daemon at {path} is not running; start it: onecard sim serve --port P --control {control_dir}"
            ) from None
        except OSError as exc:
            raise TapControlError(f"tap daemon at {path} did not answer ({exc}); check it is alive") from None
    if not reply_line:
        raise TapControlError(f"tap daemon at {path} closed the connection without answering; see its log")
    reply = json.loads(reply_line)
    if not reply.get("ok"):
        raise TapControlError(reply.get("error", "the tap daemon refused the request"))
    return reply


def tap(
    card: str | os.PathLike, control_dir: str | os.PathLike, tear_after: int | None = None, hold: float | None = None
) -> dict:
    """Put the card file in the daemon's reader; it stays `hold` seconds (None: until remove)."""
    return request(
        control_dir, {"op": "tap", "card": str(Path(card).resolve()), "tear_after": tear_after, "hold": hold}
    )


def remove(control_dir: str | os.PathLike) -> dict:
    return request(control_dir, {"op": "remove"})


def status(control_dir: str | os.PathLike) -> dict:
    return request(control_dir, {"op": "status"})
