"""Issue 13: per-card allowance numbers (docs/card-application.md 5.6). The card keeps the number of the last
allowance it loaded and refuses any not above it, so two offline tills can never both load one allowance.

- subsidy_allowances.number: 1, 2, 3 ... per employee of an enterprise (the holder of the sub-application), in issue
  order, never reused; existing rows are numbered in their issue order.
- subsidy_allowances.lapsed_at: set when the card loaded a later-numbered allowance while this one was not collected
  (it had expired): it can never be loaded, and its amount goes back to the enterprise.
"""

from yoyo import step

__depends__ = {"0005_card_serial"}

steps = [
    step(
        "ALTER TABLE subsidy_allowances ADD COLUMN number INTEGER",
        "ALTER TABLE subsidy_allowances DROP COLUMN number",
    ),
    step(
        "UPDATE subsidy_allowances SET number = (SELECT count(*) FROM subsidy_allowances b "
        "WHERE b.enterprise_id = subsidy_allowances.enterprise_id AND b.employee_no = subsidy_allowances.employee_no "
        "AND (b.issued_at < subsidy_allowances.issued_at OR (b.issued_at = subsidy_allowances.issued_at "
        "AND b.allowance_id <= subsidy_allowances.allowance_id)))",
    ),
    step(
        "CREATE UNIQUE INDEX subsidy_allowances_number ON subsidy_allowances (enterprise_id, employee_no, number)",
        "DROP INDEX subsidy_allowances_number",
    ),
    step(
        "ALTER TABLE subsidy_allowances ADD COLUMN lapsed_at TEXT",
        "ALTER TABLE subsidy_allowances DROP COLUMN lapsed_at",
    ),
]
