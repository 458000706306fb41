"""What the sync agent left for this terminal in sync.db: the newest configuration, pending card actions, other
tills' meal usage, passages and subsidy allowances.

Read-only, and absent until the agent first ran: the terminal never waits for the agent (docs/sync-protocol.md).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from common.logs import log_event
from sync_agent.store import open_readonly

log = logging.getLogger("onecard.terminal")


class Inbox:
    def __init__(self, sync_db: Path):
        self.path = Path(sync_db)
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None:
            self._conn = open_readonly(self.path)
        return self._conn

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        conn = self._connection()
        if conn is None:
            return []
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            # Checked at start (sync_agent.store.check_existing); damaged since: keep the current settings, say so.
            log_event(
                log,
                "inbox.unreadable",
                logging.ERROR,
                path=str(self.path),
                error=str(exc),
                msg="cannot read the sync agent's inbox; configuration and card actions wait until it is fixed",
            )
            return []

    def config_version(self) -> int:
        rows = self._query("SELECT coalesce(max(version), 0) FROM inbox_config")
        return rows[0][0] if rows else 0

    def latest_config(self) -> tuple[int, dict] | None:
        rows = self._query("SELECT version, document FROM inbox_config ORDER BY version DESC LIMIT 1")
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def last_passage(self, asn_hex: str, area: int) -> tuple[str, str, str] | None:
        """(direction, wire time, terminal_id) of the card's latest passage in the area the platform relayed."""
        rows = self._query(
            "SELECT direction, time, terminal_id FROM inbox_passages WHERE asn = ? AND area = ?",
            (asn_hex.upper(), area),
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def last_heard(self) -> str | None:
        """When the agent last heard the platform answer its heartbeat (a `time` message), wire time; None: never."""
        rows = self._query("SELECT max(received_at) FROM seen_messages WHERE type = 'time'")
        return rows[0][0] if rows else None

    def pending_actions(self, asn_hex: str) -> list[dict]:
        rows = self._query(
            "SELECT action_id, action, params FROM inbox_card_actions WHERE asn = ? AND status = "
            "'pending' ORDER BY issued_at, action_id",
            (asn_hex.upper(),),
        )
        return [{"action_id": r[0], "action": r[1], "params": json.loads(r[2])} for r in rows]

    def pending_allowances(self, asn_hex: str) -> list:
        """PurseTerminal.pending_allowances: the subsidy allowances the platform last announced for this card, in
        its order, each with `collected` as the platform knew it (terminal/subsidy_flow.py skips those and the
        ones this terminal's own log already loaded)."""
        import datetime as dt

        from terminal.subsidy_protocol import Allowance

        rows = self._query(
            "SELECT allowance_id, asn, amount, expiry, policy, collected, number FROM inbox_subsidy_allowances "
            "WHERE asn = ? ORDER BY position",
            (asn_hex.upper(),),
        )
        return [Allowance(r[0], r[1], r[2], dt.date.fromisoformat(r[3]), r[4], bool(r[5]), r[6]) for r in rows]

    def other_tills(self, terminal_id: str):
        """Canteen.other_tills for this terminal: a card's usage on a service day at the enterprise's other tills,
        as the platform last confirmed it, by meal period ("" = the whole day)."""
        from terminal.meal_rules import Usage

        def usage(asn: str, day) -> dict[str, Usage]:
            rows = self._query(
                "SELECT period, count, amount FROM inbox_meal_usage WHERE day = ? AND asn = ? AND terminal_id != ?",
                (day.isoformat(), asn.upper(), terminal_id),
            )
            out: dict[str, Usage] = {"": Usage()}
            for period, count, amount in rows:
                if period:
                    out[period] = out.get(period, Usage()) + Usage(count, amount)
                out[""] += Usage(count, amount)
            return out

        return usage

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
