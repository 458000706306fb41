"""Sync protocol v1 between terminal agents and the platform: topics, JSON payloads, signed envelopes.

Pure functions on bytes and dicts (no I/O, no clock); the byte-exact specification is docs/sync-protocol.md.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PROTOCOL_VERSION = 1
TOPIC_ROOT = "onecard/v1"
# Domain tag in front of every signed byte string: a signature over a sync envelope can never be
# presented as a signature over anything else this platform key signs (and vice versa).
SIGN_DOMAIN = b"onecard.sync.v1\x00"
MAX_BATCH_EVENTS = 5000  # a parser limit, above any sane batch size, so a hostile batch cannot balloon

UP_EVENTS, UP_HEARTBEAT, UP_STATUS, UP_REQUEST = "up/events", "up/heartbeat", "up/status", "up/request"
DOWN_ACK, DOWN_MSG = "down/ack", "down/msg"
UP_LEAVES = (UP_EVENTS, UP_HEARTBEAT, UP_STATUS, UP_REQUEST)

DOWN_TYPES = ("ack", "blacklist.snapshot", "blacklist.delta", "config", "card_action", "card_action.cancel",
              "time")
REQUEST_WANTS = ("sync", "blacklist.snapshot")

_TID_RE = re.compile(r"[0-9]{12}\Z")
_EID_RE = re.compile(r"[0-9]{8}\Z")
_ASN_RE = re.compile(r"[0-9A-F]{16}\Z")
_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


class ProtocolError(Exception):
    """A payload is not a valid sync v1 message; the text names the field and what is wrong."""


class SignatureError(ProtocolError):
    """A downlink message's signature does not verify against the platform's public key."""


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------

def terminal_topic(terminal_id: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/t/{terminal_id}/{leaf}"


def enterprise_topic(enterprise_id: str) -> str:
    return f"{TOPIC_ROOT}/e/{enterprise_id}/{DOWN_MSG}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """('t', terminal_id, leaf) or ('e', enterprise_id, leaf) for a v1 topic; ProtocolError otherwise."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != TOPIC_ROOT or parts[2] not in ("t", "e"):
        raise ProtocolError(f"topic {topic!r} is not an onecard/v1 topic")
    scope, ident, leaf = parts[2], parts[3], "/".join(parts[4:])
    if not (_TID_RE if scope == "t" else _EID_RE).match(ident):
        raise ProtocolError(f"topic {topic!r} has a malformed {'terminal' if scope == 't' else 'enterprise'} ID")
    return scope, ident, leaf


# --------------------------------------------------------------------------------------------
# Canonical JSON and field checks
# --------------------------------------------------------------------------------------------

def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that is signed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("protocol times must be timezone-aware")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object, where: str) -> datetime:
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise ProtocolError(f"{where} must be a UTC time like 2026-11-23T02:00:00.000000Z, got {text!r:.60}")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ProtocolError(f"{where} is not a real date/time: {text!r}") from None


def _no_constant(name: str) -> NoReturn:
    # NaN/Infinity are not JSON and cannot be re-encoded canonically for signature checks.
    raise ProtocolError(f"payload contains {name}, which is not JSON")


def _load(payload: bytes, what: str) -> dict[str, Any]:
    if not isinstance(payload, (bytes, bytearray)):
        raise ProtocolError(f"{what} payload must be bytes")
    try:
        obj = json.loads(bytes(payload).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what} payload is not UTF-8 JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} payload must be a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"{what} payload has protocol version {obj.get('v')!r:.20}, expected {PROTOCOL_VERSION}")
    return obj


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False,
           default: Any = None) -> Any:
    if key not in obj:
        if optional:
            return default
        raise ProtocolError(f"{where}: field {key!r} is missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"{where}: field {key!r} must be {kinds[0].__name__}, got a boolean")
    if not isinstance(value, kinds):
        raise ProtocolError(f"{where}: field {key!r} must be {kinds[0].__name__}, got {type(value).__name__}")
    return value


def _int(obj: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value: int = _field(obj, key, int, where)
    if value < minimum or value > 2**63 - 1:
        raise ProtocolError(f"{where}: field {key!r} = {value} is out of range (>= {minimum})")
    return value


def _match(obj: dict[str, Any], key: str, pattern: re.Pattern[str], where: str, what: str, *,
           optional: bool = False) -> Any:
    value = _field(obj, key, str, where, optional=optional)
    if value is None and optional:
        return None
    if not pattern.match(value):
        raise ProtocolError(f"{where}: field {key!r} = {value!r:.40} is not {what}")
    return value


# --------------------------------------------------------------------------------------------
# Signed downlink envelopes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Envelope:
    type: str
    id: str
    target: str  # "t:<terminal id>" or "e:<enterprise id>"
    issued_at: datetime
    body: dict[str, Any]


def signed_bytes(unsigned: dict[str, Any]) -> bytes:
    return SIGN_DOMAIN + canonical(unsigned)


def seal(key: Ed25519PrivateKey, type_: str, target: str, body: dict[str, Any], issued_at: datetime,
         msg_id: str) -> bytes:
    """Sign and encode one downlink message (the platform side); `msg_id` is fresh and random (the caller draws it:
    this module reads no clock and no randomness)."""
    if type_ not in DOWN_TYPES:
        raise ValueError(f"unknown downlink type {type_!r}")
    unsigned = {"v": PROTOCOL_VERSION, "type": type_, "id": msg_id, "target": target,
                "issued_at": format_time(issued_at), "body": body}
    sig = key.sign(signed_bytes(unsigned))
    return canonical({**unsigned, "sig": base64.b64encode(sig).decode()})


def open_envelope(payload: bytes, public_key: Ed25519PublicKey) -> Envelope:
    """Parse, check the shape and verify the signature; validate the body for its type."""
    obj = _load(payload, "downlink")
    where = "downlink"
    type_ = _field(obj, "type", str, where)
    if type_ not in DOWN_TYPES:
        raise ProtocolError(f"downlink type {type_!r:.40} is unknown (known: {', '.join(DOWN_TYPES)})")
    msg_id = _match(obj, "id", _ID_RE, where, "1-64 characters of [A-Za-z0-9._-]")
    target = _field(obj, "target", str, where)
    if not ((target.startswith("t:") and _TID_RE.match(target[2:])) or
            (target.startswith("e:") and _EID_RE.match(target[2:]))):
        raise ProtocolError(f"downlink target {target!r:.40} is not t:<12 digits> or e:<8 digits>")
    issued_at = parse_time(_field(obj, "issued_at", str, where), "downlink issued_at")
    body = _field(obj, "body", dict, where)
    sig_text = _field(obj, "sig", str, where)
    extra = set(obj) - {"v", "type", "id", "target", "issued_at", "body", "sig"}
    if extra:
        raise ProtocolError(f"downlink has unknown field(s) {', '.join(sorted(extra))[:60]}")
    try:
        sig = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("downlink sig is not base64") from None
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    try:
        public_key.verify(sig, signed_bytes(unsigned))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"downlink {type_} {msg_id}: signature does not verify with the platform key") from None
    BODY_CHECKS[type_](body)
    return Envelope(type_, msg_id, target, issued_at, body)


def _check_ack(body: dict[str, Any]) -> None:
    _int(body, "acked_seq", "ack")
    _match(body, "acked_hash", _HASH_RE, "ack", "64 lowercase hex digits")
    _field(body, "problem", str, "ack", optional=True)


def _check_snapshot(body: dict[str, Any]) -> None:
    w = "blacklist.snapshot"
    _match(body, "enterprise_id", _EID_RE, w, "8 digits")
    version = _int(body, "version", w, 1)
    groups = _field(body, "groups", list, w)
    total = 0
    for g in groups:
        if not isinstance(g, dict):
            raise ProtocolError(f"{w}: every group must be an object")
        reason = _field(g, "reason", str, w)
        if not reason:
            raise ProtocolError(f"{w}: group reason must not be empty")
        listed = _int(g, "listed_in_version", w, 1)
        if listed > version:
            raise ProtocolError(f"{w}: listed_in_version {listed} is after the snapshot version {version}")
        asns = _field(g, "asns", str, w)
        # base64 of n*8 bytes has length 4*ceil(8n/3); decoding is deferred to snapshot_entries.
        raw_len = len(asns) // 4 * 3 - asns[-2:].count("=") if asns else 0
        if len(asns) % 4 or raw_len % 8:
            raise ProtocolError(f"{w}: group asns must be base64 of whole 8-byte ASNs")
        total += raw_len // 8
    if _int(body, "count", w) != total:
        raise ProtocolError(f"{w}: count {body['count']} does not match the {total} ASNs in the groups")


def snapshot_entries(body: dict[str, Any]) -> Iterator[tuple[bytes, str, int]]:
    """Yield (asn bytes, reason, listed_in_version) from a checked snapshot body, lazily."""
    for g in body["groups"]:
        try:
            raw = base64.b64decode(g["asns"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("blacklist.snapshot: group asns is not valid base64") from None
        reason, listed = g["reason"], g["listed_in_version"]
        for i in range(0, len(raw), 8):
            yield raw[i:i + 8], reason, listed


def encode_asn_group(asns: list[bytes]) -> str:
    return base64.b64encode(b"".join(asns)).decode()


def _check_delta(body: dict[str, Any]) -> None:
    w = "blacklist.delta"
    _match(body, "enterprise_id", _EID_RE, w, "8 digits")
    base = _int(body, "base_version", w)
    version = _int(body, "version", w, 1)
    if version <= base:
        raise ProtocolError(f"{w}: version {version} must be greater than base_version {base}")
    added = _field(body, "added", list, w)
    for a in added:
        if not isinstance(a, dict):
            raise ProtocolError(f"{w}: every added entry must be an object")
        _match(a, "asn", _ASN_RE, w, "16 uppercase hex digits")
        if not _field(a, "reason", str, w):
            raise ProtocolError(f"{w}: added reason must not be empty")
        listed = _int(a, "listed_in_version", w, 1)
        if listed > version:
            raise ProtocolError(f"{w}: listed_in_version {listed} is after the delta version {version}")
    removed = _field(body, "removed", list, w)
    for r in removed:
        if not isinstance(r, str) or not _ASN_RE.match(r):
            raise ProtocolError(f"{w}: removed entries must be 16 uppercase hex digits")
    if {a["asn"] for a in added} & set(removed):
        raise ProtocolError(f"{w}: an ASN is both added and removed")


def _check_config(body: dict[str, Any]) -> None:
    _match(body, "enterprise_id", _EID_RE, "config", "8 digits")
    _int(body, "version", "config", 1)
    _field(body, "document", dict, "config")


def _check_card_action(body: dict[str, Any]) -> None:
    w = "card_action"
    _match(body, "action_id", _ID_RE, w, "1-64 characters of [A-Za-z0-9._-]")
    _match(body, "asn", _ASN_RE, w, "16 uppercase hex digits")
    if not _field(body, "action", str, w):
        raise ProtocolError(f"{w}: action must not be empty")
    _field(body, "params", dict, w)


def _check_card_action_cancel(body: dict[str, Any]) -> None:
    w = "card_action.cancel"
    _match(body, "action_id", _ID_RE, w, "1-64 characters of [A-Za-z0-9._-]")
    _match(body, "asn", _ASN_RE, w, "16 uppercase hex digits")
    if not _field(body, "action", str, w):
        raise ProtocolError(f"{w}: action must not be empty")


def _check_time(body: dict[str, Any]) -> None:
    parse_time(_field(body, "platform_time", str, "time"), "time platform_time")


BODY_CHECKS = {"ack": _check_ack, "blacklist.snapshot": _check_snapshot, "blacklist.delta": _check_delta,
               "config": _check_config, "card_action": _check_card_action,
               "card_action.cancel": _check_card_action_cancel, "time": _check_time}


# --------------------------------------------------------------------------------------------
# Uplink payloads (not signed: the broker authenticates the terminal by its TLS client
# certificate and its ACL lets it publish only under its own terminal ID)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WireEvent:
    seq: int
    time: str
    kind: str
    asn: str | None
    reason_code: str
    message: str
    detail: str
    prev_hash: str
    hash: str


def encode_events(terminal_id: str, events: list[WireEvent]) -> bytes:
    return canonical({"v": PROTOCOL_VERSION, "type": "events", "terminal_id": terminal_id,
                      "events": [[e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail,
                                  e.prev_hash, e.hash] for e in events]})


def decode_events(payload: bytes) -> tuple[str, list[WireEvent]]:
    """(terminal_id, events) of an upload batch: seqs contiguous and ascending, every field typed."""
    obj = _load(payload, "events")
    w = "events"
    if obj.get("type") != "events":
        raise ProtocolError("events payload must have type 'events'")
    tid = _match(obj, "terminal_id", _TID_RE, w, "12 digits")
    rows = _field(obj, "events", list, w)
    if not rows or len(rows) > MAX_BATCH_EVENTS:
        raise ProtocolError(f"events: a batch holds 1..{MAX_BATCH_EVENTS} events, got {len(rows)}")
    out: list[WireEvent] = []
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != 9:
            raise ProtocolError(f"events[{i}] must be a list of 9 fields")
        seq, time, kind, asn, reason, message, detail, prev_hash, hash_ = r
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= 2**63 - 1:
            raise ProtocolError(f"events[{i}]: seq must be a positive integer")
        if out and seq != out[-1].seq + 1:
            raise ProtocolError(f"events[{i}]: seq {seq} does not follow {out[-1].seq}")
        if not all(isinstance(x, str) for x in (time, kind, reason, message, detail, prev_hash, hash_)):
            raise ProtocolError(f"events[{i}]: time, kind, reason_code, message, detail and hashes must be text")
        if asn is not None and not (isinstance(asn, str) and _ASN_RE.match(asn)):
            raise ProtocolError(f"events[{i}]: asn must be null or 16 uppercase hex digits")
        if not _HASH_RE.match(prev_hash) or not _HASH_RE.match(hash_):
            raise ProtocolError(f"events[{i}]: hashes must be 64 lowercase hex digits")
        out.append(WireEvent(seq, time, kind, asn, reason, message, detail, prev_hash, hash_))
    return tid, out


def encode_status(terminal_id: str, state: str, at: datetime | None, reason: str = "") -> bytes:
    body = {"v": PROTOCOL_VERSION, "type": "status", "terminal_id": terminal_id, "state": state, "reason": reason}
    if at is not None:
        body["at"] = format_time(at)
    return canonical(body)


def decode_status(payload: bytes) -> dict[str, Any]:
    obj = _load(payload, "status")
    _match(obj, "terminal_id", _TID_RE, "status", "12 digits")
    if _field(obj, "state", str, "status") not in ("online", "offline"):
        raise ProtocolError("status: state must be online or offline")
    _field(obj, "reason", str, "status", optional=True)
    if "at" in obj:
        parse_time(obj["at"], "status at")
    return obj


@dataclass(frozen=True)
class Heartbeat:
    terminal_id: str
    sent_at: str
    head_seq: int
    acked_seq: int
    backlog: int
    blacklist_version: int
    config_version: int
    last_tap_at: str | None


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return canonical({"v": PROTOCOL_VERSION, "type": "heartbeat", **hb.__dict__})


def decode_heartbeat(payload: bytes) -> Heartbeat:
    obj = _load(payload, "heartbeat")
    w = "heartbeat"
    tid = _match(obj, "terminal_id", _TID_RE, w, "12 digits")
    parse_time(_field(obj, "sent_at", str, w), "heartbeat sent_at")
    last_tap = _field(obj, "last_tap_at", (str, type(None)), w)
    if last_tap is not None:
        parse_time(last_tap, "heartbeat last_tap_at")
    return Heartbeat(tid, obj["sent_at"], _int(obj, "head_seq", w), _int(obj, "acked_seq", w), _int(obj, "backlog", w),
                     _int(obj, "blacklist_version", w), _int(obj, "config_version", w), last_tap)


@dataclass(frozen=True)
class Request:
    terminal_id: str
    want: str
    blacklist_version: int
    config_version: int


def encode_request(req: Request) -> bytes:
    return canonical({"v": PROTOCOL_VERSION, "type": "request", **req.__dict__})


def decode_request(payload: bytes) -> Request:
    obj = _load(payload, "request")
    w = "request"
    tid = _match(obj, "terminal_id", _TID_RE, w, "12 digits")
    want = _field(obj, "want", str, w)
    if want not in REQUEST_WANTS:
        raise ProtocolError(f"request: want {want!r:.30} is not one of {', '.join(REQUEST_WANTS)}")
    return Request(tid, want, _int(obj, "blacklist_version", w), _int(obj, "config_version", w))
