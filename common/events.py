"""The event hash chain and the canonical forms it hashes (time, detail JSON, ASN): docs/event-log.md.

Shared by the terminal's log, its sync agent and the central platform, so all three compute the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any

GENESIS_HASH = "00" * 32
# Domain tag at the start of every hashed record: a hash of this log can never be mistaken for a
# hash of some other structure, and a future encoding gets a new tag instead of silently colliding.
HASH_DOMAIN = b"onecard.event.v1\x00"
_NULL_LENGTH = 0xFFFFFFFF  # length marker of a NULL text field (distinct from the empty string)
_ASN_RE = re.compile(r"[0-9A-Fa-f]{16}")
_NULL_MARK = _NULL_LENGTH.to_bytes(4, "big")


def _text_field(value: str | None) -> bytes:
    if value is None:
        return _NULL_LENGTH.to_bytes(4, "big")
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def event_hash(
    seq: int,
    time: str,
    terminal_id: str,
    kind: str,
    asn: str | None,
    reason_code: str,
    message: str,
    detail: str,
    prev_hash: str,
) -> str:
    """SHA-256 (lowercase hex) of the canonical encoding documented in docs/event-log.md.

    Every text field is length-prefixed so no two different records share an encoding
    (concatenating "ab"+"c" and "a"+"bc" would). Arguments are the stored column values.
    """
    # One buffer, one hash call (the platform hashes every record it ingests): the same bytes as hashing the
    # parts one by one.
    parts = [HASH_DOMAIN, seq.to_bytes(8, "big")]
    for field in (time, terminal_id, kind, asn, reason_code, message, detail):
        if field is None:
            parts.append(_NULL_MARK)
        else:
            data = field.encode("utf-8")
            parts.append(len(data).to_bytes(4, "big"))
            parts.append(data)
    parts.append(bytes.fromhex(prev_hash))
    return hashlib.sha256(b"".join(parts)).hexdigest()


def format_time(value: datetime) -> str:
    """The stored form of an event time: UTC, microseconds, 'Z' (one form, so hashes are reproducible)."""
    if not isinstance(value, datetime):
        raise TypeError(f"event time must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("event time is naive; pass a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
    utc = value.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def canonical_json(detail: dict[str, Any]) -> str:
    """The stored form of `detail`: sorted keys, no whitespace, UTF-8 kept as is, no NaN."""
    if not isinstance(detail, dict):
        raise TypeError(f"event detail must be a dict, got {type(detail).__name__}")
    try:
        return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"event detail is not plain JSON ({exc}); pass only str/int/float/bool/None/list/dict"
        ) from None


def normalise_asn(asn: str | bytes | None) -> str | None:
    """ASN as stored: 16 uppercase hex digits (8 bytes), or None for a card without the one-card app."""
    if asn is None:
        return None
    if isinstance(asn, (bytes, bytearray)):
        if len(asn) != 8:
            raise ValueError(f"ASN must be 8 bytes, got {len(asn)}")
        return bytes(asn).hex().upper()
    if not isinstance(asn, str) or not _ASN_RE.fullmatch(asn):
        raise ValueError(f"ASN must be 16 hex digits (8 bytes) or None, got {asn!r}")
    return asn.upper()
