"""One OTA key set per sub-application (docs/ota.md 2, 3.1): on a SIM carrying enterprises A and B, B's platform tops
up and locks B under B's own KIc/KID and counter, A's counter and A's door and purse stay as they were; a packet of A
replayed is refused with its PoR status and changes nothing for B; once B is deleted its key set is gone with it."""

from __future__ import annotations

from central import ota_ops
from common import ota
from sam.interface import Algorithm, CardIdentity
from sam.ota_keys import OtaSam
from simulator import ota_sim
from simulator.card import STATUS_ACTIVE, STATUS_LOCKED, OneCardV2Applet
from tests.test_ota_status_delete import (
    KS,
    MSISDN,
    SAMS,
    A,
    B,
    _drive,
    door_decides,
    two_enterprise_card,
    world,  # noqa: F401  (the SMSC world fixture)
)

TERMINAL = bytes.fromhex("000000000901")
DATE, TIME = bytes.fromhex("20261202"), bytes.fromhex("093000")


def ident(card: OneCardV2Applet, e: bytes) -> CardIdentity:
    return CardIdentity(card.sub_application(e).asn, e, card.sub_application(e).key_version, Algorithm.AES128)


def sim_with_key_sets(card: OneCardV2Applet) -> ota_sim.OtaSim:
    """A SIM whose every sub-application holds its own OTA key set, as its issuing left it (PUT KEY 06 / 07)."""
    for e in (A, B):
        keys = OtaSam(KS[e]).personalise_keys(ident(card, e))
        app = card.sub_application(e)
        app.ota_kic, app.ota_kid = keys.kic, keys.kid
    return ota_sim.OtaSim(card, None)


def run(sim, e, op, cntr0: int = 0, topup: bool = False) -> int:
    """Drive `op` of enterprise `e` over the SIM (counters from cntr0 + 1); the last counter used."""
    card, otasam, cntr = sim.applet, OtaSam(KS[e]), cntr0
    data = op.start()
    while data is not None:
        cntr += 1
        pkt = otasam.secure_command(ident(card, e), ota.ONECARD_TAR, cntr, data)
        por = otasam.open_por(ident(card, e), sim.process(pkt))
        data = op.on_por(por, DATE, TIME) if topup else op.on_por(por)
    return cntr


def counters(card) -> dict[bytes, int]:
    return {a.enterprise_id: a.ota_counter for a in card.card.apps}


def test_topup_and_lock_of_b_land_under_b_keys_and_a_is_untouched(tmp_path):
    card = two_enterprise_card()
    sim = sim_with_key_sets(card)
    a_before = (card.balance(A), list(card.transactions(A)))
    b = ident(card, B)
    top = ota_ops.OtaTopUp(SAMS[B], b, 2_500, TERMINAL, aid=ota_ops.sub_application_aid(B))
    last = run(sim, B, top, topup=True)
    assert top.step is ota_ops.Step.DONE and top.proof is not None and top.proof.balance_after == 7_500
    assert card.balance(B) == 7_500 and counters(card) == {A: 0, B: last}
    lock = ota_ops.status_change(SAMS[B], b, True)
    last = run(sim, B, lock, cntr0=last)
    assert lock.step is ota_ops.Step.DONE and card.sub_application(B).status == STATUS_LOCKED
    assert counters(card) == {A: 0, B: last}
    assert card.sub_application(A).status == STATUS_ACTIVE
    assert (card.balance(A), list(card.transactions(A))) == a_before
    assert door_decides(tmp_path, A, card) and not door_decides(tmp_path, B, card)


def test_a_replayed_packet_of_a_is_refused_and_b_changes_nothing():
    card = two_enterprise_card()
    sim = sim_with_key_sets(card)
    a, otasam_a = ident(card, A), OtaSam(KS[A])
    pkt = otasam_a.secure_command(
        a, ota.ONECARD_TAR, 1, ota.pack_apdus([ota_ops.select(ota_ops.sub_application_aid(A))])
    )
    assert otasam_a.open_por(a, sim.process(pkt)).status is ota.PorStatus.OK
    b_before = card.sub_application(B).to_json()
    ran = list(sim.executed)
    por = otasam_a.open_por(a, sim.process(pkt))
    assert por.status is ota.PorStatus.CNTR_LOW and por.cntr == 1 and sim.executed == ran
    assert counters(card) == {A: 1, B: 0} and card.sub_application(B).to_json() == b_before
    # B's counter starts on its own: B's first packet, counter 1, runs although A has already spent 1.
    b = ident(card, B)
    pkt_b = OtaSam(KS[B]).secure_command(
        b, ota.ONECARD_TAR, 1, ota.pack_apdus([ota_ops.select(ota_ops.sub_application_aid(B))])
    )
    assert OtaSam(KS[B]).open_por(b, sim.process(pkt_b)).status is ota.PorStatus.OK
    assert counters(card) == {A: 1, B: 1}


def test_a_packet_under_no_sub_applications_keys_gets_a_clear_cc_failed_por():
    card = two_enterprise_card()
    sim = sim_with_key_sets(card)
    stranger = CardIdentity(card.sub_application(B).asn, B, 1, Algorithm.AES128)
    pkt = OtaSam(KS[A]).secure_command(  # A's master with B's ASN: keys of no sub-application on this SIM
        CardIdentity(stranger.asn, A, 1, Algorithm.AES128), ota.ONECARD_TAR, 5, b"\x00\xa4\x04\x00\x00"
    )
    por = ota.open_por(sim.process(pkt), None)
    assert por.status is ota.PorStatus.RC_CC_DS_FAILED and counters(card) == {A: 0, B: 0} and sim.executed == []


def test_after_deleting_b_a_packet_under_b_keys_is_refused():
    card = two_enterprise_card()
    sim = sim_with_key_sets(card)
    b, otasam_b = ident(card, B), OtaSam(KS[B])
    op = ota_ops.OtaDeletion(SAMS[B], b, settle=True)
    assert _drive(op, card, b, otasam_b, sim) == 1 and op.step is ota_ops.Step.DONE, op.reason
    last = card.sub_application(A).ota_counter + 10  # any fresh counter: B's own one is gone with B
    assert [e.enterprise_id for e in card.directory()] == [A]
    pkt = otasam_b.secure_command(
        b, ota.ONECARD_TAR, last + 1, ota.pack_apdus([ota_ops.select(ota_ops.sub_application_aid(B))])
    )
    por = ota.open_por(sim.process(pkt), None)
    assert por.status is ota.PorStatus.RC_CC_DS_FAILED and sim.key_sets()[0].app is card.sub_application(A)
    assert len(sim.key_sets()) == 1


def test_the_key_set_is_durable_with_the_card(tmp_path):
    from simulator.card import MultiCardStateFile

    card = two_enterprise_card()
    sim = sim_with_key_sets(card)
    store = MultiCardStateFile(tmp_path / "sim.json")
    card.card_store = store
    a = ident(card, A)
    pkt = OtaSam(KS[A]).secure_command(
        a, ota.ONECARD_TAR, 9, ota.pack_apdus([ota_ops.select(ota_ops.sub_application_aid(A))])
    )
    sim.process(pkt)
    again = OneCardV2Applet(store.load())
    assert again.sub_application(A).ota_counter == 9 and again.sub_application(B).ota_counter == 0
    assert again.sub_application(A).ota_kic == card.sub_application(A).ota_kic
    assert ota_sim.OtaSim(again, None).process(pkt) is not None
    por = OtaSam(KS[A]).open_por(a, ota_sim.OtaSim(again, None).process(pkt))
    assert por.status is ota.PorStatus.CNTR_LOW


# docs/ota.md 3.2, the worked example: A's and B's UPDATE masters, ASNs and the key sets they give.
DOC_A = (bytes(range(0x40, 0x50)), "1000000000000001", "00010001")
DOC_B = (bytes(range(0x50, 0x60)), "2000000000000002", "00020002")
DOC_KEYS_A = ("d341aa6639bf1786348e95e87992d4e2", "43bcf852f8ef778ce3bd89a4bd3c9e60")
DOC_KEYS_B = ("8b7f73f64ae2815f34974b91d296b099", "45f7d0f8662f263815cf563e6e8c657e")
DOC_DATA_B = "00a404000df04f4e45434152440200020002"
DOC_PACKET_B = "00281516391212b01ca015689d82c6b8d01a705fbae6c5f5c5c2e1ee072ac06665704299aa8b7e625f32"
DOC_POR_NO_KEY_SET = "027100000b0ab01ca000000000000001"


def test_documented_key_set_example():
    from pathlib import Path

    from sam.ota_keys import diversify_ota_keys

    got = []
    for master, asn, eid in (DOC_A, DOC_B):
        k = diversify_ota_keys(master, CardIdentity(bytes.fromhex(asn), bytes.fromhex(eid), 1, Algorithm.AES128))
        got.append((k.kic.hex(), k.kid.hex()))
    assert got == [DOC_KEYS_A, DOC_KEYS_B]
    kb = ota.OtaKeys(bytes.fromhex(DOC_KEYS_B[0]), bytes.fromhex(DOC_KEYS_B[1]), 1)
    data = ota.pack_apdus([ota_ops.select(ota_ops.sub_application_aid(bytes.fromhex(DOC_B[2])))])
    assert data.hex() == DOC_DATA_B
    packet = ota.build_command(kb, ota.ONECARD_TAR, 1, data)
    assert packet.hex() == DOC_PACKET_B
    # A SIM carrying A then B: the CC fails under A's KID, verifies under B's; B's counter moves, A's does not.
    card = two_enterprise_card()
    for e, (kic, kid) in ((A, DOC_KEYS_A), (B, DOC_KEYS_B)):
        card.sub_application(e).ota_kic, card.sub_application(e).ota_kid = bytes.fromhex(kic), bytes.fromhex(kid)
    sim = ota_sim.OtaSim(card, None)
    assert ota.open_por(sim.process(packet), kb).status is ota.PorStatus.OK
    assert counters(card) == {A: 0, B: 1}
    # The same packet on a SIM holding only A's key set: no set verifies it, clear PoR 01 with counter 0.
    card.card.apps = [card.sub_application(A)]
    assert sim.process(packet).hex() == DOC_POR_NO_KEY_SET
    doc = Path(__file__).resolve().parent.parent.joinpath("docs", "ota.md").read_text(encoding="utf-8")
    flat = "".join(doc.split()).lower()
    for value in (*DOC_KEYS_A, *DOC_KEYS_B, DOC_DATA_B, DOC_PACKET_B, DOC_POR_NO_KEY_SET):
        assert value in flat, value


def test_the_platforms_top_up_of_b_through_the_smsc_selects_b(world):  # noqa: F811
    """The platform's channel (SMPP, the SMSC simulator, the handset) tops up B's sub-application of the SIM."""
    w = world
    top = w["channel"].top_up(
        "top-b", w["ident"], w["ident"], MSISDN, 1_000, TERMINAL, SAMS[B], aid=ota_ops.sub_application_aid(B)
    )
    assert top.step is ota_ops.Step.DONE, top.reason
    assert w["card"].balance(B) == 6_000 and w["card"].balance(A) == 10_000
    assert w["pf"].ota_job("top-b")["status"] == "done"


def test_a_top_up_that_tries_the_sub_application_first_lands_on_b(world):  # noqa: F811
    """What `ota-topup --over-the-air` sends (card_aids: B's sub-application, else version 1): on a SIM carrying B
    it lands on B in two packets, the sealed balance opened by the SAM."""
    w = world
    top = w["channel"].top_up(
        "top-b2", w["ident"], w["ident"], MSISDN, 700, TERMINAL, SAMS[B], aids=ota_ops.card_aids(w["ident"])
    )
    assert top.step is ota_ops.Step.DONE and top.aid == ota_ops.sub_application_aid(B), top.reason
    assert w["card"].balance(B) == 5_700 and w["card"].balance(A) == 10_000
    assert w["pf"].ota_job("top-b2")["cntr"] == 2  # no probe packet: the first SELECT found B


def test_rights_of_b_over_the_air_travel_enciphered_and_a_is_untouched():
    """The rights update selects B's sub-application (card_aids) and writes EF_ACCESS enciphered under SK_WRITE,
    MAC'd over the ciphertext (card-application 9.11): the new access file never appears in the secured data; B's
    EF_ACCESS is exactly the platform's; A's is unchanged; B's counter moves, A's does not."""
    import datetime as dt

    card = two_enterprise_card()
    sim = sim_with_key_sets(card)
    b = ident(card, B)
    a_access = card.sub_application(A).access
    op = ota_ops.rights_update(
        SAMS[B], b, dt.date(2026, 1, 1), dt.date(2027, 6, 30), {3, 9}, 2, aids=ota_ops.card_aids(b)
    )
    wanted = ota_ops.access_file(dt.date(2026, 1, 1), dt.date(2027, 6, 30), {3, 9}, 2)
    assert wanted not in op.command(bytes(range(8)))  # never in clear inside the packet
    last = run(sim, B, op)
    assert op.step is ota_ops.Step.DONE and op.aid == ota_ops.sub_application_aid(B), op.reason
    assert card.sub_application(B).access == wanted and card.sub_application(A).access == a_access
    assert counters(card) == {A: 0, B: last}
    # Sent in clear, as a version 1 card would take it, a version 2 sub-application refuses it (the MAC covers the
    # bytes sent, but they decipher to garbage that fails the file's checks) or stores nothing equal to it.
    clear = ota_ops.rights_update(
        SAMS[B], b, dt.date(2026, 1, 1), dt.date(2028, 1, 1), {1}, 0, aids=ota_ops.card_aids(b)
    )
    clear.private = False
    run(sim, B, clear, cntr0=last)
    assert card.sub_application(B).access != ota_ops.access_file(dt.date(2026, 1, 1), dt.date(2028, 1, 1), {1}, 0)
