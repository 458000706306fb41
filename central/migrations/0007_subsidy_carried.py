"""Issue 13: a replaced card (补卡/换卡) keeps its subsidy. `onecard platform` replace moves the old card's subsidy
ledger balance to the new card (docs/card-application.md 8.5, docs/canteen.md "Subsidy wallet"); an expired one lapses
(withdrawn at the replacement). The subsidy transactions themselves stay with the card that made them (evidence).

- subsidy_carried: one row per replaced card (old_asn) with a subsidy ledger balance: the amount moved to new_asn
  (or lapsed, lapsed = 1), the latest expiry of what it held, and when.
"""

from yoyo import step

__depends__ = {"0005_card_serial"}

steps = [
    step(
        "CREATE TABLE IF NOT EXISTS subsidy_carried (old_asn TEXT PRIMARY KEY, new_asn TEXT NOT NULL, "
        "amount_cents BIGINT NOT NULL, expiry TEXT, lapsed INTEGER NOT NULL, at TEXT NOT NULL)",
        "DROP TABLE subsidy_carried",
    ),
    step(
        "CREATE INDEX IF NOT EXISTS subsidy_carried_new ON subsidy_carried (new_asn)",
        "DROP INDEX subsidy_carried_new",
    ),
]
