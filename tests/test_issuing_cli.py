"""`onecard issue wash`, then `issue card`, `issue replace`, `issue cancel` on simulated cards, as the card office
would run them, with the reference platform as the registry."""
import json

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


def test_issue_replace_cancel_from_the_command_line(tmp_path, capsys):
    d = tmp_path
    (d / "pass").write_text("card office\n")
    assert run(capsys, "sam", "create-keystore", "--out", d / "ks", "--passphrase-file", d / "pass",
               "--enterprise", "00010001", "--algorithm", "aes128")[0] == 0
    for args in (("init",), ("add-enterprise", "00010001", "--name", "Demo Co"),
                 ("add-holder", "E1001", "--enterprise", "00010001", "--name", "Zhang Wei", "--phone", "13800000001")):
        assert run(capsys, "platform", args[0], "--db", d / "pf.db", "--key", d / "pf.key", *args[1:])[0] == 0
    factory = SoftwareSam.open(d / "ks", KeystoreUnlock.from_passphrase_file(d / "pass"))
    for name in ("old", "new"):
        write_card(d / f"{name}.json", transport_card(factory, ENTERPRISE))
        assert run(capsys, "issue", "wash", "--keystore", d / "ks", "--passphrase-file", d / "pass", "--enterprise",
                   "00010001", "--card", d / f"{name}.json", "--log", d / "station.db", "--to-version", "1")[0] == 0
    station = ["--keystore", d / "ks", "--passphrase-file", d / "pass", "--enterprise", "00010001",
               "--log", d / "station.db", "--platform-db", d / "pf.db", "--platform-key", d / "pf.key", "--wait", "2"]

    code, out, err = run(capsys, "issue", "card", *station, "--card", d / "old.json", "--employee", "E1001",
                         "--groups", "1,2", "--valid-to", "2028-12-31")
    old_asn = CardStateFile(d / "old.json").load().asn.hex().upper()
    assert code == 0, err
    assert f"card {old_asn} issued to employee E1001" in out
    assert CardStateFile(d / "old.json").load().status == 0x01

    code, out, err = run(capsys, "issue", "card", *station, "--card", d / "new.json", "--employee", "E1001")
    assert code == 1 and "already holds one-card" in err  # one phone number, one one-card

    # The station's log has not been uploaded (no sync agent here): the platform cannot tell the card's key version.
    code, out, err = run(capsys, "platform", "key-versions", "--db", d / "pf.db", "--key", d / "pf.key")
    assert code == 0 and "00010001 unknown 1" in out
    assert "re-key them before retiring any version" in out

    code, out, err = run(capsys, "issue", "replace", *station, "--old-card", d / "old.json", "--card", d / "new.json")
    new_asn = CardStateFile(d / "new.json").load().asn.hex().upper()
    assert code == 0, err
    assert f"card {new_asn} replaces {old_asn}" in out
    assert CardStateFile(d / "old.json").load().status == 0x02  # voided

    code, out, err = run(capsys, "platform", "card", "--db", d / "pf.db", "--key", d / "pf.key", old_asn)
    assert json.loads(out)["status"] == "REPLACED"

    code, out, err = run(capsys, "issue", "cancel", *station, "--card", d / "new.json")
    assert code == 0, err
    assert out.strip().endswith("card cancelled")
    code, out, err = run(capsys, "platform", "card", "--db", d / "pf.db", "--key", d / "pf.key", new_asn)
    assert json.loads(out)["status"] == "CANCELLED"


def test_no_card_presented_is_one_line(tmp_path, capsys):
    d = tmp_path
    (d / "pass").write_text("x\n")
    assert run(capsys, "sam", "create-keystore", "--out", d / "ks", "--passphrase-file", d / "pass",
               "--enterprise", "00010001")[0] == 0
    code, out, err = run(capsys, "issue", "cancel", "--keystore", d / "ks", "--passphrase-file", d / "pass",
                         "--enterprise", "00010001", "--reader", "no such reader", "--log", d / "s.db",
                         "--platform-db", d / "missing.db", "--platform-key", d / "k", "--wait", "1")
    assert code == 2 and err.count("\n") == 1 and "platform database" in err
