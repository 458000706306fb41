"""The simulated network's phones: phone/handset.py's `Handset` (the same one that drives the SIM menu) in front of
a SIM whose OTA side is simulated (`OtaSim`), or of no SIM at all (a phone that only receives text messages, e.g.
the bills). The SMSC simulator calls `receive` for each SMS-DELIVER."""

from __future__ import annotations

from dataclasses import dataclass

from common import stk
from phone.handset import Handset
from simulator import ota_sim

SW_CLA = b"\x6e\x00"
SW_INS = b"\x6d\x00"


@dataclass
class OtaContact:
    """The contact interface of a SIM of which only the OTA side is simulated: ENVELOPE, FETCH and TERMINAL
    RESPONSE go to the OtaSim; no SIM (None) answers class not supported."""

    sim: ota_sim.OtaSim | None

    def transmit(self, apdu: bytes) -> bytes:
        if self.sim is None or len(apdu) < 5 or apdu[0] != stk.CLA_CAT:
            return SW_CLA
        if apdu[1] == stk.INS_ENVELOPE:
            return self.sim.envelope(apdu)
        if apdu[1] == stk.INS_FETCH:
            return self.sim.fetch(apdu)
        if apdu[1] == stk.INS_TERMINAL_RESPONSE:
            return self.sim.terminal_response(apdu)
        return SW_INS


class _Unattended:
    """Nobody looks at this phone: every dialogue is left with the back key."""

    def select_item(self, title: str, items: tuple[stk.Item, ...]) -> int | None:
        return None

    def display_text(self, text: str) -> bool:
        return False

    def get_input(self, prompt: str, command: stk.GetInput) -> str | None:
        return None

    def sending(self, alpha: str) -> None:
        pass


def _no_network(destination: str, data: bytes) -> str | None:
    return "this simulated phone sends no text messages of its own"


class SimHandset(Handset):
    """A phone on the simulated network with `sim` (its OTA side) inserted, or none."""

    def __init__(self, sim: ota_sim.OtaSim | None) -> None:
        super().__init__(OtaContact(sim), _Unattended(), _no_network)
        self.sim = sim
