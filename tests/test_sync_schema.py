"""One strict schema per sync message, the same on both sides: the agent's and the platform's real entry points are
fed the same samples and must accept or refuse each alike; fuzzing either side gives a parse or our ProtocolError,
and garbage is refused."""

from __future__ import annotations

import copy
import datetime as dt
import json
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.service import BrokerSettings, Worker
from central.store import Platform
from common import sync_protocol as p
from common.config import load_config
from common.event_kinds import KNOWN_KINDS
from sync_agent.agent import SyncAgent
from terminal.event_log import EventLog
from tests.mqtt_env import ENTERPRISE, terminal_id, write_terminal_config

TID = terminal_id(30)
NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
GOOD_TIME = "2026-11-23T02:00:00.000000Z"
HASH = "ab" * 32
EPOCH = {"instance": "cd" * 16, "generation": 1}


class Sides:
    """The agent of terminal TID and a platform worker, both real, neither connected: messages go in directly."""

    def __init__(self, sync_pki, tmp_path):
        fake_broker = types.SimpleNamespace(pki=sync_pki, port=1, terminals={TID: ENTERPRISE})
        self.agent = SyncAgent.from_config(load_config(write_terminal_config(tmp_path / "t", TID, fake_broker)))
        self.key = sync_pki.platform_key
        self.platform = Platform(tmp_path / "platform.db", self.key)
        self.platform.add_enterprise(ENTERPRISE, "Co")
        self.platform.add_terminal(TID, ENTERPRISE, kind="door")
        self.worker = Worker(
            0, self.platform, BrokerSettings("127.0.0.1", 1, sync_pki.ca.cert, sync_pki.platform_cert_dir)
        )
        self.worker.link.publish = lambda *a, **k: types.SimpleNamespace(rc=0)
        self.n = 0

    def agent_accepts(self, obj: dict) -> bool:
        """Sign `obj` (an unsigned downlink) with the platform key and hand it to the agent."""
        self.n += 1
        unsigned = {**obj, "id": f"m{self.n}"}
        data = p.canonical({**unsigned, "sig": _sign(self.key, unsigned)})
        before = len(self.agent.rejected)
        self.agent._on_message(p.terminal_topic(TID, p.DOWN_MSG), data)
        new = [r for r, _ in self.agent.rejected[before:]]
        assert new in ([], ["malformed"]), new
        return not new

    def platform_accepts(self, leaf: str, data: bytes) -> bool:
        before = self.worker.refused
        self.worker.handle(p.terminal_topic(TID, leaf), data)
        return self.worker.refused == before

    def close(self):
        self.agent.close(graceful=False)
        self.platform.close()


def _sign(key, unsigned):
    import base64

    return base64.b64encode(key.sign(p.signed_bytes(unsigned))).decode()


@pytest.fixture
def sides(sync_pki, tmp_path):
    s = Sides(sync_pki, tmp_path)
    yield s
    s.close()


def heartbeat(**over):
    obj = {
        "v": 1,
        "type": "heartbeat",
        "terminal_id": TID,
        "sent_at": GOOD_TIME,
        "head_seq": 0,
        "acked_seq": 0,
        "backlog": 0,
        "blacklist_version": 0,
        "config_version": 0,
        "last_tap_at": None,
        "blacklist_epoch": None,
        "blacklist_digest": p.EMPTY_DIGEST,
    }
    obj.update(over)
    return obj


def time_msg(platform_time=GOOD_TIME, issued_at=GOOD_TIME, **over):
    obj = {
        "v": 1,
        "type": "time",
        "target": f"t:{TID}",
        "issued_at": issued_at,
        "body": {"platform_time": platform_time},
    }
    obj.update(over)
    return obj


def events_msg(time=GOOD_TIME, kind="door.grant", detail='{"i":1}', **over):
    obj = {
        "v": 1,
        "type": "events",
        "terminal_id": TID,
        "events": [[1, time, kind, None, "ok", "Welcome", detail, "00" * 32, HASH]],
    }
    obj.update(over)
    return obj


TIMES = [
    (GOOD_TIME, True),
    ("2026-11-23T02:00:00.123456Z", True),
    ("yesterday", False),
    ("2026-11-23T02:00:00.000Z", False),  # 3 fraction digits
    ("2026-11-23T02:00:00Z", False),
    ("2026-11-23T02:00:00.000000+00:00", False),
    ("2026-11-23 02:00:00.000000Z", False),
    ("2026-02-30T02:00:00.000000Z", False),  # not a date
    ("2026-11-23T24:00:00.000000Z", False),
    ("２０２６-11-23T02:00:00.000000Z", False),  # non-ASCII digits
    ("2026-11-23T02:00:00.000000z", False),
]
VERSIONS = [(1, True), (True, False), (1.0, False), ("1", False), (2, False), (None, False)]


@pytest.mark.parametrize("text, ok", TIMES)
def test_times_are_refused_or_accepted_alike_everywhere(sides, text, ok):
    assert sides.platform_accepts(p.UP_HEARTBEAT, p.canonical(heartbeat(sent_at=text))) is ok
    assert sides.platform_accepts(p.UP_EVENTS, p.canonical(events_msg(time=text))) is ok
    assert (
        sides.platform_accepts(
            p.UP_STATUS,
            p.canonical({"v": 1, "type": "status", "terminal_id": TID, "state": "online", "reason": "", "at": text}),
        )
        is ok
    )
    assert sides.agent_accepts(time_msg(platform_time=text)) is ok
    assert sides.agent_accepts(time_msg(issued_at=text)) is ok


@pytest.mark.parametrize("v, ok", VERSIONS)
def test_the_protocol_version_is_the_integer_1_everywhere(sides, v, ok):
    assert sides.platform_accepts(p.UP_HEARTBEAT, p.canonical(heartbeat(v=v))) is ok
    assert sides.platform_accepts(p.UP_EVENTS, p.canonical(events_msg(v=v))) is ok
    assert sides.agent_accepts(time_msg(v=v)) is ok


@pytest.mark.parametrize("where", ["top", "body"])
def test_unknown_fields_are_refused_everywhere(sides, where):
    assert not sides.platform_accepts(p.UP_HEARTBEAT, p.canonical(heartbeat(extra=1)))
    assert not sides.platform_accepts(p.UP_EVENTS, p.canonical(events_msg(extra=1)))
    assert not sides.platform_accepts(
        p.UP_REQUEST,
        p.canonical(
            {
                "v": 1,
                "type": "request",
                "terminal_id": TID,
                "want": "sync",
                "blacklist_version": 0,
                "config_version": 0,
                "blacklist_epoch": None,
                "extra": 1,
            }
        ),
    )
    msg = time_msg()
    (msg if where == "top" else msg["body"])["extra"] = 1
    assert not sides.agent_accepts(msg)
    ack = {
        "v": 1,
        "type": "ack",
        "target": f"t:{TID}",
        "issued_at": GOOD_TIME,
        "body": {"acked_seq": 0, "acked_hash": HASH, "extra": True},
    }
    assert not sides.agent_accepts(ack)


@pytest.mark.parametrize(
    "kind, detail, ok",
    [
        ("door.grant", '{"i":1}', True),
        ("door.blow-up", '{"i":1}', False),
        ("Door.grant", '{"i":1}', False),
        ("door.grant", '{"i": 1}', False),  # not canonical
        ("door.grant", '{"b":1,"a":2}', False),  # keys not sorted
        ("door.grant", '{"a":"\\u00e9"}', False),  # escaped instead of UTF-8
        ("door.grant", '{"a":"é"}', True),
        ("door.grant", "[1]", False),
        ("door.grant", '{"a":1,"a":1}', False),
        ("door.grant", '{"a":NaN}', False),
        ("door.grant", "null", False),
    ],
)
def test_event_kinds_and_detail_text_are_refused_alike_by_platform_and_terminal_log(sides, tmp_path, kind, detail, ok):
    assert sides.platform_accepts(p.UP_EVENTS, p.canonical(events_msg(kind=kind, detail=detail))) is ok
    # The terminal's own log writes only known kinds and canonical detail (it makes the text itself).
    with EventLog.open(tmp_path / f"k{abs(hash(kind))}.db", TID) as log:
        if kind in KNOWN_KINDS:
            log.append(NOW, kind, asn=None, reason_code="ok", message="", detail={})
        else:
            with pytest.raises(ValueError, match="KNOWN_KINDS"):
                log.append(NOW, kind, asn=None, reason_code="ok", message="", detail={})


def test_duplicate_keys_are_refused_everywhere(sides):
    text = p.canonical(heartbeat()).decode().replace('"backlog":0', '"backlog":0,"backlog":0').encode()
    assert not sides.platform_accepts(p.UP_HEARTBEAT, text)
    unsigned = {**time_msg(), "id": "dup1"}
    data = p.canonical({**unsigned, "sig": _sign(sides.key, unsigned)}).decode()
    data = data.replace('"type":"time"', '"type":"time","type":"time"').encode()
    sides.agent._on_message(p.terminal_topic(TID, p.DOWN_MSG), data)
    assert sides.agent.rejected[-1][0] == "malformed"


# -- fuzzing: a parse or our ProtocolError, never anything else; garbage is refused ---------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

UPLINKS = {
    p.UP_HEARTBEAT: (p.decode_heartbeat, heartbeat()),
    p.UP_EVENTS: (p.decode_events, events_msg()),
    p.UP_STATUS: (p.decode_status, {"v": 1, "type": "status", "terminal_id": TID, "state": "online", "reason": ""}),
    p.UP_REQUEST: (
        p.decode_request,
        {
            "v": 1,
            "type": "request",
            "terminal_id": TID,
            "want": "sync",
            "blacklist_version": 0,
            "config_version": 0,
            "blacklist_epoch": EPOCH,
        },
    ),
}
BODIES = {
    "ack": {"acked_seq": 3, "acked_hash": HASH, "problem": "chain broken at seq 4", "reason": "chain_broken"},
    "time": {"platform_time": GOOD_TIME},
    "meal_usage": {
        "enterprise_id": ENTERPRISE,
        "day": "2026-11-23",
        "usage": [
            {"asn": "0102030405060708", "terminal_id": "000000000102", "period": "lunch", "count": 1, "amount": 800}
        ],
    },
    "config": {"enterprise_id": ENTERPRISE, "version": 2, "document": {}},
    "card_action": {"action_id": "a1", "asn": "0102030405060708", "action": "topup", "params": {"amount": 100}},
    "card_action.cancel": {"action_id": "a1", "asn": "0102030405060708", "action": "topup"},
    "blacklist.delta": {
        "enterprise_id": ENTERPRISE,
        "epoch": EPOCH,
        "base_version": 1,
        "version": 2,
        "added": [{"asn": "0102030405060708", "reason": "lost", "listed_in_version": 2}],
        "removed": [],
    },
    "blacklist.snapshot": {
        "enterprise_id": ENTERPRISE,
        "epoch": EPOCH,
        "version": 2,
        "count": 1,
        "groups": [{"reason": "lost", "listed_in_version": 2, "asns": p.encode_asn_group([bytes(8)])}],
    },
}


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON value, objects and lists alike."""
    yield prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _other_type(value, candidate) -> bool:
    kinds = (bool, int, float, str, list, dict)

    def kind(x):
        return next(k for k in kinds if isinstance(x, k)) if x is not None else None

    return (
        candidate is not None
        and kind(candidate) != kind(value)
        and not (kind(value) is float and kind(candidate) is int)
    )


def _mutations(sample):
    """(mutated copy) strategies of a valid sample that must be refused: an unknown key added to any object, or
    any field's value replaced by a value of another JSON type."""
    objects = [path for path, v in _paths(sample) if isinstance(v, dict)]
    # A config document is the terminal's to validate (its own validators, docs/sync-protocol.md "Inbox").
    objects = [path for path in objects if "document" not in path]
    fields = [path for path, v in _paths(sample) if path and not isinstance(v, (dict, list)) and "document" not in path]

    def add_key(path, key, value):
        out = copy.deepcopy(sample)
        target = out
        for k in path:
            target = target[k]
        if key in target:
            key = key + "_x"
        target[key] = value
        return out

    def retype(path, value):
        out = copy.deepcopy(sample)
        target = out
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        return out

    added = st.builds(add_key, st.sampled_from(objects), st.text(min_size=1, max_size=8), JSON)
    retyped = st.sampled_from(fields).flatmap(
        lambda path: JSON.filter(lambda v: _other_type(_get(sample, path), v)).map(lambda v: retype(path, v))
    )
    return added | retyped


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_are_refused_by_every_parser(data):
    for parse, _ in UPLINKS.values():
        with pytest.raises(p.ProtocolError):
            parse(data)


@pytest.mark.parametrize("leaf", sorted(UPLINKS))
def test_fuzz_platform_refuses_mutated_uplinks(leaf):
    parse, sample = UPLINKS[leaf]
    parse(p.canonical(sample))  # the sample itself is valid

    @FUZZ
    @given(_mutations(sample))
    def check(obj):
        try:
            data = p.canonical(obj)
        except (ValueError, TypeError):
            return  # not JSON at all (e.g. a float that is not finite); nothing to send
        with pytest.raises(p.ProtocolError):
            parse(data)

    check()


@pytest.mark.parametrize("type_", sorted(BODIES))
def test_fuzz_agent_refuses_mutated_signed_downlinks(sync_pki, type_):
    key = sync_pki.platform_key
    base = {"v": 1, "type": type_, "id": "m1", "target": f"t:{TID}", "issued_at": GOOD_TIME, "body": BODIES[type_]}
    p.open_envelope(p.canonical({**base, "sig": _sign(key, base)}), key.public_key())  # valid as it is

    @FUZZ
    @given(_mutations(base))
    def check(obj):
        try:
            data = p.canonical({**obj, "sig": _sign(key, obj)})
        except (ValueError, TypeError):
            return
        with pytest.raises(p.ProtocolError) as refused:
            env = p.open_envelope(data, key.public_key())
            if env.type == "blacklist.snapshot":
                list(p.snapshot_entries(env.body))
        assert not isinstance(refused.value, p.SignatureError)  # refused by the schema, not by chance

    check()


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "type",
                "terminal_id",
                "events",
                "sent_at",
                "state",
                "want",
                "body",
                "target",
                "issued_at",
                "sig",
                "id",
            ]
        ),
        JSON,
        max_size=8,
    )
)
def test_fuzz_json_garbage_is_refused_on_both_sides(sync_pki, obj):
    for parse, _ in UPLINKS.values():
        with pytest.raises(p.ProtocolError):
            parse(json.dumps(obj).encode())
    with pytest.raises(p.ProtocolError):
        p.open_envelope(json.dumps(obj).encode(), sync_pki.platform_key.public_key())


def test_an_oversized_upload_is_refused_before_parsing(sides):
    row = [1, GOOD_TIME, "door.grant", None, "ok", "x" * 60_000, "{}", "00" * 32, HASH]
    huge = {"v": 1, "type": "events", "terminal_id": TID, "events": [row] * 300}  # ~18 MB
    assert len(p.canonical(huge)) > p.MAX_UPLINK_BYTES
    with pytest.raises(p.ProtocolError, match="bytes, more than"):
        p.decode_events(p.canonical(huge))
    assert not sides.platform_accepts(p.UP_EVENTS, p.canonical(huge))
    assert sides.platform.conn.execute("SELECT count(*) FROM pending_events").fetchone()[0] == 0


@pytest.mark.parametrize(
    "reason, event",
    [
        ("pending_gap", "sync.upload_refused"),
        ("pending_bytes", "sync.upload_refused"),
        ("diverged", "sync.platform_problem"),
        ("chain_broken", "sync.platform_problem"),
    ],
)
def test_the_agent_logs_every_ack_reason_and_keeps_its_queue(sides, caplog, reason, event):
    with EventLog.open(sides.agent.event_log.path, TID) as log:
        log.append(NOW, "door.grant", asn=None, reason_code="ok", message="Welcome", detail={})
        h1 = log.events()[0].hash
    sides.agent.event_log.close()
    sides.agent.event_log = EventLog.open(sides.agent.event_log.path, TID)
    ack = {
        "v": 1,
        "type": "ack",
        "target": f"t:{TID}",
        "issued_at": GOOD_TIME,
        "body": {"acked_seq": 0, "acked_hash": "00" * 32, "problem": f"refused: {reason}", "reason": reason},
    }
    assert sides.agent_accepts(ack)
    assert f"event={event}" in caplog.text and f"reason={reason}" in caplog.text
    # Nothing is dropped: the record is still to be uploaded, from the same position.
    assert sides.agent.uploader.acked_seq == 0 and sides.agent.event_log.last_seq() == 1
    assert sides.agent.event_log.events()[0].hash == h1
