"""The e-purse's transaction types (PBOC model): the byte in INITIALIZE, in the MACs and the TAC, and in the card's
transaction records (docs/card-application.md 5 and 5.5).

The cash purse is PBOC's EP (electronic purse: load 02, purchase 06); the subsidy purse (补助钱包) of a version 2
sub-application is PBOC's ED (electronic deposit: load 01, withdrawal 04, purchase 05). A two-purse sale (one
DEBIT that takes from both) MACs with type 05 and leaves one record per purse it touched (05 subsidy, 06 cash)."""

from __future__ import annotations

LOAD = 0x02
PURCHASE = 0x06
SUBSIDY_LOAD = 0x01
SUBSIDY_WITHDRAW = 0x04
SUBSIDY_PURCHASE = 0x05
NAMES = {
    LOAD: "load",
    PURCHASE: "purchase",
    SUBSIDY_LOAD: "subsidy load",
    SUBSIDY_WITHDRAW: "subsidy withdrawal",
    SUBSIDY_PURCHASE: "subsidy purchase",
}
# Purse IDs: INITIALIZE's P2 (and GET BALANCE's P2), as in PBOC (01 ED, 02 EP); 03 = both purses in one sale.
PURSE_SUBSIDY = 0x01
PURSE_CASH = 0x02
PURSE_BOTH = 0x03
# The policy byte of a two-purse INITIALIZE FOR PURCHASE (docs/card-application.md 5.6).
POLICY_SUBSIDY_FIRST = 0x01
POLICY_CASH_FIRST = 0x02
POLICIES = {"subsidy_first": POLICY_SUBSIDY_FIRST, "cash_first": POLICY_CASH_FIRST}
LOAD_TYPES = (LOAD, SUBSIDY_LOAD)
DEBIT_TYPES = (PURCHASE, SUBSIDY_PURCHASE, SUBSIDY_WITHDRAW)
# The type byte of the TAC input (only there) of a purchase whose DEBIT carried the spending-password flag after a
# VERIFY in the same card session (docs/card-application.md 5.5): the platform's TAC check proves the flag.
PURCHASE_WITH_PIN_TAC = 0x86
# The same for the subsidy share of a two-purse sale whose DEBIT carried the flag (5.5, 5.6): 05 | 80. Its cash share
# uses 86 as a plain purchase does.
SUBSIDY_PURCHASE_WITH_PIN_TAC = 0x85
PIN_TAC_TYPES = (PURCHASE_WITH_PIN_TAC, SUBSIDY_PURCHASE_WITH_PIN_TAC)
