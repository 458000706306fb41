"""Simulated terminals for cluster tests and bench/platform_ingest.py: real hash chains and TACs, no card or reader.

`Records` builds one terminal's chained records in memory (the same encoding as terminal.event_log, so the
platform verifies them as a real terminal's), with top-ups whose TAC is computed from the enterprise's TAC master
key as the card would. `LightTerminal` is a lightweight MQTT client (paho, one network thread per terminal is
avoided: many terminals share one `Fleet` loop thread) that uploads those records as sealed batches
(common.sync_protocol), resends from the platform's acknowledged seq after a timeout or a reconnect, and moves to
the next broker node when its node goes.
"""

from __future__ import annotations

import datetime as dt
import selectors
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from common import events as ev
from common import sync_protocol as p
from common import transactions as tx
from sam import crypto
from sam import purse_crypto as pc
from sam.interface import Algorithm, KeyPurpose
from sam.keystore import Keystore

START = dt.datetime(2026, 11, 23, 1, 0, tzinfo=dt.timezone.utc)


def topup_detail(
    keystore: Keystore,
    eid: str,
    asn: str,
    tid: str,
    *,
    counter: int,
    amount: int,
    balance_after: int,
    when: dt.datetime,
) -> dict:
    """The detail of a completed `topup.load` record, with the TAC the card would have computed."""
    master = keystore.get(bytes.fromhex(eid), KeyPurpose.TAC, 1, Algorithm.AES128)
    if master is None:
        raise ValueError(f"the keystore has no TAC key version 1 (AES128) of enterprise {eid}")
    k_tac = crypto.diversify(Algorithm.AES128, master.key.reveal(), bytes.fromhex(asn) + bytes.fromhex(eid))
    local = when + dt.timedelta(hours=8)
    date, hms = bytes.fromhex(local.strftime("%Y%m%d")), bytes.fromhex(local.strftime("%H%M%S"))
    tac = pc.tac(
        Algorithm.AES128,
        k_tac,
        amount=amount,
        tx_type=tx.LOAD,
        terminal_id=bytes.fromhex(tid),
        tsn=0,
        date=date,
        time=hms,
        counter=counter,
        balance_after=balance_after,
    )
    return {
        "amount": amount,
        "counter": counter,
        "date": date.hex(),
        "time": hms.hex(),
        "key_version": 1,
        "algorithm": "AES128",
        "intent_seq": 1,
        "tac": tac.hex(),
        "proof": "11" * 8,
        "balance_after": balance_after,
        "resolved_at_next_tap": False,
    }


@dataclass
class Records:
    """One terminal's chain: `money_every` = k makes every k-th record a TAC-checked top-up of card `asn`."""

    tid: str
    eid: str
    asn: str
    keystore: Keystore | None = None
    money_every: int = 0
    amount: int = 100
    events: list[p.WireEvent] = field(default_factory=list)
    loaded: int = 0  # fen loaded onto the card by this chain's top-ups (what the platform must account)
    counter: int = 0
    # (first seq, batch, compressed) -> the encoded batch
    payloads: dict[tuple[int, int, bool], bytes] = field(default_factory=dict)

    def extend(self, n: int) -> None:
        prev = self.events[-1].hash if self.events else ev.GENESIS_HASH
        for _ in range(n):
            seq = len(self.events) + 1
            when = START + dt.timedelta(seconds=seq)
            t = ev.format_time(when)
            if self.money_every and seq % self.money_every == 0:
                kind, reason, message = "topup.load", "completed", "Top-up"
                d = topup_detail(
                    self.keystore,
                    self.eid,
                    self.asn,
                    self.tid,
                    counter=self.counter,
                    amount=self.amount,
                    balance_after=self.loaded + self.amount,
                    when=when,
                )
                self.counter += 1
                self.loaded += self.amount
            else:
                kind, reason, message, d = "door.grant", "ok", "Welcome", {"i": seq}
            detail = ev.canonical_json(d)
            h = ev.event_hash(seq, t, self.tid, kind, self.asn, reason, message, detail, prev)
            self.events.append(p.WireEvent(seq, t, kind, self.asn, reason, message, detail, prev, h))
            prev = h
        self.payloads.clear()  # a batch boundary may have moved


class LightTerminal:
    """Uploads `records` in batches of `batch` with up to `window` batches unacknowledged."""

    def __init__(
        self,
        records: Records,
        addresses: list[tuple[str, int]],
        ca: Path,
        cert: Path,
        key: Path,
        platform_key,
        *,
        batch: int = 500,
        window: int = 4,
        ack_timeout: float = 10.0,
        start_node: int = 0,
        protocol=paho.MQTTv311,
        compress: bool = False,
    ) -> None:
        self.r = records
        self.compress = compress
        self.addresses = addresses
        self.node = start_node % len(addresses)
        self.platform_key = platform_key
        self.batch, self.window, self.ack_timeout = batch, window, ack_timeout
        self.acked = 0
        self.next_seq = 1
        self.last_progress = time.monotonic()
        self.connected = False
        self.reconnects = 0
        self.downlinks: list[tuple[float, str, bytes]] = []  # (arrival monotonic time, topic, payload)
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=records.tid, protocol=protocol, clean_session=True)
        c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.max_inflight_messages_set(window * 2)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        self.retry_at = 0.0

    def pregenerate(self) -> int:
        """Encode every batch at its usual boundaries (1, 1 + batch, ...) now, so that uploading later costs the
        fleet only the sending: a real terminal's CPU is its own, the simulated fleet's competes with the platform
        for this machine's cores. A resend from another seq (an ack in mid-batch) is encoded when it is sent."""
        for first in range(1, len(self.r.events) + 1, self.batch):
            if (first, self.batch, self.compress) not in self.r.payloads:
                self.r.payloads[first, self.batch, self.compress] = self._encode(first)
        return len(self.r.payloads)

    def _encode(self, first: int) -> bytes:
        payload = p.encode_events(self.r.tid, self.r.events[first - 1 : first - 1 + self.batch])
        return p.compress_upload(payload) if self.compress else payload

    # callbacks (the fleet's loop thread)
    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        if rc.is_failure:
            return
        self.connected = True
        qos = 0 if len(self.addresses) > 1 else 1  # as common.mqtt.MqttLink: QoS 0 on a cluster
        client.subscribe([(p.terminal_topic(self.r.tid, p.DOWN_ACK), qos), (p.enterprise_topic(self.r.eid), qos)])
        self.next_seq = self.acked + 1  # a new session: resend what was in flight
        self.last_progress = time.monotonic()

    def _on_disconnect(self, client, userdata, flags, rc, props) -> None:
        self.connected = False

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/down/ack"):
            env = p.open_envelope(bytes(msg.payload), self.platform_key)
            seq = env.body["acked_seq"]
            if seq > self.acked:
                if self.r.events[seq - 1].hash != env.body["acked_hash"]:
                    raise AssertionError(f"{self.r.tid}: ack of seq {seq} names another record's hash")
                self.acked = seq
                self.last_progress = time.monotonic()
                self.next_seq = max(self.next_seq, seq + 1)
        else:
            with self.lock:
                self.downlinks.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    @property
    def done(self) -> bool:
        return self.acked >= len(self.r.events)

    def connect(self) -> None:
        host, port = self.addresses[self.node]
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError:
            self.node = (self.node + 1) % len(self.addresses)
            self.retry_at = time.monotonic() + 0.2
            return
        self.client.socket().setsockopt(6, 1, 1)  # TCP_NODELAY

    def pump(self, now: float) -> bool:
        """Publish what the window allows; on silence past the ack timeout, resend from the ack. True if it sent."""
        if not self.connected:
            return False
        if self.next_seq > self.acked + 1 and now - self.last_progress > self.ack_timeout:
            self.next_seq = self.acked + 1
            self.last_progress = now
        total = len(self.r.events)
        sent = False
        while self.next_seq <= total and self.next_seq <= self.acked + self.window * self.batch:
            first = self.next_seq
            payload = self.r.payloads.get((first, self.batch, self.compress))
            if payload is None:
                payload = self._encode(first)
            info = self.client.publish(p.terminal_topic(self.r.tid, p.UP_EVENTS), payload, 1)
            if info.rc != 0:
                return sent
            sent = True
            self.next_seq = min(total, first + self.batch - 1) + 1
        return sent


class Fleet:
    """Many LightTerminals on one thread: a selector over their sockets, paho's loop_read/write/misc by hand."""

    def __init__(self, terminals: list[LightTerminal]) -> None:
        self.terminals = terminals
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="fleet")
        self.pumping = threading.Event()

    def start(self, pump: bool = True) -> Fleet:
        if pump:
            self.pumping.set()
        self.thread.start()
        return self

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        registered: dict[int, LightTerminal] = {}
        last_misc = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            for t in self.terminals:
                sock = t.client.socket()
                if sock is None:
                    if now >= t.retry_at:
                        if t.reconnects:  # the node went: the next one
                            t.node = (t.node + 1) % len(t.addresses)
                        t.reconnects += 1
                        t.retry_at = now + 0.5
                        t.connect()
                    continue
                fd = sock.fileno()
                if fd not in registered or registered[fd] is not t:
                    if fd in registered:
                        try:
                            sel.unregister(fd)
                        except (KeyError, ValueError):
                            pass
                    try:
                        sel.register(fd, selectors.EVENT_READ, t)
                    except (KeyError, ValueError):
                        sel.modify(fd, selectors.EVENT_READ, t)
                    registered[fd] = t
                if self.pumping.is_set():
                    t.pump(now)
                if t.client.want_write():
                    t.client.loop_write()
            for key, _ in sel.select(timeout=0.005):
                key.data.client.loop_read()
            for fd in [
                fd for fd, t in registered.items() if t.client.socket() is None or t.client.socket().fileno() != fd
            ]:
                try:
                    sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
                del registered[fd]
            if now - last_misc > 0.5:
                last_misc = now
                for t in self.terminals:
                    if t.client.socket() is not None:
                        t.client.loop_misc()
        for t in self.terminals:
            try:
                t.client.disconnect()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
