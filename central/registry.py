"""Enterprises, terminals, holders and cards as the platform knows them, and what terminals say of themselves.

A part of `central.store.Platform`: it works on the platform database through `self.conn` and `self._txn()`.
"""

from __future__ import annotations

import json

from central.db import ACTIVE, DEFAULT_MAX_BALANCE_CENTS, LOST, TERMINAL_KINDS, PlatformError, _asn, _yuan
from central.sql import integrity_errors
from common import sync_protocol as p
from common.door_events import DOOR_EVENT_KINDS, open_alarm_from_log
from common.events import GENESIS_HASH

# The issuing station's event kinds that carry a card's key version (terminal/rekey.py, terminal/issuing.py).
KEYS_CHANGED, CARD_ISSUED = "issue.keys", "issue.card"


class Registry:
    def add_enterprise(self, enterprise_id: str, name: str) -> None:
        if not (enterprise_id.isdigit() and len(enterprise_id) == 8):
            raise PlatformError(f"enterprise ID {enterprise_id!r} is not 8 digits; use the 8-digit enterprise number")
        with self._txn():
            self.conn.execute(
                "INSERT INTO enterprises (enterprise_id, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (enterprise_id, name),
            )

    def add_terminal(self, terminal_id: str, enterprise_id: str, name: str = "", *, kind: str) -> None:
        """Register a terminal and what it is: only pos and top-up terminals' money records are accounted.

        Registering it again is a no-op; a terminal registered before kinds were recorded gets its kind now."""
        if not (terminal_id.isdigit() and len(terminal_id) == 12):
            raise PlatformError(f"terminal ID {terminal_id!r} is not 12 digits; use [terminal].id of its firmware.toml")
        if kind not in TERMINAL_KINDS:
            raise PlatformError(
                f"terminal kind {kind!r} is not one of {', '.join(TERMINAL_KINDS)}; use "
                "[terminal].kind of its firmware.toml (issuing for an issuing station)"
            )
        with self._txn():
            self._enterprise(enterprise_id)
            row = self.conn.execute(
                "SELECT enterprise_id, kind FROM terminals WHERE terminal_id = ?", (terminal_id,)
            ).fetchone()
            if row and row[0] != enterprise_id:
                raise PlatformError(
                    f"terminal {terminal_id} is registered to enterprise {row[0]}; a terminal serves one enterprise"
                )
            if row and row[1] is not None and row[1] != kind:
                raise PlatformError(
                    f"terminal {terminal_id} is registered as a {row[1]} terminal; a terminal "
                    "keeps its kind: register the new machine under a new terminal ID"
                )
            self.conn.execute(
                "INSERT INTO terminals (terminal_id, enterprise_id, name, head_hash, kind) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (terminal_id, enterprise_id, name or terminal_id, GENESIS_HASH, kind),
            )
            self.conn.execute(
                "UPDATE terminals SET kind = ? WHERE terminal_id = ? AND kind IS NULL", (kind, terminal_id)
            )

    def terminal_kind(self, terminal_id: str) -> str | None:
        row = self.conn.execute("SELECT kind FROM terminals WHERE terminal_id = ?", (terminal_id,)).fetchone()
        return row[0] if row else None

    def _enterprise(self, enterprise_id: str) -> tuple:
        row = self.conn.execute(
            "SELECT enterprise_id, blacklist_version, config_version FROM enterprises WHERE enterprise_id = ?",
            (enterprise_id,),
        ).fetchone()
        if row is None:
            raise PlatformError(
                f"enterprise {enterprise_id} is not registered; add it with `onecard platform add-enterprise`"
            )
        return row

    def terminal_enterprises(self) -> dict[str, str]:
        """Every registered terminal and its enterprise (the broker's ACL is generated from this)."""
        return dict(self.conn.execute("SELECT terminal_id, enterprise_id FROM terminals ORDER BY terminal_id"))

    def terminal_enterprise(self, terminal_id: str) -> str | None:
        row = self.conn.execute("SELECT enterprise_id FROM terminals WHERE terminal_id = ?", (terminal_id,)).fetchone()
        return row[0] if row else None

    def add_holder(self, enterprise_id: str, employee_no: str, name: str, phone: str = "") -> int:
        with self._txn():
            self._enterprise(enterprise_id)
            try:
                (holder_id,) = self.conn.execute(
                    "INSERT INTO holders (enterprise_id, employee_no, name, phone) VALUES (?, ?, ?, ?) "
                    "RETURNING holder_id",
                    (enterprise_id, employee_no, name, phone),
                ).fetchone()
            except integrity_errors():
                raise PlatformError(
                    f"employee {employee_no} is already registered in enterprise {enterprise_id}"
                ) from None
            return holder_id

    def set_shift(self, enterprise_id: str, employee_no: str, shift: str) -> None:
        """The attendance shift an employee's bill is judged against: a shift of the enterprise's published
        configuration document (shifts.NAME)."""
        from common.config import ConfigError, document_calendar

        with self._txn():
            holder_id = self._holder(enterprise_id, employee_no)[0]
            document = self.conn.execute(
                "SELECT config_document FROM enterprises WHERE enterprise_id = ?", (enterprise_id,)
            ).fetchone()[0]
            try:
                shifts = document_calendar(json.loads(document) if document else None)[1]
            except ConfigError as exc:
                raise PlatformError(f"enterprise {enterprise_id}'s configuration document: {exc}") from None
            if shift not in shifts:
                known = ", ".join(sorted(shifts)) or "none"
                raise PlatformError(
                    f"shift {shift!r} is not in enterprise {enterprise_id}'s published configuration (shifts: "
                    f"{known}); publish it first with `onecard platform publish-config`"
                )
            self.conn.execute("UPDATE holders SET shift = ? WHERE holder_id = ?", (shift, holder_id))

    def _holder(self, enterprise_id: str, employee_no: str) -> tuple:
        row = self.conn.execute(
            "SELECT holder_id, name, phone FROM holders WHERE enterprise_id = ? AND employee_no = ?",
            (enterprise_id, employee_no),
        ).fetchone()
        if row is None:
            raise PlatformError(
                f"employee {employee_no} is not registered in enterprise {enterprise_id}; "
                "add them with `onecard platform add-holder`"
            )
        return row

    def holder_contact(self, enterprise_id: str, employee_no: str) -> dict:
        """{"name", "phone"} of a registered employee (PlatformError when not registered)."""
        _id, name, phone = self._holder(enterprise_id, employee_no)
        return {"name": name, "phone": phone}

    def card_of_phone(self, phone: str) -> str | None:
        """ASN of an active or lost card whose holder has this phone number, if any."""
        row = self.conn.execute(
            "SELECT c.asn FROM cards c JOIN holders h USING (holder_id) WHERE h.phone = ? "
            "AND c.status IN ('ACTIVE', 'LOST') LIMIT 1",
            (phone,),
        ).fetchone()
        return row[0] if row else None

    def is_registered(self, asn: str) -> bool:
        return self.conn.execute("SELECT 1 FROM cards WHERE asn = ?", (asn,)).fetchone() is not None

    def key_versions(self, enterprise_id: str | None = None) -> dict[str, dict[int | str, int]]:
        """Cards per key version, from the issuing terminals' uploaded key events (the `events` table).

        Only cards the platform still counts (ACTIVE, LOST, or VOIDED and waiting for replacement or cancellation,
        which needs its UPDATE key) matter for retiring a version. Without an uploaded key event the version the
        issuing station reported when it registered the card counts; a card with neither is reported under "unknown"
        (issued before key versions were recorded: re-key it or check it by hand).
        """
        rows = self.conn.execute(
            "SELECT c.asn, c.enterprise_id, (SELECT e.detail FROM events e WHERE e.asn = c.asn AND e.kind IN (?, ?) "
            "ORDER BY e.time DESC, e.seq DESC LIMIT 1), (SELECT k.key_version FROM card_keys k WHERE k.asn = c.asn) "
            "FROM cards c WHERE c.status IN ('ACTIVE', 'LOST', 'VOIDED') "
            "AND (CAST(?3 AS TEXT) IS NULL OR c.enterprise_id = ?3) ORDER BY c.asn",
            (KEYS_CHANGED, CARD_ISSUED, enterprise_id),
        ).fetchall()
        out: dict[str, dict[int | str, int]] = {}
        for _card, eid, detail, registered in rows:
            logged = None if detail is None else json.loads(detail).get("key_version")
            version: int | str = logged if logged is not None else registered if registered is not None else "unknown"
            per = out.setdefault(eid, {})
            per[version] = per.get(version, 0) + 1
        return out

    def issue_card(
        self,
        enterprise_id: str,
        employee_no: str,
        asn: str,
        rights: dict | None = None,
        balance_cents: int = 0,
        max_balance_cents: int = DEFAULT_MAX_BALANCE_CENTS,
        key_version: int | None = None,
        card_serial: str | None = None,
    ) -> None:
        """Register a card; `key_version` (the issuing station reports it) counts it for `platform key-versions`
        from the start, before the station's log is uploaded. `card_serial` (16 hex digits): the version 2 card
        this sub-application is on, kept for issuing over the air (`card_serial_for`)."""
        asn = _asn(asn)
        if not 0 < max_balance_cents <= 2**32 - 1:
            raise PlatformError(
                f"maximum balance {_yuan(max_balance_cents)} is out of range; write the card's "
                "maximum balance in yuan (EF_PURSE), e.g. 2000.00"
            )
        if balance_cents > max_balance_cents:
            raise PlatformError(
                f"opening balance {_yuan(balance_cents)} is over the card's maximum balance {_yuan(max_balance_cents)}"
            )
        with self._txn():
            holder_id = self._holder(enterprise_id, employee_no)[0]
            if self.conn.execute("SELECT 1 FROM cards WHERE asn = ?", (asn,)).fetchone():
                raise PlatformError(f"card {asn} is already registered; an ASN is issued once")
            # One phone number holds one one-card (ONECARD.md) per enterprise: checked in the transaction that
            # registers the card, so two issuing stations cannot both pass it. Several enterprises share the phone's
            # one card as version 2 sub-applications (docs/card-application.md section 9).
            other = self.conn.execute(
                "SELECT c.asn, h.phone FROM cards c JOIN holders h USING (holder_id) WHERE h.phone != '' AND "
                "h.phone = (SELECT phone FROM holders WHERE holder_id = ?) AND c.status IN (?, ?) "
                "AND c.enterprise_id = ? LIMIT 1",
                (holder_id, ACTIVE, LOST, enterprise_id),
            ).fetchone()
            if other is not None:
                raise PlatformError(
                    f"phone number {other[1]} already holds one-card {other[0]}; one phone number "
                    "holds one one-card: cancel or replace that card instead"
                )
            self.conn.execute(
                "INSERT INTO cards (asn, enterprise_id, holder_id, status, balance_cents, rights, "
                "updated_at, max_balance_cents) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    asn,
                    enterprise_id,
                    holder_id,
                    ACTIVE,
                    balance_cents,
                    json.dumps(rights or {}, sort_keys=True),
                    self._now(),
                    max_balance_cents,
                ),
            )
            if key_version is not None:
                self.record_key_version(asn, key_version)
            if card_serial is not None:
                serial = _asn(card_serial)  # 16 hex digits, as an ASN
                self.conn.execute(
                    "INSERT INTO card_serials (asn, serial, recorded_at) VALUES (?, ?, ?)", (asn, serial, self._now())
                )
            self._history(asn, "issued", f"issued to employee {employee_no}")

    def card_serial_for(self, enterprise_id: str, employee_no: str) -> str | None:
        """The card serial of the SIM in this holder's phone, as the registration of one of its sub-applications
        recorded it (any enterprise's); None when no registered sub-application on that phone gave one."""
        phone = self._holder(enterprise_id, employee_no)[2]
        if not phone:
            return None
        row = self.conn.execute(
            "SELECT s.serial FROM card_serials s JOIN cards c USING (asn) JOIN holders h USING (holder_id) "
            "WHERE h.phone = ? AND c.status != 'CANCELLED' ORDER BY s.recorded_at, s.asn LIMIT 1",
            (phone,),
        ).fetchone()
        return None if row is None else str(row[0])

    def record_key_version(self, asn: str, key_version: int) -> None:
        if not 0 <= key_version <= 255:
            raise PlatformError(f"key version {key_version} is not 0..255")
        self.conn.execute(
            "INSERT INTO card_keys VALUES (?, ?, ?) "
            "ON CONFLICT (asn) DO UPDATE SET key_version = excluded.key_version, at = excluded.at",
            (_asn(asn), key_version, self._now()),
        )

    def _history(self, asn: str, action: str, text: str) -> None:
        self.conn.execute(
            "INSERT INTO card_history (at, asn, action, text) VALUES (?, ?, ?, ?)", (self._now(), asn, action, text)
        )

    def card(self, asn: str) -> dict:
        asn = _asn(asn)
        row = self.conn.execute(
            "SELECT c.asn, c.enterprise_id, h.employee_no, h.name, c.status, c.balance_cents, "
            "c.rights, c.replaced_by, c.max_balance_cents FROM cards c JOIN holders h "
            "USING (holder_id) WHERE c.asn = ?",
            (asn,),
        ).fetchone()
        if row is None:
            raise PlatformError(f"card {asn} is not registered; check the ASN (`onecard platform cards` lists them)")
        unchecked, held = self.conn.execute(
            "SELECT (SELECT count(*) FROM purse_transactions WHERE asn = ?1 AND tac_status = 'unchecked'), "
            "(SELECT count(*) FROM held_money WHERE asn = ?1 AND status IN ('held', 'waiting'))",
            (asn,),
        ).fetchone()
        return {
            "asn": row[0],
            "enterprise_id": row[1],
            "employee_no": row[2],
            "name": row[3],
            "status": row[4],
            "balance_cents": row[5],
            "rights": json.loads(row[6]),
            "replaced_by": row[7],
            "max_balance_cents": row[8] if row[8] is not None else DEFAULT_MAX_BALANCE_CENTS,
            # 'unverified': N transactions moved this balance without a TAC check (lab mode).
            "balance_status": f"unverified ({unchecked} transaction(s) accounted without a TAC check)"
            if unchecked
            else "verified",
            "held_money_records": held,
            # The subsidy purse as the platform confirmed it (central/subsidy.py), accounted apart from the cash
            # balance: what a replacement carries when the old card is lost (docs/card-application.md 8.5).
            **dict(zip(("subsidy_cents", "subsidy_expiry"), self.subsidy_ledger(asn))),
        }

    def cards(self, enterprise_id: str | None = None) -> list[dict]:
        asns = [
            r[0]
            for r in self.conn.execute(
                "SELECT asn FROM cards WHERE CAST(?1 AS TEXT) IS NULL OR enterprise_id = ?1 ORDER BY asn",
                (enterprise_id,),
            )
        ]
        return [self.card(a) for a in asns]

    def record_heartbeat(self, hb: p.Heartbeat) -> None:
        """Store the heartbeat; alarm when the terminal's blacklist is not the platform's (same epoch and version,
        other entries), or is ahead of it (the platform database was restored or rolled back)."""
        eid = self.terminal_enterprise(hb.terminal_id)
        if eid is None:
            return
        epoch = self.epoch()
        version, digest = self.blacklist_digest(eid)
        problem = None
        held = hb.blacklist_epoch
        if (held is None and hb.blacklist_version > version) or (
            held is not None
            and (held.generation > epoch.generation or (held == epoch and hb.blacklist_version > version))
        ):
            problem = (
                "platform_behind",
                f"terminal holds blacklist version {hb.blacklist_version} of epoch "
                f"{held.generation if held else 'none'}, the platform is at version {version} of epoch "
                f"{epoch.generation}: this database was restored or rolled back; run "
                "`onecard platform restore-epoch`",
            )
        elif held == epoch and hb.blacklist_version == version and hb.blacklist_digest != digest:
            problem = (
                "blacklist_differs",
                f"terminal's blacklist version {version} has digest "
                f"{hb.blacklist_digest[:16]}…, the platform's is {digest[:16]}…: its list differs",
            )
        with self._txn():
            record = {**hb.__dict__, "blacklist_epoch": held.to_json() if held else None}
            self.conn.execute(
                "UPDATE terminals SET heartbeat = ?, heartbeat_at = ? WHERE terminal_id = ?",
                (json.dumps(record, sort_keys=True), self._now(), hb.terminal_id),
            )
            if problem:
                last = self.conn.execute(
                    "SELECT text FROM terminal_alarms WHERE terminal_id = ? AND kind = ? ORDER BY id DESC LIMIT 1",
                    (hb.terminal_id, problem[0]),
                ).fetchone()
                if last is None or last[0] != problem[1]:  # one alarm per state, not one per heartbeat
                    self._alarm(hb.terminal_id, problem[0], None, problem[1])

    def record_status(self, terminal_id: str, state: str) -> None:
        with self._txn():
            self.conn.execute(
                "UPDATE terminals SET status = ?, status_at = ? WHERE terminal_id = ?",
                (state, self._now(), terminal_id),
            )

    def terminal(self, terminal_id: str) -> dict:
        row = self.conn.execute(
            "SELECT terminal_id, enterprise_id, contiguous_seq, head_hash, duplicates, "
            "chain_problem, status, heartbeat, kind FROM terminals WHERE terminal_id = ?",
            (terminal_id,),
        ).fetchone()
        if row is None:
            raise PlatformError(f"terminal {terminal_id} is not registered")
        keys = (
            "terminal_id",
            "enterprise_id",
            "contiguous_seq",
            "head_hash",
            "duplicates",
            "chain_problem",
            "status",
            "heartbeat",
            "kind",
        )
        d = dict(zip(keys, row))
        d["heartbeat"] = json.loads(d["heartbeat"]) if d["heartbeat"] else None
        d["events"] = self.conn.execute("SELECT count(*) FROM events WHERE terminal_id = ?", (terminal_id,)).fetchone()[
            0
        ]
        n, lo, hi = self.conn.execute(
            "SELECT count(*), min(seq), max(seq) FROM pending_events WHERE terminal_id = ?", (terminal_id,)
        ).fetchone()
        d["pending"] = {"count": n, "first_seq": lo, "last_seq": hi}
        d["evidence"] = self.conn.execute(
            "SELECT count(*) FROM chain_evidence WHERE terminal_id = ?", (terminal_id,)
        ).fetchone()[0]
        d["alarms"] = [
            dict(zip(("at", "kind", "seq", "text"), r))
            for r in self.conn.execute(
                "SELECT at, kind, seq, text FROM terminal_alarms WHERE terminal_id = ? ORDER BY id", (terminal_id,)
            )
        ]
        d["reanchors"] = [
            dict(zip(("at", "old_seq", "at_seq", "reason"), r))
            for r in self.conn.execute(
                "SELECT at, old_seq, at_seq, reason FROM reanchors WHERE terminal_id = ? ORDER BY id", (terminal_id,)
            )
        ]
        last_door = self.conn.execute(
            f"SELECT seq, time, kind, message FROM events WHERE terminal_id = ? AND kind IN "
            f"({', '.join('?' * len(DOOR_EVENT_KINDS))}) ORDER BY seq DESC LIMIT 1",
            (terminal_id, *DOOR_EVENT_KINDS),
        ).fetchone()
        d["open_alarms"] = (
            [dict(zip(("seq", "time", "kind", "message"), last_door))]
            if last_door is not None and open_alarm_from_log(last_door[2])
            else []
        )
        # The newest configuration document the terminal refused (its config.rejected record), with its reason.
        rejected = self.conn.execute(
            "SELECT seq, time, detail FROM events WHERE terminal_id = ? AND kind = "
            "'config.rejected' ORDER BY seq DESC LIMIT 1",
            (terminal_id,),
        ).fetchone()
        d["config_rejected"] = (
            None if rejected is None else {"seq": rejected[0], "time": rejected[1], **json.loads(rejected[2])}
        )
        return d
