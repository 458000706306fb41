"""Thin paho-mqtt adapter: TLS client certificate, last will, resubscribe on connect, MQTT 5 -> 3.1.1 fallback.

Everything paho reports is put on a queue as plain tuples; the owner's thread does all the work.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from common.logs import log_event

log = logging.getLogger("sync.mqtt")

CONNECTED, DISCONNECTED, MESSAGE = "connected", "disconnected", "message"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


class MqttLink:
    """One MQTT session that reconnects by itself; events arrive on `self.events`."""

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        tls: TlsFiles,
        *,
        subscriptions: list[str],
        will: tuple[str, bytes] | None = None,
        keepalive: int = 30,
        protocol: str = "auto",
        max_inflight: int = 20,
        events: queue.Queue | None = None,
        alternates: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.client_id, self.host, self.port, self.tls = client_id, host, port, tls
        # Every node of a broker cluster: (host, port) first, then `alternates`. When the connection drops or
        # cannot be made, the next reconnect goes to the next node (round robin).
        self.addresses = [(host, port), *[a for a in alternates if a != (host, port)]]
        self._next_address = 0
        # On a cluster, subscriptions are QoS 0. With a clean session QoS 1 on the broker-to-client leg buys
        # nothing (what is in flight when the connection drops is discarded with the session either way; the agent
        # resends unacknowledged uploads and asks for what it missed), and RabbitMQ 3.10 keeps a QoS 1
        # subscription's queue as a durable queue on the node of the first connection: while that node is down the
        # terminal could subscribe on no other node. A QoS 0 subscription's queue is transient and goes with it.
        self.subscribe_qos = 0 if len(self.addresses) > 1 else 1
        self.subscriptions = subscriptions
        self.will = will
        self.keepalive = keepalive
        self.protocol_setting = protocol
        self.protocol = paho.MQTTv311 if protocol == "3.1.1" else paho.MQTTv5
        self.max_inflight = max_inflight
        self.events: queue.Queue = events if events is not None else queue.Queue()
        self.connected = threading.Event()
        self._client: paho.Client | None = None
        self._fallback = False
        self._switch = False  # the connection dropped or failed: poll() moves to the next node
        self._unanswered = 0  # MQTT 5 CONNECTs in a row the broker closed without any CONNACK

    def _make_client(self) -> paho.Client:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            clean_session=True if self.protocol == paho.MQTTv311 else None,
        )
        try:
            c.tls_set(
                ca_certs=str(self.tls.ca_file),
                certfile=str(self.tls.cert_file),
                keyfile=str(self.tls.key_file),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as exc:
            raise MqttConfigError(
                f"cannot load the TLS files ({exc}); check [sync].ca_file, cert_file and key_file"
            ) from None
        if self.will:
            c.will_set(self.will[0], self.will[1], qos=1, retain=True)
        c.max_inflight_messages_set(self.max_inflight)
        c.reconnect_delay_set(min_delay=0.1, max_delay=2)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    def _move_on(self, client) -> None:
        """Ask the owner's thread (poll) to rebuild the client on the next node (paho's network thread)."""
        if len(self.addresses) > 1:
            self._switch = True

    def start(self) -> None:
        self._client = self._make_client()
        kwargs = {"clean_start": True} if self.protocol == paho.MQTTv5 else {}
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive, **kwargs)
        self._client.loop_start()

    def poll(self) -> None:
        """Called from the owner's loop: rebuilds the client as MQTT 3.1.1 when the broker refused 5, or on the
        next node of the cluster when the connection to this one dropped or could not be made."""
        if self._switch and not self._fallback and self._client is not None and not self.connected.is_set():
            self._switch = False
            old = self._client
            old.loop_stop()
            sock = old.socket()
            if sock is not None:  # half-open after a drop: close it without DISCONNECT
                sock.close()
            self._next_address = (self._next_address + 1) % len(self.addresses)
            previous = f"{self.host}:{self.port}"
            self.host, self.port = self.addresses[self._next_address]
            log_event(
                log,
                "mqtt.next_node",
                logging.WARNING,
                client=self.client_id,
                previous=previous,
                node=f"{self.host}:{self.port}",
                text=f"lost or cannot reach {previous}; connecting to {self.host}:{self.port}",
            )
            self.start()
            return
        self._switch = False
        if self._fallback and self._client is not None:
            self._fallback = False
            old = self._client
            old.loop_stop()
            old.disconnect()
            self.protocol = paho.MQTTv311
            log_event(
                log,
                "mqtt.protocol_fallback",
                logging.WARNING,
                client=self.client_id,
                text="the broker does not speak MQTT 5; reconnecting with MQTT 3.1.1",
            )
            self.start()

    # paho callbacks (its network thread) -----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            unsupported = reason_code.getName() in ("Unsupported protocol version", "Unacceptable protocol version")
            if unsupported and self.protocol == paho.MQTTv5 and self.protocol_setting == "auto":
                self._fallback = True
                self.events.put((DISCONNECTED, "broker refused MQTT 5"))
            else:
                log_event(
                    log,
                    "mqtt.refused",
                    logging.ERROR,
                    client=self.client_id,
                    reason=str(reason_code),
                    text="the broker refused the connection; check the client certificate and the ACL",
                )
            return
        sock = client.socket()
        if sock is not None:
            # Small request/answer messages: without this, Nagle and the peer's delayed ACK hold each one ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unanswered = 0
        for topic in self.subscriptions:
            client.subscribe(topic, qos=self.subscribe_qos)
        self.connected.set()
        self.events.put((CONNECTED, "MQTT 5" if self.protocol == paho.MQTTv5 else "MQTT 3.1.1"))

    def _on_connect_fail(self, client, userdata) -> None:
        self._move_on(client)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if not was and self.protocol == paho.MQTTv5 and self.protocol_setting == "auto":
            # TCP and TLS went through (a failure there is on_connect_fail) but the broker hung up on the
            # CONNECT without a CONNACK: a 3.1.1-only broker that cannot parse MQTT 5 (RabbitMQ 3.10 does so).
            # Twice in a row, not once: a broker restarting at that moment also hangs up.
            self._unanswered += 1
            if self._unanswered >= 2:
                self._fallback = True
                self.events.put((DISCONNECTED, "broker closed the MQTT 5 connection without an answer"))
        self._move_on(client)
        if was:
            self.events.put((DISCONNECTED, str(reason_code)))

    def _on_message(self, client, userdata, msg) -> None:
        self.events.put((MESSAGE, msg.topic, bytes(msg.payload)))

    # owner's thread -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Publish `final` (e.g. a retained offline status) if connected, then disconnect cleanly."""
        c = self._client
        if c is None:
            return
        if final and self.connected.is_set():
            info = c.publish(final[0], final[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass  # the connection went away meanwhile; the broker's last will says offline instead
        c.disconnect()
        c.loop_stop()
        self._client = None

    def kill(self) -> None:
        """Drop the connection without DISCONNECT (the broker then publishes the will); for tests."""
        c = self._client
        if c is not None:
            c.loop_stop()
            sock = c.socket()
            if sock is not None:
                sock.close()
            self._client = None


class MqttConfigError(Exception):
    """The MQTT/TLS settings cannot be used; the message names the setting."""
