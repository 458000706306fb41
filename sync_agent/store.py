"""The agent's own SQLite file: acknowledged upload position, seen message IDs, and the terminal's inbox.

The terminal reads `inbox_config` and `inbox_card_actions` from this file (docs/sync-protocol.md, "Inbox").
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

from common.db import DatabaseError, connect_readwrite, create_new, open_checked_readonly, preflight, transaction
from common.events import GENESIS_HASH
from terminal.event_log import EventLog
from terminal.purse_flow import POS_REFUSE_OFFLINE_SALES_AT  # noqa: F401  (the POS's policy; reported here)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_meta (
  id INTEGER PRIMARY KEY CHECK (id = 1), schema_version INTEGER NOT NULL, terminal_id TEXT NOT NULL,
  acked_seq INTEGER NOT NULL, acked_hash TEXT NOT NULL, acked_at TEXT) STRICT;
CREATE TABLE IF NOT EXISTS seen_messages (
  id TEXT PRIMARY KEY, type TEXT NOT NULL, issued_at TEXT NOT NULL, received_at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS inbox_config (
  version INTEGER PRIMARY KEY, enterprise_id TEXT NOT NULL, document TEXT NOT NULL,
  message_id TEXT NOT NULL, received_at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS inbox_card_actions (
  action_id TEXT PRIMARY KEY, asn TEXT NOT NULL, action TEXT NOT NULL, params TEXT NOT NULL,
  message_id TEXT NOT NULL, issued_at TEXT NOT NULL, received_at TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending') STRICT;
CREATE INDEX IF NOT EXISTS inbox_card_actions_asn ON inbox_card_actions (asn, status);
CREATE TABLE IF NOT EXISTS inbox_meal_usage (
  day TEXT NOT NULL, asn TEXT NOT NULL, terminal_id TEXT NOT NULL, period TEXT NOT NULL,
  count INTEGER NOT NULL, amount INTEGER NOT NULL, issued_at TEXT NOT NULL,
  PRIMARY KEY (day, asn, terminal_id, period)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS inbox_passages (
  asn TEXT NOT NULL, area INTEGER NOT NULL, direction TEXT NOT NULL, time TEXT NOT NULL, terminal_id TEXT NOT NULL,
  seq INTEGER NOT NULL, message_id TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (asn, area)) STRICT;
CREATE TABLE IF NOT EXISTS inbox_subsidy_list (
  enterprise_id TEXT PRIMARY KEY, issued_at TEXT NOT NULL, message_id TEXT NOT NULL, received_at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS inbox_subsidy_allowances (
  allowance_id TEXT PRIMARY KEY, asn TEXT NOT NULL, amount INTEGER NOT NULL, expiry TEXT NOT NULL,
  policy TEXT NOT NULL, collected INTEGER NOT NULL, position INTEGER NOT NULL, number INTEGER NOT NULL DEFAULT 0)
  STRICT;
CREATE INDEX IF NOT EXISTS inbox_subsidy_allowances_asn ON inbox_subsidy_allowances (asn, position);
"""
MEAL_USAGE_KEEP_DAYS = 3  # service days of meal usage kept in the inbox: today and a little slack


# What to do about an empty or truncated sync.db (it holds the acknowledged position and the terminal's inbox).
LOST_FIX = (
    "keep it for investigation and restore it from backup, or delete it if this is a new install (the agent "
    "then uploads the log again from its start, which the platform recognises as duplicates)"
)


def _create_schema(conn: sqlite3.Connection, terminal_id: str) -> None:
    conn.executescript(_SCHEMA)
    conn.execute("INSERT INTO sync_meta VALUES (1, ?, ?, 0, ?, NULL)", (SCHEMA_VERSION, terminal_id, GENESIS_HASH))


def check_existing(path: Path, terminal_id: str) -> None:
    """Refuse (DatabaseError, one line) a sync.db that is empty, truncated, foreign, corrupt, of another terminal or
    of another schema version; read-only, nothing written. Absent is fine (the agent has not run yet). The
    terminal runs this at start, so it never starts on a file its inbox reads would later fail on."""
    path = Path(path)
    if preflight(path, SyncStore.SETTING, LOST_FIX):
        return
    ro = open_checked_readonly(path, setting=SyncStore.SETTING, required_tables={"sync_meta"}, what="onecard sync")
    try:
        row = ro.execute("SELECT schema_version, terminal_id FROM sync_meta WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"sync database {path} has a damaged sync_meta table ({exc}); {LOST_FIX}") from None
    finally:
        ro.close()
    if row is None:
        raise DatabaseError(
            f"sync database {path} has no sync_meta row, so it was not written by the agent; {LOST_FIX}"
        )
    if row[1] != terminal_id:
        raise DatabaseError(
            f"sync database {path} belongs to terminal {row[1]!r}, not {terminal_id!r}; "
            f"point {SyncStore.SETTING} at this terminal's own file"
        )
    if row[0] != SCHEMA_VERSION:
        raise DatabaseError(
            f"sync database {path} has schema version {row[0]}, this agent reads "
            f"{SCHEMA_VERSION}; run the matching agent or move the file away"
        )


class SyncStore:
    """sync.db; every write is one transaction, durable (WAL, synchronous=FULL) when the call returns."""

    SETTING = "[sync].database"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, terminal_id: str) -> SyncStore:
        """Open (creating if absent) the agent's file; refuse an empty, truncated, foreign or corrupt one untouched."""
        path = Path(path)
        is_new = preflight(path, cls.SETTING, LOST_FIX)
        if is_new:
            is_new = create_new(path, lambda conn: _create_schema(conn, terminal_id))
        if not is_new:
            check_existing(path, terminal_id)
        conn = connect_readwrite(path)
        try:
            conn.executescript(_SCHEMA)  # tables a newer agent added; a no-op on a complete file
            columns = {r[1] for r in conn.execute("PRAGMA table_info(inbox_subsidy_allowances)")}
            if "number" not in columns:  # an agent before the allowance numbers (issue 13): the next list fills it
                conn.execute("ALTER TABLE inbox_subsidy_allowances ADD COLUMN number INTEGER NOT NULL DEFAULT 0")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise DatabaseError(
                f"sync database {path} is not usable ({exc}); point {cls.SETTING} at a sync "
                "database or move the file away"
            ) from None
        return cls(conn, path)

    def acked(self) -> tuple[int, str]:
        return self._conn.execute("SELECT acked_seq, acked_hash FROM sync_meta WHERE id = 1").fetchone()

    def set_acked(self, seq: int, hash_: str, at: str) -> None:
        # Guarded in SQL as well: the acknowledged position never moves backwards.
        self._conn.execute(
            "UPDATE sync_meta SET acked_seq = ?, acked_hash = ?, acked_at = ? WHERE id = 1 AND acked_seq < ?",
            (seq, hash_, at, seq),
        )

    def seen(self, msg_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM seen_messages WHERE id = ?", (msg_id,)).fetchone() is not None

    def mark_seen(self, msg_id: str, type_: str, issued_at: str, received_at: str) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO seen_messages VALUES (?, ?, ?, ?)", (msg_id, type_, issued_at, received_at)
        )

    def prune_seen(self, issued_before: str) -> int:
        """Forget IDs of messages issued before a time; version checks still refuse their replays."""
        return self._conn.execute("DELETE FROM seen_messages WHERE issued_at < ?", (issued_before,)).rowcount

    def last_time_message(self) -> str | None:
        row = self._conn.execute("SELECT max(issued_at) FROM seen_messages WHERE type = 'time'").fetchone()
        return row[0]

    def config_version(self) -> int:
        return self._conn.execute("SELECT coalesce(max(version), 0) FROM inbox_config").fetchone()[0]

    def store_config(
        self, version: int, enterprise_id: str, document: dict, msg_id: str, issued_at: str, received_at: str
    ) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO inbox_config VALUES (?, ?, ?, ?, ?)",
                (version, enterprise_id, json.dumps(document, sort_keys=True), msg_id, received_at),
            )
            self.mark_seen(msg_id, "config", issued_at, received_at)

    def store_meal_usage(self, body: dict, msg_id: str, issued_at: str, received_at: str) -> int:
        """Replace the usage of each (card, day) the message lists, unless a newer message already did; the
        message carries a card's complete usage of that day at every till. Returns the cards replaced."""
        import datetime as dt

        day = body["day"]
        by_card: dict[str, list[dict]] = {}
        for row in body["usage"]:
            by_card.setdefault(row["asn"], []).append(row)
        replaced = 0
        with self.transaction():
            for asn, rows in by_card.items():
                newest = self._conn.execute(
                    "SELECT max(issued_at) FROM inbox_meal_usage WHERE day = ? AND asn = ?", (day, asn)
                ).fetchone()[0]
                if newest is not None and newest > issued_at:
                    continue  # an older message arriving late: the newer figures stand
                self._conn.execute("DELETE FROM inbox_meal_usage WHERE day = ? AND asn = ?", (day, asn))
                self._conn.executemany(
                    "INSERT INTO inbox_meal_usage VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(day, asn, r["terminal_id"], r["period"], r["count"], r["amount"], issued_at) for r in rows],
                )
                replaced += 1
            oldest = (dt.date.fromisoformat(day) - dt.timedelta(days=MEAL_USAGE_KEEP_DAYS)).isoformat()
            self._conn.execute("DELETE FROM inbox_meal_usage WHERE day < ?", (oldest,))
            self.mark_seen(msg_id, "meal_usage", issued_at, received_at)
        return replaced

    def store_subsidy_allowances(self, body: dict, msg_id: str, issued_at: str, received_at: str) -> bool:
        """Replace the enterprise's allowance list with the message's (the platform sends the whole list each time),
        unless a list issued later is already held (an older message arriving late changes nothing). Returns
        whether it replaced the list."""
        with self.transaction():
            held = self._conn.execute(
                "SELECT issued_at FROM inbox_subsidy_list WHERE enterprise_id = ?", (body["enterprise_id"],)
            ).fetchone()
            newer = held is None or held[0] < issued_at
            if newer:
                self._conn.execute("DELETE FROM inbox_subsidy_allowances")
                self._conn.executemany(
                    "INSERT INTO inbox_subsidy_allowances VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            a["allowance_id"],
                            a["asn"],
                            a["amount"],
                            a["expiry"],
                            a["policy"],
                            int(a["collected"]),
                            i,
                            a["number"],
                        )
                        for i, a in enumerate(body["allowances"])
                    ],
                )
                self._conn.execute(
                    "INSERT INTO inbox_subsidy_list VALUES (?, ?, ?, ?) ON CONFLICT (enterprise_id) DO UPDATE SET "
                    "issued_at = excluded.issued_at, message_id = excluded.message_id, "
                    "received_at = excluded.received_at",
                    (body["enterprise_id"], issued_at, msg_id, received_at),
                )
            self.mark_seen(msg_id, "subsidy_allowances", issued_at, received_at)
        return newer

    def store_card_action(self, body: dict, msg_id: str, issued_at: str, received_at: str) -> bool:
        """Store a pending card action once; False when its action_id is already in the inbox."""
        with self.transaction():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO inbox_card_actions (action_id, asn, action, params, message_id, issued_at, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    body["action_id"],
                    body["asn"],
                    body["action"],
                    json.dumps(body["params"], sort_keys=True),
                    msg_id,
                    issued_at,
                    received_at,
                ),
            )
            self.mark_seen(msg_id, "card_action", issued_at, received_at)
        return cur.rowcount == 1

    def cancel_card_action(self, body: dict, msg_id: str, issued_at: str, received_at: str) -> str:
        """Mark a card action cancelled so the terminal never runs it; a cancellation that arrives before its
        action leaves a cancelled row, so the action is never stored as pending. Returns the status it had."""
        with self.transaction():
            row = self._conn.execute(
                "SELECT status FROM inbox_card_actions WHERE action_id = ?", (body["action_id"],)
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO inbox_card_actions (action_id, asn, action, params, message_id, issued_at, "
                    "received_at, status) VALUES (?, ?, ?, '{}', ?, ?, ?, 'cancelled')",
                    (body["action_id"], body["asn"], body["action"], msg_id, issued_at, received_at),
                )
            elif row[0] == "pending":
                self._conn.execute(
                    "UPDATE inbox_card_actions SET status = 'cancelled' WHERE action_id = ?", (body["action_id"],)
                )
            self.mark_seen(msg_id, "card_action.cancel", issued_at, received_at)
        return row[0] if row else "absent"

    def store_passage(self, body: dict, msg_id: str, issued_at: str, received_at: str) -> bool:
        """Keep each card's latest passage per area (by its time); False when this one is not newer."""
        with self.transaction():
            cur = self._conn.execute(
                "INSERT INTO inbox_passages VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (asn, area) DO UPDATE SET "
                "direction = excluded.direction, time = excluded.time, terminal_id = excluded.terminal_id, "
                "seq = excluded.seq, message_id = excluded.message_id, received_at = excluded.received_at "
                "WHERE excluded.time > inbox_passages.time",
                (
                    body["asn"],
                    body["area"],
                    body["direction"],
                    body["time"],
                    body["terminal_id"],
                    body["seq"],
                    msg_id,
                    received_at,
                ),
            )
            self.mark_seen(msg_id, "passage", issued_at, received_at)
        return cur.rowcount == 1

    def card_actions(self) -> list[dict]:
        rows = self._conn.execute(
            "SELECT action_id, asn, action, params, status FROM inbox_card_actions ORDER BY issued_at, action_id"
        ).fetchall()
        return [
            {"action_id": r[0], "asn": r[1], "action": r[2], "params": json.loads(r[3]), "status": r[4]} for r in rows
        ]

    def transaction(self):
        return transaction(self._conn)

    def close(self) -> None:
        self._conn.close()


def open_readonly(sync_db: Path) -> sqlite3.Connection | None:
    """sync.db for readers other than the agent (the terminal, the self-test): read-only, None until the agent first
    ran. The schema is this module's; nothing else opens the file."""
    sync_db = Path(sync_db)
    if not sync_db.is_file() or sync_db.stat().st_size == 0:
        return None
    return sqlite3.connect(sync_db.resolve().as_uri() + "?mode=ro", uri=True)


def read_acked_seq(sync_db: Path) -> int:
    """The acknowledged seq from sync.db, read-only (0 if the agent never ran)."""
    conn = open_readonly(sync_db)
    if conn is None:
        return 0
    try:
        return conn.execute("SELECT acked_seq FROM sync_meta WHERE id = 1").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def last_platform_time(sync_db: Path) -> tuple[datetime, datetime] | None:
    """(platform issued_at, terminal received_at) of the newest platform time message the agent stored."""
    from common.sync_protocol import parse_time

    conn = open_readonly(sync_db)
    if conn is None:
        return None
    try:
        row = conn.execute(
            "SELECT issued_at, received_at FROM seen_messages WHERE type = 'time' ORDER BY issued_at DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    if row is None:
        return None
    return parse_time(row[0], "issued_at"), parse_time(row[1], "received_at")


def outbox_pressure(event_log: EventLog, sync_db: Path, capacity: int) -> float:
    """Unacknowledged records as a fraction of `capacity` ([sync].outbox_capacity); may exceed 1.0.

    The POS calls this before an offline sale and refuses it at POS_REFUSE_OFFLINE_SALES_AT or above.
    """
    if capacity <= 0:
        raise ValueError("outbox capacity must be positive; set [sync].outbox_capacity")
    return max(0, event_log.last_seq() - read_acked_seq(sync_db)) / capacity
