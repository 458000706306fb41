"""The OTA channel end to end over real SMPP 3.4 on loopback: the platform's smpplib gateway, the SMSC simulator,
the handset stand-in, the SIM's OTA side and the simulated card. A phone that is off gets its top-up later within
the validity period, or never, and the platform's job says which; a gateway killed between submit and PoR resumes
and the card is loaded exactly once."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from central import ota_ops
from central.ota_channel import OtaChannel, OtaStore
from central.ota_gateway import GatewayError, SmppGateway
from sam.interface import Algorithm, CardIdentity
from sam.ota_keys import OtaSam
from sam.software import SoftwareSam
from simulator import ota_sim
from simulator.ota_handset import SimHandset
from simulator.smsc import Smsc
from tests.support import ENTERPRISE, make_card, make_keystore

MSISDN = "8613900000001"
OTA_ADDR = "10657000"
TERMINAL = bytes.fromhex("000000000901")


class Clock:
    def __init__(self) -> None:
        self.t = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture
def world(tmp_path):
    ks = make_keystore()
    sam = SoftwareSam(ks)
    card = make_card(sam, tmp_path / "card.json")
    ident = CardIdentity(card.state.asn, ENTERPRISE, 1, Algorithm.AES128)
    purse = CardIdentity(card.state.asn, ENTERPRISE, card.state.purse.key_version, Algorithm.AES128)
    otasam = OtaSam(ks)
    keys = otasam.personalise_keys(ident)
    sim = ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    handset = SimHandset(sim)
    clock = Clock()
    smsc = Smsc(now=clock).start()
    smsc.add_handset(MSISDN, handset)
    gw = SmppGateway("127.0.0.1", smsc.port, "onecard", "secret", OTA_ADDR, timeout=3.0)
    gw.connect()
    platform = make_platform(tmp_path, card)
    store = OtaStore(platform)
    channel = OtaChannel(gw, otasam, store, validity_seconds=3600, por_wait_seconds=1.0)
    yield dict(
        sam=sam,
        card=card,
        ident=ident,
        purse=purse,
        otasam=otasam,
        sim=sim,
        smsc=smsc,
        gw=gw,
        store=store,
        channel=channel,
        clock=clock,
        handset=handset,
        tmp=tmp_path,
        platform=platform,
    )
    gw.close()
    smsc.stop()
    platform.close()


def make_platform(tmp, card):
    """The platform database the OTA jobs live in, with the card registered at its balance (p.db in `tmp`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.store import Platform

    pf = Platform(tmp / "p.db", Ed25519PrivateKey.generate())
    pf.add_enterprise(ENTERPRISE.hex(), "Co")
    pf.add_holder(ENTERPRISE.hex(), "E1001", "Zhang Wei", MSISDN)
    pf.issue_card(ENTERPRISE.hex(), "E1001", card.state.asn.hex(), balance_cents=card.state.purse.balance)
    return pf


def platform_at(tmp):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.store import Platform

    return Platform(tmp / "p.db", Ed25519PrivateKey.generate())


def loads(card):
    return [r for r in card.state.purse.records if r["type"] == 0x02]


def test_topup_over_smpp_lands_on_a_phone(world):
    before = world["card"].state.purse.balance
    top = world["channel"].top_up("job-1", world["ident"], world["purse"], MSISDN, 2500, TERMINAL, world["sam"])
    assert top.step is ota_ops.Step.DONE and top.proof.balance_after == before + 2500
    assert world["card"].state.purse.balance == before + 2500 and len(loads(world["card"])) == 1
    job = world["store"].job("job-1")
    assert job["status"] == "done" and job["cntr"] == 2
    # Every SMS went out as PID 7F, DCS F6, UDHI, with a receipt asked for.
    assert all((m.pid, m.dcs, m.udhi) == (0x7F, 0xF6, True) for m in world["smsc"].messages.values())
    assert world["smsc"].mo_log and all(
        src == MSISDN and ud[:3] == b"\x02\x71\x00" for src, _, ud in world["smsc"].mo_log
    )


def test_a_version_1_sim_answers_the_sub_application_select_and_the_top_up_falls_back(world):
    """card_aids tries the version 2 sub-application first; a version 1 card answers its SELECT 6A 82 and packet 1
    goes again with the version 1 AID (INITIALIZE opens only a volatile session): one load, three packets."""
    before = world["card"].state.purse.balance
    top = world["channel"].top_up(
        "job-v1",
        world["ident"],
        world["purse"],
        MSISDN,
        400,
        TERMINAL,
        world["sam"],
        aids=ota_ops.card_aids(world["ident"]),
    )
    assert top.step is ota_ops.Step.DONE and top.aid == ota_ops.AID, top.reason
    assert world["card"].state.purse.balance == before + 400 and len(loads(world["card"])) == 1
    job = world["store"].job("job-v1")
    assert job["status"] == "done" and job["cntr"] == 3 and job["state"]["aid_index"] == 1


def test_phone_off_gets_it_later_within_validity(world):
    world["smsc"].set_power(MSISDN, False)
    ch = world["channel"]
    top = ch.top_up("job-2", world["ident"], world["purse"], MSISDN, 300, TERMINAL, world["sam"])
    assert top.step is ota_ops.Step.INIT and world["store"].job("job-2")["status"] == "sent"
    world["clock"].t += dt.timedelta(minutes=30)
    world["smsc"].set_power(MSISDN, True)  # the INIT packet arrives now; its PoR is waiting at the gateway
    top = ch.top_up("job-2", world["ident"], world["purse"], MSISDN, 300, TERMINAL, world["sam"])
    assert top.step is ota_ops.Step.DONE
    assert len(loads(world["card"])) == 1


def test_phone_off_past_validity_never_gets_it_and_the_platform_says_so(world):
    world["smsc"].set_power(MSISDN, False)
    ch = world["channel"]
    ch.top_up("job-3", world["ident"], world["purse"], MSISDN, 300, TERMINAL, world["sam"])
    world["clock"].t += dt.timedelta(hours=2)
    world["smsc"].retry()  # the SMSC's periodic retry: past validity, the message expires
    assert ch.await_por("job-3", world["ident"], MSISDN, world["store"].job("job-3")["cntr"], seconds=0.5) is None
    assert world["store"].job("job-3")["status"] == "expired"
    world["smsc"].set_power(MSISDN, True)
    assert world["sim"].executed == [] and not loads(world["card"])


def test_gateway_killed_after_credit_submit_resumes_and_loads_once(world):
    before = world["card"].state.purse.balance
    ch = world["channel"]
    # Kill the gateway right after it submits the CREDIT packet, before it reads the PoR.
    real_send = ch.send

    def send_then_die(job_id, card, msisdn, data):
        cntr = real_send(job_id, card, msisdn, data)
        if data[:2] == b"\x80\x52":
            world["gw"]._drop()  # the process dies: socket gone, PoR never read
            raise KeyboardInterrupt
        return cntr

    ch.send = send_then_die
    with pytest.raises(KeyboardInterrupt):
        ch.top_up("job-4", world["ident"], world["purse"], MSISDN, 800, TERMINAL, world["sam"])
    # The SMSC still delivers the CREDIT packet (asynchronously): the card is credited; the platform does not know.
    deadline = time.monotonic() + 20
    while world["card"].state.purse.balance != before + 800 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert world["card"].state.purse.balance == before + 800
    # A new gateway process, same job store: it asks the card (GET TRANSACTION PROVE) rather than loading again.
    gw2 = SmppGateway("127.0.0.1", world["smsc"].port, "onecard", "secret", OTA_ADDR, timeout=3.0)
    gw2.connect()
    ch2 = OtaChannel(gw2, world["otasam"], OtaStore(platform_at(world["tmp"])), por_wait_seconds=1.0)
    top = ch2.top_up("job-4", world["ident"], world["purse"], MSISDN, 800, TERMINAL, world["sam"])
    gw2.close()
    assert top.step is ota_ops.Step.DONE and top.proof.balance_after == before + 800
    assert world["card"].state.purse.balance == before + 800 and len(loads(world["card"])) == 1


def test_killed_before_credit_reached_the_sim_fails_cleanly(world):
    before = world["card"].state.purse.balance
    ch = world["channel"]
    real_send = ch.send

    def die_before(job_id, card, msisdn, data):
        if data[:2] == b"\x80\x52":
            raise KeyboardInterrupt  # killed after storing the state, before submitting CREDIT
        return real_send(job_id, card, msisdn, data)

    ch.send = die_before
    with pytest.raises(KeyboardInterrupt):
        ch.top_up("job-5", world["ident"], world["purse"], MSISDN, 800, TERMINAL, world["sam"])
    ch.send = real_send
    top = ch.top_up("job-5", world["ident"], world["purse"], MSISDN, 800, TERMINAL, world["sam"])
    assert top.step is ota_ops.Step.FAILED and "never happened" in top.reason
    assert world["card"].state.purse.balance == before and not loads(world["card"])
    assert world["store"].job("job-5")["status"] == "failed"


def test_throttled_submit_is_retried_and_a_wrong_password_is_refused(world):
    world["smsc"].refuse_submits = 2
    mid = world["gw"].submit(MSISDN, b"\x02\x70\x00\x00", pid=0x7F, dcs=0xF6, udhi=True, validity_seconds=30)
    assert mid in world["smsc"].messages
    bad = SmppGateway("127.0.0.1", world["smsc"].port, "onecard", "wrong", OTA_ADDR, timeout=3.0)
    with pytest.raises(GatewayError, match="refused the bind"):
        bad.connect()


def test_submit_gives_up_at_validity(world):
    world["smsc"].refuse_submits = 10**6
    t = [0.0]
    world["gw"].monotonic = lambda: t[0]
    world["gw"].sleep = lambda s: t.__setitem__(0, t[0] + max(s, 0.5))
    assert world["gw"].submit(MSISDN, b"\x02\x70\x00\x00", pid=0x7F, dcs=0xF6, udhi=True, validity_seconds=20) is None
    assert t[0] >= 20


@pytest.mark.parametrize("kill_after_submit", [1, 2])
def test_gateway_process_sigkilled_after_submit_before_por_loads_once(world, kill_after_submit):
    """A real gateway process, SIGKILLed by the SMSC right after its Nth submit_sm (1: INITIALIZE, 2: CREDIT) and
    before the PoR; the next gateway resumes the job from ota.db and the card is loaded exactly once."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from sam.keystore import KeystoreUnlock, save_keystore

    w = world
    work = w["tmp"]
    (work / "pass").write_text("kill test passphrase\n")
    save_keystore(
        work / "keystore", w["sam"]._keystore, KeystoreUnlock.from_passphrase_file(work / "pass"), scrypt_n=2**10
    )
    before = w["card"].state.purse.balance
    repo = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.ota_kill_child",
            str(work),
            str(w["smsc"].port),
            w["card"].state.asn.hex(),
            MSISDN,
            "900",
        ],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    submits = [0]

    def kill(_stored):
        submits[0] += 1
        if submits[0] == kill_after_submit:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)

    w["smsc"].after_submit = kill
    child.wait(60)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    w["smsc"].after_submit = None
    expected_now = before + 900 if kill_after_submit == 2 else before
    # What the SIM did with the last packet it got: the SMSC delivers a stored submit from its own thread, so the
    # CREDIT of submit 2 may land just after the gateway died (bounded wait; a wrong balance still fails).
    deadline = time.monotonic() + 10
    while w["card"].state.purse.balance != expected_now and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w["card"].state.purse.balance == expected_now
    gw2 = SmppGateway("127.0.0.1", w["smsc"].port, "onecard", "secret", OTA_ADDR, timeout=3.0)
    gw2.connect()
    ch2 = OtaChannel(gw2, w["otasam"], OtaStore(platform_at(work)), por_wait_seconds=2.0)
    top = ch2.top_up("kill-job", w["ident"], w["purse"], MSISDN, 900, TERMINAL, w["sam"])
    gw2.close()
    assert top.step is ota_ops.Step.DONE, top.reason
    assert w["card"].state.purse.balance == before + 900 and len(loads(w["card"])) == 1
    # The platform's purse ledger holds it once, at the balance the card proved.
    pf = w["platform"]
    asn = w["card"].state.asn.hex().upper()
    assert [t["amount_cents"] for t in pf.purse_transactions(asn)] == [900]
    assert pf.card(asn)["balance_cents"] == before + 900
