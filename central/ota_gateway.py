"""The platform's OTA gateway: an SMPP 3.4 client (smpplib) to the operator's SMSC.

It binds as a transceiver, sends each SMS of a secured packet (or of a bill) as submit_sm, and hands back what
the SMSC delivers: delivery receipts (esm_class 04) and mobile-originated SMS (the SIMs' PoRs, TP-PID 7F). A
submit the SMSC refuses for a passing reason (throttling, queue full, a dropped connection) is retried, but never
after the message's validity period: past it the SMS is reported `expired` without being sent.

An I/O adapter: what is sent and what PoRs mean is decided by common/ota.py and central/ota_ops.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import smpplib.client
import smpplib.consts as c
import smpplib.exceptions

PID_SIM_DATA_DOWNLOAD = 0x7F
DCS_8BIT_CLASS2 = 0xF6
DCS_UCS2 = 0x08
ESM_UDHI = 0x40
ESM_DELIVERY_RECEIPT = 0x04  # SMPP 3.4 5.2.12: message type "SMSC delivery receipt"
# smpplib logs every PDU and a warning when a connection closes; the gateway reports what matters itself.
logging.getLogger("smpp").setLevel(logging.ERROR)
_TRANSIENT = {c.SMPP_ESME_RTHROTTLED, c.SMPP_ESME_RMSGQFUL, c.SMPP_ESME_RSYSERR}


class GatewayError(Exception):
    """The SMSC refused or could not be reached; the message names why and what to do."""


@dataclass(frozen=True)
class Receipt:
    message_id: str
    state: str  # DELIVRD, EXPIRED, UNDELIV, ...


@dataclass(frozen=True)
class Incoming:
    source: str
    pid: int
    dcs: int
    udhi: bool
    user_data: bytes


def relative_validity(seconds: int) -> str:
    """SMPP relative validity 'YYMMDDhhmmss000R'."""
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d > 99:
        raise GatewayError("validity longer than 99 days")
    return f"0000{d:02d}{h:02d}{m:02d}{s:02d}000R"


@dataclass
class SmppGateway:
    host: str
    port: int
    system_id: str
    password: str
    source_addr: str
    timeout: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    receipts: list[Receipt] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client: smpplib.client.Client | None = None
        self._sent: dict[int, object] = {}

    def __enter__(self) -> SmppGateway:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        client = smpplib.client.Client(self.host, self.port, timeout=self.timeout, allow_unknown_opt_params=True)
        client.set_message_received_handler(self._received)
        client.set_message_sent_handler(self._sent_handler)
        client.set_error_pdu_handler(self._sent_handler)  # an error submit_sm_resp is an answer too
        try:
            client.connect()
            client.bind_transceiver(system_id=self.system_id, password=self.password)
        except smpplib.exceptions.PDUError as e:
            client.disconnect()
            raise GatewayError(
                f"the SMSC refused the bind as {self.system_id!r}: {e}; check the SMPP credentials"
            ) from None
        except (OSError, smpplib.exceptions.ConnectionError) as e:
            raise Unreachable(f"cannot reach the SMSC at {self.host}:{self.port} ({e}); check [ota] smsc") from None
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.unbind()
        except Exception:  # noqa: BLE001 - closing a connection that may already be gone
            pass
        client.disconnect()

    def _sent_handler(self, pdu, **_kw) -> None:
        self._sent[pdu.sequence] = pdu

    def _received(self, pdu, **_kw):
        esm = pdu.esm_class or 0
        if esm & ESM_DELIVERY_RECEIPT:
            text = bytes(pdu.short_message or b"").decode("ascii", "replace")
            fields = dict(part.split(":", 1) for part in text.split() if ":" in part)
            mid = pdu.receipted_message_id or fields.get("id", "")
            mid = mid.decode() if isinstance(mid, bytes) else mid
            self.receipts.append(Receipt(mid, fields.get("stat", "UNKNOWN")))
        else:
            src = pdu.source_addr.decode() if isinstance(pdu.source_addr, bytes) else pdu.source_addr
            self.incoming.append(
                Incoming(
                    src, pdu.protocol_id or 0, pdu.data_coding or 0, bool(esm & ESM_UDHI), bytes(pdu.short_message)
                )
            )
        return c.SMPP_ESME_ROK

    def poll(self, seconds: float = 0.0) -> None:
        """Read whatever the SMSC sends for `seconds` (0: only what is already there)."""
        assert self._client is not None, "connect first"
        deadline = self.monotonic() + seconds
        while True:
            self._client.poll()
            if self.monotonic() >= deadline:
                return
            self.sleep(0.01)

    def submit(
        self, destination: str, user_data: bytes, *, pid: int, dcs: int, udhi: bool, validity_seconds: int
    ) -> str | None:
        """submit_sm one SMS; its message_id, or None when the validity passed before the SMSC took it."""
        deadline = self.monotonic() + validity_seconds
        backoff = 0.05
        while True:
            remaining = int(deadline - self.monotonic())
            if remaining <= 0:
                return None
            try:
                if self._client is None:
                    self.connect()
                return self._submit_once(destination, user_data, pid, dcs, udhi, remaining)
            except _Transient:
                pass
            except (OSError, smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, Unreachable):
                self._drop()
            self.sleep(min(backoff, max(0.0, deadline - self.monotonic())))
            backoff = min(backoff * 2, 30.0)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001
                pass

    def _submit_once(self, destination, user_data, pid, dcs, udhi, remaining) -> str:
        assert self._client is not None
        pdu = self._client.send_message(
            source_addr_ton=c.SMPP_TON_INTL,
            source_addr_npi=c.SMPP_NPI_ISDN,
            source_addr=self.source_addr,
            dest_addr_ton=c.SMPP_TON_INTL,
            dest_addr_npi=c.SMPP_NPI_ISDN,
            destination_addr=destination,
            short_message=user_data,
            esm_class=ESM_UDHI if udhi else 0,
            protocol_id=pid,
            data_coding=dcs,
            registered_delivery=c.SMPP_SMSC_DELIVERY_RECEIPT_BOTH,
            validity_period=relative_validity(remaining),
        )
        end = self.monotonic() + self.timeout
        while pdu.sequence not in self._sent:
            if self.monotonic() > end:
                raise TimeoutError("no submit_sm_resp")
            self._client.read_once(auto_send_enquire_link=False)
        resp = self._sent.pop(pdu.sequence)
        if resp.status in _TRANSIENT:
            raise _Transient()
        if resp.status != c.SMPP_ESME_ROK:
            raise GatewayError(f"the SMSC refused the SMS to {destination}: status {resp.status:#x}")
        mid = resp.message_id
        return mid.decode() if isinstance(mid, bytes) else mid


class _Transient(Exception):
    pass


class Unreachable(GatewayError):
    """The SMSC could not be reached (retried within the validity period)."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
