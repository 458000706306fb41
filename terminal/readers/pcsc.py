"""The Reader protocol over PC/SC (pcscd) with pyscard's low-level scard API: USB readers and vpcd alike."""

from __future__ import annotations

import math
import os
import time

from smartcard import scard

from terminal.reader import CardRemoved, CardUnresponsive, ReaderError

# Errors meaning the card is gone, was reset by someone else, or stopped answering: the exchange is lost.
_CARD_GONE = {
    scard.SCARD_W_REMOVED_CARD,
    scard.SCARD_E_NO_SMARTCARD,
    scard.SCARD_W_RESET_CARD,
    scard.SCARD_W_UNPOWERED_CARD,
    scard.SCARD_W_UNRESPONSIVE_CARD,
    scard.SCARD_E_NOT_TRANSACTED,  # vpcd's answer when the virtual card's socket is closed mid-exchange
    scard.SCARD_E_COMM_DATA_LOST,
}
# pcscd stopped, crashed or restarted: the context is dead (an RPC on it fails); a new context is needed.
_SERVICE_GONE = {
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_F_COMM_ERROR,
    scard.SCARD_E_INVALID_HANDLE,
    scard.SCARD_F_INTERNAL_ERROR,
}
_READER_GONE = {scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_UNKNOWN_READER}
# A card that is there but cannot be talked to: keep waiting for the next card instead of failing the terminal.
_CARD_UNUSABLE = {scard.SCARD_W_UNSUPPORTED_CARD, scard.SCARD_E_PROTO_MISMATCH}

_PROTOCOL_NAMES = {scard.SCARD_PROTOCOL_T0: "T=0", scard.SCARD_PROTOCOL_T1: "T=1"}
_MAX_WAIT_MS = 0x7FFFFFFF  # below pcsc-lite's INFINITE (0xFFFFFFFF), so a long timeout stays a timeout


def _message(hr: int) -> str:
    return f"{scard.SCardGetErrorMessage(hr).strip().rstrip('.')} (0x{hr & 0xFFFFFFFF:08X})"


def _socket_path() -> str:
    return os.environ.get("PCSCLITE_CSOCK_NAME", "/run/pcscd/pcscd.comm")


def _service_error(hr: int) -> ReaderError:
    return ReaderError(f"pcscd is not running ({_message(hr)} at {_socket_path()}); start pcscd: systemctl start pcscd")


def _establish() -> int:
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr in _SERVICE_GONE:
        raise _service_error(hr)
    if hr != scard.SCARD_S_SUCCESS:
        raise ReaderError(f"cannot open a PC/SC context: {_message(hr)}; check pcscd is running and its logs")
    return ctx


def _list(ctx: int) -> list[str]:
    hr, readers = scard.SCardListReaders(ctx, [])
    if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    if hr in _SERVICE_GONE:
        raise _service_error(hr)
    if hr != scard.SCARD_S_SUCCESS:
        raise ReaderError(f"cannot list PC/SC readers: {_message(hr)}; check pcscd's logs")
    return list(readers)


def list_readers() -> list[str]:
    """Names of the readers pcscd knows now; ReaderError if pcscd is not running."""
    ctx = _establish()
    try:
        return _list(ctx)
    finally:
        scard.SCardReleaseContext(ctx)


def _get_response_cla(cla: int) -> int:
    # GET RESPONSE is an interindustry command; keep only the logical channel of the original class byte.
    return 0x40 | (cla & 0x0F) if cla & 0x40 else cla & 0x03


def _with_le(apdu: bytes, le: int) -> bytes:
    if len(apdu) == 4:
        return apdu + bytes([le])
    if len(apdu) == 5:
        return apdu[:4] + bytes([le])
    return apdu[: 5 + apdu[4]] + bytes([le])


class PcscConnection:
    """A card connected SHARED; `transmit` hides T=0's 61xx / 6Cxx procedure bytes from the caller.

    Each connection has a PC/SC context of its own: pcsc-lite serialises the calls on one context, so a card
    that never answers would otherwise also block the reader's wait for its removal.
    """

    def __init__(self, reader: PcscReader, ctx: int, hcard: int, protocol: int, atr: bytes):
        self._reader = reader
        self._ctx: int | None = ctx
        self._hcard: int | None = hcard
        self.protocol = protocol
        self.atr = atr
        self.busy = False  # a transmit is blocked in pcscd (a card that does not answer)

    @property
    def protocol_name(self) -> str:
        return _PROTOCOL_NAMES.get(self.protocol, f"0x{self.protocol:x}")

    def transmit(self, apdu: bytes) -> bytes:
        response = self._raw(apdu)
        if self.protocol != scard.SCARD_PROTOCOL_T0:
            return response
        if response[-2] == 0x6C and len(apdu) >= 4:
            # Wrong Le: the card tells the right one; the command has not been executed, so sending again is safe.
            response = self._raw(_with_le(apdu, response[-1]))
        data = bytearray()
        while response[-2] == 0x61 and len(data) < 0x10000:
            data += response[:-2]
            response = self._raw(bytes([_get_response_cla(apdu[0]), 0xC0, 0x00, 0x00, response[-1]]))
        return bytes(data) + response if data else response

    def _raw(self, apdu: bytes) -> bytes:
        if self._hcard is None:
            raise ReaderError(f"the connection to the card in {self._reader.name} is closed; wait_for_card again")
        self.busy = True
        try:
            hr, response = scard.SCardTransmit(self._hcard, self.protocol, list(apdu))
        finally:
            self.busy = False
        if hr != scard.SCARD_S_SUCCESS:
            raise self._reader._error(hr, "transmit")
        if not response:
            # vpcd reports a card that hung up mid-exchange as success with no bytes.
            raise CardRemoved(f"card in {self._reader.name} stopped answering (response of 0 bytes)")
        if len(response) < 2:
            raise CardUnresponsive(
                f"card in {self._reader.name} answered {len(response)} byte(s), "
                "without the two status bytes every answer ends with"
            )
        return bytes(response)

    def close(self) -> None:
        hcard, self._hcard = self._hcard, None
        ctx, self._ctx = self._ctx, None
        if hcard is not None:
            # LEAVE: the card may already be gone, and resetting it would cost a power cycle for nothing.
            scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
        if ctx is not None:
            scard.SCardReleaseContext(ctx)
        self._reader._forget(self)


class UnusableCardConnection:
    """A card pcscd cannot talk to (ATR it cannot parse, no protocol it supports).

    Every APDU is answered 6A81 (function not supported), as the nfcpy reader does for tags without ISO-DEP,
    so the terminal shows "Card not supported" once per presentation instead of nothing at all.
    """

    protocol_name = "none"

    def __init__(self, reader: PcscReader, why: str):
        self._reader = reader
        self.atr = b""
        self.why = why
        self._closed = False

    def transmit(self, apdu: bytes) -> bytes:
        if self._closed:
            raise ReaderError(f"the connection to the card in {self._reader.name} is closed; wait_for_card again")
        return b"\x6a\x81"

    def close(self) -> None:
        self._closed = True


class PcscReader:
    """The first PC/SC reader whose name contains `name_substring` (it must match exactly one reader)."""

    def __init__(self, name_substring: str):
        self._ctx: int | None = _establish()
        self._connections: list[PcscConnection] = []
        try:
            readers = _list(self._ctx)
            matches = [r for r in readers if name_substring in r]
            if not matches:
                raise ReaderError(
                    f"no PC/SC reader matching {name_substring!r} (readers: {readers or 'none'}); "
                    "check the reader is plugged in / pcscd is running"
                )
            if len(matches) > 1:
                raise ReaderError(
                    f"several PC/SC readers match {name_substring!r} ({matches}); "
                    "configure a longer part of the reader name"
                )
        except BaseException:
            self.close()
            raise
        self.name = matches[0]

    def wait_for_card(self, timeout: float) -> PcscConnection | None:
        deadline = time.monotonic() + timeout
        state = self._status(0, scard.SCARD_STATE_UNAWARE)
        while True:
            if state is not None and state & scard.SCARD_STATE_PRESENT:
                if state & scard.SCARD_STATE_MUTE:  # pcscd could not power it up or read its ATR
                    return UnusableCardConnection(self, "the card is mute (no usable ATR)")
                connection = self._connect()
                if connection is not None:
                    return connection
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            state = self._status(remaining, state)
            if state is None:
                return None

    def wait_for_removal(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        state = self._status(0, scard.SCARD_STATE_UNAWARE)
        while True:
            if state is not None and state & scard.SCARD_STATE_EMPTY:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            state = self._status(remaining, state)
            if state is None:
                return False

    def close(self) -> None:
        for connection in list(self._connections):
            if not connection.busy:  # a call blocked on a silent card holds its context; the OS frees it at exit
                connection.close()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            scard.SCardCancel(ctx)  # wakes a wait_for_* blocked in another thread
            scard.SCardReleaseContext(ctx)

    def _status(self, timeout: float, current: int) -> int | None:
        """Block in SCardGetStatusChange until the reader's state differs from `current`; None on timeout."""
        if self._ctx is None:
            raise ReaderError("the PC/SC reader is closed; create a new PcscReader")
        ms = min(_MAX_WAIT_MS, max(0, math.ceil(timeout * 1000)))
        hr, states = scard.SCardGetStatusChange(self._ctx, ms, [(self.name, current)])
        if hr in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED):
            return None
        if hr != scard.SCARD_S_SUCCESS:
            raise self._error(hr, "wait for a card")
        event = states[0][1]
        if event & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
            raise ReaderError(f"PC/SC reader {self.name!r} disappeared; check it is plugged in and pcscd's logs")
        return event & ~scard.SCARD_STATE_CHANGED

    def _connect(self) -> PcscConnection | UnusableCardConnection | None:
        ctx = _establish()
        try:
            hr, hcard, protocol = scard.SCardConnect(
                ctx, self.name, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
            )
            if hr in _CARD_UNUSABLE:
                scard.SCardReleaseContext(ctx)
                return UnusableCardConnection(self, _message(hr))
            if hr in _CARD_GONE:
                scard.SCardReleaseContext(ctx)
                return None
            if hr == scard.SCARD_E_SHARING_VIOLATION:
                raise ReaderError(f"another application holds the card in {self.name!r} exclusively; stop it")
            if hr != scard.SCARD_S_SUCCESS:
                raise self._error(hr, "connect to the card")
            hr, _reader, _state, _protocol, atr = scard.SCardStatus(hcard)
            if hr != scard.SCARD_S_SUCCESS:
                scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
                if hr in _CARD_GONE:
                    scard.SCardReleaseContext(ctx)
                    return None
                raise self._error(hr, "read the ATR")
        except BaseException:
            scard.SCardReleaseContext(ctx)
            raise
        connection = PcscConnection(self, ctx, hcard, protocol, bytes(atr))
        self._connections.append(connection)
        return connection

    def _forget(self, connection: PcscConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    def _error(self, hr: int, doing: str) -> Exception:
        if hr in _CARD_GONE:
            return CardRemoved(f"card left {self.name!r} during {doing}: {_message(hr)}")
        if hr in _SERVICE_GONE:
            return _service_error(hr)
        if hr in _READER_GONE:
            return ReaderError(f"PC/SC reader {self.name!r} is unavailable ({_message(hr)}); check it is plugged in")
        return ReaderError(f"PC/SC failed to {doing} on {self.name!r}: {_message(hr)}; see pcscd's logs")
