"""Open any simulated card file as it would be put in a reader, whatever its kind."""

from __future__ import annotations

import json
from pathlib import Path

from simulator.card import (
    STATE_FORMAT_V2,
    CardStateFile,
    ForeignCard,
    MultiCardStateFile,
    OneCardApplet,
    OneCardV2Applet,
)
from simulator.master_card import STATE_FORMAT as MASTER_CARD_FORMAT
from simulator.master_card import load_master_card
from simulator.psam import load_psam


def load_card(path: str | Path):
    """Open a card file as it would be put in a reader: a one-card RFID-SIM (version 1, or version 2 with
    sub-applications; personalised or fresh from the factory), a card without the application, a PSAM (for a SAM
    slot) or a key master card."""
    p = Path(path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    if doc.get("format") == "onecard-sim-foreign/1":
        return ForeignCard(label=str(doc.get("label", ForeignCard.label)))
    if doc.get("format") == "onecard-sim-psam/1":
        return load_psam(p)
    if doc.get("format") == MASTER_CARD_FORMAT:
        return load_master_card(p)
    if doc.get("format") == STATE_FORMAT_V2:
        multi = MultiCardStateFile(p)
        return OneCardV2Applet(multi.load(), multi)
    store = CardStateFile(p)
    return OneCardApplet(state=store.load(), store=store)
