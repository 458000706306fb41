"""The one reader interface the terminal applications use, whatever carries the APDUs.

PC/SC (pyscard + pcscd), nfcpy and the in-process simulator all present a card the same way:
wait for a card, exchange APDUs with it, notice it leaving.
"""
from __future__ import annotations

from typing import Protocol


class ReaderError(Exception):
    """The reader itself is missing or broken (not a card problem); the message names the fix."""


class CardRemoved(Exception):
    """The card left the field (or stopped answering) before the exchange finished."""


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
