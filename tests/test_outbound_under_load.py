"""The outbound publisher keeps publishing while uploads keep coming (issue 14's loss_propagation at 1,000 terminals).

Worker 0 both handles uplinks and publishes the outbound queue. Under steady ingest its event queue never runs dry;
a loss report committed meanwhile must still leave within a bounded time, not after the uploads stop.
"""

from __future__ import annotations

import threading
import time

from central.service import BrokerSettings
from central.store import Platform
from common import sync_protocol as p
from common.mqtt import MESSAGE
from tests.mqtt_env import ENTERPRISE, terminal_id, wait_until

TID = terminal_id(1)
LOST_ASN = "0C0D000000000001"


def test_a_loss_report_is_published_while_the_publisher_is_busy_with_uploads(broker, tmp_path):
    db, key = tmp_path / "platform.db", broker.pki.platform_key
    admin = Platform(db, key)
    admin.add_enterprise(ENTERPRISE, "Test Co")
    admin.add_terminal(TID, ENTERPRISE, kind="door")
    admin.add_holder(ENTERPRISE, "LOST", "Loser")
    admin.issue_card(ENTERPRISE, "LOST", LOST_ASN)
    settings = BrokerSettings("127.0.0.1", broker.port, broker.pki.ca.cert, broker.pki.platform_cert_dir)
    worker = settings.make_worker(0, Platform(db, key, unverified_money=True), publisher=True)
    worker.start_link()
    stop = threading.Event()
    topic = p.terminal_topic(TID, p.UP_HEARTBEAT)
    hb = p.encode_heartbeat(p.Heartbeat(TID, "2026-11-23T02:00:00.000000Z", 0, 0, 0, 0, 0, None))

    def serve():
        while not stop.is_set():
            worker.step()

    def feed():  # a terminal fleet that never lets the worker's queue run dry
        while not stop.is_set():
            if worker.link.events.qsize() < 300:
                for _ in range(300):
                    worker.link.events.put((MESSAGE, topic, hb))
            else:
                time.sleep(0.001)

    threads = [threading.Thread(target=serve, daemon=True), threading.Thread(target=feed, daemon=True)]
    try:
        assert worker.connected.wait(10), "the worker could not connect to the test broker"
        threads[0].start()
        wait_until(lambda: not admin.unpublished(), 5, "the queue published before the load starts")
        threads[1].start()
        wait_until(lambda: worker.handled > 300, 5, "the worker handling heartbeats")
        handled_before = worker.handled
        t0 = time.monotonic()
        admin.report_loss(LOST_ASN)
        assert admin.unpublished(), "the loss report queued a notification"
        wait_until(lambda: not admin.unpublished(), 3, "the loss report published during the load")
        elapsed = time.monotonic() - t0
        assert worker.link.events.qsize() > 0, "the load kept the worker's queue non-empty throughout"
        assert worker.handled > handled_before, "uploads kept being handled meanwhile"
        assert elapsed < 1.0, f"published {elapsed:.2f} s after the loss report"
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(10)
        worker.stop_link()
        worker.platform.close()
        admin.close()
