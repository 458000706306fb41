"""Issue 12: the card serial of a version 2 card (a SIM carrying several enterprises' sub-applications), recorded
when one of its sub-applications is registered with it, so that issuing over the air (docs/ota.md 5.4) finds the SIM
of a holder's phone without the administrator typing its serial.

- card_serials: one row per registered sub-application (asn) whose card serial the registration gave.
"""

from yoyo import step

__depends__ = {"0004_ota_jobs"}

steps = [
    step(
        "CREATE TABLE card_serials (asn TEXT PRIMARY KEY, serial TEXT NOT NULL, recorded_at TEXT NOT NULL)",
        "DROP TABLE card_serials",
    ),
    step("CREATE INDEX card_serials_serial ON card_serials (serial)", "DROP INDEX card_serials_serial"),
]
