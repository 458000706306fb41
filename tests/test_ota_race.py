"""The same top-up is never applied by both paths: over the air, or at the next tap on a top-up terminal."""

from __future__ import annotations

import datetime as dt
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central import ota_ops
from central.ota_channel import OtaStore, fall_back_to_tap
from central.store import Platform
from tests.test_ota_smpp import MSISDN, TERMINAL, loads, world  # noqa: F401 - the fixture

ENT = "00010001"


def _platform(tmp, asn: str) -> Platform:
    return Platform(tmp / "p.db", Ed25519PrivateKey.generate())  # the world fixture registered the card


def test_handed_over_before_the_credit_the_ota_path_never_loads(world):  # noqa: F811
    w = world
    asn = w["card"].state.asn.hex()
    pf = _platform(w["tmp"], asn)
    w["smsc"].set_power(MSISDN, False)
    ch = w["channel"]
    top = ch.top_up("race-1", w["ident"], w["purse"], MSISDN, 600, TERMINAL, w["sam"])
    assert top.step is ota_ops.Step.INIT  # INIT waits at the SMSC: the phone is off
    assert fall_back_to_tap(w["store"], pf, "race-1", {"amount": 600})
    assert fall_back_to_tap(w["store"], pf, "race-1", {"amount": 600})  # again: still queued once
    assert [a["action_id"] for a in pf.card_actions(asn)] == ["race-1"]
    w["clock"].t += dt.timedelta(minutes=5)
    w["smsc"].set_power(MSISDN, True)  # INIT reaches the SIM now; the OTA path must not go on to CREDIT
    top = ch.top_up("race-1", w["ident"], w["purse"], MSISDN, 600, TERMINAL, w["sam"])
    assert top.step is not ota_ops.Step.DONE and not loads(w["card"])


def test_once_the_ota_path_claimed_the_card_the_tap_path_is_refused(world):  # noqa: F811
    w = world
    asn = w["card"].state.asn.hex()
    pf = _platform(w["tmp"], asn)
    top = w["channel"].top_up("race-2", w["ident"], w["purse"], MSISDN, 600, TERMINAL, w["sam"])
    assert top.step is ota_ops.Step.DONE and len(loads(w["card"])) == 1
    assert not fall_back_to_tap(w["store"], pf, "race-2", {"amount": 600})
    assert pf.card_actions(asn) == []


def test_racing_claim_and_hand_over_exactly_one_wins(tmp_path):
    path = tmp_path / "p.db"
    setup = OtaStore(Platform(path, Ed25519PrivateKey.generate()))
    wins = {"ota": 0, "tap": 0}
    for i in range(60):
        setup.create(f"j{i}", "00", MSISDN, "topup")
        barrier = threading.Barrier(2)
        result = {}

        def run(side, job=f"j{i}"):
            pf = Platform(path, Ed25519PrivateKey.generate())  # each path its own connection, as two processes
            store = OtaStore(pf)
            barrier.wait()
            result[side] = store.claim_credit(job) if side == "ota" else store.hand_over(job)
            pf.close()

        threads = [threading.Thread(target=run, args=(side,)) for side in ("ota", "tap")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        job = setup.job(f"j{i}")
        assert result["ota"] != result["tap"], (i, result, job)
        assert job["path"] == ("tap" if result["tap"] else "ota")
        wins["ota" if result["ota"] else "tap"] += 1
    setup.platform.close()
    assert sum(wins.values()) == 60


def test_race_kill_and_replayed_por_book_one_ledger_row(world):  # noqa: F811
    """Both paths race for the job, the gateway dies after submitting CREDIT and before its PoR, the PoR is then
    replayed: one load on the card, one row in the platform's purse ledger, the balance the card proved."""
    import pytest

    from central.ota_channel import OtaChannel

    w = world
    asn = w["card"].state.asn.hex().upper()
    pf = w["platform"]
    before = pf.card(asn)["balance_cents"]
    ch = w["channel"]
    real_send = ch.send

    def send_then_die(job_id, card, msisdn, data):
        cntr = real_send(job_id, card, msisdn, data)
        if data[:2] == b"\x80\x52":
            w["gw"]._drop()
            raise KeyboardInterrupt
        return cntr

    ch.send = send_then_die
    with pytest.raises(KeyboardInterrupt):
        ch.top_up("race-3", w["ident"], w["purse"], MSISDN, 700, TERMINAL, w["sam"])
    # The tap path tries to take it while the OTA path holds the claim: refused, nothing queued.
    assert not fall_back_to_tap(w["store"], pf, "race-3", {"amount": 700})
    assert pf.card_actions(asn) == [] and pf.purse_transactions(asn) == []
    import time as _t

    deadline = _t.monotonic() + 20
    while not loads(w["card"]) and _t.monotonic() < deadline:
        _t.sleep(0.02)
    from central.ota_gateway import SmppGateway

    gw2 = SmppGateway("127.0.0.1", w["smsc"].port, "onecard", "secret", "10657000", timeout=3.0)
    gw2.connect()
    ch2 = OtaChannel(gw2, w["otasam"], w["store"], por_wait_seconds=1.0)
    results = []

    def ota_path():
        results.append(ch2.top_up("race-3", w["ident"], w["purse"], MSISDN, 700, TERMINAL, w["sam"]).step)

    def tap_path():
        pf2 = Platform(w["tmp"] / "p.db", Ed25519PrivateKey.generate())
        results.append(fall_back_to_tap(OtaStore(pf2), pf2, "race-3", {"amount": 700}))
        pf2.close()

    threads = [threading.Thread(target=ota_path), threading.Thread(target=tap_path)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ota_ops.Step.DONE in results and True not in results
    # The PoR replayed: a second settlement of the same job books nothing more.
    top = ch2.top_up("race-3", w["ident"], w["purse"], MSISDN, 700, TERMINAL, w["sam"])
    gw2.close()
    job_top = ota_ops.OtaTopUp(w["sam"], w["purse"], 700, TERMINAL)
    del job_top, top
    load = pf.ota_load("race-3")
    proof = ota_ops.LoadProof(700, load["balance_after_cents"], load["counter"], b"\x20\x26\x01\x01",
                              b"\x00\x00\x00", bytes.fromhex(load["tac"]), b"\x00" * 8)  # fmt: skip
    assert pf.ota_settle_load("race-3", proof, TERMINAL, 1, "AES128", "{}", "") == "accounted"
    assert len(loads(w["card"])) == 1
    rows = pf.purse_transactions(asn)
    assert [(r["terminal_id"], r["kind"], r["amount_cents"], r["tac_status"]) for r in rows] == [
        ("ota", "topup.load", 700, "ok")
    ]
    assert pf.card(asn)["balance_cents"] == before + 700 == w["card"].state.purse.balance
    assert pf.card_actions(asn) == []
