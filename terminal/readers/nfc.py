"""The Reader protocol over nfcpy: PN532/PN533/ACR122U/RC-S380 readers, and nfcpy's udp link to a simulated card."""

from __future__ import annotations

import errno
import logging
import threading
import time

import nfc
import nfc.clf
import nfc.tag
from nfc.tag.tt4 import IsoDepInitiator

from common.logs import log_event
from terminal.reader import CardRemoved, ReaderError

log = logging.getLogger("onecard.reader.nfc")

FS_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)
PRESENCE_INTERVAL = 0.1  # between presence checks: a removal is seen within this plus one FWT
POLL_INTERVAL = 0.1  # between empty polls, as nfcpy's own connect() loop does
RATS_TIMEOUT = 0.1  # ISO's activation FWT is ~5 ms; the slack is for the udp link between Python threads
# nfcpy's udp driver carries frames between two Python processes: a busy CPU delays a frame far beyond any
# FWT a card announces (tens of ms), and nfcpy gives up after 5 such timeouts ("ISO-DEP timeout error").
# On that link only, frame waits are at least these; [reader].command_timeout_ms still bounds every command.
UDP_MIN_FWT = 0.1
UDP_RATS_TIMEOUT = 0.5
SUPPORTED_TARGETS = ("106A", "212F", "424F")
# What an ISO 7816 card answers to a command it has no function for; the terminal reads it as "not a one-card".
SW_FUNCTION_NOT_SUPPORTED = b"\x6a\x81"

_OPEN_HINT = "check the reader is plugged in / the path, e.g. usb, usb:054c:06c3, tty:AMA0:pn532"


def parse_ats(ats: bytes) -> tuple[int, int, bytes]:
    """(FSC, FWI, historical bytes) of an ISO 14443-4 ATS; ValueError if it is malformed.

    nfcpy's own Type4ATag reads FWI from the fourth byte whatever T0 says, which is wrong for an ATS without
    TA and fails on a short one; this follows T0.
    """
    if not ats or ats[0] != len(ats):
        raise ValueError(f"ATS length byte does not match its length ({bytes(ats).hex()})")
    if len(ats) == 1:
        return FS_TABLE[2], 4, b""  # ISO 14443-4 defaults when T0 is absent
    t0 = ats[1]
    fsc = FS_TABLE[min(t0 & 0x0F, 8)]
    i, fwi = 2, 4
    if t0 & 0x10:
        i += 1
    if t0 & 0x20:
        if i >= len(ats):
            raise ValueError(f"ATS announces TB but ends before it ({bytes(ats).hex()})")
        fwi = ats[i] >> 4
        i += 1
        if fwi == 15:
            fwi = 4  # RFU: ISO says use the default
    if t0 & 0x40:
        i += 1
    if i > len(ats):
        raise ValueError(f"ATS announces more interface bytes than it has ({bytes(ats).hex()})")
    return fsc, fwi, bytes(ats[i:])


def _tck(atr: bytes) -> bytes:
    x = 0
    for b in atr[1:]:
        x ^= b
    return atr + bytes([x])


def atr_from_historical(historical: bytes) -> bytes:
    """The ATR a PC/SC reader reports for an ISO 14443-4 card: 3B 8n 80 01, the ATS historical bytes, TCK."""
    historical = historical[:15]
    return _tck(bytes([0x3B, 0x80 | len(historical), 0x80, 0x01]) + historical)


def storage_card_atr(standard: int, name: int) -> bytes:
    """The PC/SC part 3 ATR of a storage card (RID A000000306, standard SS, card name NN NN)."""
    return _tck(bytes.fromhex("3B8F8001804F0CA000000306") + bytes([standard]) + name.to_bytes(2, "big") + bytes(4))


def _storage_atr(target) -> bytes:
    if target.brty.endswith("F"):
        return storage_card_atr(0x11, 0x003B)  # FeliCa
    sak = target.sel_res[0] if target.sel_res else 0
    name = {0x08: 0x0001, 0x18: 0x0002, 0x00: 0x0003}.get(sak, 0x0000)  # MIFARE Classic 1K, 4K, Ultralight
    return storage_card_atr(0x03, name)


class NfcConnection:
    """An ISO-DEP (ISO 14443-4) card: raw command APDUs in, raw response APDUs with SW1 SW2 out."""

    def __init__(self, reader: NfcReader, dep: IsoDepInitiator, atr: bytes, uid: bytes):
        self._reader = reader
        self._dep = dep
        self.atr = atr
        self.uid = uid
        self._closed = False
        self.gone = False

    def transmit(self, apdu: bytes) -> bytes:
        with self._reader._lock:
            return self._transmit(apdu)

    def _transmit(self, apdu: bytes) -> bytes:
        self._check_usable()
        try:
            response = self._dep.exchange(bytearray(apdu))
        except (nfc.tag.TagCommandError, nfc.clf.CommunicationError) as exc:
            self.gone = True
            raise CardRemoved(f"card left the field of {self._reader.name} during an APDU ({exc})") from None
        except IndexError:
            # nfcpy indexes into the card's block without length checks; a truncated block means a lost frame.
            self.gone = True
            raise CardRemoved(f"card sent a truncated ISO-DEP block to {self._reader.name}") from None
        except OSError as exc:
            raise self._reader._device_error(exc) from None
        if response is None or len(response) < 2:
            self.gone = True
            raise CardRemoved(
                f"card stopped answering {self._reader.name} (response of "
                f"{0 if response is None else len(response)} bytes)"
            )
        return bytes(response)

    def present(self) -> bool:
        if self.gone:
            return False
        with self._reader._lock:  # waits for a command a late card is still answering
            try:
                self._dep.exchange(None)  # R(NAK): the card answers R(ACK) without touching its application
            except nfc.clf.CommunicationError:
                return False
            except OSError as exc:
                raise self._reader._device_error(exc) from None
        return True

    def _check_usable(self) -> None:
        if self._closed:
            raise ReaderError(f"the connection to the card on {self._reader.name} is closed; wait_for_card again")
        if self.gone or self._reader._current is not self:
            raise CardRemoved(f"card on {self._reader.name} was removed or detected anew; this connection is stale")

    def close(self) -> None:
        # The card stays activated so that wait_for_removal can check its presence with R(NAK).
        self._closed = True


class NotOneCardConnection:
    """A tag that cannot carry APDUs (Type 1/2, MIFARE Classic, FeliCa, or a broken ATS).

    Every APDU is answered 6A81 (function not supported), as PC/SC readers do for storage cards, so the
    terminal refuses it as "Card not supported" instead of asking the holder to tap again forever.
    """

    def __init__(self, reader: NfcReader, tag, target, atr: bytes, why: str):
        self._reader = reader
        self._tag = tag
        self._target = target
        self.atr = atr
        self.why = why
        self.gone = False
        self._closed = False

    def transmit(self, apdu: bytes) -> bytes:
        if self._closed:
            raise ReaderError(f"the connection to the card on {self._reader.name} is closed; wait_for_card again")
        return SW_FUNCTION_NOT_SUPPORTED

    def present(self) -> bool:
        with self._reader._lock:
            return self._present()

    def _present(self) -> bool:
        try:
            if self._tag is not None:
                return bool(self._tag.is_present)
            # No tag object to ask: look for this very card again (the field is reset, so it answers REQA).
            target = nfc.clf.RemoteTarget(self._target.brty, sel_req=self._target.sdd_res)
            return self._reader._clf.sense(target) is not None
        except nfc.clf.CommunicationError:
            return False
        except OSError as exc:
            raise self._reader._device_error(exc) from None

    def close(self) -> None:
        self._closed = True


class NfcReader:
    """The nfcpy reader at `path` ("usb", "usb:054c:06c3", "tty:AMA0:pn532", "udp:127.0.0.1:54321").

    Polls for Type A cards (`targets` may add "212F"/"424F" to show FeliCa cards as not supported).
    """

    def __init__(self, path: str, targets: tuple[str, ...] = ("106A",)):
        unknown = [t for t in targets if t not in SUPPORTED_TARGETS]
        if unknown or not targets:
            raise ValueError(f"targets must be some of {SUPPORTED_TARGETS} (got {targets})")
        self.path = path
        self._targets = tuple(targets)
        # One frame at a time on the device: a command left to a late card (card_deadline.py) may still be
        # running on another thread when the tap loop checks for the card's removal.
        self._lock = threading.RLock()
        self._udp = path.startswith("udp")
        try:
            self._clf = nfc.ContactlessFrontend(path)
        except OSError as exc:
            raise ReaderError(_open_error(path, exc)) from None
        except (ValueError, TypeError) as exc:
            raise ReaderError(f"no NFC reader at {path!r} (nfcpy cannot use this path: {exc}); {_OPEN_HINT}") from None
        self.name = f"nfc:{path}"
        self._current: NfcConnection | NotOneCardConnection | None = None
        log_event(log, "reader.opened", reader=self.name, device=str(self._clf))

    def wait_for_card(self, timeout: float) -> NfcConnection | NotOneCardConnection | None:
        deadline = time.monotonic() + timeout
        while True:
            connection = self._poll()
            if connection is not None:
                return connection
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(POLL_INTERVAL, remaining))

    def wait_for_removal(self, timeout: float) -> bool:
        """True once the card activated last stops answering presence checks (at once after a failed APDU)."""
        deadline = time.monotonic() + timeout
        while True:
            current = self._current
            if current is None or not current.present():
                self._current = None
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(PRESENCE_INTERVAL, remaining))

    def close(self) -> None:
        self._current = None
        clf, self._clf = self._clf, None
        if clf is not None:
            with self._lock:
                clf.close()  # switches the RF field off

    def _poll(self) -> NfcConnection | NotOneCardConnection | None:
        with self._lock:
            return self._poll_locked()

    def _poll_locked(self) -> NfcConnection | NotOneCardConnection | None:
        if self._clf is None:
            raise ReaderError(f"NFC reader {self.name} is closed; create a new NfcReader")
        self._current = None  # sensing resets the field: whatever was activated before is gone
        try:
            target = self._clf.sense(*[nfc.clf.RemoteTarget(t) for t in self._targets])
        except nfc.clf.UnsupportedTargetError as exc:
            raise ReaderError(
                f"NFC reader {self.name} cannot poll for {self._targets} ({exc}); "
                "configure a reader that supports Type A"
            ) from None
        except nfc.clf.CommunicationError:
            return None
        except OSError as exc:
            raise self._device_error(exc) from None
        if target is None:
            return None
        try:
            connection = self._activate(target)
        except nfc.clf.CommunicationError as exc:
            log_event(log, "card.activation_failed", level=logging.DEBUG, reader=self.name, error=str(exc))
            return None
        except OSError as exc:
            raise self._device_error(exc) from None
        self._current = connection
        return connection

    def _activate(self, target) -> NfcConnection | NotOneCardConnection | None:
        is_type_a = target.brty.endswith("A")
        if is_type_a and target.sens_res[0] & 0x1F and target.sel_res and target.sel_res[0] & 0x20:
            return self._activate_iso_dep(target)
        try:
            tag = nfc.tag.activate(self._clf, target)
        except nfc.clf.CommunicationError:
            raise
        except Exception as exc:
            # nfcpy parses what a tag sends without length checks; a tag it chokes on is still not a one-card.
            log_event(
                log,
                "card.activation_error",
                level=logging.WARNING,
                reader=self.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return NotOneCardConnection(self, None, target, _storage_atr(target), f"nfcpy could not activate: {exc}")
        if tag is None:
            return None
        log_event(log, "card.not_iso_dep", reader=self.name, tag=str(tag))
        return NotOneCardConnection(self, tag, target, _storage_atr(target), f"{tag.type} tag, no ISO-DEP")

    def _activate_iso_dep(self, target) -> NfcConnection | NotOneCardConnection:
        fsdi = 0x80 if self._clf.max_recv_data_size >= 256 else 0x70
        ats = self._clf.exchange(bytearray([0xE0, fsdi]), UDP_RATS_TIMEOUT if self._udp else RATS_TIMEOUT)  # RATS
        uid = bytes(target.sdd_res)
        try:
            fsc, fwi, historical = parse_ats(bytes(ats or b""))
        except ValueError as exc:
            log_event(log, "card.bad_ats", level=logging.WARNING, reader=self.name, uid=uid.hex(), error=str(exc))
            return NotOneCardConnection(self, None, target, atr_from_historical(b""), str(exc))
        fsc = min(fsc, self._clf.max_send_data_size)
        fwt = 4096 / 13.56e6 * (1 << fwi)
        dep = IsoDepInitiator(self._clf, fsc, max(fwt, UDP_MIN_FWT) if self._udp else fwt)
        log_event(log, "card.activated", level=logging.DEBUG, reader=self.name, uid=uid.hex(), fsc=fsc, fwi=fwi)
        return NfcConnection(self, dep, atr_from_historical(historical), uid)

    def _device_error(self, exc: OSError) -> ReaderError:
        return ReaderError(
            f"NFC reader {self.name} stopped working ({exc.strerror or exc}); "
            "check it is plugged in and not used by another process"
        )


def _open_error(path: str, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if exc.errno == errno.EACCES:
        return (
            f"NFC reader at {path!r} is not accessible ({why}); give this user access to the device "
            "(udev rule for USB, dialout group for serial; see docs/nfc.md)"
        )
    if exc.errno == errno.EBUSY:
        return (
            f"NFC reader at {path!r} is busy ({why}); stop the other program using it, or unload the "
            "kernel's pn533_usb driver (see docs/nfc.md)"
        )
    return f"no NFC reader at {path!r} ({why}); {_OPEN_HINT}"
