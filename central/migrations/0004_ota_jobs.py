"""Issue 12: the over-the-air jobs live in the platform database (docs/ota.md 9), so that the booking of an OTA load
in the purse ledger (purse_transactions) and the job's state change are one transaction, on SQLite and PostgreSQL.

- ota_counters: the last SCP80 counter used per card (taken before a packet leaves; never two packets on one);
- ota_jobs: one row per job (its ID is the administrator's, or the CLI's), with what the SMSC and the SIM said;
- ota_job_params: what the administrator asked for, kept even when the first submit never left;
- ota_loads: the load a job's PoR proved, booked once per job ID (seq: its row in purse_transactions, terminal 'ota').
"""

from yoyo import step

__depends__ = {"0003_subsidy"}

steps = [
    step(
        "CREATE TABLE ota_counters (asn TEXT PRIMARY KEY, cntr BIGINT NOT NULL)",
        "DROP TABLE ota_counters",
    ),
    step(
        "CREATE TABLE ota_jobs ("
        " job_id TEXT PRIMARY KEY, n BIGINT NOT NULL UNIQUE, asn TEXT NOT NULL, msisdn TEXT NOT NULL,"
        " op TEXT NOT NULL, status TEXT NOT NULL, cntr BIGINT, message_ids TEXT NOT NULL DEFAULT '[]',"
        " state TEXT NOT NULL DEFAULT '{}', note TEXT NOT NULL DEFAULT '', path TEXT NOT NULL DEFAULT 'ota',"
        " credit_claimed BIGINT NOT NULL DEFAULT 0, card_unloaded BIGINT NOT NULL DEFAULT 0,"
        " delivery TEXT NOT NULL DEFAULT '', por TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,"
        " sent_at TEXT, delivered_at TEXT, por_at TEXT)",
        "DROP TABLE ota_jobs",
    ),
    step(
        "CREATE TABLE ota_job_params (job_id TEXT PRIMARY KEY, params TEXT NOT NULL)",
        "DROP TABLE ota_job_params",
    ),
    step(
        "CREATE TABLE ota_loads ("
        " job_id TEXT PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, asn TEXT NOT NULL, terminal_id TEXT NOT NULL,"
        " counter BIGINT NOT NULL, amount_cents BIGINT NOT NULL, balance_after_cents BIGINT NOT NULL,"
        " tac TEXT NOT NULL, card_date TEXT NOT NULL, card_time TEXT NOT NULL, booked_at TEXT NOT NULL,"
        " ledger TEXT NOT NULL)",
        "DROP TABLE ota_loads",
    ),
]
