"""`onecard issue pin` at the card office: set the spending password from a file (never argv), unblock it."""

from __future__ import annotations

import datetime as dt

from onecard.cli import main
from sam.keystore import KeystoreUnlock, save_keystore
from simulator.card import CardStateFile
from tests.support import make_card, make_keystore


def test_card_office_sets_and_unblocks_the_spending_pin(tmp_path, capsys):
    ks = make_keystore()
    sam_path, passfile = tmp_path / "station.keystore", tmp_path / "pass"
    passfile.write_text("station passphrase\n")
    save_keystore(sam_path, ks, KeystoreUnlock.from_passphrase_file(passfile))
    from sam.software import SoftwareSam

    card = make_card(SoftwareSam(ks), tmp_path / "card.json")
    pinfile = tmp_path / "pin"
    pinfile.write_text("975310\n")
    base = [
        "issue",
        "pin",
        "--keystore",
        str(sam_path),
        "--passphrase-file",
        str(passfile),
        "--enterprise",
        "00010001",
        "--card",
        str(tmp_path / "card.json"),
        "--log",
        str(tmp_path / "office.db"),
        "--wait",
        "5",
    ]
    assert main([*base, "--spending-pin-file", str(pinfile)]) == 0
    state = CardStateFile(tmp_path / "card.json").load()
    assert state.pin == "975310" and state.pin_tries == 3
    state.pin_tries = 0
    CardStateFile(tmp_path / "card.json").save(state)
    assert main([*base, "--unblock"]) == 0
    state = CardStateFile(tmp_path / "card.json").load()
    assert state.pin == "975310" and state.pin_tries == 3
    out = capsys.readouterr()
    assert "975310" not in out.out + out.err
    assert b"975310" not in (tmp_path / "office.db").read_bytes()
    pinfile.write_text("12ab\n")
    assert main([*base, "--spending-pin-file", str(pinfile)]) == 2
    assert "digits only" in capsys.readouterr().err
    _ = card, dt
