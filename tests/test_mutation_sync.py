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
INSTANCE = "0123456789abcdef" * 2
EPOCH = {"instance": INSTANCE, "generation": 2}


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
        "blacklist_epoch": EPOCH,
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
        "blacklist_epoch": EPOCH,
        "blacklist_digest": "cd" * 32,
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
    return {"enterprise_id": EID, "epoch": EPOCH, "version": version, "count": count, "groups": groups}


A1, A2, A3 = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718"), bytes.fromhex("F1F2F3F4F5F6F7F8")


def delta(added=(), removed=(), base=1, version=2):
    return {
        "enterprise_id": EID,
        "epoch": EPOCH,
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


# --- the protocol's constants, and every message type pinned byte for byte (with epochs and digests) ---------------


def test_protocol_constants_are_pinned():
    assert p.PROTOCOL_VERSION == 1 and type(p.PROTOCOL_VERSION) is int
    assert (p.TOPIC_ROOT, p.SIGN_DOMAIN) == ("onecard/v1", b"onecard.sync.v1\x00")
    assert (p.MAX_BATCH_EVENTS, p.MAX_RECORD_BYTES, p.MAX_UPLINK_BYTES, p.MAX_PROBLEM_CHARS) == (
        5000,
        65536,
        16777216,
        500,
    )
    assert p.ACK_REASONS == ("chain_broken", "diverged", "pending_gap", "pending_bytes")
    assert (p.UP_EVENTS, p.UP_HEARTBEAT, p.UP_STATUS, p.UP_REQUEST, p.DOWN_ACK, p.DOWN_MSG) == (
        "up/events",
        "up/heartbeat",
        "up/status",
        "up/request",
        "down/ack",
        "down/msg",
    )
    assert p.UP_LEAVES == ("up/events", "up/heartbeat", "up/status", "up/request")
    assert p.DOWN_TYPES == (
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
    assert p.PASSAGE_DIRECTIONS == ("entry", "exit")
    assert p.REQUEST_WANTS == ("sync", "blacklist.snapshot")
    assert sorted(p.CARD_ACTIONS) == ["rights", "topup"] and list(p.BODY_CHECKS) == list(p.DOWN_TYPES)
    assert p.EMPTY_DIGEST == "0" * 64


def test_a_payload_of_another_protocol_version_is_refused():
    for v, shown in ((2, "2"), (0, "0"), (1.0, "1.0"), (True, "True"), ("1", "'1'"), (None, "None")):
        fails(
            p.ProtocolError,
            f"request payload has protocol version {shown}, expected the integer 1",
            p.decode_request,
            request(v=v),
        )
    fails(
        p.ProtocolError,
        "request payload has protocol version None, expected the integer 1",
        p.decode_request,
        request(v=...),
    )
    fails(
        p.ProtocolError,
        "downlink payload has protocol version 2, expected the integer 1",
        p.open_envelope,
        raw_envelope(v=2),
        KEY.public_key(),
    )


def test_sample_events_upload_is_pinned():
    ev = p.WireEvent(
        5,
        "2026-11-23T02:00:00.000000Z",
        "door.grant",
        "1122334455667788",
        "granted",
        "Welcome 王芳",
        '{"door":1}',
        H0,
        H1,
    )
    payload = p.encode_events(TID, [ev, p.WireEvent(6, ev.time, "door.grant", None, "granted", "x", "{}", H1, H0)])
    assert (
        payload
        == (
            '{"events":[[5,"2026-11-23T02:00:00.000000Z","door.grant","1122334455667788","granted",'
            '"Welcome 王芳","{\\"door\\":1}","' + H0 + '","' + H1 + '"],'
            '[6,"2026-11-23T02:00:00.000000Z","door.grant",null,"granted","x","{}","'
            + H1
            + '","'
            + H0
            + '"]],"terminal_id":"000000000101","type":"events","v":1}'
        ).encode()
    )
    assert p.decode_events(payload) == (
        TID,
        [ev, p.WireEvent(6, ev.time, "door.grant", None, "granted", "x", "{}", H1, H0)],
    )


def test_sample_heartbeats_are_pinned():
    hb = p.Heartbeat(
        TID,
        "2026-11-23T02:00:00.123456Z",
        10,
        8,
        2,
        3,
        4,
        "2026-11-23T01:59:00.000000Z",
        p.Epoch(2, INSTANCE),
        "cd" * 32,
    )
    payload = p.encode_heartbeat(hb)
    assert (
        payload
        == (
            '{"acked_seq":8,"backlog":2,"blacklist_digest":"' + "cd" * 32 + '",'
            '"blacklist_epoch":{"generation":2,"instance":"' + INSTANCE + '"},"blacklist_version":3,'
            '"config_version":4,"head_seq":10,"last_tap_at":"2026-11-23T01:59:00.000000Z",'
            '"sent_at":"2026-11-23T02:00:00.123456Z","terminal_id":"000000000101","type":"heartbeat",'
            '"v":1}'
        ).encode()
    )
    assert p.decode_heartbeat(payload) == hb
    bare = p.Heartbeat(TID, "2026-11-23T02:00:00.123456Z", 0, 0, 0, 0, 0, None)
    assert (bare.blacklist_epoch, bare.blacklist_digest) == (None, "0" * 64)
    payload = p.encode_heartbeat(bare)
    assert (
        payload
        == (
            '{"acked_seq":0,"backlog":0,"blacklist_digest":"' + "0" * 64 + '","blacklist_epoch":null,'
            '"blacklist_version":0,"config_version":0,"head_seq":0,"last_tap_at":null,'
            '"sent_at":"2026-11-23T02:00:00.123456Z","terminal_id":"000000000101","type":"heartbeat",'
            '"v":1}'
        ).encode()
    )
    assert p.decode_heartbeat(payload) == bare
    assert p.decode_heartbeat(heartbeat()) == hb


def test_sample_status_messages_are_pinned():
    online = p.encode_status(TID, "online", NOW)
    assert online == (
        b'{"at":"2026-11-23T02:00:00.123456Z","reason":"","state":"online","terminal_id":"000000000101",'
        b'"type":"status","v":1}'
    )
    assert p.decode_status(online) == {
        "at": "2026-11-23T02:00:00.123456Z",
        "reason": "",
        "state": "online",
        "terminal_id": TID,
        "type": "status",
        "v": 1,
    }
    offline = p.encode_status(TID, "offline", None, "连接丢失")
    assert (
        offline
        == ('{"reason":"连接丢失","state":"offline","terminal_id":"000000000101","type":"status","v":1}').encode()
    )
    assert p.decode_status(offline)["reason"] == "连接丢失"


def test_sample_requests_are_pinned():
    req = p.Request(TID, "blacklist.snapshot", 3, 4, p.Epoch(2, INSTANCE))
    payload = p.encode_request(req)
    assert (
        payload
        == (
            '{"blacklist_epoch":{"generation":2,"instance":"' + INSTANCE + '"},"blacklist_version":3,'
            '"config_version":4,"terminal_id":"000000000101","type":"request","v":1,'
            '"want":"blacklist.snapshot"}'
        ).encode()
    )
    assert p.decode_request(payload) == req
    bare = p.Request(TID, "sync", 0, 0)
    assert bare.blacklist_epoch is None
    payload = p.encode_request(bare)
    assert payload == (
        b'{"blacklist_epoch":null,"blacklist_version":0,"config_version":0,'
        b'"terminal_id":"000000000101","type":"request","v":1,"want":"sync"}'
    )
    assert p.decode_request(payload) == bare
    assert p.decode_request(request()) == p.Request(TID, "sync", 0, 2**63 - 1, p.Epoch(2, INSTANCE))


def pinned_downlink(type_, body, body_bytes, target=f"e:{EID}", msg_id="m1"):
    """seal() gives exactly these bytes (Ed25519 is deterministic) and open_envelope() gives the message back."""
    unsigned = (
        b'{"body":' + body_bytes + b',"id":"' + msg_id.encode() + b'","issued_at":"2026-11-23T02:00:00.123456Z",'
        b'"target":"' + target.encode() + b'","type":"' + type_.encode() + b'","v":1}'
    )
    sig = base64.b64encode(KEY.sign(b"onecard.sync.v1\x00" + unsigned))
    payload = p.seal(KEY, type_, target, body, NOW, msg_id)
    assert payload == unsigned.replace(b',"target":', b',"sig":"' + sig + b'","target":')
    assert p.open_envelope(payload, KEY.public_key()) == p.Envelope(type_, msg_id, target, NOW, body)


def test_sample_ack_with_a_reason_is_pinned():
    body = {"acked_seq": 7, "acked_hash": H1, "problem": "chain broken at 8", "reason": "chain_broken"}
    pinned_downlink(
        "ack",
        body,
        b'{"acked_hash":"' + H1.encode() + b'","acked_seq":7,"problem":"chain broken at 8","reason":"chain_broken"}',
        target=f"t:{TID}",
    )
    for reason in p.ACK_REASONS:
        assert opened("ack", {**body, "reason": reason}).body["reason"] == reason
    assert opened("ack", {**body, "problem": "x" * 500}).body["problem"] == "x" * 500


A1_A2 = "AQIDBAUGBwgREhMUFRYXGA=="


def test_sample_snapshot_is_pinned():
    body = {
        "enterprise_id": EID,
        "epoch": EPOCH,
        "version": 3,
        "count": 3,
        "groups": [
            {"reason": "lost", "listed_in_version": 2, "asns": p.encode_asn_group([A1, A2])},
            {"reason": "stolen", "listed_in_version": 3, "asns": p.encode_asn_group([A3])},
            {"reason": "none", "listed_in_version": 1, "asns": ""},
        ],
    }
    assert body["groups"][0]["asns"] == A1_A2 and body["groups"][1]["asns"] == "8fLz9PX29/g="
    pinned_downlink(
        "blacklist.snapshot",
        body,
        b'{"count":3,"enterprise_id":"00010001","epoch":{"generation":2,"instance":"'
        + INSTANCE.encode()
        + b'"},"groups":[{"asns":"AQIDBAUGBwgREhMUFRYXGA==","listed_in_version":2,"reason":"lost"},'
        b'{"asns":"8fLz9PX29/g=","listed_in_version":3,"reason":"stolen"},'
        b'{"asns":"","listed_in_version":1,"reason":"none"}],"version":3}',
    )
    assert list(p.snapshot_entries(body)) == [(A1, "lost", 2), (A2, "lost", 2), (A3, "stolen", 3)]
    assert p.encode_asn_group([]) == ""


def test_sample_delta_is_pinned():
    body = delta(added=[added(), added("F1F2F3F4F5F6F7F8", "stolen", 1)], removed=["1112131415161718"], base=0)
    pinned_downlink(
        "blacklist.delta",
        body,
        b'{"added":[{"asn":"0102030405060708","listed_in_version":2,"reason":"lost"},'
        b'{"asn":"F1F2F3F4F5F6F7F8","listed_in_version":1,"reason":"stolen"}],"base_version":0,'
        b'"enterprise_id":"00010001","epoch":{"generation":2,"instance":"'
        + INSTANCE.encode()
        + b'"},"removed":["1112131415161718"],"version":2}',
    )


def test_sample_config_card_actions_and_time_are_pinned():
    pinned_downlink(
        "config",
        {"enterprise_id": EID, "version": 1, "document": {"door": {"open_seconds": 5}}},
        b'{"document":{"door":{"open_seconds":5}},"enterprise_id":"00010001","version":1}',
    )
    pinned_downlink(
        "card_action",
        {"action_id": "a-1", "asn": "0102030405060708", "action": "topup", "params": {"amount": 2**31 - 1}},
        b'{"action":"topup","action_id":"a-1","asn":"0102030405060708","params":{"amount":2147483647}}',
        target=f"t:{TID}",
        msg_id="x" * 64,
    )
    rights = {"door_groups": [1, 64], "valid_from": "2026-01-01", "valid_to": "2026-01-01", "time_profile": 255}
    pinned_downlink(
        "card_action",
        {"action_id": "a.2", "asn": "0102030405060708", "action": "rights", "params": rights},
        b'{"action":"rights","action_id":"a.2","asn":"0102030405060708","params":{"door_groups":[1,64],'
        b'"time_profile":255,"valid_from":"2026-01-01","valid_to":"2026-01-01"}}',
    )
    pinned_downlink(
        "card_action.cancel",
        {"action_id": "A_3", "asn": "0102030405060708", "action": "rights"},
        b'{"action":"rights","action_id":"A_3","asn":"0102030405060708"}',
    )
    pinned_downlink(
        "time", {"platform_time": "2026-11-23T02:00:00.000000Z"}, b'{"platform_time":"2026-11-23T02:00:00.000000Z"}'
    )


def test_blacklist_digest_is_pinned():
    entry = p.blacklist_entry_hash(A1, "lost", 2)
    assert entry == 0xDD2055257436B4ED0EC2D9C2D1BA6F9A855E9E9C2A2AD9AF0F7275290BEA9E3A
    import hashlib

    assert entry == int.from_bytes(
        hashlib.sha256(b"onecard.blacklist.v1\x00" + A1 + b"\x00\x00\x00\x04lost" + (2).to_bytes(8, "big")).digest(),
        "big",
    )
    both = p.digest_of([(A1, "lost", 2), (A2, "stolen", 3)])
    assert both == "f230037f784b8660c8bba92c3b4ebe84121a0027c0450f4da68568c84be3cdbd"
    assert p.digest_of([(A2, "stolen", 3), (A1, "lost", 2)]) == both
    assert p.digest_of([]) == p.EMPTY_DIGEST
    assert p.digest_add(p.EMPTY_DIGEST, entry) == f"{entry:064x}" == p.digest_of([(A1, "lost", 2)])
    assert p.digest_add(both, p.blacklist_entry_hash(A2, "stolen", 3), -1) == f"{entry:064x}"
    assert p.digest_add(p.EMPTY_DIGEST, entry, -1) == (
        "22dfaada8bc94b12f13d263d2e4590657aa16163d5d52650f08d8ad6f41561c6"
    )  # wraps modulo 2**256
    assert p.digest_add(f"{(1 << 256) - 1:064x}", 1) == p.EMPTY_DIGEST
    assert p.blacklist_entry_hash(A1, "张", 2) == int.from_bytes(
        hashlib.sha256(
            b"onecard.blacklist.v1\x00" + A1 + b"\x00\x00\x00\x03" + "张".encode() + (2).to_bytes(8, "big")
        ).digest(),
        "big",
    )


def test_epochs():
    e = p.parse_epoch(EPOCH, "w")
    assert e == p.Epoch(2, INSTANCE) and e.to_json() == EPOCH
    assert p.Epoch(1, "f" * 32) < p.Epoch(2, "0" * 32)  # generation first
    assert p.parse_epoch({"instance": INSTANCE, "generation": 2**63 - 1}, "w").generation == 2**63 - 1


# --- every refusal with its words -------------------------------------------------------------------------------

UTC_LIKE = "must be a UTC time like 2026-11-23T02:00:00.000000Z, got"
EPOCH_OBJ = 'epoch must be an object {"instance": 32 hex, "generation": N}'


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"type": "status"}, "heartbeat payload must have type 'heartbeat', got 'status'"),
        ({"type": ...}, "heartbeat payload must have type 'heartbeat', got None"),
        ({"blacklist_digest": ...}, "heartbeat: field 'blacklist_digest' is missing"),
        ({"blacklist_epoch": ...}, "heartbeat: field 'blacklist_epoch' is missing"),
        ({"terminal_id": ..., "sent_at": ...}, "heartbeat: field 'terminal_id' is missing"),
        ({"x": 1}, "heartbeat: unknown field(s) 'x'"),
        ({"x": 1, "a": 2}, "heartbeat: unknown field(s) 'a', 'x'"),
        ({"terminal_id": "12"}, "heartbeat: field 'terminal_id' = '12' is not 12 digits"),
        ({"terminal_id": 12}, "heartbeat: field 'terminal_id' must be str, got int"),
        ({"sent_at": "x"}, f"heartbeat sent_at {UTC_LIKE} 'x'"),
        ({"sent_at": 5}, "heartbeat: field 'sent_at' must be str, got int"),
        ({"last_tap_at": 5}, "heartbeat: field 'last_tap_at' must be str, got int"),
        ({"last_tap_at": True}, "heartbeat: field 'last_tap_at' must be str, got a boolean"),
        ({"last_tap_at": "x"}, f"heartbeat last_tap_at {UTC_LIKE} 'x'"),
        ({"head_seq": -1}, "heartbeat: field 'head_seq' = -1 is out of range (>= 0)"),
        ({"acked_seq": True}, "heartbeat: field 'acked_seq' must be int, got a boolean"),
        ({"backlog": 2**63}, "heartbeat: field 'backlog' = 9223372036854775808 is out of range (>= 0)"),
        ({"blacklist_version": "3"}, "heartbeat: field 'blacklist_version' must be int, got str"),
        ({"config_version": 1.5}, "heartbeat: field 'config_version' must be int, got float"),
        ({"blacklist_epoch": "x"}, f"heartbeat: {EPOCH_OBJ}"),
        ({"blacklist_epoch": {"instance": INSTANCE}}, "heartbeat epoch: field 'generation' is missing"),
        ({"blacklist_epoch": {**EPOCH, "x": 1}}, "heartbeat epoch: unknown field(s) 'x'"),
        (
            {"blacklist_epoch": {**EPOCH, "generation": 0}},
            "heartbeat epoch: field 'generation' = 0 is out of range (>= 1)",
        ),
        (
            {"blacklist_epoch": {**EPOCH, "instance": "AB" * 16}},
            "heartbeat epoch: field 'instance' = '" + "AB" * 16 + "' is not 32 lowercase hex digits",
        ),
        ({"blacklist_digest": "x"}, "heartbeat: field 'blacklist_digest' = 'x' is not 64 lowercase hex digits"),
        (
            {"blacklist_digest": "AB" * 32},
            "heartbeat: field 'blacklist_digest' = '" + "AB" * 19 + "A is not 64 lowercase hex digits",
        ),
        ({"blacklist_digest": None}, "heartbeat: field 'blacklist_digest' must be str, got NoneType"),
    ],
)
def test_heartbeat_refusals(changes, message):
    fails(p.ProtocolError, message, p.decode_heartbeat, heartbeat(**changes))


def test_heartbeat_edges_accepted():
    hb = p.decode_heartbeat(heartbeat(last_tap_at=None, blacklist_epoch=None, head_seq=2**63 - 1, backlog=0))
    assert (hb.last_tap_at, hb.blacklist_epoch, hb.head_seq, hb.backlog) == (None, None, 2**63 - 1, 0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"type": "events"}, "request payload must have type 'request', got 'events'"),
        ({"blacklist_epoch": ...}, "request: field 'blacklist_epoch' is missing"),
        ({"x": 1}, "request: unknown field(s) 'x'"),
        ({"terminal_id": "1"}, "request: field 'terminal_id' = '1' is not 12 digits"),
        ({"want": "x"}, "request: want 'x' is not one of sync, blacklist.snapshot"),
        ({"want": 5}, "request: field 'want' must be str, got int"),
        ({"blacklist_version": -1}, "request: field 'blacklist_version' = -1 is out of range (>= 0)"),
        ({"config_version": "1"}, "request: field 'config_version' must be int, got str"),
        (
            {"blacklist_epoch": {**EPOCH, "generation": 0}},
            "request epoch: field 'generation' = 0 is out of range (>= 1)",
        ),
        ({"blacklist_epoch": []}, f"request: {EPOCH_OBJ}"),
    ],
)
def test_request_refusals(changes, message):
    fails(p.ProtocolError, message, p.decode_request, request(**changes))


def status(**changes):
    obj = {"v": 1, "type": "status", "terminal_id": TID, "state": "online", "reason": ""}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"type": "request"}, "status payload must have type 'status', got 'request'"),
        ({"state": "x"}, "status: state must be online or offline"),
        ({"state": 1}, "status: field 'state' must be str, got int"),
        ({"reason": "x" * 501}, "status: reason is longer than 500 characters"),
        ({"reason": ...}, "status: field 'reason' is missing"),
        ({"x": 1}, "status: unknown field(s) 'x'"),
        ({"terminal_id": "x"}, "status: field 'terminal_id' = 'x' is not 12 digits"),
        ({"at": "x"}, f"status at {UTC_LIKE} 'x'"),
        ({"at": 5}, f"status at {UTC_LIKE} 5"),
    ],
)
def test_status_refusals(changes, message):
    fails(p.ProtocolError, message, p.decode_status, status(**changes))


def test_status_edges_accepted():
    assert p.decode_status(status(reason="x" * 500, state="offline"))["reason"] == "x" * 500
    assert "at" not in p.decode_status(status())


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{}", "status payload must be bytes"),
        (
            b"\xff",
            "status payload is not UTF-8 JSON ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)",
        ),
        (b"[]", "status payload must be a JSON object"),
        (b'{"v":NaN}', "payload contains NaN, which is not JSON"),
        (b'{"v":1,"v":1}', "payload has the key 'v' twice"),
    ],
)
def test_payload_loading_refusals(payload, message):
    fails(p.ProtocolError, message, p.decode_status, payload)


def test_an_uplink_payload_is_limited_before_parsing_but_a_downlink_is_not():
    big = b" " * (16 * 1024 * 1024 + 1)
    fails(p.ProtocolError, "status payload is 16777217 bytes, more than 16777216", p.decode_status, big)
    fails(
        p.ProtocolError,
        "status payload must be a JSON object",
        p.decode_status,
        b"[" + b" " * (16 * 1024 * 1024 - 2) + b"]",
    )
    fails(
        p.ProtocolError, "downlink payload must be a JSON object", p.open_envelope, b"[" + big + b"]", KEY.public_key()
    )
    fails(p.ProtocolError, "downlink payload must be bytes", p.open_envelope, "{}", KEY.public_key())
    assert p.decode_status(bytearray(status()))["state"] == "online"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"x": 1}, "downlink: unknown field(s) 'x'"),
        ({"sig": ...}, "downlink: field 'sig' is missing"),
        (
            {"type": "nope"},
            "downlink type 'nope' is unknown (known: ack, blacklist.snapshot, blacklist.delta, config, "
            "card_action, card_action.cancel, time, meal_usage, passage, subsidy_allowances)",
        ),
        ({"type": 5}, "downlink: field 'type' must be str, got int"),
        ({"id": "a b"}, "downlink: field 'id' = 'a b' is not 1-64 characters of [A-Za-z0-9._-]"),
        ({"id": ""}, "downlink: field 'id' = '' is not 1-64 characters of [A-Za-z0-9._-]"),
        ({"id": "x" * 65}, "downlink: field 'id' = '" + "x" * 39 + " is not 1-64 characters of [A-Za-z0-9._-]"),
        ({"target": "t:123"}, "downlink target 't:123' is not t:<12 digits> or e:<8 digits>"),
        ({"target": "x:00010001"}, "downlink target 'x:00010001' is not t:<12 digits> or e:<8 digits>"),
        ({"target": "e:000000000101"}, "downlink target 'e:000000000101' is not t:<12 digits> or e:<8 digits>"),
        ({"target": "t:00010001"}, "downlink target 't:00010001' is not t:<12 digits> or e:<8 digits>"),
        ({"target": 5}, "downlink: field 'target' must be str, got int"),
        ({"issued_at": "x"}, f"downlink issued_at {UTC_LIKE} 'x'"),
        ({"issued_at": 5}, "downlink: field 'issued_at' must be str, got int"),
        ({"body": []}, "downlink: field 'body' must be dict, got list"),
        ({"sig": "!!!!"}, "downlink sig is not base64"),
        ({"sig": 5}, "downlink: field 'sig' must be str, got int"),
    ],
)
def test_envelope_refusals(changes, message):
    fails(p.ProtocolError, message, p.open_envelope, raw_envelope(**changes), KEY.public_key())


def test_signature_refusals():
    good = sealed("time", {"platform_time": "2026-11-23T02:00:00.000000Z"})
    words = "downlink time m1: signature does not verify with the platform key"
    fails(p.SignatureError, words, p.open_envelope, good, OTHER.public_key())
    fails(p.SignatureError, words, p.open_envelope, raw_envelope(sig="AAAA"), KEY.public_key())
    fails(p.SignatureError, words, p.open_envelope, raw_envelope(target=f"t:{TID}"), KEY.public_key())
    obj = json.loads(good)
    obj["sig"] = base64.b64encode(KEY.sign(p.canonical({k: v for k, v in obj.items() if k != "sig"}))).decode()
    fails(p.SignatureError, words, p.open_envelope, p.canonical(obj), KEY.public_key())  # no domain tag
    fails(ValueError, "unknown downlink type 'nope'", p.seal, KEY, "nope", f"e:{EID}", {}, NOW, "m1")


ACK = {"acked_seq": 7, "acked_hash": H1}


@pytest.mark.parametrize(
    "type_, body, message",
    [
        ("ack", {"acked_seq": 1}, "ack: field 'acked_hash' is missing"),
        ("ack", {**ACK, "x": 1}, "ack: unknown field(s) 'x'"),
        ("ack", {**ACK, "acked_seq": -1}, "ack: field 'acked_seq' = -1 is out of range (>= 0)"),
        ("ack", {**ACK, "acked_hash": "x"}, "ack: field 'acked_hash' = 'x' is not 64 lowercase hex digits"),
        ("ack", {**ACK, "problem": "p"}, "ack: problem and reason come together"),
        ("ack", {**ACK, "reason": "diverged"}, "ack: problem and reason come together"),
        ("ack", {**ACK, "problem": "", "reason": "diverged"}, "ack: problem must be 1..500 characters"),
        ("ack", {**ACK, "problem": "x" * 501, "reason": "diverged"}, "ack: problem must be 1..500 characters"),
        ("ack", {**ACK, "problem": 5, "reason": "diverged"}, "ack: field 'problem' must be str, got int"),
        (
            "ack",
            {**ACK, "problem": "p", "reason": "x"},
            "ack: reason 'x' is not one of chain_broken, diverged, pending_gap, pending_bytes",
        ),
        ("ack", {**ACK, "problem": "p", "reason": 5}, "ack: field 'reason' must be str, got int"),
        ("blacklist.snapshot", {**snapshot([]), "epoch": ...}, "blacklist.snapshot: field 'epoch' is missing"),
        (
            "blacklist.snapshot",
            {**snapshot([]), "enterprise_id": "1"},
            "blacklist.snapshot: field 'enterprise_id' = '1' is not 8 digits",
        ),
        ("blacklist.snapshot", {**snapshot([]), "epoch": "x"}, f"blacklist.snapshot: {EPOCH_OBJ}"),
        (
            "blacklist.snapshot",
            {**snapshot([]), "epoch": {**EPOCH, "generation": 0}},
            "blacklist.snapshot epoch: field 'generation' = 0 is out of range (>= 1)",
        ),
        (
            "blacklist.snapshot",
            snapshot([], version=0),
            "blacklist.snapshot: field 'version' = 0 is out of range (>= 1)",
        ),
        (
            "blacklist.snapshot",
            {**snapshot([]), "groups": {}},
            "blacklist.snapshot: field 'groups' must be list, got dict",
        ),
        ("blacklist.snapshot", {**snapshot([]), "groups": ["x"]}, "blacklist.snapshot: every group must be an object"),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 2, "asns": "", "x": 1}]),
            "blacklist.snapshot group: unknown field(s) 'x'",
        ),
        (
            "blacklist.snapshot",
            {**snapshot([]), "groups": [{"reason": "lost", "listed_in_version": 2}]},
            "blacklist.snapshot group: field 'asns' is missing",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "", "listed_in_version": 2, "asns": ""}]),
            "blacklist.snapshot: group reason must not be empty",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": 5, "listed_in_version": 2, "asns": ""}]),
            "blacklist.snapshot: field 'reason' must be str, got int",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 0, "asns": ""}]),
            "blacklist.snapshot: field 'listed_in_version' = 0 is out of range (>= 1)",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 4, "asns": ""}]),
            "blacklist.snapshot: listed_in_version 4 is after the snapshot version 3",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 2, "asns": "AAAA"}], count=0),
            "blacklist.snapshot: group asns must be base64 of whole 8-byte ASNs",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 2, "asns": "AQIDBAUGBwg"}], count=1),
            "blacklist.snapshot: group asns must be base64 of whole 8-byte ASNs",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 2, "asns": "AQIDBAUGBwgR"}], count=1),
            "blacklist.snapshot: group asns must be base64 of whole 8-byte ASNs",
        ),
        (
            "blacklist.snapshot",
            snapshot([{"reason": "lost", "listed_in_version": 2, "asns": A1_A2}], count=5),
            "blacklist.snapshot: count 5 does not match the 2 ASNs in the groups",
        ),
        ("blacklist.snapshot", snapshot([], count=-1), "blacklist.snapshot: field 'count' = -1 is out of range (>= 0)"),
        ("blacklist.delta", {**delta(), "epoch": ...}, "blacklist.delta: field 'epoch' is missing"),
        (
            "blacklist.delta",
            {**delta(), "enterprise_id": "x"},
            "blacklist.delta: field 'enterprise_id' = 'x' is not 8 digits",
        ),
        (
            "blacklist.delta",
            {**delta(), "epoch": {**EPOCH, "instance": "x"}},
            "blacklist.delta epoch: field 'instance' = 'x' is not 32 lowercase hex digits",
        ),
        ("blacklist.delta", {**delta(), "epoch": None}, f"blacklist.delta: {EPOCH_OBJ}"),
        ("blacklist.delta", delta(base=2, version=2), "blacklist.delta: version 2 must be greater than base_version 2"),
        ("blacklist.delta", delta(base=3, version=2), "blacklist.delta: version 2 must be greater than base_version 3"),
        ("blacklist.delta", delta(base=-1), "blacklist.delta: field 'base_version' = -1 is out of range (>= 0)"),
        ("blacklist.delta", delta(base=0, version=0), "blacklist.delta: field 'version' = 0 is out of range (>= 1)"),
        ("blacklist.delta", {**delta(), "added": {}}, "blacklist.delta: field 'added' must be list, got dict"),
        ("blacklist.delta", delta(added=["x"]), "blacklist.delta: every added entry must be an object"),
        ("blacklist.delta", delta(added=[{**added(), "x": 1}]), "blacklist.delta added entry: unknown field(s) 'x'"),
        (
            "blacklist.delta",
            delta(added=[{"asn": "0102030405060708"}]),
            "blacklist.delta added entry: field 'reason' is missing",
        ),
        (
            "blacklist.delta",
            delta(added=[added("abcdefabcdefabcd")]),
            "blacklist.delta: field 'asn' = 'abcdefabcdefabcd' is not 16 uppercase hex digits",
        ),
        ("blacklist.delta", delta(added=[added(reason="")]), "blacklist.delta: added reason must not be empty"),
        ("blacklist.delta", delta(added=[added(reason=1)]), "blacklist.delta: field 'reason' must be str, got int"),
        (
            "blacklist.delta",
            delta(added=[added(listed=3)]),
            "blacklist.delta: listed_in_version 3 is after the delta version 2",
        ),
        (
            "blacklist.delta",
            delta(added=[added(listed=0)]),
            "blacklist.delta: field 'listed_in_version' = 0 is out of range (>= 1)",
        ),
        ("blacklist.delta", {**delta(), "removed": "x"}, "blacklist.delta: field 'removed' must be list, got str"),
        ("blacklist.delta", delta(removed=[5]), "blacklist.delta: removed entries must be 16 uppercase hex digits"),
        (
            "blacklist.delta",
            delta(removed=["010203040506070"]),
            "blacklist.delta: removed entries must be 16 uppercase hex digits",
        ),
        (
            "blacklist.delta",
            delta(added=[added()], removed=["0102030405060708"]),
            "blacklist.delta: an ASN is both added and removed",
        ),
        ("config", {"enterprise_id": EID, "version": 1}, "config: field 'document' is missing"),
        ("config", {"enterprise_id": EID, "version": 1, "document": {}, "x": 1}, "config: unknown field(s) 'x'"),
        (
            "config",
            {"enterprise_id": "x", "version": 1, "document": {}},
            "config: field 'enterprise_id' = 'x' is not 8 digits",
        ),
        (
            "config",
            {"enterprise_id": EID, "version": 0, "document": {}},
            "config: field 'version' = 0 is out of range (>= 1)",
        ),
        (
            "config",
            {"enterprise_id": EID, "version": 1, "document": []},
            "config: field 'document' must be dict, got list",
        ),
        ("time", {}, "time: field 'platform_time' is missing"),
        ("time", {"platform_time": "x"}, f"time platform_time {UTC_LIKE} 'x'"),
        ("time", {"platform_time": 5}, "time: field 'platform_time' must be str, got int"),
    ],
)
def test_body_refusals(type_, body, message):
    refused(type_, {k: v for k, v in body.items() if v is not ...}, message)


def action(params=None, **changes):
    body = {"action_id": "a-1", "asn": "0102030405060708", "action": "topup", "params": {"amount": 100}}
    if params is not None:
        body["params"] = params
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


RIGHTS = {"door_groups": [1, 2], "valid_from": "2026-01-01", "valid_to": "2026-12-31", "time_profile": 0}
RW = "card_action rights params"


@pytest.mark.parametrize(
    "type_, body, message",
    [
        ("card_action", action(params=...), "card_action: field 'params' is missing"),
        (
            "card_action",
            action(action_id="a b"),
            "card_action: field 'action_id' = 'a b' is not 1-64 characters of [A-Za-z0-9._-]",
        ),
        ("card_action", action(asn="x"), "card_action: field 'asn' = 'x' is not 16 uppercase hex digits"),
        ("card_action", action(action="x"), "card_action: action 'x' is not one of topup, rights"),
        ("card_action", action(action=5), "card_action: field 'action' must be str, got int"),
        ("card_action", action(params=[]), "card_action: field 'params' must be dict, got list"),
        ("card_action", action(x=1), "card_action: unknown field(s) 'x'"),
        ("card_action", action(params={}), "card_action topup params: field 'amount' is missing"),
        (
            "card_action",
            action(params={"amount": 0}),
            "card_action topup params: field 'amount' = 0 is out of range (>= 1)",
        ),
        (
            "card_action",
            action(params={"amount": 2**31}),
            "card_action topup params: amount 2147483648 fen does not fit a purse",
        ),
        ("card_action", action(params={"amount": 1, "x": 1}), "card_action topup params: unknown field(s) 'x'"),
        ("card_action", action(params={"amount": 100}, action="rights"), f"{RW}: field 'door_groups' is missing"),
        (
            "card_action",
            action(params={k: v for k, v in RIGHTS.items() if k != "time_profile"}, action="rights"),
            f"{RW}: field 'time_profile' is missing",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": []}, action="rights"),
            f"{RW}: door_groups must be distinct ascending integers 1..64",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": [0]}, action="rights"),
            f"{RW}: door_groups must be distinct ascending integers 1..64",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": [65]}, action="rights"),
            f"{RW}: door_groups must be distinct ascending integers 1..64",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": [2, 1]}, action="rights"),
            f"{RW}: door_groups must be distinct ascending integers 1..64",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": [1, 1]}, action="rights"),
            f"{RW}: door_groups must be distinct ascending integers 1..64",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": [True]}, action="rights"),
            f"{RW}: door_groups must be distinct ascending integers 1..64",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "door_groups": "1"}, action="rights"),
            f"{RW}: field 'door_groups' must be list, got str",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "valid_to": "2025-12-31"}, action="rights"),
            f"{RW}: valid_to is before valid_from",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "valid_from": "2026-02-30"}, action="rights"),
            f"{RW}: valid_from '2026-02-30' is not a real date",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "valid_to": "2026/01/01"}, action="rights"),
            f"{RW}: field 'valid_to' = '2026/01/01' is not a date YYYY-MM-DD",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "time_profile": 256}, action="rights"),
            f"{RW}: time_profile must be 0..255",
        ),
        (
            "card_action",
            action(params={**RIGHTS, "time_profile": -1}, action="rights"),
            f"{RW}: field 'time_profile' = -1 is out of range (>= 0)",
        ),
        (
            "card_action.cancel",
            action(params=..., action="x"),
            "card_action.cancel: action 'x' is not one of topup, rights",
        ),
        ("card_action.cancel", action(params=..., action=5), "card_action.cancel: field 'action' must be str, got int"),
        ("card_action.cancel", action(), "card_action.cancel: unknown field(s) 'params'"),
        (
            "card_action.cancel",
            action(params=..., asn="x"),
            "card_action.cancel: field 'asn' = 'x' is not 16 uppercase hex digits",
        ),
        (
            "card_action.cancel",
            action(params=..., action_id=""),
            "card_action.cancel: field 'action_id' = '' is not 1-64 characters of [A-Za-z0-9._-]",
        ),
        ("card_action.cancel", action(params=..., action_id=...), "card_action.cancel: field 'action_id' is missing"),
    ],
)
def test_card_action_refusals(type_, body, message):
    refused(type_, body, message)


def test_snapshot_asns_are_decoded_lazily_and_refused_there():
    body = snapshot([{"reason": "lost", "listed_in_version": 2, "asns": "!!!!!!!!!!!="}], count=1)
    assert opened("blacklist.snapshot", body).body == body
    fails(p.ProtocolError, "blacklist.snapshot: group asns is not valid base64", list, p.snapshot_entries(body))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kind": "door.nope"}, "events[0]: kind 'door.nope' is not a known event kind (common/event_kinds.py)"),
        ({"reason": ""}, "events[0]: reason_code must not be empty"),
        ({"time": "x"}, f"events[0] time {UTC_LIKE} 'x'"),
        ({"detail": "x"}, "events[0]: detail is not JSON text"),
        ({"detail": "[]"}, "events[0]: detail must be the JSON text of an object"),
        ({"detail": '{"a": 1}'}, "events[0]: detail is not canonical JSON (sorted keys, no spaces, UTF-8 as is)"),
        ({"detail": '{"b":1,"a":2}'}, "events[0]: detail is not canonical JSON (sorted keys, no spaces, UTF-8 as is)"),
        (
            {"detail": '{"a":"\\u5f20"}'},
            "events[0]: detail is not canonical JSON (sorted keys, no spaces, UTF-8 as is)",
        ),
        ({"detail": '{"a":1e400}'}, "events[0]: detail cannot be written canonically"),
        ({"detail": '{"a":NaN}'}, "payload contains NaN, which is not JSON"),
        ({"message": "\ud800"}, "events[0]: text is not valid Unicode (lone surrogate)"),
        ({"message": "x" * 65518}, "events[0]: record text is 65537 bytes, more than 65536"),
    ],
)
def test_event_row_refusals(changes, message):
    fails(p.ProtocolError, message, p.decode_events, events([row(1, **changes)]))


def test_event_row_edges_accepted():
    assert p.decode_events(events([row(1, message="x" * 65517)]))[1][0].message == "x" * 65517
    assert p.decode_events(events([row(1, detail='{"a":"张","b":[1]}')]))[1][0].detail == '{"a":"张","b":[1]}'


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"type": "status"}, "events payload must have type 'events', got 'status'"),
        ({"x": 1}, "events: unknown field(s) 'x'"),
        ({"terminal_id": "x"}, "events: field 'terminal_id' = 'x' is not 12 digits"),
        ({"events": "x"}, "events: field 'events' must be list, got str"),
    ],
)
def test_events_envelope_refusals(changes, message):
    fails(p.ProtocolError, message, p.decode_events, events([row(1)], **changes))


def test_snapshot_asns_length_check_counts_only_trailing_padding():
    # 32 characters, "=" only away from the last two: 24 bytes by length, 3 ASNs; decoding (deferred) refuses it
    odd = "AA=A" + "A" * 25 + "=AA"
    body = snapshot([{"reason": "lost", "listed_in_version": 2, "asns": odd}], count=3)
    assert opened("blacklist.snapshot", body).body == body
    fails(p.ProtocolError, "blacklist.snapshot: group asns is not valid base64", list, p.snapshot_entries(body))
    refused(
        "blacklist.snapshot",
        snapshot([{"reason": "lost", "listed_in_version": 2, "asns": 5}], count=0),
        "blacklist.snapshot: field 'asns' must be str, got int",
    )


def test_a_long_list_of_unknown_fields_is_cut_at_80_characters():
    extra = {f"field_{i:02d}": 1 for i in range(12)}
    joined = ", ".join(repr(k) for k in sorted(extra))
    assert len(joined) > 81
    fails(p.ProtocolError, "heartbeat: unknown field(s) " + joined[:80], p.decode_heartbeat, heartbeat(**extra))


def test_a_field_is_required_unless_said_optional():
    fails(p.ProtocolError, "w: field 'k' is missing", p._field, {}, "k", int, "w")
    assert p._field({}, "k", int, "w", optional=True, default=7) == 7


def test_digest_of_wraps_modulo_2_256():
    entry = p.blacklist_entry_hash(A1, "lost", 2)
    assert 2 * entry >= 1 << 256
    assert p.digest_of([(A1, "lost", 2), (A1, "lost", 2)]) == f"{2 * entry - (1 << 256):064x}"
    assert len(p.digest_of([(A1, "lost", 2)] * 3)) == 64


def test_times_are_read_field_by_field():
    assert p.parse_time("2026-11-23T02:34:56.123456Z", "t") == dt.datetime(
        2026, 11, 23, 2, 34, 56, 123456, tzinfo=dt.timezone.utc
    )
    assert p.parse_time("1999-12-31T23:59:59.999999Z", "t") == dt.datetime(
        1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc
    )
