"""The reference platform's state in SQLite: terminals and their verified event chains, holders, cards, blacklists.

Every operation is one transaction; messages it must send are signed and queued in `outbound` in that same
transaction, so a crash never leaves a blacklist change without its notification (or the reverse).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import sync_protocol as p
from common.events import GENESIS_HASH, event_hash

ACTIVE, LOST, CANCELLED, REPLACED = "ACTIVE", "LOST", "CANCELLED", "REPLACED"
# Completed purse transactions in terminal logs (terminal/purse_flow.py) and how each moves the balance.
PURSE_SIGN = {"pos.purchase": -1, "pos.undo": 1, "topup.load": 1}
# A terminal this many versions behind gets a snapshot instead of a long delta.
MAX_DELTA_CHANGES = 10_000
_ASN_RE = re.compile(r"[0-9A-F]{16}\Z")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enterprises (
  enterprise_id TEXT PRIMARY KEY, name TEXT NOT NULL, blacklist_version INTEGER NOT NULL DEFAULT 0,
  config_version INTEGER NOT NULL DEFAULT 0, config_document TEXT) STRICT;
CREATE TABLE IF NOT EXISTS terminals (
  terminal_id TEXT PRIMARY KEY, enterprise_id TEXT NOT NULL REFERENCES enterprises, name TEXT NOT NULL,
  contiguous_seq INTEGER NOT NULL DEFAULT 0, head_hash TEXT NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0,
  chain_problem TEXT, status TEXT, status_at TEXT, heartbeat TEXT, heartbeat_at TEXT) STRICT;
CREATE TABLE IF NOT EXISTS events (
  terminal_id TEXT NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL, asn TEXT,
  reason_code TEXT NOT NULL, message TEXT NOT NULL, detail TEXT NOT NULL, hash TEXT NOT NULL,
  PRIMARY KEY (terminal_id, seq)) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS events_asn ON events (asn, kind, time);
CREATE TABLE IF NOT EXISTS pending_events (
  terminal_id TEXT NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL, asn TEXT,
  reason_code TEXT NOT NULL, message TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL, PRIMARY KEY (terminal_id, seq)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS holders (
  holder_id INTEGER PRIMARY KEY, enterprise_id TEXT NOT NULL REFERENCES enterprises, employee_no TEXT NOT NULL,
  name TEXT NOT NULL, phone TEXT NOT NULL, UNIQUE (enterprise_id, employee_no)) STRICT;
CREATE TABLE IF NOT EXISTS cards (
  asn TEXT PRIMARY KEY, enterprise_id TEXT NOT NULL, holder_id INTEGER NOT NULL REFERENCES holders,
  status TEXT NOT NULL, balance_cents INTEGER NOT NULL DEFAULT 0, rights TEXT NOT NULL,
  replaced_by TEXT, updated_at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS blacklist (
  enterprise_id TEXT NOT NULL, asn TEXT NOT NULL, reason TEXT NOT NULL, listed_in_version INTEGER NOT NULL,
  PRIMARY KEY (enterprise_id, asn)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS blacklist_changes (
  enterprise_id TEXT NOT NULL, version INTEGER NOT NULL, asn TEXT NOT NULL,
  PRIMARY KEY (enterprise_id, version, asn)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS refunds (
  id INTEGER PRIMARY KEY, asn TEXT NOT NULL, amount_cents INTEGER NOT NULL, at TEXT NOT NULL, note TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS card_actions (
  action_id TEXT PRIMARY KEY, enterprise_id TEXT NOT NULL, asn TEXT NOT NULL, action TEXT NOT NULL,
  params TEXT NOT NULL, created_at TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending') STRICT;
CREATE TABLE IF NOT EXISTS card_history (
  id INTEGER PRIMARY KEY, at TEXT NOT NULL, asn TEXT NOT NULL, action TEXT NOT NULL, text TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS purse_transactions (
  terminal_id TEXT NOT NULL, seq INTEGER NOT NULL, asn TEXT NOT NULL, kind TEXT NOT NULL, counter INTEGER NOT NULL,
  amount_cents INTEGER NOT NULL, balance_after_cents INTEGER NOT NULL, tac TEXT NOT NULL, tac_status TEXT NOT NULL,
  PRIMARY KEY (terminal_id, seq)) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS purse_transactions_asn ON purse_transactions (asn, kind, counter);
CREATE TABLE IF NOT EXISTS outbound (
  id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, created_at TEXT NOT NULL,
  published_at TEXT) STRICT;
CREATE INDEX IF NOT EXISTS outbound_unpublished ON outbound (published_at, id);
"""


class PlatformError(Exception):
    """An administrator request is refused; the message says why and what to do instead."""


@dataclass(frozen=True)
class IngestResult:
    terminal_id: str
    acked_seq: int
    acked_hash: str
    new: int
    duplicates: int
    pending: int
    problem: str


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise PlatformError(f"cannot read the platform signing key {path} ({exc.strerror}); "
                            "create it with `onecard platform init`") from None
    except (ValueError, TypeError):
        raise PlatformError(f"{path} is not an unencrypted PEM private key; create it with `onecard platform init`") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PlatformError(f"{path} is not an Ed25519 key; create it with `onecard platform init`")
    return key


def write_signing_key(path: Path) -> Path:
    """Create a new Ed25519 key at `path` (mode 600) and its public key next to it; return the .pub path."""
    path = Path(path)
    if path.exists():
        raise PlatformError(f"{path} already exists; keep it (terminals trust it) or move it away first")
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = path.with_suffix(".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def _asn(text: str) -> str:
    asn = text.strip().upper()
    if not _ASN_RE.match(asn):
        raise PlatformError(f"ASN {text!r} is not 16 hex digits; copy it from `onecard sim show` or the card record")
    return asn


def _yuan(cents: int) -> str:
    return f"{cents / 100:.2f}"


class Platform:
    """Accounts, ingest and signed publications of one platform database (one instance per thread)."""

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, *, clock=None,
                 timezone: str = "Asia/Shanghai", tac_sam=None) -> None:
        self.path = Path(path)
        self.key = signing_key
        # A SAM holding the enterprises' TAC master keys (usage verify): only the platform can check a TAC.
        # Without one, purse transactions are recorded with tac_status 'unchecked'.
        self.tac_sam = tac_sam
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.tz = zoneinfo.ZoneInfo(timezone)
        # check_same_thread=False: a service builds its Platform objects and hands each to one worker
        # thread; an object is never used by two threads at once.
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False)
        if self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise PlatformError(f"platform database {self.path} cannot use WAL; put it on a local filesystem")
        self.conn.execute("PRAGMA synchronous = FULL")  # an ack is sent only for what survives power loss
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def _txn(self):
        return _Txn(self.conn)

    def _now(self) -> str:
        return p.format_time(self.clock())

    def seal(self, type_: str, target: str, body: dict) -> bytes:
        return p.seal(self.key, type_, target, body, self.clock())

    def _queue(self, topic: str, payload: bytes) -> None:
        self.conn.execute("INSERT INTO outbound (topic, payload, created_at) VALUES (?, ?, ?)",
                          (topic, payload, self._now()))

    # -- registry ----------------------------------------------------------------------------

    def add_enterprise(self, enterprise_id: str, name: str) -> None:
        if not (enterprise_id.isdigit() and len(enterprise_id) == 8):
            raise PlatformError(f"enterprise ID {enterprise_id!r} is not 8 digits; use the 8-digit enterprise number")
        with self._txn():
            self.conn.execute("INSERT OR IGNORE INTO enterprises (enterprise_id, name) VALUES (?, ?)",
                              (enterprise_id, name))

    def add_terminal(self, terminal_id: str, enterprise_id: str, name: str = "") -> None:
        if not (terminal_id.isdigit() and len(terminal_id) == 12):
            raise PlatformError(f"terminal ID {terminal_id!r} is not 12 digits; use [terminal].id of its firmware.toml")
        with self._txn():
            self._enterprise(enterprise_id)
            row = self.conn.execute("SELECT enterprise_id FROM terminals WHERE terminal_id = ?",
                                    (terminal_id,)).fetchone()
            if row and row[0] != enterprise_id:
                raise PlatformError(f"terminal {terminal_id} is registered to enterprise {row[0]}; "
                                    "a terminal serves one enterprise")
            self.conn.execute("INSERT OR IGNORE INTO terminals (terminal_id, enterprise_id, name, head_hash) "
                              "VALUES (?, ?, ?, ?)", (terminal_id, enterprise_id, name or terminal_id, GENESIS_HASH))

    def _enterprise(self, enterprise_id: str) -> tuple:
        row = self.conn.execute("SELECT enterprise_id, blacklist_version, config_version FROM enterprises "
                                "WHERE enterprise_id = ?", (enterprise_id,)).fetchone()
        if row is None:
            raise PlatformError(f"enterprise {enterprise_id} is not registered; add it with "
                                "`onecard platform add-enterprise`")
        return row

    def terminal_enterprise(self, terminal_id: str) -> str | None:
        row = self.conn.execute("SELECT enterprise_id FROM terminals WHERE terminal_id = ?", (terminal_id,)).fetchone()
        return row[0] if row else None

    def add_holder(self, enterprise_id: str, employee_no: str, name: str, phone: str = "") -> int:
        with self._txn():
            self._enterprise(enterprise_id)
            try:
                cur = self.conn.execute("INSERT INTO holders (enterprise_id, employee_no, name, phone) "
                                        "VALUES (?, ?, ?, ?)", (enterprise_id, employee_no, name, phone))
            except sqlite3.IntegrityError:
                raise PlatformError(f"employee {employee_no} is already registered in enterprise {enterprise_id}")
            return cur.lastrowid

    def _holder(self, enterprise_id: str, employee_no: str) -> tuple:
        row = self.conn.execute("SELECT holder_id, name, phone FROM holders WHERE enterprise_id = ? AND employee_no = ?",
                                (enterprise_id, employee_no)).fetchone()
        if row is None:
            raise PlatformError(f"employee {employee_no} is not registered in enterprise {enterprise_id}; "
                                "add them with `onecard platform add-holder`")
        return row

    def issue_card(self, enterprise_id: str, employee_no: str, asn: str, rights: dict | None = None,
                   balance_cents: int = 0) -> None:
        asn = _asn(asn)
        with self._txn():
            holder_id = self._holder(enterprise_id, employee_no)[0]
            if self.conn.execute("SELECT 1 FROM cards WHERE asn = ?", (asn,)).fetchone():
                raise PlatformError(f"card {asn} is already registered; an ASN is issued once")
            # One phone number holds one one-card (ONECARD.md): checked in the transaction that registers the card,
            # so two issuing stations cannot both pass it.
            other = self.conn.execute(
                "SELECT c.asn, h.phone FROM cards c JOIN holders h USING (holder_id) WHERE h.phone != '' AND "
                "h.phone = (SELECT phone FROM holders WHERE holder_id = ?) AND c.status IN (?, ?) LIMIT 1",
                (holder_id, ACTIVE, LOST)).fetchone()
            if other is not None:
                raise PlatformError(f"phone number {other[1]} already holds one-card {other[0]}; one phone number "
                                    "holds one one-card: cancel or replace that card instead")
            self.conn.execute("INSERT INTO cards VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                              (asn, enterprise_id, holder_id, ACTIVE, balance_cents,
                               json.dumps(rights or {}, sort_keys=True), self._now()))
            self._history(asn, "issued", f"issued to employee {employee_no}")

    def _history(self, asn: str, action: str, text: str) -> None:
        self.conn.execute("INSERT INTO card_history (at, asn, action, text) VALUES (?, ?, ?, ?)",
                          (self._now(), asn, action, text))

    def card(self, asn: str) -> dict:
        asn = _asn(asn)
        row = self.conn.execute("SELECT c.asn, c.enterprise_id, h.employee_no, h.name, c.status, c.balance_cents, "
                                "c.rights, c.replaced_by FROM cards c JOIN holders h USING (holder_id) "
                                "WHERE c.asn = ?", (asn,)).fetchone()
        if row is None:
            raise PlatformError(f"card {asn} is not registered; check the ASN (`onecard platform cards` lists them)")
        return {"asn": row[0], "enterprise_id": row[1], "employee_no": row[2], "name": row[3], "status": row[4],
                "balance_cents": row[5], "rights": json.loads(row[6]), "replaced_by": row[7]}

    def cards(self, enterprise_id: str | None = None) -> list[dict]:
        asns = [r[0] for r in self.conn.execute("SELECT asn FROM cards WHERE ?1 IS NULL OR enterprise_id = ?1 "
                                                "ORDER BY asn", (enterprise_id,))]
        return [self.card(a) for a in asns]

    # -- blacklist ---------------------------------------------------------------------------

    def blacklist_version(self, enterprise_id: str) -> int:
        return self._enterprise(enterprise_id)[1]

    def _change_blacklist(self, enterprise_id: str, added: dict[str, str], removed: list[str]) -> int:
        """Inside a transaction: move the enterprise's list one version on and queue the signed delta."""
        base = self._enterprise(enterprise_id)[1]
        v = base + 1
        for asn, reason in added.items():
            self.conn.execute("INSERT OR REPLACE INTO blacklist VALUES (?, ?, ?, ?)", (enterprise_id, asn, reason, v))
        for asn in removed:
            self.conn.execute("DELETE FROM blacklist WHERE enterprise_id = ? AND asn = ?", (enterprise_id, asn))
        self.conn.executemany("INSERT OR IGNORE INTO blacklist_changes VALUES (?, ?, ?)",
                              [(enterprise_id, v, a) for a in [*added, *removed]])
        self.conn.execute("UPDATE enterprises SET blacklist_version = ? WHERE enterprise_id = ?", (v, enterprise_id))
        body = {"enterprise_id": enterprise_id, "base_version": base, "version": v,
                "added": [{"asn": a, "reason": r, "listed_in_version": v} for a, r in sorted(added.items())],
                "removed": sorted(removed)}
        self._queue(p.enterprise_topic(enterprise_id), self.seal("blacklist.delta", f"e:{enterprise_id}", body))
        return v

    def blacklist_bulk(self, enterprise_id: str, asns: list[bytes], reason: str = "lost") -> int:
        """List many cards in one version without card records (benchmarks, migrations); no message queued."""
        with self._txn():
            v = self._enterprise(enterprise_id)[1] + 1
            self.conn.executemany("INSERT OR REPLACE INTO blacklist VALUES (?, ?, ?, ?)",
                                  ((enterprise_id, a.hex().upper(), reason, v) for a in asns))
            self.conn.execute("UPDATE enterprises SET blacklist_version = ? WHERE enterprise_id = ?",
                              (v, enterprise_id))
            # Marks every listed card as changed at v, so any terminal below v gets a snapshot.
            self.conn.execute("INSERT INTO blacklist_changes VALUES (?, ?, '*')", (enterprise_id, v))
        return v

    def snapshot_body(self, enterprise_id: str) -> dict:
        v = self._enterprise(enterprise_id)[1]
        groups: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for asn, reason, listed in self.conn.execute(
                "SELECT asn, reason, listed_in_version FROM blacklist WHERE enterprise_id = ?", (enterprise_id,)):
            groups[(reason, listed)].append(bytes.fromhex(asn))
        count = sum(len(g) for g in groups.values())
        return {"enterprise_id": enterprise_id, "version": v, "count": count,
                "groups": [{"reason": r, "listed_in_version": lv, "asns": p.encode_asn_group(a)}
                           for (r, lv), a in sorted(groups.items())]}

    def delta_body(self, enterprise_id: str, have: int) -> dict | None:
        """A cumulative delta have -> current, or None when a snapshot is the answer."""
        v = self._enterprise(enterprise_id)[1]
        if have <= 0 or have >= v:
            return None
        changed = [r[0] for r in self.conn.execute(
            "SELECT DISTINCT asn FROM blacklist_changes WHERE enterprise_id = ? AND version > ? LIMIT ?",
            (enterprise_id, have, MAX_DELTA_CHANGES + 1))]
        if len(changed) > MAX_DELTA_CHANGES or "*" in changed:
            return None
        added, removed = [], []
        for asn in sorted(changed):
            row = self.conn.execute("SELECT reason, listed_in_version FROM blacklist WHERE enterprise_id = ? AND "
                                    "asn = ?", (enterprise_id, asn)).fetchone()
            if row:
                added.append({"asn": asn, "reason": row[0], "listed_in_version": row[1]})
            else:
                removed.append(asn)
        return {"enterprise_id": enterprise_id, "base_version": have, "version": v, "added": added,
                "removed": removed}

    # -- the card flows (ONECARD.md, section 7.3) -----------------------------------------------

    def _card_for_update(self, asn: str) -> dict:
        return self.card(asn)

    def report_loss(self, asn: str) -> int:
        """LOST, blacklisted, every terminal of the enterprise notified; returns the new blacklist version."""
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] == LOST:
                raise PlatformError(f"card {c['asn']} is already reported lost; nothing changed")
            if c["status"] != ACTIVE:
                raise PlatformError(f"card {c['asn']} is {c['status']}, not active; it is already blacklisted")
            self.conn.execute("UPDATE cards SET status = ?, updated_at = ? WHERE asn = ?", (LOST, self._now(), c["asn"]))
            v = self._change_blacklist(c["enterprise_id"], {c["asn"]: "lost"}, [])
            self._history(c["asn"], "loss_report", f"reported lost; blacklist version {v}")
        return v

    def unlock(self, asn: str) -> int:
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] != LOST:
                raise PlatformError(f"card {c['asn']} is {c['status']}, not lost; only a lost card can be unlocked")
            self.conn.execute("UPDATE cards SET status = ?, updated_at = ? WHERE asn = ?",
                              (ACTIVE, self._now(), c["asn"]))
            v = self._change_blacklist(c["enterprise_id"], {}, [c["asn"]])
            self._history(c["asn"], "unlock", f"unlocked; blacklist version {v}")
        return v

    def cancel(self, asn: str, *, settle: bool = False) -> int:
        """CANCELLED and blacklisted; a non-zero balance must be settled (refund recorded) first."""
        with self._txn():
            c = self._card_for_update(asn)
            if c["status"] in (CANCELLED, REPLACED):
                raise PlatformError(f"card {c['asn']} is already {c['status']}; nothing changed")
            if c["balance_cents"] and not settle:
                raise PlatformError(f"card {c['asn']} has a balance of {_yuan(c['balance_cents'])} yuan; settle it "
                                    "first: rerun with --settle to record the refund")
            if c["balance_cents"]:
                self.conn.execute("INSERT INTO refunds (asn, amount_cents, at, note) VALUES (?, ?, ?, ?)",
                                  (c["asn"], c["balance_cents"], self._now(), "settled at cancellation"))
            self.conn.execute("UPDATE cards SET status = ?, balance_cents = 0, updated_at = ? WHERE asn = ?",
                              (CANCELLED, self._now(), c["asn"]))
            v = self._change_blacklist(c["enterprise_id"], {c["asn"]: "cancelled"}, [])
            self._history(c["asn"], "cancel", f"cancelled, {_yuan(c['balance_cents'])} yuan refunded; "
                                              f"blacklist version {v}")
        return v

    def replace(self, old_asn: str, new_asn: str) -> int:
        """Old card REPLACED and blacklisted; the new card gets the old one's holder, rights and balance."""
        new_asn = _asn(new_asn)
        with self._txn():
            c = self._card_for_update(old_asn)
            if c["status"] not in (ACTIVE, LOST):
                raise PlatformError(f"card {c['asn']} is {c['status']}; only an active or lost card can be replaced")
            if self.conn.execute("SELECT 1 FROM cards WHERE asn = ?", (new_asn,)).fetchone():
                raise PlatformError(f"new card {new_asn} is already registered; issue a blank card")
            holder_id = self.conn.execute("SELECT holder_id FROM cards WHERE asn = ?", (c["asn"],)).fetchone()[0]
            self.conn.execute("INSERT INTO cards VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                              (new_asn, c["enterprise_id"], holder_id, ACTIVE, c["balance_cents"],
                               json.dumps(c["rights"], sort_keys=True), self._now()))
            self.conn.execute("UPDATE cards SET status = ?, balance_cents = 0, replaced_by = ?, updated_at = ? "
                              "WHERE asn = ?", (REPLACED, new_asn, self._now(), c["asn"]))
            v = self._change_blacklist(c["enterprise_id"], {c["asn"]: "replaced"}, [])
            self._history(c["asn"], "replace", f"replaced by {new_asn}; blacklist version {v}")
            self._history(new_asn, "issued", f"replacement of {c['asn']}, balance {_yuan(c['balance_cents'])} moved")
        return v

    # -- configuration and card actions --------------------------------------------------------

    def publish_config(self, enterprise_id: str, document: dict) -> int:
        with self._txn():
            v = self._enterprise(enterprise_id)[2] + 1
            self.conn.execute("UPDATE enterprises SET config_version = ?, config_document = ? WHERE enterprise_id = ?",
                              (v, json.dumps(document, sort_keys=True), enterprise_id))
            self._queue(p.enterprise_topic(enterprise_id),
                        self.seal("config", f"e:{enterprise_id}", self._config_body(enterprise_id)))
        return v

    def _config_body(self, enterprise_id: str) -> dict:
        v, doc = self.conn.execute("SELECT config_version, config_document FROM enterprises WHERE enterprise_id = ?",
                                   (enterprise_id,)).fetchone()
        return {"enterprise_id": enterprise_id, "version": v, "document": json.loads(doc) if doc else {}}

    def add_card_action(self, asn: str, action: str, params: dict, action_id: str | None = None) -> str:
        with self._txn():
            c = self.card(asn)
            action_id = action_id or p.new_message_id()
            self.conn.execute("INSERT INTO card_actions VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                              (action_id, c["enterprise_id"], c["asn"], action, json.dumps(params), self._now()))
            self._queue(p.enterprise_topic(c["enterprise_id"]),
                        self.seal("card_action", f"e:{c['enterprise_id']}", self._action_body(action_id)))
        return action_id

    def authorise(self, asn: str, rights: dict) -> str:
        """Change a card's access rights: recorded here, and queued as a card action that the card service
        (top-up) terminal writes onto the card at its next tap there."""
        with self._txn():
            c = self.card(asn)
            if c["status"] != ACTIVE:
                raise PlatformError(f"card {c['asn']} is {c['status']}; only an active card gets new rights")
            self.conn.execute("UPDATE cards SET rights = ?, updated_at = ? WHERE asn = ?",
                              (json.dumps({**c["rights"], **rights}, sort_keys=True), self._now(), c["asn"]))
            self._history(c["asn"], "authorise", f"rights changed to {json.dumps(rights, sort_keys=True)}")
            return self.add_card_action(c["asn"], "rights", rights)

    def _action_body(self, action_id: str) -> dict:
        asn, action, params = self.conn.execute("SELECT asn, action, params FROM card_actions WHERE action_id = ?",
                                                (action_id,)).fetchone()
        return {"action_id": action_id, "asn": asn, "action": action, "params": json.loads(params)}

    # -- answers to a terminal's request ------------------------------------------------------

    def answer_request(self, req: p.Request) -> list[tuple[str, bytes]]:
        """(topic, payload) messages for a terminal that asked to sync or for a snapshot."""
        eid = self.terminal_enterprise(req.terminal_id)
        if eid is None:
            return []
        topic, target = p.terminal_topic(req.terminal_id, p.DOWN_MSG), f"t:{req.terminal_id}"
        out = []
        current = self.blacklist_version(eid)
        if req.want == "blacklist.snapshot" or req.blacklist_version != current:
            delta = None if req.want == "blacklist.snapshot" else self.delta_body(eid, req.blacklist_version)
            if delta is not None:
                out.append((topic, self.seal("blacklist.delta", target, delta)))
            elif current > 0:
                out.append((topic, self.seal("blacklist.snapshot", target, self.snapshot_body(eid))))
        if req.want == "sync":
            body = self._config_body(eid)
            if body["version"] > req.config_version:
                out.append((topic, self.seal("config", target, body)))
            for (action_id,) in self.conn.execute("SELECT action_id FROM card_actions WHERE enterprise_id = ? AND "
                                                  "status = 'pending' ORDER BY created_at", (eid,)).fetchall():
                out.append((topic, self.seal("card_action", target, self._action_body(action_id))))
            out.append((topic, self.time_message(req.terminal_id)))
        return out

    def time_message(self, terminal_id: str) -> bytes:
        return self.seal("time", f"t:{terminal_id}", {"platform_time": self._now()})

    # -- uploads ---------------------------------------------------------------------------

    def ingest(self, terminal_id: str, events: list[p.WireEvent]) -> IngestResult:
        """Store a batch once, verifying the chain across batches; answer the highest contiguous seq.

        Records at or below the contiguous seq are duplicates (redelivery, resend) and change nothing;
        records past a gap wait in pending_events until the gap is filled.
        """
        with self._txn():
            row = self.conn.execute("SELECT contiguous_seq, head_hash, chain_problem FROM terminals "
                                    "WHERE terminal_id = ?", (terminal_id,)).fetchone()
            if row is None:
                raise PlatformError(f"terminal {terminal_id} is not registered; add it with "
                                    "`onecard platform add-terminal`")
            contiguous, head, problem = row
            dups = new = 0
            for e in events:
                if e.seq <= contiguous:
                    dups += 1
                elif e.seq == contiguous + 1 and not problem:
                    problem = self._append(terminal_id, e, head)
                    if problem:
                        break
                    contiguous, head, new = e.seq, e.hash, new + 1
                else:
                    self.conn.execute("INSERT OR IGNORE INTO pending_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                      (terminal_id, e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail,
                                       e.prev_hash, e.hash))
            while not problem:
                nxt = self.conn.execute("SELECT seq, time, kind, asn, reason_code, message, detail, prev_hash, hash "
                                        "FROM pending_events WHERE terminal_id = ? AND seq = ?",
                                        (terminal_id, contiguous + 1)).fetchone()
                if nxt is None:
                    break
                e = p.WireEvent(*nxt)
                problem = self._append(terminal_id, e, head)
                if not problem:
                    contiguous, head, new = e.seq, e.hash, new + 1
            self.conn.execute("DELETE FROM pending_events WHERE terminal_id = ? AND seq <= ?", (terminal_id, contiguous))
            pending = self.conn.execute("SELECT count(*) FROM pending_events WHERE terminal_id = ?",
                                        (terminal_id,)).fetchone()[0]
            self.conn.execute("UPDATE terminals SET contiguous_seq = ?, head_hash = ?, duplicates = duplicates + ?, "
                              "chain_problem = ? WHERE terminal_id = ?", (contiguous, head, dups, problem, terminal_id))
        return IngestResult(terminal_id, contiguous, head, new, dups, pending, problem or "")

    def _append(self, terminal_id: str, e: p.WireEvent, head: str) -> str | None:
        if e.prev_hash != head:
            return (f"chain broken at seq {e.seq}: prev_hash {e.prev_hash[:16]}… is not the hash of seq {e.seq - 1} "
                    f"({head[:16]}…)")
        computed = event_hash(e.seq, e.time, terminal_id, e.kind, e.asn, e.reason_code, e.message, e.detail,
                              e.prev_hash)
        if computed != e.hash:
            return f"chain broken at seq {e.seq}: its content hashes to {computed[:16]}…, not {e.hash[:16]}…"
        self.conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (terminal_id, e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail, e.hash))
        if e.kind in PURSE_SIGN:
            self._account(terminal_id, e)
        elif e.kind == "card.rights":
            self.conn.execute("UPDATE card_actions SET status = 'done' WHERE action_id = ?",
                              (json.loads(e.detail)["action_id"],))
        return None

    def _account(self, terminal_id: str, e: p.WireEvent) -> None:
        """A completed purse transaction, seen exactly once (this runs only for a new record of the chain):
        check its TAC, then move the card's balance; a TAC that does not verify moves nothing."""
        d = json.loads(e.detail)
        status = self._check_tac(terminal_id, e, d)
        self.conn.execute("INSERT INTO purse_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (terminal_id, e.seq, e.asn, e.kind, d["counter"], d["amount"], d["balance_after"], d["tac"],
                           status))
        if status != "bad":
            self.conn.execute("UPDATE cards SET balance_cents = balance_cents + ? WHERE asn = ?",
                              (PURSE_SIGN[e.kind] * d["amount"], e.asn))
        if d.get("action_id"):
            self.conn.execute("UPDATE card_actions SET status = 'done' WHERE action_id = ?", (d["action_id"],))

    def _check_tac(self, terminal_id: str, e: p.WireEvent, d: dict) -> str:
        if self.tac_sam is None:
            return "unchecked"
        from sam.interface import Algorithm, CardIdentity, SamError

        enterprise = self.conn.execute("SELECT enterprise_id FROM terminals WHERE terminal_id = ?",
                                       (terminal_id,)).fetchone()[0]
        card = CardIdentity(bytes.fromhex(e.asn), bytes.fromhex(enterprise), d["key_version"],
                            Algorithm[d["algorithm"]])
        try:
            self.tac_sam.verify_tac(card, amount=d["amount"], tx_type=0x06 if e.kind == "pos.purchase" else 0x02,
                                    terminal_id=bytes.fromhex(terminal_id), tsn=d.get("tsn", 0) if e.kind ==
                                    "pos.purchase" else 0, date=bytes.fromhex(d["date"]),
                                    time=bytes.fromhex(d["time"]), counter=d["counter"],
                                    balance_after=d["balance_after"], tac=bytes.fromhex(d["tac"]))
        except SamError:
            return "bad"
        return "ok"

    def purse_transactions(self, asn: str) -> list[dict]:
        rows = self.conn.execute("SELECT terminal_id, seq, kind, counter, amount_cents, balance_after_cents, "
                                 "tac_status FROM purse_transactions WHERE asn = ? ORDER BY kind, counter",
                                 (asn,)).fetchall()
        keys = ("terminal_id", "seq", "kind", "counter", "amount_cents", "balance_after_cents", "tac_status")
        return [dict(zip(keys, r)) for r in rows]

    def ack_message(self, result: IngestResult) -> bytes:
        body = {"acked_seq": result.acked_seq, "acked_hash": result.acked_hash}
        if result.problem:
            body["problem"] = result.problem
        return self.seal("ack", f"t:{result.terminal_id}", body)

    def record_heartbeat(self, hb: p.Heartbeat) -> None:
        with self._txn():
            self.conn.execute("UPDATE terminals SET heartbeat = ?, heartbeat_at = ? WHERE terminal_id = ?",
                              (json.dumps(hb.__dict__, sort_keys=True), self._now(), hb.terminal_id))

    def record_status(self, terminal_id: str, state: str) -> None:
        with self._txn():
            self.conn.execute("UPDATE terminals SET status = ?, status_at = ? WHERE terminal_id = ?",
                              (state, self._now(), terminal_id))

    def terminal(self, terminal_id: str) -> dict:
        row = self.conn.execute("SELECT terminal_id, enterprise_id, contiguous_seq, head_hash, duplicates, "
                                "chain_problem, status, heartbeat FROM terminals WHERE terminal_id = ?",
                                (terminal_id,)).fetchone()
        if row is None:
            raise PlatformError(f"terminal {terminal_id} is not registered")
        keys = ("terminal_id", "enterprise_id", "contiguous_seq", "head_hash", "duplicates", "chain_problem",
                "status", "heartbeat")
        d = dict(zip(keys, row))
        d["heartbeat"] = json.loads(d["heartbeat"]) if d["heartbeat"] else None
        d["events"] = self.conn.execute("SELECT count(*) FROM events WHERE terminal_id = ?",
                                        (terminal_id,)).fetchone()[0]
        return d

    def totals(self) -> dict[str, int]:
        """Stored events per kind over all terminals (each terminal record counted once)."""
        return dict(self.conn.execute("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind").fetchall())

    # -- outbound queue ----------------------------------------------------------------------

    def unpublished(self, limit: int = 100) -> list[tuple[int, str, bytes]]:
        return self.conn.execute("SELECT id, topic, payload FROM outbound WHERE published_at IS NULL ORDER BY id "
                                 "LIMIT ?", (limit,)).fetchall()

    def mark_published(self, ids: list[int]) -> None:
        with self._txn():
            self.conn.executemany("UPDATE outbound SET published_at = ? WHERE id = ?",
                                  [(self._now(), i) for i in ids])

    # -- value-added services ------------------------------------------------------------------

    def attendance_bill(self, enterprise_id: str, employee_no: str, month: str) -> str:
        """The SMS text of an employee's monthly attendance bill, from ingested attendance events."""
        holder_id, name, _ = self._holder(enterprise_id, employee_no)
        try:
            first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=self.tz)
        except ValueError:
            raise PlatformError(f"month {month!r} is not YYYY-MM; write e.g. 2026-11") from None
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        asns = [r[0] for r in self.conn.execute("SELECT asn FROM cards WHERE holder_id = ?", (holder_id,))]
        days: dict[dt.date, dict[str, dt.datetime]] = {}
        lo, hi = p.format_time(first), p.format_time(nxt)
        for asn in asns:
            for kind, time in self.conn.execute(
                    "SELECT kind, time FROM events WHERE asn = ? AND kind IN ('attendance.in', 'attendance.out') "
                    "AND time >= ? AND time < ?", (asn, lo, hi)):
                local = p.parse_time(time, "event time").astimezone(self.tz)
                d = days.setdefault(local.date(), {})
                if kind == "attendance.in":
                    d["in"] = min(d.get("in", local), local)
                else:
                    d["out"] = max(d.get("out", local), local)
        lines = []
        for day in sorted(days):
            d = days[day]
            fmt = lambda k: d[k].strftime("%H:%M") if k in d else "--"  # noqa: E731
            lines.append(f"{day.strftime('%m-%d %a')} in {fmt('in')} out {fmt('out')}")
        body = "; ".join(lines) if lines else "no clock-in recorded"
        return f"[onecard] {name} ({employee_no}), attendance {month}: {len(days)} day(s). {body}."


def spending_bill(platform: Platform, enterprise_id: str, employee_no: str, month: str) -> str:
    """The SMS text of an employee's monthly purse bill: payments, refunds and top-ups with their TAC-checked
    amounts, the month's totals and the balance the platform holds."""
    holder_id, name, _ = platform._holder(enterprise_id, employee_no)
    try:
        first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=platform.tz)
    except ValueError:
        raise PlatformError(f"month {month!r} is not YYYY-MM; write e.g. 2026-11") from None
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    rows = platform.conn.execute(
        "SELECT e.time, t.kind, t.amount_cents FROM purse_transactions t JOIN events e "
        "ON e.terminal_id = t.terminal_id AND e.seq = t.seq JOIN cards c ON c.asn = t.asn "
        "WHERE c.holder_id = ? AND t.tac_status != 'bad' AND e.time >= ? AND e.time < ? ORDER BY e.time",
        (holder_id, p.format_time(first), p.format_time(nxt))).fetchall()
    label = {"pos.purchase": "paid", "pos.undo": "refund", "topup.load": "top-up"}
    spent = sum(a for _, k, a in rows if k == "pos.purchase") - sum(a for _, k, a in rows if k == "pos.undo")
    loaded = sum(a for _, k, a in rows if k == "topup.load")
    items = "; ".join(f"{p.parse_time(t, 'event time').astimezone(platform.tz).strftime('%m-%d %H:%M')} "
                      f"{label[k]} {_yuan(a)}" for t, k, a in rows) or "no purse transactions"
    balance = sum(r[0] for r in platform.conn.execute(
        "SELECT balance_cents FROM cards WHERE holder_id = ? AND status IN (?, ?)", (holder_id, ACTIVE, LOST)))
    return (f"[onecard] {name} ({employee_no}), canteen {month}: spent {_yuan(spent)} yuan, topped up "
            f"{_yuan(loaded)} yuan, balance {_yuan(balance)} yuan. {items}.")


class _Txn:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self):
        # Nested use (a flow calling a helper that also opens one) joins the outer transaction.
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
