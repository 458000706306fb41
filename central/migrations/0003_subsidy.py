"""Issue 13: the subsidy purse (补助, docs/canteen.md "Subsidy wallet"): the allowances the enterprise issues and the
subsidy purse's transactions the terminals uploaded (loads, the subsidy share of sales, withdrawals), accounted apart
from the cash purse (purse_transactions) and never mixed with it."""

from yoyo import step

__depends__ = {"0002_holder_shift"}

steps = [
    step(
        "CREATE TABLE IF NOT EXISTS subsidy_allowances (allowance_id TEXT PRIMARY KEY, enterprise_id TEXT NOT NULL, "
        "employee_no TEXT NOT NULL, amount_cents BIGINT NOT NULL, expiry TEXT NOT NULL, policy TEXT NOT NULL, "
        "label TEXT NOT NULL, issued_at TEXT NOT NULL)",
        "DROP TABLE subsidy_allowances",
    ),
    step(
        "CREATE TABLE IF NOT EXISTS subsidy_transactions (terminal_id TEXT NOT NULL, seq BIGINT NOT NULL, "
        "asn TEXT NOT NULL, "
        "kind TEXT NOT NULL, stream TEXT NOT NULL, counter INTEGER NOT NULL, amount_cents BIGINT NOT NULL, "
        "balance_after_cents BIGINT NOT NULL, tac TEXT NOT NULL, tac_status TEXT NOT NULL, allowance_id TEXT, "
        "recorded_at TEXT NOT NULL, PRIMARY KEY (terminal_id, seq, kind))",
        "DROP TABLE subsidy_transactions",
    ),
    step(
        "CREATE INDEX IF NOT EXISTS subsidy_transactions_asn ON subsidy_transactions (asn, stream, counter)",
        "DROP INDEX subsidy_transactions_asn",
    ),
]
