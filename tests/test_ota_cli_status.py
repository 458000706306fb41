"""`onecard platform report-loss|unlock|cancel ASN --over-the-air` end to end: the CLI in its own process, the SMSC
simulator on loopback in this one, delivering to the simulated SIM of a two-enterprise card. The loss report still
blacklists the card and also locks its sub-application; unlock undoes both; cancel deletes the sub-application after
settling the balance the card proved; a phone that is off leaves the job pending until `ota-resume`."""

from __future__ import annotations

import pytest

from central.cli import db_target
from central.db import load_signing_key
from central.store import Platform
from onecard.cli import main
from sam.interface import Algorithm, CardIdentity
from sam.keystore import KeystoreUnlock, save_keystore
from sam.ota_keys import OtaSam
from simulator import ota_sim
from simulator.card import STATUS_ACTIVE, STATUS_LOCKED
from simulator.ota_handset import SimHandset
from simulator.smsc import Smsc
from tests.test_ota_cli import onecard
from tests.test_ota_status_delete import KS, A, B, door_decides, two_enterprise_card

MSISDN = "8613900000013"


@pytest.fixture
def world(tmp_path):
    card = two_enterprise_card()
    app_b = card.sub_application(B)
    ident = CardIdentity(app_b.asn, B, 1, Algorithm.AES128)
    keys = OtaSam(KS[B]).personalise_keys(ident)
    sim = ota_sim.OtaSim(card, ota_sim.OtaState(keys.kic, keys.kid, keys.version))
    (tmp_path / "pass").write_text("ota status passphrase\n")
    save_keystore(tmp_path / "ks", KS[B], KeystoreUnlock.from_passphrase_file(tmp_path / "pass"), scrypt_n=2**10)
    (tmp_path / "smpp.pass").write_text("secret\n")
    db, key = tmp_path / "p.db", tmp_path / "p.key"
    base = ("--db", db, "--key", key)
    asn = app_b.asn.hex().upper()
    for args in (  # in this process (faster); the commands under test run in their own
        ("init",),
        ("add-enterprise", B.hex(), "--name", "Community"),
        ("add-holder", "R-0707", "--enterprise", B.hex(), "--name", "Wei", "--phone", MSISDN),
        ("issue-card", asn, "--enterprise", B.hex(), "--employee", "R-0707", "--balance", "50.00"),
    ):
        assert main(["platform", *args, *map(str, base)]) == 0
    smsc = Smsc().start()
    smsc.add_handset(MSISDN, SimHandset(sim))
    ota = (
        "--smsc", f"127.0.0.1:{smsc.port}", "--smpp-password-file", tmp_path / "smpp.pass",
        "--keystore", tmp_path / "ks", "--passphrase-file", tmp_path / "pass", "--wait", "5",
    )  # fmt: skip
    yield dict(card=card, sim=sim, smsc=smsc, base=base, ota=ota, asn=asn, db=db, key=key, tmp=tmp_path)
    smsc.stop()


def platform(w) -> Platform:
    return Platform(db_target(str(w["db"])), load_signing_key(w["key"]))


def test_loss_report_over_the_air_blacklists_and_locks_then_unlock_undoes_both(world):
    w = world
    r = onecard("platform", "report-loss", w["asn"], "--over-the-air", "--job", "L1", *w["ota"], *w["base"])
    assert "reported lost; blacklist version 1" in r.stdout, r.stdout + r.stderr
    assert "over-the-air lock L1" in r.stdout and ": done, the card is locked" in r.stdout
    assert w["card"].sub_application(B).status == STATUS_LOCKED
    assert w["card"].sub_application(A).status == STATUS_ACTIVE and door_decides(w["tmp"], A, w["card"])
    pf = platform(w)
    try:
        assert pf.card(w["asn"])["status"] == "LOST"
    finally:
        pf.close()
    line = onecard("platform", "ota-jobs", "--db", w["db"]).stdout.strip()
    assert line.startswith("L1  lock  card ") and "  PoR ok  done" in line
    r = onecard("platform", "unlock", w["asn"], "--over-the-air", "--job", "U1", *w["ota"], *w["base"])
    assert "unlocked; blacklist version 2" in r.stdout and ": done, the card is unlocked" in r.stdout
    assert w["card"].sub_application(B).status == STATUS_ACTIVE and door_decides(w["tmp"], B, w["card"])


def test_phone_off_lock_stays_pending_within_validity_then_resumes(world):
    w = world
    w["smsc"].set_power(MSISDN, False)
    ota = [*w["ota"][:-1], "0.5"]
    r = onecard("platform", "report-loss", w["asn"], "--over-the-air", "--job", "L2", *ota, *w["base"])
    assert "reported lost" in r.stdout and "sent, no PoR yet" in r.stdout and "ota-resume L2" in r.stdout
    assert "  sent  pending" in onecard("platform", "ota-jobs", "--db", w["db"]).stdout
    assert w["card"].sub_application(B).status == STATUS_ACTIVE  # not yet: the blacklist refuses it meanwhile
    w["smsc"].set_power(MSISDN, True)
    r = onecard("platform", "ota-resume", "L2", *w["ota"], *w["base"])
    assert ": done, the card is locked" in r.stdout, r.stdout + r.stderr
    assert w["card"].sub_application(B).status == STATUS_LOCKED


def test_cancel_over_the_air_settles_then_deletes_the_sub_application(world):
    w = world
    r = onecard("platform", "cancel", w["asn"], "--over-the-air", *w["ota"], *w["base"], check=False)
    assert r.returncode == 2 and "--settle" in r.stderr and r.stderr.count("\n") == 1
    assert w["smsc"].messages == {}
    r = onecard("platform", "cancel", w["asn"], "--over-the-air", "--settle", "--job", "D1", *w["ota"], *w["base"])
    assert "over-the-air delete D1" in r.stdout and "the card proved 50.00 and 50.00 was refunded" in r.stdout
    assert [e.enterprise_id for e in w["card"].directory()] == [A] and door_decides(w["tmp"], A, w["card"])
    pf = platform(w)
    try:
        assert pf.card(w["asn"])["status"] == "CANCELLED"
    finally:
        pf.close()
    sent = len(w["smsc"].messages)
    r = onecard("platform", "ota-resume", "D1", *w["ota"], *w["base"])
    assert ": done" in r.stdout and len(w["smsc"].messages) == sent


def test_bad_input_is_one_line_and_changes_nothing(world):
    w = world
    onecard("platform", "add-holder", "R-0808", "--enterprise", B.hex(), "--name", "Li", *w["base"])
    onecard("platform", "issue-card", "0102030405060708", "--enterprise", B.hex(), "--employee", "R-0808", *w["base"])
    cases = [
        (("report-loss", "0102030405060708", "--over-the-air", *w["ota"]), "no phone number"),
        (("report-loss", w["asn"], "--over-the-air", *w["base"][:0]), "--smsc"),
    ]
    for args, words in cases:
        r = onecard("platform", *args, *w["base"], check=False)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    pf = platform(w)
    try:
        assert pf.card(w["asn"])["status"] == "ACTIVE" and pf.card("0102030405060708")["status"] == "ACTIVE"
    finally:
        pf.close()
    assert w["smsc"].messages == {}
    # The SMSC refuses the bind: the loss report is made, the lock job kept, and `ota-resume` sends it.
    bad = w["tmp"] / "bad.pass"
    bad.write_text("wrong\n")
    ota = list(w["ota"])
    ota[3] = bad
    r = onecard("platform", "report-loss", w["asn"], "--over-the-air", "--job", "L9", *ota, *w["base"], check=False)
    assert r.returncode == 2 and "refused the bind" in r.stderr and "ota-resume L9" in r.stderr
    r = onecard("platform", "ota-resume", "L9", *w["ota"], *w["base"])
    assert ": done, the card is locked" in r.stdout and w["card"].sub_application(B).status == STATUS_LOCKED


@pytest.mark.parametrize(
    "command, kill_after",
    [(("report-loss",), 2), (("cancel", "--settle"), 4), (("cancel", "--settle"), 6)],
)
def test_cli_sigkilled_after_a_submit_before_its_por_ends_once(world, command, kill_after):
    """The CLI process SIGKILLed by the SMSC right after its Nth submit_sm (lock: 2 = the UPDATE BINARY; deletion:
    4 = APPLICATION BLOCK, 6 = DELETE), before the PoR; `ota-resume` finishes the job: one lock, one settlement."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_ota_cli import REPO

    w = world
    name, *rest = command
    child = subprocess.Popen(
        [sys.executable, "-m", "onecard", "platform", name, w["asn"], *rest, "--over-the-air", "--job", "K1",
         *map(str, w["ota"]), *map(str, w["base"])],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    submits = [0]

    def kill(_stored):
        submits[0] += 1
        if submits[0] == kill_after:
            os.kill(child.pid, signal.SIGKILL)

    w["smsc"].after_submit = kill
    child.wait(90)
    w["smsc"].after_submit = None
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    deadline = time.monotonic() + 10  # the SMSC still delivers the last packet; its PoR finds no gateway
    while len(w["sim"].executed) < kill_after and time.monotonic() < deadline:
        time.sleep(0.05)
    r = onecard("platform", "ota-resume", "K1", *w["ota"], *w["base"])
    assert ": done" in r.stdout, r.stdout + r.stderr
    pf = platform(w)
    try:
        if name == "report-loss":
            assert w["card"].sub_application(B).status == STATUS_LOCKED and pf.card(w["asn"])["status"] == "LOST"
        else:
            refunds = pf.conn.execute("SELECT amount_cents FROM refunds WHERE asn = ?", (w["asn"],)).fetchall()
            assert refunds == [(5_000,)] and pf.card(w["asn"])["status"] == "CANCELLED"
            assert [e.enterprise_id for e in w["card"].directory()] == [A]
    finally:
        pf.close()
    assert door_decides(w["tmp"], A, w["card"])


def test_rights_over_the_air_land_on_the_sim_and_no_card_action_is_queued(world):
    """`authorise ASN ... --over-the-air`: the platform records the rights and writes EF_ACCESS onto B's
    sub-application over SMS (enciphered, docs/ota.md 5); no card action waits for a tap; A's file is unchanged."""
    import datetime as dt

    from central import ota_ops

    w = world
    a_access = w["card"].sub_application(A).access
    r = onecard(
        "platform", "authorise", w["asn"], "--groups", "2,7", "--valid-from", "2026-01-01", "--valid-to", "2027-12-31",
        "--time-profile", "1", "--over-the-air", "--job", "R1", *w["ota"], *w["base"],
    )  # fmt: skip
    assert r.returncode == 0 and ": done, the card holds the new rights (PoR ok)" in r.stdout, r.stdout + r.stderr
    assert w["card"].sub_application(B).access == ota_ops.access_file(
        dt.date(2026, 1, 1), dt.date(2027, 12, 31), {2, 7}, 1
    )
    assert w["card"].sub_application(A).access == a_access
    pf = platform(w)
    try:
        assert pf.card(w["asn"])["rights"]["door_groups"] == [2, 7]
        assert not pf.conn.execute("SELECT 1 FROM card_actions WHERE asn = ?", (w["asn"],)).fetchall()
    finally:
        pf.close()


def test_rights_over_the_air_to_a_phone_that_stays_off_fall_back_to_the_next_tap(world):
    import time

    w = world
    w["smsc"].set_power(MSISDN, False)
    ota = [*w["ota"][:-1], "0.5", "--validity", "1"]
    r = onecard(
        "platform", "authorise", w["asn"], "--groups", "3", "--valid-from", "2026-01-01", "--valid-to", "2027-12-31",
        "--over-the-air", "--job", "R2", *ota, *w["base"], check=False,
    )  # fmt: skip
    if r.returncode == 0:  # still within the validity when the wait for the PoR ended
        assert "sent, no PoR yet" in r.stdout, r.stdout + r.stderr
        time.sleep(1.5)
        w["smsc"].retry()  # past the validity: the SMSC expires it and sends the receipt
        r = onecard("platform", "ota-resume", "R2", *ota, *w["base"], check=False)
    assert r.returncode == 1 and "queued for the next tap instead" in r.stderr, r.stdout + r.stderr
    again = onecard("platform", "ota-resume", "R2", *ota, *w["base"], check=False)
    assert again.returncode == 1 and r.stderr.split("; rights change")[1] in again.stderr  # the same action
    pf = platform(w)
    try:
        rows = pf.conn.execute("SELECT action FROM card_actions WHERE asn = ?", (w["asn"],)).fetchall()
        assert [row[0] for row in rows] == ["rights"]  # once: the next tap at the card service terminal writes it
    finally:
        pf.close()
