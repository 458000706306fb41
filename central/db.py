"""The platform database: its schema, one transaction helper, the card statuses, the errors every part shares
and the platform's signing key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.money_records import MONEY_SIGN

ACTIVE, LOST, CANCELLED, REPLACED = "ACTIVE", "LOST", "CANCELLED", "REPLACED"
# Voided on the card by an issuing station (APPLICATION BLOCK) and waiting for its replacement or cancellation: the
# frozen balance the card proved is in voided_cards.
VOIDED = "VOIDED"
# Completed purse transactions in terminal logs (terminal/purse_flow.py) and how each moves the balance.
PURSE_SIGN = MONEY_SIGN
# What a terminal is; it decides whose money records are accounted (common/money_records.py ACCOUNTING_KINDS).
TERMINAL_KINDS = ("door", "attendance", "pos", "topup", "issuing")
# A card's maximum balance when issue-card does not say (the issuing terminal's default, terminal/issuing.py).
DEFAULT_MAX_BALANCE_CENTS = 200_000
# A terminal this many versions behind gets a snapshot instead of a long delta.
MAX_DELTA_CHANGES = 10_000
_ASN_RE = re.compile(r"[0-9A-F]{16}\Z")

# The schema as it stood before migrations were kept: central/migrations/0001_baseline.py applies it (SQLite).
SQLITE_BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS enterprises (
  enterprise_id TEXT PRIMARY KEY, name TEXT NOT NULL, blacklist_version INTEGER NOT NULL DEFAULT 0,
  config_version INTEGER NOT NULL DEFAULT 0, config_document TEXT) STRICT;
CREATE TABLE IF NOT EXISTS terminals (
  terminal_id TEXT PRIMARY KEY, enterprise_id TEXT NOT NULL REFERENCES enterprises, name TEXT NOT NULL,
  contiguous_seq INTEGER NOT NULL DEFAULT 0, head_hash TEXT NOT NULL, duplicates INTEGER NOT NULL DEFAULT 0,
  chain_problem TEXT, status TEXT, status_at TEXT, heartbeat TEXT, heartbeat_at TEXT, kind TEXT) STRICT;
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
  replaced_by TEXT, updated_at TEXT NOT NULL, max_balance_cents INTEGER) STRICT;
CREATE TABLE IF NOT EXISTS blacklist (
  enterprise_id TEXT NOT NULL, asn TEXT NOT NULL, reason TEXT NOT NULL, listed_in_version INTEGER NOT NULL,
  PRIMARY KEY (enterprise_id, asn)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS blacklist_changes (
  enterprise_id TEXT NOT NULL, version INTEGER NOT NULL, asn TEXT NOT NULL,
  PRIMARY KEY (enterprise_id, version, asn)) WITHOUT ROWID, STRICT;
CREATE TABLE IF NOT EXISTS refunds (
  id INTEGER PRIMARY KEY, asn TEXT NOT NULL, amount_cents INTEGER NOT NULL, at TEXT NOT NULL,
  note TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS card_actions (
  action_id TEXT PRIMARY KEY, enterprise_id TEXT NOT NULL, asn TEXT NOT NULL, action TEXT NOT NULL,
  params TEXT NOT NULL, created_at TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', status_note TEXT) STRICT;
CREATE TABLE IF NOT EXISTS voided_cards (
  asn TEXT PRIMARY KEY, frozen_cents INTEGER NOT NULL, proof TEXT NOT NULL, terminal_id TEXT NOT NULL,
  at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS card_keys (
  asn TEXT PRIMARY KEY, key_version INTEGER NOT NULL, at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS card_history (
  id INTEGER PRIMARY KEY, at TEXT NOT NULL, asn TEXT NOT NULL, action TEXT NOT NULL, text TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS purse_transactions (
  terminal_id TEXT NOT NULL, seq INTEGER NOT NULL, asn TEXT NOT NULL, kind TEXT NOT NULL, counter INTEGER NOT NULL,
  amount_cents INTEGER NOT NULL, balance_after_cents INTEGER NOT NULL, tac TEXT NOT NULL, tac_status TEXT NOT NULL,
  PRIMARY KEY (terminal_id, seq)) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS purse_transactions_asn ON purse_transactions (asn, kind, counter);
CREATE TABLE IF NOT EXISTS held_money (
  id INTEGER PRIMARY KEY, terminal_id TEXT NOT NULL, seq INTEGER NOT NULL, asn TEXT, kind TEXT NOT NULL,
  counter INTEGER, amount_cents INTEGER, balance_after_cents INTEGER, tac TEXT, tac_status TEXT NOT NULL,
  detail TEXT NOT NULL, reason_code TEXT NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL, held_at TEXT NOT NULL,
  resolved_at TEXT, resolution TEXT, UNIQUE (terminal_id, seq)) STRICT;
CREATE INDEX IF NOT EXISTS held_money_asn ON held_money (asn, status);
CREATE TABLE IF NOT EXISTS outbound (
  id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, created_at TEXT NOT NULL,
  published_at TEXT) STRICT;
CREATE INDEX IF NOT EXISTS outbound_unpublished ON outbound (published_at, id);
CREATE TABLE IF NOT EXISTS terminal_alarms (
  id INTEGER PRIMARY KEY, terminal_id TEXT NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER,
  text TEXT NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS terminal_alarms_terminal ON terminal_alarms (terminal_id, id);
CREATE TABLE IF NOT EXISTS chain_evidence (
  id INTEGER PRIMARY KEY, terminal_id TEXT NOT NULL, at TEXT NOT NULL, why TEXT NOT NULL, seq INTEGER NOT NULL,
  time TEXT NOT NULL, kind TEXT NOT NULL, asn TEXT, reason_code TEXT NOT NULL, message TEXT NOT NULL,
  detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS chain_evidence_terminal ON chain_evidence (terminal_id, seq);
CREATE TABLE IF NOT EXISTS platform_epoch (
  id INTEGER PRIMARY KEY CHECK (id = 1), instance TEXT NOT NULL, generation INTEGER NOT NULL,
  changed_at TEXT NOT NULL, reason TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS reanchors (
  id INTEGER PRIMARY KEY, terminal_id TEXT NOT NULL, at TEXT NOT NULL, old_seq INTEGER NOT NULL,
  old_hash TEXT NOT NULL, at_seq INTEGER NOT NULL, new_prev_hash TEXT NOT NULL, chain_problem TEXT,
  reason TEXT NOT NULL) STRICT;
"""
# Records waiting behind a gap, per terminal: at most this far ahead of the contiguous seq, and at most this many
# bytes of record text. Beyond either, records are refused (the ack says why) and the agent resends them later.
MAX_PENDING_GAP = 20_000
MAX_PENDING_BYTES = 8 * 1024 * 1024


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
    reason: str = ""  # ack reason code (common.sync_protocol.ACK_REASONS) when `problem` is set


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise PlatformError(
            f"cannot read the platform signing key {path} ({exc.strerror}); create it with `onecard platform init`"
        ) from None
    except (ValueError, TypeError):
        raise PlatformError(
            f"{path} is not an unencrypted PEM private key; create it with `onecard platform init`"
        ) from None
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
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub = path.with_suffix(".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pub


def _asn(text: str) -> str:
    asn = text.strip().upper()
    if not _ASN_RE.match(asn):
        raise PlatformError(f"ASN {text!r} is not 16 hex digits; copy it from `onecard sim show` or the card record")
    return asn


def _yuan(cents: int) -> str:
    return f"{cents / 100:.2f}"
