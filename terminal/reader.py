"""The one reader interface the terminal applications use, whatever carries the APDUs.

PC/SC (pyscard + pcscd), nfcpy and the in-process simulator all present a card the same way:
wait for a card, exchange APDUs with it, notice it leaving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ReaderError(Exception):
    """The reader itself is missing or broken (not a card problem); the message names the fix."""


class CardRemoved(Exception):
    """The card left the field (or stopped answering) before the exchange finished."""


class CardUnresponsive(CardRemoved):
    """The card is there but missed a command's deadline, or answered with fewer than the two status bytes.

    A CardRemoved as far as money goes (a command sent may or may not have been executed: an open intent is
    settled at the next tap), but the holder is told the card did not answer rather than that it was removed.
    """


class CardConnection(Protocol):
    atr: bytes

    def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU, return the whole response including SW1 SW2; raise CardRemoved."""

    def close(self) -> None:
        """Release the card (no more APDUs)."""


class Reader(Protocol):
    name: str

    def wait_for_card(self, timeout: float) -> CardConnection | None:
        """Block until a card is presented (return a connection) or timeout seconds pass (return None)."""

    def wait_for_removal(self, timeout: float) -> bool:
        """Block until no card is present; True if it left within timeout seconds."""

    def close(self) -> None:
        """Release the reader."""


class ReopeningReader:
    """A Reader that opens its device when first used and again after it failed (pcscd stopped or restarted,
    reader unplugged or absent at start, USB device lost). While the device cannot be opened every call
    raises ReaderError, so the caller shows the outage and waits; the first call that works resumes.
    """

    def __init__(self, name: str, open_reader: Callable[[], Reader]):
        self.name = name
        self._open = open_reader
        self._reader: Reader | None = None

    def _device(self) -> Reader:
        if self._reader is None:
            self._reader = self._open()
            self.name = self._reader.name
        return self._reader

    def wait_for_card(self, timeout: float) -> CardConnection | None:
        try:
            return self._device().wait_for_card(timeout)
        except ReaderError:
            self.close()
            raise

    def wait_for_removal(self, timeout: float) -> bool:
        try:
            return self._device().wait_for_removal(timeout)
        except ReaderError:
            self.close()
            raise

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - a reader that already failed may fail to close too
                pass


class TwoReaders:
    """A door's entry and exit readers ([reader] and [exit_reader]) as one Reader for the tap loop: each wait looks
    at both in turn, and `direction` says which one the card now being served was tapped on (anti-passback). A
    failing reader raises ReaderError as one reader would: the door shows the outage and grants nothing."""

    def __init__(self, first: Reader, first_direction: str, second: Reader, second_direction: str):
        self._readers = ((first, first_direction), (second, second_direction))
        self.name = f"{first.name} ({first_direction}) + {second.name} ({second_direction})"
        self.direction: str | None = None
        self._active: Reader | None = None
        self._turn = 0

    def wait_for_card(self, timeout: float) -> CardConnection | None:
        for i in range(2):  # start with the reader after the last one served: neither can starve the other
            reader, direction = self._readers[(self._turn + i) % 2]
            conn = reader.wait_for_card(timeout / 2)
            if conn is not None:
                self._turn = (self._turn + i + 1) % 2
                self._active, self.direction = reader, direction
                return conn
        return None

    def wait_for_removal(self, timeout: float) -> bool:
        return (self._active or self._readers[0][0]).wait_for_removal(timeout)

    def close(self) -> None:
        try:
            self._readers[0][0].close()
        finally:
            self._readers[1][0].close()
