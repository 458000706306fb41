"""Anti-passback across terminals: each door.grant of an area is relayed to the enterprise's terminals as a signed
`passage` message (docs/sync-protocol.md, "passage"). A part of `central.store.Platform`.
"""

from __future__ import annotations

import datetime as dt
import json

from common import sync_protocol as p

RESEND_HOURS = 24  # at a terminal's sync request: each card's latest passage per area within this many hours


def passage_body(
    enterprise_id: str, terminal_id: str, seq: int, time: str, asn: str | None, detail: str
) -> dict | None:
    """The passage message body for a logged door.grant, or None when the grant is not in an area."""
    try:
        d = json.loads(detail)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(d, dict) or asn is None:
        return None
    area, direction = d.get("area"), d.get("direction")
    if type(area) is not int or not 1 <= area <= 255 or direction not in p.PASSAGE_DIRECTIONS:
        return None
    body = {
        "enterprise_id": enterprise_id,
        "area": area,
        "asn": asn,
        "direction": direction,
        "time": time,
        "terminal_id": terminal_id,
        "seq": seq,
    }
    try:
        p.BODY_CHECKS["passage"](body)
    except p.ProtocolError:
        return None
    return body


class Passages:
    def _relay_passage(self, terminal_id: str, e: p.WireEvent) -> None:
        """Called in the ingest transaction for each new door.grant: queued with the record, or not at all."""
        if '"area":' not in e.detail:
            # Not in an area, without parsing it: an ingested detail is canonical JSON (checked by
            # sync_protocol.decode_events), where a key "area" can only be written that way.
            return
        eid = self._terminal_facts(terminal_id)[0]  # read once per batch
        body = passage_body(eid, terminal_id, e.seq, e.time, e.asn, e.detail) if eid else None
        if body is not None:
            self._queue(p.enterprise_topic(eid), self.seal("passage", f"e:{eid}", body))

    def recent_passages(self, enterprise_id: str) -> list[dict]:
        """Each card's latest passage per area in the last RESEND_HOURS (for a terminal back from an outage)."""
        since = p.format_time(self.clock() - dt.timedelta(hours=RESEND_HOURS))
        rows = self.conn.execute(
            "SELECT e.terminal_id, e.seq, e.time, e.asn, e.detail FROM events e JOIN terminals t USING (terminal_id) "
            "WHERE t.enterprise_id = ? AND e.kind = 'door.grant' AND e.time >= ? ORDER BY e.time",
            (enterprise_id, since),
        ).fetchall()
        latest: dict[tuple[str, int], dict] = {}  # (the detail is read here: the same SQL on SQLite and PostgreSQL)
        for tid, seq, time, asn, detail in rows:
            body = passage_body(enterprise_id, tid, seq, time, asn, detail)
            if body is not None:
                latest[(body["asn"], body["area"])] = body
        return list(latest.values())
