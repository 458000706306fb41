"""The card side of nfcpy's `udp` driver: an ISO 14443-4 Type 4A card (an RFID-SIM's contactless front end).

nfcpy's udp initiator sends one datagram per frame, `<bitrate> <hex>` without CRC, or `RFOFF`; we answer `106A <hex>`.
"""

from __future__ import annotations

import binascii
import logging
import math
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import reduce

from common.logs import log_event
from simulator.readable import readable
from simulator.virtual_card import VirtualCard

log = logging.getLogger("onecard.sim.nfc")

REQA = b"\x26"
WUPA = b"\x52"
HLTA = b"\x50\x00"
CASCADE_TAG = 0x88
SEL_CODES = (0x93, 0x95, 0x97)
SAK_CASCADE = 0x04
SAK_ISO_DEP = 0x20
SAK_TYPE2 = 0x00
RATS = 0xE0
READ = 0x30  # Type 2 tag READ: 16 bytes from a 4-byte page

FS_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)  # FSDI/FSCI -> frame size; 9..15 are read as 8 (see docs/nfc.md)
DEFAULT_FWI = 7  # FWT 38.7 ms: nfcpy notices a tear after 6 * (FWT + 3.6 ms), about 0.25 s
DEFAULT_FSCI = 8
MAX_DATAGRAM = 2048


def fwt_seconds(fwi: int) -> float:
    """Frame waiting time of ISO 14443-4: (256 * 16 / fc) * 2**FWI."""
    return 256 * 16 / 13.56e6 * (1 << fwi)


def _bcc(part: bytes) -> int:
    return reduce(lambda a, b: a ^ b, part, 0)


def historical_bytes(atr: bytes) -> bytes:
    """The historical bytes of an ISO 7816-3 ATR (b"" if it is too short to say)."""
    if len(atr) < 2:
        return b""
    t0 = atr[1]
    k, y, i = t0 & 0x0F, t0 >> 4, 2
    while True:
        i += bin(y).count("1")
        if not y & 0x8 or i > len(atr):
            break
        y = atr[i - 1] >> 4
    return bytes(atr[i : i + k])


class StorageTag:
    """A Type 2 tag (no ISO-DEP, e.g. a MIFARE Ultralight sticker): answers READ, nothing else.

    It is here so that readers can be tested against a card that cannot carry APDUs at all.
    """

    def __init__(self, memory: bytes = bytes(64), label: str = "Type 2 storage tag"):
        if len(memory) < 16 or len(memory) % 4:
            raise ValueError(f"Type 2 memory must be whole 4-byte pages, at least 16 bytes (got {len(memory)})")
        self.memory = bytes(memory)
        self.label = label
        self.atr = b""

    def power_on(self) -> None:
        pass

    def power_off(self) -> None:
        pass

    def read(self, page: int) -> bytes:
        start = page * 4 % len(self.memory)
        return (self.memory + self.memory)[start : start + 16]


@dataclass
class Apdu:
    """A command APDU the initiator finished sending; run it and hand the answer to `TypeAPicc.respond`."""

    data: bytes


class WtxGranted:
    """The initiator accepted our S(WTX) request."""


WTX_GRANTED = WtxGranted()


class TypeAPicc:
    """ISO 14443-3 Type A activation and ISO 14443-4 block protocol, card side, without I/O.

    `receive(frame)` returns the frame to answer, None to stay silent, an Apdu to execute, or WTX_GRANTED.
    """

    def __init__(
        self,
        uid: bytes,
        iso_dep: bool = True,
        fsci: int = DEFAULT_FSCI,
        fwi: int = DEFAULT_FWI,
        historical: bytes = b"",
        storage: StorageTag | None = None,
    ):
        if len(uid) not in (4, 7, 10) or uid[0] == CASCADE_TAG:
            raise ValueError(f"UID must be 4, 7 or 10 bytes and not start with 88 (got {uid.hex()})")
        if not 0 <= fsci <= 8 or not 0 <= fwi <= 14:
            raise ValueError(f"FSCI must be 0..8 and FWI 0..14 (got {fsci}, {fwi})")
        self.uid = bytes(uid)
        self.iso_dep = iso_dep
        self.fsci, self.fwi = fsci, fwi
        self.historical = bytes(historical[:15])
        self.storage = storage
        levels = {
            4: [uid],
            7: [bytes([CASCADE_TAG]) + uid[:3], uid[3:]],
            10: [bytes([CASCADE_TAG]) + uid[:3], bytes([CASCADE_TAG]) + uid[3:6], uid[6:]],
        }[len(uid)]
        self._cl = [part + bytes([_bcc(part)]) for part in levels]
        # ATQA bits 8-7 give the UID size; bit 3 ("bit frame anticollision") marks a Type A card that is not Type 1.
        self.atqa = bytes([{4: 0x04, 7: 0x44, 10: 0x84}[len(uid)], 0x00])
        self.sak = SAK_ISO_DEP if iso_dep else SAK_TYPE2
        self.state = "idle"
        self.fsd = FS_TABLE[2]
        self._level = 0
        self._reset_block_state()

    def _reset_block_state(self) -> None:
        self.block_number = 1  # ISO 14443-4 rule C: the card's block number starts at 1
        self._last: bytes | None = None
        self._rx = bytearray()
        self._tx = b""
        self._awaiting_wtx = False

    @property
    def ats(self) -> bytes:
        # TA=00: 106 kbit/s both ways only; TB: FWI, SFGI=0; TC=00: no CID, no NAD.
        body = bytes([0x70 | self.fsci, 0x00, self.fwi << 4, 0x00]) + self.historical
        return bytes([len(body) + 1]) + body

    @property
    def max_inf(self) -> int:
        return self.fsd - 3  # PCB and the two CRC bytes count against FSD even though udp frames carry no CRC

    def field_off(self) -> None:
        self.state = "off"
        self._reset_block_state()

    def receive(self, frame: bytes) -> bytes | Apdu | WtxGranted | None:
        if not frame:
            return None
        if self.state == "off":
            self.state = "idle"
        if self.state == "protocol":
            return self._block(frame)
        if frame in (REQA, WUPA):
            if self.state == "halt" and frame == REQA:
                return None
            self.state, self._level = "ready", 0
            return self.atqa
        if self.state == "ready":
            return self._anticollision(frame)
        if self.state == "active":
            return self._active(frame)
        return None

    def _anticollision(self, frame: bytes) -> bytes | None:
        sel = SEL_CODES[self._level]
        cl = self._cl[self._level]
        if frame == bytes([sel, 0x20]):
            return cl
        if frame == bytes([sel, 0x70]) + cl:
            if self._level + 1 < len(self._cl):
                self._level += 1
                return bytes([SAK_CASCADE])
            self.state = "active"
            return bytes([self.sak])
        # Bit-oriented anticollision (NVB other than 20/70) is not needed with one card in the field.
        self.state = "idle"
        return None

    def _active(self, frame: bytes) -> bytes | None:
        if frame == HLTA:
            self.state = "halt"
            return None
        if self.iso_dep and len(frame) == 2 and frame[0] == RATS and frame[1] & 0x0F != 0x0F:
            self.fsd = FS_TABLE[min(frame[1] >> 4, 8)]
            self.state = "protocol"
            self._reset_block_state()
            return self.ats
        if self.storage is not None and len(frame) == 2 and frame[0] == READ:
            return self.storage.read(frame[1])
        self.state = "idle"  # Type A cards go mute on a command they do not know
        return None

    def _send(self, frame: bytes) -> bytes:
        self._last = frame
        return frame

    def _block(self, frame: bytes) -> bytes | Apdu | WtxGranted | None:
        pcb = frame[0]
        if pcb & 0x08:
            return None  # CID present: the ATS said we do not support CID, so the block is not for us
        if pcb & 0xE2 == 0x02:
            if pcb & 0x04 or self._tx or self._awaiting_wtx:
                return None  # NAD (not offered), or an I-block while we still owe a chain / a WTX: invalid, ignore
            self.block_number = pcb & 0x01  # rule D: toggle, i.e. answer with the block number just received
            self._rx += frame[1:]
            if pcb & 0x10:
                return self._send(bytes([0xA2 | self.block_number]))  # rule 2: R(ACK) each chained block
            apdu, self._rx = bytes(self._rx), bytearray()
            return Apdu(apdu)
        if pcb & 0xE6 == 0xA2 and len(frame) == 1:
            nak = bool(pcb & 0x10)
            if pcb & 0x01 == self.block_number:
                return self._last  # rule 11: the initiator missed our last block; send it again
            if nak:
                return self._send(bytes([0xA2 | self.block_number]))  # rule 12 (this is also nfcpy's presence check)
            if self._tx:
                self.block_number ^= 1  # rule 13: continue our chain
                return self._send(self._next_block())
            return None
        if pcb & 0xF7 == 0xC2 and len(frame) == 1:
            self.state = "halt"  # S(DESELECT): answer, then only WUPA wakes us
            return bytes([0xC2])
        if pcb & 0xF7 == 0xF2 and len(frame) == 2 and self._awaiting_wtx:
            self._awaiting_wtx = False
            return WTX_GRANTED
        return None

    def respond(self, rapdu: bytes) -> bytes:
        """The first I-block carrying `rapdu`; the rest follow on the initiator's R(ACK)s."""
        self._tx = bytes(rapdu)
        return self._send(self._next_block())

    def _next_block(self) -> bytes:
        chunk, self._tx = self._tx[: self.max_inf], self._tx[self.max_inf :]
        return bytes([0x02 | self.block_number | (0x10 if self._tx else 0)]) + chunk

    def wtx_request(self, wtxm: int) -> bytes:
        self._awaiting_wtx = True
        return self._send(bytes([0xF2, wtxm & 0x3F]))


def random_uid() -> bytes:
    """A single-size UID whose first byte 08 marks it as a random number (ISO 14443-3), as phones use."""
    return b"\x08" + os.urandom(3)


@dataclass(eq=False)
class _Presence:
    card: VirtualCard | StorageTag
    picc: TypeAPicc
    label: str | None
    tear_after: int | None
    apdus: int = 0
    powered: bool = False
    busy: bool = False
    activations: int = 0


class VirtualPicc:
    """A UDP endpoint on 127.0.0.1 where nfcpy (path `udp:127.0.0.1:<port>`) finds one contactless card.

    `insert(card)` puts a card in the field, `remove()` takes it out; with no card the endpoint stays silent,
    as an empty field does. nfcpy's `RFOFF` (sent when it mutes the field before each poll) powers the card
    off; so does a frame from a new initiator socket, which nfcpy only opens after muting.

    Tearing: with `insert(card, tear_after=k)` the k-th command APDU of this insertion is passed to
    `card.transmit` and its answer is never sent; the card leaves the field (`card.power_off()`) and stays
    silent, so the initiator's exchange times out after its R(NAK) retries, like a phone pulled away after
    the card committed but before its answer reached the reader.
    """

    def __init__(self, port: int = 0, label: str | None = None, fsci: int = DEFAULT_FSCI, fwi: int = DEFAULT_FWI):
        self.host = "127.0.0.1"
        self.label = label
        self.fsci, self.fwi = fsci, fwi
        TypeAPicc(b"\x08\x00\x00\x00", fsci=fsci, fwi=fwi)  # validate the parameters now, not at the first insert
        self._sock = _bind_udp(self.host, port)
        self.port = self._sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._cond = threading.Condition()
        self._slot: _Presence | None = None
        self._initiator: tuple[str, int] | None = None
        self._deferred: tuple[bytes, tuple[str, int]] | None = None
        self._removed = threading.Event()
        self._removed.set()
        self._closed = False
        self.apdu_count = 0
        self.torn = False
        self.removal_reason: str | None = None
        self.uid: bytes | None = None
        self.activations = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"picc-card-{self.port}")
        self._thread = threading.Thread(target=self._serve, name=f"picc-{self.port}", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        """The nfcpy device path that reaches this card."""
        return f"udp:{self.host}:{self.port}"

    @property
    def inserted(self) -> bool:
        return not self._removed.is_set()

    def __enter__(self) -> VirtualPicc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def insert(
        self,
        card: VirtualCard | StorageTag,
        tear_after: int | None = None,
        label: str | None = None,
        uid: bytes | None = None,
    ) -> None:
        """Put `card` in the field (replacing any card there); `uid` defaults to a fresh random 4-byte UID."""
        if tear_after is not None and tear_after < 1:
            raise ValueError(f"tear_after must be >= 1 (the APDU after which the card leaves), got {tear_after}")
        if self._closed:
            raise RuntimeError("this VirtualPicc is closed; create a new one")
        uid = bytes(uid) if uid is not None else random_uid()
        if isinstance(card, StorageTag):
            picc = TypeAPicc(uid, iso_dep=False, fsci=self.fsci, fwi=self.fwi, storage=card)
        else:
            picc = TypeAPicc(uid, fsci=self.fsci, fwi=self.fwi, historical=historical_bytes(bytes(card.atr)))
        self.remove("replaced")
        if label is not None:
            self.label = label
        with self._cond:
            self._slot = _Presence(card, picc, self.label, tear_after)
            self.apdu_count, self.torn, self.removal_reason, self.uid = 0, False, None, uid
            self._removed.clear()
        log_event(
            log,
            "card-inserted",
            port=self.port,
            card=self.label,
            uid=uid.hex(),
            iso_dep=picc.iso_dep,
            tear_after=tear_after,
        )

    def remove(self, reason: str = "removed") -> None:
        """Take the card out of the field now; an APDU in progress finishes on the card but is never answered."""
        with self._cond:
            slot = self._slot
            if slot is None:
                return
            self._slot = None
            self._cond.wait_for(lambda: not slot.busy)
        self._leave(slot, reason)

    def wait_removed(self, timeout: float | None = None) -> bool:
        """Block until the card has left the field (removed or torn)."""
        return self._removed.wait(timeout)

    def close(self) -> None:
        """Remove the card, stop serving and free the port."""
        if self._closed:
            return
        self._closed = True
        self.remove("closed")
        self._wake_w.send(b"x")
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._worker.shutdown(wait=True)
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()

    def _leave(self, slot: _Presence, reason: str) -> None:
        if slot.powered:
            slot.card.power_off()
            slot.powered = False
        self.removal_reason = reason
        log_event(log, "card-removed", port=self.port, card=slot.label, reason=reason, apdus=slot.apdus)
        self._removed.set()

    def _serve(self) -> None:
        while True:
            ready = readable([self._sock, self._wake_r], None)
            if self._wake_r in ready:
                return
            try:
                datagram, addr = self._sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                # Not expected on an unconnected UDP socket; if the kernel reports something, keep serving.
                log_event(log, "udp-error", level=logging.DEBUG, port=self.port, error=exc.strerror or str(exc))
                continue
            while datagram is not None:
                try:
                    self._datagram(datagram, addr)
                except Exception:
                    # Whatever the initiator sends, the card must stay in service; the tests check this never logs.
                    log.exception("event=emulator-error port=%s datagram=%s", self.port, datagram[:64].hex())
                # A frame that arrived while we waited for a WTX grant is handled now that the card is idle.
                (datagram, addr), self._deferred = self._deferred or (None, None), None

    def _datagram(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if datagram.startswith(b"RFOFF"):
            if addr == self._initiator:
                self._field_off("rf-off")
                self._initiator = None
            return
        frame = _parse_frame(datagram)
        if frame is None:
            log_event(log, "frame-ignored", level=logging.DEBUG, port=self.port, datagram=datagram[:64].hex())
            return
        if addr != self._initiator:
            if self._initiator is not None:
                self._field_off("new-initiator")
            self._initiator = addr
        with self._cond:
            slot = self._slot
            if slot is None:
                return
            if not slot.powered:
                slot.card.power_on()
                slot.powered = True
            was = slot.picc.state
            result = slot.picc.receive(frame)
            if was != "protocol" and slot.picc.state == "protocol":
                slot.activations += 1
                self.activations += 1
                log_event(
                    log,
                    "card-activated",
                    port=self.port,
                    card=slot.label,
                    uid=slot.picc.uid.hex(),
                    fsd=slot.picc.fsd,
                    ats=slot.picc.ats.hex(),
                )
            elif was == "protocol" and slot.picc.state == "halt":
                log_event(log, "card-deselected", port=self.port, card=slot.label)
            if not isinstance(result, Apdu):
                if isinstance(result, bytes):
                    self._sendto(result, addr)
                return
            slot.apdus += 1
            self.apdu_count = slot.apdus
            slot.busy = True
        leaving = None
        try:
            response = self._execute(slot, result.data, addr)
        except Exception as exc:  # a broken card simulation must show up in the log and leave, not kill the thread
            log_event(log, "card-error", level=logging.ERROR, port=self.port, card=slot.label, error=repr(exc))
            response, leaving = None, "card-error"
        with self._cond:
            slot.busy = False
            self._cond.notify_all()
            if self._slot is not slot:
                return  # removed while the card worked: the answer is lost
            if (
                leaving is None
                and response is not None
                and slot.tear_after is not None
                and slot.apdus >= slot.tear_after
            ):
                leaving = f"torn-after-apdu-{slot.apdus}"
                self.torn = True
            if leaving is not None:
                self._slot = None
            elif response is not None:
                self._sendto(slot.picc.respond(response), addr)
        if leaving is not None:
            self._leave(slot, leaving)

    def _execute(self, slot: _Presence, apdu: bytes, addr: tuple[str, int]) -> bytes | None:
        """Run the APDU on the card; while it works past half the waiting time, ask the initiator for more (S(WTX)).

        None: the field went away while the card worked, so there is no one to answer.
        """
        log_event(
            log, "apdu", level=logging.DEBUG, port=self.port, n=slot.apdus, header=apdu[:5].hex(), length=len(apdu)
        )
        future = self._worker.submit(slot.card.transmit, apdu)
        fwt = fwt_seconds(slot.picc.fwi)
        wtxm = max(1, min(59, math.ceil(0.1 / fwt)))
        wait = fwt / 2
        while True:
            try:
                response = bytes(future.result(timeout=wait))
                break
            except FutureTimeout:
                pass
            with self._cond:
                still_here = self._slot is slot
                request = slot.picc.wtx_request(wtxm) if still_here else b""
            if not still_here or not self._send_wtx(slot, request, addr, wtxm * fwt):
                future.result()
                return None
            wait = wtxm * fwt / 2
        log_event(
            log,
            "apdu-answered",
            level=logging.DEBUG,
            port=self.port,
            n=slot.apdus,
            length=len(response),
            sw=response[-2:].hex(),
        )
        return response

    def _send_wtx(self, slot: _Presence, request: bytes, addr: tuple[str, int], timeout: float) -> bool:
        """Send S(WTX) and wait for the initiator to grant it; False if the field is gone instead."""
        self._sendto(request, addr)
        log_event(log, "wtx-requested", level=logging.DEBUG, port=self.port, n=slot.apdus, wtxm=request[1])
        ready = readable([self._sock], timeout)
        if not ready:
            return False
        try:
            datagram, sender = self._sock.recvfrom(MAX_DATAGRAM)
        except OSError:
            return False
        frame = _parse_frame(datagram)
        if sender == addr and frame is not None and frame[:1] == b"\xf2":
            with self._cond:
                if slot.picc.receive(frame) is WTX_GRANTED:
                    return True
        self._deferred = (datagram, sender)  # most likely RFOFF: the field this card was working in is gone
        return False

    def _field_off(self, reason: str) -> None:
        with self._cond:
            slot = self._slot
            if slot is None or not slot.powered:
                return
            slot.picc.field_off()
            slot.card.power_off()
            slot.powered = False
        log_event(log, "field-off", level=logging.DEBUG, port=self.port, card=slot.label, reason=reason)

    def _sendto(self, frame: bytes, addr: tuple[str, int]) -> None:
        try:
            self._sock.sendto(b"106A " + binascii.hexlify(frame), addr)
        except OSError as exc:
            log_event(log, "udp-error", level=logging.DEBUG, port=self.port, error=exc.strerror or str(exc))


def _parse_frame(datagram: bytes) -> bytes | None:
    parts = datagram.split()
    if len(parts) != 2 or parts[0] != b"106A":
        return None
    try:
        return binascii.unhexlify(parts[1])
    except (binascii.Error, ValueError):
        return None


def _bind_udp(host: str, port: int) -> socket.socket:
    # nfcpy's udp driver turns the port back into a number with getnameinfo() without NI_NUMERICSERV, so a
    # port that /etc/services names (9 -> "discard") crashes it; pick another ephemeral port if that happens.
    for _ in range(20):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"cannot bind UDP {host}:{port} for the simulated card ({exc.strerror}); choose a free port or 0",
            ) from None
        bound = sock.getsockname()[1]
        if socket.getnameinfo((host, bound), socket.NI_NUMERICHOST)[1].isdigit():
            return sock
        sock.close()
        if port:
            raise ValueError(
                f"UDP port {port} has a service name in /etc/services, which nfcpy's udp driver "
                "cannot parse; choose another port"
            )
    raise OSError("no free UDP port without a service name; check /etc/services")
