"""Issuing over the air (docs/ota.md 5.4) end to end over real SMPP on loopback: the platform's smpplib gateway, the
SMSC simulator, the handset stand-in, the SIM's OTA side (the card issuer's TAR) and the simulated version 2 card
carrying A's sub-application. After the job B's door opens for the card and A's still does; a SIM torn mid-job and a
gateway killed between submit and PoR resume and end exactly once; a replayed packet is refused with its PoR status;
a full card and an already issued employee are refused in one line."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central import ota_issue as oi
from central.ota_channel import OtaChannel, OtaStore
from central.ota_gateway import SmppGateway
from central.store import Platform
from common import ota
from sam.interface import Algorithm, CardIdentity, KeyPurpose
from sam.keystore import Keystore
from sam.ota_keys import OtaSam, diversify_ota_keys
from sam.software import SoftwareSam
from simulator import ota_sim
from simulator.card import OneCardV2Applet
from simulator.ota_handset import SimHandset
from simulator.personalise import multi_card, sub_application
from simulator.smsc import Smsc
from tests.support import make_terminal
from tests.test_card_v2 import ISSUER, ISSUER_SAM, KS, SAMS, A, B, enterprise_keystore, person, tap

MSISDN = "8613800000001"
NEW_ASN = bytes.fromhex("B0B0B0B0B0B0B0B0")
RIGHTS = {
    "door_groups": [1],
    "time_profile": 0,
    "valid_from": "2026-01-01",
    "valid_to": "2028-12-31",
    "purse_expiry": "2028-12-31",
    "max_balance": 200_000,
}


class Torn(Exception):
    """The phone switched off under a packet."""


class TearableHandset(SimHandset):
    def receive(self, deliver_tpdu: bytes) -> list[bytes]:
        try:
            return super().receive(deliver_tpdu)
        except Torn:
            assert self.sim is not None
            self.sim.pending.clear()
            self.sim.applet.power_off()  # type: ignore[attr-defined]
            self.sim.applet.power_on()  # type: ignore[attr-defined]
            return []


def issuing_keystore() -> Keystore:
    """A card office's keystore (`sam restrict --role issuing --enterprise B --card-issuer`): what ota-issue needs."""
    from sam.roles import CARD_ISSUER_KEYS, ROLE_KEYS

    own = KS[B].restricted_per_purpose(ROLE_KEYS["issuing"])
    return Keystore([*own, *ISSUER.restricted_per_purpose(CARD_ISSUER_KEYS["issuing"])])


def issuer_master() -> bytes:
    key = ISSUER.get(bytes(4), KeyPurpose.TRANSPORT, 0, Algorithm.AES128)
    assert key is not None
    return key.key.reveal()


@pytest.fixture
def world(tmp_path):
    state = multi_card([sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}), "Office")], ISSUER_SAM)
    card = OneCardV2Applet(state)
    platform_keys = issuing_keystore()  # B's issuing keys and the card issuer's TRANSPORT key (mac)
    otasam = OtaSam(platform_keys)
    a_keys = OtaSam(KS[A]).personalise_keys(CardIdentity(state.apps[0].asn, A, 1, Algorithm.AES128))
    issuer_keys = diversify_ota_keys(issuer_master(), otasam.issuer(state.serial))
    sim = ota_sim.OtaSim(
        card,
        ota_sim.OtaState(a_keys.kic, a_keys.kid, a_keys.version),
        domains={ota.ISSUER_TAR: ota_sim.OtaState(issuer_keys.kic, issuer_keys.kid, issuer_keys.version)},
    )
    smsc = Smsc().start()
    smsc.add_handset(MSISDN, TearableHandset(sim))
    gw = SmppGateway("127.0.0.1", smsc.port, "onecard", "secret", "10657000", timeout=3.0)
    gw.connect()
    pf = Platform(tmp_path / "p.db", Ed25519PrivateKey.generate())
    pf.add_enterprise(A.hex(), "Acme")
    pf.add_enterprise(B.hex(), "Garden Community")
    pf.add_holder(A.hex(), "E1001", "Zhang Wei", phone=MSISDN)
    pf.add_holder(B.hex(), "R-0707", "张伟", phone=MSISDN)
    pf.issue_card(A.hex(), "E1001", state.apps[0].asn.hex())
    channel = OtaChannel(gw, otasam, OtaStore(pf), validity_seconds=3600, por_wait_seconds=2.0)
    w = dict(card=card, state=state, sim=sim, smsc=smsc, gw=gw, pf=pf, channel=channel, otasam=otasam, tmp=tmp_path)
    w["sam"] = SoftwareSam(platform_keys)
    yield w
    gw.close()
    smsc.stop()
    pf.close()


def new_op(w, asn=NEW_ASN):
    files = oi.IssueFiles.make("R-0707", "张伟", RIGHTS)
    return oi.OtaIssue(w["sam"], B, w["state"].serial, asn, "Community", 1, files)


def run(w, job="iss-1", channel=None):
    return oi.run_issue(channel or w["channel"], job, new_op(w), MSISDN, "R-0707", RIGHTS)


def run_recording(w) -> list[bytes]:
    """Run the issue to its end; the command packets the SIM received, in order."""
    seen: list[bytes] = []
    real = w["sim"].process

    def keep(packet):
        seen.append(packet)
        return real(packet)

    w["sim"].process = keep
    assert run(w).step is oi.Step.DONE
    return seen


def doors_open(w):
    door_b, _ = make_terminal(w["tmp"], SAMS[B], "door", enterprise=B)
    door_a, _ = make_terminal(w["tmp"], SAMS[A], "door")
    return tap(door_b, w["card"])[0].message, tap(door_a, w["card"])[0].message


def test_issue_over_the_air_opens_b_and_keeps_a(world):
    w = world
    op = run(w)
    assert op.step is oi.Step.DONE, op.reason
    assert doors_open(w) == ("Welcome, 张伟", "Welcome, Zhang Wei")
    # 16 packets, each one SMS round trip: probe, directory, challenge, CREATE, 5 PUT KEY, 2 PUT KEY of the OTA key
    # set (KIc, KID), COMMIT, 4 writes.
    assert len(w["sim"].executed) == 16 and w["pf"].ota_job("iss-1")["status"] == "done"
    card = w["pf"].card(NEW_ASN.hex().upper())
    assert card["enterprise_id"] == B.hex() and card["status"] == "ACTIVE"
    assert card["max_balance_cents"] == RIGHTS["max_balance"] and card["rights"]["door_groups"] == [1]
    assert [(e.name, e.status) for e in w["card"].directory()] == [("Office", 1), ("Community", 1)]
    # B got its own OTA key set with its keys (docs/ota.md 2.2): a packet under B's KIc/KID, counter 1, runs on
    # B's set; A's counter does not move.
    b = CardIdentity(NEW_ASN, B, 1, Algorithm.AES128)
    select_b = ota.pack_apdus([bytes.fromhex("00a404000d") + bytes.fromhex("F04F4E4543415244") + b"\x02" + B])
    a_counter = w["sim"].state.counter
    por = w["otasam"].open_por(b, w["sim"].process(w["otasam"].secure_command(b, ota.ONECARD_TAR, 1, select_b)))
    assert por.status is ota.PorStatus.OK and ota.parse_compact_response(por.data)[1] == b"\x90\x00"
    assert w["card"].sub_application(B).ota_counter == 1 and w["sim"].state.counter == a_counter
    # Every packet went to the card issuer's TAR (bytes 8..10 of the command packet after the UDH 02 70 00).
    packets = [m.user_data for m in w["smsc"].messages.values() if m.user_data[:3] == b"\x02\x70\x00"]
    assert len(packets) >= 10 and all(ud[3 + 7 : 3 + 10] == ota.ISSUER_TAR for ud in packets)
    # Resumed once done: nothing more is sent.
    n = len(w["sim"].executed)
    assert run(w).step is oi.Step.DONE and len(w["sim"].executed) == n


def test_already_issued_and_card_full_are_refused(world):
    w = world
    assert run(w).step is oi.Step.DONE
    with pytest.raises(oi.IssueRefused, match="already issued"):
        oi.check_request(w["pf"], B.hex(), "R-0707")
    # The card itself refuses a second issue of B (a new job finds B's sub-application active).
    op = run(w, job="iss-2")
    assert op.step is oi.Step.FAILED and op.code == "already_issued"


def test_a_full_card_is_refused_before_create(world):
    w = world
    for i in range(7):  # seven more enterprises: the directory is full (8)
        e = bytes.fromhex(f"0009{i:04d}")
        w["state"].apps.append(sub_application(SoftwareSam(enterprise_keystore(e)), person(e, "E", "X", {1}), f"F{i}"))
    op = run(w)
    assert op.step is oi.Step.FAILED and op.code == "card_full", op.reason
    assert len(w["sim"].executed) == 2  # the probe and the directory: nothing was written
    assert w["pf"].ota_job("iss-1")["status"] == "failed"


def test_sim_torn_mid_job_resumes_and_ends_once(world):
    w = world
    calls = {"n": 0}

    def tear(i):
        calls["n"] += 1
        if calls["n"] == 12:  # in the middle of the wash: the phone is switched off under a packet
            w["sim"].before_apdu = None
            raise Torn("SIM powered off")

    w["sim"].before_apdu = tear
    run(w)  # the torn packet's PoR never comes: the job waits
    assert w["pf"].ota_job("iss-1")["status"] == "sent"
    op = run(w)
    assert op.step is oi.Step.DONE, op.reason
    assert doors_open(w) == ("Welcome, 张伟", "Welcome, Zhang Wei")
    assert w["pf"].card(NEW_ASN.hex().upper())["status"] == "ACTIVE" and len(w["card"].directory()) == 2
    assert w["pf"].ota_job("iss-1")["status"] == "done"


def test_gateway_killed_after_submit_before_por_resumes_once(world):
    w = world
    ch = w["channel"]
    real_send = ch.send
    sent = {"n": 0}

    def send_then_die(*args, **kw):
        cntr = real_send(*args, **kw)
        sent["n"] += 1
        if sent["n"] == 12:  # COMMIT KEYS submitted; the process dies before its PoR
            w["gw"]._drop()
            raise KeyboardInterrupt
        return cntr

    ch.send = send_then_die
    with pytest.raises(KeyboardInterrupt):
        run(w)
    gw2 = SmppGateway("127.0.0.1", w["smsc"].port, "onecard", "secret", "10657000", timeout=3.0)
    gw2.connect()
    ch2 = OtaChannel(gw2, w["otasam"], OtaStore(w["pf"]), por_wait_seconds=2.0)
    try:
        op = run(w, channel=ch2)
    finally:
        gw2.close()
    assert op.step is oi.Step.DONE, op.reason
    assert doors_open(w) == ("Welcome, 张伟", "Welcome, Zhang Wei")
    assert w["pf"].ota_job("iss-1")["status"] == "done"


def test_a_replayed_packet_is_refused_with_its_por_status(world):
    w = world
    real = w["sim"].process
    seen = run_recording(w)
    before = w["sim"].domains[ota.ISSUER_TAR].counter
    por = real(seen[3])  # the CREATE packet again
    keys = diversify_ota_keys(issuer_master(), w["otasam"].issuer(w["state"].serial))
    assert ota.open_por(por, keys).status is ota.PorStatus.CNTR_LOW
    assert w["sim"].domains[ota.ISSUER_TAR].counter == before and len(w["card"].directory()) == 2


def test_the_phone_off_past_the_validity_is_reported(world):
    w = world
    now = {"t": dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.timezone.utc)}
    w["smsc"].now = lambda: now["t"]
    w["smsc"].set_power(MSISDN, False)
    op = run(w)
    assert op.step is oi.Step.PROBE and w["pf"].ota_job("iss-1")["status"] == "sent"
    now["t"] += dt.timedelta(hours=2)
    w["smsc"].retry()
    assert w["channel"].await_por("iss-1", w["otasam"].issuer(w["state"].serial), MSISDN, 1, seconds=0.5) is None
    assert w["pf"].ota_job("iss-1")["status"] == "expired"
    assert w["sim"].executed == []


# --- the administrator's command -------------------------------------------------------------------------------


def test_ota_issue_command_issues_once_and_refuses_a_second_time(world, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sam.keystore import KeystoreUnlock, save_keystore

    w = world
    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "pass").write_text("ota issue passphrase\n")
    save_keystore(
        tmp_path / "ks",
        issuing_keystore(),
        KeystoreUnlock.from_passphrase_file(tmp_path / "pass"),
        scrypt_n=2**10,
    )
    (tmp_path / "smpp.pass").write_text("secret\n")
    db, key = tmp_path / "cli.db", tmp_path / "cli.key"

    def onecard(*args, keyed=True):
        where = ("--db", db, "--key", key) if keyed else ("--db", db)
        return subprocess.run(
            [sys.executable, "-m", "onecard", "platform", *map(str, args), *where],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(repo)),
            cwd=repo,
            timeout=120,
        )

    assert onecard("init").returncode == 0
    onecard("add-enterprise", A.hex(), "--name", "Acme")
    onecard("add-enterprise", B.hex(), "--name", "Garden")
    onecard("add-holder", "E1001", "--enterprise", A.hex(), "--name", "Wei", "--phone", MSISDN)
    onecard("add-holder", "R-0707", "--enterprise", B.hex(), "--name", "张伟", "--phone", MSISDN)
    onecard("issue-card", w["state"].apps[0].asn.hex(), "--enterprise", A.hex(), "--employee", "E1001")
    ota_opts = (
        "--smsc",
        f"127.0.0.1:{w['smsc'].port}",
        "--smpp-password-file",
        tmp_path / "smpp.pass",
        "--keystore",
        tmp_path / "ks",
        "--passphrase-file",
        tmp_path / "pass",
        "--wait",
        "5",
    )
    issue = (
        "ota-issue",
        "--enterprise",
        B.hex(),
        "--employee",
        "R-0707",
        "--card-serial",
        w["state"].serial.hex(),
        "--name",
        "Community",
        "--asn",
        NEW_ASN.hex(),
        "--valid-from",
        "2026-01-01",
        *ota_opts,
    )
    # Without --card-serial the platform needs one recorded for the holder's phone: A was registered without it.
    i = issue.index("--card-serial")
    no_serial = issue[:i] + issue[i + 2 :]
    r = onecard(*no_serial, "--job", "j0")
    assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "knows no card serial for the phone of employee R-0707: give --card-serial" in r.stderr
    r = onecard(*issue, "--job", "j1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "over-the-air issue j1: done: sub-application B0B0B0B0B0B0B0B0 (Community) issued to employee R-0707, "
        "registered"
    )
    assert doors_open(w) == ("Welcome, 张伟", "Welcome, Zhang Wei")
    # B's registration recorded the SIM's serial (migration 0005_card_serial): now the option may be left out.
    cli_pf = Platform(db, Ed25519PrivateKey.generate())
    try:
        assert cli_pf.card_serial_for(B.hex(), "R-0707") == w["state"].serial.hex().upper()
        assert cli_pf.card_serial_for(A.hex(), "E1001") == w["state"].serial.hex().upper()  # the same phone
    finally:
        cli_pf.close()
    r = onecard(*no_serial, "--job", "j2")
    assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "refused: already issued" in r.stderr
    r = onecard("ota-resume", "j1", *ota_opts)
    assert r.returncode == 2 and "run the same `onecard platform ota-issue ... --job j1`" in r.stderr, r.stderr
    r = onecard("ota-jobs", keyed=False)
    assert r.stdout.startswith("j1  issue  card B0B0B0B0B0B0B0B0") and "  done  " in r.stdout, r.stdout
    r = onecard(*issue[: -len(ota_opts)], "--smsc", "nowhere", "--smpp-password-file", tmp_path / "smpp.pass")
    assert r.returncode == 2 and "--keystore" in r.stderr and "nothing was sent" in r.stderr


def test_documented_issuer_example():
    """docs/ota.md 2.1, byte for byte: the card issuer's OTA keys and the first packet of an issue."""
    from pathlib import Path

    master = bytes.fromhex("202122232425262728292A2B2C2D2E2F")
    serial = bytes.fromhex("5A5A000000000001")
    keys = diversify_ota_keys(master, OtaSam(Keystore([])).issuer(serial))
    assert (keys.kic.hex(), keys.kid.hex()) == ("71b3c9a467772fa248ce0260ec2ee291", "ab32ea9a9c47322ae8687feeb19ffdae")
    op = oi.OtaIssue(None, B, serial, NEW_ASN, "Community", 1, oi.IssueFiles.make("R-0707", "张伟", RIGHTS))
    data = op.start()
    assert data.hex() == "00a404000df04f4e4543415244020002000200"
    packet = ota.build_command(keys, ota.ISSUER_TAR, 1, data)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ota.md").read_text(encoding="utf-8")
    for shown in (keys.kic.hex(), keys.kid.hex(), data.hex(), packet.hex()):
        assert shown in doc
    # The SIM opens it with the same keys, under the issuer's TAR.
    cmd = ota.open_command(packet, keys)
    assert cmd.data == data and cmd.cntr == 1 and packet[7:10] == ota.ISSUER_TAR


def test_the_sims_issuer_counter_is_durable(world, tmp_path):
    """The issuer's receiving entity keeps its counter in its own state file: a packet replayed after the SIM
    restarted is still refused (docs/ota.md 3.1, 2.1)."""
    w = world
    state = w["sim"].domains[ota.ISSUER_TAR]
    store = ota_sim.OtaStateFile(tmp_path / "issuer-ota.json")
    store.save(state)
    w["sim"].domain_stores[ota.ISSUER_TAR] = store
    seen = run_recording(w)
    reloaded = store.load()
    assert reloaded.counter == state.counter == len(seen)
    again = ota_sim.OtaSim(w["card"], w["sim"].state, domains={ota.ISSUER_TAR: reloaded})
    keys = diversify_ota_keys(issuer_master(), w["otasam"].issuer(w["state"].serial))
    assert ota.open_por(again.process(seen[-1]), keys).status is ota.PorStatus.CNTR_LOW
