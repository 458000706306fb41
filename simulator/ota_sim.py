"""The simulated SIM's OTA side (docs/ota.md): SMS-PP data download by ENVELOPE (TS 31.111 7.1.1), SCP80 command
packets opened and checked (common/ota.py), their remote APDUs (TS 102 226 compact format) run on the card
application, and the PoR sent back by a proactive SEND SHORT MESSAGE that the handset fetches.

The handset (phone/handset.py `Handset.receive`, through the SIM toolkit applet's contact interface or
simulator/ota_handset.py's OTA-only one) calls `OtaSim.envelope(apdu)`, then `fetch()` / `terminal_response()` when
the answer is `91 LL`; `deliver_to_sim` below is the same loop without a handset, for the SIM's own tests.

The counter is made durable before a packet's commands run: a SIM powered off in the middle of a packet never runs
it again (the platform resends it with a new counter, and finds out from the card's own records, e.g. GET
TRANSACTION PROVE, what the torn packet did). The BER-TLVs of the ENVELOPE and of SEND SHORT MESSAGE are written by
hand (three fixed data objects each; see docs/ota.md 6).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from common import ota, sms_tpdu
from simulator.state_file import StateFile

ENVELOPE_SMS_PP = 0xD1
TAG_DEVICE_IDS = 0x02
TAG_ADDRESS = 0x06
TAG_SMS_TPDU = 0x0B
TAG_COMMAND_DETAILS = 0x01
TAG_RESULT = 0x03
DEV_UICC, DEV_TERMINAL, DEV_NETWORK = 0x81, 0x82, 0x83
SEND_SHORT_MESSAGE = 0x13
SW_OK = b"\x90\x00"
SW_BUSY = b"\x93\x00"  # SIM Application Toolkit busy: a PoR is still waiting to be fetched
SW_WRONG = b"\x6a\x80"
SW_INS = b"\x6d\x00"
SW_NO_PROACTIVE = b"\x69\x85"
# Status words after which the next remote APDU still runs (TS 102 226 5.1.2).
_GO_ON = (0x90, 0x91, 0x61, 0x62, 0x63)


class Applet(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...


def tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    if n < 0x100:
        return bytes([tag, 0x81, n]) + value
    raise ValueError("BER-TLV value longer than 255 bytes")


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Simple BER-TLVs (one-byte tags, lengths up to 81 XX), as TS 102 223 annex C codes them; ValueError else."""
    out, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("a TLV is cut in its header")
        tag, n, pos = data[pos], data[pos + 1], pos + 2
        if n == 0x81:
            if pos >= len(data):
                raise ValueError("a TLV is cut in its length")
            n, pos = data[pos], pos + 1
        elif n > 0x80:
            raise ValueError(f"TLV length form {n:02x} is not used here")
        if pos + n > len(data):
            raise ValueError("a TLV's value runs past the end")
        out.append((tag, bytes(data[pos : pos + n])))
        pos += n
    return out


def envelope_sms_pp(tpdu: bytes, smsc: bytes = b"") -> bytes:
    """The ENVELOPE (SMS-PP DOWNLOAD) APDU a handset sends for an SMS-DELIVER with TP-PID 7F."""
    body = tlv(0x80 | TAG_DEVICE_IDS, bytes([DEV_NETWORK, DEV_UICC]))
    if smsc:
        body += tlv(0x80 | TAG_ADDRESS, smsc)
    body += tlv(0x80 | TAG_SMS_TPDU, tpdu)
    data = tlv(ENVELOPE_SMS_PP, body)
    if len(data) > 255:
        raise ValueError("ENVELOPE data longer than 255 bytes")
    return bytes([0x80, 0xC2, 0x00, 0x00, len(data)]) + data


@dataclass
class OtaState:
    """What the SIM's OTA applet keeps in EEPROM: its keys (version) and the last counter processed."""

    kic: bytes
    kid: bytes
    version: int = 1
    counter: int = 0
    por_address: str = ""  # where PoRs go when the packet came from an unknown originator (never: reply to origin)

    @property
    def keys(self) -> ota.OtaKeys:
        return ota.OtaKeys(self.kic, self.kid, self.version)


class SubApplicationKeySet:
    """The OTA key set of one sub-application of a version 2 card (docs/ota.md 2, 3.1): kept with it in the card's
    EEPROM (CardState.ota_kic/ota_kid/ota_counter), so it is written by its PUT KEY and gone with its deletion."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def keys(self) -> ota.OtaKeys:
        return ota.OtaKeys(self.app.ota_kic, self.app.ota_kid, 1)

    @property
    def counter(self) -> int:
        return int(self.app.ota_counter)

    @counter.setter
    def counter(self, value: int) -> None:
        self.app.ota_counter = value


class OtaStateFile(StateFile[OtaState]):
    WHAT = "simulated SIM OTA state"

    def from_json(self, doc: Any) -> OtaState:
        return OtaState(bytes.fromhex(doc["kic"]), bytes.fromhex(doc["kid"]), int(doc["version"]), int(doc["counter"]))

    def to_json(self, state: OtaState) -> Any:
        return {"kic": state.kic.hex(), "kid": state.kid.hex(), "version": state.version, "counter": state.counter}

    def damaged(self, exc: Exception) -> str:
        return f"{self.path}: not a simulated SIM OTA state ({type(exc).__name__}); personalise the SIM again"


@dataclass
class OtaSim:
    """The SIM's SCP80 receiving entity for the onecard TAR, in front of the card application."""

    applet: Applet
    # The key set of a card that keeps none itself (a version 1 application, or a test SIM); on a version 2 card
    # each sub-application's own key set comes first (`key_sets`), this one last.
    state: OtaState | None
    store: OtaStateFile | None = None
    tar: bytes = ota.ONECARD_TAR
    reassembler: ota.Reassembler = field(default_factory=ota.Reassembler)
    pending: list[bytes] = field(default_factory=list)  # SEND SHORT MESSAGE commands not yet fetched
    por_reference: int = 0
    # A test hook: called with the index of each remote APDU before it runs (a tear raises from here).
    before_apdu: Callable[[int], None] | None = None
    executed: list[int] = field(default_factory=list)  # counters of packets whose commands ran (for tests)
    # Further receiving entities by TAR, each with its own keys and counter: the card issuer's (docs/ota.md 2.1,
    # ota.ISSUER_TAR), which carries issuing over the air before the enterprise's sub-application exists.
    domains: dict[bytes, OtaState] = field(default_factory=dict)
    domain_stores: dict[bytes, OtaStateFile] = field(default_factory=dict)

    def key_sets(self) -> list[Any]:
        """The onecard TAR's key sets, in the order the SIM tries them: each sub-application's with OTA keys, in
        directory order (at most 8), then `state` if any."""
        card = getattr(self.applet, "card", None)
        apps = getattr(card, "apps", None) or []
        out: list[Any] = [SubApplicationKeySet(a) for a in apps if getattr(a, "ota_kic", None) is not None]
        if self.state is not None:
            out.append(self.state)
        return out

    def envelope(self, apdu: bytes) -> bytes:
        """Answer one ENVELOPE APDU: 90 00, or 91 LL when a PoR waits to be fetched."""
        if len(apdu) < 5 or apdu[:2] != b"\x80\xc2":
            return SW_INS
        if apdu[4] != len(apdu) - 5:
            return b"\x67\x00"
        if self.pending:
            return SW_BUSY
        try:
            (tag, body), *rest = parse_tlvs(apdu[5:])
            if tag != ENVELOPE_SMS_PP or rest:
                return SW_WRONG
            objs = {t & 0x7F: v for t, v in parse_tlvs(body)}
            if objs.get(TAG_DEVICE_IDS) != bytes([DEV_NETWORK, DEV_UICC]) or TAG_SMS_TPDU not in objs:
                return SW_WRONG
            sms = sms_tpdu.parse_deliver(objs[TAG_SMS_TPDU])
        except (ValueError, sms_tpdu.TpduError):
            return SW_WRONG
        self.receive(sms)
        return bytes([0x91, len(self.pending[0])]) if self.pending else SW_OK

    def receive(self, sms: sms_tpdu.Sms) -> None:
        """One SMS-PP download (already out of its ENVELOPE)."""
        if sms.pid != sms_tpdu.PID_SIM_DATA_DOWNLOAD or not sms.udhi:
            return  # not for the SIM's RE: a handset would store it; the OTA applet ignores it
        try:
            seg = self.reassembler.add(sms.address, ota.parse_user_data(sms.user_data))
        except ota.OtaError:
            return  # not a secured packet: nothing to answer (no TAR, no counter to name)
        if seg is None or not seg.has(ota.IEI_CPI):
            return
        por = self.process(seg.data)
        if por is not None:
            self._queue_por(sms.address, por)

    def process(self, packet: bytes) -> bytes | None:
        """A whole command packet (from CPL on) in, the PoR user data out (None: no PoR is due or possible)."""
        try:
            spi, _kic, _kid, tar = ota.peek_command(packet)
        except ota.OtaError:
            return None  # cannot even name the TAR or SPI: a PoR would say nothing the platform can match
        candidates: list[Any] = self.key_sets() if tar == self.tar else []
        if tar != self.tar and tar in self.domains:
            candidates = [self.domains[tar]]
        if not candidates:
            return self._por(spi, tar, 0, ota.PorStatus.TAR_UNKNOWN, secured=False)
        # docs/ota.md 3.1: the key set is the first, in directory order, under whose KIc/KID the CC verifies (at
        # most 8 CMACs). Only a failed CC moves on to the next set: every other refusal is the same under every
        # set (SPI, key version, whole blocks) or comes after the CC verified (PCNTR), and is answered at once.
        state, cmd = None, None
        for candidate in candidates:
            try:
                cmd = ota.open_command(packet, candidate.keys)
            except ota.OtaRefused as e:
                assert e.status is not None
                if e.status is ota.PorStatus.RC_CC_DS_FAILED:
                    continue
                return self._por(spi, tar, e.cntr or 0, e.status, secured=False)
            except ota.OtaError:
                return self._por(spi, tar, 0, ota.PorStatus.UNIDENTIFIED_SECURITY_ERROR, secured=False)
            state = candidate
            break
        if state is None or cmd is None:
            # Under no key set: the counter was never read with a verified CC, so the clear PoR names counter 0.
            return self._por(spi, tar, 0, ota.PorStatus.RC_CC_DS_FAILED, secured=False)
        status = ota.check_counter(cmd.spi.counter, state.counter, cmd.cntr)
        if status is not ota.PorStatus.OK:
            return self._por(spi, tar, cmd.cntr, status, secured=True, keys=state.keys)
        try:
            apdus = ota.parse_apdus(cmd.data)
        except ota.OtaError:
            apdus = []
        # Durable first: whatever happens from here, this counter is spent and the packet never runs twice.
        state.counter = cmd.cntr
        if isinstance(state, SubApplicationKeySet):
            persist = getattr(self.applet, "_persist", None)
            if persist is not None:
                persist()  # the card's one atomic write: the counter is in its sub-application's EEPROM
        else:
            store = self.store if state is self.state else self.domain_stores.get(tar)
            if store is not None:
                store.save(state)
        if not apdus:
            return self._por(
                spi,
                tar,
                cmd.cntr,
                ota.PorStatus.OK,
                secured=True,
                data=ota.compact_response(0, b"\x6f\x00"),
                keys=state.keys,
            )
        self.executed.append(cmd.cntr)
        n, last = 0, b""
        for i, a in enumerate(apdus):
            if self.before_apdu is not None:
                self.before_apdu(i)
            last, n = self.applet.transmit(a), n + 1
            if len(last) < 2 or last[-2] not in _GO_ON:
                break
        response = ota.compact_response(n, last)
        return self._por(spi, tar, cmd.cntr, ota.PorStatus.OK, secured=True, data=response, keys=state.keys)

    def _por(
        self,
        spi: ota.Spi,
        tar: bytes,
        cntr: int,
        status: ota.PorStatus,
        *,
        secured: bool,
        data: bytes = b"",
        keys: ota.OtaKeys | None = None,
    ) -> bytes | None:
        if spi.por is ota.PorRequest.NONE or (spi.por is ota.PorRequest.ON_ERROR and status is ota.PorStatus.OK):
            return None
        return ota.build_por(keys if secured else None, spi, tar, cntr, status, data)

    def _queue_por(self, address: str, por_user_data: bytes) -> None:
        self.por_reference = (self.por_reference + 1) & 0xFF
        sms = sms_tpdu.Sms(address, sms_tpdu.PID_SIM_DATA_DOWNLOAD, sms_tpdu.DCS_8BIT_CLASS2, True, por_user_data)
        tpdu = sms_tpdu.submit(sms, self.por_reference)
        details = tlv(0x80 | TAG_COMMAND_DETAILS, bytes([0x01, SEND_SHORT_MESSAGE, 0x00]))
        devices = tlv(0x80 | TAG_DEVICE_IDS, bytes([DEV_UICC, DEV_NETWORK]))
        self.pending.append(tlv(0xD0, details + devices + tlv(0x80 | TAG_SMS_TPDU, tpdu)))

    def fetch(self, apdu: bytes) -> bytes:
        """FETCH (80 12 00 00 LL): the pending proactive command."""
        if apdu[:4] != b"\x80\x12\x00\x00" or not self.pending:
            return SW_NO_PROACTIVE
        return self.pending[0] + SW_OK

    def terminal_response(self, apdu: bytes) -> bytes:
        """TERMINAL RESPONSE (80 14 00 00 Lc ...) to SEND SHORT MESSAGE: the PoR is gone whatever the result (a
        handset that could not send it reports so; the platform then asks again with a new packet)."""
        if apdu[:4] != b"\x80\x14\x00\x00" or not self.pending:
            return SW_NO_PROACTIVE
        self.pending.pop(0)
        return bytes([0x91, len(self.pending[0])]) if self.pending else SW_OK


def proactive_sms_tpdu(command: bytes) -> bytes:
    """The SMS-SUBMIT TPDU inside a proactive SEND SHORT MESSAGE."""
    (tag, body), *_ = parse_tlvs(command)
    if tag != 0xD0:
        raise ValueError("not a proactive command")
    objs = {t & 0x7F: v for t, v in parse_tlvs(body)}
    if objs.get(TAG_COMMAND_DETAILS, b"")[1:2] != bytes([SEND_SHORT_MESSAGE]):
        raise ValueError("not SEND SHORT MESSAGE")
    return objs[TAG_SMS_TPDU]


def terminal_response_ok() -> bytes:
    body = (
        tlv(0x80 | TAG_COMMAND_DETAILS, bytes([0x01, SEND_SHORT_MESSAGE, 0x00]))
        + tlv(0x80 | TAG_DEVICE_IDS, bytes([DEV_TERMINAL, DEV_UICC]))
        + tlv(0x80 | TAG_RESULT, b"\x00")
    )
    return bytes([0x80, 0x14, 0x00, 0x00, len(body)]) + body


def deliver_to_sim(sim: OtaSim, deliver_tpdu: bytes) -> list[bytes]:
    """The minimal handset loop: one SMS-DELIVER with TP-PID 7F in, as ENVELOPE; every SMS-SUBMIT the SIM asks
    the handset to send (its PoRs) out. For the SIM's own conversation tests; phones use phone/handset.py."""
    sw = sim.envelope(envelope_sms_pp(deliver_tpdu))
    out = []
    while sw[0] == 0x91:
        cmd = sim.fetch(bytes([0x80, 0x12, 0x00, 0x00, sw[1]]))
        out.append(proactive_sms_tpdu(cmd[:-2]))
        sw = sim.terminal_response(terminal_response_ok())
    return out


def sms_pp_user_data(packet: bytes, reference: int) -> list[bytes]:
    """The 8-bit user data of each SMS carrying a command packet (UDH 70 00, concatenated when long)."""
    return ota.split_sms(bytes([ota.IEI_CPI, 0x00]), packet, reference)


def deliver_tpdus(originator: str, user_data: list[bytes], when: dt.datetime) -> list[bytes]:
    return [
        sms_tpdu.deliver(
            sms_tpdu.Sms(originator, sms_tpdu.PID_SIM_DATA_DOWNLOAD, sms_tpdu.DCS_8BIT_CLASS2, True, ud), when
        )
        for ud in user_data
    ]


def load_state(path: str | Path) -> OtaState:
    return OtaStateFile(path).load()
