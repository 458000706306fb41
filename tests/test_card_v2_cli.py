"""`onecard issue add-application`: the issuing station of enterprise B adds B's sub-application to a version 2 card
that already carries A's, end to end through the CLI (keystore file, simulated card file, the platform in process),
then the doors of both enterprises open the card; misuse is one line and changes nothing."""

from __future__ import annotations

import pytest

from central.db import load_signing_key, write_signing_key
from central.store import Platform
from onecard.cli import main
from sam.keystore import Keystore, KeystoreUnlock, save_keystore
from simulator.card import MultiCardStateFile
from simulator.card_files import load_card
from simulator.personalise import multi_card, sub_application
from tests.support import make_terminal
from tests.test_card_v2 import ISSUER, ISSUER_SAM, KS, SAMS, A, B, person, snapshot, tap


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def bench(tmp_path):
    d = tmp_path
    (d / "pass").write_text("card office B\n")
    unlock = KeystoreUnlock.from_passphrase_file(d / "pass")
    # B's issuing station: B's keys and the card issuer's transport key (what `sam restrict --card-issuer` keeps).
    save_keystore(d / "b.ks", Keystore([*KS[B], *ISSUER]), unlock, scrypt_n=2**10)
    save_keystore(d / "b-only.ks", KS[B], unlock, scrypt_n=2**10)
    write_signing_key(d / "pf.key")
    platform = Platform(d / "platform.db", load_signing_key(d / "pf.key"))
    platform.add_enterprise(B.hex(), "Garden Community")
    platform.add_holder(B.hex(), "R-0707", "张伟", phone="13800000001")
    platform.close()
    office = sub_application(SAMS[A], person(A, "E1001", "Zhang Wei", {1, 2}, opening_balance=900), "Office")
    MultiCardStateFile(d / "phone.json").save(multi_card([office], issuer_sam=ISSUER_SAM))
    return d


def add_application(d, keystore="b.ks", *extra):
    return [
        "issue",
        "add-application",
        "--keystore",
        d / keystore,
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        B.hex(),
        "--card",
        d / "phone.json",
        "--log",
        d / "station.db",
        "--wait",
        "2",
        "--lab-platform-db",
        d / "platform.db",
        "--lab-platform-key",
        d / "pf.key",
        "--name",
        "Community",
        "--to-version",
        "1",
        "--employee",
        "R-0707",
        "--valid-from",
        "2026-01-01",
        "--valid-to",
        "2028-12-31",
        *extra,
    ]


def test_b_adds_its_sub_application_to_a_card_carrying_a_and_both_doors_open(bench, capsys, tmp_path):
    d = bench
    before = snapshot(load_card(d / "phone.json"), A)
    code, out, err = run(capsys, *add_application(d))
    assert code == 0, err
    card = load_card(d / "phone.json")
    asn = card.sub_application(B).asn.hex().upper()
    assert f"sub-application {asn} (Community) of enterprise 00020002 added, issued to employee R-0707" in out
    assert [(e.enterprise_id, e.name, e.status) for e in card.directory()] == [(A, "Office", 1), (B, "Community", 1)]
    assert snapshot(card, A) == before  # A's sub-application neither needed nor touched
    pf = Platform(d / "platform.db", None)
    assert pf.card(asn)["status"] == "ACTIVE"
    pf.close()
    door_b, _ = make_terminal(tmp_path, SAMS[B], "door", enterprise=B)
    door_a, _ = make_terminal(tmp_path, SAMS[A], "door")
    assert tap(door_b, load_card(d / "phone.json"))[0].message == "Welcome, 张伟"
    assert tap(door_a, load_card(d / "phone.json"))[0].message == "Welcome, Zhang Wei"
    # Again: the card already carries B's sub-application, issued: one line, exit 1, the card unchanged.
    saved, _ = (d / "phone.json").read_bytes(), capsys.readouterr()
    code, out, err = run(capsys, *add_application(d))
    assert code == 1 and err.count("\n") == 1 and "already issued" in err, err
    assert (d / "phone.json").read_bytes() == saved


def test_a_station_without_the_card_issuers_key_is_refused_in_one_line(bench, capsys):
    d = bench
    saved = (d / "phone.json").read_bytes()
    code, out, err = run(capsys, *add_application(d, "b-only.ks"))
    assert code == 1 and err.count("\n") == 1 and "cannot add a sub-application" in err, err
    assert (d / "phone.json").read_bytes() == saved
    assert [e.enterprise_id for e in load_card(d / "phone.json").directory()] == [A]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("--name", "a name much longer than sixteen"), "--name must be 1..16 bytes"),
        (("--to-version", "0"), "--to-version 0 is not 1..255"),
    ],
)
def test_bad_options_are_one_line_and_change_nothing(bench, capsys, extra, expected):
    d = bench
    saved = (d / "phone.json").read_bytes()
    code, out, err = run(capsys, *add_application(d, "b.ks", *extra))
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert (d / "phone.json").read_bytes() == saved


def test_help_names_the_card_issuers_key_and_the_registry_choice(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["issue", "add-application", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--name NAME" in text and "--to-version TO_VERSION" in text and "--employee EMPLOYEE" in text
    assert "card issuer's transport key, enterprise 00000000" in text
    assert "--lab-platform-db LAB_PLATFORM_DB" in text and "--broker-host BROKER_HOST" in text
