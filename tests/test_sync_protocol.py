"""Sync protocol and core without a broker: envelopes, parsers (hypothesis), uploader, decisions, compaction,
platform."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from central.db import PlatformError
from central.store import Platform
from common import sync_protocol as p
from common.config import ConfigError, load_config
from sync_agent import core
from sync_agent.store import SyncStore, outbox_pressure
from terminal.event_log import EventLog
from tests.mqtt_env import fill_log

NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
KEY = Ed25519PrivateKey.generate()
TID, EID = "000000000101", "00010001"


EPOCH = {"instance": "ab" * 16, "generation": 1}


def delta(base=1, version=2, added=("0102030405060708",), removed=()):
    return {
        "enterprise_id": EID,
        "epoch": EPOCH,
        "base_version": base,
        "version": version,
        "added": [{"asn": a, "reason": "lost", "listed_in_version": version} for a in added],
        "removed": list(removed),
    }


# -- envelopes ---------------------------------------------------------------------------------


def test_sealed_message_opens_and_signature_covers_the_documented_bytes():
    payload = p.seal(KEY, "blacklist.delta", f"e:{EID}", delta(), NOW, msg_id="m1")
    env = p.open_envelope(payload, KEY.public_key())
    assert (env.type, env.id, env.target, env.issued_at, env.body) == (
        "blacklist.delta",
        "m1",
        f"e:{EID}",
        NOW,
        delta(),
    )
    obj = json.loads(payload)
    sig = obj.pop("sig")
    # docs/sync-protocol.md: the signature is over the domain tag and the canonical JSON without "sig".
    expected = (
        b"onecard.sync.v1\x00" + json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    import base64

    KEY.public_key().verify(base64.b64decode(sig), expected)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o["body"].__setitem__("version", 3),
        lambda o: o.__setitem__("target", "e:00020002"),
        lambda o: o.__setitem__("id", "m2"),
        lambda o: o.__setitem__("issued_at", "2026-11-23T02:00:01.000000Z"),
    ],
)
def test_any_changed_field_breaks_the_signature(mutate):
    obj = json.loads(p.seal(KEY, "blacklist.delta", f"e:{EID}", delta(), NOW, msg_id="m1"))
    mutate(obj)
    with pytest.raises(p.SignatureError):
        p.open_envelope(p.canonical(obj), KEY.public_key())


def test_other_key_is_refused():
    payload = p.seal(
        Ed25519PrivateKey.generate(), "blacklist.delta", f"e:{EID}", delta(), NOW, msg_id=secrets.token_hex(16)
    )
    with pytest.raises(p.SignatureError, match="does not verify"):
        p.open_envelope(payload, KEY.public_key())


@pytest.mark.parametrize(
    "body, problem",
    [
        (delta(base=2, version=2), "greater than base_version"),
        (
            {**delta(), "added": [{"asn": "01020304050607", "reason": "lost", "listed_in_version": 2}]},
            "16 uppercase hex",
        ),
        (delta(added=("0102030405060708",), removed=("0102030405060708",)), "both added and removed"),
        ({**delta(), "version": True}, "got a boolean"),
    ],
)
def test_signed_but_invalid_bodies_are_refused(body, problem):
    with pytest.raises(p.ProtocolError, match=problem):
        p.open_envelope(
            p.seal(KEY, "blacklist.delta", f"e:{EID}", body, NOW, msg_id=secrets.token_hex(16)), KEY.public_key()
        )


def test_snapshot_groups_round_trip():
    asns = [bytes([i]) * 8 for i in range(1, 4)]
    body = {
        "enterprise_id": EID,
        "epoch": EPOCH,
        "version": 5,
        "count": 3,
        "groups": [{"reason": "lost", "listed_in_version": 4, "asns": p.encode_asn_group(asns)}],
    }
    env = p.open_envelope(
        p.seal(KEY, "blacklist.snapshot", f"t:{TID}", body, NOW, msg_id=secrets.token_hex(16)), KEY.public_key()
    )
    assert list(p.snapshot_entries(env.body)) == [(a, "lost", 4) for a in asns]
    with pytest.raises(p.ProtocolError, match="count 2 does not match"):
        p.open_envelope(
            p.seal(KEY, "blacklist.snapshot", f"t:{TID}", {**body, "count": 2}, NOW, msg_id=secrets.token_hex(16)),
            KEY.public_key(),
        )


# -- garbage never crashes a parser ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
PARSERS = [
    p.decode_events,
    p.decode_heartbeat,
    p.decode_request,
    p.decode_status,
    lambda b: p.open_envelope(b, KEY.public_key()),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_only_protocol_errors(data):
    for parse in PARSERS:
        try:
            parse(data)
        except p.ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "type",
                "id",
                "target",
                "issued_at",
                "body",
                "sig",
                "terminal_id",
                "events",
                "want",
                "state",
                "sent_at",
                "head_seq",
                "blacklist_version",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_json_shaped_garbage_gives_only_protocol_errors(obj):
    obj.setdefault("v", 1)
    data = json.dumps(obj).encode()
    for parse in PARSERS:
        try:
            parse(data)
        except p.ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["ack", "blacklist.snapshot", "blacklist.delta", "config", "card_action", "time"]),
    st.dictionaries(
        st.sampled_from(
            [
                "enterprise_id",
                "version",
                "base_version",
                "added",
                "removed",
                "groups",
                "count",
                "document",
                "action_id",
                "asn",
                "action",
                "params",
                "acked_seq",
                "acked_hash",
                "platform_time",
            ]
        ),
        json_values,
        max_size=8,
    ),
)
def test_validly_signed_garbage_bodies_give_only_protocol_errors(type_, body):
    try:
        env = p.open_envelope(p.seal(KEY, type_, f"t:{TID}", body, NOW, msg_id=secrets.token_hex(16)), KEY.public_key())
    except p.ProtocolError:
        return
    if env.type == "blacklist.snapshot":
        list(p.snapshot_entries(env.body))


def test_non_json_constants_are_refused_not_crashed_on():
    obj = json.loads(
        p.seal(
            KEY, "time", f"t:{TID}", {"platform_time": "2026-11-23T02:00:00.000000Z"}, NOW, msg_id=secrets.token_hex(16)
        )
    )
    text = json.dumps(obj).replace('"body": {', '"body": {"x": Infinity, ')
    with pytest.raises(p.ProtocolError, match="Infinity, which is not JSON"):
        p.open_envelope(text.encode(), KEY.public_key())


def test_topics_parse_and_refuse_strangers():
    assert p.parse_topic(p.terminal_topic(TID, p.UP_EVENTS)) == ("t", TID, "up/events")
    assert p.parse_topic(p.enterprise_topic(EID)) == ("e", EID, "down/msg")
    for bad in ("onecard/v1/t/12/up/events", "other/v1/t/000000000101/up/events", "onecard/v1/x/1/a/b"):
        with pytest.raises(p.ProtocolError):
            p.parse_topic(bad)


# -- the upload state machine -----------------------------------------------------------------------


def test_uploader_batches_in_order_within_the_window_and_acks_move_it():
    u = core.Uploader(0, batch_size=500, max_inflight=2, max_events_per_s=1e9, ack_timeout=10)
    u.on_connected(0.0)
    assert u.plan(0.0, 1200) == [(1, 500), (501, 1000)]
    assert u.plan(0.1, 1200) == []  # window full
    assert u.on_ack(0.2, 500) and u.plan(0.2, 1200) == [(1001, 1200)]
    assert not u.on_ack(0.3, 400)  # an older ack changes nothing
    assert u.on_ack(0.4, 1200) and not u.inflight and u.backlog(1200) == 0


def test_uploader_resends_from_the_ack_on_reconnect_and_after_an_ack_timeout():
    u = core.Uploader(100, batch_size=50, max_inflight=4, max_events_per_s=1e9, ack_timeout=5)
    u.on_connected(0.0)
    assert u.plan(0.0, 250) == [(101, 150), (151, 200), (201, 250)]
    u.on_ack(1.0, 150)
    assert u.plan(5.9, 250) == []  # 4.9 s since the last progress: keep waiting
    assert u.plan(6.0, 250) == [(151, 200), (201, 250)] and u.resends == 1
    u.on_connected(7.0)
    assert u.plan(7.0, 250) == [(151, 200), (201, 250)]


def test_uploader_partial_ack_trims_the_oldest_batch():
    u = core.Uploader(0, batch_size=100, max_inflight=1, max_events_per_s=1e9, ack_timeout=5)
    u.on_connected(0)
    u.plan(0, 100)
    u.on_ack(1, 40)
    assert list(u.inflight)[0].first_seq == 41 and u.plan(1, 100) == []


def test_uploader_throttles_to_the_configured_rate():
    u = core.Uploader(0, batch_size=100, max_inflight=1000, max_events_per_s=200, ack_timeout=60)
    u.on_connected(0.0)
    sent = sum(b - a + 1 for a, b in u.plan(0.0, 100_000))
    assert sent == 200  # the one-second burst
    assert sum(b - a + 1 for a, b in u.plan(0.5, 100_000)) == 100
    assert sum(b - a + 1 for a, b in u.plan(10.5, 100_000)) == 200  # capped burst, not 10 s of tokens


def test_uploader_linger_holds_a_short_batch_of_new_records_until_it_fills_or_the_linger_passes():
    u = core.Uploader(0, batch_size=10, max_inflight=4, max_events_per_s=1e9, ack_timeout=60, linger=30.0)
    u.on_connected(0.0)
    assert u.plan(0.0, 3) == [] and not u.ready(0.0, 3)  # 3 new records: held, the clock starts at 0
    assert u.plan(29.9, 7) == [] and not u.ready(29.9, 7)
    assert u.ready(30.0, 7) and u.plan(30.0, 7) == [(1, 7)]  # linger passed: sent short
    assert u.plan(31.0, 12) == [] and not u.ready(31.0, 12)  # 8..12: a new short batch, a new clock at 31
    assert u.ready(35.0, 17) and u.plan(35.0, 17) == [(8, 17)]  # it filled: sent at once
    assert u.plan(36.0, 25) == []  # 18..25 held (clock at 36) ...
    u.on_connected(40.0)  # ... a new session resends 1..17 at once (full batches take 18..20 along) ...
    assert u.ready(40.0, 25) and u.plan(40.0, 25) == [(1, 10), (11, 20)]
    assert u.plan(65.9, 25) == [] and u.plan(66.0, 25) == [(21, 25)]  # ... and 21..25 wait out the clock of 36


def test_uploader_linger_never_delays_a_resend_after_an_ack_timeout():
    u = core.Uploader(0, batch_size=10, max_inflight=4, max_events_per_s=1e9, ack_timeout=5, linger=30.0)
    u.on_connected(0.0)
    assert u.plan(30.0, 4) == [] and u.plan(60.0, 4) == [(1, 4)]
    assert u.plan(65.0, 4) == [(1, 4)] and u.resends == 1  # silence past the ack timeout: sent again now


def test_uploader_without_linger_sends_a_short_batch_at_once_and_refuses_a_negative_linger():
    u = core.Uploader(0, batch_size=10, max_inflight=4, max_events_per_s=1e9, ack_timeout=5)
    u.on_connected(0.0)
    assert u.ready(0.0, 1) and u.plan(0.0, 1) == [(1, 1)]
    assert not u.ready(0.0, 1)  # nothing new
    with pytest.raises(ValueError, match="^linger must be 0 or more seconds$"):
        core.Uploader(0, linger=-0.1)
    assert core.Uploader(0, linger=0).linger == 0.0


def test_uploader_linger_boundaries():
    u = core.Uploader(0, batch_size=10, max_inflight=1, max_events_per_s=1e9, ack_timeout=60, linger=0.5)
    u.on_connected(0.0)
    assert not u.ready(0.0, 9) and u.plan(0.0, 9) == []  # 9 of 10, fresh: held (a linger under 1 s counts too)
    assert not u.ready(0.49, 9) and u.plan(0.49, 9) == []
    assert u.ready(0.5, 9) and u.plan(0.5, 9) == [(1, 9)]
    assert not u.ready(0.6, 30)  # the window (1 batch) is full: nothing goes, however many records wait
    u.on_ack(1.0, 8)
    u.on_connected(2.0)  # seq 9 was sent and not acknowledged: resent at once, although it is alone
    assert u.ready(2.0, 9) and u.plan(2.0, 9) == [(9, 9)]


def test_uploader_linger_clock_runs_on_while_records_stay_unsent():
    u = core.Uploader(0, batch_size=10, max_inflight=1, max_events_per_s=1e9, ack_timeout=60, linger=30.0)
    u.on_connected(0.0)
    assert u.plan(0.0, 3) == []  # 1..3 held, the clock starts at 0
    assert u.plan(5.0, 11) == [(1, 10)]  # full: sent; 11 stays unsent (window full) and keeps the clock of 0
    u.on_ack(6.0, 10)
    assert u.plan(29.9, 11) == [] and u.plan(30.0, 11) == [(11, 11)]


# -- downlink decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_, body, held, action, reason",
    [
        ("blacklist.delta", delta(1, 2), 1, core.APPLY, "next"),
        ("blacklist.delta", delta(1, 2), 2, core.REJECT, "rollback"),
        ("blacklist.delta", delta(1, 2), 5, core.REJECT, "rollback"),
        ("blacklist.delta", delta(3, 4), 1, core.REQUEST_SNAPSHOT, "gap"),
        ("blacklist.snapshot", {"enterprise_id": EID, "epoch": EPOCH, "version": 4}, 5, core.REJECT, "rollback"),
        ("blacklist.snapshot", {"enterprise_id": EID, "epoch": EPOCH, "version": 5}, 5, core.IGNORE, "already_held"),
        ("blacklist.snapshot", {"enterprise_id": EID, "epoch": EPOCH, "version": 6}, 5, core.APPLY, "newer"),
        (
            "blacklist.snapshot",
            {"enterprise_id": "00020002", "epoch": EPOCH, "version": 6},
            5,
            core.REJECT,
            "wrong_enterprise",
        ),
    ],
)
def test_blacklist_decisions(type_, body, held, action, reason):
    d = core.blacklist_decision(type_, body, held, EID, p.Epoch(1, "ab" * 16))
    assert (d.action, d.reason) == (action, reason)


def test_target_and_config_decisions():
    assert core.target_decision(f"t:{TID}", TID, EID) is None
    assert core.target_decision(f"e:{EID}", TID, EID) is None
    assert core.target_decision("t:000000000102", TID, EID).reason == "wrong_target"
    assert core.config_decision({"enterprise_id": EID, "version": 2}, 2, EID).reason == "rollback"
    assert core.config_decision({"enterprise_id": EID, "version": 3}, 2, EID).action == core.APPLY


# -- compaction keeps `log verify` working; outbox pressure ---------------------------------------------


def test_compaction_keeps_a_verifiable_chain_from_its_anchor(tmp_path):
    db = tmp_path / "events.db"
    fill_log(db, TID, 300)
    with EventLog.open(db, TID) as log:
        h200 = log.events(199, 1)[0].hash
        assert log.compact(200) == 200 and log.anchor() == (200, h200)
        report = log.verify()
        assert report.ok and report.checked == 100 and report.head_seq == 300
        assert log.compact(150) == 0  # never moves backwards
        log.db.execute("DELETE FROM events WHERE seq = 250")
        assert log.verify().first_bad_seq == 250


def test_outbox_pressure_counts_unacknowledged_records(tmp_path):
    fill_log(tmp_path / "events.db", TID, 1000)
    store = SyncStore.open(tmp_path / "sync.db", TID)
    with EventLog.open(tmp_path / "events.db", TID) as log:
        assert outbox_pressure(log, tmp_path / "sync.db", 2000) == 0.5
        store.set_acked(600, "ab" * 32, "2026-11-23T02:00:00.000000Z")
        store.set_acked(100, "cd" * 32, "2026-11-23T02:00:00.000000Z")  # never backwards
        assert outbox_pressure(log, tmp_path / "sync.db", 2000) == 0.2
    store.close()


def test_sync_store_refuses_another_terminals_file(tmp_path):
    SyncStore.open(tmp_path / "sync.db", TID).close()
    from common.db import DatabaseError

    with pytest.raises(DatabaseError, match="belongs to terminal '000000000101'"):
        SyncStore.open(tmp_path / "sync.db", "000000000102")


def test_sync_config_section_is_validated(tmp_path):
    from tests.support import TERMINAL_TOML

    base = TERMINAL_TOML.format(kind="door", db=tmp_path / "e.db", bl=tmp_path / "b.db")
    cfg = tmp_path / "f.toml"
    cfg.write_text(base, encoding="utf-8")
    assert load_config(cfg).sync is None
    sync = (
        '[sync]\nbroker_host = "h"\nca_file = "ca"\ncert_file = "c"\nkey_file = "k"\n'
        'platform_public_key = "p"\ndatabase = "s.db"\n'
    )
    cfg.write_text(base + sync + "batch_size = 9000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[sync\].batch_size = 9000 is outside"):
        load_config(cfg)
    cfg.write_text(base + sync + "max_event_per_s = 9\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[sync\].max_event_per_s is not a known key"):
        load_config(cfg)
    cfg.write_text(base + sync, encoding="utf-8")
    s = load_config(cfg).sync
    assert s.database == tmp_path / "s.db" and s.batch_size == 500


# -- the platform without a broker --------------------------------------------------------------------


@pytest.fixture
def pf(platform_db):
    platform = Platform(platform_db, KEY, clock=lambda: NOW)
    platform.add_enterprise(EID, "Test Co")
    platform.add_terminal(TID, EID, kind="door")
    yield platform
    platform.close()


def wire(db, n):
    fill_log(db, TID, n)
    with EventLog.open(db, TID) as log:
        return [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in log.events()
        ]


def test_ingest_is_idempotent_and_stitches_out_of_order_batches(pf, tmp_path):
    ev = wire(tmp_path / "events.db", 30)
    r = pf.ingest(TID, ev[20:30])  # ahead of a gap: kept pending, not acked
    assert (r.acked_seq, r.pending, r.new) == (0, 10, 0)
    r = pf.ingest(TID, ev[0:10])
    assert (r.acked_seq, r.new) == (10, 10)
    r = pf.ingest(TID, ev[0:20])  # 10 duplicates, 10 new, then the pending 10 join
    assert (r.acked_seq, r.new, r.duplicates, r.pending, r.acked_hash) == (30, 20, 10, 0, ev[29].hash)
    pf.ingest(TID, ev[0:30])
    assert pf.totals() == {"door.grant": 30} and pf.terminal(TID)["duplicates"] == 40


def test_ingest_refuses_a_broken_chain_and_says_where(pf, tmp_path):
    ev = wire(tmp_path / "events.db", 10)
    forged = ev[:4] + [dataclasses.replace(ev[4], message="Welcome, Mallory")]
    r = pf.ingest(TID, forged)
    assert r.acked_seq == 4 and "chain broken at seq 5: its content hashes to" in r.problem
    assert pf.totals() == {"door.grant": 4}


def test_card_flows_validate_and_explain(pf):
    pf.add_holder(EID, "E1001", "Zhang Wei")
    pf.issue_card(EID, "E1001", "0102030405060708", {"door_groups": [1, 2]}, balance_cents=1250)
    with pytest.raises(PlatformError, match="card 0A0B0C0D0E0F0001 is not registered"):
        pf.report_loss("0a0b0c0d0e0f0001")
    with pytest.raises(PlatformError, match="not lost; only a lost card can be unlocked"):
        pf.unlock("0102030405060708")
    assert pf.report_loss("0102030405060708") == 1
    with pytest.raises(PlatformError, match="already reported lost"):
        pf.report_loss("0102030405060708")
    assert pf.unlock("0102030405060708") == 2
    with pytest.raises(PlatformError, match="balance of 12.50 yuan; settle it first"):
        pf.cancel("0102030405060708")
    assert pf.replace("0102030405060708", "1112131415161718") == 3
    new = pf.card("1112131415161718")
    assert (new["status"], new["rights"], new["balance_cents"]) == ("ACTIVE", {"door_groups": [1, 2]}, 1250)
    assert pf.card("0102030405060708")["status"] == "REPLACED"
    with pytest.raises(PlatformError, match="REPLACED; only an active, lost or voided card can be replaced"):
        pf.replace("0102030405060708", "2122232425262728")
    assert pf.cancel("1112131415161718", settle=True) == 4
    assert pf.conn.execute("SELECT amount_cents FROM refunds").fetchall() == [(1250,)]
    # Every change was queued as a signed delta continuing the previous version.
    versions = [
        (b["base_version"], b["version"], [a["asn"] for a in b["added"]], b["removed"])
        for b in (p.open_envelope(row[2], KEY.public_key()).body for row in pf.unpublished())
    ]
    assert versions == [
        (0, 1, ["0102030405060708"], []),
        (1, 2, [], ["0102030405060708"]),
        (2, 3, ["0102030405060708"], []),
        (3, 4, ["1112131415161718"], []),
    ]
    snap = pf.snapshot_body(EID)
    assert snap["version"] == 4 and sorted(a.hex().upper() for a, *_ in p.snapshot_entries(snap)) == [
        "0102030405060708",
        "1112131415161718",
    ]
    assert pf.delta_body(EID, 2)["added"] == [
        {"asn": "0102030405060708", "reason": "replaced", "listed_in_version": 3},
        {"asn": "1112131415161718", "reason": "cancelled", "listed_in_version": 4},
    ]


def test_attendance_bill_text(pf, tmp_path):
    pf.add_holder(EID, "E1001", "Zhang Wei")
    pf.issue_card(EID, "E1001", "0102030405060708")
    with EventLog.open(tmp_path / "events.db", TID) as log:
        for kind, hour, minute in [("attendance.in", 1, 2), ("attendance.out", 10, 5), ("attendance.in", 25, 0)]:
            log.append(
                NOW.replace(hour=0) + dt.timedelta(hours=hour, minutes=minute),
                kind,
                asn="0102030405060708",
                reason_code="ok",
                message="",
                detail={},
            )
        ev = [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in log.events()
        ]
    pf.ingest(TID, ev)
    assert pf.attendance_bill(EID, "E1001", "2026-11") == (
        "[onecard] Zhang Wei (E1001), attendance 2026-11: 2 day(s). 11-23 Mon in 09:02 out 18:05; "
        "11-24 Tue in 09:00 out --."
    )
    with pytest.raises(PlatformError, match="not YYYY-MM"):
        pf.attendance_bill(EID, "E1001", "November")


def test_platform_shows_a_terminals_open_door_alarm_until_door_closed(pf, tmp_path):
    db = tmp_path / "door-events.db"
    with EventLog.open(db, TID) as log:
        log.append(NOW, "door.grant", asn="0102030405060708", reason_code="granted", message="Welcome", detail={})
        log.append(
            NOW,
            "door.forced_open",
            asn=None,
            reason_code="forced_open",
            message="Door forced open: security has been alerted",
            detail={},
        )

    def upload():
        with EventLog.open_readonly(db) as log:
            pf.ingest(
                TID,
                [
                    p.WireEvent(
                        e.seq,
                        p.format_time(e.time),
                        e.kind,
                        e.asn,
                        e.reason_code,
                        e.message,
                        e.detail_json,
                        e.prev_hash,
                        e.hash,
                    )
                    for e in log.events()
                ],
            )

    upload()
    alarms = pf.terminal(TID)["open_alarms"]
    assert [(a["seq"], a["kind"]) for a in alarms] == [(2, "door.forced_open")]
    with EventLog.open(db, TID) as log:
        log.append(
            NOW,
            "door.closed",
            asn=None,
            reason_code="closed",
            message="Door closed",
            detail={"alarm": "door.forced_open"},
        )
    upload()
    assert pf.terminal(TID)["open_alarms"] == []
