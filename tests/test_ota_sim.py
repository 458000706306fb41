"""The SIM's OTA side against the real simulated card: SMS-DELIVER -> ENVELOPE -> SCP80 -> remote APDUs -> PoR by
SEND SHORT MESSAGE, and a top-up over the air that loads exactly once, through tears and lost PoRs."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central import ota_ops
from common import ota, sms_tpdu
from sam.interface import Algorithm, CardIdentity
from sam.ota_keys import OtaSam, diversify_ota_keys
from sam.software import SoftwareSam
from simulator import ota_sim
from tests.support import ENTERPRISE, make_card, make_keystore

PLATFORM = "10657000"
WHEN = dt.datetime(2026, 12, 2, 9, 30)
TERMINAL = bytes.fromhex("000000000901")


class Powered(Exception):
    """The handset's battery came out."""


@pytest.fixture
def world(tmp_path):
    ks = make_keystore()
    sam = SoftwareSam(ks)
    card = make_card(sam, tmp_path / "card.json")
    ident = CardIdentity(card.state.asn, ENTERPRISE, card.state.key_version, Algorithm.AES128)
    otasam = OtaSam(ks)
    keys = otasam.personalise_keys(ident)
    store = ota_sim.OtaStateFile(tmp_path / "card.ota.json")
    state = ota_sim.OtaState(keys.kic, keys.kid, keys.version)
    store.save(state)
    sim = ota_sim.OtaSim(card, state, store)
    purse_ident = CardIdentity(card.state.asn, ENTERPRISE, card.state.purse.key_version, Algorithm.AES128)
    return {
        "sam": sam,
        "card": card,
        "ident": ident,
        "purse": purse_ident,
        "otasam": otasam,
        "sim": sim,
        "store": store,
        "cntr": [0],
    }


def send(w, data: bytes, cntr: int | None = None) -> list[bytes]:
    """The platform secures `data`, the network delivers it, the handset hands it to the SIM: the PoR SMS-SUBMITs."""
    if cntr is None:
        w["cntr"][0] += 1
        cntr = w["cntr"][0]
    pkt = w["otasam"].secure_command(w["ident"], ota.ONECARD_TAR, cntr, data)
    out = []
    for tpdu in ota_sim.deliver_tpdus(PLATFORM, ota_sim.sms_pp_user_data(pkt, cntr & 0xFFFF), WHEN):
        out += ota_sim.deliver_to_sim(w["sim"], tpdu)
    return out


def por_of(w, submits: list[bytes]) -> ota.Por:
    assert len(submits) == 1
    sms = sms_tpdu.parse_submit(submits[0])
    assert (sms.address, sms.pid, sms.dcs, sms.udhi) == (PLATFORM, 0x7F, 0xF6, True)
    return w["otasam"].open_por(w["ident"], sms.user_data)


def test_ota_keys_are_per_card_and_per_role():
    ks = make_keystore()
    master = ks.get(ENTERPRISE, __import__("sam.interface").interface.KeyPurpose.UPDATE, 1, Algorithm.AES128)
    a = diversify_ota_keys(master.key.reveal(), CardIdentity(b"\x01" * 8, ENTERPRISE, 1, Algorithm.AES128))
    b = diversify_ota_keys(master.key.reveal(), CardIdentity(b"\x02" * 8, ENTERPRISE, 1, Algorithm.AES128))
    assert len({a.kic, a.kid, b.kic, b.kid}) == 4
    assert "kic" not in repr(a).lower() or a.kic.hex() not in repr(a)


def test_get_balance_over_the_air(world):
    por = por_of(world, send(world, ota.pack_apdus([ota_ops.select(), bytes.fromhex("805C000204")])))
    n, sw, data = ota.parse_compact_response(por.data)
    assert (por.status, por.cntr, n, sw) == (ota.PorStatus.OK, 1, 2, b"\x90\x00")
    assert int.from_bytes(data, "big") == world["card"].state.purse.balance


def test_replayed_and_reordered_packets_are_refused_with_counter_low(world):
    data = ota.pack_apdus([ota_ops.select(), bytes.fromhex("805C000204")])
    assert por_of(world, send(world, data, cntr=7)).status is ota.PorStatus.OK
    assert por_of(world, send(world, data, cntr=7)).status is ota.PorStatus.CNTR_LOW  # replay
    assert por_of(world, send(world, data, cntr=5)).status is ota.PorStatus.CNTR_LOW  # an older one, late
    assert world["sim"].executed == [7]
    assert ota_sim.load_state(world["store"].path).counter == 7


def test_wrongly_maced_packet_gets_a_clear_por_with_rc_cc_ds_failed(world):
    other = ota.OtaKeys(world["sim"].state.kic, bytes(16))
    pkt = ota.build_command(other, ota.ONECARD_TAR, 3, b"\x80\x5c\x00\x02\x04")
    por = world["sim"].process(pkt)
    assert por is not None and por[3 + 2] == 10  # RHL 10: no CC under keys the packet did not prove it knows
    assert world["otasam"].open_por(world["ident"], por).status is ota.PorStatus.RC_CC_DS_FAILED
    assert world["sim"].executed == [] and world["sim"].state.counter == 0


def test_unknown_tar_and_truncated_packets(world):
    pkt = world["otasam"].secure_command(world["ident"], b"\xb0\x00\x10", 1, b"\x80\x5c\x00\x02\x04")
    assert world["otasam"].open_por(world["ident"], world["sim"].process(pkt)).status is ota.PorStatus.TAR_UNKNOWN
    good = world["otasam"].secure_command(world["ident"], ota.ONECARD_TAR, 1, b"\x80\x5c\x00\x02\x04")
    assert world["sim"].process(good[:-3]) is None  # CPL no longer matches: nothing to answer
    cut = (len(good) - 3).to_bytes(2, "big") + good[2:-1]
    assert world["otasam"].open_por(world["ident"], world["sim"].process(cut)).status is ota.PorStatus.CIPHERING_ERROR
    assert world["sim"].executed == []


def test_envelope_errors(world):
    sim = world["sim"]
    assert sim.envelope(b"\x80\xc2\x00\x00\x02\xd1\x00") == ota_sim.SW_WRONG
    assert sim.envelope(b"\x80\xc2\x00\x00\x05\xd1\x00") == b"\x67\x00"
    assert sim.envelope(b"\x00\xa4\x04\x00") == ota_sim.SW_INS
    plain = sms_tpdu.deliver(sms_tpdu.Sms(PLATFORM, 0x00, 0x04, False, b"hello"), WHEN)
    assert sim.envelope(ota_sim.envelope_sms_pp(plain)) == ota_sim.SW_OK and not sim.pending


def test_long_script_is_concatenated_and_runs_once(world):
    apdus = [ota_ops.select()] + [
        bytes.fromhex("805A000202") + i.to_bytes(2, "big") for i in range(20)
    ]  # case 3, 94 06 stops it
    data = ota.pack_apdus(apdus)
    pkt = world["otasam"].secure_command(world["ident"], ota.ONECARD_TAR, 1, data)
    assert len(ota_sim.sms_pp_user_data(pkt, 1)) == 2
    n, sw, _ = ota.parse_compact_response(por_of(world, send(world, data, cntr=1)).data)
    assert (n, sw) == (2, b"\x94\x06")  # SELECT, then the first PROVE finds no record and the script stops


def _drive(world, top: ota_ops.OtaTopUp, first: bytes, lose_por_of=(), tear_at=None):
    """Run a top-up to its end; `lose_por_of`: packet numbers whose PoR the network loses; `tear_at`: (packet,
    apdu) where the handset is powered off before that remote APDU runs."""
    data, k = first, 0
    while data is not None:
        k += 1
        if tear_at and tear_at[0] == k:

            def tear(i, at=tear_at[1]):
                if i == at:
                    raise Powered

            world["sim"].before_apdu = tear
            with pytest.raises(Powered):
                send(world, data)
            world["sim"].before_apdu = None
            world["card"].power_off()
            world["card"].power_on()
            data = top.on_no_por()
            continue
        submits = send(world, data)
        if k in lose_por_of:
            data = top.on_no_por()
            continue
        data = top.on_por(por_of(world, submits), bytes.fromhex("20261202"), bytes.fromhex("093000"))
    return top


def test_topup_over_the_air_is_tac_checked(world):
    before = world["card"].state.purse.balance
    top = ota_ops.OtaTopUp(world["sam"], world["purse"], 5000, TERMINAL)
    _drive(world, top, top.start())
    assert top.step is ota_ops.Step.DONE and top.proof is not None
    assert top.proof.balance_after == before + 5000 == world["card"].state.purse.balance
    assert [r["type"] for r in world["card"].state.purse.records].count(0x02) == 1


@pytest.mark.parametrize("lost", [(2,), (2, 3), (1,)])
def test_topup_with_lost_pors_loads_exactly_once(world, lost):
    before = world["card"].state.purse.balance
    top = ota_ops.OtaTopUp(world["sam"], world["purse"], 1234, TERMINAL)
    _drive(world, top, top.start(), lose_por_of=lost)
    assert top.step is ota_ops.Step.DONE
    assert world["card"].state.purse.balance == before + 1234
    assert top.proof.balance_after == before + 1234


@pytest.mark.parametrize("packet, apdu", [(1, 0), (1, 1), (2, 0)])
def test_topup_torn_mid_packet_ends_exactly_once(world, packet, apdu):
    before = world["card"].state.purse.balance
    top = ota_ops.OtaTopUp(world["sam"], world["purse"], 700, TERMINAL)
    _drive(world, top, top.start(), tear_at=(packet, apdu))
    loads = [r for r in world["card"].state.purse.records if r["type"] == 0x02]
    if top.step is ota_ops.Step.DONE:
        assert world["card"].state.purse.balance == before + 700 and len(loads) == 1
    else:
        assert top.step is ota_ops.Step.FAILED and "never happened" in top.reason
        assert world["card"].state.purse.balance == before and not loads


def test_topup_refused_by_a_forged_mac1_never_credits(world):
    top = ota_ops.OtaTopUp(world["sam"], world["purse"], 100, TERMINAL)
    data = top.start()
    por = por_of(world, send(world, data))
    n, sw, d = ota.parse_compact_response(por.data)
    forged = ota.Por(por.tar, por.cntr, por.status, ota.compact_response(n, d[:-1] + bytes([d[-1] ^ 1]) + sw))
    assert top.on_por(forged, bytes.fromhex("20261202"), bytes.fromhex("093000")) is None
    assert top.step is ota_ops.Step.FAILED and "MAC1" in top.reason


def test_documented_envelope_and_proactive_bytes(world):
    assert ota_sim.terminal_response_ok().hex() == "801400000c810301130082028281830100"
    env = ota_sim.envelope_sms_pp(b"\x44\x00")
    assert env.hex() == "80c200000ad108820283818b024400"
    data = ota.pack_apdus([ota_ops.select(), bytes.fromhex("805C000204")])
    pkt = world["otasam"].secure_command(world["ident"], ota.ONECARD_TAR, 1, data)
    (tpdu,) = ota_sim.deliver_tpdus(PLATFORM, ota_sim.sms_pp_user_data(pkt, 1), WHEN)
    sw = world["sim"].envelope(ota_sim.envelope_sms_pp(tpdu))
    assert sw[0] == 0x91
    cmd = world["sim"].fetch(bytes([0x80, 0x12, 0x00, 0x00, sw[1]]))
    assert cmd[-2:] == b"\x90\x00" and cmd[0] == 0xD0 and cmd[2:11].hex() == "810301130082028183"
    assert world["sim"].envelope(ota_sim.envelope_sms_pp(tpdu)) == ota_sim.SW_BUSY
    assert world["sim"].terminal_response(ota_sim.terminal_response_ok()) == ota_sim.SW_OK


def _run_secured(world, op, lose=()):
    data, k = op.start(), 0
    while data is not None:
        k += 1
        submits = send(world, data)
        data = op.on_no_por() if k in lose else op.on_por(por_of(world, submits))
    return op


@pytest.mark.parametrize("lose", [(), (2,), (1, 4)])
def test_rights_and_validity_update_over_the_air(world, lose):
    op = ota_ops.rights_update(world["sam"], world["ident"], dt.date(2026, 1, 1), dt.date(2027, 6, 30), {3, 9}, 2)
    _run_secured(world, op, lose)
    assert op.step is ota_ops.Step.DONE
    acc = world["card"].state.access
    assert acc[:8] == bytes.fromhex("2026010120270630") and acc[8:10] == bytes([0x20, 0x80]) and acc[16] == 2


def test_replayed_secured_packet_changes_nothing(world):
    op = ota_ops.rights_update(world["sam"], world["ident"], dt.date(2026, 1, 1), dt.date(2027, 6, 30), {1}, 0)
    first = op.start()
    d2 = op.on_por(por_of(world, send(world, first)))
    assert op.on_por(por_of(world, send(world, d2))) is None and op.step is ota_ops.Step.DONE
    before = world["card"].state.access
    # The same secured APDU in a new packet (a fresh counter): the card has no challenge for it any more.
    n, sw, _ = ota.parse_compact_response(por_of(world, send(world, d2)).data)
    assert (n, sw) == (1, b"\x69\x82") and world["card"].state.access == before


def _run_deletion(world, op, lose=()):
    """Drive an OtaDeletion; the platform's settlement (settle_due) is played by setting `settled`."""
    data, k = op.start(), 0
    while data is not None or op.settle_due:
        if data is None:
            op.settled = True
            data = op.resume_after_settlement()
        k += 1
        submits = send(world, data)
        data = op.on_no_por() if k in lose else op.on_por(por_of(world, submits))
    return op


@pytest.mark.parametrize("lose", [(), (2,), (4,), (5,)])
def test_deletion_over_the_air_proves_the_balance_then_erases(world, lose):
    """A version 1 card: packet 1's SELECT of the version 2 sub-application answers 6A 82, so the version 1
    application is voided (its frozen balance proven), settled, then erased."""
    world["card"].state.purse.balance = balance = 4321
    op = _run_deletion(world, ota_ops.OtaDeletion(world["sam"], world["ident"], settle=True), lose)
    assert op.step is ota_ops.Step.DONE and op.version == 1 and op.frozen is not None
    assert op.frozen.balance == balance
    assert world["card"].state.status == 0x02 and world["card"].state.purse is None
    assert world["card"].state.holder == bytes(48)


def test_deletion_of_a_balance_without_settle_stops_at_the_proven_balance(world):
    world["card"].state.purse.balance = 1500
    op = _run_deletion(world, ota_ops.OtaDeletion(world["sam"], world["ident"]))
    assert op.step is ota_ops.Step.FAILED and "settle" in op.reason and not op.settled
    assert world["card"].state.purse is not None  # not erased


def test_deletion_with_a_forged_frozen_balance_stops_before_erase(world):
    op = ota_ops.OtaDeletion(world["sam"], world["ident"], settle=True)
    d = op.on_por(por_of(world, send(world, op.start())))  # 6A 82: the version 1 application next
    d2 = op.on_por(por_of(world, send(world, d)))
    por = por_of(world, send(world, d2))
    n, sw, d = ota.parse_compact_response(por.data)
    forged = ota.Por(por.tar, por.cntr, por.status, ota.compact_response(n, b"\x00\x0f\x42\x40" + d[4:] + sw))
    assert op.on_por(forged) is None and op.step is ota_ops.Step.FAILED and "not proven" in op.reason
    assert world["card"].state.purse is not None  # not erased


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=260))
def test_envelope_and_tpdu_parsers_never_crash(world, raw):
    sim = world["sim"]
    sim.pending.clear()
    answer = sim.envelope(raw)
    assert len(answer) == 2 or answer[-2:] == b"\x90\x00"
    answer = sim.envelope(bytes([0x80, 0xC2, 0x00, 0x00, min(len(raw), 255)]) + raw[:255])
    assert len(answer) == 2
    for parse in (sms_tpdu.parse_deliver, sms_tpdu.parse_submit):
        try:
            parse(raw)
        except sms_tpdu.TpduError:
            pass
    try:
        ota_sim.parse_tlvs(raw)
    except ValueError:
        pass
    assert sim.executed == []
