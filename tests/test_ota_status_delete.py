"""Status change (lock on a loss report, unlock) and deletion of a version 2 sub-application over the air
(docs/ota.md 5.1, 5.2): the platform's smpplib gateway, the SMSC simulator, the handset stand-in, the SIM's OTA
side and a two-enterprise card. Enterprise B's sub-application is locked, unlocked and deleted; enterprise A's
door opens throughout. Tears and a gateway killed after a submit end every operation exactly once."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central import ota_ops
from central.ota_channel import OtaChannel, OtaStore
from central.ota_gateway import SmppGateway
from common import ota
from sam.interface import Algorithm, CardIdentity, KeyPurpose
from sam.keystore import Keystore
from sam.ota_keys import OtaSam
from sam.software import SoftwareSam
from simulator import ota_sim
from simulator.card import STATUS_ACTIVE, STATUS_LOCKED, STATUS_VOIDED, OneCardV2Applet
from simulator.inprocess import InProcessReader
from simulator.ota_handset import SimHandset
from simulator.personalise import Personalisation, multi_card, sub_application
from simulator.smsc import Smsc
from tests.support import ENTERPRISE, MONDAY_10AM, make_keystore, make_terminal

A, B = ENTERPRISE, bytes.fromhex("00020002")
MSISDN = "8613900000012"
OTA_ADDR = "10657000"
KS = {A: make_keystore(A), B: make_keystore(B)}
SAMS = {e: SoftwareSam(k) for e, k in KS.items()}


class Powered(Exception):
    """The handset's battery came out."""


class Clock:
    def __init__(self) -> None:
        self.t = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.t


def two_enterprise_card(balance_b=5_000) -> OneCardV2Applet:
    def person(e, emp, name, groups, balance):
        return Personalisation(
            enterprise_id=e,
            employee_no=emp,
            name=name,
            door_groups=frozenset(groups),
            valid_from=dt.date(2026, 1, 1),
            valid_to=dt.date(2028, 12, 31),
            opening_balance=balance,
        )

    apps = [
        sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}, 10_000), "Office"),
        sub_application(SAMS[B], person(B, "R-0707", "Zhang Wei", {1}, balance_b), "Community"),
    ]
    return OneCardV2Applet(multi_card(apps))


def door_decides(tmp, enterprise, card) -> bool:
    import uuid

    where = tmp / f"door-{enterprise.hex()}-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    term, _ = make_terminal(where, SAMS[enterprise], "door", enterprise=enterprise)
    reader = InProcessReader()
    reader.tap(card)
    return term.handle_tap(reader.wait_for_card(0), MONDAY_10AM).accepted


@pytest.fixture
def world(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.store import Platform

    card = two_enterprise_card()
    app_b = card.sub_application(B)
    ident = CardIdentity(app_b.asn, B, 1, Algorithm.AES128)
    otasam = OtaSam(KS[B])
    keys = otasam.personalise_keys(ident)
    sim = ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    clock = Clock()
    smsc = Smsc(now=clock).start()
    smsc.add_handset(MSISDN, SimHandset(sim))
    gw = SmppGateway("127.0.0.1", smsc.port, "onecard", "secret", OTA_ADDR, timeout=3.0)
    gw.connect()
    signing = Ed25519PrivateKey.generate()
    pf = Platform(tmp_path / "p.db", signing)
    pf.add_enterprise(B.hex(), "Community")
    pf.add_holder(B.hex(), "R-0707", "Zhang Wei", MSISDN)
    pf.issue_card(B.hex(), "R-0707", app_b.asn.hex(), balance_cents=app_b.purse.balance)
    channel = OtaChannel(gw, otasam, OtaStore(pf), validity_seconds=3600, por_wait_seconds=1.0)
    w = dict(card=card, ident=ident, otasam=otasam, sim=sim, smsc=smsc, gw=gw, pf=pf, channel=channel, tmp=tmp_path)
    w["signing"], w["clock"] = signing, clock
    yield w
    gw.close()
    smsc.stop()
    pf.close()


def new_channel(w) -> OtaChannel:
    """A new gateway process on the same platform database (the old one was killed)."""
    from central.store import Platform

    gw = SmppGateway("127.0.0.1", w["smsc"].port, "onecard", "secret", OTA_ADDR, timeout=3.0)
    gw.connect()
    w.setdefault("closers", []).append(gw)
    pf = Platform(w["tmp"] / "p.db", w["signing"])
    w["closers"].append(pf)
    return OtaChannel(gw, w["otasam"], OtaStore(pf), por_wait_seconds=2.0)


def asn_b(w) -> str:
    return w["ident"].asn.hex().upper()


def test_loss_report_locks_b_over_the_air_and_unlock_opens_it_again(world):
    w = world
    w["pf"].report_loss(asn_b(w))  # the blacklist path stays
    op = w["channel"].secured("lock-1", w["ident"], MSISDN, "lock", ota_ops.status_change(SAMS[B], w["ident"], True))
    assert op.step is ota_ops.Step.DONE and op.aid == ota_ops.sub_application_aid(B)
    assert w["card"].sub_application(B).status == STATUS_LOCKED
    assert w["card"].sub_application(A).status == STATUS_ACTIVE
    assert not door_decides(w["tmp"], B, w["card"]) and door_decides(w["tmp"], A, w["card"])
    job = w["pf"].ota_job("lock-1")
    assert (job["op"], job["status"], job["por"]) == ("lock", "done", "OK")
    # The lock packet replayed (the same SMS again): refused by the counter, nothing runs.
    lock_sms = [m for m in w["smsc"].messages.values() if m.destination == MSISDN][-1]
    ran = list(w["sim"].executed)
    sms = ota_sim.deliver_tpdus(OTA_ADDR, [lock_sms.user_data], dt.datetime(2026, 12, 2, 10, 0))
    (submit,) = ota_sim.deliver_to_sim(w["sim"], sms[0])
    from common import sms_tpdu

    por = w["otasam"].open_por(w["ident"], sms_tpdu.parse_submit(submit).user_data)
    assert por.status is ota.PorStatus.CNTR_LOW and w["sim"].executed == ran
    w["pf"].unlock(asn_b(w))
    op = w["channel"].secured(
        "unlock-1", w["ident"], MSISDN, "unlock", ota_ops.status_change(SAMS[B], w["ident"], False)
    )
    assert op.step is ota_ops.Step.DONE and w["card"].sub_application(B).status == STATUS_ACTIVE
    assert door_decides(w["tmp"], B, w["card"])


def test_phone_off_lock_stays_pending_then_a_later_unlock_wins_whatever_the_order(world):
    w = world
    w["smsc"].set_power(MSISDN, False)
    lock = w["channel"].secured("lock-2", w["ident"], MSISDN, "lock", ota_ops.status_change(SAMS[B], w["ident"], True))
    assert lock.step is ota_ops.Step.INIT and w["pf"].ota_job("lock-2")["status"] == "sent"
    w["smsc"].set_power(MSISDN, True)  # delivered now, within validity: the lock lands
    lock = w["channel"].secured("lock-2", w["ident"], MSISDN, "lock", ota_ops.status_change(SAMS[B], w["ident"], True))
    assert lock.step is ota_ops.Step.DONE and w["card"].sub_application(B).status == STATUS_LOCKED
    # Resumed once more: done is done, nothing sent.
    sent = len(w["smsc"].messages)
    w["channel"].secured("lock-2", w["ident"], MSISDN, "lock", ota_ops.status_change(SAMS[B], w["ident"], True))
    assert len(w["smsc"].messages) == sent
    # An older lock packet that arrives after a newer unlock is refused by the counter: the unlock stays.
    unlock = ota_ops.status_change(SAMS[B], w["ident"], False)
    assert w["channel"].secured("unlock-2", w["ident"], MSISDN, "unlock", unlock).step is ota_ops.Step.DONE
    stale = w["otasam"].secure_command(w["ident"], ota.ONECARD_TAR, 1, lock.start())
    por = w["otasam"].open_por(w["ident"], w["sim"].process(stale))
    assert por.status is ota.PorStatus.CNTR_LOW and w["card"].sub_application(B).status == STATUS_ACTIVE


def test_phone_off_past_validity_the_lock_never_lands_and_the_job_says_expired(world):
    w = world
    w["pf"].report_loss(asn_b(w))
    w["smsc"].set_power(MSISDN, False)
    op = ota_ops.status_change(SAMS[B], w["ident"], True)
    w["channel"].secured("lock-3", w["ident"], MSISDN, "lock", op)
    assert w["pf"].ota_job("lock-3")["status"] == "sent"
    w["clock"].t += dt.timedelta(hours=2)
    w["smsc"].retry()  # past the validity the SMSC expires it and sends the receipt
    w["channel"].secured("lock-3", w["ident"], MSISDN, "lock", ota_ops.status_change(SAMS[B], w["ident"], True))
    job = w["pf"].ota_job("lock-3")
    assert job["status"] == "expired" and OtaStore(w["pf"]).jobs()[0]["shown"] == "expired"
    w["smsc"].set_power(MSISDN, True)
    assert w["sim"].executed == [] and w["card"].sub_application(B).status == STATUS_ACTIVE
    assert w["pf"].card(asn_b(w))["status"] == "LOST"  # the blacklist still refuses it


def test_deletion_of_b_over_the_air_settles_then_deletes_and_a_keeps_working(world):
    w = world
    before_a = w["card"].balance(A)
    op = w["channel"].secured(
        "del-1", w["ident"], MSISDN, "delete", ota_ops.OtaDeletion(SAMS[B], w["ident"], settle=True)
    )
    assert op.step is ota_ops.Step.DONE, op.reason
    assert (op.version, op.balance, op.frozen.balance) == (2, 5_000, 5_000)
    assert [e.enterprise_id for e in w["card"].directory()] == [A]  # the directory no longer lists B
    card = w["pf"].card(asn_b(w))
    assert card["status"] == "CANCELLED" and card["balance_cents"] == 0
    refunds = w["pf"].conn.execute("SELECT amount_cents FROM refunds WHERE asn = ?", (asn_b(w),)).fetchall()
    assert refunds == [(5_000,)]
    assert op.settlement == {"frozen_cents": 5_000, "refunded_cents": 5_000, "blacklist_version": 1}
    assert door_decides(w["tmp"], A, w["card"]) and w["card"].balance(A) == before_a
    assert not door_decides(w["tmp"], B, w["card"])
    # The packets, in order: SELECT B + GET CHALLENGE, GET BALANCE, the same, BLOCK, the same, DELETE, SELECT B.
    sent = [m.user_data for m in w["smsc"].messages.values()]
    assert len(sent) == 7 and w["pf"].ota_job("del-1")["cntr"] == 7


def test_deletion_after_the_platform_already_cancelled_finishes_on_the_card_without_a_second_refund(world):
    """The holder's phone-menu deletion voided B and the platform cancelled it (refund booked then): the deletion
    over the air still removes the voided sub-application, and books nothing more."""
    w = world
    w["card"].sub_application(B).status = STATUS_VOIDED  # as the phone menu's APPLICATION BLOCK left it
    w["pf"].cancel(asn_b(w), settle=True)
    op = w["channel"].secured(
        "del-3", w["ident"], MSISDN, "delete", ota_ops.OtaDeletion(SAMS[B], w["ident"], settle=True)
    )
    assert op.step is ota_ops.Step.DONE, op.reason
    assert op.settlement == {"frozen_cents": 5_000, "refunded_cents": 0, "blacklist_version": None}
    assert [e.enterprise_id for e in w["card"].directory()] == [A]
    refunds = w["pf"].conn.execute("SELECT amount_cents FROM refunds WHERE asn = ?", (asn_b(w),)).fetchall()
    assert refunds == [(5_000,)]  # the cancellation's, once


def test_deletion_refuses_a_balance_without_settle_and_changes_nothing(world):
    w = world
    op = w["channel"].secured("del-2", w["ident"], MSISDN, "delete", ota_ops.OtaDeletion(SAMS[B], w["ident"]))
    assert op.step is ota_ops.Step.FAILED and "settle it first" in op.reason
    assert w["card"].sub_application(B).status == STATUS_ACTIVE and w["pf"].card(asn_b(w))["status"] == "ACTIVE"
    assert w["pf"].ota_job("del-2")["status"] == "failed"


@pytest.mark.parametrize("kill_after", [2, 4, 6, 7])
def test_gateway_killed_after_a_submit_before_its_por_deletion_ends_once(world, kill_after):
    """Killed right after the Nth submit (2: GET BALANCE, 4: BLOCK, 6: DELETE, 7: the re-check), before its PoR;
    a new gateway process resumes the job: one settlement, one refund, B deleted, A untouched."""
    w = world
    ch = w["channel"]
    real_send, n = ch.send, [0]

    def send_then_die(job_id, card, msisdn, data):
        cntr = real_send(job_id, card, msisdn, data)
        n[0] += 1
        if n[0] == kill_after:
            w["gw"]._drop()
            raise KeyboardInterrupt
        return cntr

    ch.send = send_then_die
    with pytest.raises(KeyboardInterrupt):
        ch.secured("del-k", w["ident"], MSISDN, "delete", ota_ops.OtaDeletion(SAMS[B], w["ident"], settle=True))
    deadline = time.monotonic() + 10  # the SMSC still delivers the last packet; its PoR goes nowhere
    while len(w["sim"].executed) < kill_after and time.monotonic() < deadline:
        time.sleep(0.02)
    ch2 = new_channel(w)
    try:
        op = ch2.secured("del-k", w["ident"], MSISDN, "delete", ota_ops.OtaDeletion(SAMS[B], w["ident"], settle=True))
    finally:
        for g in w.get("closers", []):
            g.close()
    assert op.step is ota_ops.Step.DONE, op.reason
    assert [e.enterprise_id for e in w["card"].directory()] == [A]
    rows = w["pf"].conn.execute("SELECT amount_cents FROM refunds WHERE asn = ?", (asn_b(w),)).fetchall()
    assert rows == [(5_000,)] and w["pf"].card(asn_b(w))["status"] == "CANCELLED"
    assert door_decides(w["tmp"], A, w["card"])


# --- without the network: tears inside a packet ---------------------------------------------------------------


def _sim_world():
    card = two_enterprise_card()
    ident = CardIdentity(card.sub_application(B).asn, B, 1, Algorithm.AES128)
    otasam = OtaSam(KS[B])
    keys = otasam.personalise_keys(ident)
    return card, ident, otasam, ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))


def _drive(op, card, ident, otasam, sim, tear_at=None):
    """Run `op` over the SIM directly; `tear_at` (packet, apdu): the phone powers off before that remote APDU.
    Returns the number of settlements the platform made (op.settled flips)."""
    cntr, data, k, settlements = 0, op.start(), 0, 0
    while True:
        if data is None and isinstance(op, ota_ops.OtaDeletion) and op.settle_due:
            op.settled, settlements = True, settlements + 1
            data = op.resume_after_settlement()
        if data is None:
            return settlements
        k, cntr = k + 1, cntr + 1
        pkt = otasam.secure_command(ident, ota.ONECARD_TAR, cntr, data)
        if tear_at and tear_at[0] == k:

            def tear(i, at=tear_at[1]):
                if i == at:
                    raise Powered

            sim.before_apdu = tear
            with pytest.raises(Powered):
                sim.process(pkt)
            sim.before_apdu = None
            card.power_off()
            card.power_on()
            data = op.on_no_por()
            continue
        data = op.on_por(otasam.open_por(ident, sim.process(pkt)))


@pytest.mark.parametrize("packet, apdu", [(1, 0), (1, 1), (2, 0), (3, 1), (4, 0), (5, 1), (6, 0), (7, 0)])
def test_deletion_torn_mid_packet_ends_exactly_once(packet, apdu):
    card, ident, otasam, sim = _sim_world()
    op = ota_ops.OtaDeletion(SAMS[B], ident, settle=True)
    settlements = _drive(op, card, ident, otasam, sim, tear_at=(packet, apdu))
    assert op.step is ota_ops.Step.DONE, op.reason
    assert settlements == 1 and op.frozen.balance == 5_000
    assert [e.enterprise_id for e in card.directory()] == [A] and card.balance(A) == 10_000


@pytest.mark.parametrize("packet, apdu", [(1, 0), (1, 1), (2, 0)])
@pytest.mark.parametrize("lock", [True, False])
def test_status_change_torn_mid_packet_ends_once(packet, apdu, lock):
    card, ident, otasam, sim = _sim_world()
    if not lock:
        card.sub_application(B).status = STATUS_LOCKED
    op = ota_ops.status_change(SAMS[B], ident, lock)
    _drive(op, card, ident, otasam, sim, tear_at=(packet, apdu))
    assert op.step is ota_ops.Step.DONE
    assert card.sub_application(B).status == (STATUS_LOCKED if lock else STATUS_ACTIVE)
    assert card.sub_application(A).status == STATUS_ACTIVE


def test_deletion_of_a_voided_sub_application_after_a_lost_delete_por_is_not_sent_twice():
    card, ident, otasam, sim = _sim_world()
    op = ota_ops.OtaDeletion(SAMS[B], ident, settle=True)
    data, cntr = op.start(), 0
    while data is not None or op.settle_due:
        if data is None:
            op.settled = True
            data = op.resume_after_settlement()
        cntr += 1
        por = sim.process(otasam.secure_command(ident, ota.ONECARD_TAR, cntr, data))
        if op.phase_name is ota_ops.Phase.DELETE and op.phase.step is ota_ops.Step.CREDIT:
            data = op.on_no_por()  # the DELETE ran, its PoR is lost: the re-check finds B gone
            assert op.phase_name is ota_ops.Phase.CHECK
            continue
        data = op.on_por(otasam.open_por(ident, por))
    assert op.step is ota_ops.Step.DONE and op.deletes == 1 and [e.enterprise_id for e in card.directory()] == [A]


def test_a_card_without_the_enterprise_is_refused_and_a_status_cannot_void():
    card, ident, otasam, sim = _sim_world()
    other = CardIdentity(ident.asn, bytes.fromhex("00030003"), 1, Algorithm.AES128)
    op = ota_ops.status_change(SAMS[B], other, True)
    por = otasam.open_por(ident, sim.process(otasam.secure_command(ident, ota.ONECARD_TAR, 1, op.start())))
    assert op.on_por(por) is None and op.step is ota_ops.Step.FAILED and op.absent
    assert card.sub_application(B).status == STATUS_ACTIVE
    assert STATUS_VOIDED not in (ota_ops.STATUS_LOCKED, ota_ops.STATUS_ACTIVE)


# --- the documented bytes (docs/ota.md 5.1, 5.2) -----------------------------------------------------------------

DOC_ASN = bytes.fromhex("99AABBCCDDEEFF00")
DOC_CHALLENGE = bytes.fromhex("0102030405060708")
DOC_KEYS = ota.OtaKeys(
    bytes.fromhex("000102030405060708090A0B0C0D0E0F"), bytes.fromhex("101112131415161718191A1B1C1D1E1F")
)


def _doc_sam() -> SoftwareSam:
    from sam.interface import KeyUsage
    from sam.keystore import MasterKey, SecretKey

    key = MasterKey(B, KeyPurpose.UPDATE, 1, Algorithm.AES128, frozenset(KeyUsage), SecretKey(bytes(range(0x20, 0x30))))
    return SoftwareSam(Keystore([key]))


DOC_IDENT = CardIdentity(DOC_ASN, B, 1, Algorithm.AES128)

# docs/ota.md 5.3: the secured APDUs under challenge 01..08, K_UPDATE of sub-application 00020002.
DOCUMENTED = {
    "select+challenge": "00a404000df04f4e454341524402000200020084000008",
    "lock": "84d6810c090340b3f823c93faca6",
    "unlock": "84d6810c0901a7fb3fe99c63973f",
    "balance": "845c000208cd2d29cabe9cd97d00",
    "block": "841e000008be64737e4b499ff310",
    "delete": "84e4000008a4f1fe5fc3acc0c5",
}
DOC_CARD_KEY = "7a3eeb2a0964fbbf8c8e0b0766ca114a"
DOC_LOCK_PACKET = "00281516391212b01ca03963bad71bd5f684c16501d3dfc1a0d14d4d6672532ea6876b38f23891e2b35a"
DOC_LOCK_POR = "027100002412b01ca0bff5aea91101bbef8cafeef5a85b14487dfd1edfad56638e14b8d5c349f7fe03"
DOC_CHECK_PACKET = "00281516391212b01ca08c19ee95e405d14c845469fcb708f48e2ac2715bccd5325f7bb7f791f78d5e65"
DOC_CHECK_POR = "027100002412b01ca093aeb583cfc3dad0cc956d9e55c5d24cb3a6167d0babc537fbc4bf442b716ea9"


def documented_apdus() -> dict[str, str]:
    sam = _doc_sam()
    lock = ota_ops.status_change(sam, DOC_IDENT, True)
    unlock = ota_ops.status_change(sam, DOC_IDENT, False)
    aids = (ota_ops.sub_application_aid(B),)
    cmd = ota_ops.OtaSecuredCommand
    return {
        "select+challenge": lock.start().hex(),
        "lock": lock.command(DOC_CHALLENGE).hex(),
        "unlock": unlock.command(DOC_CHALLENGE).hex(),
        "balance": cmd(sam, DOC_IDENT, 0x5C, 0, 2, b"", aids, le=0).command(DOC_CHALLENGE).hex(),
        "block": cmd(sam, DOC_IDENT, 0x1E, 0, 0, b"", aids, le=0x10).command(DOC_CHALLENGE).hex(),
        "delete": cmd(sam, DOC_IDENT, 0xE4, 0, 0, b"", aids).command(DOC_CHALLENGE).hex(),
    }


def test_documented_secured_apdus_packets_and_pors_are_exact():
    from sam import crypto

    key = crypto.diversify(Algorithm.AES128, bytes(range(0x20, 0x30)), DOC_ASN + B)
    assert key.hex() == DOC_CARD_KEY
    assert documented_apdus() == DOCUMENTED
    lock = ota.pack_apdus([bytes.fromhex(DOCUMENTED["lock"])])
    assert ota.build_command(DOC_KEYS, ota.ONECARD_TAR, 5, lock).hex() == DOC_LOCK_PACKET
    ok = ota.compact_response(1, b"\x90\x00")
    assert ota.build_por(DOC_KEYS, ota.SPI_ONECARD, ota.ONECARD_TAR, 5, ota.PorStatus.OK, ok).hex() == DOC_LOCK_POR
    por = ota.open_por(bytes.fromhex(DOC_LOCK_POR), DOC_KEYS)
    assert (por.cntr, por.status, por.data) == (5, ota.PorStatus.OK, ok)
    check = ota.pack_apdus([ota_ops.select(ota_ops.sub_application_aid(B))])
    assert ota.build_command(DOC_KEYS, ota.ONECARD_TAR, 9, check).hex() == DOC_CHECK_PACKET
    gone = ota.compact_response(1, b"\x6a\x88")
    assert ota.build_por(DOC_KEYS, ota.SPI_ONECARD, ota.ONECARD_TAR, 9, ota.PorStatus.OK, gone).hex() == DOC_CHECK_POR
    # The SIM side opens the documented lock packet and runs it as documented.
    cmd = ota.open_command(bytes.fromhex(DOC_LOCK_PACKET), DOC_KEYS)
    assert (cmd.cntr, ota.parse_apdus(cmd.data)) == (5, [bytes.fromhex(DOCUMENTED["lock"])])


def test_documented_bytes_are_in_the_doc():
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent.joinpath("docs", "ota.md").read_text(encoding="utf-8")
    flat = "".join(doc.split()).lower()
    for value in (*DOCUMENTED.values(), DOC_CARD_KEY, DOC_LOCK_PACKET, DOC_LOCK_POR, DOC_CHECK_PACKET, DOC_CHECK_POR):
        assert value in flat, value


class _FixedRandom:
    """simulator.card's `os` with urandom giving 01 02 03 ..: the card's challenge of the documented example."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    @staticmethod
    def urandom(n: int) -> bytes:
        return bytes(range(1, n + 1))


def test_documented_lock_conversation_through_the_simulated_sim(monkeypatch):
    """The real SIM and card of section 5.3: packet 1 at counter 4 gets the challenge 01..08, the documented lock
    packet (counter 5) gets exactly the documented PoR, and the card is locked; the same packet again: 02."""
    import os

    from sam.interface import KeyUsage
    from sam.keystore import MasterKey
    from simulator import card as card_module

    monkeypatch.setattr(card_module, "os", _FixedRandom(os))
    keys = [_doc_sam()._keystore.get(B, KeyPurpose.UPDATE, 1, Algorithm.AES128)]
    keys.append(MasterKey.generate(B, KeyPurpose.ACCESS, 1, Algorithm.AES128, frozenset(KeyUsage)))
    sam = SoftwareSam(Keystore(keys))
    person = Personalisation(
        enterprise_id=B,
        employee_no="R-0707",
        name="Zhang Wei",
        door_groups=frozenset({1}),
        valid_from=dt.date(2026, 1, 1),
        valid_to=dt.date(2028, 12, 31),
        asn=DOC_ASN,
        purse=False,
    )
    card = OneCardV2Applet(multi_card([sub_application(sam, person, "Community")]))
    sim = ota_sim.OtaSim(card, ota_sim.OtaState(DOC_KEYS.kic, DOC_KEYS.kid, 1, counter=3))
    op = ota_ops.status_change(sam, DOC_IDENT, True)
    first = ota.build_command(DOC_KEYS, ota.ONECARD_TAR, 4, op.start())
    por1 = ota.open_por(sim.process(first), DOC_KEYS)
    assert (por1.cntr, por1.data.hex()) == (4, "029000" + DOC_CHALLENGE.hex())
    assert op.on_por(por1).hex() == DOCUMENTED["lock"]
    assert sim.process(bytes.fromhex(DOC_LOCK_PACKET)).hex() == DOC_LOCK_POR
    assert card.sub_application(B).status == STATUS_LOCKED
    replay = ota.open_por(sim.process(bytes.fromhex(DOC_LOCK_PACKET)), DOC_KEYS)
    assert replay.status is ota.PorStatus.CNTR_LOW and sim.executed == [4, 5]


_por = st.builds(
    lambda status, data: ota.Por(ota.ONECARD_TAR, 1, status, data),
    st.sampled_from(list(ota.PorStatus)),
    st.one_of(
        st.binary(max_size=40),
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([b"\x90\x00", b"\x6a\x88", b"\x6a\x82", b"\x6a\x81"]),
            st.binary(max_size=17),
        ).map(lambda t: bytes([t[0]]) + t[1] + t[2]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(pors=st.lists(st.one_of(st.none(), _por), max_size=14), lock=st.booleans())
def test_any_por_sequence_ends_an_operation_cleanly_and_never_deletes_unsettled(pors, lock):
    """Whatever PoRs come back (None: no PoR), the operations raise nothing of their own, a status change is done
    only after a card answer 90 00 to its secured write, and a deletion is never done before its settlement."""
    ident = CardIdentity(bytes(8), B, 1, Algorithm.AES128)
    for op in (ota_ops.status_change(SAMS[B], ident, lock), ota_ops.OtaDeletion(SAMS[B], ident, settle=True)):
        data = op.start()
        for por in pors:
            if data is None:
                break
            data = op.on_no_por() if por is None else op.on_por(por)
            assert data is None or isinstance(data, bytes)
        if isinstance(op, ota_ops.OtaDeletion):
            # No random answer passes the card's MAC: nothing is proven, nothing settled, so never done.
            assert op.frozen is None and not op.settle_due and op.step is not ota_ops.Step.DONE
        else:
            assert op.step is not ota_ops.Step.DONE or op.challenge
