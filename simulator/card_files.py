"""Open any simulated card file as it would be put in a reader, whatever its kind."""
from __future__ import annotations

import json
from pathlib import Path

from simulator.card import CardStateFile, ForeignCard, OneCardApplet
from simulator.psam import load_psam


def load_card(path: str | Path):
    """Open a card file as it would be put in a reader: a one-card RFID-SIM, a card without the application,
    or a PSAM (for a SAM slot)."""
    p = Path(path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    if doc.get("format") == "onecard-sim-foreign/1":
        return ForeignCard(label=str(doc.get("label", ForeignCard.label)))
    if doc.get("format") == "onecard-sim-psam/1":
        return load_psam(p)
    store = CardStateFile(p)
    return OneCardApplet(state=store.load(), store=store)
