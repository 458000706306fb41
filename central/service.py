"""The platform's MQTT side: workers sharing `$share/platform/...` uploads, and the outbound publisher.

Each worker has its own MQTT session and its own SQLite connection; the broker splits the messages between them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from central.broker_config import worker_cn
from central.db import PlatformError
from central.station_registry import answer_request
from central.store import Platform
from common import registry_protocol as rp
from common import sync_protocol as p
from common.logs import log_event
from common.mqtt import CONNECTED, DISCONNECTED, MESSAGE, MqttLink, TlsFiles

log = logging.getLogger("platform")

SHARE_GROUP = "platform"
UPLINK_FILTER = f"$share/{SHARE_GROUP}/{p.TOPIC_ROOT}/t/+/up/#"
REGISTRY_FILTER = f"$share/{SHARE_GROUP}/{p.TOPIC_ROOT}/s/+/{rp.UP_REGISTRY}"  # issuing stations' requests
# The publishing worker looks at the outbound queue at least this often (seconds) even while uplinks keep coming:
# under steady ingest its event queue never runs dry, and a loss report must not wait for the uploads to stop.
OUTBOUND_INTERVAL = 0.05


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    ca: Path
    # Worker N connects with cert_dir/platform-wN.pem and .key (`onecard platform ca platform-certs`): the broker
    # takes its username and client ID from the certificate, so every worker needs its own.
    cert_dir: Path
    protocol: str = "5"  # shared subscriptions need MQTT 5

    def make_worker(self, index: int, platform: Platform, *, publisher: bool = False) -> Worker:
        return Worker(index, platform, self, publisher=publisher)

    def worker_tls(self, index: int) -> TlsFiles:
        cn = worker_cn(index)
        tls = TlsFiles(Path(self.ca), Path(self.cert_dir) / f"{cn}.pem", Path(self.cert_dir) / f"{cn}.key")
        for f in (tls.ca_file, tls.cert_file, tls.key_file):
            if not f.is_file():
                raise PlatformError(
                    f"TLS file {f} of platform worker {cn} does not exist; issue the workers' "
                    f"certificates with `onecard platform ca platform-certs --workers N --out "
                    f"{self.cert_dir}`"
                )
        return tls


class Worker:
    """Handles uplink messages for whichever terminals the broker hands it."""

    def __init__(self, index: int, platform: Platform, broker: BrokerSettings, *, publisher: bool = False) -> None:
        self.name = f"w{index}"
        self.platform = platform
        self.publisher = publisher
        # The client ID is the certificate's CN: the broker replaces whatever is sent with it anyway.
        self.link = MqttLink(
            worker_cn(index),
            broker.host,
            broker.port,
            broker.worker_tls(index),
            subscriptions=[UPLINK_FILTER, REGISTRY_FILTER],
            protocol=broker.protocol,
            max_inflight=200,
        )
        self.handled = 0
        self.refused = 0
        self._flushed_at = 0.0

    def step(self, timeout: float = 0.02) -> None:
        """Handle what the broker delivered; the publisher also sends the outbound queue every OUTBOUND_INTERVAL
        between messages (not only once the event queue is empty, which under steady ingest it never is)."""
        try:
            item = self.link.events.get(timeout=timeout)
        except queue.Empty:
            item = None
        while item is not None:
            if item[0] == MESSAGE:
                self.handle(item[1], item[2])
            elif item[0] == CONNECTED:
                log_event(log, "platform.connected", worker=self.name, text="worker connected to the broker")
            elif item[0] == DISCONNECTED:
                log_event(
                    log,
                    "platform.disconnected",
                    logging.WARNING,
                    worker=self.name,
                    reason=item[1],
                    text="worker lost the broker; it reconnects by itself",
                )
            if self.publisher and time.monotonic() - self._flushed_at >= OUTBOUND_INTERVAL:
                self._flush_if_connected()
            try:
                item = self.link.events.get_nowait()
            except queue.Empty:
                item = None
        self._flush_if_connected()

    def _flush_if_connected(self) -> None:
        if self.publisher and self.link.connected.is_set():
            self._flushed_at = time.monotonic()
            self.flush_outbound()

    def flush_outbound(self) -> int:
        """Publish queued notifications (blacklist deltas, configuration, card actions) in order."""
        sent = []
        for row_id, topic, payload in self.platform.unpublished():
            if not self.link.connected.is_set():
                break
            info = self.link.publish(topic, payload, qos=1)
            if info.rc != 0:
                break
            sent.append(row_id)
        if sent:
            self.platform.mark_published(sent)
        return len(sent)

    def start_link(self) -> None:
        self.link.start()

    def stop_link(self) -> None:
        self.link.stop()

    @property
    def connected(self) -> threading.Event:
        return self.link.connected

    def _send(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.link.publish(topic, payload, qos=qos)

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            if topic.startswith(f"{p.TOPIC_ROOT}/s/"):
                self._send(*answer_request(self.platform, rp.parse_station_topic(topic), payload), qos=1)
                self.handled += 1
                return
            scope, tid, leaf = p.parse_topic(topic)
            if leaf == p.UP_EVENTS:
                body_tid, events = p.decode_events(payload)
                if body_tid != tid:
                    raise p.ProtocolError(f"batch names terminal {body_tid} but came on the topic of {tid}")
                result = self.platform.ingest(tid, events)
                self._send(p.terminal_topic(tid, p.DOWN_ACK), self.platform.ack_message(result), qos=1)
                if result.problem:
                    log_event(
                        log,
                        "platform.upload_refused",
                        logging.WARNING,
                        worker=self.name,
                        terminal=tid,
                        reason=result.reason,
                        acked_seq=result.acked_seq,
                        text=result.problem,
                    )
            elif leaf == p.UP_REQUEST:
                req = p.decode_request(payload)
                if req.terminal_id != tid:
                    raise p.ProtocolError(f"request names terminal {req.terminal_id} but came on the topic of {tid}")
                for out_topic, out_payload in self.platform.answer_request(req):
                    self._send(out_topic, out_payload, qos=1)
            elif leaf == p.UP_HEARTBEAT:
                hb = p.decode_heartbeat(payload)
                if hb.terminal_id == tid:
                    self.platform.record_heartbeat(hb)
                    self._send(p.terminal_topic(tid, p.DOWN_MSG), self.platform.time_message(tid), qos=0)
            elif leaf == p.UP_STATUS:
                if payload:  # an empty retained message clears the status; nothing to record
                    self.platform.record_status(tid, p.decode_status(payload)["state"])
            else:
                raise p.ProtocolError(f"unknown uplink topic {topic}")
            self.handled += 1
        except (p.ProtocolError, PlatformError) as exc:
            self.refused += 1
            log_event(
                log,
                "platform.message_refused",
                logging.WARNING,
                worker=self.name,
                topic=topic,
                reason="malformed" if isinstance(exc, p.ProtocolError) else "refused",
                text=f"{exc}; message dropped",
            )


class PlatformService:
    """N workers (worker 0 also publishes the outbound queue), each on its own thread.

    `broker` is BrokerSettings (MQTT shared subscriptions on one mosquitto) or central.amqp_service.AmqpSettings
    (AMQP consumers of a RabbitMQ cluster's uplink quorum queue). `first_worker` lets several processes share the
    work, each with its own certificates (platform-wN): process k runs workers first_worker.. of its own.
    """

    def __init__(
        self,
        db: Path,
        signing_key,
        broker,
        *,
        workers: int = 2,
        first_worker: int = 0,
        clock=None,
        tac_sam=None,
        unverified_money: bool = False,
    ) -> None:
        if tac_sam is None and not unverified_money:
            raise PlatformError(
                "the platform needs the TAC keys to account money: give --tac-keystore KS "
                "--passphrase-file F (from `onecard sam restrict --role platform`), or "
                "--lab-unverified-money in a lab, where every balance is then labelled unverified"
            )
        indexes = range(first_worker, first_worker + workers)
        for i in indexes:
            broker.worker_tls(i)  # every worker's certificate checked before any database is opened
        check = Platform(db, signing_key, clock=clock)
        try:
            problem = check.restored_problem()
        finally:
            check.close()
        if problem:  # a restored database would send lists older than the terminals hold: refuse to serve
            raise PlatformError(problem)
        if unverified_money:
            log_event(
                log,
                "platform.unverified_money",
                logging.WARNING,
                text="lab mode: money records are accounted without a TAC check; every balance they move is "
                "labelled unverified",
            )
        self.workers = [
            broker.make_worker(
                i,
                Platform(db, signing_key, clock=clock, tac_sam=tac_sam, unverified_money=unverified_money),
                publisher=i == 0,
            )
            for i in indexes
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for w in self.workers:
            w.start_link()
            t = threading.Thread(target=self._loop, args=(w,), name=f"platform-{w.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return all(w.connected.wait(timeout) for w in self.workers)

    def _loop(self, w: Worker) -> None:
        while not self._stop.is_set():
            try:
                w.step()
            except Exception as exc:  # keep serving the other terminals; the failing batch is resent
                log_event(
                    log, "platform.worker_error", logging.ERROR, worker=w.name, text=f"{type(exc).__name__}: {exc}"
                )

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for w in self.workers:
            w.stop_link()
            w.platform.close()
