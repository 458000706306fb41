"""Sync agent and platform over a real mosquitto with TLS client certificates and the onecard ACL."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import sync_protocol as p
from common.mqtt import MqttLink, TlsFiles
from sync_agent.store import read_acked_seq
from terminal.blacklist import Blacklist
from terminal.event_log import EventLog
from tests.mqtt_env import ENTERPRISE, AgentThread, fill_log, terminal_id, wait_until, write_terminal_config

ASN = "0102030405060708"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raw_link(broker, cn, subscriptions=()):
    c = broker.pki.client(cn)
    link = MqttLink(
        f"test-{cn}-{time.monotonic_ns()}",
        "127.0.0.1",
        broker.port,
        TlsFiles(broker.pki.ca.cert, c.cert, c.key),
        subscriptions=list(subscriptions),
    )
    link.start()
    assert link.connected.wait(10), f"test client {cn} could not connect"
    return link


def drained(admin, tid, n):
    return lambda: admin.terminal(tid)["contiguous_seq"] == n


def test_upload_ack_round_trip_status_and_heartbeat(broker, platform, tmp_path):
    admin, _ = platform
    tid = terminal_id(1)
    cfg = write_terminal_config(tmp_path / "t1", tid, broker, batch_size=100, compact_keep=0)
    n = fill_log(tmp_path / "t1" / "events.db", tid, 2500)
    agent = AgentThread(cfg).start()
    try:
        wait_until(lambda: agent.acked_seq() == n, 30, "the agent recording the platform's ack of every record")
        t = admin.terminal(tid)
        assert (t["contiguous_seq"], t["events"], t["chain_problem"], t["status"]) == (n, n, None, "online")
        wait_until(lambda: admin.terminal(tid)["heartbeat"] is not None, 10, "a heartbeat")
        hb = admin.terminal(tid)["heartbeat"]
        assert hb["head_seq"] == n and hb["last_tap_at"] == "2026-11-23T01:41:39.000000Z"
        with EventLog.open(tmp_path / "t1" / "events.db", tid) as log:
            # compact_keep = 0: acknowledged records are compacted; the rest still verifies from the anchor.
            assert log.anchor()[0] >= 1000 and log.verify().ok
            assert t["head_hash"] == log.verify().head_hash
    finally:
        agent.stop(graceful=False)  # no DISCONNECT: the broker publishes the last will
    wait_until(lambda: admin.terminal(tid)["status"] == "offline", 60, "the last will marking the terminal offline")


def test_duplicate_deliveries_never_change_the_totals(broker, platform, tmp_path):
    admin, _ = platform
    tid = terminal_id(2)
    n = fill_log(tmp_path / "events.db", tid, 1200, kind="attendance.in")
    with EventLog.open(tmp_path / "events.db", tid) as log:
        wire = [
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
    acks = []
    link = raw_link(broker, tid, [p.terminal_topic(tid, p.DOWN_ACK)])
    try:
        link.events.get(timeout=5)  # connected
        # Overlapping, repeated and reordered batches: what redelivery and resends look like.
        for a, b in [(0, 500), (0, 500), (300, 800), (800, 1200), (500, 1200), (0, 1200), (800, 1200)]:
            link.publish(p.terminal_topic(tid, p.UP_EVENTS), p.encode_events(tid, wire[a:b])).wait_for_publish(5)
        wait_until(lambda: admin.terminal(tid)["contiguous_seq"] == n, 20, "the platform holding every record")
        wait_until(lambda: link.events.qsize() >= 7, 20, "an ack for every batch")
        while not link.events.empty():
            acks.append(p.open_envelope(link.events.get()[2], broker.pki.platform_key.public_key()).body["acked_seq"])
    finally:
        link.stop()
    assert admin.totals() == {"attendance.in": n}
    assert admin.terminal(tid)["duplicates"] == 500 + 200 + 700 + 1200 + 400
    # Acks name a contiguous seq (a batch boundary here); two workers may send them out of order.
    assert max(acks) == n and set(acks) <= {500, 800, 1200}


def test_agent_sigkill_mid_upload_then_restart_loses_and_doubles_nothing(broker, platform, tmp_path):
    admin, _ = platform
    tid = terminal_id(3)
    cfg = write_terminal_config(tmp_path / "t3", tid, broker, batch_size=200, max_events_per_s=4000)
    n = fill_log(tmp_path / "t3" / "events.db", tid, 20_000)
    cmd = [sys.executable, "-m", "onecard", "sync", "run", "--config", str(cfg)]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: admin.terminal(tid)["contiguous_seq"] >= 2000, 30, "the first acknowledged batches")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = admin.terminal(tid)["contiguous_seq"]
        assert killed_at < n, "the agent finished before it could be killed; raise the backlog"
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(drained(admin, tid, n), 60, "the restarted agent draining the backlog")
        wait_until(lambda: read_acked_seq(tmp_path / "t3" / "sync.db") == n, 20, "the agent recording the last ack")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            err = proc.communicate(timeout=10)[1].decode()
            assert proc.returncode == 0, err[-2000:]
    t = admin.terminal(tid)
    assert (t["events"], t["chain_problem"]) == (n, None)
    assert admin.totals() == {"door.grant": n}


def test_broker_restart_mid_upload_and_outage_backlog_drain(broker, platform, tmp_path):
    admin, _ = platform
    tid = terminal_id(4)
    cfg = write_terminal_config(
        tmp_path / "t4", tid, broker, batch_size=500, max_events_per_s=5000, ack_timeout_seconds=2
    )
    db = tmp_path / "t4" / "events.db"
    n = fill_log(db, tid, 10_000)
    agent = AgentThread(cfg).start()
    try:
        wait_until(lambda: agent.acked_seq() >= 1000, 30, "the first acknowledged batches")
        assert agent.acked_seq() < n, "upload finished before the broker restart; raise the backlog"
        broker.restart()
        wait_until(drained(admin, tid, n), 60, "the upload resuming after the broker restart")
        # Broker down while the terminal keeps logging: 20,000 records pile up, then drain.
        broker.stop()
        start = dt.datetime(2026, 11, 24, 1, 0, tzinfo=dt.timezone.utc)
        n2 = fill_log(db, tid, 20_000, start=start)
        assert n2 == n + 20_000
        broker.start()
        wait_until(drained(admin, tid, n2), 60, "the outage backlog draining")
        wait_until(lambda: agent.acked_seq() == n2, 10, "the agent recording the final ack")
    finally:
        agent.stop()
    t = admin.terminal(tid)
    assert (t["events"], t["chain_problem"]) == (n2, None) and admin.totals() == {"door.grant": n2}


def test_signed_downlinks_forgery_replay_rollback_malformed_and_gap(broker, platform, tmp_path):
    admin, service = platform
    tid = terminal_id(5)
    admin.add_holder(ENTERPRISE, "E5", "Li Lei")
    for i in range(3):
        admin.issue_card(ENTERPRISE, "E5", f"00000000000000{i:02X}")
    cfg = write_terminal_config(tmp_path / "t5", tid, broker)
    agent = AgentThread(cfg).start()
    pub = raw_link(broker, "platform-w7")  # a worker certificate the service does not use
    down = p.terminal_topic(tid, p.DOWN_MSG)
    try:
        wait_until(lambda: agent.agent.online, 10, "the agent connecting")
        admin.report_loss("0000000000000002")
        v1 = admin.report_loss("0000000000000000")
        wait_until(lambda: agent.blacklist_version() == v1, 10, "the loss report reaching the terminal")
        genuine = admin.conn.execute("SELECT payload FROM outbound ORDER BY id DESC LIMIT 1").fetchone()[0]
        key = broker.pki.platform_key
        now = dt.datetime.now(dt.timezone.utc)
        epoch = admin.epoch().to_json()
        forged_body = {
            "enterprise_id": ENTERPRISE,
            "epoch": epoch,
            "base_version": v1,
            "version": v1 + 1,
            "added": [],
            "removed": ["0000000000000000"],
        }
        attacks = [
            (
                "bad_signature",
                p.seal(
                    Ed25519PrivateKey.generate(),
                    "blacklist.delta",
                    f"t:{tid}",
                    forged_body,
                    now,
                    msg_id=secrets.token_hex(16),
                ),
            ),
            ("replay", genuine),
            (
                "rollback",
                p.seal(
                    key,
                    "blacklist.snapshot",
                    f"t:{tid}",
                    {"enterprise_id": ENTERPRISE, "epoch": epoch, "version": 1, "count": 0, "groups": []},
                    now,
                    msg_id=secrets.token_hex(16),
                ),
            ),
            ("malformed", b'{"v": 1, "type": "blacklist.delta", "body": '),
            (
                "wrong_target",
                p.seal(key, "blacklist.delta", f"t:{terminal_id(6)}", forged_body, now, msg_id=secrets.token_hex(16)),
            ),
        ]
        for i, (_, payload) in enumerate(attacks):
            pub.publish(down, payload).wait_for_publish(5)
            wait_until(lambda: len(agent.agent.rejected) == i + 1, 10, f"attack {i} being refused")
        assert [r for r, _ in agent.agent.rejected] == [reason for reason, _ in attacks]
        with Blacklist.open(tmp_path / "t5" / "blacklist.db") as bl:
            assert bl.version() == v1 and bl.lookup(bytes(8)).reason == "lost"
        # A genuine delta that skips a version: the agent asks for a snapshot and ends up current.
        bulk_v = admin.blacklist_bulk(ENTERPRISE, [bytes([9]) * 8, bytes([10]) * 8])
        gap = p.seal(
            key,
            "blacklist.delta",
            f"e:{ENTERPRISE}",
            {
                "enterprise_id": ENTERPRISE,
                "epoch": epoch,
                "base_version": bulk_v,
                "version": bulk_v + 1,
                "added": [],
                "removed": [],
            },
            now,
            msg_id=secrets.token_hex(16),
        )
        pub.publish(p.enterprise_topic(ENTERPRISE), gap).wait_for_publish(5)
        wait_until(lambda: agent.blacklist_version() == bulk_v, 10, "the snapshot requested after the gap")
        with Blacklist.open(tmp_path / "t5" / "blacklist.db") as bl:
            assert bl.count() == 4 and bl.lookup(bytes([9]) * 8) is not None
        # Configuration and a card action: stored in the inbox once, even when sent twice.
        cv = admin.publish_config(ENTERPRISE, {"doors": {tid: {"group": 2}}, "pos": {"offline_limit": "50.00"}})
        action = admin.add_card_action("0000000000000001", "topup", {"amount": 100})
        again = admin.seal("card_action", f"t:{tid}", admin._action_body(action))
        wait_until(lambda: not admin.unpublished(), 10, "the platform publishing its queue")
        pub.publish(down, again).wait_for_publish(5)
        wait_until(
            lambda: any(r == "duplicate_action" for r, _ in agent.agent.rejected),
            10,
            "the repeated card action being recognised",
        )
    finally:
        pub.stop()
        agent.stop()
    from sync_agent.store import SyncStore

    store = SyncStore.open(tmp_path / "t5" / "sync.db", tid)
    try:
        assert store.config_version() == cv
        assert [(a["action_id"], a["status"]) for a in store.card_actions()] == [(action, "pending")]
    finally:
        store.close()


def test_clock_drift_is_warned_about(broker, platform, tmp_path, caplog):
    tid = terminal_id(7)
    cfg = write_terminal_config(tmp_path / "t7", tid, broker, clock_tolerance_seconds=5)
    # The terminal's clock runs 3 minutes fast; the platform answers the agent's sync request with its time.
    agent = AgentThread(cfg, wall_clock=lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=3))
    agent.start()
    try:
        wait_until(lambda: "sync.clock_drift" in caplog.text, 10, "a clock drift warning")
    finally:
        agent.stop()
    assert "s ahead of the platform" in caplog.text


def test_a_terminal_cannot_publish_as_another(broker, platform, tmp_path):
    admin, _ = platform
    victim = terminal_id(9)
    fill_log(tmp_path / "events.db", terminal_id(8), 10)
    fill_log(tmp_path / "victim.db", victim, 10)
    with EventLog.open(tmp_path / "victim.db", victim) as log:
        wire = [
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
    # Terminal 8's certificate, publishing a well-formed batch under terminal 9's topic.
    attacker = raw_link(broker, terminal_id(8))
    try:
        attacker.publish(p.terminal_topic(victim, p.UP_EVENTS), p.encode_events(victim, wire)).wait_for_publish(5)
        attacker.publish(
            p.terminal_topic(victim, p.UP_STATUS), p.encode_status(victim, "offline", None), retain=True
        ).wait_for_publish(5)
        # Then something it may publish, so we know the broker processed the forged ones first.
        attacker.publish(
            p.terminal_topic(terminal_id(8), p.UP_STATUS), p.encode_status(terminal_id(8), "online", None)
        ).wait_for_publish(5)
        wait_until(lambda: admin.terminal(terminal_id(8))["status"] == "online", 10, "the attacker's own status")
    finally:
        attacker.stop()
    v = admin.terminal(victim)
    assert (v["contiguous_seq"], v["events"], v["status"]) == (0, 0, None)


def test_loss_report_reaches_every_terminal_blacklist(broker, platform, tmp_path, sam_and_card):
    """N=50 agents in this process, each with its own MQTT session and files; then one door refuses the card."""
    admin, _ = platform
    n_terminals = 50
    admin.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
    sam, card = sam_and_card
    asn = card.state.asn.hex().upper()
    admin.issue_card(ENTERPRISE, "E1001", asn)
    agents = [
        AgentThread(write_terminal_config(tmp_path / f"a{i}", terminal_id(10 + i), broker, heartbeat_seconds=600))
        for i in range(n_terminals)
    ]
    try:
        for a in agents:
            a.start()
        wait_until(lambda: all(a.agent.online for a in agents), 30, "every agent connecting")
        v = admin.report_loss(asn)
        wait_until(lambda: all(a.blacklist_version() == v for a in agents), 30, "every terminal applying the loss")
    finally:
        for a in agents:
            a.stop()
    for a in agents:
        with Blacklist.open(a.config.terminal.blacklist) as bl:
            assert bl.lookup(card.state.asn).reason == "lost"
    # The terminal itself enforces it from the file the agent wrote.
    from simulator.inprocess import InProcessReader
    from tests.support import MONDAY_10AM, make_terminal

    (tmp_path / "door").mkdir()
    term, _ = make_terminal(tmp_path / "door", sam)
    term.blacklist.close()
    term.blacklist = Blacklist.open(agents[0].config.terminal.blacklist)
    reader = InProcessReader()
    reader.tap(card)
    decision = term.handle_tap(reader.wait_for_card(0), MONDAY_10AM)
    assert decision.reason_code == "blacklisted" and decision.message.startswith("Card reported lost")


@pytest.fixture
def sam_and_card():
    from tests.support import make_card, make_sam

    sam = make_sam()
    return sam, make_card(sam)


def test_an_agent_with_compress_uploads_sends_zlib_and_the_platform_stores_every_record(
    broker, platform, tmp_path, monkeypatch
):
    admin, _ = platform
    seen: list[int] = []
    decode = p.decode_events

    def spy(payload):
        seen.append(payload[0])
        return decode(payload)

    monkeypatch.setattr(p, "decode_events", spy)
    tid = terminal_id(1)
    cfg = write_terminal_config(tmp_path / "t1", tid, broker, batch_size=200, compress_uploads=True)
    n = fill_log(tmp_path / "t1" / "events.db", tid, 1500)
    agent = AgentThread(cfg).start()
    try:
        wait_until(lambda: agent.acked_seq() == n, 30, "the agent recording the platform's ack of every record")
    finally:
        agent.stop()
    t = admin.terminal(tid)
    assert (t["contiguous_seq"], t["events"], t["chain_problem"]) == (n, n, None)
    assert seen and set(seen) == {0x78}
