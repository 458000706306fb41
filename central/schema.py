"""Schema migrations of the platform database, with yoyo-migrations, on SQLite and PostgreSQL alike.

The migrations are central/migrations/NNNN_*.py; 0001_baseline is the schema as it stood before migrations were kept,
so an existing platform.db is brought to it and marked as migrated (nothing in it is rewritten). A platform opens its
database through `upgrade`, which applies what is missing under yoyo's lock (several workers may start at once) and
costs one query when nothing is.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from pathlib import Path

from central.sql import POSTGRESQL, Target
from common.logs import log_event

# yoyo says at INFO what it applies; the platform logs one event for the whole upgrade instead.
logging.getLogger("yoyo").setLevel(logging.WARNING)
log = logging.getLogger("platform")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_TABLE = "_yoyo_migration"


@functools.lru_cache(maxsize=1)
def _migrations():
    from yoyo import read_migrations

    return read_migrations(str(MIGRATIONS_DIR))


def migration_ids() -> list[str]:
    return [m.id for m in _migrations()]


def applied_ids(conn) -> set[str] | None:
    """Migrations recorded in the database reached through `conn` (None: it has never been migrated)."""
    try:
        if isinstance(conn, sqlite3.Connection):
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (MIGRATION_TABLE,)).fetchone():
                return None
        elif conn.execute("SELECT to_regclass(?)", (MIGRATION_TABLE,)).fetchone()[0] is None:
            return None
        return {r[0] for r in conn.execute(f"SELECT migration_id FROM {MIGRATION_TABLE}")}
    except sqlite3.DatabaseError:
        return None


def _backend(target: Target):
    from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
    from yoyo.backends.core.sqlite3 import SQLiteBackend
    from yoyo.connections import parse_uri

    if target.backend == POSTGRESQL:

        class Pg(PostgresqlPsycopgBackend):
            def connect(self, dburi):
                import psycopg

                return psycopg.connect(target.dsn, autocommit=True)

        cls, uri = Pg, "postgresql+psycopg:///onecard"
    else:

        class Lite(SQLiteBackend):
            def connect(self, dburi):
                return sqlite3.connect(str(target.path), isolation_level=None, timeout=30.0)

        cls, uri = Lite, f"sqlite:///{target.path}"
    backend = cls(parse_uri(uri), MIGRATION_TABLE)
    backend.init_database()
    return backend


def upgrade(target: Target, conn) -> list[str]:
    """Apply the migrations the database lacks; return their ids ([] when it was up to date)."""
    done = applied_ids(conn)
    if done is not None and set(migration_ids()) <= done:
        return []
    backend = _backend(target)
    try:
        with backend.lock(timeout=60):
            todo = backend.to_apply(_migrations())
            backend.apply_migrations(todo)
    finally:
        backend.connection.close()
    ids = [m.id for m in todo]
    if ids:
        log_event(
            log,
            "platform.schema_migrated",
            target=str(target),
            applied=",".join(ids),
            text=f"platform database {target}: applied migration(s) {', '.join(ids)}",
        )
    return ids
