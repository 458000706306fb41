"""Issue 13: cancelling or voiding a card accounts for its subsidy purse (docs/card-application.md 8.5,
docs/canteen.md "Subsidy wallet", docs/sync-protocol.md "Issuing station registry").

- voided_purses: what an issuing station's APPLICATION BLOCK proved beyond the frozen cash balance (voided_cards):
  the cash counters, the frozen subsidy purse (balance, expiry as the card's 8 BCD digits, counters; NULL when the
  card was voided without one), the challenge and key version the card's MAC was computed with, and whether the
  platform checked that MAC itself (mac_status 'ok', or 'unchecked' when its SAM holds no UPDATE key to verify).
- subsidy_returned: one row per cancelled card whose subsidy ledger balance was above 0: that balance went back to
  the enterprise (never paid out in cash; the purses are not interchangeable), with the latest expiry and when.
"""

from yoyo import step

__depends__ = {"0007_subsidy_carried"}

steps = [
    step(
        "CREATE TABLE IF NOT EXISTS voided_purses (asn TEXT PRIMARY KEY, offline_counter INTEGER NOT NULL, "
        "online_counter INTEGER NOT NULL, subsidy_cents BIGINT, subsidy_expiry TEXT, "
        "subsidy_offline_counter INTEGER, subsidy_online_counter INTEGER, challenge TEXT NOT NULL, "
        "key_version INTEGER NOT NULL, mac_status TEXT NOT NULL)",
        "DROP TABLE voided_purses",
    ),
    step(
        "CREATE TABLE IF NOT EXISTS subsidy_returned (asn TEXT PRIMARY KEY, amount_cents BIGINT NOT NULL, "
        "expiry TEXT, at TEXT NOT NULL)",
        "DROP TABLE subsidy_returned",
    ),
]
