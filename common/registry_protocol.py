"""The issuing station's registry requests to the platform over MQTT, and the platform's signed answers.

Pure functions on bytes (no I/O, no clock, no randomness: the caller draws the request ID and passes the time); the
byte-exact specification is docs/sync-protocol.md, "Issuing station registry". A station publishes on its own topic
(the broker's ACL lets only the certificate with CN = station ID do so), the platform answers on the station's
down topic with an Ed25519 signature under its own domain tag, echoing the request ID.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.sync_protocol import (
    PROTOCOL_VERSION,
    TOPIC_ROOT,
    ProtocolError,
    SignatureError,
    _field,
    _load,
    _match,
    canonical,
    format_time,
    parse_time,
)

# Not the sync envelopes' tag: a registry answer can never be presented as a blacklist or a card action.
REGISTRY_SIGN_DOMAIN = b"onecard.registry.v1\x00"
UP_REGISTRY, DOWN_REGISTRY = "up/registry", "down/registry"
REQUEST_TYPE, RESPONSE_TYPE = "registry.request", "registry.response"

_SID_RE = re.compile(r"[0-9]{12}\Z")
_EID_RE = re.compile(r"[0-9]{8}\Z")
_ASN_RE = re.compile(r"[0-9A-F]{16}\Z")
_RID_RE = re.compile(r"[0-9a-f]{32}\Z")
_EMPLOYEE_RE = re.compile(r"[\x21-\x7e]{1,16}\Z")
_PHONE_RE = re.compile(r"[0-9+\- ]{0,20}\Z")
_PROOF_RE = re.compile(r"[0-9a-f]{16}\Z")
_CHALLENGE_RE = _PROOF_RE  # the card's 8-byte challenge the void's MAC was computed with
_BCD_DATE_RE = re.compile(r"[0-9]{8}\Z")  # YYYYMMDD as the card's 4 BCD bytes; 00000000: no expiry (empty purse)


@dataclass(frozen=True)
class IntRange:
    """An integer argument (not a boolean) from lo to hi inclusive."""

    lo: int
    hi: int


_KEY_VERSION = IntRange(0, 255)
_COUNTER = IntRange(0, 0xFFFF)
_FEN = IntRange(0, 0xFFFFFFFF)

# op -> its arguments and their patterns (a type: JSON type checked instead; IntRange: an integer in range)
OPS: dict[str, dict[str, re.Pattern[str] | type | IntRange]] = {
    "holder": {"enterprise_id": _EID_RE, "employee_no": _EMPLOYEE_RE},
    "card_of_phone": {"phone": _PHONE_RE},
    "is_registered": {"asn": _ASN_RE},
    "card": {"asn": _ASN_RE},
    "register": {
        "enterprise_id": _EID_RE,
        "employee_no": _EMPLOYEE_RE,
        "asn": _ASN_RE,
        "rights": dict,
        "key_version": _KEY_VERSION,
    },
    "voided": {
        "asn": _ASN_RE,
        "frozen_cents": _FEN,
        "offline_counter": _COUNTER,
        "online_counter": _COUNTER,
        "proof": _PROOF_RE,
        "challenge": _CHALLENGE_RE,
        "key_version": _KEY_VERSION,
    },
    "replace": {"old_asn": _ASN_RE, "new_asn": _ASN_RE, "key_version": _KEY_VERSION},
    "cancel": {"asn": _ASN_RE, "settle": bool},
}


# op -> arguments sent all together or not at all (a `voided` of APPLICATION BLOCK P1 01: the frozen subsidy purse)
OPTIONAL: dict[str, dict[str, re.Pattern[str] | type | IntRange]] = {
    "voided": {
        "subsidy_cents": _FEN,
        "subsidy_expiry": _BCD_DATE_RE,
        "subsidy_offline_counter": _COUNTER,
        "subsidy_online_counter": _COUNTER,
    },
}


def station_topic(station_id: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/s/{station_id}/{leaf}"


def parse_station_topic(topic: str) -> str:
    """The station ID of `onecard/v1/s/<station id>/up/registry`; ProtocolError for any other topic."""
    parts = topic.split("/")
    if (
        len(parts) != 6
        or "/".join(parts[:2]) != TOPIC_ROOT
        or parts[2] != "s"
        or not _SID_RE.match(parts[3])
        or "/".join(parts[4:]) != UP_REGISTRY
    ):
        raise ProtocolError(f"topic {topic!r} is not a station registry topic")
    return parts[3]


@dataclass(frozen=True)
class RegistryRequest:
    id: str
    station: str
    op: str
    args: dict[str, Any]


@dataclass(frozen=True)
class RegistryResponse:
    request_id: str
    station: str
    op: str
    issued_at: datetime
    ok: bool
    result: Any
    error: str


def _check_args(op: str, args: dict[str, Any], where: str) -> dict[str, Any]:
    optional = OPTIONAL.get(op, {})
    spec = dict(OPS[op])
    extra = sorted(set(args) - set(spec) - set(optional))
    if extra:
        raise ProtocolError(f"{where}: unknown argument {extra[0]!r} for {op}")
    given = set(args) & set(optional)
    if given:
        missing = sorted(set(optional) - given)
        if missing:
            raise ProtocolError(f"{where}: field {missing[0]!r} is missing ({', '.join(optional)} go together)")
        spec.update(optional)
    for name, kind in spec.items():
        if isinstance(kind, IntRange):
            value = _field(args, name, int, where)
            if not kind.lo <= value <= kind.hi:
                raise ProtocolError(f"{where}: field {name!r} = {value} is not {kind.lo}..{kind.hi}")
        elif isinstance(kind, type):
            _field(args, name, kind, where)
        else:
            _match(args, name, kind, where, "valid")
    if "subsidy_expiry" in given and args["subsidy_expiry"] != "00000000":
        try:
            datetime.strptime(args["subsidy_expiry"], "%Y%m%d")
        except ValueError:
            raise ProtocolError(
                f"{where}: field 'subsidy_expiry' = {args['subsidy_expiry']!r} is not a date YYYYMMDD or 00000000"
            ) from None
    return args


def encode_request(request_id: str, station_id: str, op: str, args: dict[str, Any]) -> bytes:
    if op not in OPS:
        raise ValueError(f"unknown registry operation {op!r}")
    obj = {"v": PROTOCOL_VERSION, "type": REQUEST_TYPE, "id": request_id, "station": station_id, "op": op, "args": args}
    decode_request(canonical(obj))  # what is sent is what the platform accepts
    return canonical(obj)


def decode_request(payload: bytes) -> RegistryRequest:
    obj = _load(payload, "registry request")
    where = "registry request"
    if obj.get("type") != REQUEST_TYPE:
        raise ProtocolError(f"{where}: type must be {REQUEST_TYPE!r}")
    rid = _match(obj, "id", _RID_RE, where, "32 lowercase hex digits")
    station = _match(obj, "station", _SID_RE, where, "a 12-digit station ID")
    op = _field(obj, "op", str, where)
    if op not in OPS:
        raise ProtocolError(f"{where}: unknown op {op!r:.30}; one of {', '.join(OPS)}")
    args = _check_args(op, _field(obj, "args", dict, where), f"{where} {op}")
    return RegistryRequest(rid, station, op, args)


def _response_unsigned(
    request: RegistryRequest, issued_at: datetime, ok: bool, result: Any, error: str
) -> dict[str, Any]:
    out = {
        "v": PROTOCOL_VERSION,
        "type": RESPONSE_TYPE,
        "request_id": request.id,
        "station": request.station,
        "op": request.op,
        "issued_at": format_time(issued_at),
        "ok": ok,
    }
    if ok:
        out["result"] = result
    else:
        out["error"] = error
    return out


def seal_response(
    key: Ed25519PrivateKey,
    request: RegistryRequest,
    issued_at: datetime,
    *,
    result: Any = None,
    error: str | None = None,
) -> bytes:
    """The platform's signed answer: `result` when `error` is None, else the refusal (one line with the fix)."""
    unsigned = _response_unsigned(request, issued_at, error is None, result, error or "")
    sig = key.sign(REGISTRY_SIGN_DOMAIN + canonical(unsigned))
    return canonical({**unsigned, "sig": base64.b64encode(sig).decode()})


def open_response(payload: bytes, public_key: Ed25519PublicKey) -> RegistryResponse:
    """Verify and decode an answer; SignatureError when the platform key did not sign exactly these bytes."""
    obj = _load(payload, "registry response")
    where = "registry response"
    if obj.get("type") != RESPONSE_TYPE:
        raise ProtocolError(f"{where}: type must be {RESPONSE_TYPE!r}")
    sig_text = _field(obj, "sig", str, where)
    try:
        sig = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{where}: sig is not base64") from None
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    try:
        public_key.verify(sig, REGISTRY_SIGN_DOMAIN + canonical(unsigned))
    except InvalidSignature:
        raise SignatureError(f"{where} is not signed by the platform key") from None
    ok = _field(obj, "ok", bool, where)
    return RegistryResponse(
        request_id=_match(obj, "request_id", _RID_RE, where, "32 lowercase hex digits"),
        station=_match(obj, "station", _SID_RE, where, "a 12-digit station ID"),
        op=_field(obj, "op", str, where),
        issued_at=parse_time(obj.get("issued_at"), f"{where} issued_at"),
        ok=ok,
        result=obj.get("result") if ok else None,
        error="" if ok else _field(obj, "error", str, where),
    )
