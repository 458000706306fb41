"""An in-process reader carrying a simulated card: the same taps, tears and removals as over pcscd, no I/O."""

from __future__ import annotations

import threading
from pathlib import Path

from common.errors import UserError
from simulator.virtual_card import VirtualCard
from terminal.reader import CardRemoved


class InProcessConnection:
    def __init__(self, reader: InProcessReader, card: VirtualCard):
        self._reader = reader
        self._card = card
        self.atr = card.atr

    def transmit(self, apdu: bytes) -> bytes:
        return self._reader._exchange(self._card, apdu)

    def close(self) -> None:
        pass


class InProcessReader:
    """Present a card with `tap(card, tear_after=k)`; the k-th APDU is processed but its answer is lost."""

    def __init__(self, name: str = "in-process simulator"):
        self.name = name
        self._cond = threading.Condition()
        self._card: VirtualCard | None = None
        self._tear_after: int | None = None
        self._apdus = 0
        self._handed_out = False

    def tap(self, card: VirtualCard, tear_after: int | None = None) -> None:
        with self._cond:
            card.power_on()
            self._card, self._tear_after, self._apdus, self._handed_out = card, tear_after, 0, False
            self._cond.notify_all()

    def remove(self) -> None:
        with self._cond:
            if self._card is not None:
                self._card.power_off()
            self._card = None
            self._cond.notify_all()

    @property
    def apdu_count(self) -> int:
        return self._apdus

    def _exchange(self, card: VirtualCard, apdu: bytes) -> bytes:
        with self._cond:
            if self._card is not card:
                raise CardRemoved("card left the field")
            self._apdus += 1
            response = card.transmit(apdu)
            if self._tear_after is not None and self._apdus >= self._tear_after:
                card.power_off()
                self._card = None
                self._cond.notify_all()
                raise CardRemoved(f"card left the field after APDU {self._apdus}")
            return response

    def wait_for_card(self, timeout: float) -> InProcessConnection | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._card is not None and not self._handed_out, timeout):
                return None
            self._handed_out = True
            return InProcessConnection(self, self._card)

    def wait_for_removal(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._card is None, timeout)

    def close(self) -> None:
        self.remove()


def reader_with_card(card_file: Path) -> InProcessReader:
    """An in-process reader named after `card_file`, with the simulated card in it already tapped once."""
    from simulator.card_files import load_card

    reader = InProcessReader(f"simulator:{card_file}")
    try:
        reader.tap(load_card(card_file))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot load simulated card {card_file}: {exc}; check the path, or create the card with "
            "'onecard sim new-card'"
        ) from None
    return reader
