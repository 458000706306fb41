"""`onecard issue card|replace|cancel --lab-platform-db DB --lab-platform-key KEY`: the platform in the station's own
process as its registry (central.station_registry.InProcessRegistry, wired in by onecard/wiring.py), for a lab bench
with no broker; every misuse is one line and exit 2, and nothing is created or changed."""

from __future__ import annotations

import pytest

from central.db import load_signing_key, write_signing_key
from central.store import Platform
from onecard.cli import main
from sam.keystore import KeystoreUnlock
from sam.software import SoftwareSam
from simulator.card import CardStateFile
from simulator.personalise import transport_card, write_card
from tests.support import ENTERPRISE


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def bench(tmp_path, capsys):
    d = tmp_path
    (d / "pass").write_text("lab bench\n")
    code, _, err = run(
        capsys, "sam", "create-keystore", "--out", d / "ks", "--passphrase-file", d / "pass", "--enterprise", "00010001"
    )
    assert code == 0, err
    write_signing_key(d / "pf.key")
    platform = Platform(d / "platform.db", load_signing_key(d / "pf.key"))
    platform.add_enterprise(ENTERPRISE.hex(), "Test Co")
    platform.add_holder(ENTERPRISE.hex(), "E1001", "Zhang Wei", phone="13800000001")
    platform.close()
    factory = SoftwareSam.open(d / "ks", KeystoreUnlock.from_passphrase_file(d / "pass"))
    for name in ("old", "new"):
        write_card(d / f"{name}.json", transport_card(factory, ENTERPRISE))
        station = ["--keystore", d / "ks", "--passphrase-file", d / "pass", "--enterprise", "00010001"]
        wash = ["issue", "wash", *station, "--card", d / f"{name}.json", "--log", d / "station.db", "--to-version", 1]
        assert run(capsys, *wash)[0] == 0
    return d


def station(d, *lab):
    return [
        "--keystore",
        d / "ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
        "--log",
        d / "station.db",
        "--wait",
        "2",
        *(lab or ("--lab-platform-db", d / "platform.db", "--lab-platform-key", d / "pf.key")),
    ]


def test_issue_replace_cancel_with_the_platform_in_process(bench, capsys):
    d = bench
    code, out, err = run(capsys, "issue", "card", *station(d), "--card", d / "old.json", "--employee", "E1001")
    assert code == 0, err
    old_asn = CardStateFile(d / "old.json").load().asn.hex().upper()
    assert f"card {old_asn} issued to employee E1001" in out
    pf = Platform(d / "platform.db", None)  # the registration reached the platform's own database
    assert pf.card(old_asn)["status"] == "ACTIVE" and pf.key_versions() == {"00010001": {1: 1}}
    pf.close()

    code, out, err = run(
        capsys, "issue", "replace", *station(d), "--old-card", d / "old.json", "--card", d / "new.json"
    )
    assert code == 0, err
    new_asn = CardStateFile(d / "new.json").load().asn.hex().upper()
    code, out, err = run(capsys, "issue", "cancel", *station(d), "--card", d / "new.json")
    assert code == 0, err
    pf = Platform(d / "platform.db", None)
    assert pf.card(old_asn)["status"] == "REPLACED" and pf.card(new_asn)["status"] == "CANCELLED"
    assert pf.voided(old_asn)["terminal_id"] == "000000000900"
    pf.close()


@pytest.mark.parametrize(
    "lab, expected",
    [
        (("--lab-platform-db", "{d}/platform.db"), "--lab-platform-db needs --lab-platform-key"),
        (("--lab-platform-db", "{d}/nothing.db", "--lab-platform-key", "{d}/pf.key"), "create it with `onecard"),
        (("--lab-platform-db", "{d}/platform.db", "--lab-platform-key", "{d}/pass"), "not an unencrypted PEM"),
        (
            ("--lab-platform-db", "{d}/platform.db", "--lab-platform-key", "{d}/pf.key", "--cert", "{d}/c.pem"),
            "--lab-platform-db replaces the broker: drop --cert",
        ),
        (("--broker-host", "127.0.0.1", "--lab-platform-key", "{d}/pf.key"), "--lab-platform-key goes with"),
        (("--broker-host", "127.0.0.1"), "--broker-host needs --broker-ca, --cert, --cert-key, --platform-public-key"),
    ],
)
def test_misused_lab_options_are_one_line_and_change_nothing(bench, capsys, lab, expected):
    d = bench
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    lab = [a.format(d=d) for a in lab]
    code, out, err = run(capsys, "issue", "card", *station(d, *lab), "--card", d / "old.json", "--employee", "E1001")
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert CardStateFile(d / "old.json").load().status == 0x00  # still washed, not issued


def test_broker_and_lab_platform_are_one_choice_named_in_the_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["issue", "card", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--lab-platform-db LAB_PLATFORM_DB" in text and "labs only, instead of the broker" in text
    assert "A card office uses --broker-host" in text and "--lab-platform-key" in text
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "issue",
                "cancel",
                "--keystore",
                "k",
                "--passphrase-file",
                "p",
                "--enterprise",
                "1",
                "--card",
                "c",
                "--log",
                "l",
            ]
        )
    assert (
        exc.value.code == 2
        and "one of the arguments --broker-host --lab-platform-db is required" in capsys.readouterr().err
    )
