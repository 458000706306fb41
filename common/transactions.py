"""The e-purse's transaction types (PBOC model): the byte in INITIALIZE, in the MACs and the TAC, and in the card's
transaction records (docs/card-application.md 5)."""

from __future__ import annotations

LOAD = 0x02
PURCHASE = 0x06
NAMES = {LOAD: "load", PURCHASE: "purchase"}
# The type byte of the TAC input (only there) of a purchase whose DEBIT carried the spending-password flag after a
# VERIFY in the same card session (docs/card-application.md 5.5): the platform's TAC check proves the flag.
PURCHASE_WITH_PIN_TAC = 0x86
