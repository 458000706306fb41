"""common/sync_protocol.py and sync_agent/core.py: sample messages pinned byte for byte, every refusal asserted with
its words, and the uploader's ack bookkeeping as conversations (duplicate acks, acks inside a batch, shrink_last,
the rate limit, the ack timeout at its edge). Issue 15."""

import base64
import datetime as dt
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from common import sync_protocol as p
from sync_agent import core

NOW = dt.datetime(2026, 11, 23, 2, 0, 0, 123456, tzinfo=dt.timezone.utc)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TID, EID = "000000000101", "00010001"
H0, H1 = "0" * 64, "ab" * 32


def fails(exc_type, message, call, *args):
    with pytest.raises(Exception) as caught:
        call(*args)
    assert type(caught.value) is exc_type, caught.value
    assert str(caught.value) == message


# --- sample messages, byte for byte (a change of PROTOCOL_VERSION, a key or a separator fails here) --------------


def test_sample_signed_ack_is_pinned():
    payload = p.seal(KEY, "ack", f"t:{TID}", {"acked_seq": 7, "acked_hash": H1}, NOW, msg_id="m-1")
    head = (
        b'{"body":{"acked_hash":"' + H1.encode() + b'","acked_seq":7},"id":"m-1",'
        b'"issued_at":"2026-11-23T02:00:00.123456Z"'
    )
    tail = b'"target":"t:000000000101","type":"ack","v":1}'
    unsigned = head + b"," + tail
    assert p.signed_bytes(json.loads(unsigned)) == b"onecard.sync.v1\x00" + unsigned
    sig = base64.b64encode(KEY.sign(b"onecard.sync.v1\x00" + unsigned))  # Ed25519 is deterministic
    assert payload == head + b',"sig":"' + sig + b'",' + tail
    env = p.open_envelope(payload, KEY.public_key())
    assert env == p.Envelope("ack", "m-1", "t:000000000101", NOW, {"acked_seq": 7, "acked_hash": H1})


# --- topics, canonical JSON, times -------------------------------------------------------------------------------


def test_topics():
    assert p.terminal_topic(TID, p.UP_EVENTS) == "onecard/v1/t/000000000101/up/events"
    assert p.enterprise_topic(EID) == "onecard/v1/e/00010001/down/msg"
    assert p.parse_topic("onecard/v1/t/000000000101/up/events") == ("t", TID, "up/events")
    assert p.parse_topic("onecard/v1/e/00010001/down/msg") == ("e", EID, "down/msg")
    for bad in (
        "onecard/v1/t/000000000101/up",
        "onecard/v1/t/000000000101/up/events/x",
        "onecard/v2/t/000000000101/up/x",
        "other/v1/t/000000000101/up/x",
        "onecard/v1/x/000000000101/up/x",
    ):
        fails(p.ProtocolError, f"topic {bad!r} is not an onecard/v1 topic", p.parse_topic, bad)
    fails(
        p.ProtocolError,
        "topic 'onecard/v1/t/00000000010/up/x' has a malformed terminal ID",
        p.parse_topic,
        "onecard/v1/t/00000000010/up/x",
    )
    fails(
        p.ProtocolError,
        "topic 'onecard/v1/e/000100010/down/msg' has a malformed enterprise ID",
        p.parse_topic,
        "onecard/v1/e/000100010/down/msg",
    )
    fails(
        p.ProtocolError,
        "topic 'onecard/v1/e/000000000101/down/msg' has a malformed enterprise ID",
        p.parse_topic,
        "onecard/v1/e/000000000101/down/msg",
    )
    fails(
        p.ProtocolError,
        "topic 'onecard/v1/t/00010001/up/x' has a malformed terminal ID",
        p.parse_topic,
        "onecard/v1/t/00010001/up/x",
    )


def test_canonical_and_times():
    assert p.canonical({"b": 1, "a": ["张", 1.5]}) == '{"a":["张",1.5],"b":1}'.encode()
    with pytest.raises(ValueError):
        p.canonical({"x": float("nan")})
    assert p.format_time(dt.datetime(2026, 1, 2, 11, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=8)))) == (
        "2026-01-02T03:04:05.000006Z"
    )
    fails(ValueError, "protocol times must be timezone-aware", p.format_time, dt.datetime(2026, 1, 1))
    assert p.parse_time("2026-11-23T02:00:00.123456Z", "x") == NOW
    fails(
        p.ProtocolError,
        "when must be a UTC time like 2026-11-23T02:00:00.000000Z, got '2026-11-23T02:00:00Z'",
        p.parse_time,
        "2026-11-23T02:00:00Z",
        "when",
    )
    fails(p.ProtocolError, "when must be a UTC time like 2026-11-23T02:00:00.000000Z, got 5", p.parse_time, 5, "when")
    fails(
        p.ProtocolError,
        "when is not a real date/time: '2026-02-30T02:00:00.000000Z'",
        p.parse_time,
        "2026-02-30T02:00:00.000000Z",
        "when",
    )


# --- payload loading and fields ----------------------------------------------------------------------------------


def request(**changes):
    obj = {
        "v": 1,
        "type": "request",
        "terminal_id": TID,
        "want": "sync",
        "blacklist_version": 0,
        "config_version": 2**63 - 1,
    }
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def heartbeat(**changes):
    obj = {
        "v": 1,
        "type": "heartbeat",
        "terminal_id": TID,
        "sent_at": "2026-11-23T02:00:00.123456Z",
        "head_seq": 10,
        "acked_seq": 8,
        "backlog": 2,
        "blacklist_version": 3,
        "config_version": 4,
        "last_tap_at": "2026-11-23T01:59:00.000000Z",
    }
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


# --- events: every row checked, one bad field refuses the batch ---------------------------------------------------


def row(seq, **changes):
    r = {
        "seq": seq,
        "time": "2026-11-23T02:00:00.000000Z",
        "kind": "door.grant",
        "asn": "1122334455667788",
        "reason": "granted",
        "message": "ok",
        "detail": "{}",
        "prev": H0,
        "hash": H1,
    }
    r.update(changes)
    return list(r.values())


def events(rows, **changes):
    obj = {"v": 1, "type": "events", "terminal_id": TID, "events": rows}
    obj.update(changes)
    return json.dumps(obj).encode()


def test_events_decode_round_trip():
    tid, out = p.decode_events(events([row(5), row(6, asn=None)]))
    assert tid == TID
    assert out == [
        p.WireEvent(5, "2026-11-23T02:00:00.000000Z", "door.grant", "1122334455667788", "granted", "ok", "{}", H0, H1),
        p.WireEvent(6, "2026-11-23T02:00:00.000000Z", "door.grant", None, "granted", "ok", "{}", H0, H1),
    ]
    assert p.decode_events(events([row(2**63 - 1)]))[1][0].seq == 2**63 - 1
    assert len(p.decode_events(events([row(i) for i in range(1, 5001)]))[1]) == 5000


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "events: a batch holds 1..5000 events, got 0"),
        ([row(i) for i in range(1, 5002)], "events: a batch holds 1..5000 events, got 5001"),
        (["x"], "events[0] must be a list of 9 fields"),
        ([row(1)[:8]], "events[0] must be a list of 9 fields"),
        ([row(1) + ["x"]], "events[0] must be a list of 9 fields"),
        ([row(0)], "events[0]: seq must be a positive integer"),
        ([row(2**63)], "events[0]: seq must be a positive integer"),
        ([row(True)], "events[0]: seq must be a positive integer"),
        ([row("1")], "events[0]: seq must be a positive integer"),
        ([row(1), row(3)], "events[1]: seq 3 does not follow 1"),
        ([row(2), row(1)], "events[1]: seq 1 does not follow 2"),
        ([row(1), row(1)], "events[1]: seq 1 does not follow 1"),
        ([row(1, time=1)], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, kind=None)], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, reason=1)], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, message=[])], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, detail={})], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, prev=None)], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, hash=0)], "events[0]: time, kind, reason_code, message, detail and hashes must be text"),
        ([row(1, asn="abcdefabcdefabcd")], "events[0]: asn must be null or 16 uppercase hex digits"),
        ([row(1, asn=5)], "events[0]: asn must be null or 16 uppercase hex digits"),
        ([row(1), row(2, prev="0" * 63)], "events[1]: hashes must be 64 lowercase hex digits"),
        ([row(1), row(2, hash="AB" * 32)], "events[1]: hashes must be 64 lowercase hex digits"),
        ([row(1, prev=H1, hash="g" * 64)], "events[0]: hashes must be 64 lowercase hex digits"),
    ],
)
def test_a_batch_with_one_bad_row_is_refused(rows, message):
    fails(p.ProtocolError, message, p.decode_events, events(rows))


# --- signed downlinks -----------------------------------------------------------------------------------------------


def sealed(type_, body, target=f"e:{EID}", key=KEY, msg_id="m1"):
    return p.seal(key, type_, target, body, NOW, msg_id=msg_id)


def raw_envelope(**changes):
    obj = json.loads(sealed("time", {"platform_time": "2026-11-23T02:00:00.000000Z"}))
    obj.update(changes)
    return p.canonical({k: v for k, v in obj.items() if v is not ...})


def opened(type_, body):
    return p.open_envelope(sealed(type_, body), KEY.public_key())


def refused(type_, body, message):
    fails(p.ProtocolError, message, opened, type_, body)


def snapshot(groups, count=None, version=3):
    if count is None:
        count = sum(len(base64.b64decode(g["asns"])) // 8 for g in groups)
    return {"enterprise_id": EID, "version": version, "count": count, "groups": groups}


A1, A2, A3 = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718"), bytes.fromhex("F1F2F3F4F5F6F7F8")


def delta(added=(), removed=(), base=1, version=2):
    return {
        "enterprise_id": EID,
        "base_version": base,
        "version": version,
        "added": list(added),
        "removed": list(removed),
    }


def added(asn="0102030405060708", reason="lost", listed=2):
    return {"asn": asn, "reason": reason, "listed_in_version": listed}


# --- downlink decisions ---------------------------------------------------------------------------------------------


def test_target_decision():
    assert core.target_decision(f"t:{TID}", TID, EID) is None
    assert core.target_decision(f"e:{EID}", TID, EID) is None
    assert core.target_decision("t:000000000102", TID, EID) == core.Decision(
        "reject", "wrong_target", "message addressed to t:000000000102, not to this terminal or its enterprise"
    )
    assert core.target_decision(f"e:{TID}", TID, EID).action == "reject"
    assert core.target_decision(f"t:{EID}", TID, EID).action == "reject"


def test_config_decisions_exact():
    assert core.config_decision({"enterprise_id": "00020002", "version": 9}, 1, EID) == core.Decision(
        "reject", "wrong_enterprise", "configuration of enterprise 00020002"
    )
    assert core.config_decision({"enterprise_id": EID, "version": 3}, 3, EID) == core.Decision(
        "reject", "rollback", "configuration version 3 is not newer than the held 3"
    )
    assert core.config_decision({"enterprise_id": EID, "version": 2}, 3, EID).reason == "rollback"
    assert core.config_decision({"enterprise_id": EID, "version": 4}, 3, EID) == core.Decision(
        "apply", "newer", "configuration version 4 replaces version 3"
    )
    assert (core.APPLY, core.IGNORE, core.REJECT, core.REQUEST_SNAPSHOT) == (
        "apply",
        "ignore",
        "reject",
        "request_snapshot",
    )


def test_clock_drift_sign():
    assert core.clock_drift_seconds(platform_time=1000.0, local_time=1003.5) == 3.5  # terminal ahead
    assert core.clock_drift_seconds(platform_time=1003.5, local_time=1000.0) == -3.5  # terminal behind


# --- the uploader ---------------------------------------------------------------------------------------------------


def batches(u):
    return [(b.first_seq, b.last_seq, b.sent_at) for b in u.inflight]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"max_inflight": 0},
        {"max_events_per_s": 0},
        {"max_events_per_s": -1},
        {"ack_timeout": 0},
        {"ack_timeout": -0.5},
    ],
)
def test_uploader_refuses_nonpositive_settings(kwargs):
    fails(
        ValueError,
        "batch_size, max_inflight, max_events_per_s and ack_timeout must be positive",
        lambda: core.Uploader(0, **kwargs),
    )


def test_uploader_smallest_settings_work():
    u = core.Uploader(0, batch_size=1, max_inflight=1, max_events_per_s=0.5, ack_timeout=0.01)
    assert u.plan(0.0, 5) == [(1, 1)]
    assert u.plan(0.0, 5) == []


def test_uploader_defaults():
    u = core.Uploader(41)
    assert (u.acked_seq, u.next_seq, u.batch_size, u.max_inflight, u.rate, u.ack_timeout, u.resends) == (
        41,
        42,
        500,
        4,
        10_000.0,
        10.0,
        0,
    )
    assert u.plan(0.0, 41 + 2500) == [(42, 541), (542, 1041), (1042, 1541), (1542, 2041)]


def test_backlog():
    u = core.Uploader(10)
    assert (u.backlog(15), u.backlog(10), u.backlog(3)) == (5, 0, 0)


def test_plan_fills_the_window_in_order_and_waits_for_acks():
    u = core.Uploader(0, batch_size=3, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(1.0, 10) == [(1, 3), (4, 6)]
    assert batches(u) == [(1, 3, 1.0), (4, 6, 1.0)]
    assert u.plan(2.0, 10) == []  # window full
    assert u.on_ack(3.0, 3) is True
    assert batches(u) == [(4, 6, 1.0)]
    assert u.plan(3.0, 10) == [(7, 9)]
    assert u.on_ack(4.0, 9) is True and batches(u) == []
    assert u.plan(4.0, 10) == [(10, 10)]  # a short last batch: head is 10
    assert u.plan(4.0, 10) == []
    assert u.next_seq == 11


def test_duplicate_ack_is_not_progress():
    u = core.Uploader(0, batch_size=5, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(0.0, 10) == [(1, 5)]
    assert u.on_ack(1.0, 0) is False  # the ack we already had
    assert u.on_ack(2.0, 2) is True
    assert u.on_ack(8.0, 2) is False  # the same ack again: does not restart the ack clock
    assert u.on_ack(9.0, 1) is False  # an older one neither
    assert u.acked_seq == 2
    assert u.plan(11.999, 10) == []  # 9.999 s since the last progress (at 2.0)
    assert u.plan(12.0, 10) == [(3, 7)]  # exactly ack_timeout after it: resend from the ack
    assert u.resends == 1


def test_ack_on_a_batchs_first_number_trims_that_batch():
    u = core.Uploader(0, batch_size=4, max_inflight=3, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(1.0, 12) == [(1, 4), (5, 8), (9, 12)]
    assert u.on_ack(2.0, 5) is True  # the first number of the second batch
    assert batches(u) == [(6, 8, 1.0), (9, 12, 1.0)]
    assert u.on_ack(3.0, 8) is True  # the last number of a batch removes it
    assert batches(u) == [(9, 12, 1.0)]
    assert u.on_ack(4.0, 11) is True
    assert batches(u) == [(12, 12, 1.0)]
    assert u.next_seq == 13


def test_ack_past_everything_sent_moves_next_seq():
    u = core.Uploader(0, batch_size=4, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    u.plan(0.0, 20)
    assert u.on_ack(1.0, 4) is True and u.next_seq == 5  # exactly next_seq - 1: unchanged
    assert u.on_ack(1.5, 15) is True  # the platform had more (e.g. from before a restart)
    assert (u.next_seq, batches(u)) == (16, [])
    assert u.plan(2.0, 20) == [(16, 19)]


def test_shrink_last():
    u = core.Uploader(0, batch_size=5, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(1.0, 20) == [(1, 5), (6, 10)]
    u.shrink_last(8)  # records 9 and 10 could not be read
    assert batches(u) == [(1, 5, 1.0), (6, 8, 1.0)]
    assert u.next_seq == 9
    u.on_ack(2.0, 5)
    assert u.plan(2.0, 20) == [(9, 13)]
    u.shrink_last(9)
    assert batches(u) == [(6, 8, 1.0), (9, 9, 2.0)]
    assert u.next_seq == 10


def test_reconnect_resends_from_the_ack_and_restarts_the_clock():
    u = core.Uploader(0, batch_size=5, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    u.plan(0.0, 20)
    u.on_ack(1.0, 3)
    u.on_connected(5.0)
    assert (u.next_seq, batches(u)) == (4, [])
    assert u.plan(5.0, 20) == [(4, 8), (9, 13)]
    assert u.plan(14.999, 20) == []  # progress clock restarted at 5.0 by the connect
    assert u.plan(15.0, 20) == [(4, 8), (9, 13)]
    assert u.resends == 1


def test_ack_clock_starts_when_something_is_outstanding():
    u = core.Uploader(0, batch_size=5, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    u.on_connected(0.0)
    assert u.plan(0.0, 0) == []  # nothing to send
    assert u.plan(50.0, 3) == [(1, 3)]  # first batch at 50: the clock starts now, not at 0
    assert u.plan(59.0, 3) == []
    assert u.resends == 0
    assert u.plan(60.0, 3) == [(1, 3)]
    assert u.resends == 1


def test_no_resend_when_nothing_is_in_flight():
    u = core.Uploader(0, batch_size=5, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    u.on_connected(0.0)
    u.plan(0.0, 5)
    u.on_ack(1.0, 5)
    assert u.plan(100.0, 5) == [] and u.resends == 0


def test_rate_limit_sends_short_batches_and_refills():
    u = core.Uploader(0, batch_size=10, max_inflight=10, max_events_per_s=4, ack_timeout=1000)
    # bucket holds max(rate, batch) = 10 tokens: one full batch at once
    assert u.plan(0.0, 100) == [(1, 10)]
    assert u.plan(0.0, 100) == []  # no tokens left
    assert u.plan(0.2, 100) == []  # 0.8 token: not a whole event
    assert u.plan(0.5, 100) == [(11, 12)]  # 2 tokens: a short batch of 2
    assert u.plan(1.5, 100) == [(13, 16)]  # 4 more
    assert u.plan(100.0, 100) == [(17, 26)]  # refilled to the cap only (10), not 394
    assert u.plan(100.0, 100) == []


def test_fast_rate_bucket_is_a_seconds_worth():
    u = core.Uploader(0, batch_size=10, max_inflight=100, max_events_per_s=25, ack_timeout=1000)
    assert u.plan(0.0, 1000) == [(1, 10), (11, 20), (21, 25)]
    assert u.plan(0.4, 1000) == [(26, 35)]


def test_ack_of_exactly_the_next_seq_to_send_skips_it():
    u = core.Uploader(0, batch_size=4, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(0.0, 20) == [(1, 4)]
    assert u.on_ack(1.0, 5) is True  # the platform holds 5 too (sent before a restart)
    assert u.next_seq == 6
    assert u.plan(1.0, 20) == [(6, 9)]


def test_one_token_sends_a_batch_of_one():
    u = core.Uploader(0, batch_size=10, max_inflight=10, max_events_per_s=4, ack_timeout=1000)
    assert u.plan(0.0, 100) == [(1, 10)]
    assert u.plan(0.25, 100) == [(11, 11)]  # exactly one token
    assert u.plan(0.6, 100) == [(12, 12)]  # 1.4 tokens: still one whole event


def test_every_ack_timeout_counts_a_resend():
    u = core.Uploader(0, batch_size=5, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    u.plan(0.0, 5)
    assert u.plan(10.0, 5) == [(1, 5)] and u.resends == 1
    assert u.plan(20.0, 5) == [(1, 5)] and u.resends == 2
    assert u.plan(30.0, 5) == [(1, 5)] and u.resends == 3


# --- fuzz: garbage is refused, with the reason, not merely "raises something of ours" -------------------------------

_ASN = re.compile(r"[0-9A-F]{16}\Z")
_HASH = re.compile(r"[0-9a-f]{64}\Z")
garbage_text = st.one_of(st.text(max_size=70), st.integers(), st.none(), st.lists(st.integers(), max_size=2))


@given(garbage_text.filter(lambda x: isinstance(x, str) and not _HASH.match(x)), st.integers(0, 2), st.booleans())
@settings(max_examples=60, deadline=None)
def test_batch_with_one_malformed_hash_is_refused(bad, which_row, prev):
    rows = [row(1), row(2), row(3)]
    rows[which_row][7 if prev else 8] = bad
    fails(
        p.ProtocolError, f"events[{which_row}]: hashes must be 64 lowercase hex digits", p.decode_events, events(rows)
    )


# --- every parser names itself and the field in its refusals --------------------------------------------------------


def test_long_json_errors_are_cut_at_80_characters():
    fails(
        p.ProtocolError,
        "status payload is not UTF-8 JSON (Expecting property name enclosed in double quotes: "
        "line 100001 column 2 (char 10)",
        p.decode_status,
        b"\n" * 100000 + b"{",
    )


def test_optional_pattern_fields():
    assert p._match({}, "asn", re.compile("[0-9]+"), "w", "digits", optional=True) is None
    assert p._match({"asn": "12"}, "asn", re.compile("[0-9]+"), "w", "digits", optional=True) == "12"
    fails(p.ProtocolError, "w: field 'asn' is missing", p._match, {}, "asn", re.compile("[0-9]+"), "w", "digits")
    with pytest.raises(p.ProtocolError, match=r"^w: field 'asn' = 'x' is not digits$"):
        p._match({"asn": "x"}, "asn", re.compile("[0-9]+"), "w", "digits", optional=True)


def test_protocol_times_are_utc_whatever_the_machines_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        assert p.format_time(NOW) == "2026-11-23T02:00:00.123456Z"
        local = NOW.astimezone(dt.timezone(dt.timedelta(hours=-5)))
        assert p.format_time(local) == "2026-11-23T02:00:00.123456Z"
    finally:
        monkeypatch.undo()
        time.tzset()
