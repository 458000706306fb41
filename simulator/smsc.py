"""An SMSC simulator that speaks real SMPP 3.4 (PDUs built and parsed with smpplib's own classes) to the platform's
OTA gateway, and delivers to simulated handsets.

- bind_transceiver (any system_id / password given at construction), enquire_link, unbind;
- submit_sm: answered with a message_id, then delivered as an SMS-DELIVER TPDU (pycrate) to the handset of
  destination_addr: at once when the phone is on, later (`set_power(msisdn, True)`) when it was off, or never when
  the validity period passes first; a delivery receipt (deliver_sm, esm_class 04, stat DELIVRD / EXPIRED) follows
  when registered_delivery asks for one;
- the SMS-SUBMITs a handset sends back (PoRs) go to the bound ESME as deliver_sm (esm_class 40 when UDHI).

The clock is passed in (`now`) so tests can move the validity period along.
"""

from __future__ import annotations

import datetime as dt
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from smpplib import consts, smpp

from common import sms_tpdu

ESM_DELIVERY_RECEIPT = 0x04  # SMPP 3.4 5.2.12


class Handset(Protocol):
    def receive(self, deliver_tpdu: bytes) -> list[bytes]:
        """One SMS-DELIVER in; the SMS-SUBMITs the phone sends in answer (a SIM's PoRs) out."""


class _Seq:
    def __init__(self) -> None:
        self.sequence = 0
        self._lock = threading.Lock()

    def next_sequence(self) -> int:
        with self._lock:
            self.sequence += 1
            return self.sequence


@dataclass
class Stored:
    message_id: str
    source: str
    destination: str
    pid: int
    dcs: int
    udhi: bool
    user_data: bytes
    expires: dt.datetime
    receipt: bool
    submitted: dt.datetime
    state: str = "ENROUTE"  # DELIVRD, EXPIRED


def parse_validity(value: str | bytes | None, now: dt.datetime, default: dt.timedelta) -> dt.datetime:
    """SMPP 3.4 7.1.1: relative 'YYMMDDhhmmss000R' or absolute 'YYMMDDhhmmsstnnp'; empty: the SMSC default."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if not value:
        return now + default
    if len(value) != 16:
        raise ValueError(f"validity_period {value!r} is not 16 characters")
    if value.endswith("R"):
        y, mo, d, h, mi, s = (int(value[i : i + 2]) for i in range(0, 12, 2))
        return now + dt.timedelta(days=365 * y + 30 * mo + d, hours=h, minutes=mi, seconds=s)
    stamp = dt.datetime.strptime(value[:12], "%y%m%d%H%M%S")
    quarter = int(value[13:15]) * 15 * (1 if value[15] == "+" else -1)
    return (stamp - dt.timedelta(minutes=quarter)).replace(tzinfo=dt.timezone.utc)


@dataclass
class Smsc:
    """The SMSC. `start()` listens on 127.0.0.1 on a free port (`port`); `stop()` ends it."""

    system_id: str = "onecard"
    password: str = "secret"
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
    default_validity: dt.timedelta = dt.timedelta(hours=24)
    handsets: dict[str, Handset] = field(default_factory=dict)
    powered: dict[str, bool] = field(default_factory=dict)
    messages: dict[str, Stored] = field(default_factory=dict)
    mo_log: list[tuple[str, str, bytes]] = field(default_factory=list)  # (from, to, user data) sent to the ESME
    refuse_submits: int = 0  # the next N submit_sm are answered ESME_RTHROTTLED (tests of the gateway's retries)
    # Called with each stored message after its submit_sm_resp left and before it is delivered (kill tests).
    after_submit: Callable[[Stored], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._seq = _Seq()
        self._esme: socket.socket | None = None
        self._next_id = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self.port = 0

    # --- network side ------------------------------------------------------------------------------------------

    def add_handset(self, msisdn: str, handset: Handset, on: bool = True) -> None:
        with self._lock:
            self.handsets[msisdn], self.powered[msisdn] = handset, on

    def set_power(self, msisdn: str, on: bool) -> None:
        with self._lock:
            self.powered[msisdn] = on
        if on:
            self.retry()

    def retry(self) -> None:
        """Try every stored message again: deliver what may be, expire what may no longer be."""
        with self._lock:
            for m in list(self.messages.values()):
                if m.state == "ENROUTE":
                    self._try_deliver(m)

    def _try_deliver(self, m: Stored) -> None:
        now = self.now()
        if now > m.expires:
            m.state = "EXPIRED"
            self._receipt(m, now)
            return
        if not self.powered.get(m.destination):
            return
        handset = self.handsets[m.destination]
        tpdu = sms_tpdu.deliver(sms_tpdu.Sms(m.source, m.pid, m.dcs, m.udhi, m.user_data), now)
        m.state = "DELIVRD"
        answers = handset.receive(tpdu)
        self._receipt(m, now)
        for mo in answers:
            sms = sms_tpdu.parse_submit(mo)
            self._deliver_sm(m.destination, sms.address, sms.pid, sms.dcs, sms.udhi, sms.user_data)

    def _receipt(self, m: Stored, now: dt.datetime) -> None:
        if not m.receipt:
            return
        stamp = lambda t: t.strftime("%y%m%d%H%M")  # noqa: E731
        text = (
            f"id:{m.message_id} sub:001 dlvrd:{'001' if m.state == 'DELIVRD' else '000'} submit date:"
            f"{stamp(m.submitted)} done date:{stamp(now)} stat:{m.state} err:000 text:"
        ).encode()
        self._send(
            smpp.make_pdu(
                "deliver_sm",
                client=self._seq,
                source_addr=m.destination,
                destination_addr=m.source,
                esm_class=ESM_DELIVERY_RECEIPT,
                short_message=text,
                receipted_message_id=m.message_id,
                message_state={"DELIVRD": 2, "EXPIRED": 3}[m.state],
            )
        )

    def _deliver_sm(self, source: str, dest: str, pid: int, dcs: int, udhi: bool, user_data: bytes) -> None:
        self.mo_log.append((source, dest, user_data))
        self._send(
            smpp.make_pdu(
                "deliver_sm",
                client=self._seq,
                source_addr=source,
                destination_addr=dest,
                esm_class=consts.SMPP_GSMFEAT_UDHI if udhi else 0,
                protocol_id=pid,
                data_coding=dcs,
                short_message=user_data,
            )
        )

    def _send(self, pdu) -> None:
        if pdu.sequence == 0 or pdu._sequence is None:
            pdu.sequence = self._seq.next_sequence()
        sock = self._esme
        if sock is None:
            return  # no ESME bound: a real SMSC would store it; the platform's retry covers the PoR
        try:
            sock.sendall(pdu.generate())
        except OSError:
            self._esme = None

    # --- SMPP server ----------------------------------------------------------------------------------------

    def start(self) -> Smsc:
        smsc = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                smsc._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="smsc").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        sock, self._esme = self._esme, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        bound = False
        while True:
            try:
                head = _recv(sock, 4)
                (length,) = struct.unpack(">L", head)
                if not 16 <= length <= 4096:
                    return
                raw = head + _recv(sock, length - 4)
            except (OSError, EOFError):
                if self._esme is sock:
                    self._esme = None
                return
            pdu = smpp.parse_pdu(raw, client=self._seq)
            if pdu is None:
                continue
            with self._lock:
                if pdu.command == "bind_transceiver":
                    ok = _s(pdu.system_id) == self.system_id and _s(pdu.password) == self.password
                    resp = smpp.make_pdu(
                        "bind_transceiver_resp",
                        client=self._seq,
                        status=consts.SMPP_ESME_ROK if ok else consts.SMPP_ESME_RINVPASWD,
                        system_id="onecard-smsc",
                    )
                    resp.sequence = pdu.sequence
                    sock.sendall(resp.generate())
                    if ok:
                        bound, self._esme = True, sock
                    continue
                if pdu.command == "enquire_link":
                    resp = smpp.make_pdu("enquire_link_resp", client=self._seq)
                elif pdu.command == "unbind":
                    resp = smpp.make_pdu("unbind_resp", client=self._seq)
                    resp.sequence = pdu.sequence
                    sock.sendall(resp.generate())
                    self._esme = None
                    return
                elif pdu.command in ("deliver_sm_resp", "enquire_link_resp"):
                    continue
                elif pdu.command == "submit_sm" and bound:
                    resp = self._submit(pdu)
                else:
                    resp = smpp.make_pdu("generic_nack", client=self._seq, status=consts.SMPP_ESME_RINVCMDID)
                resp.sequence = pdu.sequence
                sock.sendall(resp.generate())
                if pdu.command == "submit_sm" and resp.status == consts.SMPP_ESME_ROK:
                    stored = self.messages[_s(resp.message_id)]
                    if self.after_submit is not None:
                        self.after_submit(stored)
                    self._try_deliver(stored)

    def _submit(self, pdu):
        if self.refuse_submits:
            self.refuse_submits -= 1
            return smpp.make_pdu("submit_sm_resp", client=self._seq, status=consts.SMPP_ESME_RTHROTTLED, message_id="")
        now = self.now()
        try:
            expires = parse_validity(pdu.validity_period, now, self.default_validity)
        except ValueError:
            return smpp.make_pdu("submit_sm_resp", client=self._seq, status=consts.SMPP_ESME_RINVEXPIRY, message_id="")
        dest = _s(pdu.destination_addr)
        if dest not in self.handsets:
            return smpp.make_pdu("submit_sm_resp", client=self._seq, status=consts.SMPP_ESME_RINVDSTADR, message_id="")
        self._next_id += 1
        mid = f"{self._next_id:08x}"
        self.messages[mid] = Stored(
            mid,
            _s(pdu.source_addr),
            dest,
            pdu.protocol_id or 0,
            pdu.data_coding or 0,
            bool((pdu.esm_class or 0) & consts.SMPP_GSMFEAT_UDHI),
            bytes(pdu.short_message or b""),
            expires,
            bool((pdu.registered_delivery or 0) & 0x01),
            now,
        )
        return smpp.make_pdu("submit_sm_resp", client=self._seq, message_id=mid)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else (v or "")


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf
