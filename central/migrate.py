"""`onecard platform migrate --from sqlite:PATH --to postgresql:DSN`: move a platform database to PostgreSQL.

The SQLite file is only read (one read transaction, so a consistent snapshot); the PostgreSQL database must be empty
(nothing in it is overwritten). The schema is made there by the migrations (central/schema.py), every row is copied
in one transaction (all of it or none), the identity counters are moved past the copied ids, and the copy is then
verified against the source: the rows of every table, each terminal's chain head (contiguous seq and head hash, and
the stored event at that seq carries that hash), every card's status and balance, and the platform epoch.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from central import schema
from central import sql as dialect
from central.db import PlatformError
from common.db import DatabaseError, open_checked_readonly, preflight

# Parents before children (terminals and holders name enterprises, cards name holders).
TABLES = (
    "enterprises",
    "terminals",
    "events",
    "pending_events",
    "holders",
    "cards",
    "blacklist",
    "blacklist_changes",
    "refunds",
    "card_actions",
    "voided_cards",
    "card_keys",
    "card_history",
    "purse_transactions",
    "subsidy_allowances",
    "subsidy_transactions",
    "held_money",
    "outbound",
    "terminal_alarms",
    "chain_evidence",
    "platform_epoch",
    "reanchors",
    "ota_counters",
    "ota_jobs",
    "ota_job_params",
    "ota_loads",
    "card_serials",
    "subsidy_carried",
    "voided_purses",
    "subsidy_returned",
)
# Tables whose ids PostgreSQL hands out (identity columns): moved on past the copied ids.
IDENTITY = {
    "holders": "holder_id",
    "refunds": "id",
    "card_history": "id",
    "held_money": "id",
    "outbound": "id",
    "terminal_alarms": "id",
    "chain_evidence": "id",
    "reanchors": "id",
}
# Tables every platform database has had since the first release.
REQUIRED = {"enterprises", "terminals", "events", "cards", "platform_epoch"}


@dataclass(frozen=True)
class MigrationReport:
    rows: dict[str, int]
    terminals: int
    events: int
    cards: int
    balance_cents: int

    def summary(self, source: dialect.Target, target: dialect.Target) -> str:
        return (
            f"platform database {source} copied to {target}: {sum(self.rows.values())} rows in "
            f"{len(self.rows)} tables, {self.events} events of {self.terminals} terminal(s), {self.cards} card(s) "
            f"holding {self.balance_cents / 100:.2f} yuan; chain heads, balances and row counts verified. Serve "
            f"from it with `onecard platform serve --db {target} ...`; keep the SQLite file as the backup"
        )


def _source(target: dialect.Target) -> sqlite3.Connection:
    path = target.path
    assert path is not None
    try:
        if preflight(path, "--from"):
            raise PlatformError(f"platform database {path} does not exist; give the SQLite file to copy as --from")
        return open_checked_readonly(path, setting="--from", required_tables=REQUIRED, what="platform")
    except DatabaseError as exc:
        raise PlatformError(str(exc)) from None


def _columns(conn, table: str) -> list[str]:
    if isinstance(conn, sqlite3.Connection):
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    return [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    ]


def _refuse_non_empty(pg: dialect.PgConnection, target: dialect.Target) -> None:
    tables = [
        r[0]
        for r in pg.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE'"
        )
    ]
    ours = set(TABLES) | {t for t in tables if "yoyo" in t}
    other = sorted(set(tables) - ours)
    if other:
        raise PlatformError(
            f"{target} is not empty (it has table {other[0]}{' and more' if len(other) > 1 else ''}); give a new, "
            "empty database (createdb onecard) — nothing was written"
        )
    for t in sorted(set(tables) & set(TABLES)):
        if pg.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0]:
            raise PlatformError(
                f"{target} already holds a platform (table {t} has rows); migrate into a new, empty database "
                "— nothing was written"
            )


def _fingerprint(conn) -> dict:
    """What must be equal on both sides."""
    return {
        "heads": conn.execute(
            "SELECT terminal_id, contiguous_seq, head_hash FROM terminals ORDER BY terminal_id"
        ).fetchall(),
        "cards": conn.execute("SELECT asn, status, balance_cents FROM cards ORDER BY asn").fetchall(),
        "epoch": conn.execute("SELECT instance, generation FROM platform_epoch").fetchall(),
        "blacklists": conn.execute(
            "SELECT enterprise_id, blacklist_version, config_version FROM enterprises ORDER BY enterprise_id"
        ).fetchall(),
    }


def migrate(source_text: str, target_text: str) -> str:
    """Copy, verify, and say what was done (one line); PlatformError (one line, nothing overwritten) if not."""
    try:
        source, target = dialect.parse_target(source_text), dialect.parse_target(target_text)
    except dialect.TargetError as exc:
        raise PlatformError(str(exc)) from None
    if source.backend != dialect.SQLITE or not source_text.startswith("sqlite:"):
        raise PlatformError(f"--from {source_text!r} is not sqlite:PATH; give the SQLite platform.db to copy")
    if target.backend != dialect.POSTGRESQL:
        raise PlatformError(f"--to {target_text!r} is not postgresql:DSN; give the new PostgreSQL database")
    src = _source(source)
    try:
        pg = dialect.connect_postgresql(target.dsn)
        try:
            _refuse_non_empty(pg, target)
            schema.upgrade(target, pg)
            src.execute("BEGIN")  # one snapshot of the source for the copy and the check
            with dialect.pg_transaction(pg):  # verified before it commits: a failed check leaves no rows
                report = _copy(src, pg)
                _verify(src, pg, report)
        finally:
            pg.close()
    finally:
        src.close()
    return report.summary(source, target)


def _copy(src: sqlite3.Connection, pg: dialect.PgConnection) -> MigrationReport:
    rows: dict[str, int] = {}
    have = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table in TABLES:
        if table not in have:
            rows[table] = 0
            continue
        # An older platform.db lacks the columns added since (NULL = not known there too).
        cols = [c for c in _columns(src, table) if c in set(_columns(pg, table))]
        names = ", ".join(cols)
        n = 0
        with pg.raw.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in src.execute(f"SELECT {names} FROM {table}"):
                copy.write_row(row)
                n += 1
        rows[table] = n
    for table, column in IDENTITY.items():
        pg.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
        )
    terminals, events = src.execute("SELECT (SELECT count(*) FROM terminals), (SELECT count(*) FROM events)").fetchone()
    cards, balance = src.execute("SELECT count(*), coalesce(sum(balance_cents), 0) FROM cards").fetchone()
    return MigrationReport(rows, terminals, events, cards, balance)


def _verify(src: sqlite3.Connection, pg: dialect.PgConnection, report: MigrationReport) -> None:
    for table, n in report.rows.items():
        got = pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if got != n:
            raise PlatformError(f"verification failed: {table} has {got} rows in PostgreSQL, {n} in SQLite")
    a, b = _fingerprint(src), _fingerprint(pg)
    for what in a:
        if [tuple(r) for r in a[what]] != [tuple(r) for r in b[what]]:
            raise PlatformError(f"verification failed: the {what} differ between SQLite and PostgreSQL")
    # Each chain head is the hash of the stored event at the contiguous seq (or the genesis hash before any).
    broken = pg.execute(
        "SELECT t.terminal_id FROM terminals t LEFT JOIN events e ON e.terminal_id = t.terminal_id "
        "AND e.seq = t.contiguous_seq WHERE t.contiguous_seq > 0 AND (e.hash IS NULL OR e.hash != t.head_hash) "
        "ORDER BY t.terminal_id LIMIT 1"
    ).fetchone()
    if broken:
        raise PlatformError(
            f"verification failed: terminal {broken[0]}'s head hash is not its stored event's; the source is "
            "inconsistent: keep it and investigate"
        )
