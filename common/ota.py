"""SCP80 secured packets over SMS-PP (ETSI TS 102 225, 3GPP TS 31.115), sans-I/O: docs/ota.md is the spec.

Plain functions and dataclasses that build and parse bytes and decide; keys, counters and clocks are passed in.
The platform builds command packets and opens proofs of receipt (PoR); the SIM opens command packets and builds
PoRs. Only the onecard profile is accepted: AES-128 CBC ciphering (KIc algorithm nibble 2), AES-CMAC cryptographic
checksum truncated to 8 bytes (KID algorithm nibble 2), IV zero, zero padding counted by PCNTR.

Written by hand, and why: pycrate and pySim describe these structures, but pycrate has no TS 102 225 packet and
pySim neither checks the counter nor builds a PoR (the SIM side). The packet is 20 bytes of fixed header; what
matters is which bytes the checksum covers, and that is stated in one place here (`_command_cc_input`,
`_por_cc_input`) and in docs/ota.md.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

# int.to_bytes / int.from_bytes without a byte order are big-endian (Python >= 3.11), as every field here is.
BLOCK = 16
KEY_SIZE = 16
CC_SIZE = 8
TAR_SIZE = 3
CNTR_SIZE = 5
MAX_CNTR = (1 << (8 * CNTR_SIZE)) - 1
# CHL/RHL when a CC is present: SPI(2) KIc(1) KID(1) TAR(3) CNTR(5) PCNTR(1) CC(8) / TAR CNTR PCNTR status CC.
CHL_CC = 13 + CC_SIZE
RHL_CC = 10 + CC_SIZE
# TS 31.115 4.2 / 4.4: the command and response packet identifiers are UDH information elements of length 0.
IEI_CONCAT8 = 0x00
IEI_CONCAT16 = 0x08
IEI_CPI = 0x70
IEI_RPI = 0x71
SMS_UD_MAX = 140  # octets of 8-bit user data in one SMS (TS 23.040 9.2.3.24)
# The onecard application's TAR (TS 102 225 5.1.4 leaves values outside TS 101 220's allocation to the issuer).
ONECARD_TAR = b"\xb0\x1c\xa0"
# The card issuer's card management on a version 2 card: issuing over the air (docs/ota.md 2.1), its own keys.
ISSUER_TAR = b"\xb0\x1c\x00"

# KIc / KID algorithm nibble (b4..b1) for AES: KIc '2' = AES CBC, KID '2' = AES CMAC (TS 102 225 5.1.2, 5.1.3.1).
ALG_AES = 0x2


class PorStatus(enum.IntEnum):
    """Response Status Codes (TS 102 225 table 5.5, TS 31.115 section 4.4)."""

    OK = 0x00
    RC_CC_DS_FAILED = 0x01
    CNTR_LOW = 0x02
    CNTR_HIGH = 0x03
    CNTR_BLOCKED = 0x04
    CIPHERING_ERROR = 0x05
    UNIDENTIFIED_SECURITY_ERROR = 0x06
    INSUFFICIENT_MEMORY = 0x07
    MORE_TIME = 0x08
    TAR_UNKNOWN = 0x09
    INSUFFICIENT_SECURITY_LEVEL = 0x0A


class CounterMode(enum.IntEnum):
    """SPI first octet b5..b4."""

    NONE = 0
    AVAILABLE = 1  # counter available, no replay or sequence checking
    HIGHER = 2  # process if and only if the counter value is higher than the value in the RE
    ONE_HIGHER = 3  # process if and only if the counter value is exactly one higher


class PorRequest(enum.IntEnum):
    """SPI second octet b2..b1."""

    NONE = 0
    ALWAYS = 1
    ON_ERROR = 2


class OtaError(ValueError):
    """Bytes that are not a packet of the onecard profile; the message names the field."""


class OtaRefused(Exception):
    """The SIM refuses a command packet; `status` is what its PoR says (None: too damaged to answer at all)."""

    def __init__(self, status: PorStatus | None, message: str, tar: bytes | None = None, cntr: int | None = None):
        super().__init__(message)
        self.status = status
        self.tar = tar
        self.cntr = cntr


@dataclass(frozen=True)
class Spi:
    """Security Parameter Indicator (TS 102 225 5.1.1, TS 31.115 4.2), two octets."""

    cc: bool = True  # b2..b1 = 10 (cryptographic checksum); False = 00 (none)
    ciphered: bool = True  # b3
    counter: CounterMode = CounterMode.HIGHER
    por: PorRequest = PorRequest.ALWAYS
    por_cc: bool = True
    por_ciphered: bool = True
    por_by_submit: bool = True  # b6 of octet 2: PoR as SMS-SUBMIT (1) or in the SMS-DELIVER-REPORT (0)

    def to_bytes(self) -> bytes:
        first = (0b10 if self.cc else 0) | (int(self.ciphered) << 2) | (int(self.counter) << 3)
        second = int(self.por) | ((0b10 if self.por_cc else 0) << 2) | (int(self.por_ciphered) << 4)
        second |= int(self.por_by_submit) << 5
        return bytes([first, second])

    @classmethod
    def from_bytes(cls, b: bytes) -> Spi:
        if len(b) != 2:
            raise OtaError(f"SPI is {len(b)} bytes, expected 2")
        first, second = b
        if first & 0xE0 or second & 0xC0:
            raise OtaError(f"SPI {b.hex()} sets reserved bits")
        if (first & 0b11) not in (0b00, 0b10) or ((second >> 2) & 0b11) not in (0b00, 0b10):
            raise OtaError(f"SPI {b.hex()} asks for a redundancy check or signature; onecard uses a CC or nothing")
        if second & 0b11 == 0b11:
            raise OtaError(f"SPI {b.hex()}: PoR request 11 is reserved")
        return cls(
            cc=bool(first & 0b10),
            ciphered=bool(first & 0b100),
            counter=CounterMode((first >> 3) & 0b11),
            por=PorRequest(second & 0b11),
            por_cc=bool(second & 0b1000),
            por_ciphered=bool(second & 0b10000),
            por_by_submit=bool(second & 0b100000),
        )


# What the platform sends: CC, ciphered, process if higher, PoR always, with CC, ciphered, by SMS-SUBMIT: 16 39.
SPI_ONECARD = Spi()


def key_identifier(version: int) -> int:
    """KIc / KID octet: key version (1..15) in b8..b5, AES in b4..b1."""
    if not 1 <= version <= 15:
        raise OtaError(f"OTA key version {version} is outside 1..15")
    return (version << 4) | ALG_AES


def key_version(identifier: int, what: str) -> int:
    if identifier & 0x0F != ALG_AES or not identifier >> 4:
        raise OtaError(f"{what} {identifier:02x} is not AES with a key version 1..15")
    return identifier >> 4


@dataclass(frozen=True)
class OtaKeys:
    """One card's KIc (ciphering) and KID (checksum) keys, with their versions."""

    kic: bytes
    kid: bytes
    version: int = 1

    def __post_init__(self) -> None:
        if len(self.kic) != KEY_SIZE or len(self.kid) != KEY_SIZE:
            raise ValueError("KIc and KID are 16-byte AES-128 keys")

    def __repr__(self) -> str:  # never the keys
        return f"OtaKeys(version={self.version})"


def cmac8(key: bytes, data: bytes) -> bytes:
    """The CC: the leftmost 8 bytes of AES-CMAC (NIST SP 800-38B, RFC 4493) of data."""
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()[:CC_SIZE]


def cbc_encrypt(key: bytes, data: bytes) -> bytes:
    if len(data) % BLOCK:
        raise ValueError("CBC input must be whole blocks")
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(BLOCK))).encryptor()
    return enc.update(data) + enc.finalize()


def cbc_decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) % BLOCK or not data:
        raise ValueError("CBC input must be whole blocks")
    dec = Cipher(algorithms.AES(key), modes.CBC(bytes(BLOCK))).decryptor()
    return dec.update(data) + dec.finalize()


def _padding(length: int, ciphered: bool) -> int:
    return (-length) % BLOCK if ciphered else 0


@dataclass(frozen=True)
class CommandPacket:
    """A command packet's clear fields (after deciphering and checking)."""

    spi: Spi
    kic: int
    kid: int
    tar: bytes
    cntr: int
    data: bytes  # secured data without padding


def _command_cc_input(cpl: int, chl: int, head: bytes, cntr_pcntr: bytes, data_padded: bytes) -> bytes:
    # TS 31.115 4.2: the CC covers CPL, CHL, SPI, KIc, KID, TAR, CNTR, PCNTR and the secured data with its padding.
    return cpl.to_bytes(2) + bytes([chl]) + head + cntr_pcntr + data_padded


def build_command(keys: OtaKeys, tar: bytes, cntr: int, data: bytes, spi: Spi = SPI_ONECARD) -> bytes:
    """The command packet from CPL on (what follows the UDH `02 70 00`), secured per spi."""
    if len(tar) != TAR_SIZE:
        raise OtaError(f"TAR is {len(tar)} bytes, expected 3")
    if not 0 <= cntr <= MAX_CNTR:
        raise OtaError(f"counter {cntr} does not fit in 5 bytes")
    cc_size = CC_SIZE if spi.cc else 0
    pad = _padding(CNTR_SIZE + 1 + cc_size + len(data), spi.ciphered)
    padded = data + bytes(pad)
    head = spi.to_bytes() + bytes([key_identifier(keys.version), key_identifier(keys.version)]) + tar
    chl = 13 + cc_size
    cpl = 1 + chl + len(padded)
    if cpl > 0xFFFF:
        raise OtaError("command packet longer than 65535 bytes")
    cntr_pcntr = cntr.to_bytes(CNTR_SIZE) + bytes([pad])
    cc = cmac8(keys.kid, _command_cc_input(cpl, chl, head, cntr_pcntr, padded)) if spi.cc else b""
    tail = cntr_pcntr + cc + padded
    if spi.ciphered:
        tail = cbc_encrypt(keys.kic, tail)
    return cpl.to_bytes(2) + bytes([chl]) + head + tail


def peek_command(packet: bytes) -> tuple[Spi, int, int, bytes]:
    """SPI, KIc, KID and TAR of a command packet (the clear part), so the SIM can pick the keys and application."""
    if len(packet) < 3:
        raise OtaError(f"command packet is {len(packet)} bytes; it needs at least CPL and CHL")
    cpl, chl = int.from_bytes(packet[:2]), packet[2]
    if cpl != len(packet) - 2:
        raise OtaError(f"CPL says {cpl} bytes follow, {len(packet) - 2} do")
    if len(packet) < 3 + chl or chl < 13:
        raise OtaError(f"CHL {chl} does not fit the packet")
    spi = Spi.from_bytes(packet[3:5])
    if chl != 13 + (CC_SIZE if spi.cc else 0):
        raise OtaError(f"CHL {chl} does not match the SPI (expected {13 + (CC_SIZE if spi.cc else 0)})")
    return spi, packet[5], packet[6], bytes(packet[7:10])


def open_command(packet: bytes, keys: OtaKeys, min_spi: Spi = SPI_ONECARD) -> CommandPacket:
    """Check and decipher a command packet as the SIM does. Raises OtaError for bytes that are not a packet, and
    OtaRefused with the PoR status for a packet that is one but may not be processed (the counter is checked by
    the caller: `check_counter`)."""
    spi, kic, kid, tar = peek_command(packet)
    if (min_spi.cc and not spi.cc) or (min_spi.ciphered and not spi.ciphered) or spi.counter < min_spi.counter:
        raise OtaRefused(PorStatus.INSUFFICIENT_SECURITY_LEVEL, f"SPI {spi.to_bytes().hex()} is below {min_spi}", tar)
    if (spi.ciphered and key_version(kic, "KIc") != keys.version) or (
        spi.cc and key_version(kid, "KID") != keys.version
    ):
        raise OtaRefused(PorStatus.UNIDENTIFIED_SECURITY_ERROR, f"no OTA keys of version {kic >> 4}/{kid >> 4}", tar)
    chl = packet[2]
    tail = bytes(packet[10:])
    if spi.ciphered:
        if not tail or len(tail) % BLOCK:
            raise OtaRefused(PorStatus.CIPHERING_ERROR, f"ciphered part is {len(tail)} bytes, not whole blocks", tar)
        tail = cbc_decrypt(keys.kic, tail)
    # peek_command checked CHL, and a ciphered tail is whole blocks: the tail holds CNTR, PCNTR and the CC.
    cc_size = CC_SIZE if spi.cc else 0
    cntr_pcntr, cc, padded = tail[:6], tail[6 : 6 + cc_size], tail[6 + cc_size :]
    pad = cntr_pcntr[5]
    cntr = int.from_bytes(cntr_pcntr[:5])
    if spi.cc:
        expected = cmac8(keys.kid, _command_cc_input(len(packet) - 2, chl, bytes(packet[3:10]), cntr_pcntr, padded))
        if not hmac.compare_digest(cc, expected):
            raise OtaRefused(PorStatus.RC_CC_DS_FAILED, "cryptographic checksum does not verify", tar, cntr)
    if pad > len(padded) or (spi.ciphered and pad >= BLOCK) or any(padded[len(padded) - pad :]):
        raise OtaRefused(PorStatus.CIPHERING_ERROR, f"PCNTR {pad} does not match the padding", tar, cntr)
    return CommandPacket(spi, kic, kid, tar, cntr, padded[: len(padded) - pad])


def check_counter(mode: CounterMode, stored: int, received: int) -> PorStatus:
    """TS 102 225 5.1.1: OK to process, or why not. A counter at its maximum blocks the keyset."""
    if mode in (CounterMode.NONE, CounterMode.AVAILABLE):
        return PorStatus.OK
    if stored >= MAX_CNTR:
        return PorStatus.CNTR_BLOCKED
    if received <= stored:
        return PorStatus.CNTR_LOW
    if mode is CounterMode.ONE_HIGHER and received != stored + 1:
        return PorStatus.CNTR_HIGH
    return PorStatus.OK


@dataclass(frozen=True)
class Por:
    """A response packet's clear fields."""

    tar: bytes
    cntr: int
    status: PorStatus
    data: bytes  # additional response data without padding


# The UDH a PoR always carries, covered by its CC (TS 31.115 4.4): UDHL 02, IEI 71, length 00.
POR_UDH = bytes([0x02, IEI_RPI, 0x00])
COMMAND_UDH = bytes([0x02, IEI_CPI, 0x00])


def _por_cc_input(rpl: int, rhl: int, tar: bytes, clear: bytes, data_padded: bytes) -> bytes:
    # TS 31.115 4.4: the CC covers UDHL, RPI, IEIDLa, RPL, RHL, TAR, CNTR, PCNTR, status, data and padding.
    return POR_UDH + rpl.to_bytes(2) + bytes([rhl]) + tar + clear + data_padded


def build_por(keys: OtaKeys | None, spi: Spi, tar: bytes, cntr: int, status: PorStatus, data: bytes = b"") -> bytes:
    """The PoR user data with its UDH (`02 71 00` RPL RHL TAR ...), secured as the command's SPI asks when keys
    are given; a PoR for a packet whose keys or checksum failed goes out in clear without CC (keys None)."""
    cc_on = spi.por_cc and keys is not None
    ciphered = spi.por_ciphered and keys is not None
    cc_size = CC_SIZE if cc_on else 0
    pad = _padding(CNTR_SIZE + 2 + cc_size + len(data), ciphered)
    padded = data + bytes(pad)
    rhl = 10 + cc_size
    rpl = 1 + rhl + len(padded)
    clear = cntr.to_bytes(CNTR_SIZE) + bytes([pad, int(status)])
    cc = b""
    if cc_on:
        assert keys is not None
        cc = cmac8(keys.kid, _por_cc_input(rpl, rhl, tar, clear, padded))
    tail = clear + cc + padded
    if ciphered:
        assert keys is not None
        tail = cbc_encrypt(keys.kic, tail)
    return POR_UDH + rpl.to_bytes(2) + bytes([rhl]) + tar + tail


def open_por(user_data: bytes, keys: OtaKeys, spi: Spi = SPI_ONECARD) -> Por:
    """Check and decipher a PoR as the platform does; OtaError for anything that is not a PoR under these keys.
    A PoR without CC (the SIM could not authenticate the command) is accepted only with a non-OK status."""
    if user_data[:3] != POR_UDH:
        raise OtaError(f"PoR does not start with the UDH 02 71 00 (got {user_data[:3].hex()})")
    body = user_data[3:]
    if len(body) < 6:
        raise OtaError("PoR ends inside its header")
    rpl, rhl, tar = int.from_bytes(body[:2]), body[2], bytes(body[3:6])
    if rpl != len(body) - 2:
        raise OtaError(f"RPL says {rpl} bytes follow, {len(body) - 2} do")
    if rhl not in (10, RHL_CC) or 1 + rhl > rpl:
        raise OtaError(f"RHL {rhl} is neither 10 nor {RHL_CC}")
    cc_on = rhl == RHL_CC
    tail = bytes(body[6:])
    ciphered = False
    if cc_on and spi.por_ciphered:
        if len(tail) % BLOCK:
            raise OtaError(f"ciphered PoR part is {len(tail)} bytes, not whole blocks")
        tail = cbc_decrypt(keys.kic, tail)
        ciphered = True
    clear, cc, padded = tail[:7], tail[7 : 7 + (CC_SIZE if cc_on else 0)], tail[7 + (CC_SIZE if cc_on else 0) :]
    pad = clear[5]
    try:
        status = PorStatus(clear[6])
    except ValueError:
        raise OtaError(f"PoR status {clear[6]:02x} is not defined") from None
    if cc_on:
        if not hmac.compare_digest(cc, cmac8(keys.kid, _por_cc_input(rpl, rhl, tar, clear, padded))):
            raise OtaError("PoR cryptographic checksum does not verify: forged, altered or other keys")
    elif spi.por_cc and status is PorStatus.OK:
        raise OtaError("PoR says OK without the CC the command asked for")
    if pad > len(padded) or (ciphered and pad >= BLOCK) or (not ciphered and pad) or any(padded[len(padded) - pad :]):
        raise OtaError(f"PoR PCNTR {pad} does not match its padding")
    return Por(tar, int.from_bytes(clear[:5]), status, padded[: len(padded) - pad])


# --- concatenated SMS (TS 23.040 9.2.3.24.1 / .8, TS 31.115 4.2) ----------------------------------------------


def split_sms(udh_first_ies: bytes, payload: bytes, reference: int) -> list[bytes]:
    """User data (UDH + data) of each SMS carrying `payload`. One SMS when it fits; otherwise each segment has a
    UDH with IEI 08 (16-bit reference, count, sequence) and the first segment also `udh_first_ies` (for a command
    packet `70 00`, the CPI), per TS 31.115 4.2."""
    if len(udh_first_ies) + 1 + len(payload) <= SMS_UD_MAX:
        return [bytes([len(udh_first_ies)]) + udh_first_ies + payload]
    if not 0 <= reference <= 0xFFFF:
        raise OtaError(f"concatenation reference {reference} does not fit in 2 bytes")
    first_room = SMS_UD_MAX - 1 - 6 - len(udh_first_ies)
    room = SMS_UD_MAX - 1 - 6
    chunks = [payload[:first_room]]
    chunks += [payload[i : i + room] for i in range(first_room, len(payload), room)]
    if len(chunks) > 255:
        raise OtaError(f"{len(payload)} bytes need {len(chunks)} SMS; at most 255 can be concatenated")
    out = []
    for i, chunk in enumerate(chunks):
        concat = bytes([IEI_CONCAT16, 4]) + reference.to_bytes(2) + bytes([len(chunks), i + 1])
        ies = concat + (udh_first_ies if i == 0 else b"")
        out.append(bytes([len(ies)]) + ies + chunk)
    return out


@dataclass(frozen=True)
class Segment:
    """One SMS's user data, parsed: the information elements of its UDH and the data after it."""

    ies: tuple[tuple[int, bytes], ...]
    data: bytes
    reference: int | None  # concatenation: reference, count, sequence number (1-based)
    count: int
    seq: int

    def has(self, iei: int) -> bool:
        return any(i == iei for i, _ in self.ies)


def parse_user_data(user_data: bytes) -> Segment:
    """An SMS's 8-bit user data with UDHI set: UDHL, information elements, data."""
    if not user_data:
        raise OtaError("empty user data; a secured packet needs a user data header")
    udhl = user_data[0]
    if 1 + udhl > len(user_data):
        raise OtaError(f"UDHL {udhl} is longer than the user data")
    header, pos, ies = user_data[1 : 1 + udhl], 0, []
    reference, count, seq = None, 1, 1
    while pos < len(header):
        if pos + 2 > len(header) or pos + 2 + header[pos + 1] > len(header):
            raise OtaError("an information element runs past the end of the UDH")
        iei, value = header[pos], bytes(header[pos + 2 : pos + 2 + header[pos + 1]])
        if iei in (IEI_CONCAT8, IEI_CONCAT16):
            if len(value) != (3 if iei == IEI_CONCAT8 else 4):
                raise OtaError(f"concatenation element {iei:02x} has length {len(value)}")
            reference = int.from_bytes(value[:-2])
            count, seq = value[-2], value[-1]
            if not count or not 1 <= seq <= count:
                raise OtaError(f"concatenation part {seq} of {count} is impossible")
        ies.append((iei, value))
        pos += 2 + header[pos + 1]
    return Segment(tuple(ies), bytes(user_data[1 + udhl :]), reference, count, seq)


class Reassembler:
    """Collects the segments of concatenated SMS, by (originator, reference); sans-I/O (the SIM keeps one)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], dict[int, Segment]] = {}

    def add(self, originator: str, seg: Segment) -> Segment | None:
        """The whole message once every part is in (UDH IEs of the first part, data concatenated), else None."""
        if seg.reference is None:
            return seg
        key = (originator, seg.reference)
        parts = self._parts.setdefault(key, {})
        if parts and next(iter(parts.values())).count != seg.count:
            raise OtaError(f"concatenation reference {seg.reference} changes its part count")
        parts[seg.seq] = seg
        if len(parts) < seg.count:
            return None
        del self._parts[key]
        first = parts[1]
        ies = tuple((i, v) for i, v in first.ies if i not in (IEI_CONCAT8, IEI_CONCAT16))
        return Segment(ies, b"".join(parts[i].data for i in range(1, seg.count + 1)), None, 1, 1)

    def pending(self) -> int:
        return len(self._parts)


# --- compact remote APDU (TS 102 226 5.1.1 / 5.1.2) --------------------------------------------------------


def pack_apdus(apdus: list[bytes]) -> bytes:
    """Secured data in the compact format: the C-APDUs one after another."""
    data = b"".join(apdus)
    if not apdus or parse_apdus(data) != list(apdus):
        raise OtaError("a remote APDU is malformed, or carries Le other than as the last command")
    return data


def parse_apdus(data: bytes) -> list[bytes]:
    """Split compact-format secured data into C-APDUs (short APDUs: CLA INS P1 P2 [Lc data] [Le]). An APDU
    of exactly 5 bytes is case 2 (Le); a longer one carries Lc and data, optionally followed by Le only when it
    is the last APDU (TS 102 226 5.1.1 allows Le on any; onecard never sends one except last)."""
    out, pos = [], 0
    if not data:
        raise OtaError("secured data holds no command")
    while pos < len(data):
        rest = len(data) - pos
        if rest < 4:
            raise OtaError(f"a command APDU is cut after {rest} bytes")
        if rest == 4:
            out.append(bytes(data[pos:]))
            break
        lc = data[pos + 4]
        if rest == 5:
            out.append(bytes(data[pos:]))
            break
        end = pos + 5 + lc
        if lc == 0 or end > len(data):
            raise OtaError(f"a command APDU's Lc {lc} runs past the secured data")
        if len(data) - end == 1:
            end += 1  # Le of the last command
        out.append(bytes(data[pos:end]))
        pos = end
    return out


def compact_response(executed: int, last_response: bytes) -> bytes:
    """PoR additional data: number of commands executed, then the last R-APDU's status word, then its data."""
    if len(last_response) < 2:
        raise OtaError("an R-APDU has at least a status word")
    return bytes([executed]) + last_response[-2:] + last_response[:-2]


def parse_compact_response(data: bytes) -> tuple[int, bytes, bytes]:
    """(commands executed, last status word, last response data) of a PoR's additional data."""
    if len(data) < 3:
        raise OtaError(f"compact response is {len(data)} bytes; it needs a count and a status word")
    return data[0], bytes(data[1:3]), bytes(data[3:])
