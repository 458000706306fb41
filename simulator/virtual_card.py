"""What every simulated card (user card, PSAM, foreign card) offers to the transports that carry it."""

from __future__ import annotations

from typing import Protocol


class VirtualCard(Protocol):
    atr: bytes

    def power_on(self) -> None:
        """The card enters the field / is reset: volatile state (selected application, challenges) is cleared."""

    def power_off(self) -> None:
        """The card leaves the field."""

    def transmit(self, apdu: bytes) -> bytes:
        """Process one command APDU and return the response APDU (data + SW1 SW2). Never raises on bad input."""
