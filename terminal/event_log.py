"""Durable, hash-chained log of every decision a terminal makes (SQLite, WAL, synchronous=FULL).

Byte encoding of the chain, schema and guarantees: docs/event-log.md.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from common.db import (
    DatabaseError,
    connect_readwrite,
    create_new,
    disk_full_problem,
    is_disk_full,
    open_checked_readonly,
    preflight,
    transaction,
)
from common.errors import RecordNotWritten
from common.event_kinds import is_known_kind
from common.events import GENESIS_HASH, canonical_json, event_hash, format_time, normalise_asn

SCHEMA_VERSION = 1
# Of a new log (an existing one keeps its own). A decision's commit rewrites 3 pages (record, index, head), so the
# page size is what each tap writes to the SD card: with 4 KiB pages a door decision wrote 25 KiB, with 1 KiB 14
# (bench/tap.py). A record is 500-700 bytes; one over 989 bytes continues on an overflow page, which is fine.
PAGE_SIZE = 1024
# Checkpoints (copying the WAL into the database: two more fsyncs and a rewrite of the pages) are made by the
# idle tap loop (checkpoint_if_due), not by the commit of a tap; SQLite's own, on a commit, only past this.
CHECKPOINT_AFTER_RECORDS = 200
AUTOCHECKPOINT_PAGES = 20000
_HASH_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LoggedEvent:
    """One record of the log as stored (detail kept as its canonical JSON text so the record is hashable)."""

    seq: int
    time: datetime
    kind: str
    asn: str | None
    reason_code: str
    message: str
    detail_json: str
    prev_hash: str
    hash: str

    @property
    def detail(self) -> dict[str, Any]:
        return json.loads(self.detail_json)

    @property
    def time_text(self) -> str:
        """The time exactly as stored and hashed."""
        return format_time(self.time)


@dataclass(frozen=True)
class ChainReport:
    """Result of EventLog.verify(); `checked` counts records found intact before the first bad one."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str
    head_seq: int  # last intact record (0 for an empty log)
    head_hash: str  # its hash (GENESIS_HASH for an empty log)


_EVENT_COLUMNS = "seq, time, kind, asn, reason_code, message, detail, prev_hash, hash"


def _row_to_event(row: tuple) -> LoggedEvent:
    seq, time, kind, asn, reason_code, message, detail, prev_hash, hash_ = row
    return LoggedEvent(
        seq=seq,
        time=datetime.fromisoformat(time),
        kind=kind,
        asn=asn,
        reason_code=reason_code,
        message=message,
        detail_json=detail,
        prev_hash=prev_hash,
        hash=hash_,
    )


class LogWriteError(DatabaseError, RecordNotWritten):
    """An append did not happen (disk full, I/O error, file locked too long); the message says which."""


class EventLog:
    """The terminal's append-only transaction log; open with EventLog.open or EventLog.open_readonly."""

    SETTING = "[terminal].database"
    WHAT = "onecard terminal"

    def __init__(self, conn: sqlite3.Connection, path: Path, terminal_id: str, readonly: bool) -> None:
        self._conn = conn
        self.db = sqlite_utils.Database(conn)  # for diagnostics and tests; write only through append()
        self.path = path
        self.terminal_id = terminal_id
        self.readonly = readonly
        self._since_checkpoint = 0  # records appended since the last checkpoint
        self._sums: dict[tuple, tuple[int, int]] = {}  # sum_amounts memo: key -> (records counted up to seq, sum)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, terminal_id: str, *, created_at: datetime | None = None) -> EventLog:
        """Open (creating if new) the log of `terminal_id`; raise DatabaseError without writing anything."""
        path = Path(path)
        if not isinstance(terminal_id, str) or not terminal_id.strip():
            raise ValueError("terminal_id must be a non-empty string; set [terminal].id")
        is_new = preflight(path, cls.SETTING)
        if is_new:
            is_new = create_new(path, lambda conn: cls._create_schema(conn, path, terminal_id, created_at), PAGE_SIZE)
        if not is_new:
            ro = open_checked_readonly(path, setting=cls.SETTING, required_tables={"meta", "events"}, what=cls.WHAT)
            try:
                stored_id = cls._read_meta(ro, path)[1]
            finally:
                ro.close()
            if stored_id != terminal_id:
                raise DatabaseError(
                    f"database {path} belongs to terminal {stored_id!r}, not {terminal_id!r}; "
                    f"point {cls.SETTING} at this terminal's own file or move it away"
                )
        conn = connect_readwrite(path)
        conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        return cls(conn, path, terminal_id, readonly=False)

    @classmethod
    def open_readonly(cls, path: Path) -> EventLog:
        """Open an existing log for reading (log show / verify); no terminal ID needed, nothing written."""
        path = Path(path)
        if not path.exists():
            raise DatabaseError(f"database {path} does not exist; check the path (--db)")
        preflight(path, "--db", "check the path (--db), or keep it for investigation and restore it from backup")
        conn = open_checked_readonly(path, setting="--db", required_tables={"meta", "events"}, what=cls.WHAT)
        try:
            terminal_id = cls._read_meta(conn, path)[1]
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, terminal_id, readonly=True)

    @classmethod
    def _read_meta(cls, conn: sqlite3.Connection, path: Path) -> tuple[int, str, int, str]:
        """(schema_version, terminal_id, head_seq, head_hash), checking the schema version first."""
        try:
            row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(
                f"database {path} is not a {cls.WHAT} database (unreadable meta: {exc}); "
                f"point {cls.SETTING} at the right file or move it away"
            ) from None
        if row is None:
            raise DatabaseError(
                f"database {path} is not a {cls.WHAT} database (empty meta table); "
                f"point {cls.SETTING} at the right file or move it away"
            )
        if row[0] != SCHEMA_VERSION:
            raise DatabaseError(
                f"database {path} has schema version {row[0]!r}, this firmware reads version {SCHEMA_VERSION}; "
                "run the firmware that wrote it or restore a matching backup"
            )
        try:
            meta = conn.execute(
                "SELECT schema_version, terminal_id, head_seq, head_hash FROM meta WHERE id = 1"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(
                f"database {path} has a damaged meta table ({exc}); keep it for investigation and restore from backup"
            ) from None
        return meta

    @staticmethod
    def _create_schema(conn: sqlite3.Connection, path: Path, terminal_id: str, created_at: datetime | None) -> None:
        # created_at is informational (not hashed); events never read the clock, the caller passes time.
        created = format_time(created_at or datetime.now(timezone.utc))
        db = sqlite_utils.Database(conn)
        with transaction(conn):
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise DatabaseError(f"database {path} was created by someone else while opening; retry")
            # STRICT: a value of the wrong type (e.g. a blob ASN) is refused instead of stored.
            db["meta"].create(
                {
                    "id": int,
                    "schema_version": int,
                    "terminal_id": str,
                    "created_at": str,
                    "head_seq": int,  # last appended seq: the counter that makes seqs never reused
                    "head_hash": str,  # its hash: a naive deletion of the newest records shows
                },
                pk="id",
                not_null={"schema_version", "terminal_id", "created_at", "head_seq", "head_hash"},
                strict=True,
            )
            db["events"].create(
                {
                    "seq": int,
                    "time": str,
                    "kind": str,
                    "asn": str,
                    "reason_code": str,
                    "message": str,
                    "detail": str,
                    "prev_hash": str,
                    "hash": str,
                },
                pk="seq",
                not_null={"time", "kind", "reason_code", "message", "detail", "prev_hash", "hash"},
                strict=True,
            )
            # The attendance clock asks "last in/out of this card" on every tap: (asn, kind, seq)
            # lets each kind be answered by one reverse index seek instead of a scan.
            db["events"].create_index(["asn", "kind", "seq"], index_name="events_asn_kind_seq")
            db["events"].create_index(["kind", "seq"], index_name="events_kind_seq")
            db["meta"].insert(
                {
                    "id": 1,
                    "schema_version": SCHEMA_VERSION,
                    "terminal_id": terminal_id,
                    "created_at": created,
                    "head_seq": 0,
                    "head_hash": GENESIS_HASH,
                }
            )

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        time: datetime,
        kind: str,
        *,
        asn: str | bytes | None,
        reason_code: str,
        message: str,
        detail: dict[str, Any],
    ) -> LoggedEvent:
        """Append one event in one transaction (durable when this returns) and return it with seq and hash."""
        if self.readonly:
            raise DatabaseError(f"event log {self.path} was opened read-only; use EventLog.open to append")
        time_text = format_time(time)
        if not is_known_kind(kind):
            raise ValueError(f"event kind {kind!r:.40} is not in common.event_kinds.KNOWN_KINDS; add it there first")
        if not isinstance(reason_code, str):
            raise TypeError(f"reason_code must be a string, got {type(reason_code).__name__}")
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {type(message).__name__}")
        asn_text = normalise_asn(asn)
        detail_text = canonical_json(detail)
        conn = self._conn
        # Plain SQL, not sqlite-utils' insert: the head read, the insert and the head update must be
        # one BEGIN IMMEDIATE transaction (so a crash leaves either the whole record or nothing),
        # and this runs on every tap. Not common.db.transaction: a failed write (a full disk, even at COMMIT) becomes
        # LogWriteError here, and a ROLLBACK SQLite already did itself is not an error.
        conn.execute("BEGIN IMMEDIATE")
        try:
            head_seq, head_hash = conn.execute("SELECT head_seq, head_hash FROM meta WHERE id = 1").fetchone()
            seq = head_seq + 1
            digest = event_hash(
                seq, time_text, self.terminal_id, kind, asn_text, reason_code, message, detail_text, head_hash
            )
            conn.execute(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, time_text, kind, asn_text, reason_code, message, detail_text, head_hash, digest),
            )
            conn.execute("UPDATE meta SET head_seq = ?, head_hash = ? WHERE id = 1", (seq, digest))
            conn.execute("COMMIT")
            self._since_checkpoint += 1
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolls back on its own when it cannot; the record was not written either way
            if isinstance(exc, sqlite3.Error):
                raise LogWriteError(self._write_problem(exc)) from None
            raise
        return LoggedEvent(
            seq=seq,
            time=datetime.fromisoformat(time_text),
            kind=kind,
            asn=asn_text,
            reason_code=reason_code,
            message=message,
            detail_json=detail_text,
            prev_hash=head_hash,
            hash=digest,
        )

    def _write_problem(self, exc: sqlite3.Error) -> str:
        if is_disk_full(exc) or disk_full_problem(self.path):
            return f"cannot record in event log {self.path}: the disk holding it is full; free space on that filesystem"
        return (
            f"cannot record in event log {self.path} ({exc}); check the disk and that no other process locks the file"
        )

    # -- reading ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        """Seq of the newest appended record (0 for an empty log)."""
        return self._conn.execute("SELECT head_seq FROM meta WHERE id = 1").fetchone()[0]

    def events(self, after_seq: int = 0, limit: int | None = None) -> list[LoggedEvent]:
        """Records with seq > after_seq in seq order, at most `limit` of them."""
        rows = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, -1 if limit is None else limit),
        ).fetchall()
        return [_row_to_event(r) for r in rows]

    def last_event(self, asn: str | bytes, kinds: tuple[str, ...]) -> LoggedEvent | None:
        """Newest record of card `asn` whose kind is one of `kinds` (None if there is none)."""
        asn_text = normalise_asn(asn)
        if asn_text is None:
            raise ValueError("last_event needs an ASN")
        if isinstance(kinds, str):
            kinds = (kinds,)
        best = None
        # One indexed seek per kind (a handful at most), rather than `kind IN (...) ORDER BY seq`,
        # which SQLite answers by collecting and sorting every matching record of the card.
        for kind in kinds:
            row = self._conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE asn = ? AND kind = ? ORDER BY seq DESC LIMIT 1",
                (asn_text, kind),
            ).fetchone()
            if row is not None and (best is None or row[0] > best[0]):
                best = row
        return None if best is None else _row_to_event(best)

    def last_event_of(self, kinds: tuple[str, ...]) -> LoggedEvent | None:
        """Newest record, of any card, whose kind is one of `kinds` (the POS's "last purchase of this terminal")."""
        best = None
        for kind in kinds:
            row = self._conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1", (kind,)
            ).fetchone()
            if row is not None and (best is None or row[0] > best[0]):
                best = row
        return None if best is None else _row_to_event(best)

    def has_detail(self, kind: str, key: str, value: str) -> bool:
        """Whether some record of `kind` has detail[key] == value (e.g. an over-the-air top-up's action_id)."""
        row = self._conn.execute(
            "SELECT 1 FROM events WHERE kind = ? AND json_extract(detail, '$.' || ?) = ? LIMIT 1", (kind, key, value)
        ).fetchone()
        return row is not None

    def find_detail(self, kind: str, key: str, value: object) -> LoggedEvent | None:
        """The newest record of `kind` whose detail[key] == value, or None."""
        row = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE kind = ? AND json_extract(detail, '$.' || ?) = ? "
            "ORDER BY seq DESC LIMIT 1",
            (kind, key, value),
        ).fetchone()
        return None if row is None else _row_to_event(row)

    def card_events_since(self, asn: str | bytes, kinds: tuple[str, ...], since: datetime) -> list[LoggedEvent]:
        """Card `asn`'s records of `kinds` at or after `since`, in seq order (a card's meal-period usage)."""
        marks = ",".join("?" * len(kinds))
        rows = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE asn = ? AND kind IN ({marks}) AND time >= ? ORDER BY seq",
            (normalise_asn(asn), *kinds, format_time(since)),
        ).fetchall()
        return [_row_to_event(r) for r in rows]

    def last_tsn(self) -> int:
        """The highest SAM TSN this log holds: the newest purchase intent's (TSNs only grow) or, when compaction
        removed every intent, the one it carried; 0 when none. No sale may use a TSN at or below it."""
        intent = self.last_event_of(("pos.purchase.intent",))
        tsn = intent.detail.get("tsn") if intent is not None else None
        return max(self.carried_tsn(), tsn if type(tsn) is int else 0)

    def carried_tsn(self) -> int:
        """The highest SAM TSN in records compaction removed (0 if none): the TSN floor they leave behind."""
        try:
            row = self._conn.execute("SELECT last_tsn FROM carried WHERE id = 1").fetchone()
        except sqlite3.OperationalError:  # no compaction ever removed a purchase
            return 0
        return row[0] if row else 0

    def sum_amounts(self, asn: str | bytes, kind: str, after_seq: int = 0) -> int:
        """Sum of detail.amount over card `asn`'s records of `kind` after `after_seq` (offline spending limits).

        Records are only ever appended after the head (compaction removes acknowledged ones, at or before
        after_seq), so the sum is kept per (card, kind, after_seq) and only newer records are added to it."""
        key = (normalise_asn(asn), kind, after_seq)
        counted, total = self._sums.get(key, (after_seq, 0))
        row = self._conn.execute(
            "SELECT COALESCE(SUM(json_extract(detail, '$.amount')), 0), MAX(seq) FROM events "
            "WHERE asn = ? AND kind = ? AND seq > ?",
            (key[0], kind, counted),
        ).fetchone()
        total += int(row[0])
        if len(self._sums) > 10_000:
            self._sums.clear()
        self._sums[key] = (row[1] or counted, total)
        return total

    def checkpoint_if_due(self) -> bool:
        """Copy the WAL into the database if enough was appended since the last time; for an idle moment."""
        if self._since_checkpoint < CHECKPOINT_AFTER_RECORDS or self.readonly:
            return False
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._since_checkpoint = 0
        return True

    def verify(self) -> ChainReport:
        """Recompute the whole chain; report the first record that is missing, altered or out of place."""
        conn = self._conn
        conn.execute("BEGIN")  # one read snapshot: a concurrent append cannot make us see half a state
        try:
            return self._verify()
        finally:
            conn.execute("COMMIT")

    def _verify(self) -> ChainReport:
        _, terminal_id, head_seq, head_hash = self._read_meta(self._conn, self.path)
        anchor_seq, prev = self._anchor()
        expected = anchor_seq + 1

        def bad(seq: int, problem: str) -> ChainReport:
            return ChainReport(False, expected - 1 - anchor_seq, seq, problem, expected - 1, prev)

        cursor = self._conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY seq")
        for row in cursor:
            seq, time, kind, asn, reason_code, message, detail, prev_hash, stored = row
            if seq != expected:
                if seq > expected:
                    missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}..{seq - 1}"
                    return bad(expected, f"gap in sequence: {missing} missing (next record present is seq {seq})")
                return bad(seq, f"record has seq {seq}, but seqs start at {expected}")
            texts = {
                "time": time,
                "kind": kind,
                "reason_code": reason_code,
                "message": message,
                "detail": detail,
                "prev_hash": prev_hash,
                "hash": stored,
            }
            wrong = [name for name, v in texts.items() if not isinstance(v, str)]
            if asn is not None and not isinstance(asn, str):
                wrong.append("asn")
            if wrong:
                return bad(seq, f"record seq {seq}: field(s) {', '.join(wrong)} not text: the record was altered")
            if prev_hash != prev:
                what = "the genesis value" if seq == 1 else f"the hash of seq {seq - 1}"  # or the compaction anchor
                return bad(
                    seq, f"broken link: record seq {seq} has prev_hash {prev_hash[:16]}…, expected {what} {prev[:16]}…"
                )
            computed = event_hash(seq, time, terminal_id, kind, asn, reason_code, message, detail, prev_hash)
            if computed != stored:
                return bad(
                    seq,
                    f"hash mismatch: record seq {seq} stores {stored[:16]}… but its content "
                    f"hashes to {computed[:16]}…: the record was altered",
                )
            prev = stored
            expected += 1
        last = expected - 1
        if last < head_seq:
            return bad(
                last + 1,
                f"truncated: the log ends at seq {last} but seq {head_seq} was appended (newest records deleted)",
            )
        if last > head_seq:
            return bad(
                head_seq + 1,
                f"records after the recorded head seq {head_seq} were not written by "
                f"this log (seqs {head_seq + 1}..{last})",
            )
        if prev != head_hash:
            return bad(
                last,
                f"head mismatch: record seq {last} hashes to {prev[:16]}…, but the log recorded "
                f"head hash {head_hash[:16]}…",
            )
        return ChainReport(True, last - anchor_seq, None, "", last, prev)

    # -- compaction (sync agent) -------------------------------------------------------------

    def _anchor(self) -> tuple[int, str]:
        """(seq, hash) of the newest compacted record, or (0, genesis) when nothing was compacted."""
        has = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'anchor'").fetchone()
        if not has:
            return 0, GENESIS_HASH
        row = self._conn.execute("SELECT seq, hash FROM anchor WHERE id = 1").fetchone()
        return (0, GENESIS_HASH) if row is None else (row[0], row[1])

    def anchor(self) -> tuple[int, str]:
        """(seq, hash) from which verify() starts: (0, genesis) unless records were compacted."""
        return self._anchor()

    def compact(self, up_to_seq: int) -> int:
        """Delete records seq <= up_to_seq (the platform acknowledged them), keeping their chain anchor.

        The anchor row holds the seq and hash of the newest deleted record, so verify() checks the
        remaining chain from it (docs/event-log.md, "Compaction"). Returns the number deleted.
        """
        if self.readonly:
            raise DatabaseError(f"event log {self.path} was opened read-only; use EventLog.open to compact")
        conn = self._conn
        with transaction(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS anchor (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "seq INTEGER NOT NULL, hash TEXT NOT NULL) STRICT"
            )
            anchor_seq = (conn.execute("SELECT seq FROM anchor WHERE id = 1").fetchone() or (0,))[0]
            head_seq = conn.execute("SELECT head_seq FROM meta WHERE id = 1").fetchone()[0]
            up_to_seq = min(up_to_seq, head_seq)
            if up_to_seq <= anchor_seq:
                return 0
            row = conn.execute("SELECT hash FROM events WHERE seq = ?", (up_to_seq,)).fetchone()
            if row is None:
                raise DatabaseError(
                    f"event log {self.path} has no record seq {up_to_seq} to anchor the compaction "
                    "at; run `onecard log verify` and keep the file for investigation"
                )
            # The software SAM's TSNs live in the purchase intents (terminal/sam_state_log.py): keep the highest
            # one removed, so that no TSN is handed out twice after the records that held it are gone.
            removed_tsn = conn.execute(
                "SELECT MAX(json_extract(detail, '$.tsn')) FROM events WHERE seq <= ? AND kind = 'pos.purchase.intent'",
                (up_to_seq,),
            ).fetchone()[0]
            if removed_tsn is not None:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS carried (id INTEGER PRIMARY KEY CHECK (id = 1), "
                    "last_tsn INTEGER NOT NULL) STRICT"
                )
                conn.execute(
                    "INSERT INTO carried VALUES (1, ?) ON CONFLICT (id) DO UPDATE "
                    "SET last_tsn = MAX(last_tsn, excluded.last_tsn)",
                    (removed_tsn,),
                )
            deleted = conn.execute("DELETE FROM events WHERE seq <= ?", (up_to_seq,)).rowcount
            conn.execute("INSERT OR REPLACE INTO anchor VALUES (1, ?, ?)", (up_to_seq, row[0]))
        return deleted

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
