"""Sync protocol v1 between terminal agents and the platform: topics, JSON payloads, signed envelopes.

Pure functions on bytes and dicts (no I/O, no clock); the byte-exact specification is docs/sync-protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.event_kinds import KNOWN_KINDS

PROTOCOL_VERSION = 1
TOPIC_ROOT = "onecard/v1"
# Domain tag in front of every signed byte string: a signature over a sync envelope can never be
# presented as a signature over anything else this platform key signs (and vice versa).
SIGN_DOMAIN = b"onecard.sync.v1\x00"
MAX_BATCH_EVENTS = 5000  # a parser limit, above any sane batch size, so a hostile batch cannot balloon
MAX_RECORD_BYTES = 65_536  # one uploaded record's text fields together (UTF-8 bytes)
MAX_UPLINK_BYTES = 16 * 1024 * 1024  # any uplink payload, checked before it is parsed
MAX_PROBLEM_CHARS = 500
# Why an ack does not move as far as the batch went (body field "reason", with the sentence in "problem").
ACK_REASONS = ("chain_broken", "diverged", "pending_gap", "pending_bytes")

UP_EVENTS, UP_HEARTBEAT, UP_STATUS, UP_REQUEST = "up/events", "up/heartbeat", "up/status", "up/request"
DOWN_ACK, DOWN_MSG = "down/ack", "down/msg"
UP_LEAVES = (UP_EVENTS, UP_HEARTBEAT, UP_STATUS, UP_REQUEST)

DOWN_TYPES = (
    "ack",
    "blacklist.snapshot",
    "blacklist.delta",
    "config",
    "card_action",
    "card_action.cancel",
    "time",
    "meal_usage",
    "passage",
    "subsidy_allowances",
)
PASSAGE_DIRECTIONS = ("entry", "exit")
REQUEST_WANTS = ("sync", "blacklist.snapshot")

_TID_RE = re.compile(r"[0-9]{12}\Z")
_EID_RE = re.compile(r"[0-9]{8}\Z")
_ASN_RE = re.compile(r"[0-9A-F]{16}\Z")
_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")
_INSTANCE_RE = re.compile(r"[0-9a-f]{32}\Z")


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
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: object, where: str) -> datetime:
    if not isinstance(text, str) or not _TIME_RE.match(text):
        raise ProtocolError(f"{where} must be a UTC time like 2026-11-23T02:00:00.000000Z, got {text!r:.60}")
    # The pattern fixes every digit's place, so the fields are read by position (strptime cost a quarter of
    # the platform's ingest time); datetime() refuses what is not a real date/time (month 13, Feb 30, second 60).
    # One text per instant follows: a time read this way always formats back to exactly `text`.
    try:
        return datetime(
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
            int(text[20:26]),
            tzinfo=timezone.utc,
        )
    except ValueError:
        raise ProtocolError(f"{where} is not a real date/time: {text!r}") from None


def _no_constant(name: str) -> NoReturn:
    # NaN/Infinity are not JSON and cannot be re-encoded canonically for signature checks.
    raise ProtocolError(f"payload contains {name}, which is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = {}
    for k, v in pairs:
        if k in obj:
            # Parsers differ on which copy wins; one text must mean one thing everywhere, so neither wins.
            raise ProtocolError(f"payload has the key {k!r:.40} twice")
        obj[k] = v
    return obj


_plain_loads = json.JSONDecoder().decode
_canonical_text = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)


def _load(payload: bytes, what: str, type_: str | None = None) -> dict[str, Any]:
    if not isinstance(payload, (bytes, bytearray)):
        raise ProtocolError(f"{what} payload must be bytes")
    if type_ is not None and len(payload) > MAX_UPLINK_BYTES:  # uplinks; a signed snapshot may be larger
        raise ProtocolError(f"{what} payload is {len(payload)} bytes, more than {MAX_UPLINK_BYTES}")
    try:
        obj = _loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what} payload is not UTF-8 JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} payload must be a JSON object")
    v = obj.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:  # true is not 1, 1.0 is not 1
        raise ProtocolError(f"{what} payload has protocol version {v!r:.20}, expected the integer {PROTOCOL_VERSION}")
    if type_ is not None and obj.get("type") != type_:
        raise ProtocolError(f"{what} payload must have type {type_!r}, got {obj.get('type')!r:.30}")
    return obj


def _exact(obj: dict[str, Any], where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Every required key present, nothing else: an unknown field is refused, never ignored."""
    missing = [k for k in required if k not in obj]
    if missing:
        raise ProtocolError(f"{where}: field {missing[0]!r} is missing")
    extra = set(obj) - set(required) - set(optional)
    if extra:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(sorted(map(repr, extra)))[:80]}")


def _field(
    obj: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    *,
    optional: bool = False,
    default: Any = None,
) -> Any:
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


def _match(
    obj: dict[str, Any], key: str, pattern: re.Pattern[str], where: str, what: str, *, optional: bool = False
) -> Any:
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


def seal(
    key: Ed25519PrivateKey, type_: str, target: str, body: dict[str, Any], issued_at: datetime, msg_id: str
) -> bytes:
    """Sign and encode one downlink message (the platform side); `msg_id` is fresh and random (the caller draws it:
    this module reads no clock and no randomness)."""
    if type_ not in DOWN_TYPES:
        raise ValueError(f"unknown downlink type {type_!r}")
    unsigned = {
        "v": PROTOCOL_VERSION,
        "type": type_,
        "id": msg_id,
        "target": target,
        "issued_at": format_time(issued_at),
        "body": body,
    }
    sig = key.sign(signed_bytes(unsigned))
    return canonical({**unsigned, "sig": base64.b64encode(sig).decode()})


def open_envelope(payload: bytes, public_key: Ed25519PublicKey) -> Envelope:
    """Parse, check the shape and verify the signature; validate the body for its type."""
    obj = _load(payload, "downlink")
    where = "downlink"
    _exact(obj, where, ("v", "type", "id", "target", "issued_at", "body", "sig"))
    type_ = _field(obj, "type", str, where)
    if type_ not in DOWN_TYPES:
        raise ProtocolError(f"downlink type {type_!r:.40} is unknown (known: {', '.join(DOWN_TYPES)})")
    msg_id = _match(obj, "id", _ID_RE, where, "1-64 characters of [A-Za-z0-9._-]")
    target = _field(obj, "target", str, where)
    if not (
        (target.startswith("t:") and _TID_RE.match(target[2:]))
        or (target.startswith("e:") and _EID_RE.match(target[2:]))
    ):
        raise ProtocolError(f"downlink target {target!r:.40} is not t:<12 digits> or e:<8 digits>")
    issued_at = parse_time(_field(obj, "issued_at", str, where), "downlink issued_at")
    body = _field(obj, "body", dict, where)
    sig_text = _field(obj, "sig", str, where)
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
    _exact(body, "ack", ("acked_seq", "acked_hash"), ("problem", "reason"))
    _int(body, "acked_seq", "ack")
    _match(body, "acked_hash", _HASH_RE, "ack", "64 lowercase hex digits")
    if ("problem" in body) != ("reason" in body):
        raise ProtocolError("ack: problem and reason come together")
    if "problem" in body:
        problem = _field(body, "problem", str, "ack")
        if not problem or len(problem) > MAX_PROBLEM_CHARS:
            raise ProtocolError(f"ack: problem must be 1..{MAX_PROBLEM_CHARS} characters")
        if _field(body, "reason", str, "ack") not in ACK_REASONS:
            raise ProtocolError(f"ack: reason {body['reason']!r:.30} is not one of {', '.join(ACK_REASONS)}")


@dataclass(frozen=True, order=True)
class Epoch:
    """The platform's epoch: its instance identity and generation (bumped by `onecard platform restore-epoch`)."""

    generation: int
    instance: str

    def to_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "generation": self.generation}


def parse_epoch(value: Any, where: str) -> Epoch:
    if not isinstance(value, dict):
        raise ProtocolError(f'{where}: epoch must be an object {{"instance": 32 hex, "generation": N}}')
    _exact(value, f"{where} epoch", ("instance", "generation"))
    return Epoch(
        _int(value, "generation", f"{where} epoch", 1),
        _match(value, "instance", _INSTANCE_RE, f"{where} epoch", "32 lowercase hex digits"),
    )


def _check_snapshot(body: dict[str, Any]) -> None:
    w = "blacklist.snapshot"
    _exact(body, w, ("enterprise_id", "epoch", "version", "count", "groups"))
    _match(body, "enterprise_id", _EID_RE, w, "8 digits")
    parse_epoch(body["epoch"], w)
    version = _int(body, "version", w, 1)
    groups = _field(body, "groups", list, w)
    total = 0
    for g in groups:
        if not isinstance(g, dict):
            raise ProtocolError(f"{w}: every group must be an object")
        _exact(g, f"{w} group", ("reason", "listed_in_version", "asns"))
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
            yield raw[i : i + 8], reason, listed


def encode_asn_group(asns: list[bytes]) -> str:
    return base64.b64encode(b"".join(asns)).decode()


def _check_delta(body: dict[str, Any]) -> None:
    w = "blacklist.delta"
    _exact(body, w, ("enterprise_id", "epoch", "base_version", "version", "added", "removed"))
    _match(body, "enterprise_id", _EID_RE, w, "8 digits")
    parse_epoch(body["epoch"], w)
    base = _int(body, "base_version", w)
    version = _int(body, "version", w, 1)
    if version <= base:
        raise ProtocolError(f"{w}: version {version} must be greater than base_version {base}")
    added = _field(body, "added", list, w)
    for a in added:
        if not isinstance(a, dict):
            raise ProtocolError(f"{w}: every added entry must be an object")
        _exact(a, f"{w} added entry", ("asn", "reason", "listed_in_version"))
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
    _exact(body, "config", ("enterprise_id", "version", "document"))
    _match(body, "enterprise_id", _EID_RE, "config", "8 digits")
    _int(body, "version", "config", 1)
    _field(body, "document", dict, "config")


_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def _date(obj: dict[str, Any], key: str, where: str) -> str:
    text: str = _match(obj, key, _DATE_RE, where, "a date YYYY-MM-DD")
    try:
        if datetime.strptime(text, "%Y-%m-%d").strftime("%Y-%m-%d") != text:
            raise ValueError
    except ValueError:
        raise ProtocolError(f"{where}: {key} {text!r} is not a real date") from None
    return text


def _check_topup_params(params: dict[str, Any]) -> None:
    w = "card_action topup params"
    _exact(params, w, ("amount",))
    amount = _int(params, "amount", w, 1)
    if amount > 2**31 - 1:
        raise ProtocolError(f"{w}: amount {amount} fen does not fit a purse")


def _check_rights_params(params: dict[str, Any]) -> None:
    w = "card_action rights params"
    _exact(params, w, ("door_groups", "valid_from", "valid_to", "time_profile"))
    groups = _field(params, "door_groups", list, w)
    if not groups or any(type(g) is not int or not 1 <= g <= 64 for g in groups) or groups != sorted(set(groups)):
        raise ProtocolError(f"{w}: door_groups must be distinct ascending integers 1..64")
    if _date(params, "valid_to", w) < _date(params, "valid_from", w):
        raise ProtocolError(f"{w}: valid_to is before valid_from")
    if _int(params, "time_profile", w) > 255:
        raise ProtocolError(f"{w}: time_profile must be 0..255")


# Card actions the terminal carries out, each with the exact params it reads.
CARD_ACTIONS = {"topup": _check_topup_params, "rights": _check_rights_params}


def _check_card_action(body: dict[str, Any]) -> None:
    w = "card_action"
    _exact(body, w, ("action_id", "asn", "action", "params"))
    _match(body, "action_id", _ID_RE, w, "1-64 characters of [A-Za-z0-9._-]")
    _match(body, "asn", _ASN_RE, w, "16 uppercase hex digits")
    action = _field(body, "action", str, w)
    if action not in CARD_ACTIONS:
        raise ProtocolError(f"{w}: action {action!r:.30} is not one of {', '.join(CARD_ACTIONS)}")
    CARD_ACTIONS[action](_field(body, "params", dict, w))


def _check_card_action_cancel(body: dict[str, Any]) -> None:
    w = "card_action.cancel"
    _exact(body, w, ("action_id", "asn", "action"))
    _match(body, "action_id", _ID_RE, w, "1-64 characters of [A-Za-z0-9._-]")
    _match(body, "asn", _ASN_RE, w, "16 uppercase hex digits")
    if _field(body, "action", str, w) not in CARD_ACTIONS:
        raise ProtocolError(f"{w}: action {body['action']!r:.30} is not one of {', '.join(CARD_ACTIONS)}")


MAX_MEAL_USAGE_ROWS = 5000
_PERIOD_RE = re.compile(r"[A-Za-z0-9_]{0,20}\Z")


def _check_meal_usage(body: dict[str, Any]) -> None:
    """The platform's confirmed canteen usage of some cards on one service day, per till and meal period
    (docs/sync-protocol.md "Meal usage across tills"); period "" is spending outside any meal period."""
    w = "meal_usage"
    _exact(body, w, ("enterprise_id", "day", "usage"))
    _match(body, "enterprise_id", _EID_RE, w, "8 decimal digits")
    _date(body, "day", w)
    rows = _field(body, "usage", list, w)
    if len(rows) > MAX_MEAL_USAGE_ROWS:
        raise ProtocolError(f"{w}: {len(rows)} usage rows, more than {MAX_MEAL_USAGE_ROWS}")
    seen = set()
    for i, row in enumerate(rows):
        rw = f"{w} usage[{i}]"
        if not isinstance(row, dict):
            raise ProtocolError(f"{rw} must be an object")
        _exact(row, rw, ("asn", "terminal_id", "period", "count", "amount"))
        _match(row, "asn", _ASN_RE, rw, "16 uppercase hex digits")
        _match(row, "terminal_id", _TID_RE, rw, "12 decimal digits")
        _match(row, "period", _PERIOD_RE, rw, "0-20 characters of [A-Za-z0-9_]")
        _int(row, "count", rw)
        _int(row, "amount", rw)
        key = (row["asn"], row["terminal_id"], row["period"])
        if key in seen:
            raise ProtocolError(f"{rw}: a second row for card {key[0]}, terminal {key[1]}, period {key[2]!r}")
        seen.add(key)


MAX_ALLOWANCES = 20_000
SUBSIDY_POLICIES = ("subsidy_first", "cash_first")


def _check_subsidy_allowances(body: dict[str, Any]) -> None:
    """The enterprise's current subsidy allowances (docs/canteen.md "Subsidy wallet"): every allowance not yet
    expired, per card, with `collected` once the platform received its load, and its per-card `number` (1..65535,
    issue order; the card loads an allowance only above the last number it loaded: card-application.md 5.6); the
    whole list each time (the newest message replaces the one before)."""
    w = "subsidy_allowances"
    _exact(body, w, ("enterprise_id", "allowances"))
    _match(body, "enterprise_id", _EID_RE, w, "8 decimal digits")
    rows = _field(body, "allowances", list, w)
    if len(rows) > MAX_ALLOWANCES:
        raise ProtocolError(f"{w}: {len(rows)} allowances, more than {MAX_ALLOWANCES}")
    seen = set()
    numbers = set()
    for i, row in enumerate(rows):
        rw = f"{w} allowances[{i}]"
        if not isinstance(row, dict):
            raise ProtocolError(f"{rw} must be an object")
        _exact(row, rw, ("allowance_id", "asn", "number", "amount", "expiry", "policy", "collected"))
        _match(row, "allowance_id", _ID_RE, rw, "1-64 characters of [A-Za-z0-9._-]")
        _match(row, "asn", _ASN_RE, rw, "16 uppercase hex digits")
        if _int(row, "amount", rw, 1) > 0xFFFFFFFF:
            raise ProtocolError(f"{rw}: amount above 4294967295 fen")
        _date(row, "expiry", rw)
        if _field(row, "policy", str, rw) not in SUBSIDY_POLICIES:
            raise ProtocolError(f"{rw}: policy {row['policy']!r:.30} is not subsidy_first or cash_first")
        _field(row, "collected", bool, rw)
        if _int(row, "number", rw, 1) > 0xFFFF:
            raise ProtocolError(f"{rw}: number above 65535 (the card keeps 2 bytes)")
        if row["allowance_id"] in seen:
            raise ProtocolError(f"{rw}: allowance {row['allowance_id']} listed twice")
        if (row["asn"], row["number"]) in numbers:
            raise ProtocolError(f"{rw}: card {row['asn']} has two allowances numbered {row['number']}")
        seen.add(row["allowance_id"])
        numbers.add((row["asn"], row["number"]))


def _check_time(body: dict[str, Any]) -> None:
    _exact(body, "time", ("platform_time",))
    parse_time(_field(body, "platform_time", str, "time"), "time platform_time")


def _check_passage(body: dict[str, Any]) -> None:
    """A card's passage through a door of an anti-passback area, relayed to the enterprise's terminals."""
    w = "passage"
    _exact(body, w, ("enterprise_id", "area", "asn", "direction", "time", "terminal_id", "seq"))
    _match(body, "enterprise_id", _EID_RE, w, "8 digits")
    area = _int(body, "area", w, 1)
    if area > 255:
        raise ProtocolError(f"{w}: area {area} is not 1..255")
    _match(body, "asn", _ASN_RE, w, "16 uppercase hex digits")
    if _field(body, "direction", str, w) not in PASSAGE_DIRECTIONS:
        raise ProtocolError(f"{w}: direction {body['direction']!r:.30} is not one of entry, exit")
    parse_time(_field(body, "time", str, w), f"{w} time")
    _match(body, "terminal_id", _TID_RE, w, "12 digits")
    _int(body, "seq", w, 1)


BODY_CHECKS = {
    "ack": _check_ack,
    "blacklist.snapshot": _check_snapshot,
    "blacklist.delta": _check_delta,
    "config": _check_config,
    "card_action": _check_card_action,
    "card_action.cancel": _check_card_action_cancel,
    "time": _check_time,
    "meal_usage": _check_meal_usage,
    "passage": _check_passage,
    "subsidy_allowances": _check_subsidy_allowances,
}


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
    return canonical(
        {
            "v": PROTOCOL_VERSION,
            "type": "events",
            "terminal_id": terminal_id,
            "events": [
                [e.seq, e.time, e.kind, e.asn, e.reason_code, e.message, e.detail, e.prev_hash, e.hash] for e in events
            ],
        }
    )


# An events upload may travel compressed ([sync].compress_uploads): the zlib stream (RFC 1950) of exactly the JSON
# above. The first byte tells the two apart: JSON is an object, "{" (7B); a zlib stream of deflate with a 32 KiB
# window starts with 78. Whatever follows is refused unless it is one whole stream that inflates to at most
# MAX_UPLINK_BYTES.
ZLIB_FIRST_BYTE = 0x78


def compress_upload(payload: bytes) -> bytes:
    """The compressed form of an encoded events upload (docs/sync-protocol.md "events")."""
    return zlib.compress(payload, 6)


def _inflated(payload: bytes, what: str) -> bytes:
    """An uplink payload as JSON bytes: itself, or the inflated zlib stream it is (bounded, whole, checked)."""
    if not isinstance(payload, (bytes, bytearray)):
        raise ProtocolError(f"{what} payload must be bytes")
    if len(payload) > MAX_UPLINK_BYTES:
        raise ProtocolError(f"{what} payload is {len(payload)} bytes, more than {MAX_UPLINK_BYTES}")
    if payload[:1] != bytes([ZLIB_FIRST_BYTE]):
        return bytes(payload)
    stream = zlib.decompressobj()
    try:
        out = stream.decompress(payload, MAX_UPLINK_BYTES + 1)
    except zlib.error as exc:
        raise ProtocolError(f"{what} payload is not a valid zlib stream ({exc})") from None
    if len(out) > MAX_UPLINK_BYTES or stream.unconsumed_tail:
        raise ProtocolError(f"{what} payload inflates to more than {MAX_UPLINK_BYTES} bytes")
    if not stream.eof:
        raise ProtocolError(f"{what} payload is a truncated zlib stream")
    if stream.unused_data:
        raise ProtocolError(f"{what} payload has {len(stream.unused_data)} bytes after its zlib stream")
    return out


def _check_detail(text: str, where: str) -> None:
    """`detail` is the canonical JSON text of an object, exactly as the terminal's log stores and hashes it."""
    # Fast path, for the text of an object that is already canonical: the plain parser (no per-object hook),
    # re-encoded. Whatever it accepts the strict path accepts too: a canonical encoding never repeats a key
    # and never holds NaN, so a text with either cannot equal its re-encoding. Anything else takes the strict
    # path, which says what is wrong.
    try:
        value = _plain_loads(text)
        if type(value) is dict and _canonical_text(value) == text:
            return
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        value = _loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(f"{where}: detail is not JSON text") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: detail must be the JSON text of an object")
    try:
        again = canonical(value).decode()
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"{where}: detail cannot be written canonically") from None
    if again != text:
        raise ProtocolError(f"{where}: detail is not canonical JSON (sorted keys, no spaces, UTF-8 as is)")


def decode_events(payload: bytes) -> tuple[str, list[WireEvent]]:
    """(terminal_id, events) of an upload batch, plain or compressed: seqs contiguous and ascending, every field
    typed."""
    obj = _load(_inflated(payload, "events"), "events", "events")
    w = "events"
    _exact(obj, w, ("v", "type", "terminal_id", "events"))
    tid = _match(obj, "terminal_id", _TID_RE, w, "12 digits")
    rows = _field(obj, "events", list, w)
    if not rows or len(rows) > MAX_BATCH_EVENTS:
        raise ProtocolError(f"events: a batch holds 1..{MAX_BATCH_EVENTS} events, got {len(rows)}")
    out: list[WireEvent] = []
    # Every record of every upload passes here: the checks are written out (no per-record f-string or generator);
    # a record's place, events[i], is only spelled out for the error.
    asn_re, hash_re, kinds = _ASN_RE.match, _HASH_RE.match, KNOWN_KINDS
    last = None
    for i, r in enumerate(rows):
        if type(r) is not list or len(r) != 9:
            raise ProtocolError(f"events[{i}] must be a list of 9 fields")
        seq, time, kind, asn, reason, message, detail, prev_hash, hash_ = r
        if type(seq) is not int or not 1 <= seq <= 2**63 - 1:
            raise ProtocolError(f"events[{i}]: seq must be a positive integer")
        if last is not None and seq != last + 1:
            raise ProtocolError(f"events[{i}]: seq {seq} does not follow {last}")
        last = seq
        if not (
            type(time) is str
            and type(kind) is str
            and type(reason) is str
            and type(message) is str
            and type(detail) is str
            and type(prev_hash) is str
            and type(hash_) is str
        ):
            raise ProtocolError(f"events[{i}]: time, kind, reason_code, message, detail and hashes must be text")
        try:
            parse_time(time, "")
        except ProtocolError:
            parse_time(time, f"events[{i}] time")  # raises again, naming the record
        if kind not in kinds:
            raise ProtocolError(f"events[{i}]: kind {kind!r:.40} is not a known event kind (common/event_kinds.py)")
        if asn is not None and not (type(asn) is str and asn_re(asn)):
            raise ProtocolError(f"events[{i}]: asn must be null or 16 uppercase hex digits")
        if not reason:
            raise ProtocolError(f"events[{i}]: reason_code must not be empty")
        if not hash_re(prev_hash) or not hash_re(hash_):
            raise ProtocolError(f"events[{i}]: hashes must be 64 lowercase hex digits")
        try:
            size = len(kind.encode()) + len(reason.encode()) + len(message.encode()) + len(detail.encode())
        except UnicodeEncodeError:
            raise ProtocolError(f"events[{i}]: text is not valid Unicode (lone surrogate)") from None
        if size > MAX_RECORD_BYTES:
            raise ProtocolError(f"events[{i}]: record text is {size} bytes, more than {MAX_RECORD_BYTES}")
        try:
            _check_detail(detail, "")
        except ProtocolError:
            _check_detail(detail, f"events[{i}]")  # raises again, naming the record
        out.append(WireEvent(seq, time, kind, asn, reason, message, detail, prev_hash, hash_))
    return tid, out


def encode_status(terminal_id: str, state: str, at: datetime | None, reason: str = "") -> bytes:
    body = {"v": PROTOCOL_VERSION, "type": "status", "terminal_id": terminal_id, "state": state, "reason": reason}
    if at is not None:
        body["at"] = format_time(at)
    return canonical(body)


def decode_status(payload: bytes) -> dict[str, Any]:
    obj = _load(payload, "status", "status")
    _exact(obj, "status", ("v", "type", "terminal_id", "state", "reason"), ("at",))
    _match(obj, "terminal_id", _TID_RE, "status", "12 digits")
    if _field(obj, "state", str, "status") not in ("online", "offline"):
        raise ProtocolError("status: state must be online or offline")
    if len(_field(obj, "reason", str, "status")) > MAX_PROBLEM_CHARS:
        raise ProtocolError(f"status: reason is longer than {MAX_PROBLEM_CHARS} characters")
    if "at" in obj:
        parse_time(obj["at"], "status at")
    return obj


EMPTY_DIGEST = "0" * 64
_DIGEST_DOMAIN = b"onecard.blacklist.v1\x00"


def blacklist_entry_hash(asn: bytes, reason: str, listed_in_version: int) -> int:
    """One entry's share of a list digest (docs/sync-protocol.md, "Blacklist digest")."""
    data = reason.encode()
    h = hashlib.sha256(
        _DIGEST_DOMAIN + bytes(asn) + len(data).to_bytes(4, "big") + data + listed_in_version.to_bytes(8, "big")
    )
    return int.from_bytes(h.digest(), "big")


def digest_of(entries: Iterable[tuple[Any, ...]]) -> str:
    """The digest of a whole list from (asn, reason, listed_in_version) rows, streamed."""
    total, domain, sha = 0, _DIGEST_DOMAIN, hashlib.sha256
    for asn, reason, listed in entries:
        data = reason.encode()
        total += int.from_bytes(
            sha(domain + bytes(asn) + len(data).to_bytes(4, "big") + data + listed.to_bytes(8, "big")).digest(), "big"
        )
    return f"{total % (1 << 256):064x}"


def digest_add(digest: str, entry_hash: int, sign: int = 1) -> str:
    """The digest of a list with one entry added (sign 1) or removed (sign -1): the sum of the entries' hashes
    modulo 2**256, so it does not depend on order and is updated per entry."""
    return f"{(int(digest, 16) + sign * entry_hash) % (1 << 256):064x}"


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
    blacklist_epoch: Epoch | None = None  # the epoch of the list held (None: a list from before epochs, or none)
    blacklist_digest: str = EMPTY_DIGEST  # digest of the entries held


def _epoch_json(epoch: Epoch | None) -> dict[str, Any] | None:
    return epoch.to_json() if epoch is not None else None


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return canonical(
        {"v": PROTOCOL_VERSION, "type": "heartbeat", **hb.__dict__, "blacklist_epoch": _epoch_json(hb.blacklist_epoch)}
    )


def _optional_epoch(obj: dict[str, Any], key: str, where: str) -> Epoch | None:
    value = obj[key]
    return None if value is None else parse_epoch(value, where)


def decode_heartbeat(payload: bytes) -> Heartbeat:
    obj = _load(payload, "heartbeat", "heartbeat")
    w = "heartbeat"
    _exact(
        obj,
        w,
        (
            "v",
            "type",
            "terminal_id",
            "sent_at",
            "head_seq",
            "acked_seq",
            "backlog",
            "blacklist_version",
            "config_version",
            "last_tap_at",
            "blacklist_epoch",
            "blacklist_digest",
        ),
    )
    tid = _match(obj, "terminal_id", _TID_RE, w, "12 digits")
    parse_time(_field(obj, "sent_at", str, w), "heartbeat sent_at")
    last_tap = _field(obj, "last_tap_at", (str, type(None)), w)
    if last_tap is not None:
        parse_time(last_tap, "heartbeat last_tap_at")
    return Heartbeat(
        tid,
        obj["sent_at"],
        _int(obj, "head_seq", w),
        _int(obj, "acked_seq", w),
        _int(obj, "backlog", w),
        _int(obj, "blacklist_version", w),
        _int(obj, "config_version", w),
        last_tap,
        _optional_epoch(obj, "blacklist_epoch", w),
        _match(obj, "blacklist_digest", _HASH_RE, w, "64 lowercase hex digits"),
    )


@dataclass(frozen=True)
class Request:
    terminal_id: str
    want: str
    blacklist_version: int
    config_version: int
    blacklist_epoch: Epoch | None = None


def encode_request(req: Request) -> bytes:
    return canonical(
        {"v": PROTOCOL_VERSION, "type": "request", **req.__dict__, "blacklist_epoch": _epoch_json(req.blacklist_epoch)}
    )


def decode_request(payload: bytes) -> Request:
    obj = _load(payload, "request", "request")
    w = "request"
    _exact(obj, w, ("v", "type", "terminal_id", "want", "blacklist_version", "config_version", "blacklist_epoch"))
    tid = _match(obj, "terminal_id", _TID_RE, w, "12 digits")
    want = _field(obj, "want", str, w)
    if want not in REQUEST_WANTS:
        raise ProtocolError(f"request: want {want!r:.30} is not one of {', '.join(REQUEST_WANTS)}")
    return Request(
        tid,
        want,
        _int(obj, "blacklist_version", w),
        _int(obj, "config_version", w),
        _optional_epoch(obj, "blacklist_epoch", w),
    )
