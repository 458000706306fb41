"""The platform's ingest fast paths (issue 14: bench/platform_ingest.py) accept and refuse exactly what the strict
forms did: times read by position against strptime and the round trip, details by the plain parser against the
duplicate-refusing one, and the single-buffer event hash against hashing the parts one by one."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import events as ev
from common import sync_protocol as p


def _strict_time(text: str) -> dt.datetime | None:
    if not p._TIME_RE.match(text):
        return None
    try:
        value = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return value if p.format_time(value) == text else None


_digits = st.text("0123456789", min_size=1, max_size=1)
_time_like = st.builds(
    lambda y, mo, d, h, mi, s, us: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{us:06d}Z",
    st.integers(0, 9999),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 999999),
)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_time_like, st.datetimes(timezones=st.just(dt.timezone.utc)).map(p.format_time), st.text()))
def test_parse_time_accepts_exactly_what_strptime_and_the_round_trip_accepted(text):
    expected = _strict_time(text)
    if expected is None:
        with pytest.raises(p.ProtocolError):
            p.parse_time(text, "t")
    else:
        assert p.parse_time(text, "t") == expected
        assert p.format_time(p.parse_time(text, "t")) == text


def _strict_detail_ok(text: str) -> bool:
    try:
        value = json.loads(text, parse_constant=p._no_constant, object_pairs_hook=p._no_duplicates)
        return isinstance(value, dict) and p.canonical(value).decode() == text
    except (p.ProtocolError, ValueError, TypeError, RecursionError):
        return False


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
_detail_texts = st.one_of(
    _json.map(lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)),
    _json.map(json.dumps),
    st.sampled_from(
        ['{"a":1,"a":1}', '{"a":{"b":1,"b":1}}', '{"a":NaN}', '{"a":Infinity}', "[]", "{}", '{"b":1,"a":2}']
    ),
    st.text(max_size=20),
)


@settings(max_examples=2000, deadline=None)
@given(_detail_texts)
def test_check_detail_accepts_exactly_what_the_strict_parser_accepted(text):
    if _strict_detail_ok(text):
        p._check_detail(text, "d")
    else:
        with pytest.raises(p.ProtocolError):
            p._check_detail(text, "d")


def test_a_repeated_key_is_still_named_as_such():
    with pytest.raises(p.ProtocolError, match="twice"):
        p._check_detail('{"a":1,"a":1}', "d")


def _hash_by_parts(seq, time, tid, kind, asn, reason, message, detail, prev):
    h = hashlib.sha256(ev.HASH_DOMAIN)
    h.update(seq.to_bytes(8, "big"))
    for f in (time, tid, kind, asn, reason, message, detail):
        h.update(ev._text_field(f))
    h.update(bytes.fromhex(prev))
    return h.hexdigest()


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 2**63 - 1),
    st.text(),
    st.one_of(st.none(), st.text()),
    st.text(),
    st.text(),
    st.binary(min_size=32, max_size=32),
)
def test_event_hash_in_one_buffer_equals_hashing_the_parts(seq, text, asn, message, detail, prev):
    args = (seq, "2026-11-23T01:00:00.000000Z", "000000100000", text[:8] or "k", asn, "ok", message, detail, prev.hex())
    try:
        expected = _hash_by_parts(*args)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            ev.event_hash(*args)
        return
    assert ev.event_hash(*args) == expected


def _batch(**change):
    row = {
        "seq": 1,
        "time": "2026-11-23T01:00:00.000000Z",
        "kind": "door.grant",
        "asn": None,
        "reason": "ok",
        "message": "m",
        "detail": "{}",
        "prev": "00" * 32,
        "hash": "11" * 32,
    }
    row.update(change)
    first = dict(row, time="2026-11-23T01:00:00.000000Z", detail="{}", seq=1)
    second = dict(row, seq=2)
    return json.dumps(
        {
            "v": p.PROTOCOL_VERSION,
            "type": "events",
            "terminal_id": "000000100000",
            "events": [list(first.values()), list(second.values())],
        }
    ).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time": "2026-02-30T01:00:00.000000Z"}, r"events\[1\] time is not a real date/time"),
        ({"time": "2026-11-23 01:00:00Z"}, r"events\[1\] time must be a UTC time"),
        ({"detail": '{"b":1,"a":2}'}, r"events\[1\]: detail is not canonical"),
        ({"detail": '{"a":1,"a":1}'}, "payload has the key .a. twice"),
    ],
)
def test_a_refused_record_is_named_by_its_place_in_the_batch(change, message):
    with pytest.raises(p.ProtocolError, match=message):
        p.decode_events(_batch(**change))
