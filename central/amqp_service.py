"""The platform's AMQP side for a RabbitMQ cluster: workers as competing consumers of the uplink quorum queue.

Terminals speak MQTT to any node; the broker's MQTT plugin routes each uplink (topic a/b/c = routing key a.b.c on
amq.topic) into the quorum queue `onecard.uplink`, replicated on every node. Each worker holds its own AMQP
connection (TLS, its own certificate, SASL EXTERNAL) and its own database connection, takes up to `prefetch`
messages, and acknowledges each only after the platform committed it and published the answer: a worker that dies
mid-batch leaves its unacknowledged messages to the other workers, and a node that dies takes no accepted upload
with it. Worker 0 also publishes the outbound queue (signed blacklist deltas, ...), from its consumer callback at
least every OUTBOUND_INTERVAL: under steady ingest pika's dispatch loop never returns (each ack lets the broker
deliver the next prefetched upload, read during that very ack), so a loss report must not wait for it to end.
Which worker gets which batch is the broker's business; the order of one terminal's records comes from
their sequence numbers and chain (central.ingest keeps a batch past a gap pending until the gap is filled), never
from the broker, so two workers may take two batches of one terminal in any order.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions

from central.broker_config import RABBITMQ_EXCHANGE, UPLINK_QUEUE, mqtt_to_routing_key, routing_key_to_mqtt, worker_cn
from central.db import PlatformError
from central.service import OUTBOUND_INTERVAL, Worker
from central.store import Platform
from common.logs import log_event
from common.mqtt import TlsFiles

log = logging.getLogger("platform")

RECONNECT_DELAY = 0.5  # seconds between two rounds over every node


@dataclass(frozen=True)
class AmqpSettings:
    """Every node's AMQPS address, the broker CA, and the directory of the workers' certificates (platform-wN)."""

    addresses: tuple[tuple[str, int], ...]
    ca: Path
    cert_dir: Path
    prefetch: int = 16  # unacknowledged messages a worker may hold (what it loses to another if it dies)

    def make_worker(self, index: int, platform: Platform, *, publisher: bool = False) -> AmqpWorker:
        return AmqpWorker(index, platform, self, publisher=publisher)

    def worker_tls(self, index: int) -> TlsFiles:
        cn = worker_cn(index)
        tls = TlsFiles(Path(self.ca), Path(self.cert_dir) / f"{cn}.pem", Path(self.cert_dir) / f"{cn}.key")
        for f in (tls.ca_file, tls.cert_file, tls.key_file):
            if not f.is_file():
                raise PlatformError(
                    f"TLS file {f} of platform worker {cn} does not exist; issue the workers' certificates with "
                    f"`onecard platform ca platform-certs --workers N --out {self.cert_dir}`"
                )
        return tls


class AmqpWorker(Worker):
    """A Worker whose messages come from the uplink quorum queue and whose answers go to amq.topic."""

    def __init__(self, index: int, platform: Platform, settings: AmqpSettings, *, publisher: bool = False) -> None:
        if not settings.addresses:
            raise PlatformError("no broker node to connect to; give at least one AMQPS address")
        self.name = f"w{index}"
        self.cn = worker_cn(index)
        self.platform = platform
        self.publisher = publisher
        self.settings = settings
        self.tls = settings.worker_tls(index)
        self.handled = 0
        self.refused = 0
        self._connected = threading.Event()
        self._conn: pika.BlockingConnection | None = None
        self._ch = None  # answers (acks, time): no publisher confirm, the terminal resends what is not answered
        self._confirmed = None  # outbound notifications: publisher confirms before they are marked published
        self._next = index % len(settings.addresses)  # workers start spread over the nodes
        self._retry_at = 0.0
        self._flushed_at = 0.0

    @property
    def connected(self) -> threading.Event:
        return self._connected

    # -- connection ----------------------------------------------------------------------------

    def _parameters(self, host: str, port: int) -> pika.ConnectionParameters:
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
        ctx.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        return pika.ConnectionParameters(
            host=host,
            port=port,
            ssl_options=pika.SSLOptions(ctx, server_hostname=host),
            credentials=pika.credentials.ExternalCredentials(),
            heartbeat=10,
            blocked_connection_timeout=30,
            connection_attempts=1,
            socket_timeout=5,
        )

    def start_link(self) -> None:
        self._connect()

    def _connect(self) -> bool:
        addresses = self.settings.addresses
        for k in range(len(addresses)):
            host, port = addresses[(self._next + k) % len(addresses)]
            try:
                conn = pika.BlockingConnection(self._parameters(host, port))
                ch = conn.channel()
                ch.basic_qos(prefetch_count=self.settings.prefetch)
                ch.basic_consume(UPLINK_QUEUE, self._on_delivery, auto_ack=False)
                confirmed = conn.channel()
                confirmed.confirm_delivery()
            except (pika.exceptions.AMQPError, OSError) as exc:
                log_event(
                    log,
                    "platform.amqp_connect_failed",
                    logging.WARNING,
                    worker=self.name,
                    node=f"{host}:{port}",
                    text=f"cannot consume from {host}:{port} ({type(exc).__name__}: {exc}); trying the next node",
                )
                continue
            self._next = (self._next + k) % len(addresses)
            self._conn, self._ch, self._confirmed = conn, ch, confirmed
            self._connected.set()
            log_event(
                log, "platform.connected", worker=self.name, node=f"{host}:{port}", text="worker consuming uploads"
            )
            return True
        self._retry_at = time.monotonic() + RECONNECT_DELAY
        return False

    def _lost(self, exc: BaseException) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        conn, self._conn, self._ch, self._confirmed = self._conn, None, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 (already broken; its unacknowledged messages go back to the queue)
                pass
        self._next = (self._next + 1) % len(self.settings.addresses)
        if was:
            log_event(
                log,
                "platform.disconnected",
                logging.WARNING,
                worker=self.name,
                reason=f"{type(exc).__name__}: {exc}",
                text="worker lost its broker node; it reconnects to the next one, its unacknowledged uploads go "
                "to the other workers",
            )

    # -- the loop ------------------------------------------------------------------------------

    def step(self, timeout: float = 0.02) -> None:
        if self._conn is None:
            if time.monotonic() >= self._retry_at:
                self._connect()
            else:
                time.sleep(min(timeout, 0.05))
            return
        try:
            self._conn.process_data_events(time_limit=timeout)
            self._flush_outbound_now()
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._lost(exc)

    def _flush_outbound_now(self) -> None:
        """The publisher's outbound flush; a store error (database busy, ...) is logged and retried at the next
        interval, a broker error goes up (the connection is gone)."""
        if not self.publisher or self._confirmed is None:
            return
        self._flushed_at = time.monotonic()
        try:
            self.flush_outbound()
        except (pika.exceptions.AMQPError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 (the rows stay unpublished and go out at the next flush)
            log_event(
                log,
                "platform.worker_error",
                logging.ERROR,
                worker=self.name,
                text=f"outbound queue not published ({type(exc).__name__}: {exc}); retried in {OUTBOUND_INTERVAL} s",
            )

    def _on_delivery(self, ch, method, properties, body: bytes) -> None:
        topic = routing_key_to_mqtt(method.routing_key)
        try:
            self.handle(topic, body)
        except (pika.exceptions.AMQPError, OSError):
            raise  # the connection went: the message stays unacknowledged and goes to another worker
        except Exception as exc:
            # Not this message's fault as far as we know (database busy, ...): drop it; the terminal resends
            # what stays unacknowledged, as with the MQTT workers.
            log_event(
                log, "platform.worker_error", logging.ERROR, worker=self.name, text=f"{type(exc).__name__}: {exc}"
            )
            ch.basic_nack(method.delivery_tag, requeue=False)
        else:
            ch.basic_ack(method.delivery_tag)
        # Between two uploads, not only once process_data_events returns: under load it never does (see above).
        # The upload is acknowledged first, so a failed publish never sends it to another worker again.
        if self.publisher and time.monotonic() - self._flushed_at >= OUTBOUND_INTERVAL:
            self._flush_outbound_now()

    def _send(self, topic: str, payload: bytes, qos: int = 1) -> None:
        # delivery_mode 2 = MQTT QoS 1 for the plugin; the terminal's subscription decides the rest.
        self._ch.basic_publish(
            RABBITMQ_EXCHANGE, mqtt_to_routing_key(topic), payload, pika.BasicProperties(delivery_mode=2 if qos else 1)
        )

    def flush_outbound(self) -> int:
        """Queued notifications, each confirmed by the broker before it is marked published."""
        sent = []
        for row_id, topic, payload in self.platform.unpublished():
            self._confirmed.basic_publish(
                RABBITMQ_EXCHANGE, mqtt_to_routing_key(topic), payload, pika.BasicProperties(delivery_mode=2)
            )
            sent.append(row_id)
        if sent:
            self.platform.mark_published(sent)
        return len(sent)

    def stop_link(self) -> None:
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is not None:
            try:
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
