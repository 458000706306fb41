"""`onecard platform ota-topup --over-the-air`, `ota-jobs` and `ota-resume` end to end: the CLI in its own process,
the SMSC simulator on loopback in this one, delivering to the simulated SIM. A top-up lands on the card once; a
phone off past the validity falls back to the next-tap path exactly once; a job left without its PoR resumes by ID."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from central.cli import db_target
from central.db import load_signing_key
from central.store import Platform
from sam.interface import Algorithm, CardIdentity
from sam.keystore import KeystoreUnlock, save_keystore
from sam.ota_keys import OtaSam
from sam.software import SoftwareSam
from simulator import ota_sim
from simulator.ota_handset import SimHandset
from simulator.smsc import Smsc
from tests.support import ENTERPRISE, make_card, make_keystore

REPO = Path(__file__).resolve().parent.parent
MSISDN = "8613900000003"


def onecard(*args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "onecard", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=REPO,
        timeout=120,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def world(tmp_path):
    ks = make_keystore()
    sam = SoftwareSam(ks)
    card = make_card(sam, tmp_path / "card.json")
    ident = CardIdentity(card.state.asn, ENTERPRISE, 1, Algorithm.AES128)
    keys = OtaSam(ks).personalise_keys(ident)
    sim = ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    (tmp_path / "pass").write_text("ota cli passphrase\n")
    save_keystore(tmp_path / "ks", ks, KeystoreUnlock.from_passphrase_file(tmp_path / "pass"), scrypt_n=2**10)
    (tmp_path / "smpp.pass").write_text("secret\n")
    db, key = tmp_path / "p.db", tmp_path / "p.key"
    base = ("--db", db, "--key", key)
    asn = card.state.asn.hex().upper()
    onecard("platform", "init", *base)
    onecard("platform", "add-enterprise", ENTERPRISE.hex(), "--name", "Co", *base)
    onecard(
        "platform", "add-holder", "E1001", "--enterprise", ENTERPRISE.hex(), "--name", "Wei", "--phone", MSISDN, *base
    )
    onecard("platform", "issue-card", asn, "--enterprise", ENTERPRISE.hex(), "--employee", "E1001", *base)
    smsc = Smsc().start()
    smsc.add_handset(MSISDN, SimHandset(sim))
    ota = (
        "--smsc",
        f"127.0.0.1:{smsc.port}",
        "--smpp-password-file",
        tmp_path / "smpp.pass",
        "--keystore",
        tmp_path / "ks",
        "--passphrase-file",
        tmp_path / "pass",
        "--terminal",
        "000000000901",
    )
    yield dict(card=card, sim=sim, smsc=smsc, base=base, ota=ota, asn=asn, db=db, key=key, tmp=tmp_path)
    smsc.stop()


def loads(card):
    return [r for r in card.state.purse.records if r["type"] == 0x02]


def card_actions(w):
    pf = Platform(db_target(str(w["db"])), load_signing_key(w["key"]))
    try:
        return pf.card_actions(w["asn"])
    finally:
        pf.close()


def test_topup_over_the_air_lands_once_and_is_listed(world):
    w = world
    before = w["card"].state.purse.balance
    r = onecard(
        "platform",
        "ota-topup",
        w["asn"],
        "25.00",
        "--over-the-air",
        "--job",
        "j1",
        "--wait",
        "5",
        *w["ota"],
        *w["base"],
    )
    assert "j1" in r.stdout and ": done, balance now" in r.stdout, r.stdout
    assert w["card"].state.purse.balance == before + 2500 and len(loads(w["card"])) == 1
    assert card_actions(w) == []  # nothing queued for the next tap
    r = onecard("platform", "ota-jobs", "--db", w["db"])
    line = r.stdout.strip()
    assert line.startswith("j1  topup 25.00") and f"card {w['asn']}" in line and "  PoR ok  done" in line
    pf = Platform(db_target(str(w["db"])), load_signing_key(w["key"]))
    try:  # booked once in the platform's purse ledger, at the balance the card proved
        assert [t["amount_cents"] for t in pf.purse_transactions(w["asn"])] == [2500]
        assert pf.card(w["asn"])["balance_cents"] == before + 2500
    finally:
        pf.close()
    # The same job again: settled, nothing sent, nothing loaded twice.
    sent = len(w["smsc"].messages)
    r = onecard("platform", "ota-resume", "j1", "--wait", "1", *w["ota"], *w["base"])
    assert ": done" in r.stdout and len(w["smsc"].messages) == sent and len(loads(w["card"])) == 1


def test_phone_unreachable_past_validity_falls_back_to_the_next_tap_once(world):
    w = world
    w["smsc"].set_power(MSISDN, False)
    stop = threading.Event()

    def smsc_retries():  # the SMSC's periodic retry: past validity, the message expires and its receipt goes out
        while not stop.wait(0.1):
            w["smsc"].retry()

    t = threading.Thread(target=smsc_retries, daemon=True)
    t.start()
    try:
        r = onecard(
            "platform", "ota-topup", w["asn"], "3.00", "--over-the-air", "--job", "j2",
            "--validity", "1", "--wait", "6", *w["ota"], *w["base"],
        )  # fmt: skip
    finally:
        stop.set()
        t.join()
    assert "fallen back to the next tap" in r.stdout, r.stdout + r.stderr
    actions = card_actions(w)
    assert [(a["action_id"], a["action"], a["params"]) for a in actions] == [("j2", "topup", {"amount": 300})]
    # Resuming it again does not queue it a second time.
    r = onecard("platform", "ota-resume", "j2", "--wait", "1", *w["ota"], *w["base"])
    assert "fallen back" in r.stdout and len(card_actions(w)) == 1
    assert "j2  topup 3.00" in onecard("platform", "ota-jobs", "--db", w["db"]).stdout
    assert "fell back to tap  queued for the next tap" in onecard("platform", "ota-jobs", "--db", w["db"]).stdout
    w["smsc"].set_power(MSISDN, True)  # the expired packet never reaches the SIM
    assert w["sim"].executed == [] and not loads(w["card"])


def test_phone_off_within_validity_stays_pending_and_resumes_by_job_id(world):
    w = world
    before = w["card"].state.purse.balance
    w["smsc"].set_power(MSISDN, False)
    r = onecard(
        "platform",
        "ota-topup",
        w["asn"],
        "8.00",
        "--over-the-air",
        "--job",
        "j3",
        "--wait",
        "0.5",
        *w["ota"],
        *w["base"],
    )
    assert "j3" in r.stdout and "sent, no PoR yet" in r.stdout and "ota-resume j3" in r.stdout
    assert "  sent  pending" in onecard("platform", "ota-jobs", "--db", w["db"]).stdout
    w["smsc"].set_power(MSISDN, True)  # no gateway bound: the SIM ran INITIALIZE, its PoR is lost
    r = onecard("platform", "ota-resume", "j3", "--wait", "5", *w["ota"], *w["base"])
    assert ": done" in r.stdout, r.stdout + r.stderr
    assert w["card"].state.purse.balance == before + 800 and len(loads(w["card"])) == 1
    assert card_actions(w) == []


def test_bad_input_is_one_line_and_nothing_is_sent(world):
    w = world
    cases = [
        (("ota-topup", w["asn"], "1.00", "--over-the-air", *w["base"]), "--smsc", 2),
        (
            ("ota-topup", w["asn"], "1.00", "--over-the-air", "--smsc", "nohost", *w["ota"][2:], *w["base"]),
            "HOST:PORT",
            2,
        ),
        (("ota-topup", w["asn"], "1.00", "--over-the-air", *w["ota"], "--terminal", "01", *w["base"]), "--terminal", 2),
        (("ota-topup", "00000000000000FF", "1.00", "--over-the-air", *w["ota"], *w["base"]), "not registered", 2),
        (("ota-topup", w["asn"], "1.00", "--job", "x", *w["base"]), "--over-the-air", 2),
        (("ota-resume", "nope", *w["ota"], *w["base"]), "no OTA job", 2),
    ]
    for args, words, code in cases:
        r = onecard("platform", *args, check=False)
        assert r.returncode == code and words in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert w["smsc"].messages == {}
    bad = w["tmp"] / "bad.pass"
    bad.write_text("wrong\n")
    ota = list(w["ota"])
    ota[3] = bad
    r = onecard(
        "platform", "ota-topup", w["asn"], "1.00", "--over-the-air", "--job", "j4", *ota, *w["base"], check=False
    )
    assert r.returncode == 2 and "refused the bind" in r.stderr and "ota-resume j4" in r.stderr
    # A job ID is one top-up: a different amount under it is refused.
    r = onecard(
        "platform", "ota-topup", w["asn"], "2.00", "--over-the-air", "--job", "j4", *w["ota"], *w["base"], check=False
    )
    assert r.returncode == 2 and "j4 is a top-up of 1.00" in r.stderr and r.stderr.count("\n") == 1
    assert w["smsc"].messages == {} and not loads(w["card"])
    # The SMSC could not be reached: the job is kept and `ota-resume` sends it.
    r = onecard("platform", "ota-resume", "j4", "--wait", "5", *w["ota"], *w["base"])
    assert "j4" in r.stdout and ": done" in r.stdout and len(loads(w["card"])) == 1


def test_resume_of_a_job_expired_before_its_fall_back_falls_back_without_sending(world):
    """A gateway stopped after the EXPIRED receipt and before it handed the job over: `ota-resume` hands it over."""
    from central.ota_channel import OtaStore

    w = world
    pf = Platform(db_target(str(w["db"])), load_signing_key(w["key"]))
    store = OtaStore(pf)
    store.create("j5", w["asn"].lower(), MSISDN, "topup")
    store.set_params("j5", {"amount": 100, "asn": w["asn"]})
    store.update("j5", status="expired", cntr=1)
    pf.close()
    r = onecard("platform", "ota-resume", "j5", "--wait", "1", *w["ota"], *w["base"])
    assert "fallen back to the next tap" in r.stdout, r.stdout + r.stderr
    assert w["smsc"].messages == {} and [a["action_id"] for a in card_actions(w)] == ["j5"]
    r = onecard("platform", "ota-resume", "j5", "--wait", "1", *w["ota"], *w["base"])
    assert "fallen back" in r.stdout and len(card_actions(w)) == 1 and w["smsc"].messages == {}
