"""One handset for the SIM menu and the network (issue 12): the same `phone.handset.Handset` object shows the SIM's
menu and receives short messages, as a real phone does. An SMS-PP download reaches the SIM's OTA side through the
SIM's one contact interface (the toolkit applet routes it), the top-up it carries shows in the menu the same
handset drives, and a bill arrives in its inbox."""

from __future__ import annotations

import datetime as dt
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from central.ota_channel import OtaChannel, OtaStore
from central.ota_gateway import SmppGateway
from central.sms_bills import send_bill
from central.store import Platform
from common import sms_tpdu, stk
from phone.cli import BalanceScript
from phone.handset import Handset
from sam.interface import Algorithm, CardIdentity
from sam.ota_keys import OtaSam
from sam.software import SoftwareSam
from simulator import ota_sim
from simulator.sim_toolkit import load_sim
from simulator.smsc import Smsc
from tests.support import ENTERPRISE, make_card, make_keystore

MSISDN = "8613900000011"


def no_network(destination: str, data: bytes) -> str | None:
    return "no network in this test"


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # the SMSC delivers from its own thread
        time.sleep(0.02)
    return condition()


def test_the_phone_that_shows_the_menu_receives_the_ota_top_up_and_the_bill(tmp_path):
    ks = make_keystore()
    sam = SoftwareSam(ks)
    card = make_card(sam, tmp_path / "card.json")
    ident = CardIdentity(card.state.asn, ENTERPRISE, 1, Algorithm.AES128)
    keys = OtaSam(ks).personalise_keys(ident)
    sim = load_sim(tmp_path / "card.json")
    sim.ota = ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    sim.power_on()
    screen = BalanceScript()
    phone = Handset(sim, screen, no_network)
    [item] = phone.start().items
    phone.choose(item.id)
    assert "Balance 0.00 yuan" in screen.shown[0]

    pf = Platform(tmp_path / "p.db", Ed25519PrivateKey.generate())
    pf.add_enterprise(ENTERPRISE.hex(), "Co")
    pf.add_holder(ENTERPRISE.hex(), "E1001", "Zhang Wei", MSISDN)
    pf.issue_card(ENTERPRISE.hex(), "E1001", card.state.asn.hex())
    smsc = Smsc().start()
    smsc.add_handset(MSISDN, phone)
    gw = SmppGateway("127.0.0.1", smsc.port, "onecard", "secret", "10657000", timeout=3.0)
    try:
        gw.connect()
        channel = OtaChannel(gw, OtaSam(ks), OtaStore(pf), validity_seconds=3600, por_wait_seconds=2.0)
        top = channel.top_up("job-h1", ident, ident, MSISDN, 2500, bytes.fromhex("000000000901"), sam)
        assert top.proof is not None and top.proof.balance_after == 2500
        assert sim.ota.executed and not sim.ota.pending  # every PoR was fetched and went back
        screen.shown.clear()
        screen._asked = False
        phone.choose(item.id)  # the same handset object: the menu shows what the top-up loaded
        assert "Balance 25.00 yuan" in screen.shown[0]
        text = pf.spending_bill(ENTERPRISE.hex(), "E1001", pf.clock().astimezone(pf.tz).strftime("%Y-%m"))
        send_bill(gw, MSISDN, text, reference=9)
        assert wait_for(lambda: phone.inbox) and phone.inbox == [text]
        assert "top-up 25.00 over the air" in text
    finally:
        gw.close()
        smsc.stop()
        pf.close()


def test_an_sms_pp_download_during_a_menu_dialogue_is_refused_busy_and_answers_nothing(tmp_path):
    ks = make_keystore()
    card = make_card(SoftwareSam(ks), tmp_path / "card.json")
    ident = CardIdentity(card.state.asn, ENTERPRISE, 1, Algorithm.AES128)
    keys = OtaSam(ks).personalise_keys(ident)
    sim = load_sim(tmp_path / "card.json")
    sim.ota = ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    sim.power_on()
    phone = Handset(sim, BalanceScript(), no_network)
    [item] = phone.start().items
    assert sim.transmit(stk.envelope_apdu(stk.encode_menu_selection(item.id)))[:1] == b"\x91"  # dialogue open
    packet = OtaSam(ks).secure_command(ident, ota_sim.ota.ONECARD_TAR, 1, bytes.fromhex("0700a4040008a0000006320101"))
    [ud] = ota_sim.sms_pp_user_data(packet, 1)
    [tpdu] = ota_sim.deliver_tpdus("10657000", [ud], dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc))
    assert sim.transmit(stk.envelope_apdu(stk.encode_sms_pp_download(tpdu))) == b"\x93\x00"
    assert phone.receive(tpdu) == [] and sim.ota.executed == []


def test_sms_pp_download_envelope_bytes_and_text_sms_parts():
    tpdu = bytes.fromhex("4400")
    assert stk.encode_sms_pp_download(tpdu).hex() == "d108820283818b024400"
    assert stk.envelope_apdu(stk.encode_sms_pp_download(tpdu)) == ota_sim.envelope_sms_pp(tpdu)
    # The handset's TERMINAL RESPONSE to the PoR's SEND SHORT MESSAGE is the one docs/ota.md 6 shows.
    ok = stk.TerminalResponse(stk.CommandDetails(1, stk.SEND_SHORT_MESSAGE, 0), stk.RESULT_OK)
    assert stk.terminal_response_apdu(stk.encode_response(ok)) == ota_sim.terminal_response_ok()
    phone = Handset(None, BalanceScript(), no_network)  # type: ignore[arg-type]  (no SIM is asked for a text SMS)
    when = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    text = "余额 12.00"
    parts = [
        bytes([5, 0, 3, 7, 2, 1]) + text[:3].encode("utf-16-be"),
        bytes([5, 0, 3, 7, 2, 2]) + text[3:].encode("utf-16-be"),
    ]
    tpdus = [sms_tpdu.deliver(sms_tpdu.Sms("10657000", 0, sms_tpdu.DCS_UCS2, True, ud), when) for ud in parts]
    assert phone.receive(tpdus[1]) == [] and phone.inbox == []  # waiting for part 1
    assert phone.receive(tpdus[0]) == [] and phone.inbox == [text]
    assert phone.receive(b"\x00") == [] and phone.receive(b"") == [] and phone.inbox == [text]


class QuietSim:
    """A SIM that takes every download and has nothing to answer."""

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x90\x00"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_whatever_the_network_delivers_the_handset_answers_a_list_and_never_raises(data):
    phone = Handset(QuietSim(), BalanceScript(), no_network)
    answer = phone.receive(data)
    assert answer == [] and all(isinstance(t, str) for t in phone.inbox)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([0x00, 0x7F]), st.sampled_from([0x04, 0x08, 0xF6]), st.booleans(), st.binary(max_size=130))
def test_every_well_formed_sms_is_either_given_to_the_sim_or_kept(pid, dcs, udhi, data):
    phone = Handset(QuietSim(), BalanceScript(), no_network)
    user_data = bytes([5, 0, 3, 1, 1, 1]) + data if udhi else data  # a one-part concatenation header
    when = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    assert phone.receive(sms_tpdu.deliver(sms_tpdu.Sms("10657000", pid, dcs, udhi, user_data), when)) == []
    assert len(phone.inbox) == (1 if pid == 0x00 else 0)
