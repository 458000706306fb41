"""The reference platform's state: terminals and their verified event chains, holders, cards, blacklists; in SQLite
(one file, the embedded default) or PostgreSQL (central/sql.py says how one set of SQL runs on both).

Every operation is one transaction; messages it must send are signed and queued in `outbound` in that same
transaction, so a crash never leaves a blacklist change without its notification (or the reverse).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import os
import random
import secrets
import sqlite3
import time
import zoneinfo
from pathlib import Path
from types import FunctionType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central import schema
from central import sql as dialect
from central.bills import Bills
from central.blacklists import Blacklists
from central.card_flows import CardFlows
from central.db import PlatformError
from central.ingest import Ingest
from central.ota_jobs import OtaJobs
from central.outbound import Outbound
from central.passages import Passages
from central.purse import PurseAccounts
from central.registry import Registry
from central.subsidy import SubsidyAccounts
from common import sync_protocol as p
from common.db import transaction


class Platform(
    Registry, Blacklists, CardFlows, Outbound, Ingest, PurseAccounts, Bills, Passages, SubsidyAccounts, OtaJobs
):
    """Accounts, ingest and signed publications of one platform database (one instance per thread).

    Each job lives in its own module (registry, blacklists, card_flows, outbound, ingest, purse, bills); this class
    owns the connection, the clock and the signing key they share.
    """

    def __init__(
        self,
        path: Path | str | dialect.Target,
        signing_key: Ed25519PrivateKey,
        *,
        clock=None,
        timezone: str = "Asia/Shanghai",
        tac_sam=None,
        unverified_money: bool = False,
        published_state: Path | None = None,
    ) -> None:
        self.target = dialect.parse_target(path)
        self.backend = self.target.backend
        self.path = self.target.path  # SQLite only (None on PostgreSQL)
        self.key = signing_key
        self.published_state = published_state  # PostgreSQL: where the published-state file is kept (Blacklists)
        # A SAM holding the enterprises' TAC master keys (usage verify): only the platform can check a TAC.
        # Without one, money records are held ('no_tac_keys') unless `unverified_money` (the lab flag of
        # `platform serve --lab-unverified-money`): then they are accounted with tac_status 'unchecked' and every
        # balance they move is labelled unverified.
        self.tac_sam = tac_sam
        self.unverified_money = unverified_money
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.tz = zoneinfo.ZoneInfo(timezone)
        if self.backend == dialect.POSTGRESQL:
            self.conn = dialect.connect_postgresql(self.target.dsn)
        else:
            # check_same_thread=False: a service builds its Platform objects and hands each to one worker
            # thread; an object is never used by two threads at once.
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False)
            if self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise PlatformError(f"platform database {self.path} cannot use WAL; put it on a local filesystem")
            self.conn.execute("PRAGMA synchronous = FULL")  # an ack is sent only for what survives power loss
            # Writers queue on a lock file before BEGIN IMMEDIATE (see _sqlite_txn).
            lock = self.path.with_name(self.path.name + WRITER_LOCK_SUFFIX)
            try:
                self._writer_lock: int | None = os.open(str(lock), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                self.conn.close()
                raise PlatformError(
                    f"cannot open the writer lock file {lock} ({exc.strerror}); the platform needs to write in the "
                    "database's folder: check its permissions"
                ) from None
        try:
            schema.upgrade(self.target, self.conn)
        except dialect.connection_errors() as exc:
            self.close()
            raise PlatformError(f"cannot migrate platform database {self.target} ({exc}); check the server") from None
        # The epoch every blacklist body carries: made once per platform database (`onecard platform init`).
        self.conn.execute(
            "INSERT INTO platform_epoch VALUES (1, ?, 1, ?, 'created') ON CONFLICT DO NOTHING",
            (secrets.token_hex(16), self._now()),
        )
        self._digests: dict[tuple, str] = {}

    def close(self) -> None:
        self.conn.close()
        lock, self._writer_lock = getattr(self, "_writer_lock", None), None
        if lock is not None:
            os.close(lock)

    def _txn(self, isolation: str = "SERIALIZABLE"):
        if self.backend == dialect.POSTGRESQL:
            return dialect.pg_transaction(self.conn, isolation)
        return self._sqlite_txn()

    @contextlib.contextmanager
    def _sqlite_txn(self):
        """BEGIN IMMEDIATE ... COMMIT, entered once this object holds the database's writer lock file.

        SQLite runs one writer at a time, and a writer that finds the database locked sleeps in its busy handler
        (1 ms, 2 ms, 5 ms, ... up to 100 ms a try) and retries: with several workers the lock often stands free
        while every waiter sleeps (measured: each of 4 workers spent about half its time in BEGIN IMMEDIATE). An
        exclusive flock() on the lock file queues the platform's writers in the kernel instead, which wakes the
        next one as soon as the lock is released. The lock file is released by the kernel when a process dies;
        BEGIN IMMEDIATE still guards against any writer that does not take it (a tool, an older version)."""
        if self.conn.in_transaction or self._writer_lock is None:
            with transaction(self.conn) as conn:
                yield conn
            return
        fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        try:
            with transaction(self.conn) as conn:
                yield conn
        finally:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def _now(self) -> str:
        return p.format_time(self.clock())

    def seal(self, type_: str, target: str, body: dict) -> bytes:
        # The platform never signs what a terminal would refuse: the same schema the agent applies.
        try:
            p.BODY_CHECKS[type_](body)
        except p.ProtocolError as exc:
            raise PlatformError(f"refusing to sign this {type_}: {exc}") from None
        return p.seal(self.key, type_, target, body, self.clock(), self.new_message_id())

    @staticmethod
    def new_message_id() -> str:
        return secrets.token_hex(16)

    def _queue(self, topic: str, payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO outbound (topic, payload, created_at) VALUES (?, ?, ?)", (topic, payload, self._now())
        )


# The SQLite platform's writers take this file next to the database (an exclusive flock) before BEGIN IMMEDIATE.
WRITER_LOCK_SUFFIX = "-writer.lock"


# On PostgreSQL a SERIALIZABLE transaction may be aborted so that concurrent workers stay equivalent to one at a time
# (central/sql.py); it changed nothing, so the operation that ran it runs again. Only the outermost call retries:
# inside an open transaction the abort goes up to the call that opened it.
RETRY_ATTEMPTS = 30


# Not retried: it sends messages inside its transaction (Outbound.publish_pending).
NOT_RETRIED = {"publish_pending"}


def _retrying(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if getattr(self, "backend", dialect.SQLITE) != dialect.POSTGRESQL or self.conn.in_transaction:
            return method(self, *args, **kwargs)
        for attempt in range(RETRY_ATTEMPTS):
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not dialect.is_retryable(exc) or attempt == RETRY_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise AssertionError("unreachable")  # pragma: no cover

    return run


for _name in sorted({n for cls in Platform.__mro__[1:-1] for n, v in vars(cls).items() if type(v) is FunctionType}):
    if not _name.startswith("_") and _name not in NOT_RETRIED:
        setattr(Platform, _name, _retrying(getattr(Platform, _name)))
