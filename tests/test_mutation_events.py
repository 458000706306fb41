"""common/events.py: the documented hash test vector (docs/event-log.md) and its encoding rebuilt byte by byte here,
NULL versus empty text, the time and detail forms, ASN normalisation, and every refusal with its words. Issue 15."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from common import events as ev

VECTOR = dict(
    seq=1,
    time="2024-05-01T00:30:00.000000Z",
    terminal_id="000000000101",
    kind="door.grant",
    asn="0102030405060708",
    reason_code="ok",
    message="Welcome, Li Lei",
    detail='{"door_group":1}',
    prev_hash=ev.GENESIS_HASH,
)
ENCODING = bytes.fromhex(
    "6f6e65636172642e6576656e742e763100 0000000000000001"
    "0000001b 323032342d30352d30315430303a33303a30302e3030303030305a"
    "0000000c 303030303030303030313031"
    "0000000a 646f6f722e6772616e74"
    "00000010 30313032303330343035303630373038"
    "00000002 6f6b"
    "0000000f 57656c636f6d652c204c69204c6569"
    "00000010 7b22646f6f725f67726f7570223a317d" + "00" * 32
)


def test_the_documented_vector():
    assert len(ENCODING) == 183
    assert hashlib.sha256(ENCODING).hexdigest() == "cb6421d11b7e3408d051c562884131de667f82d47d7d328e9903e784a23fcb9f"
    assert ev.event_hash(**VECTOR) == "cb6421d11b7e3408d051c562884131de667f82d47d7d328e9903e784a23fcb9f"
    assert ev.GENESIS_HASH == "0" * 64
    assert ev.HASH_DOMAIN == b"onecard.event.v1\x00"


def encoding(seq, fields, prev):
    out = b"onecard.event.v1\x00" + seq.to_bytes(8, "big")
    for f in fields:
        if f is None:
            out += b"\xff\xff\xff\xff"
        else:
            data = f.encode("utf-8")
            out += len(data).to_bytes(4, "big") + data
    return out + bytes.fromhex(prev)


def test_every_field_is_hashed_in_its_place():
    prev = "ab" * 32
    cases = [
        (2**64 - 1, ["t", "id", "k", None, "r", "m", "{}"]),  # NULL asn: FF FF FF FF and nothing else
        (256, ["t", "id", "k", "", "r", "m", "{}"]),  # empty asn: 00 00 00 00
        (3, ["时间", "终端", "种类", "0102030405060708", "原因", "欢迎", '{"名":1}']),  # UTF-8 lengths, not characters
        (0x0102030405060708, ["a" * 300, "", "", "", "", "", ""]),
    ]
    for seq, fields in cases:
        got = ev.event_hash(seq, *fields, prev)
        assert got == hashlib.sha256(encoding(seq, fields, prev)).hexdigest(), (seq, fields)
    # fields are not interchangeable: the same texts moved by one place hash differently
    base = ev.event_hash(1, "a", "b", "c", "d", "e", "f", "g", prev)
    assert base != ev.event_hash(1, "b", "a", "c", "d", "e", "f", "g", prev)
    assert base != ev.event_hash(1, "a", "b", "c", "d", "e", "g", "f", prev)
    assert ev.event_hash(1, "ab", "c", "k", None, "r", "m", "d", prev) != ev.event_hash(
        1, "a", "bc", "k", None, "r", "m", "d", prev
    )
    assert ev.event_hash(1, "t", "i", "k", None, "r", "m", "d", prev) != ev.event_hash(
        1, "t", "i", "k", "", "r", "m", "d", prev
    )


def test_time_form():
    cst = dt.timezone(dt.timedelta(hours=8))
    assert ev.format_time(dt.datetime(2024, 5, 1, 8, 30, tzinfo=cst)) == "2024-05-01T00:30:00.000000Z"
    assert ev.format_time(dt.datetime(2024, 5, 1, 0, 30, 0, 7, tzinfo=dt.UTC)) == "2024-05-01T00:30:00.000007Z"
    with pytest.raises(ValueError) as caught:
        ev.format_time(dt.datetime(2024, 5, 1))
    assert str(caught.value) == (
        "event time is naive; pass a timezone-aware datetime (e.g. datetime.now(timezone.utc))"
    )

    class NoOffset(dt.tzinfo):
        def utcoffset(self, when):
            return None

    with pytest.raises(ValueError) as caught:
        ev.format_time(dt.datetime(2024, 5, 1, tzinfo=NoOffset()))
    assert str(caught.value).startswith("event time is naive;")
    for bad, name in (("2024-05-01", "str"), (dt.date(2024, 5, 1), "date"), (None, "NoneType")):
        with pytest.raises(TypeError) as caught:
            ev.format_time(bad)
        assert str(caught.value) == f"event time must be a datetime, got {name}"


def test_detail_form():
    assert ev.canonical_json({"b": 1, "a": ["张", 1.5, None, True]}) == '{"a":["张",1.5,null,true],"b":1}'
    assert ev.canonical_json({}) == "{}"
    for bad, name in (([], "list"), ("{}", "str"), (None, "NoneType")):
        with pytest.raises(TypeError) as caught:
            ev.canonical_json(bad)
        assert str(caught.value) == f"event detail must be a dict, got {name}"
    for bad in ({"x": float("nan")}, {"x": float("inf")}, {"x": b"1"}, {"x": {1, 2}}):
        with pytest.raises(ValueError) as caught:
            ev.canonical_json(bad)
        assert type(caught.value) is ValueError
        text = str(caught.value)
        assert text.startswith("event detail is not plain JSON (") and text.endswith(
            "); pass only str/int/float/bool/None/list/dict"
        )
    try:
        json.dumps(float("nan"), allow_nan=False)
    except ValueError as exc:
        why = str(exc)  # the json module's own words, which vary between Python versions
    with pytest.raises(ValueError) as caught:
        ev.canonical_json({"x": float("nan")})
    assert str(caught.value) == f"event detail is not plain JSON ({why}); pass only str/int/float/bool/None/list/dict"


def test_asn_form():
    assert ev.normalise_asn(None) is None
    assert ev.normalise_asn(bytes.fromhex("0a0b0c0d0e0f1011")) == "0A0B0C0D0E0F1011"
    assert ev.normalise_asn(bytearray(bytes.fromhex("0a0b0c0d0e0f1011"))) == "0A0B0C0D0E0F1011"
    assert ev.normalise_asn("0a0b0c0d0e0f1011") == "0A0B0C0D0E0F1011"
    assert ev.normalise_asn("F1F2F3F4F5F6F7F8") == "F1F2F3F4F5F6F7F8"
    for n in (7, 9, 0):
        with pytest.raises(ValueError) as caught:
            ev.normalise_asn(bytes(n))
        assert str(caught.value) == f"ASN must be 8 bytes, got {n}"
    for bad in ("0a0b0c0d0e0f101", "0a0b0c0d0e0f10111", "0a0b0c0d0e0f101g", " 0a0b0c0d0e0f1011", "", 5, 1.0):
        with pytest.raises(ValueError) as caught:
            ev.normalise_asn(bad)
        assert str(caught.value) == f"ASN must be 16 hex digits (8 bytes) or None, got {bad!r}"


def test_event_times_are_utc_whatever_the_machines_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        minus5 = dt.timezone(dt.timedelta(hours=-5))
        assert ev.format_time(dt.datetime(2024, 4, 30, 19, 30, tzinfo=minus5)) == "2024-05-01T00:30:00.000000Z"
        assert ev.format_time(dt.datetime(2024, 5, 1, 0, 30, tzinfo=dt.UTC)) == "2024-05-01T00:30:00.000000Z"
    finally:
        monkeypatch.undo()
        time.tzset()
