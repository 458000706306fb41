"""What the platform sends: answers to a terminal's requests, time, and the outbound queue the service publishes.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

from common import sync_protocol as p


class Outbound:
    def answer_request(self, req: p.Request) -> list[tuple[str, bytes]]:
        """(topic, payload) messages for a terminal that asked to sync or for a snapshot."""
        eid = self.terminal_enterprise(req.terminal_id)
        if eid is None:
            return []
        topic, target = p.terminal_topic(req.terminal_id, p.DOWN_MSG), f"t:{req.terminal_id}"
        out = []
        current = self.blacklist_version(eid)
        same_epoch = req.blacklist_epoch == self.epoch()
        if req.want == "blacklist.snapshot" or req.blacklist_version != current or not same_epoch:
            # Another epoch (or none): only a snapshot of this one re-bases the terminal.
            delta = (
                None
                if req.want == "blacklist.snapshot" or not same_epoch
                else self.delta_body(eid, req.blacklist_version)
            )
            if delta is not None:
                out.append((topic, self.seal("blacklist.delta", target, delta)))
            elif current > 0:
                out.append((topic, self.seal("blacklist.snapshot", target, self.snapshot_body(eid))))
        if req.want == "sync":
            # Passages the terminal may have missed while away (anti-passback across terminals).
            for passage in self.recent_passages(eid):
                out.append((topic, self.seal("passage", target, passage)))
            body = self._config_body(eid)
            if body["version"] > req.config_version:
                out.append((topic, self.seal("config", target, body)))
            for (action_id,) in self.conn.execute(
                "SELECT action_id FROM card_actions WHERE enterprise_id = ? AND status = 'pending' ORDER BY created_at",
                (eid,),
            ).fetchall():
                out.append((topic, self.seal("card_action", target, self._action_body(action_id))))
            # Cancellations again, for a terminal that was away when one was published.
            for (action_id,) in self.conn.execute(
                "SELECT action_id FROM card_actions WHERE enterprise_id = ? AND "
                "status = 'cancelled' ORDER BY created_at",
                (eid,),
            ).fetchall():
                out.append((topic, self.seal("card_action.cancel", target, self._cancel_body(action_id))))
            # The current subsidy allowances, for a terminal that was away when a list was published (the whole list:
            # it replaces the one the terminal holds, so allowances collected meanwhile elsewhere are marked).
            if self.conn.execute("SELECT 1 FROM subsidy_allowances WHERE enterprise_id = ? LIMIT 1", (eid,)).fetchone():
                out.append((topic, self.seal("subsidy_allowances", target, self.subsidy_allowances_body(eid))))
            out.append((topic, self.time_message(req.terminal_id)))
        return out

    def time_message(self, terminal_id: str) -> bytes:
        return self.seal("time", f"t:{terminal_id}", {"platform_time": self._now()})

    def unpublished(self, limit: int = 100) -> list[tuple[int, str, bytes]]:
        return self.conn.execute(
            "SELECT id, topic, payload FROM outbound WHERE published_at IS NULL ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def publish_pending(self, send, limit: int = 100) -> int:
        """Send up to `limit` queued messages in queue order with `send(topic, payload)` (which returns once the
        broker has them) and mark them published, in one transaction; return how many were sent.

        Safe with several publishers at once: on PostgreSQL each claims its rows with FOR UPDATE SKIP LOCKED (in a
        READ COMMITTED transaction, so a claim is never aborted and retried after its messages went out), and the
        others pass them by; on SQLite the transaction is the one writer. A message is marked only after `send`
        returned: if `send` raises, or the publisher dies before the commit, its rows are released unpublished and
        sent again later (at least once; the terminals drop a message id they already applied).
        """
        postgres = self.backend == "postgresql"
        with self._txn(isolation="READ COMMITTED") if postgres else self._txn():
            rows = self.conn.execute(
                "SELECT id, topic, payload FROM outbound WHERE published_at IS NULL ORDER BY id LIMIT ?"
                + (" FOR UPDATE SKIP LOCKED" if postgres else ""),
                (limit,),
            ).fetchall()
            for _id, topic, payload in rows:
                send(topic, bytes(payload))
            if rows:
                self.conn.executemany(
                    "UPDATE outbound SET published_at = ? WHERE id = ?", [(self._now(), r[0]) for r in rows]
                )
        if rows:
            self.record_published()
        return len(rows)

    def mark_published(self, ids: list[int]) -> None:
        with self._txn():
            self.conn.executemany("UPDATE outbound SET published_at = ? WHERE id = ?", [(self._now(), i) for i in ids])
        self.record_published()  # what terminals may now hold: a later restore of this database is noticed
