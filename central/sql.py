"""The platform database's two engines behind one small connection interface: SQLite (one file, the embedded
default) and PostgreSQL (psycopg 3, for an operator's deployment).

The store's SQL modules (registry, blacklists, card_flows, outbound, ingest, purse, bills) are written once, in the
SQL both engines share: `?` parameters, `INSERT ... ON CONFLICT`, `RETURNING`, `CAST(? AS TEXT)` where a parameter
alone would have no type. On PostgreSQL, `PgConnection` takes that SQL as it is: `?` and `?N` become psycopg's
`%s`, and integral `numeric` results (PostgreSQL's sum() of BIGINT) come back as int, as SQLite gives them.

Transactions keep SQLite's guarantee: SQLite runs one writer at a time (BEGIN IMMEDIATE), PostgreSQL runs every
platform transaction SERIALIZABLE, so concurrent workers commit only what some one-at-a-time order would have
committed. A transaction PostgreSQL aborts to keep that promise (serialization failure, deadlock) changed nothing
and is run again from the start by `central.store` (RETRYABLE).

A database is named by a target: a path (or `sqlite:PATH`) for SQLite, `postgresql://...` or `postgresql:DSN`
(a libpq connection string, e.g. `postgresql:host=/run/postgresql dbname=onecard`) for PostgreSQL.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

SQLITE, POSTGRESQL = "sqlite", "postgresql"


class TargetError(ValueError):
    """A database target cannot be understood; the message says how to write one."""


@dataclass(frozen=True)
class Target:
    backend: str  # SQLITE or POSTGRESQL
    path: Path | None = None  # SQLite
    dsn: str = ""  # PostgreSQL: a libpq connection string or URI

    def __str__(self) -> str:
        return str(self.path) if self.backend == SQLITE else f"postgresql:{redact(self.dsn)}"


def parse_target(text: str | Path | Target) -> Target:
    """A path / `sqlite:PATH` (SQLite) or `postgresql://...` / `postgresql:DSN` (PostgreSQL)."""
    if isinstance(text, Target):
        return text
    if isinstance(text, Path):
        return Target(SQLITE, path=text)
    if text.startswith(("postgresql://", "postgres://")):
        return Target(POSTGRESQL, dsn=text)
    if text.startswith("postgresql:"):
        dsn = text[len("postgresql:") :].strip()
        if not dsn:
            raise TargetError(
                "postgresql: needs a connection string, e.g. postgresql:host=/run/postgresql dbname=onecard "
                "or postgresql://onecard@db1/onecard"
            )
        return Target(POSTGRESQL, dsn=dsn)
    if text.startswith("sqlite:"):
        text = text[len("sqlite:") :]
    if not text:
        raise TargetError("a database target is a path (sqlite:PATH) or postgresql:DSN; nothing was given")
    return Target(SQLITE, path=Path(text))


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    dsn = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", dsn)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """SQLite-style placeholders to psycopg's: `?` -> `%s`; `?N` -> `%s` with the parameter order it needs (None
    when the parameters are already in order); a literal `%` doubled. Quoted strings and identifiers are kept."""
    out: list[str] = []
    order: list[int] = []
    numbered = False
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = sql.index(c, i + 1)
            while j + 1 < n and sql[j + 1] == c:  # a doubled quote inside the literal
                j = sql.index(c, j + 2)
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            if j > i + 1:
                numbered = True
                order.append(int(sql[i + 1 : j]) - 1)
            else:
                order.append(len(order))
            out.append("%s")
            i = j
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out), tuple(order) if numbered else None


def _params(order: tuple[int, ...] | None, params) -> tuple:
    params = tuple(params)
    return params if order is None else tuple(params[k] for k in order)


class PgConnection:
    """A psycopg 3 connection with the part of sqlite3.Connection's interface the store uses: execute(),
    executemany(), in_transaction, close(). Autocommit outside `transaction()`, like SQLite with
    isolation_level=None. A connection lost while no transaction is open (the server restarted) is opened again at
    the next statement; one lost inside a transaction fails that transaction (its caller sees the error and the
    operation is done again: an agent resends an unacknowledged batch)."""

    backend = POSTGRESQL

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn = self._connect()

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.adapters.register_loader("numeric", _integral_numeric_loader())
        return conn

    def _live(self):
        if self._conn.closed or self._conn.broken:
            if self.in_transaction:  # pragma: no cover - a broken connection reports no transaction
                raise RuntimeError("connection lost inside a transaction")
            self._conn = self._connect()
        return self._conn

    @property
    def raw(self):
        """The psycopg connection itself (COPY, for `onecard platform migrate`)."""
        return self._live()

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        if self._conn.closed or self._conn.broken:
            return False
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params=()):
        text, order = translate(sql)
        args = _params(order, params)
        outside = not self.in_transaction
        try:
            return self._live().execute(text, args)
        except connection_errors():
            # Outside a transaction the store runs only reads, BEGIN and idempotent inserts: one more try on a new
            # connection is safe. Inside one, the transaction is lost and its caller sees the error.
            if not (outside and self._conn.broken):
                raise
            return self._live().execute(text, args)

    def executemany(self, sql: str, seq) -> None:
        text, order = translate(sql)
        with self._live().cursor() as cur:
            cur.executemany(text, [_params(order, p) for p in seq])

    def column_types(self, table: str) -> tuple[str, ...]:
        """The SQL types of a table's columns, in order (read once per connection; the schema is migrated before
        the store uses it)."""
        cache = self.__dict__.setdefault("_column_types", {})
        if table not in cache:
            cache[table] = tuple(
                t
                for (t,) in self.execute(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = CAST(? AS regclass) "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (table,),
                )
            )
        return cache[table]

    def close(self) -> None:
        self._conn.close()


@functools.lru_cache(maxsize=1)
def _integral_numeric_loader():
    from psycopg.types.numeric import NumericLoader

    class Loader(NumericLoader):
        def load(self, data):
            value = super().load(data)
            if isinstance(value, Decimal) and value == value.to_integral_value():
                return int(value)
            return value

    return Loader


@contextlib.contextmanager
def pg_transaction(conn: PgConnection, isolation: str = "SERIALIZABLE") -> Iterator[PgConnection]:
    """BEGIN ISOLATION LEVEL SERIALIZABLE ... COMMIT, ROLLBACK on any exception; joins an open transaction.

    READ COMMITTED only for a transaction whose rows are all claimed with FOR UPDATE (the outbound publisher)."""
    if isolation not in ("SERIALIZABLE", "READ COMMITTED"):
        raise ValueError(f"isolation {isolation!r}")
    if conn.in_transaction:
        yield conn
        return
    conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")


def is_retryable(exc: BaseException) -> bool:
    """A PostgreSQL transaction aborted for serializability (40001) or a deadlock (40P01), or by a unique key that a
    concurrent transaction inserted first (23505: two workers storing the same record; run again, the second sees
    it stored and counts a duplicate). It changed nothing. The store turns the unique keys it expects into
    PlatformError inside the transaction, so a 23505 that reaches here is such a race."""
    return getattr(getattr(exc, "diag", None), "sqlstate", None) in ("40001", "40P01", "23505")


def integrity_errors() -> tuple[type[BaseException], ...]:
    """What a UNIQUE or primary key violation raises on either engine."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency, but SQLite needs none of it
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a database that cannot be reached raises (PostgreSQL down, bad DSN, wrong password)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return ()
    return (psycopg.OperationalError,)


def connect_postgresql(dsn: str) -> PgConnection:
    from central.db import PlatformError

    try:
        return PgConnection(dsn)
    except ImportError:
        raise PlatformError(
            "PostgreSQL needs the psycopg package; install onecard with its dependencies (pip install -e .)"
        ) from None
    except connection_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlatformError(
            f"cannot connect to PostgreSQL at {redact(dsn)} ({first}); check the DSN and that the server runs"
        ) from None


def bytes_length(column: str, backend: str) -> str:
    """SQL for the length in bytes of a TEXT column's UTF-8 encoding."""
    return f"octet_length({column})" if backend == POSTGRESQL else f"length(CAST({column} AS BLOB))"


def insert_rows(conn, table: str, rows: list[tuple]) -> None:
    """INSERT INTO table VALUES each row (all columns, in order). On PostgreSQL one `COPY table FROM STDIN` of the
    rows, inside the caller's transaction: one statement for any number of rows, each row formatted by psycopg's C
    code (measured: half the client CPU of `INSERT ... SELECT * FROM unnest(arrays)`, whose arrays are built in
    Python). A duplicate key fails the COPY as it would the INSERT (23505: the transaction runs again). SQLite's
    executemany is a loop in C on the same file and needs nothing more."""
    if not rows:
        return
    if getattr(conn, "backend", SQLITE) != POSTGRESQL:
        conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        return
    types = conn.column_types(table)
    if len(types) != len(rows[0]):
        raise ValueError(f"{table} has {len(types)} columns, a row {len(rows[0])}")
    with conn.raw.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def add_to_balances(conn, changes: list[tuple[int, str]]) -> None:
    """UPDATE cards SET balance_cents = balance_cents + delta for each (delta, asn): on PostgreSQL in one statement."""
    if not changes:
        return
    if getattr(conn, "backend", SQLITE) != POSTGRESQL:
        conn.executemany("UPDATE cards SET balance_cents = balance_cents + ? WHERE asn = ?", changes)
        return
    deltas, asns = zip(*changes)
    conn.raw.execute(
        "UPDATE cards SET balance_cents = balance_cents + v.delta "
        "FROM unnest(CAST(%b AS bigint[]), CAST(%b AS text[])) AS v (delta, asn) WHERE cards.asn = v.asn",
        (list(deltas), list(asns)),
    )
