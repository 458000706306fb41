"""Versioned blacklist of lost/cancelled cards, in its own SQLite file, looked up on every tap.

Tables, versioning rules and why it is a separate file from the event log: docs/event-log.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import sqlite_utils

from common.db import DatabaseError, connect_readwrite, create_new, open_checked_readonly, preflight, transaction
from common.sync_protocol import Epoch, blacklist_entry_hash, digest_add, digest_of

SCHEMA_VERSION = 1
KNOWN_REASONS = frozenset({"lost", "cancelled", "replaced", "damaged"})  # others are accepted and kept
_CHUNK = 10_000  # rows per executemany: large enough to amortise the call, small enough for RSS
# 8 MiB of page cache: holds the interior B-tree pages of a 1M-entry list plus a working set of
# leaves, so a lookup is ~1 page read from the OS cache; keeps the process well inside 60 MB RSS.
_CACHE_KIB = 8192

_LOOKUP_SQL = "SELECT reason, listed_in_version FROM blacklist WHERE asn = ?"


class BlacklistVersionError(Exception):
    """An update does not follow the local version; the sync agent should fetch a full snapshot."""


class BlacklistRollbackError(BlacklistVersionError):
    """An update would move the blacklist to an older or equal version (replay or rollback); refused."""


# The platform epoch the list comes from and the digest of its entries (docs/sync-protocol.md), kept in the same
# file so that both change in the transaction that changes the list. Added to lists made before epochs on open.
_SYNC_TABLE = (
    "CREATE TABLE IF NOT EXISTS bl_sync (id INTEGER PRIMARY KEY CHECK (id = 1), epoch_instance TEXT, "
    "epoch_generation INTEGER, digest TEXT NOT NULL) STRICT"
)


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    asn: bytes  # 8-byte application serial number
    reason: str  # 'lost', 'cancelled', 'replaced', 'damaged', ...
    listed_in_version: int


EntryLike = BlacklistEntry | tuple[bytes, str] | tuple[bytes, str, int]


def _rows(entries: Iterable[EntryLike], default_version: int) -> Iterator[tuple[bytes, str, int]]:
    """Validate entries lazily (a 1M snapshot is never held in memory) and turn them into rows."""
    for e in entries:
        if isinstance(e, BlacklistEntry):
            asn, reason, listed = e.asn, e.reason, e.listed_in_version
        elif len(e) == 2:
            (asn, reason), listed = e, default_version
        else:
            asn, reason, listed = e
        if not isinstance(asn, (bytes, bytearray)) or len(asn) != 8:
            raise ValueError(f"blacklist ASN must be 8 bytes, got {asn!r}")
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"blacklist reason for {bytes(asn).hex().upper()} must be a non-empty string")
        if not isinstance(listed, int) or not 0 < listed <= default_version:
            raise ValueError(
                f"listed_in_version {listed!r} of {bytes(asn).hex().upper()} must be between 1 and {default_version}"
            )
        yield bytes(asn), reason, listed


def _check_epoch(held: Epoch | None, offered: Epoch | None) -> None:
    if held is None:
        return
    if offered is None:
        raise BlacklistRollbackError(
            f"the list held comes from platform epoch {held.generation}; an update without an epoch is refused"
        )
    if offered.generation < held.generation:
        raise BlacklistRollbackError(
            f"snapshot of platform epoch {offered.generation} is older than the held "
            f"epoch {held.generation}; refused (rollback)"
        )
    if offered.generation == held.generation and offered.instance != held.instance:
        raise BlacklistRollbackError(
            f"snapshot of epoch {offered.generation} comes from platform instance "
            f"{offered.instance}, the list held from {held.instance}; refused"
        )


def _chunks(rows: Iterator, size: int = _CHUNK) -> Iterator[list]:
    while chunk := list(islice(rows, size)):
        yield chunk


# An empty or truncated blacklist is never replaced by an empty list on its own: that would admit every lost card.
LOST_FIX = (
    "restore it from backup, or delete it if this is a new install (an absent blacklist is created empty and "
    "filled by the next sync)"
)


class Blacklist:
    """The terminal's blacklist; open with Blacklist.open(path)."""

    SETTING = "[terminal].blacklist"
    WHAT = "onecard blacklist"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Blacklist:
        """Open (creating if new, at version 0 and empty); raise DatabaseError without writing anything."""
        path = Path(path)
        is_new = preflight(path, cls.SETTING, LOST_FIX)
        if is_new:
            is_new = create_new(path, lambda conn: cls._create_schema(conn, path))
        if not is_new:
            ro = open_checked_readonly(
                path, setting=cls.SETTING, required_tables={"bl_meta", "blacklist"}, what=cls.WHAT
            )
            try:
                row = ro.execute("SELECT schema_version FROM bl_meta WHERE id = 1").fetchone()
            except sqlite3.DatabaseError as exc:
                raise DatabaseError(
                    f"database {path} has a damaged bl_meta table ({exc}); delete it, the next sync fetches a snapshot"
                ) from None
            finally:
                ro.close()
            if row is None or row[0] != SCHEMA_VERSION:
                raise DatabaseError(
                    f"database {path} has blacklist schema version {row[0] if row else None!r}, this firmware reads "
                    f"version {SCHEMA_VERSION}; delete it, the next sync fetches a snapshot"
                )
        conn = connect_readwrite(path)
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'bl_sync'").fetchone() is None:
            cls._add_sync_table(conn)
        return cls(conn, path)

    @staticmethod
    def _add_sync_table(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SYNC_TABLE)
            if conn.execute("SELECT 1 FROM bl_sync").fetchone() is None:
                digest = digest_of(conn.execute("SELECT asn, reason, listed_in_version FROM blacklist"))
                conn.execute("INSERT INTO bl_sync VALUES (1, NULL, NULL, ?)", (digest,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
        db = sqlite_utils.Database(conn)
        with transaction(conn):
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise DatabaseError(f"database {path} was created by someone else while opening; retry")
            db["bl_meta"].create(
                {"id": int, "schema_version": int, "version": int, "entries": int},
                pk="id",
                not_null={"schema_version", "version", "entries"},
                strict=True,
            )
            # Plain SQL: sqlite-utils cannot declare WITHOUT ROWID. Keyed by the 8-byte ASN blob the
            # row lives in the primary-key B-tree itself: a lookup is one seek, no rowid indirection,
            # and the file is about half the size of a rowid table plus index.
            conn.execute(
                "CREATE TABLE blacklist ("
                " asn BLOB PRIMARY KEY CHECK (length(asn) = 8),"
                " reason TEXT NOT NULL,"
                " listed_in_version INTEGER NOT NULL"
                ") WITHOUT ROWID, STRICT"
            )
            db["bl_meta"].insert({"id": 1, "schema_version": SCHEMA_VERSION, "version": 0, "entries": 0})

    # -- tap path --------------------------------------------------------------------------

    def lookup(self, asn: bytes) -> BlacklistEntry | None:
        """The blacklist entry of card `asn` (8 bytes), or None if the card is not listed."""
        if not isinstance(asn, (bytes, bytearray)) or len(asn) != 8:
            raise ValueError(f"ASN must be 8 bytes, got {asn!r}")
        # Plain sqlite3 rather than sqlite-utils: the driver's statement cache keeps this one
        # statement prepared, so a lookup is bind + one B-tree seek + step (a few µs); sqlite-utils
        # would add query building and dict rows on every tap.
        row = self._conn.execute(_LOOKUP_SQL, (asn,)).fetchone()
        if row is None:
            return None
        return BlacklistEntry(bytes(asn), row[0], row[1])

    def version(self) -> int:
        """Version of the list held (0: never synced, the list is empty)."""
        return self._conn.execute("SELECT version FROM bl_meta WHERE id = 1").fetchone()[0]

    def count(self) -> int:
        """Number of listed cards (kept in bl_meta by every update, so this does not scan)."""
        return self._conn.execute("SELECT entries FROM bl_meta WHERE id = 1").fetchone()[0]

    def epoch(self) -> Epoch | None:
        """The platform epoch of the list held (None: never synced, or synced before epochs)."""
        row = self._conn.execute("SELECT epoch_instance, epoch_generation FROM bl_sync WHERE id = 1").fetchone()
        return Epoch(row[1], row[0]) if row and row[0] is not None else None

    def digest(self) -> str:
        """Digest of the entries held (the sum of their hashes, docs/sync-protocol.md "Blacklist digest")."""
        return self._conn.execute("SELECT digest FROM bl_sync WHERE id = 1").fetchone()[0]

    @contextmanager
    def read_transaction(self) -> Iterator[Blacklist]:
        """Make several reads (version, count, lookups) see one single version of the list."""
        self._conn.execute("BEGIN")
        try:
            self._conn.execute("SELECT version FROM bl_meta WHERE id = 1").fetchone()  # pins the snapshot
            yield self
        finally:
            self._conn.execute("COMMIT")

    # -- updates (sync agent) --------------------------------------------------------------

    def apply_snapshot(self, version: int, entries: Iterable[EntryLike], epoch: Epoch | None = None) -> int:
        """Replace the whole list with `entries` as `version`, atomically; return the entry count.

        Entries are BlacklistEntry or (asn, reason[, listed_in_version]) tuples; listed_in_version
        defaults to `version`. A duplicate ASN keeps its last entry. Readers keep seeing the old
        version until the commit (WAL). A version older than the one held is refused, unless the snapshot
        comes from a newer platform epoch (a restored platform re-basing its terminals); an older epoch, or
        another instance's list of the same generation, is refused whatever its version.
        """
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"snapshot version must be a positive integer, got {version!r}")
        conn = self._conn
        with transaction(conn):
            current = self._current_version()
            held = self.epoch()
            _check_epoch(held, epoch)
            rebase = epoch is not None and (held is None or epoch.generation > held.generation)
            if version < current and not rebase:
                raise BlacklistRollbackError(
                    f"snapshot version {version} is older than the held version {current}; refused (rollback). "
                    "Fetch the platform's current snapshot"
                )
            conn.execute("DELETE FROM blacklist")
            for chunk in _chunks(_rows(entries, version)):
                conn.executemany("INSERT OR REPLACE INTO blacklist VALUES (?, ?, ?)", chunk)
            # The digest from what was stored (a duplicate ASN kept its last entry), without holding the list.
            digest = digest_of(conn.execute("SELECT asn, reason, listed_in_version FROM blacklist"))
            self._set_sync(epoch if epoch is not None else held, digest)
            count = self._finish(version)
        # A full snapshot leaves a WAL as big as the list; give the flash back now rather than at
        # some later write. Best effort: a reader still on the old version just defers it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return count

    def apply_delta(
        self,
        base_version: int,
        new_version: int,
        added: Iterable[EntryLike],
        removed: Iterable[bytes],
        epoch: Epoch | None = None,
    ) -> int:
        """Move from base_version to new_version by adding/removing entries, atomically; return the count.

        Raises BlacklistRollbackError if new_version <= the held version (replayed or old delta),
        BlacklistVersionError if base_version is not the held version (ask for a snapshot).
        Adding a listed ASN replaces its entry; removing an unlisted ASN is a no-op.
        """
        conn = self._conn
        with transaction(conn):
            current = self._current_version()
            if not isinstance(new_version, int) or new_version <= current:
                raise BlacklistRollbackError(
                    f"delta to version {new_version} does not move past the held version {current}; refused "
                    "(rollback or replay). Fetch the platform's current version"
                )
            if base_version != current:
                raise BlacklistVersionError(
                    f"delta from version {base_version} does not apply to the held version {current}; "
                    "fetch a full snapshot"
                )
            held = self.epoch()
            if held is None and current == 0:
                held = epoch  # the first list held may come as a delta from version 0: it takes that epoch
            if epoch != held:
                raise BlacklistVersionError(
                    f"delta of epoch {epoch.generation if epoch else None} does not apply to a list of epoch "
                    f"{held.generation if held else None}; fetch a full snapshot"
                )
            removed_rows = []
            for asn in removed:
                if not isinstance(asn, (bytes, bytearray)) or len(asn) != 8:
                    raise ValueError(f"removed ASN must be 8 bytes, got {asn!r}")
                removed_rows.append((bytes(asn),))
            added_rows = list(_rows(added, new_version))
            both = {r[0] for r in removed_rows} & {r[0] for r in added_rows}
            if both:
                raise ValueError(f"delta both adds and removes ASN {sorted(both)[0].hex().upper()}; refused")
            digest = self.digest()
            for row in [*((r[0], None) for r in removed_rows), *((r[0], r) for r in added_rows)]:
                asn, new = row
                old = conn.execute("SELECT reason, listed_in_version FROM blacklist WHERE asn = ?", (asn,)).fetchone()
                if old is not None:
                    digest = digest_add(digest, blacklist_entry_hash(asn, *old), -1)
                    conn.execute("DELETE FROM blacklist WHERE asn = ?", (asn,))
                if new is not None:
                    digest = digest_add(digest, blacklist_entry_hash(*new))
                    conn.execute("INSERT INTO blacklist VALUES (?, ?, ?)", new)
            self._set_sync(held, digest)
            return self._finish(new_version)

    def _set_sync(self, epoch: Epoch | None, digest: str) -> None:
        self._conn.execute(
            "UPDATE bl_sync SET epoch_instance = ?, epoch_generation = ?, digest = ? WHERE id = 1",
            (epoch.instance if epoch else None, epoch.generation if epoch else None, digest),
        )

    def _current_version(self) -> int:
        return self._conn.execute("SELECT version FROM bl_meta WHERE id = 1").fetchone()[0]

    def _finish(self, version: int) -> int:
        # count(*) once per update (tens of ms at 1M) keeps count() exact without scanning per call.
        entries = self._conn.execute("SELECT count(*) FROM blacklist").fetchone()[0]
        self._conn.execute("UPDATE bl_meta SET version = ?, entries = ? WHERE id = 1", (version, entries))
        return entries

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Blacklist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
