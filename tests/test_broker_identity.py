"""The broker binds every client ID to its certificate, the documented ACL starts mosquitto 2, and the platform
writes the broker's configuration and issues its own workers' certificates (real mosquitto, real CLI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from central.broker_config import render_acl
from common import sync_protocol as p
from common.mqtt import MqttLink, TlsFiles
from tests.mqtt_env import AgentThread, Broker, terminal_id, wait_until, write_terminal_config

REPO = Path(__file__).resolve().parents[1]


def link(broker, cn, client_id, subscriptions=()):
    c = broker.pki.client(cn)
    lk = MqttLink(
        client_id,
        "127.0.0.1",
        broker.port,
        TlsFiles(broker.pki.ca.cert, c.cert, c.key),
        subscriptions=list(subscriptions),
    )
    lk.start()
    assert lk.connected.wait(10), f"test client {cn} could not connect"
    return lk


def test_another_certificate_cannot_take_over_a_client_id(broker, platform, tmp_path, caplog):
    admin, service = platform
    victim, attacker = terminal_id(21), terminal_id(22)
    agent = AgentThread(write_terminal_config(tmp_path / "v", victim, broker, heartbeat_seconds=600)).start()
    try:
        wait_until(lambda: admin.terminal(victim)["status"] == "online", 10, "the victim's birth message")
        # Terminal 22's certificate with the victim agent's and then each platform worker's client ID.
        for client_id in (f"onecard-agent-{victim}", "platform-w0", "onecard-platform-w1", "platform-w1"):
            lk = link(broker, attacker, client_id)
            try:
                lk.publish(
                    p.terminal_topic(attacker, p.UP_STATUS), p.encode_status(attacker, "online", None)
                ).wait_for_publish(5)
                wait_until(lambda: admin.terminal(attacker)["status"] == "online", 10, "the attacker's own status")
                admin.record_status(attacker, "offline")
            finally:
                lk.stop()
        time.sleep(0.5)  # anything the broker would have done to the victim's session has happened by now
        assert agent.agent.online
        assert admin.terminal(victim)["status"] == "online"
        assert all(w.link.connected.is_set() for w in service.workers)
    finally:
        agent.stop()
    assert "sync.disconnected" not in caplog.text and "platform.disconnected" not in caplog.text
    # The broker names each session by its certificate, whatever the client asked for.
    assert re.search(rf"New client connected from \S+ as {attacker} ", broker.log_text())
    assert f"as onecard-agent-{victim} " not in broker.log_text()


def _documented_acl() -> str:
    text = (REPO / "docs" / "sync-protocol.md").read_text(encoding="utf-8")
    section = text.split("## Broker and ACL", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_the_documented_acl_block_starts_mosquitto_and_grants_what_it_says(sync_pki, tmp_path):
    acl = _documented_acl()
    b = Broker(tmp_path / "broker", sync_pki)
    b.acl.write_text(acl, encoding="utf-8")
    b.start()
    try:
        tid, other = terminal_id(1), terminal_id(2)
        worker = link(b, "platform-w0", "platform-w0", subscriptions=[f"{p.TOPIC_ROOT}/t/+/up/#"])
        term = link(b, tid, tid, subscriptions=[p.enterprise_topic("00010001")])
        try:
            term.publish(p.terminal_topic(other, p.UP_EVENTS), b"forged").wait_for_publish(5)
            term.publish(p.terminal_topic(tid, p.UP_EVENTS), b"own").wait_for_publish(5)
            worker.publish(p.enterprise_topic("00010001"), b"broadcast").wait_for_publish(5)
            got, seen = [], []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (got and seen):
                for lk, into in ((worker, got), (term, seen)):
                    while not lk.events.empty():
                        item = lk.events.get()
                        if item[0] == "message":
                            into.append((item[1], item[2]))
                time.sleep(0.02)
        finally:
            worker.stop()
            term.stop()
    finally:
        b.stop()
    assert got == [(p.terminal_topic(tid, p.UP_EVENTS), b"own")]
    assert seen == [(p.enterprise_topic("00010001"), b"broadcast")]


def onecard(*args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "onecard", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_broker_config_is_written_from_the_registry_and_never_overwritten_unasked(sync_pki, tmp_path):
    db, key = tmp_path / "platform.db", tmp_path / "platform.key"
    onecard("platform", "init", "--db", db, "--key", key)
    onecard("platform", "add-enterprise", "00010001", "--name", "Co", "--db", db, "--key", key)
    for tid in (terminal_id(1), terminal_id(5)):
        onecard("platform", "add-terminal", tid, "--enterprise", "00010001", "--kind", "door", "--db", db, "--key", key)
    out = tmp_path / "broker"
    args = [
        "platform",
        "broker-config",
        "--db",
        db,
        "--out",
        out,
        "--ca",
        sync_pki.ca.cert,
        "--server-cert",
        sync_pki.server.cert,
        "--server-key",
        sync_pki.server.key,
        "--workers",
        "3",
    ]
    onecard(*args)
    acl = (out / "acl").read_text()
    assert acl == render_acl({terminal_id(1): "00010001", terminal_id(5): "00010001"}, 3)
    assert "user platform-w2" in acl and "user platform-w3" not in acl
    conf = (out / "mosquitto.conf").read_text()
    assert "use_identity_as_username true\nuse_username_as_clientid true\n" in conf
    assert f"acl_file {(out / 'acl').absolute()}\n" in conf
    before = {f: f.read_bytes() for f in (out / "acl", out / "mosquitto.conf")}
    onecard(
        "platform",
        "add-terminal",
        terminal_id(6),
        "--enterprise",
        "00010001",
        "--kind",
        "door",
        "--db",
        db,
        "--key",
        key,
    )
    r = onecard(*args, check=False)
    assert r.returncode != 0 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert {f: f.read_bytes() for f in before} == before
    onecard(*args, "--force")
    assert f"user {terminal_id(6)}" in (out / "acl").read_text()
    # The shipped production configuration binds client IDs the same way.
    shipped = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "use_identity_as_username true" in shipped and "use_username_as_clientid true" in shipped


def test_platform_worker_certificates_come_from_the_platform_ca(tmp_path):
    ca, out = tmp_path / "ca", tmp_path / "certs"
    onecard("platform", "ca", "init", "--dir", ca)
    onecard("platform", "ca", "platform-certs", "--dir", ca, "--workers", "2", "--out", out)
    cns = []
    for i in range(2):
        cert = x509.load_pem_x509_certificate((out / f"platform-w{i}.pem").read_bytes())
        cns.append(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        assert (out / f"platform-w{i}.key").stat().st_mode & 0o077 == 0
    assert cns == ["platform-w0", "platform-w1"]
    before = (out / "platform-w0.pem").read_bytes()
    r = onecard("platform", "ca", "platform-certs", "--dir", ca, "--workers", "3", "--out", out, check=False)
    assert r.returncode != 0 and "exists" in r.stderr and "Traceback" not in r.stderr
    assert (out / "platform-w0.pem").read_bytes() == before and not (out / "platform-w2.pem").exists()
    r = onecard("platform", "ca", "platform-certs", "--dir", ca, "--workers", "0", "--out", tmp_path / "x", check=False)
    assert r.returncode != 0 and "workers" in r.stderr and "Traceback" not in r.stderr


def test_rabbitmq_broker_config_is_written_from_the_registry(sync_pki, tmp_path):
    import json

    from central.broker_config import render_rabbitmq_definitions

    db, key = tmp_path / "platform.db", tmp_path / "platform.key"
    onecard("platform", "init", "--db", db, "--key", key)
    onecard("platform", "add-enterprise", "00010001", "--name", "Co", "--db", db, "--key", key)
    onecard(
        "platform",
        "add-terminal",
        terminal_id(1),
        "--enterprise",
        "00010001",
        "--kind",
        "door",
        "--db",
        db,
        "--key",
        key,
    )
    out = tmp_path / "rabbit"
    args = ["platform", "broker-config", "--db", db, "--out", out, "--ca", sync_pki.ca.cert]
    args += ["--server-cert", sync_pki.server.cert, "--server-key", sync_pki.server.key, "--workers", "2", "--rabbitmq"]
    onecard(*args)
    assert json.loads((out / "definitions.json").read_text()) == render_rabbitmq_definitions(
        {terminal_id(1): "00010001"}, 2
    )
    conf = (out / "rabbitmq.conf").read_text()
    assert "mqtt.ssl_cert_login = true\n" in conf and "listeners.tcp = none\n" in conf
    assert "mqtt.listeners.ssl.default = 0.0.0.0:8883\n" in conf and "listeners.ssl.default = 0.0.0.0:5671\n" in conf
    assert (out / "enabled_plugins").read_text() == "[rabbitmq_mqtt,rabbitmq_auth_mechanism_ssl].\n"
    again = onecard(*args, check=False)
    assert again.returncode != 0 and "--force" in again.stderr
