"""The platform's OTA operations as remote-APDU scripts (docs/ota.md section 5), sans-I/O.

Each operation is a short conversation of command packets, each settled by its PoR. The card's own commands are
used unchanged (docs/card-application.md), so every money rule of the terminal path holds over the air too: a load
is proven by the card's MAC3 and TAC, and a torn one is settled with GET TRANSACTION PROVE.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from common import ota

AID = bytes.fromhex("F04F4E454341524401")  # docs/card-application.md section 1
AID_V2 = bytes.fromhex("F04F4E454341524402")  # section 9.1: the directory; || enterprise ID: a sub-application
TX_LOAD = 0x02


class OtaOpError(Exception):
    """A PoR that ends the operation as refused; the message names why."""


def select(aid: bytes = AID) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid  # no Le: it sits inside a compact script


def sub_application_aid(enterprise_id: bytes) -> bytes:
    """The AID of an enterprise's version 2 sub-application (docs/card-application.md 9.1)."""
    if len(enterprise_id) != 4:
        raise ValueError("an enterprise ID is 4 bytes")
    return AID_V2 + enterprise_id


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

    def __init__(
        self, sam, card, amount: int, terminal_id: bytes, aid: bytes = AID, aids: tuple[bytes, ...] | None = None
    ) -> None:
        # `aid`: the application the packets select: AID (version 1) or, on a SIM carrying several enterprises,
        # sub_application_aid(card.enterprise_id), whose own OTA key set secures them (docs/ota.md 2). `aids`
        # (card_aids(card)): try each in order, the next when packet 1's SELECT answers "not this version", as the
        # secured commands do; INITIALIZE only opens a volatile session, so packet 1 is simply sent again.
        self.sam, self.card, self.amount, self.terminal_id = sam, card, amount, terminal_id
        self.aids, self.aid_index = (aid,) if aids is None else aids, 0
        self.step = Step.INIT
        self.init: LoadInit | None = None
        self.when: tuple[bytes, bytes] | None = None
        self.proof: LoadProof | None = None
        self.reason = ""

    @property
    def aid(self) -> bytes:
        return self.aids[self.aid_index]

    def start(self) -> bytes:
        self.step = Step.INIT
        return ota.pack_apdus([select(self.aid), init_load(self.amount, self.terminal_id)])

    def _other_application(self, por: ota.Por) -> bytes | None:
        """Packet 1 again with the next AID when its SELECT said "not this version"; OtaOpError when a version 2
        card holds no sub-application of this enterprise; None when the SELECT was answered 90 00."""
        if por.status is not ota.PorStatus.OK:
            return None
        n, sw, _ = ota.parse_compact_response(por.data)
        if n != 1:
            return None
        if sw == SW_NO_SUB_APPLICATION:
            raise OtaOpError(f"the card holds no application of enterprise {self.card.enterprise_id.hex()}")
        if sw in SW_NOT_THIS_VERSION and self.aid_index + 1 < len(self.aids):
            self.aid_index += 1
            return self.start()
        return None

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
                again = self._other_application(por)
                if again is not None:
                    return again
                self.init, self.when = parse_init_load(por), (date, time)
                if self.aid != AID:
                    # A version 2 sub-application seals its balance (card-application.md 5.2a): the SAM opens it
                    # while it checks MAC1, and the session goes on with the balance it found.
                    mac2, before = self.sam.load_mac2_sealed(
                        self._session(), self.init.mac1, self.init.balance.to_bytes(4, "big")
                    )
                    self.init = dataclasses.replace(self.init, balance=before)
                else:
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
        return ota.pack_apdus([select(self.aid), prove_load(self.init.counter)])

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


# Status words of a SELECT that mean "not this version of the application" (docs/card-application.md 9.1): the
# terminal, and the platform over the air, then try the next AID (version 2 sub-application first, then version 1).
SW_NOT_THIS_VERSION = (b"\x6a\x82", b"\x6a\x81", b"\x6d\x00", b"\x6e\x00", b"\x6a\x86")
SW_NO_SUB_APPLICATION = b"\x6a\x88"  # a version 2 card without that enterprise's sub-application


class OtaSecuredCommand:
    """One secured card command over the air, in two packets: 1 `SELECT` `GET CHALLENGE`; 2 the command with its
    MAC over the challenge, computed by the platform's SAM (`card_mac(UPDATE, ...)`): the card takes it only with
    the challenge it just gave, so a replayed packet 2 changes nothing (69 82 / 69 88). For idempotent commands
    (UPDATE BINARY of the rights and validity, of the status): a lost PoR is answered by running both packets again.

    `aids` are the applications to select, in order: when packet 1's SELECT answers "not this version"
    (`SW_NOT_THIS_VERSION`, docs/card-application.md 9.1) the next one is tried (`aid_index`); a version 2 card
    without the enterprise's sub-application (6A 88) ends it FAILED with `absent` set. `sw` is the status word of
    the last command the card ran."""

    def __init__(
        self,
        sam,
        card,
        ins: int,
        p1: int,
        p2: int,
        plain: bytes,
        aids: tuple[bytes, ...] = (AID,),
        le=None,
        private: bool = False,
    ) -> None:
        self.sam, self.card, self.ins, self.p1, self.p2, self.plain = sam, card, ins, p1, p2, plain
        self.aids, self.le, self.aid_index = aids, le, 0
        # `private`: data a version 2 sub-application takes only enciphered under SK_WRITE, MAC'd over the
        # ciphertext (holder, access, purse, subsidy files: docs/card-application.md 8.2, 9.11); a version 1
        # application takes it in clear.
        self.private = private
        self.step = Step.INIT
        self.reason = ""
        self.challenge = b""
        self.sw = b""
        self.absent = False  # a version 2 card said it holds no sub-application of this enterprise
        self.wrong_version = False  # no AID of `aids` is on the card
        self.result = b""  # the command's answer data (APPLICATION BLOCK: frozen purse and the card's MAC)

    @property
    def aid(self) -> bytes:
        return self.aids[self.aid_index]

    def start(self) -> bytes:
        self.step = Step.INIT
        return ota.pack_apdus([select(self.aid), bytes([0x00, 0x84, 0x00, 0x00, 0x08])])

    def command(self, challenge: bytes) -> bytes:
        """The secured C-APDU under `challenge` (docs/card-application.md 8.2), MACed by the platform's SAM."""
        from sam.interface import KeyPurpose

        data = self.plain
        if self.private and self.aid != AID:
            data = self.sam.encipher_card_data(KeyPurpose.UPDATE, self.card, challenge + bytes(4), data)
        lc = len(data) + 8
        header = bytes([0x84, self.ins, self.p1, self.p2, lc])
        mac = self.sam.card_mac(KeyPurpose.UPDATE, self.card, challenge + header + data)
        return header + data + mac + (b"" if self.le is None else bytes([self.le]))

    def on_por(self, por: ota.Por) -> bytes | None:
        try:
            if self.step is Step.INIT:
                if por.status is ota.PorStatus.OK:
                    n, sw, _ = ota.parse_compact_response(por.data)
                    if n == 1 and sw in SW_NOT_THIS_VERSION:
                        if self.aid_index + 1 < len(self.aids):
                            self.aid_index += 1
                            return self.start()
                        self.wrong_version = True
                        raise OtaOpError(f"SELECT answered {sw.hex()}: the card has no such application")
                    if n == 1 and sw == SW_NO_SUB_APPLICATION:
                        self.absent, self.sw = True, sw
                        raise OtaOpError(f"the card holds no application of enterprise {self.card.enterprise_id.hex()}")
                challenge = _last(por, 2, "GET CHALLENGE")
                if len(challenge) != 8:
                    raise OtaOpError(f"GET CHALLENGE answered {len(challenge)} bytes, expected 8")
                self.step, self.challenge = Step.CREDIT, challenge
                return ota.pack_apdus([self.command(challenge)])
            if por.status is ota.PorStatus.OK:
                self.sw = ota.parse_compact_response(por.data)[1]
            self.result = _last(por, 1, f"secured command {self.ins:02X}")
            self.step = Step.DONE
        except (OtaOpError, ota.OtaError) as e:  # a PoR whose additional data is no compact response: refused
            self.step, self.reason = Step.FAILED, str(e)
        return None

    def on_no_por(self) -> bytes:
        return self.start()  # idempotent commands only: run it again under a fresh challenge


def rights_update(
    sam, card, valid_from, valid_to, door_groups, time_profile: int = 0, aids: tuple[bytes, ...] = (AID,)
) -> OtaSecuredCommand:
    """Rights and validity over the air: UPDATE BINARY of EF_ACCESS, whole (idempotent). `aids`: card_aids(card)
    for the enterprise's version 2 sub-application first, where EF_ACCESS travels enciphered."""
    data = access_file(valid_from, valid_to, door_groups, time_profile)
    return OtaSecuredCommand(sam, card, INS_UPDATE_BINARY, 0x80 | SFI_ACCESS, 0x00, data, aids=aids, private=True)


SFI_APP, STATUS_OFFSET = 1, 12
STATUS_ACTIVE, STATUS_LOCKED = 0x01, 0x03  # docs/card-application.md 6: 03 locked (reported lost), 01 unlocked


def card_aids(card) -> tuple[bytes, ...]:
    """What the platform selects on a card of enterprise `card.enterprise_id`: its version 2 sub-application, else
    (the card says "not a version 2 card") the version 1 application, as a terminal does (card-application.md 9.1)."""
    return (sub_application_aid(card.enterprise_id), AID)


def status_change(sam, card, lock: bool) -> OtaSecuredCommand:
    """Lock (loss report) or unlock over the air: secured UPDATE BINARY of EF_APP offset 12 to 03 / 01
    (docs/card-application.md 6 and 8.2), on the enterprise's sub-application (or the version 1 application).
    Idempotent: a lost PoR runs both packets again; a replayed packet is refused by the counter (SCP80) and, in
    a new packet, by the card (no challenge)."""
    value = STATUS_LOCKED if lock else STATUS_ACTIVE
    return OtaSecuredCommand(
        sam, card, INS_UPDATE_BINARY, 0x80 | SFI_APP, STATUS_OFFSET, bytes([value]), aids=card_aids(card)
    )


INS_BLOCK, INS_ERASE, INS_GET_BALANCE, INS_DELETE = 0x1E, 0x0E, 0x5C, 0xE4
SW_NO_PURSE = b"\x6a\x81"


@dataclass(frozen=True)
class Frozen:
    """The purse as APPLICATION BLOCK froze it, proven by the card's MAC (docs/card-application.md 8.2)."""

    balance: int
    offline_counter: int
    online_counter: int
    proof: bytes  # the 8 (P1 01: 20) data bytes and the card's 8-byte MAC, as the issuing station records a void
    challenge: bytes = b""  # the card's challenge the MAC was computed with
    key_version: int = 0  # the card's keys (UPDATE of that version computed the MAC)

    def purse(self) -> dict:
        """The registry `voided` arguments besides asn, frozen_cents and proof (central/card_flows.py)."""
        d = self.proof
        out: dict = {
            "offline_counter": self.offline_counter,
            "online_counter": self.online_counter,
            "challenge": self.challenge.hex(),
            "key_version": self.key_version,
        }
        if len(d) == 28:  # APPLICATION BLOCK P1 01: the subsidy purse frozen and proven with the cash purse
            out.update(
                subsidy_cents=int.from_bytes(d[8:12], "big"),
                subsidy_expiry=d[12:16].hex(),
                subsidy_offline_counter=int.from_bytes(d[16:18], "big"),
                subsidy_online_counter=int.from_bytes(d[18:20], "big"),
            )
        return out

    @property
    def subsidy_balance(self) -> int | None:
        return int.from_bytes(self.proof[8:12], "big") if len(self.proof) == 28 else None

    @classmethod
    def parse(cls, data: bytes, challenge: bytes = b"", key_version: int = 0) -> Frozen:
        return cls(
            int.from_bytes(data[:4], "big"),
            int.from_bytes(data[4:6], "big"),
            int.from_bytes(data[6:8], "big"),
            data,
            challenge,
            key_version,
        )


class Phase(enum.Enum):
    BALANCE = "balance"  # version 2: secured GET BALANCE (84 5C), MAC-verified and deciphered by the SAM
    BLOCK = "block"  # APPLICATION BLOCK (84 1E): the card freezes the purse and proves that balance
    ERASE = "erase"  # version 1 only: ERASE (84 0E)
    DELETE = "delete"  # version 2: DELETE SUB-APPLICATION (84 E4)
    CHECK = "check"  # version 2: SELECT of the sub-application answers 6A 88: no longer in the directory


class OtaDeletion:
    """Deleting the enterprise's application over the air, balance settled first, sans-I/O.

    Version 2 card (its sub-application answers SELECT): `BALANCE` (secured GET BALANCE, the card's MAC checked by
    the platform's SAM, then deciphered: a non-zero balance without `settle` ends FAILED with nothing changed),
    `BLOCK` (APPLICATION BLOCK: the card voids the sub-application and MACs the frozen balance; verified here and set
    as `frozen`: the platform settles it, `settled = True`, before anything else is sent), `DELETE` (84 E4), then
    `CHECK` (SELECT of the sub-application answers 6A 88). The other sub-applications are never selected.
    Version 1 card: `BLOCK`, the settlement, `ERASE`. Every phase repeats safely: BLOCK on a voided application
    proves the same balance again, ERASE is idempotent, and a DELETE whose PoR was lost is followed by the CHECK,
    which tells whether it happened (a second DELETE is sent only while SELECT still finds the sub-application)."""

    MAX_DELETES = 3

    def __init__(self, sam, card, settle: bool = False, subsidy: bool = False) -> None:
        self.sam, self.card, self.settle = sam, card, settle
        # `subsidy`: the platform knows of a subsidy purse on this card: a version 2 BLOCK is sent with P1 01, which
        # proves the subsidy purse too (card-application.md 8.2); a card answering 6A 81 (none) is voided with P1 00.
        self.subsidy = subsidy
        self.version = 0  # 1 or 2 once the card said which
        self.balance: int | None = None  # the MAC-verified balance before the void (version 2)
        self.frozen: Frozen | None = None
        self.settled = False  # set by the platform once it booked the frozen balance (refund) and cancelled
        self.settlement: dict | None = None  # what the platform's settlement did (ota_settle_deletion)
        self.deletes = 0
        self.step = Step.INIT
        self.reason = ""
        self.phase_name = Phase.BALANCE
        self.phase: OtaSecuredCommand | None = None

    # --- the phases ----------------------------------------------------------------------------------------

    def _enter(self, name: Phase) -> bytes:
        self.phase_name = name
        sub = (sub_application_aid(self.card.enterprise_id),)
        if name is Phase.CHECK:
            self.phase = None
            return ota.pack_apdus([select(sub[0])])
        aids = {1: (AID,), 2: sub}.get(self.version, sub)
        if name is Phase.BALANCE:
            self.phase = OtaSecuredCommand(self.sam, self.card, INS_GET_BALANCE, 0x00, 0x02, b"", aids, le=0)
        elif name is Phase.BLOCK:
            p1 = 1 if self.subsidy and self.version == 2 else 0
            self.phase = OtaSecuredCommand(self.sam, self.card, INS_BLOCK, p1, 0, b"", aids, le=0x1C if p1 else 0x10)
        elif name is Phase.ERASE:
            self.phase = OtaSecuredCommand(self.sam, self.card, INS_ERASE, 0, 0, b"", aids)
        else:
            self.deletes += 1
            self.phase = OtaSecuredCommand(self.sam, self.card, INS_DELETE, 0, 0, b"", aids)
        return self.phase.start()

    def start(self) -> bytes:
        self.step = Step.INIT
        return self._enter(Phase.BLOCK if self.version == 1 else Phase.BALANCE)

    def _fail(self, reason: str) -> None:
        self.step, self.reason = Step.FAILED, reason

    def _balance_answer(self, phase: OtaSecuredCommand) -> int:
        """The plaintext balance of a secured GET BALANCE (card-application.md 9.5): MAC first, then decipher."""
        from sam.interface import KeyPurpose

        data = phase.result
        if len(data) != 16:
            raise OtaOpError(f"secured GET BALANCE answered {len(data)} bytes, expected 16")
        ct, mac = data[:8], data[8:]
        self.sam.verify_card_mac(KeyPurpose.UPDATE, self.card, phase.challenge + bytes([INS_GET_BALANCE]) + ct, mac)
        plain = self.sam.decipher_card_data(KeyPurpose.UPDATE, self.card, phase.challenge + bytes(4), ct)
        return int.from_bytes(plain[:4], "big")

    def on_por(self, por: ota.Por) -> bytes | None:
        """The PoR of the last packet; the next packet's secured data, or None (ended, or the platform must settle
        `frozen` first: `settle_due`; then `resume_after_settlement`)."""
        if self.phase_name is Phase.CHECK:
            return self._on_check(por)
        assert self.phase is not None
        nxt = self.phase.on_por(por)
        if nxt is not None:
            return nxt
        phase = self.phase
        if phase.step is Step.FAILED:
            return self._phase_failed(phase)
        if self.version == 0:
            self.version = 2 if phase.aid == sub_application_aid(self.card.enterprise_id) else 1
        if self.phase_name is Phase.BALANCE:
            try:
                self.balance = self._balance_answer(phase)
            except OtaOpError as e:
                self._fail(str(e))
                return None
            except Exception as e:  # noqa: BLE001 - a SAM refusal: the balance is not proven
                self._fail(f"the card's balance is not proven: {e}")
                return None
            if self.balance and not self.settle:
                self._fail(f"the card still holds {self.balance} fen: settle it first (--settle records the refund)")
                return None
            return self._enter(Phase.BLOCK)
        if self.phase_name is Phase.BLOCK:
            return self._on_block(phase)
        if self.phase_name is Phase.ERASE:
            self.step = Step.DONE
            return None
        return self._enter(Phase.CHECK)  # DELETE answered 90 00: re-check that the directory no longer lists it

    def _phase_failed(self, phase: OtaSecuredCommand) -> bytes | None:
        if phase.wrong_version and self.phase_name is Phase.BALANCE and self.version == 0:
            self.version = 1  # not a version 2 card: the version 1 application, BLOCK proves its balance
            return self._enter(Phase.BLOCK)
        if phase.absent and self.phase_name is Phase.DELETE and self.settled:
            self.step = Step.DONE  # a DELETE whose PoR was lost had run: nothing left to delete
            return None
        if phase.sw == SW_NO_PURSE and self.phase_name is Phase.BLOCK and phase.p1 == 1:
            self.subsidy = False  # no subsidy purse after all (nothing changed): void it with P1 00
            return self._enter(Phase.BLOCK)
        if phase.sw == SW_NO_PURSE and self.phase_name is Phase.BALANCE:
            self.balance = 0  # a sub-application without purse: nothing to settle
            self.version = 2
            return self._enter(Phase.BLOCK)
        self._fail(phase.reason)
        return None

    def _on_block(self, phase: OtaSecuredCommand) -> bytes | None:
        from sam.interface import KeyPurpose

        data = phase.result
        size = 28 if phase.p1 == 1 else 16
        if len(data) != size:
            self._fail(f"APPLICATION BLOCK answered {len(data)} bytes, expected {size}")
            return None
        try:
            self.sam.verify_card_mac(KeyPurpose.UPDATE, self.card, phase.challenge + b"\x1e" + data[:-8], data[-8:])
        except Exception as e:  # noqa: BLE001 - a SAM refusal: the frozen balance is not proven
            self._fail(f"the frozen balance is not proven: {e}")
            return None
        self.frozen = Frozen.parse(data, phase.challenge, self.card.key_version)
        if (self.frozen.balance or self.frozen.subsidy_balance) and not self.settle:
            subsidy = self.frozen.subsidy_balance
            self._fail(
                f"the card froze {self.frozen.balance} fen"
                + (f" and a subsidy of {subsidy} fen (returned to the enterprise)" if subsidy else "")
                + ": settle it (--settle records the refund)"
            )
            return None
        self.step = Step.CREDIT  # voided and proven: the platform settles, then the application goes
        return self.resume_after_settlement() if self.settled else None

    @property
    def settle_due(self) -> bool:
        """The card proved its frozen balance and the platform has not settled it yet: settle before going on."""
        return self.frozen is not None and not self.settled and self.step is Step.CREDIT

    def resume_after_settlement(self) -> bytes:
        """The next packet once the platform settled `frozen` (and set `settled`)."""
        assert self.settled
        return self._enter(Phase.ERASE if self.version == 1 else Phase.DELETE)

    def _on_check(self, por: ota.Por) -> bytes | None:
        if por.status is ota.PorStatus.RC_CC_DS_FAILED and self.deletes:
            # docs/ota.md 2, 3.1: on a SIM that keeps one OTA key set per sub-application, the set goes with its
            # sub-application, so after our DELETE the SIM verifies B's packets under no key set any more. The
            # sub-application was blocked and its balance settled before the DELETE: nothing is left to guard.
            self.step = Step.DONE
            return None
        if por.status is not ota.PorStatus.OK:
            self._fail(f"SELECT: the SIM refused the packet ({por.status.name})")
            return None
        try:
            n, sw, _ = ota.parse_compact_response(por.data)
        except ota.OtaError as e:
            self._fail(f"SELECT: {e}")
            return None
        if n == 1 and sw == SW_NO_SUB_APPLICATION:
            self.step = Step.DONE  # the directory no longer lists it
            return None
        if sw == b"\x90\x00" and self.deletes < self.MAX_DELETES:
            return self._enter(Phase.DELETE)  # its DELETE never ran (the PoR we lost was of its challenge)
        self._fail(f"the sub-application is still on the card (SELECT answered {sw.hex()})")
        return None

    def on_no_por(self) -> bytes:
        """No PoR came: repeat the phase (each is repeatable); after a DELETE, find out whether it ran."""
        if self.phase_name is Phase.DELETE:
            return self._enter(Phase.CHECK)
        if self.phase_name is Phase.CHECK:
            return self._enter(Phase.CHECK)
        if self.phase_name in (Phase.ERASE,) or (self.phase_name is Phase.BLOCK and self.settled):
            return self.resume_after_settlement()
        return self._enter(self.phase_name)

    # --- durable state (the platform's job row) ------------------------------------------------------------

    def dump(self) -> dict:
        return {
            "step": self.step.value,
            "phase": self.phase_name.value,
            "version": self.version,
            "balance": self.balance,
            "frozen": None if self.frozen is None else self.frozen.proof.hex(),
            "frozen_challenge": None if self.frozen is None else self.frozen.challenge.hex(),
            "subsidy": self.subsidy,
            "settled": self.settled,
            "deletes": self.deletes,
            "reason": self.reason,
            "settlement": self.settlement,
        }

    def load(self, doc: dict) -> None:
        self.step, self.phase_name = Step(doc["step"]), Phase(doc["phase"])
        self.version, self.balance, self.settled = doc["version"], doc["balance"], doc["settled"]
        self.deletes, self.reason = doc.get("deletes", 0), doc.get("reason", "")
        self.settlement = doc.get("settlement")
        self.subsidy = doc.get("subsidy", False)
        if doc.get("frozen"):
            challenge = bytes.fromhex(doc.get("frozen_challenge") or "")
            self.frozen = Frozen.parse(bytes.fromhex(doc["frozen"]), challenge, self.card.key_version)
