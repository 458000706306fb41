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
    pf = Platform(tmp / "p.db", Ed25519PrivateKey.generate())
    pf.add_enterprise(ENT, "Co")
    pf.add_holder(ENT, "E1001", "Zhang Wei", MSISDN)
    pf.issue_card(ENT, "E1001", asn, balance_cents=0)
    return pf


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
    pf.close()


def test_once_the_ota_path_claimed_the_card_the_tap_path_is_refused(world):  # noqa: F811
    w = world
    asn = w["card"].state.asn.hex()
    pf = _platform(w["tmp"], asn)
    top = w["channel"].top_up("race-2", w["ident"], w["purse"], MSISDN, 600, TERMINAL, w["sam"])
    assert top.step is ota_ops.Step.DONE and len(loads(w["card"])) == 1
    assert not fall_back_to_tap(w["store"], pf, "race-2", {"amount": 600})
    assert pf.card_actions(asn) == []
    pf.close()


def test_racing_claim_and_hand_over_exactly_one_wins(tmp_path):
    path = tmp_path / "ota.db"
    OtaStore(path).close()
    wins = {"ota": 0, "tap": 0}
    setup = OtaStore(path)
    for i in range(60):
        setup.create(f"j{i}", "00", MSISDN, "topup")
        barrier = threading.Barrier(2)
        result = {}

        def run(side, job=f"j{i}"):
            store = OtaStore(path)  # each path its own connection, as two processes would have
            store.conn.execute("PRAGMA busy_timeout = 5000")
            barrier.wait()
            result[side] = store.claim_credit(job) if side == "ota" else store.hand_over(job)
            store.close()

        threads = [threading.Thread(target=run, args=(side,)) for side in ("ota", "tap")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        job = setup.job(f"j{i}")
        assert result["ota"] != result["tap"], (i, result, job)
        assert job["path"] == ("tap" if result["tap"] else "ota")
        wins["ota" if result["ota"] else "tap"] += 1
    setup.close()
    assert sum(wins.values()) == 60
