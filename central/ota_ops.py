"""The platform's OTA operations as remote-APDU scripts (docs/ota.md section 5), sans-I/O.

Each operation is a short conversation of command packets, each settled by its PoR. The card's own commands are
used unchanged (docs/card-application.md), so every money rule of the terminal path holds over the air too: a load
is proven by the card's MAC3 and TAC, and a torn one is settled with GET TRANSACTION PROVE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from common import ota

AID = bytes.fromhex("F04F4E454341524401")  # docs/card-application.md section 1
TX_LOAD = 0x02


class OtaOpError(Exception):
    """A PoR that ends the operation as refused; the message names why."""


def select() -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(AID)]) + AID  # no Le: it sits inside a compact script


def init_load(amount: int, terminal_id: bytes) -> bytes:
    if not 0 < amount <= 0xFFFFFFFF or len(terminal_id) != 6:
        raise ValueError("amount 1..FFFFFFFF fen, terminal ID 6 bytes")
    return bytes([0x80, 0x50, 0x00, 0x02, 0x0B, 0x01]) + amount.to_bytes(4, "big") + terminal_id + b"\x14"


def credit_load(date: bytes, time: bytes, mac2: bytes) -> bytes:
    return bytes([0x80, 0x52, 0x00, 0x00, 0x0F]) + date + time + mac2 + b"\x10"


def prove_load(counter: int) -> bytes:
    return bytes([0x80, 0x5A, 0x00, TX_LOAD, 0x02]) + counter.to_bytes(2, "big") + b"\x10"


@dataclass(frozen=True)
class LoadInit:
    balance: int
    counter: int
    key_version: int
    algorithm: int
    card_random: bytes
    mac1: bytes


def _last(por: ota.Por, commands: int, what: str) -> bytes:
    """The last R-APDU's data when the script ran to its end with 90 00; OtaOpError otherwise."""
    if por.status is not ota.PorStatus.OK:
        raise OtaOpError(f"{what}: the SIM refused the packet ({por.status.name})")
    n, sw, data = ota.parse_compact_response(por.data)
    if n != commands or sw != b"\x90\x00":
        raise OtaOpError(f"{what}: command {n} of {commands} answered {sw.hex()}")
    return data


def parse_init_load(por: ota.Por) -> LoadInit:
    d = _last(por, 2, "INITIALIZE FOR LOAD")
    if len(d) != 20:
        raise OtaOpError(f"INITIALIZE FOR LOAD answered {len(d)} bytes, expected 20")
    return LoadInit(int.from_bytes(d[:4], "big"), int.from_bytes(d[4:6], "big"), d[6], d[7], d[8:12], d[12:20])


def parse_credit(por: ota.Por) -> tuple[bytes, bytes]:
    """(TAC, MAC3) of a CREDIT FOR LOAD."""
    d = _last(por, 1, "CREDIT FOR LOAD")
    if len(d) != 16:
        raise OtaOpError(f"CREDIT FOR LOAD answered {len(d)} bytes, expected 16")
    return d[:8], d[8:]


def parse_prove(por: ota.Por) -> tuple[bytes, bytes] | None:
    """(MAC3, TAC) of the load at the asked counter, or None when the card holds no such load (94 06)."""
    if por.status is not ota.PorStatus.OK:
        raise OtaOpError(f"GET TRANSACTION PROVE: the SIM refused the packet ({por.status.name})")
    n, sw, data = ota.parse_compact_response(por.data)
    if n == 2 and sw == b"\x94\x06":
        return None
    d = _last(por, 2, "GET TRANSACTION PROVE")
    if len(d) != 16:
        raise OtaOpError(f"GET TRANSACTION PROVE answered {len(d)} bytes, expected 16")
    return d[:8], d[8:]


class Step(enum.Enum):
    INIT = "init"  # packet 1 sent: SELECT + INITIALIZE FOR LOAD
    CREDIT = "credit"  # packet 2 sent: CREDIT FOR LOAD with MAC2
    PROVE = "prove"  # no PoR for packet 2: asking the card whether the credit happened
    DONE = "done"
    FAILED = "failed"
