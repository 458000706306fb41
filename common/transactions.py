"""The e-purse's transaction types (PBOC model): the byte in INITIALIZE, in the MACs and the TAC, and in the card's
transaction records (docs/card-application.md 5)."""

from __future__ import annotations

LOAD = 0x02
PURCHASE = 0x06
NAMES = {LOAD: "load", PURCHASE: "purchase"}
