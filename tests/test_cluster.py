"""The platform on a 3-node RabbitMQ cluster (Debian's rabbitmq-server, MQTT 3.1.1 only) with AMQP workers.

Marked `cluster` (one cluster per module, ~40 s to form): `pytest -m "not cluster"` skips them; .ci/run runs them.
Each test ends with exact counts: every record stored once, none lost, balances equal to the TAC-checked loads.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion

from central.amqp_service import AmqpSettings
from central.broker_config import render_rabbitmq_definitions
from central.service import PlatformService
from central.store import Platform
from common import sync_protocol as p
from sam.keystore import KeystoreUnlock, save_keystore
from sam.software import SoftwareSam
from simulator.fleet import Fleet, LightTerminal, Records, topup_detail
from simulator.rabbitmq import RabbitCluster
from tests.mqtt_env import (
    ENTERPRISE,
    STATIONS,
    TERMINALS,
    AgentThread,
    make_pki,
    terminal_id,
    wait_until,
    write_terminal_config,
)
from tests.support import make_keystore

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("rabbit")
    pki = make_pki(work / "pki")
    c = RabbitCluster(work / "cluster", pki, dict(TERMINALS), dict(STATIONS))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def healthy(cluster):
    """Every node back up after a test that killed one."""
    yield cluster
    for n in cluster.nodes:
        if not n.alive:
            cluster.restart_node(n.index)


def platform_db(tmp_path: Path, cluster: RabbitCluster, tids: list[str]) -> tuple[Path, object]:
    db = tmp_path / "platform.db"
    admin = Platform(db, cluster.pki.platform_key)
    admin.add_enterprise(ENTERPRISE, "Test Co")
    admin.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    for tid in tids:
        admin.add_terminal(tid, ENTERPRISE, kind="topup")
        admin.issue_card(ENTERPRISE, "E1", card_of(tid), max_balance_cents=2**31)
    admin.close()
    return db, None


def card_of(tid: str) -> str:
    return "0A0B" + tid


def check_exact(db: Path, key, expected: dict[str, Records | int], loaded: dict[str, int]) -> None:
    """Each terminal's records all stored, each once, chain head = the terminal's; each card's balance = its loads."""
    pf = Platform(db, key)
    try:
        for tid, n in expected.items():
            count, distinct, top = pf.conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM events WHERE terminal_id = ?", (tid,)
            ).fetchone()
            assert (count, distinct, top) == (n, n, n), f"{tid}: stored {count} ({distinct} distinct), expected {n}"
            card = pf.card(card_of(tid))
            assert card["balance_cents"] == loaded[tid], f"{tid}: balance {card['balance_cents']} != {loaded[tid]}"
            statuses = {t["tac_status"] for t in pf.purse_transactions(card_of(tid))}
            assert statuses == {"ok"}, f"{tid}: TAC statuses {statuses}"
        assert pf.held_money() == []
    finally:
        pf.close()


def fill_money_log(db: Path, tid: str, n: int, keystore, every: int = 10) -> int:
    """n chained records in the terminal's real event log, every `every`-th a top-up with the card's TAC."""
    import datetime as dt

    from simulator.fleet import START
    from terminal.event_log import EventLog

    loaded = counter = 0
    with EventLog.open(db, tid) as log:
        log.db.execute("PRAGMA synchronous = OFF")
        for i in range(1, n + 1):
            when = START + dt.timedelta(seconds=i)
            if i % every == 0:
                d = topup_detail(
                    keystore,
                    ENTERPRISE,
                    card_of(tid),
                    tid,
                    counter=counter,
                    amount=100,
                    balance_after=loaded + 100,
                    when=when,
                )
                counter += 1
                loaded += 100
                log.append(when, "topup.load", asn=card_of(tid), reason_code="completed", message="Top-up", detail=d)
            else:
                log.append(when, "door.grant", asn=card_of(tid), reason_code="ok", message="Welcome", detail={"i": i})
    return loaded


def amqp(cluster: RabbitCluster) -> AmqpSettings:
    return AmqpSettings(tuple(cluster.amqp_addresses), cluster.pki.ca.cert, cluster.pki.platform_cert_dir)


def test_definitions_give_each_terminal_only_its_own_topics():
    d = render_rabbitmq_definitions({"000000000001": "00010001"}, 1, {"000000000900": "00010001"})
    tp = {t["user"]: t for t in d["topic_permissions"]}
    import re

    w, r = re.compile(tp["000000000001"]["write"]), re.compile(tp["000000000001"]["read"])
    assert w.match("onecard.v1.t.000000000001.up.events")
    assert not w.match("onecard.v1.t.000000000002.up.events")
    assert not w.match("onecard.v1.t.000000000001.down.ack")
    assert not w.match("onecard.v1.s.000000000001.up.registry")  # not a station
    assert r.match("onecard.v1.t.000000000001.down.#") and r.match("onecard.v1.e.00010001.down.#")
    assert not r.match("onecard.v1.t.000000000002.down.#") and not r.match("onecard.v1.e.00020002.down.#")
    assert not r.match("onecard.v1.t.+.down.#") and not r.match("onecard.v1.#")
    assert re.compile(tp["000000000900"]["write"]).match("onecard.v1.s.000000000900.up.registry")
    assert not re.compile(tp["platform-w0"]["write"]).match("onecard.v1.t.000000000001.up.events")
    assert all(u["password_hash"] == "" for u in d["users"])  # a certificate is the only way in
    with pytest.raises(ValueError):
        render_rabbitmq_definitions({"1": "00010001"}, 1)


def test_a_terminal_cannot_publish_or_subscribe_as_another(cluster):
    """Terminal 1's certificate: terminal 2's topics are refused (RabbitMQ 3.10 closes the connection rather than
    answer 0x80), a foreign client ID gets no subscription at all, a username other than the CN no session."""
    import pika

    pki = cluster.pki
    own, other = terminal_id(1), terminal_id(2)

    def attempt(client_id: str, action, node: int = 0, **auth) -> tuple[list, bool]:
        grants: list = []
        closed: list = []
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        files = pki.client(own)
        c.tls_set(ca_certs=str(pki.ca.cert), certfile=str(files.cert), keyfile=str(files.key))
        if auth:
            c.username_pw_set(auth["username"], auth.get("password"))
        c.on_subscribe = lambda cl, u, mid, rcs, props: grants.append([rc.value for rc in rcs])
        c.on_disconnect = lambda cl, u, f, rc, props: closed.append(rc)
        connected: list = []
        c.on_connect = lambda cl, u, f, rc, props: connected.append(not rc.is_failure)
        c.connect(*cluster.mqtt_addresses[node])
        c.loop_start()
        try:
            wait_until(lambda: connected or closed, 10, "the broker's answer to CONNECT")
            if connected == [True]:
                action(c)
                time.sleep(1.0)
            refused = bool(closed) or connected != [True]
        finally:
            c.loop_stop()
            c.disconnect()
        return grants, refused

    # Its own downlinks: granted.
    grants, closed = attempt(own, lambda c: c.subscribe(p.terminal_topic(own, p.DOWN_ACK), 1))
    assert grants == [[1]] and not closed
    # Another terminal's downlinks, another enterprise's broadcasts: no grant, the connection is closed.
    for topic in (p.terminal_topic(other, p.DOWN_ACK), p.enterprise_topic("00020002"), "onecard/v1/t/+/down/#"):
        grants, closed = attempt(own, lambda c, t=topic: c.subscribe(t, 1), node=1)
        assert grants == [] and closed, topic
    # Another terminal's client ID: not even its own topics (its subscription queue would bear the other's name).
    grants, closed = attempt(other, lambda c: c.subscribe(p.terminal_topic(own, p.DOWN_ACK), 1), node=2)
    assert grants == [] and closed
    # A username other than the certificate's CN, without a password: no session.
    grants, closed = attempt(own, lambda c: c.subscribe(p.terminal_topic(other, p.DOWN_ACK), 1), username=other)
    assert grants == [] and closed
    # Publishing on another terminal's uplink: nothing reaches the platform's queue (a spy consumer sees nothing).
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    w = pki.client("platform-w7")
    ctx.load_cert_chain(str(w.cert), str(w.key))
    host, port = cluster.amqp_addresses[1]
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(
            host, port, ssl_options=pika.SSLOptions(ctx, host), credentials=pika.credentials.ExternalCredentials()
        )
    )
    try:
        ch = conn.channel()
        seen: list = []
        ch.basic_consume("onecard.uplink", lambda c, m, props, body: seen.append((m.routing_key, body)), auto_ack=True)
        attempt(own, lambda c: c.publish(p.terminal_topic(other, p.UP_EVENTS), b"forged", qos=1))
        attempt(own, lambda c: c.publish(p.terminal_topic(own, p.UP_STATUS), b"", qos=1))
        conn.process_data_events(time_limit=1.0)
        assert (f"onecard.v1.t.{own}.up.status", b"") in seen, seen
        assert not [k for k, _ in seen if other in k], seen
    finally:
        conn.close()


def test_broker_node_killed_mid_upload_agents_move_on_nothing_lost_or_doubled(healthy, tmp_path):
    """Real sync agents (MQTT 5 first: they fall back to 3.1.1), spread over the nodes; one node SIGKILLed."""
    cluster = healthy
    keystore = make_keystore()
    tids = [terminal_id(i) for i in (1, 2, 3, 4)]
    db, _ = platform_db(tmp_path, cluster, tids)
    n = 3000
    loaded, agents = {}, []
    nodes = [f"127.0.0.1:{port}" for _, port in cluster.mqtt_addresses]
    for k, tid in enumerate(tids):
        cfg = write_terminal_config(tmp_path / tid, tid, cluster, kind="topup", batch_size=200, ack_timeout_seconds=3.0)
        text = cfg.read_text().replace('broker_host = "127.0.0.1"\n', "").replace(f"broker_port = {cluster.port}\n", "")
        rotated = nodes[k % 3 :] + nodes[: k % 3]
        cfg.write_text(text.replace("[sync]\n", f"[sync]\nbrokers = {rotated!r}\n".replace("'", '"')))
        loaded[tid] = fill_money_log(tmp_path / tid / "events.db", tid, n, keystore)
        agents.append(AgentThread(cfg))
    service = PlatformService(db, cluster.pki.platform_key, amqp(cluster), workers=2, tac_sam=SoftwareSam(keystore))
    service.start()
    try:
        assert service.wait_connected(20)
        for a in agents:
            a.start()
        wait_until(lambda: sum(a.acked_seq() for a in agents) > n // 2, 60, "the first uploads")
        cluster.kill(0)  # agents 1 and 4 started on node 1, and a worker may be consuming there
        wait_until(lambda: all(a.acked_seq() == n for a in agents), 120, "every record acknowledged")
        assert {a.agent.link.protocol for a in agents} == {paho.MQTTv311}  # the fallback, for real
        moved = [a for a in agents if a.agent.link.port != cluster.nodes[0].mqtt_port]
        assert len(moved) == len(agents)
        # A loss report reaches every agent through the surviving nodes (worker 0 publishes it over AMQP).
        admin = Platform(db, cluster.pki.platform_key)
        admin.issue_card(ENTERPRISE, "E1", "0C0D000000000001")
        version = admin.report_loss("0C0D000000000001")
        admin.close()
        wait_until(lambda: all(a.blacklist_version() >= version for a in agents), 30, "the loss report everywhere")
    finally:
        for a in agents:
            a.stop()
        service.stop()
    check_exact(db, cluster.pki.platform_key, {t: n for t in tids}, loaded)


def write_pem(key, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def serve(cluster, db: Path, key: Path, ks: Path, pw: Path, index: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "onecard", "platform", "serve", "--db", db, "--key", key]
    args += ["--ca", cluster.pki.ca.cert, "--cert-dir", cluster.pki.platform_cert_dir, "--workers", "1"]
    args += ["--first-worker", str(index), "--tac-keystore", ks, "--passphrase-file", pw]
    for host, port in cluster.amqp_addresses:
        args += ["--amqp", f"{host}:{port}"]
    out = open(log, "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(
            [str(a) for a in args], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=out, stderr=out
        )
    finally:
        out.close()


def test_worker_killed_mid_batch_its_messages_go_to_the_others_nothing_lost_or_doubled(cluster, tmp_path):
    """Three worker processes; one SIGKILLed while it holds unacknowledged batches (committed or not)."""
    keystore = make_keystore()
    save_keystore(tmp_path / "tac.keystore", keystore, KeystoreUnlock.from_passphrase("pw"))
    (tmp_path / "pw").write_text("pw\n")
    tids = [terminal_id(i) for i in range(10, 30)]
    db, _ = platform_db(tmp_path, cluster, tids)
    key = write_pem(cluster.pki.platform_key, tmp_path / "platform.key")
    n = 2000
    terminals = []
    for k, tid in enumerate(tids):
        r = Records(tid, ENTERPRISE, card_of(tid), keystore, money_every=10)
        r.extend(n)
        files = cluster.pki.client(tid)
        terminals.append(
            LightTerminal(
                r,
                cluster.mqtt_addresses,
                cluster.pki.ca.cert,
                files.cert,
                files.key,
                cluster.pki.platform_key.public_key(),
                batch=100,
                ack_timeout=5.0,
                start_node=k,
            )
        )
    workers = [
        serve(cluster, db, key, tmp_path / "tac.keystore", tmp_path / "pw", i, tmp_path / f"w{i}.log") for i in range(3)
    ]
    fleet = Fleet(terminals).start()
    try:
        wait_until(lambda: sum(t.acked for t in terminals) > n * len(tids) // 4, 90, "the first uploads")
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
        wait_until(lambda: all(t.done for t in terminals), 120, "every record acknowledged")
    finally:
        fleet.stop()
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(20)
    check_exact(db, cluster.pki.platform_key, {t: n for t in tids}, {r.r.tid: r.r.loaded for r in terminals})


def test_a_loss_report_leaves_while_the_publisher_still_has_a_backlog_of_uploads(cluster, tmp_path):
    """Worker 0 publishes the outbound queue between uploads. Under a backlog pika's dispatch loop does not return
    (each ack lets the broker deliver the next upload, read during that ack): a loss report committed meanwhile must
    still reach the terminals within a bounded time, not once the backlog is drained."""
    import threading

    from central.broker_config import UPLINK_QUEUE

    pki = cluster.pki
    sender, listener = terminal_id(41), terminal_id(42)
    db, _ = platform_db(tmp_path, cluster, [sender, listener])
    admin = Platform(db, pki.platform_key)
    admin.add_holder(ENTERPRISE, "LOST", "Loser")
    admin.issue_card(ENTERPRISE, "LOST", "0C0D000000000001")

    def client(tid: str) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=tid, protocol=paho.MQTTv311)
        files = pki.client(tid)
        c.tls_set(ca_certs=str(pki.ca.cert), certfile=str(files.cert), keyfile=str(files.key))
        c.max_inflight_messages_set(1000)
        return c

    # The backlog: heartbeats queued before the worker consumes (each a store write and a signed answer).
    total = 6000
    hb = p.encode_heartbeat(p.Heartbeat(sender, "2026-11-23T02:00:00.000000Z", 0, 0, 0, 0, 0, None))
    acked: list = []
    up = client(sender)
    up.on_publish = lambda c, u, mid, rc, props: acked.append(mid)
    up.connect(*cluster.mqtt_addresses[1])
    up.loop_start()
    received: list = []
    down = client(listener)
    down.on_connect = lambda c, u, f, rc, props: c.subscribe(p.enterprise_topic(ENTERPRISE), 0)
    down.on_message = lambda c, u, msg: received.append(time.monotonic())
    down.connect(*cluster.mqtt_addresses[2])
    down.loop_start()
    worker = amqp(cluster).make_worker(0, Platform(db, pki.platform_key, unverified_money=True), publisher=True)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            worker.step()

    thread = threading.Thread(target=serve, daemon=True)
    try:
        for _ in range(total):
            up.publish(p.terminal_topic(sender, p.UP_HEARTBEAT), hb, qos=1)
        wait_until(lambda: len(acked) == total, 60, "the broker accepting the backlog")
        worker.start_link()
        assert worker.connected.wait(10)
        worker.flush_outbound()  # what the set-up queued, before any upload is dispatched
        assert not admin.unpublished()
        thread.start()
        wait_until(lambda: worker.handled > 200, 20, "the worker handling the backlog")
        t0 = time.monotonic()
        admin.report_loss("0C0D000000000001")
        wait_until(lambda: not admin.unpublished(), 10, "the loss report published")
        published, handled_then = time.monotonic() - t0, worker.handled
        wait_until(lambda: received, 5, "the loss report at a terminal")
        assert handled_then < total, "the backlog was drained before the loss report went: the test proves nothing"
        # Without the flush between uploads it went after 1.25 s here (6000 backlog), with it after 22 ms.
        assert published < 0.5, f"published {published:.2f} s after the loss report, behind the backlog"
        wait_until(lambda: worker.handled == total, 60, "the rest of the backlog")
        assert worker.refused == 0
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        for c in (up, down):
            c.loop_stop()
            c.disconnect()
        worker.stop_link()
        worker.platform.close()
        admin.close()
        cluster.ctl(cluster.live()[0], "purge_queue", UPLINK_QUEUE, check=False)
