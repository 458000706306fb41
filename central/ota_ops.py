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


@dataclass(frozen=True)
class LoadProof:
    """A load the card proved: what the platform books (exactly once, keyed by card and online counter)."""

    amount: int
    balance_after: int
    counter: int
    date: bytes
    time: bytes
    tac: bytes
    mac3: bytes


class OtaTopUp:
    """One top-up over the air, sans-I/O: `start` gives the first packet's secured data, `on_por` each next one,
    `on_no_por` what to send when a PoR did not come within the validity period. Ends DONE with a TAC-checked
    `proof`, or FAILED with `reason`; never loads twice: after a CREDIT without PoR it asks the card (GET
    TRANSACTION PROVE at the online counter) and never sends a second CREDIT for the same INITIALIZE.

    `sam` is the platform's purse SAM (load_mac2, verify_load_mac3, verify_tac: sam/interface.py); `card` the
    card's purse identity (ASN, enterprise, purse key version, algorithm)."""

    def __init__(self, sam, card, amount: int, terminal_id: bytes) -> None:
        self.sam, self.card, self.amount, self.terminal_id = sam, card, amount, terminal_id
        self.step = Step.INIT
        self.init: LoadInit | None = None
        self.when: tuple[bytes, bytes] | None = None
        self.proof: LoadProof | None = None
        self.reason = ""

    def start(self) -> bytes:
        self.step = Step.INIT
        return ota.pack_apdus([select(), init_load(self.amount, self.terminal_id)])

    def _session(self):
        from sam.interface import LoadSession

        assert self.init is not None and self.when is not None
        return LoadSession(
            card=self.card,
            card_random=self.init.card_random,
            counter=self.init.counter,
            balance_before=self.init.balance,
            amount=self.amount,
            terminal_id=self.terminal_id,
            date=self.when[0],
            time=self.when[1],
        )

    def _fail(self, reason: str) -> None:
        self.step, self.reason = Step.FAILED, reason

    def on_por(self, por: ota.Por, date: bytes, time: bytes) -> bytes | None:
        """The PoR of the last packet; the next packet's secured data, or None when the top-up has ended."""
        try:
            if self.step is Step.INIT:
                self.init, self.when = parse_init_load(por), (date, time)
                mac2 = self.sam.load_mac2(self._session(), self.init.mac1)  # checks MAC1: a real card answered
                self.step = Step.CREDIT
                return ota.pack_apdus([credit_load(date, time, mac2)])
            if self.step is Step.CREDIT:
                tac, mac3 = parse_credit(por)
                return self._settle(mac3, tac)
            if self.step is Step.PROVE:
                proved = parse_prove(por)
                if proved is None:
                    self._fail("the card holds no load at this counter: the credit never happened; top up again")
                    return None
                mac3, tac = proved
                return self._settle(mac3, tac)
        except OtaOpError as e:
            if self.step is Step.CREDIT:
                self.step = Step.PROVE  # CREDIT refused or unreadable: ask the card what happened, never guess
                return self._prove()
            if self.step is Step.PROVE:
                self.reason = f"{e}; still unsettled: ask the card again"  # the load may have happened
                return None
            self._fail(str(e))
            return None
        except Exception as e:  # a SAM refusal (MAC1, MAC3, TAC): the card's answer is not proof
            self._fail(f"{type(e).__name__}: {e}")
            return None
        return None

    def on_no_por(self) -> bytes | None:
        """No PoR came (phone off past the validity, or the SMS lost): what to send now, or None (ended)."""
        if self.step is Step.INIT:
            return self.start()  # nothing changed on the card: open a new load session
        if self.step in (Step.CREDIT, Step.PROVE):
            self.step = Step.PROVE
            return self._prove()
        return None

    def _prove(self) -> bytes:
        assert self.init is not None
        return ota.pack_apdus([select(), prove_load(self.init.counter)])

    def _settle(self, mac3: bytes, tac: bytes) -> None:
        session = self._session()
        self.sam.verify_load_mac3(session, mac3)
        assert self.init is not None and self.when is not None
        balance_after = self.init.balance + self.amount
        self.sam.verify_tac(
            self.card,
            amount=self.amount,
            tx_type=TX_LOAD,
            terminal_id=self.terminal_id,
            tsn=0,
            date=self.when[0],
            time=self.when[1],
            counter=self.init.counter,
            balance_after=balance_after,
            tac=tac,
        )
        self.proof = LoadProof(self.amount, balance_after, self.init.counter, *self.when, tac, mac3)
        self.step = Step.DONE
        return None


# --- secured administration commands over the air (docs/card-application.md 8.2) ------------------------------

INS_UPDATE_BINARY = 0xD6
SFI_ACCESS = 3


def access_file(valid_from, valid_to, door_groups, time_profile: int) -> bytes:
    """EF_ACCESS (docs/card-application.md 2.3): validity dates (BCD), door-group bitmap, time profile, RFU."""
    from common import bcd

    if any(not 1 <= g <= 64 for g in door_groups) or not 0 <= time_profile <= 255 or valid_to < valid_from:
        raise ValueError("door groups must be 1..64, the time profile 0..255, valid-to not before valid-from")
    bitmap = bytearray(8)
    for g in door_groups:
        bitmap[(g - 1) // 8] |= 0x80 >> ((g - 1) % 8)
    return bcd.encode_date(valid_from) + bcd.encode_date(valid_to) + bytes(bitmap) + bytes([time_profile]) + bytes(15)


class OtaSecuredCommand:
    """One secured card command over the air, in two packets: 1 `SELECT` `GET CHALLENGE`; 2 the command with its
    MAC over the challenge, computed by the platform's SAM (`card_mac(UPDATE, ...)`): the card takes it only with
    the challenge it just gave, so a replayed packet 2 changes nothing (69 82 / 69 88). For idempotent commands
    (UPDATE BINARY of the rights and validity): a lost PoR is answered by running both packets again."""

    def __init__(self, sam, card, ins: int, p1: int, p2: int, plain: bytes) -> None:
        self.sam, self.card, self.ins, self.p1, self.p2, self.plain = sam, card, ins, p1, p2, plain
        self.step = Step.INIT
        self.reason = ""
        self.challenge = b""
        self.result = b""  # the command's answer data (APPLICATION BLOCK: frozen purse and the card's MAC)

    def start(self) -> bytes:
        self.step = Step.INIT
        return ota.pack_apdus([select(), bytes([0x00, 0x84, 0x00, 0x00, 0x08])])

    def on_por(self, por: ota.Por) -> bytes | None:
        from sam.interface import KeyPurpose

        try:
            if self.step is Step.INIT:
                challenge = _last(por, 2, "GET CHALLENGE")
                if len(challenge) != 8:
                    raise OtaOpError(f"GET CHALLENGE answered {len(challenge)} bytes, expected 8")
                lc = len(self.plain) + 8
                header = bytes([0x84, self.ins, self.p1, self.p2, lc])
                mac = self.sam.card_mac(KeyPurpose.UPDATE, self.card, challenge + header + self.plain)
                self.step, self.challenge = Step.CREDIT, challenge
                return ota.pack_apdus([header + self.plain + mac])
            self.result = _last(por, 1, f"secured command {self.ins:02X}")
            self.step = Step.DONE
        except OtaOpError as e:
            self.step, self.reason = Step.FAILED, str(e)
        return None

    def on_no_por(self) -> bytes:
        return self.start()  # idempotent commands only: run it again under a fresh challenge


def rights_update(sam, card, valid_from, valid_to, door_groups, time_profile: int = 0) -> OtaSecuredCommand:
    """Rights and validity over the air: UPDATE BINARY of EF_ACCESS, whole."""
    data = access_file(valid_from, valid_to, door_groups, time_profile)
    return OtaSecuredCommand(sam, card, INS_UPDATE_BINARY, 0x80 | SFI_ACCESS, 0x00, data)


INS_BLOCK, INS_ERASE = 0x1E, 0x0E


@dataclass(frozen=True)
class Frozen:
    """The purse as APPLICATION BLOCK froze it, proven by the card's MAC (docs/card-application.md 8.2)."""

    balance: int
    offline_counter: int
    online_counter: int
    proof: bytes  # the 8 data bytes and the card's 8-byte MAC, as the issuing station records a void


class OtaDeletion:
    """Deleting the application over the air, balance settled first: APPLICATION BLOCK (the card freezes the purse
    and MACs the frozen balance; the platform verifies that MAC and records the void with that balance, to refund),
    then ERASE. Each phase is an `OtaSecuredCommand`; both commands are repeatable on a voided card, so a lost PoR
    runs the phase again. `frozen` is set once the balance is proven: the platform settles it before ERASE is sent.
    """

    def __init__(self, sam, card) -> None:
        self.sam, self.card = sam, card
        self.phase = OtaSecuredCommand(sam, card, INS_BLOCK, 0, 0, b"")
        self.frozen: Frozen | None = None
        self.step = Step.INIT
        self.reason = ""

    def start(self) -> bytes:
        return self.phase.start()

    def on_por(self, por: ota.Por) -> bytes | None:
        from sam.interface import KeyPurpose

        nxt = self.phase.on_por(por)
        if nxt is not None:
            return nxt
        if self.phase.step is Step.FAILED:
            self.step, self.reason = Step.FAILED, self.phase.reason
            return None
        if self.phase.ins == INS_BLOCK:
            data = self.phase.result
            if len(data) != 16:
                self.step, self.reason = Step.FAILED, f"APPLICATION BLOCK answered {len(data)} bytes, expected 16"
                return None
            try:
                self.sam.verify_card_mac(
                    KeyPurpose.UPDATE, self.card, self.phase.challenge + b"\x1e" + data[:8], data[8:]
                )
            except Exception as e:  # noqa: BLE001 - a SAM refusal: the frozen balance is not proven
                self.step, self.reason = Step.FAILED, f"the frozen balance is not proven: {e}"
                return None
            self.frozen = Frozen(
                int.from_bytes(data[:4], "big"),
                int.from_bytes(data[4:6], "big"),
                int.from_bytes(data[6:8], "big"),
                data,
            )
            self.step = Step.CREDIT  # voided and proven: settle, then erase
            self.phase = OtaSecuredCommand(self.sam, self.card, INS_ERASE, 0, 0, b"")
            return self.phase.start()
        self.step = Step.DONE
        return None

    def on_no_por(self) -> bytes:
        return self.phase.on_no_por()
