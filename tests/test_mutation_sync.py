"""common/sync_protocol.py and sync_agent/core.py: sample messages pinned byte for byte, every refusal asserted with
its words, and the uploader's ack bookkeeping as conversations (duplicate acks, acks inside a batch, shrink_last,
the rate limit, the ack timeout at its edge). Issue 15."""
import base64
import datetime as dt
import json
import re

import pytest
from hypothesis import given, settings, strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    head = (b'{"body":{"acked_hash":"' + H1.encode() + b'","acked_seq":7},"id":"m-1",'
            b'"issued_at":"2026-11-23T02:00:00.123456Z"')
    tail = b'"target":"t:000000000101","type":"ack","v":1}'
    unsigned = head + b"," + tail
    assert p.signed_bytes(json.loads(unsigned)) == b"onecard.sync.v1\x00" + unsigned
    sig = base64.b64encode(KEY.sign(b"onecard.sync.v1\x00" + unsigned))  # Ed25519 is deterministic
    assert payload == head + b',"sig":"' + sig + b'",' + tail
    env = p.open_envelope(payload, KEY.public_key())
    assert env == p.Envelope("ack", "m-1", "t:000000000101", NOW, {"acked_seq": 7, "acked_hash": H1})


def test_sample_uplinks_are_pinned():
    ev = p.WireEvent(3, "2026-11-23T02:00:00.000000Z", "door.grant", "1122334455667788", "granted", "Welcome, 张伟",
                     '{"counter":1}', H0, H1)
    assert p.encode_events(TID, [ev]) == (
        '{"events":[[3,"2026-11-23T02:00:00.000000Z","door.grant","1122334455667788","granted","Welcome, 张伟",'
        '"{\\"counter\\":1}","' + H0 + '","' + H1 + '"]],"terminal_id":"000000000101","type":"events","v":1}'
    ).encode()
    assert p.encode_status(TID, "online", NOW) == (
        b'{"at":"2026-11-23T02:00:00.123456Z","reason":"","state":"online","terminal_id":"000000000101",'
        b'"type":"status","v":1}')
    assert p.encode_status(TID, "offline", None, "connection lost") == (
        b'{"reason":"connection lost","state":"offline","terminal_id":"000000000101","type":"status","v":1}')
    hb = p.Heartbeat(TID, "2026-11-23T02:00:00.123456Z", 10, 8, 2, 3, 4, None)
    assert p.encode_heartbeat(hb) == (
        b'{"acked_seq":8,"backlog":2,"blacklist_version":3,"config_version":4,"head_seq":10,"last_tap_at":null,'
        b'"sent_at":"2026-11-23T02:00:00.123456Z","terminal_id":"000000000101","type":"heartbeat","v":1}')
    assert p.encode_request(p.Request(TID, "sync", 5, 6)) == (
        b'{"blacklist_version":5,"config_version":6,"terminal_id":"000000000101","type":"request","v":1,'
        b'"want":"sync"}')


def test_constants_of_the_spec():
    assert (p.PROTOCOL_VERSION, p.TOPIC_ROOT, p.SIGN_DOMAIN, p.MAX_BATCH_EVENTS) == (
        1, "onecard/v1", b"onecard.sync.v1\x00", 5000)
    assert p.DOWN_TYPES == ("ack", "blacklist.snapshot", "blacklist.delta", "config", "card_action",
                            "card_action.cancel", "time")
    assert p.UP_LEAVES == ("up/events", "up/heartbeat", "up/status", "up/request")
    assert (p.DOWN_ACK, p.DOWN_MSG, p.REQUEST_WANTS) == ("down/ack", "down/msg", ("sync", "blacklist.snapshot"))
    assert len(p.new_message_id()) == 32 and p.new_message_id() != p.new_message_id()


# --- topics, canonical JSON, times -------------------------------------------------------------------------------

def test_topics():
    assert p.terminal_topic(TID, p.UP_EVENTS) == "onecard/v1/t/000000000101/up/events"
    assert p.enterprise_topic(EID) == "onecard/v1/e/00010001/down/msg"
    assert p.parse_topic("onecard/v1/t/000000000101/up/events") == ("t", TID, "up/events")
    assert p.parse_topic("onecard/v1/e/00010001/down/msg") == ("e", EID, "down/msg")
    for bad in ("onecard/v1/t/000000000101/up", "onecard/v1/t/000000000101/up/events/x", "onecard/v2/t/000000000101/up/x",
                "other/v1/t/000000000101/up/x", "onecard/v1/x/000000000101/up/x"):
        fails(p.ProtocolError, f"topic {bad!r} is not an onecard/v1 topic", p.parse_topic, bad)
    fails(p.ProtocolError, "topic 'onecard/v1/t/00000000010/up/x' has a malformed terminal ID", p.parse_topic,
          "onecard/v1/t/00000000010/up/x")
    fails(p.ProtocolError, "topic 'onecard/v1/e/000100010/down/msg' has a malformed enterprise ID", p.parse_topic,
          "onecard/v1/e/000100010/down/msg")
    fails(p.ProtocolError, "topic 'onecard/v1/e/000000000101/down/msg' has a malformed enterprise ID", p.parse_topic,
          "onecard/v1/e/000000000101/down/msg")
    fails(p.ProtocolError, "topic 'onecard/v1/t/00010001/up/x' has a malformed terminal ID", p.parse_topic,
          "onecard/v1/t/00010001/up/x")


def test_canonical_and_times():
    assert p.canonical({"b": 1, "a": ["张", 1.5]}) == '{"a":["张",1.5],"b":1}'.encode()
    with pytest.raises(ValueError):
        p.canonical({"x": float("nan")})
    assert p.format_time(dt.datetime(2026, 1, 2, 11, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=8)))) == (
        "2026-01-02T03:04:05.000006Z")
    fails(ValueError, "protocol times must be timezone-aware", p.format_time, dt.datetime(2026, 1, 1))
    assert p.parse_time("2026-11-23T02:00:00.123456Z", "x") == NOW
    fails(p.ProtocolError, "when must be a UTC time like 2026-11-23T02:00:00.000000Z, got '2026-11-23T02:00:00Z'",
          p.parse_time, "2026-11-23T02:00:00Z", "when")
    fails(p.ProtocolError, "when must be a UTC time like 2026-11-23T02:00:00.000000Z, got 5", p.parse_time, 5, "when")
    fails(p.ProtocolError, "when is not a real date/time: '2026-02-30T02:00:00.000000Z'", p.parse_time,
          "2026-02-30T02:00:00.000000Z", "when")


# --- payload loading and fields ----------------------------------------------------------------------------------

def test_load_refusals():
    fails(p.ProtocolError, "status payload must be bytes", p.decode_status, "{}")
    fails(p.ProtocolError, "status payload must be a JSON object", p.decode_status, b"[1]")
    fails(p.ProtocolError, "status payload has protocol version 2, expected 1", p.decode_status,
          b'{"v":2,"terminal_id":"000000000101","state":"online"}')
    fails(p.ProtocolError, "status payload has protocol version None, expected 1", p.decode_status, b'{}')
    fails(p.ProtocolError, "payload contains NaN, which is not JSON", p.decode_status, b'{"v":NaN}')
    with pytest.raises(p.ProtocolError, match=r"^status payload is not UTF-8 JSON \("):
        p.decode_status(b"\xff")
    with pytest.raises(p.ProtocolError, match=r"^status payload is not UTF-8 JSON \("):
        p.decode_status(b"{")
    assert p.decode_status(bytearray(b'{"v":1,"terminal_id":"000000000101","state":"online"}'))["state"] == "online"


def request(**changes):
    obj = {"v": 1, "type": "request", "terminal_id": TID, "want": "sync", "blacklist_version": 0,
           "config_version": 2 ** 63 - 1}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_request_fields():
    assert p.decode_request(request()) == p.Request(TID, "sync", 0, 2 ** 63 - 1)
    assert p.decode_request(request(want="blacklist.snapshot")).want == "blacklist.snapshot"
    fails(p.ProtocolError, "request: field 'want' is missing", p.decode_request, request(want=...))
    fails(p.ProtocolError, "request: field 'want' must be str, got int", p.decode_request, request(want=1))
    fails(p.ProtocolError, "request: field 'want' must be str, got a boolean", p.decode_request, request(want=True))
    fails(p.ProtocolError, "request: want 'all' is not one of sync, blacklist.snapshot", p.decode_request,
          request(want="all"))
    fails(p.ProtocolError, "request: field 'blacklist_version' = -1 is out of range (>= 0)", p.decode_request,
          request(blacklist_version=-1))
    fails(p.ProtocolError, f"request: field 'config_version' = {2 ** 63} is out of range (>= 0)", p.decode_request,
          request(config_version=2 ** 63))
    fails(p.ProtocolError, "request: field 'config_version' must be int, got a boolean", p.decode_request,
          request(config_version=False))
    fails(p.ProtocolError, "request: field 'terminal_id' = '00000000010A' is not 12 digits", p.decode_request,
          request(terminal_id="00000000010A"))
    fails(p.ProtocolError, "request: field 'terminal_id' = '0000000001011' is not 12 digits", p.decode_request,
          request(terminal_id="0000000001011"))


def test_status_decode():
    ok = {"v": 1, "type": "status", "terminal_id": TID, "state": "offline", "reason": "x", "at": "2026-11-23T02:00:00.123456Z"}
    assert p.decode_status(json.dumps(ok).encode()) == ok
    fails(p.ProtocolError, "status: state must be online or offline", p.decode_status,
          json.dumps({**ok, "state": "away"}).encode())
    fails(p.ProtocolError, "status: field 'reason' must be str, got int", p.decode_status,
          json.dumps({**ok, "reason": 3}).encode())
    fails(p.ProtocolError, "status at is not a real date/time: '2026-13-23T02:00:00.123456Z'", p.decode_status,
          json.dumps({**ok, "at": "2026-13-23T02:00:00.123456Z"}).encode())
    no_reason = {k: v for k, v in ok.items() if k not in ("reason", "at")}
    assert p.decode_status(json.dumps(no_reason).encode()) == no_reason


def heartbeat(**changes):
    obj = {"v": 1, "type": "heartbeat", "terminal_id": TID, "sent_at": "2026-11-23T02:00:00.123456Z", "head_seq": 10,
           "acked_seq": 8, "backlog": 2, "blacklist_version": 3, "config_version": 4,
           "last_tap_at": "2026-11-23T01:59:00.000000Z"}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_heartbeat_decode():
    assert p.decode_heartbeat(heartbeat()) == p.Heartbeat(TID, "2026-11-23T02:00:00.123456Z", 10, 8, 2, 3, 4,
                                                          "2026-11-23T01:59:00.000000Z")
    assert p.decode_heartbeat(heartbeat(last_tap_at=None)).last_tap_at is None
    fails(p.ProtocolError, "heartbeat: field 'last_tap_at' is missing", p.decode_heartbeat, heartbeat(last_tap_at=...))
    fails(p.ProtocolError, "heartbeat last_tap_at must be a UTC time like 2026-11-23T02:00:00.000000Z, got 'x'",
          p.decode_heartbeat, heartbeat(last_tap_at="x"))
    fails(p.ProtocolError, "heartbeat sent_at must be a UTC time like 2026-11-23T02:00:00.000000Z, got 'x'",
          p.decode_heartbeat, heartbeat(sent_at="x"))
    for field in ("head_seq", "acked_seq", "backlog", "blacklist_version", "config_version"):
        fails(p.ProtocolError, f"heartbeat: field '{field}' = -1 is out of range (>= 0)", p.decode_heartbeat,
              heartbeat(**{field: -1}))


# --- events: every row checked, one bad field refuses the batch ---------------------------------------------------

def row(seq, **changes):
    r = {"seq": seq, "time": "2026-11-23T02:00:00.000000Z", "kind": "door.grant", "asn": "1122334455667788",
         "reason": "granted", "message": "ok", "detail": "{}", "prev": H0, "hash": H1}
    r.update(changes)
    return list(r.values())


def events(rows, **changes):
    obj = {"v": 1, "type": "events", "terminal_id": TID, "events": rows}
    obj.update(changes)
    return json.dumps(obj).encode()


def test_events_decode_round_trip():
    tid, out = p.decode_events(events([row(5), row(6, asn=None)]))
    assert tid == TID
    assert out == [p.WireEvent(5, "2026-11-23T02:00:00.000000Z", "door.grant", "1122334455667788", "granted", "ok",
                               "{}", H0, H1),
                   p.WireEvent(6, "2026-11-23T02:00:00.000000Z", "door.grant", None, "granted", "ok", "{}", H0, H1)]
    assert p.decode_events(events([row(2 ** 63 - 1)]))[1][0].seq == 2 ** 63 - 1
    assert len(p.decode_events(events([row(i) for i in range(1, 5001)]))[1]) == 5000


@pytest.mark.parametrize("rows, message", [
    ([], "events: a batch holds 1..5000 events, got 0"),
    ([row(i) for i in range(1, 5002)], "events: a batch holds 1..5000 events, got 5001"),
    (["x"], "events[0] must be a list of 9 fields"),
    ([row(1)[:8]], "events[0] must be a list of 9 fields"),
    ([row(1) + ["x"]], "events[0] must be a list of 9 fields"),
    ([row(0)], "events[0]: seq must be a positive integer"),
    ([row(2 ** 63)], "events[0]: seq must be a positive integer"),
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
])
def test_a_batch_with_one_bad_row_is_refused(rows, message):
    fails(p.ProtocolError, message, p.decode_events, events(rows))


def test_events_envelope_refusals():
    fails(p.ProtocolError, "events payload must have type 'events'", p.decode_events, events([row(1)], type="x"))
    fails(p.ProtocolError, "events: field 'terminal_id' = '0001' is not 12 digits", p.decode_events,
          events([row(1)], terminal_id="0001"))
    fails(p.ProtocolError, "events: field 'events' must be list, got dict", p.decode_events, events({}))


# --- signed downlinks -----------------------------------------------------------------------------------------------

def sealed(type_, body, target=f"e:{EID}", key=KEY, msg_id="m1"):
    return p.seal(key, type_, target, body, NOW, msg_id=msg_id)


def raw_envelope(**changes):
    obj = json.loads(sealed("time", {"platform_time": "2026-11-23T02:00:00.000000Z"}))
    obj.update(changes)
    return p.canonical({k: v for k, v in obj.items() if v is not ...})


def test_envelope_shape_refusals():
    pub = KEY.public_key()
    fails(ValueError, "unknown downlink type 'hello'", p.seal, KEY, "hello", f"e:{EID}", {}, NOW)
    fails(p.ProtocolError, "downlink type 'hello' is unknown (known: ack, blacklist.snapshot, blacklist.delta, "
          "config, card_action, card_action.cancel, time)", p.open_envelope, raw_envelope(type="hello"), pub)
    fails(p.ProtocolError, "downlink: field 'id' = 'a b' is not 1-64 characters of [A-Za-z0-9._-]", p.open_envelope,
          raw_envelope(id="a b"), pub)
    fails(p.ProtocolError, "downlink target 't:0001' is not t:<12 digits> or e:<8 digits>", p.open_envelope,
          raw_envelope(target="t:0001"), pub)
    fails(p.ProtocolError, "downlink target 'e:000000000101' is not t:<12 digits> or e:<8 digits>", p.open_envelope,
          raw_envelope(target="e:000000000101"), pub)
    fails(p.ProtocolError, "downlink target 'x:00010001' is not t:<12 digits> or e:<8 digits>", p.open_envelope,
          raw_envelope(target="x:00010001"), pub)
    fails(p.ProtocolError, "downlink issued_at must be a UTC time like 2026-11-23T02:00:00.000000Z, got 'now'",
          p.open_envelope, raw_envelope(issued_at="now"), pub)
    fails(p.ProtocolError, "downlink: field 'body' must be dict, got list", p.open_envelope, raw_envelope(body=[]), pub)
    fails(p.ProtocolError, "downlink: field 'sig' is missing", p.open_envelope, raw_envelope(sig=...), pub)
    fails(p.ProtocolError, "downlink has unknown field(s) extra, more", p.open_envelope,
          raw_envelope(extra=1, more=2), pub)
    fails(p.ProtocolError, "downlink sig is not base64", p.open_envelope, raw_envelope(sig="!!!"), pub)
    fails(p.SignatureError, "downlink time m1: signature does not verify with the platform key", p.open_envelope,
          raw_envelope(sig=base64.b64encode(bytes(64)).decode()), pub)
    fails(p.SignatureError, "downlink time m1: signature does not verify with the platform key", p.open_envelope,
          raw_envelope(sig=base64.b64encode(bytes(3)).decode()), pub)
    fails(p.SignatureError, "downlink time m1: signature does not verify with the platform key", p.open_envelope,
          sealed("time", {"platform_time": "2026-11-23T02:00:00.000000Z"}, key=OTHER), pub)
    env = p.open_envelope(sealed("time", {"platform_time": "2026-11-23T02:00:00.000000Z"}, target=f"t:{TID}"), pub)
    assert (env.type, env.target) == ("time", f"t:{TID}")


def opened(type_, body):
    return p.open_envelope(sealed(type_, body), KEY.public_key())


def refused(type_, body, message):
    fails(p.ProtocolError, message, opened, type_, body)


def test_ack_bodies():
    assert opened("ack", {"acked_seq": 0, "acked_hash": H0}).body == {"acked_seq": 0, "acked_hash": H0}
    assert opened("ack", {"acked_seq": 1, "acked_hash": H0, "problem": "gap"}).body["problem"] == "gap"
    refused("ack", {"acked_seq": -1, "acked_hash": H0}, "ack: field 'acked_seq' = -1 is out of range (>= 0)")
    refused("ack", {"acked_seq": 1, "acked_hash": H0.upper() + "A"},
            "ack: field 'acked_hash' = '000000000000000000000000000000000000000 is not 64 lowercase hex digits")
    refused("ack", {"acked_seq": 1, "acked_hash": H0, "problem": 1}, "ack: field 'problem' must be str, got int")


def test_time_card_action_config_bodies():
    refused("time", {"platform_time": "2026-11-23"},
            "time platform_time must be a UTC time like 2026-11-23T02:00:00.000000Z, got '2026-11-23'")
    card_action = {"action_id": "a.1", "asn": "1122334455667788", "action": "topup", "params": {"amount": 5}}
    assert opened("card_action", card_action).body == card_action
    refused("card_action", {**card_action, "action": ""}, "card_action: action must not be empty")
    refused("card_action", {**card_action, "asn": "11223344556677"},
            "card_action: field 'asn' = '11223344556677' is not 16 uppercase hex digits")
    refused("card_action", {**card_action, "action_id": ""},
            "card_action: field 'action_id' = '' is not 1-64 characters of [A-Za-z0-9._-]")
    refused("card_action", {**card_action, "params": []}, "card_action: field 'params' must be dict, got list")
    cancel = {"action_id": "a.1", "asn": "1122334455667788", "action": "topup"}
    assert opened("card_action.cancel", cancel).body == cancel
    refused("card_action.cancel", {**cancel, "action": ""}, "card_action.cancel: action must not be empty")
    refused("card_action.cancel", {**cancel, "action": 1}, "card_action.cancel: field 'action' must be str, got int")
    refused("card_action.cancel", {**cancel, "asn": "11223344556677"},
            "card_action.cancel: field 'asn' = '11223344556677' is not 16 uppercase hex digits")
    refused("card_action.cancel", {**cancel, "action_id": "a b"},
            "card_action.cancel: field 'action_id' = 'a b' is not 1-64 characters of [A-Za-z0-9._-]")
    config = {"enterprise_id": EID, "version": 1, "document": {}}
    assert opened("config", config).body == config
    refused("config", {**config, "version": 0}, "config: field 'version' = 0 is out of range (>= 1)")
    refused("config", {**config, "enterprise_id": "0001"}, "config: field 'enterprise_id' = '0001' is not 8 digits")
    refused("config", {**config, "document": "x"}, "config: field 'document' must be dict, got str")


def snapshot(groups, count=None, version=3):
    if count is None:
        count = sum(len(base64.b64decode(g["asns"])) // 8 for g in groups)
    return {"enterprise_id": EID, "version": version, "count": count, "groups": groups}


A1, A2, A3 = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718"), bytes.fromhex("F1F2F3F4F5F6F7F8")


def test_snapshot_bodies_and_entries():
    groups = [{"reason": "lost", "listed_in_version": 3, "asns": p.encode_asn_group([A1])},
              {"reason": "replaced", "listed_in_version": 1, "asns": p.encode_asn_group([A2, A3])},
              {"reason": "lost", "listed_in_version": 2, "asns": ""}]
    assert p.encode_asn_group([A1]) == "AQIDBAUGBwg="
    body = opened("blacklist.snapshot", snapshot(groups)).body
    assert body["count"] == 3
    assert list(p.snapshot_entries(body)) == [(A1, "lost", 3), (A2, "replaced", 1), (A3, "replaced", 1)]
    three = p.encode_asn_group([A1, A2, A3])  # 24 bytes: 32 characters, no padding
    assert opened("blacklist.snapshot", snapshot([{"reason": "x", "listed_in_version": 1, "asns": three}])).body


@pytest.mark.parametrize("groups, count, message", [
    (["x"], 0, "blacklist.snapshot: every group must be an object"),
    ([{"reason": "", "listed_in_version": 1, "asns": ""}], 0, "blacklist.snapshot: group reason must not be empty"),
    ([{"reason": "lost", "listed_in_version": 4, "asns": ""}], 0,
     "blacklist.snapshot: listed_in_version 4 is after the snapshot version 3"),
    ([{"reason": "lost", "listed_in_version": 0, "asns": ""}], 0,
     "blacklist.snapshot: field 'listed_in_version' = 0 is out of range (>= 1)"),
    ([{"reason": "lost", "listed_in_version": 1, "asns": "AQIDBAUGBw=="}], 1,   # 7 bytes
     "blacklist.snapshot: group asns must be base64 of whole 8-byte ASNs"),
    ([{"reason": "lost", "listed_in_version": 1, "asns": "AQIDBAUGBwgJ"}], 1,   # 9 bytes
     "blacklist.snapshot: group asns must be base64 of whole 8-byte ASNs"),
    ([{"reason": "lost", "listed_in_version": 1, "asns": "AQIDBAUGBwg"}], 1,    # not a multiple of 4 characters
     "blacklist.snapshot: group asns must be base64 of whole 8-byte ASNs"),
    ([{"reason": "lost", "listed_in_version": 1, "asns": "AQIDBAUGBwg="}], 2,
     "blacklist.snapshot: count 2 does not match the 1 ASNs in the groups"),
    ([{"reason": "lost", "listed_in_version": 1, "asns": "AQIDBAUGBwg="}], 0,
     "blacklist.snapshot: count 0 does not match the 1 ASNs in the groups"),
])
def test_snapshot_refusals(groups, count, message):
    refused("blacklist.snapshot", snapshot(groups, count), message)


def test_snapshot_version_and_garbage_asns():
    refused("blacklist.snapshot", snapshot([], 0, version=0),
            "blacklist.snapshot: field 'version' = 0 is out of range (>= 1)")
    body = opened("blacklist.snapshot", snapshot([{"reason": "lost", "listed_in_version": 1,
                                                   "asns": "!!!!!!!!!!!="}], 1)).body
    fails(p.ProtocolError, "blacklist.snapshot: group asns is not valid base64", list, p.snapshot_entries(body))


def delta(added=(), removed=(), base=1, version=2):
    return {"enterprise_id": EID, "base_version": base, "version": version, "added": list(added),
            "removed": list(removed)}


def added(asn="0102030405060708", reason="lost", listed=2):
    return {"asn": asn, "reason": reason, "listed_in_version": listed}


def test_delta_accepted_at_its_limits():
    body = delta([added(listed=2), added("1112131415161718", listed=1)], ["F1F2F3F4F5F6F7F8"], base=0, version=2)
    assert opened("blacklist.delta", body).body == body


@pytest.mark.parametrize("body, message", [
    (delta(base=2, version=2), "blacklist.delta: version 2 must be greater than base_version 2"),
    (delta(base=3, version=2), "blacklist.delta: version 2 must be greater than base_version 3"),
    (delta(base=-1, version=2), "blacklist.delta: field 'base_version' = -1 is out of range (>= 0)"),
    (delta(["x"]), "blacklist.delta: every added entry must be an object"),
    (delta([added(asn="010203040506070")]),
     "blacklist.delta: field 'asn' = '010203040506070' is not 16 uppercase hex digits"),
    (delta([added(reason="")]), "blacklist.delta: added reason must not be empty"),
    (delta([added(listed=3)]), "blacklist.delta: listed_in_version 3 is after the delta version 2"),
    (delta([added(listed=0)]), "blacklist.delta: field 'listed_in_version' = 0 is out of range (>= 1)"),
    (delta(removed=["garbage"]), "blacklist.delta: removed entries must be 16 uppercase hex digits"),
    (delta(removed=["0102030405060708", "abcdefabcdefabcd"]),
     "blacklist.delta: removed entries must be 16 uppercase hex digits"),
    (delta(removed=[1234]), "blacklist.delta: removed entries must be 16 uppercase hex digits"),
    (delta(removed=[None]), "blacklist.delta: removed entries must be 16 uppercase hex digits"),
    (delta([added()], ["0102030405060708"]), "blacklist.delta: an ASN is both added and removed"),
    ({**delta(), "removed": "0102030405060708"}, "blacklist.delta: field 'removed' must be list, got str"),
])
def test_delta_refusals(body, message):
    refused("blacklist.delta", body, message)


# --- downlink decisions ---------------------------------------------------------------------------------------------

def test_target_decision():
    assert core.target_decision(f"t:{TID}", TID, EID) is None
    assert core.target_decision(f"e:{EID}", TID, EID) is None
    assert core.target_decision("t:000000000102", TID, EID) == core.Decision(
        "reject", "wrong_target", "message addressed to t:000000000102, not to this terminal or its enterprise")
    assert core.target_decision(f"e:{TID}", TID, EID).action == "reject"
    assert core.target_decision(f"t:{EID}", TID, EID).action == "reject"


@pytest.mark.parametrize("type_, body, held, expected", [
    ("blacklist.snapshot", {"enterprise_id": "00020002", "version": 9}, 1,
     ("reject", "wrong_enterprise", "blacklist of enterprise 00020002, this terminal serves 00010001")),
    ("blacklist.snapshot", {"enterprise_id": EID, "version": 4}, 5,
     ("reject", "rollback", "snapshot version 4 is older than the held version 5")),
    ("blacklist.snapshot", {"enterprise_id": EID, "version": 5}, 5,
     ("ignore", "already_held", "snapshot version 5 is the version already held")),
    ("blacklist.snapshot", {"enterprise_id": EID, "version": 6}, 5,
     ("apply", "newer", "snapshot version 6 replaces version 5")),
    ("blacklist.delta", {"enterprise_id": EID, "base_version": 4, "version": 5}, 5,
     ("reject", "rollback", "delta to version 5 does not move past the held version 5 (replay or rollback)")),
    ("blacklist.delta", {"enterprise_id": EID, "base_version": 3, "version": 4}, 5,
     ("reject", "rollback", "delta to version 4 does not move past the held version 5 (replay or rollback)")),
    ("blacklist.delta", {"enterprise_id": EID, "base_version": 6, "version": 7}, 5,
     ("request_snapshot", "gap", "delta 6->7 does not start at the held version 5; asking for a snapshot")),
    ("blacklist.delta", {"enterprise_id": EID, "base_version": 4, "version": 7}, 5,
     ("request_snapshot", "gap", "delta 4->7 does not start at the held version 5; asking for a snapshot")),
    ("blacklist.delta", {"enterprise_id": EID, "base_version": 5, "version": 6}, 5,
     ("apply", "next", "delta 5->6 applies to the held version")),
    ("blacklist.delta", {"enterprise_id": "00020002", "base_version": 5, "version": 6}, 5,
     ("reject", "wrong_enterprise", "blacklist of enterprise 00020002, this terminal serves 00010001")),
])
def test_blacklist_decisions_exact(type_, body, held, expected):
    assert core.blacklist_decision(type_, body, held, EID) == core.Decision(*expected)


def test_config_decisions_exact():
    assert core.config_decision({"enterprise_id": "00020002", "version": 9}, 1, EID) == core.Decision(
        "reject", "wrong_enterprise", "configuration of enterprise 00020002")
    assert core.config_decision({"enterprise_id": EID, "version": 3}, 3, EID) == core.Decision(
        "reject", "rollback", "configuration version 3 is not newer than the held 3")
    assert core.config_decision({"enterprise_id": EID, "version": 2}, 3, EID).reason == "rollback"
    assert core.config_decision({"enterprise_id": EID, "version": 4}, 3, EID) == core.Decision(
        "apply", "newer", "configuration version 4 replaces version 3")
    assert (core.APPLY, core.IGNORE, core.REJECT, core.REQUEST_SNAPSHOT) == (
        "apply", "ignore", "reject", "request_snapshot")


def test_clock_drift_sign():
    assert core.clock_drift_seconds(platform_time=1000.0, local_time=1003.5) == 3.5   # terminal ahead
    assert core.clock_drift_seconds(platform_time=1003.5, local_time=1000.0) == -3.5  # terminal behind


# --- the uploader ---------------------------------------------------------------------------------------------------

def batches(u):
    return [(b.first_seq, b.last_seq, b.sent_at) for b in u.inflight]


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_inflight": 0}, {"max_events_per_s": 0},
                                    {"max_events_per_s": -1}, {"ack_timeout": 0}, {"ack_timeout": -0.5}])
def test_uploader_refuses_nonpositive_settings(kwargs):
    fails(ValueError, "batch_size, max_inflight, max_events_per_s and ack_timeout must be positive",
          lambda: core.Uploader(0, **kwargs))


def test_uploader_smallest_settings_work():
    u = core.Uploader(0, batch_size=1, max_inflight=1, max_events_per_s=0.5, ack_timeout=0.01)
    assert u.plan(0.0, 5) == [(1, 1)]
    assert u.plan(0.0, 5) == []


def test_uploader_defaults():
    u = core.Uploader(41)
    assert (u.acked_seq, u.next_seq, u.batch_size, u.max_inflight, u.rate, u.ack_timeout, u.resends) == (
        41, 42, 500, 4, 10_000.0, 10.0, 0)
    assert u.plan(0.0, 41 + 2500) == [(42, 541), (542, 1041), (1042, 1541), (1542, 2041)]


def test_backlog():
    u = core.Uploader(10)
    assert (u.backlog(15), u.backlog(10), u.backlog(3)) == (5, 0, 0)


def test_plan_fills_the_window_in_order_and_waits_for_acks():
    u = core.Uploader(0, batch_size=3, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(1.0, 10) == [(1, 3), (4, 6)]
    assert batches(u) == [(1, 3, 1.0), (4, 6, 1.0)]
    assert u.plan(2.0, 10) == []                     # window full
    assert u.on_ack(3.0, 3) is True
    assert batches(u) == [(4, 6, 1.0)]
    assert u.plan(3.0, 10) == [(7, 9)]
    assert u.on_ack(4.0, 9) is True and batches(u) == []
    assert u.plan(4.0, 10) == [(10, 10)]             # a short last batch: head is 10
    assert u.plan(4.0, 10) == []
    assert u.next_seq == 11


def test_duplicate_ack_is_not_progress():
    u = core.Uploader(0, batch_size=5, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(0.0, 10) == [(1, 5)]
    assert u.on_ack(1.0, 0) is False                 # the ack we already had
    assert u.on_ack(2.0, 2) is True
    assert u.on_ack(8.0, 2) is False                 # the same ack again: does not restart the ack clock
    assert u.on_ack(9.0, 1) is False                 # an older one neither
    assert u.acked_seq == 2
    assert u.plan(11.999, 10) == []                  # 9.999 s since the last progress (at 2.0)
    assert u.plan(12.0, 10) == [(3, 7)]              # exactly ack_timeout after it: resend from the ack
    assert u.resends == 1


def test_ack_on_a_batchs_first_number_trims_that_batch():
    u = core.Uploader(0, batch_size=4, max_inflight=3, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(1.0, 12) == [(1, 4), (5, 8), (9, 12)]
    assert u.on_ack(2.0, 5) is True                  # the first number of the second batch
    assert batches(u) == [(6, 8, 1.0), (9, 12, 1.0)]
    assert u.on_ack(3.0, 8) is True                  # the last number of a batch removes it
    assert batches(u) == [(9, 12, 1.0)]
    assert u.on_ack(4.0, 11) is True
    assert batches(u) == [(12, 12, 1.0)]
    assert u.next_seq == 13


def test_ack_past_everything_sent_moves_next_seq():
    u = core.Uploader(0, batch_size=4, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    u.plan(0.0, 20)
    assert u.on_ack(1.0, 4) is True and u.next_seq == 5   # exactly next_seq - 1: unchanged
    assert u.on_ack(1.5, 15) is True                      # the platform had more (e.g. from before a restart)
    assert (u.next_seq, batches(u)) == (16, [])
    assert u.plan(2.0, 20) == [(16, 19)]


def test_shrink_last():
    u = core.Uploader(0, batch_size=5, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(1.0, 20) == [(1, 5), (6, 10)]
    u.shrink_last(8)                                  # records 9 and 10 could not be read
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
    assert u.plan(14.999, 20) == []                   # progress clock restarted at 5.0 by the connect
    assert u.plan(15.0, 20) == [(4, 8), (9, 13)]
    assert u.resends == 1


def test_ack_clock_starts_when_something_is_outstanding():
    u = core.Uploader(0, batch_size=5, max_inflight=2, max_events_per_s=1000, ack_timeout=10)
    u.on_connected(0.0)
    assert u.plan(0.0, 0) == []                       # nothing to send
    assert u.plan(50.0, 3) == [(1, 3)]                # first batch at 50: the clock starts now, not at 0
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
    assert u.plan(0.0, 100) == []                     # no tokens left
    assert u.plan(0.2, 100) == []                     # 0.8 token: not a whole event
    assert u.plan(0.5, 100) == [(11, 12)]             # 2 tokens: a short batch of 2
    assert u.plan(1.5, 100) == [(13, 16)]             # 4 more
    assert u.plan(100.0, 100) == [(17, 26)]           # refilled to the cap only (10), not 394
    assert u.plan(100.0, 100) == []


def test_fast_rate_bucket_is_a_seconds_worth():
    u = core.Uploader(0, batch_size=10, max_inflight=100, max_events_per_s=25, ack_timeout=1000)
    assert u.plan(0.0, 1000) == [(1, 10), (11, 20), (21, 25)]
    assert u.plan(0.4, 1000) == [(26, 35)]


def test_ack_of_exactly_the_next_seq_to_send_skips_it():
    u = core.Uploader(0, batch_size=4, max_inflight=1, max_events_per_s=1000, ack_timeout=10)
    assert u.plan(0.0, 20) == [(1, 4)]
    assert u.on_ack(1.0, 5) is True                       # the platform holds 5 too (sent before a restart)
    assert u.next_seq == 6
    assert u.plan(1.0, 20) == [(6, 9)]


def test_one_token_sends_a_batch_of_one():
    u = core.Uploader(0, batch_size=10, max_inflight=10, max_events_per_s=4, ack_timeout=1000)
    assert u.plan(0.0, 100) == [(1, 10)]
    assert u.plan(0.25, 100) == [(11, 11)]                # exactly one token
    assert u.plan(0.6, 100) == [(12, 12)]                 # 1.4 tokens: still one whole event


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


@given(st.lists(garbage_text.filter(lambda x: not (isinstance(x, str) and _ASN.match(x))), min_size=1, max_size=3),
       st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_delta_with_any_garbage_removed_entry_is_refused(bad, at):
    removed = ["0102030405060708", "1112131415161718"]
    removed[at % 2:at % 2] = bad
    refused("blacklist.delta", delta(removed=removed), "blacklist.delta: removed entries must be 16 uppercase hex digits")


@given(garbage_text.filter(lambda x: isinstance(x, str) and not _HASH.match(x)), st.integers(0, 2),
       st.booleans())
@settings(max_examples=60, deadline=None)
def test_batch_with_one_malformed_hash_is_refused(bad, which_row, prev):
    rows = [row(1), row(2), row(3)]
    rows[which_row][7 if prev else 8] = bad
    fails(p.ProtocolError, f"events[{which_row}]: hashes must be 64 lowercase hex digits", p.decode_events,
          events(rows))


# --- every parser names itself and the field in its refusals --------------------------------------------------------

@pytest.mark.parametrize("decode, obj, message", [
    (p.decode_events, {"v": 2}, "events payload has protocol version 2, expected 1"),
    (p.decode_heartbeat, {"v": 2}, "heartbeat payload has protocol version 2, expected 1"),
    (p.decode_request, {"v": 2}, "request payload has protocol version 2, expected 1"),
    (p.decode_status, {"v": 2}, "status payload has protocol version 2, expected 1"),
    (lambda b: p.open_envelope(b, KEY.public_key()), {"v": 2}, "downlink payload has protocol version 2, expected 1"),
    (p.decode_events, {"v": 1, "type": "events", "events": []}, "events: field 'terminal_id' is missing"),
    (p.decode_heartbeat, {"v": 1}, "heartbeat: field 'terminal_id' is missing"),
    (p.decode_request, {"v": 1}, "request: field 'terminal_id' is missing"),
    (p.decode_status, {"v": 1}, "status: field 'terminal_id' is missing"),
    (p.decode_status, {"v": 1, "terminal_id": "x"}, "status: field 'terminal_id' = 'x' is not 12 digits"),
    (p.decode_status, {"v": 1, "terminal_id": TID, "state": 1}, "status: field 'state' must be str, got int"),
    (p.decode_heartbeat, {"v": 1, "terminal_id": "x"}, "heartbeat: field 'terminal_id' = 'x' is not 12 digits"),
    (p.decode_heartbeat, {"v": 1, "terminal_id": TID, "sent_at": 1}, "heartbeat: field 'sent_at' must be str, got int"),
    (p.decode_heartbeat, {"v": 1, "terminal_id": TID, "sent_at": "2026-11-23T02:00:00.000000Z", "last_tap_at": 5},
     "heartbeat: field 'last_tap_at' must be str, got int"),
    (p.decode_heartbeat, {"v": 1, "terminal_id": TID, "sent_at": "2026-11-23T02:00:00.000000Z", "last_tap_at": True},
     "heartbeat: field 'last_tap_at' must be str, got a boolean"),
    (lambda b: p.open_envelope(b, KEY.public_key()), {"v": 1, "type": 5}, "downlink: field 'type' must be str, got int"),
    (lambda b: p.open_envelope(b, KEY.public_key()), {"v": 1, "type": "ack", "id": "m", "target": 5},
     "downlink: field 'target' must be str, got int"),
    (lambda b: p.open_envelope(b, KEY.public_key()), {"v": 1, "type": "ack", "id": "m", "target": "e:00010001",
                                                      "issued_at": 5}, "downlink: field 'issued_at' must be str, got int"),
    (lambda b: p.open_envelope(b, KEY.public_key()), {"v": 1, "type": "ack"}, "downlink: field 'id' is missing"),
])
def test_refusals_name_the_message_and_the_field(decode, obj, message):
    fails(p.ProtocolError, message, decode, json.dumps(obj).encode())


def test_long_json_errors_are_cut_at_80_characters():
    fails(p.ProtocolError, "status payload is not UTF-8 JSON (Expecting property name enclosed in double quotes: "
          "line 100001 column 2 (char 10)", p.decode_status, b"\n" * 100000 + b"{")


def test_unknown_field_list_is_cut_at_60_characters():
    names = {f"unknown_field_{i:02}": i for i in range(5)}
    fails(p.ProtocolError, "downlink has unknown field(s) unknown_field_00, unknown_field_01, unknown_field_02, "
          "unknow", p.open_envelope, raw_envelope(**names), KEY.public_key())


@pytest.mark.parametrize("type_, body, message", [
    ("card_action", {"action_id": "a", "asn": "1122334455667788", "action": 7, "params": {}},
     "card_action: field 'action' must be str, got int"),
    ("time", {"platform_time": 5}, "time: field 'platform_time' must be str, got int"),
    ("blacklist.delta", {**delta(), "enterprise_id": "0001"},
     "blacklist.delta: field 'enterprise_id' = '0001' is not 8 digits"),
    ("blacklist.delta", {**delta(), "version": "2"}, "blacklist.delta: field 'version' must be int, got str"),
    ("blacklist.delta", delta(base=0, version=0), "blacklist.delta: field 'version' = 0 is out of range (>= 1)"),
    ("blacklist.delta", {**delta(), "added": {}}, "blacklist.delta: field 'added' must be list, got dict"),
    ("blacklist.delta", delta([added(reason=3)]), "blacklist.delta: field 'reason' must be str, got int"),
    ("blacklist.snapshot", {**snapshot([]), "enterprise_id": "0001"},
     "blacklist.snapshot: field 'enterprise_id' = '0001' is not 8 digits"),
    ("blacklist.snapshot", {**snapshot([]), "groups": {}}, "blacklist.snapshot: field 'groups' must be list, got dict"),
    ("blacklist.snapshot", {**snapshot([]), "count": "0"}, "blacklist.snapshot: field 'count' must be int, got str"),
    ("blacklist.snapshot", snapshot([{"reason": 1, "listed_in_version": 1, "asns": ""}], 0),
     "blacklist.snapshot: field 'reason' must be str, got int"),
    ("blacklist.snapshot", snapshot([{"reason": "lost", "listed_in_version": 1, "asns": 8}], 0),
     "blacklist.snapshot: field 'asns' must be str, got int"),
])
def test_body_refusals_name_the_type_and_the_field(type_, body, message):
    refused(type_, body, message)


def test_snapshot_asns_shaped_right_but_not_base64_are_refused_when_read():
    """12 characters ending in one '=' look like 8 bytes; the '=' inside makes them garbage, refused on decoding."""
    body = opened("blacklist.snapshot", snapshot([{"reason": "lost", "listed_in_version": 1,
                                                   "asns": "AAAAAAAAA=A="}], 1)).body
    fails(p.ProtocolError, "blacklist.snapshot: group asns is not valid base64", list, p.snapshot_entries(body))


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


@pytest.mark.parametrize("v, shown", [(True, "True"), (1.0, "1.0"), ("1", "'1'"), ([1], "[1]")])
def test_protocol_version_must_be_the_integer_1(v, shown):
    """docs/sync-protocol.md: a payload with a wrong type is refused; true and 1.0 only compare equal to 1."""
    fails(p.ProtocolError, f"request payload has protocol version {shown}, expected 1", p.decode_request,
          request(v=v))
