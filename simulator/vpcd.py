"""The virtual ICC side of vsmartcard's vpcd protocol: puts a VirtualCard into a real pcscd reader over TCP.

Frames both ways are a 2-byte big-endian length and a payload; a 1-byte payload from vpcd is a control code, or a
1-byte command APDU framed the same way: one that is no control code, or 00 / 01 / 02 followed by silence (vpcd is
waiting for its answer), is answered 67 00 as a card answers a command too short for a header.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from dataclasses import dataclass

from common.logs import log_event
from simulator.readable import readable as wait_readable
from simulator.virtual_card import VirtualCard

log = logging.getLogger("onecard.sim.vpcd")

CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_GET_ATR = 0x04

_LEN = struct.Struct(">H")
# vpcd frames a 1-byte command APDU exactly like a control code. vpcd follows every real power on / off / reset
# with GET ATR at once, and polls GET ATR every 0.4 s while it is not waiting for an answer; silence this long
# after 00 / 01 / 02 therefore means vpcd is waiting for the answer to a 1-byte command.
AMBIGUOUS_WAIT = 5.0  # generous: a loaded machine must not make a real power off look like a command
# What a card answers a command too short to hold a header (ISO 7816-4: wrong length).
SW_WRONG_LENGTH = b"\x67\x00"


class VpcdUnreachable(ConnectionError):
    """No vpcd reader listens on the port (pcscd not started, or not configured with that port)."""


class VirtualIcc:
    """One card slot of a vpcd reader: `insert(card)` connects to vpcd, `remove()` disconnects.

    A card is in the field exactly while the TCP connection is open. pcscd polls presence (every 400 ms
    in pcsc-lite 1.9), so it notices an insertion or a removal up to ~0.4 s after it happens.

    Tearing: with `insert(card, tear_after=k)` the k-th command APDU of this insertion (control codes such
    as power on or get ATR are not counted) is passed to `card.transmit` and its result is thrown away;
    the connection is then closed without sending anything, and `card.power_off()` is called. The
    PC/SC application sees that k-th SCardTransmit fail, exactly like a phone pulled out of the field
    after the card committed but before its answer reached the reader.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", label: str | None = None):
        self.host = host
        self.port = port
        self.label = label  # what to call the card in logs, e.g. its file path
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._removed = threading.Event()
        self._removed.set()
        self._wake = threading.Event()  # set by remove(): ends a stall at once
        self.apdu_count = 0
        self.torn = False
        self.removal_reason: str | None = None

    @property
    def inserted(self) -> bool:
        return not self._removed.is_set()

    def insert(
        self,
        card: VirtualCard,
        tear_after: int | None = None,
        label: str | None = None,
        connect_timeout: float = 5.0,
        *,
        stall_at: int | None = None,
        stall_seconds: float = 0.0,
        truncate_at: int | None = None,
        truncate_to: int = 0,
    ) -> None:
        """Put `card` in the field (replacing any card already there)."""
        for name, k in (("tear_after", tear_after), ("stall_at", stall_at), ("truncate_at", truncate_at)):
            if k is not None and k < 1:
                raise ValueError(f"{name} must be >= 1 (the number of a command APDU), got {k}")
        self.remove()
        self._wake = threading.Event()
        faults = _Faults(tear_after, stall_at, stall_seconds, truncate_at, truncate_to)
        if label is not None:
            self.label = label
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Every message is a small request/response; without NODELAY a delayed ACK can stall a frame 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(connect_timeout)
        try:
            sock.connect((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise VpcdUnreachable(
                f"no vpcd reader listens on {self.host}:{self.port} ({exc.strerror or exc}); "
                f"start pcscd with a vpcd reader on that port (see simulator.pcscd.private_pcscd)"
            ) from None
        sock.settimeout(None)
        with self._lock:
            self._sock = sock
            self.apdu_count = 0
            self.torn = False
            self.removal_reason = None
            self._removed.clear()
            self._thread = threading.Thread(
                target=self._serve, args=(sock, card, faults), name=f"vicc-{self.port}", daemon=True
            )
            self._thread.start()
        log_event(
            log,
            "card-inserted",
            port=self.port,
            card=self.label,
            tear_after=tear_after,
            stall_at=stall_at,
            truncate_at=truncate_at,
        )

    def remove(self, reason: str = "removed") -> None:
        """Take the card out of the field now; returns once the card is powered off."""
        with self._lock:
            sock, thread = self._sock, self._thread
            if sock is not None and self.removal_reason is None:
                self.removal_reason = reason
            self._wake.set()
        if sock is not None:
            try:
                # shutdown wakes the serving thread's blocking recv; close alone would not.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def wait_removed(self, timeout: float | None = None) -> bool:
        """Block until the card has left the field (removed, torn, or vpcd hung up)."""
        return self._removed.wait(timeout)

    def _serve(self, sock: socket.socket, card: VirtualCard, faults: _Faults) -> None:
        tear_after = faults.tear_after
        pending: int | None = None  # a 00 / 01 / 02 frame: a control code, or a 1-byte command (the next frame says)
        try:
            while True:
                if pending is not None:
                    readable = wait_readable([sock], AMBIGUOUS_WAIT)
                    if not readable:  # vpcd is waiting for an answer: it was a 1-byte command, not a control code
                        log_event(
                            log,
                            "vpcd-short-command",
                            level=logging.WARNING,
                            port=self.port,
                            apdu=f"{pending:02x}",
                            msg="1-byte command answered 67 00 (wrong length)",
                        )
                        pending = None
                        sock.sendall(_LEN.pack(len(SW_WRONG_LENGTH)) + SW_WRONG_LENGTH)
                        continue
                    self._control(card, pending)
                    pending = None
                message = _recv_frame(sock)
                if message is None:
                    with self._lock:
                        if self.removal_reason is None:
                            self.removal_reason = "vpcd-closed"
                    return
                if not message:
                    continue
                if len(message) == 1:
                    if message[0] in (CTRL_POWER_OFF, CTRL_POWER_ON, CTRL_RESET):
                        pending = message[0]
                        continue
                    reply = self._control(card, message[0])
                    # Not a vpcd control code (e.g. 80): a 1-byte command, answered as a card would.
                    reply = SW_WRONG_LENGTH if reply is None else reply
                    sock.sendall(_LEN.pack(len(reply)) + reply)
                    continue
                self.apdu_count += 1
                if self.apdu_count == faults.stall_at:
                    log_event(log, "card-stalling", port=self.port, card=self.label, seconds=faults.stall_seconds)
                    if self._wake.wait(faults.stall_seconds):
                        continue  # removed while stalling: the serving loop sees the closed socket
                response = card.transmit(message)
                if self.apdu_count == faults.truncate_at:
                    response = response[: faults.truncate_to]
                if tear_after is not None and self.apdu_count >= tear_after:
                    with self._lock:
                        self.torn = True
                        self.removal_reason = f"torn-after-apdu-{self.apdu_count}"
                    return
                # One sendall per frame: length and payload in one segment, so vpcd never waits on a half frame.
                sock.sendall(_LEN.pack(len(response)) + response)
        except OSError:
            with self._lock:
                if self.removal_reason is None:
                    self.removal_reason = "connection-lost"
        except Exception as exc:  # a broken card simulation must show up in the log, not kill the thread silently
            with self._lock:
                self.removal_reason = "card-error"
            log_event(log, "card-error", level=logging.ERROR, port=self.port, card=self.label, error=repr(exc))
        finally:
            sock.close()
            card.power_off()
            with self._lock:
                if self._sock is sock:
                    self._sock = None
                    self._thread = None
            log_event(
                log, "card-removed", port=self.port, card=self.label, reason=self.removal_reason, apdus=self.apdu_count
            )
            self._removed.set()

    def _control(self, card: VirtualCard, code: int) -> bytes | None:
        if code == CTRL_GET_ATR:
            return bytes(card.atr)
        if code in (CTRL_POWER_ON, CTRL_RESET):
            card.power_on()
        elif code == CTRL_POWER_OFF:
            card.power_off()
        else:
            log_event(
                log,
                "vpcd-short-command",
                level=logging.WARNING,
                port=self.port,
                apdu=f"{code:02x}",
                msg="1-byte command answered 67 00 (wrong length)",
            )
        return None


@dataclass(frozen=True)
class _Faults:
    tear_after: int | None = None
    stall_at: int | None = None
    stall_seconds: float = 0.0
    truncate_at: int | None = None
    truncate_to: int = 0


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        # vpcd 3.3 (Debian 12) writes the length and the payload with two send() calls on a Nagle socket: the
        # payload waits for our ACK of the length, which a delayed ACK holds back ~40 ms. Linux clears
        # QUICKACK after use, so re-arm it before every read to ACK at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes | None:
    header = _recv_exact(sock, 2)
    if header is None:
        return None
    (length,) = _LEN.unpack(header)
    if length == 0:
        return b""
    return _recv_exact(sock, length)
