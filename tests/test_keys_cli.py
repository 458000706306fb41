"""`onecard keys ...` over real pcscd + vpcd: master card in slot 3, PSAM in slot 2 (docs/keys.md 8)."""

from __future__ import annotations

import json
import re

import pytest

from onecard.cli import main
from sam.keystore import KeystoreUnlock, load_keystore
from simulator.master_card import load_master_card
from simulator.psam import load_psam

MASTER_SLOT = 3
PSAM_SLOT = 2


@pytest.fixture
def env(tmp_path, pcscd, vicc, capsys):
    (tmp_path / "pin").write_text("246810\n")
    (tmp_path / "wrong").write_text("111111\n")
    (tmp_path / "pass").write_text("keystore passphrase\n")

    class Env:
        slots: dict
        path = tmp_path
        master_reader = pcscd.slots[MASTER_SLOT].name
        psam_reader = pcscd.slots[PSAM_SLOT].name
        out = ""

        def run(self, *argv: str) -> int:
            code = main([str(a) for a in argv])
            captured = capsys.readouterr()
            self.out = captured.out + captured.err
            self.stdout = captured.out
            errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
            assert len(errors) == (code != 0)  # a failure is exactly one line
            self.error = errors[0] if errors else ""
            return code

        slots: dict = {}

        def _insert(self, slot: int, card) -> None:
            from terminal.readers.pcsc import PcscReader

            icc = self.slots.get(slot)
            if icc is None:
                icc = self.slots[slot] = vicc(slot)
            elif icc.inserted:
                icc.remove()
                reader = PcscReader(pcscd.slots[slot].name)
                try:
                    assert reader.wait_for_removal(3)  # pcscd must see the swap, not keep the old card's handle
                finally:
                    reader.close()
            icc.insert(card)

        def insert_master(self, name="master.json"):
            self._insert(MASTER_SLOT, load_master_card(tmp_path / name))

        def insert_psam(self, name="psam.json"):
            self._insert(PSAM_SLOT, load_psam(tmp_path / name))

        def keys_hex(self) -> list[str]:
            found = []
            for f in tmp_path.glob("*.json"):
                doc = json.loads(f.read_text())
                found += [k["key"] for k in doc.get("keys", [])]
            return found

    e = Env()
    e.slots = {}
    return e


def create(env, enterprise="00010001", name="master.json"):
    assert (
        env.run(
            "sim",
            "new-master-card",
            "--enterprise",
            enterprise,
            "--out",
            env.path / name,
            "--pin-file",
            env.path / "pin",
        )
        == 0
    ), env.out
    assert "KEEP THIS" in env.out


def test_create_inspect_generate_load_keystore_and_psam(env):
    create(env)
    outputs = [env.out]
    env.insert_master()
    assert env.run("keys", "inspect", "--reader", env.master_reader) == 0, env.out
    assert (
        "enterprise 00010001" in env.out
        and "3 of 3 tries left" in env.out
        and "key versions: 0 (transport), 1" in env.out
    )
    outputs.append(env.out)
    assert env.run("keys", "generate-version", "--reader", env.master_reader, "--pin-file", env.path / "pin") == 0, (
        env.out
    )
    assert "key version 2 generated" in env.out
    outputs.append(env.out)

    ks = env.path / "pos.ks"
    assert (
        env.run(
            "keys",
            "load-keystore",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "pos",
            "--out",
            ks,
            "--passphrase-file",
            env.path / "pass",
        )
        == 0
    ), env.out
    outputs.append(env.out)
    keystore = load_keystore(ks, KeystoreUnlock.from_passphrase_file(env.path / "pass"))
    assert len(keystore) == 8 and keystore.master_card is not None

    assert env.run("sim", "new-blank-psam", "--out", env.path / "psam.json") == 0
    env.insert_psam()
    assert (
        env.run(
            "keys",
            "load-psam",
            "--reader",
            env.master_reader,
            "--psam-reader",
            env.psam_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "pos",
        )
        == 0
    ), env.out
    assert "8 keys" in env.out
    outputs.append(env.out)
    assert env.run("keys", "versions", "--reader", env.psam_reader) == 0, env.out
    assert "PSAM" in env.out and "key versions: 1, 2" in env.out
    psam_table = env.out
    outputs.append(env.out)
    assert env.run("keys", "versions", "--keystore", ks, "--passphrase-file", env.path / "pass") == 0, env.out
    assert "loaded from the key master card of enterprise 00010001" in env.out
    # The same KCVs in the PSAM and in the keystore; the keystore's LOAD also has `subsidy`, which a PSAM never gets.
    keystore_rows = [re.sub(r"reversal,subsidy\b", "reversal", row) for row in env.out.splitlines()[-8:]]
    assert any("reversal,subsidy" in row for row in env.out.splitlines()[-8:])
    assert sorted(" ".join(r.split()) for r in keystore_rows) == sorted(
        " ".join(r.split()) for r in psam_table.splitlines()[-8:]
    )
    outputs.append(env.out)

    # 二次洗卡: version 3 reaches the keystore only from the master card.
    assert env.run("keys", "generate-version", "--reader", env.master_reader, "--pin-file", env.path / "pin") == 0
    assert (
        env.run(
            "keys",
            "add-version",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "pos",
            "--keystore",
            ks,
            "--passphrase-file",
            env.path / "pass",
        )
        == 0
    ), env.out
    assert "4 keys added" in env.out
    outputs.append(env.out)
    for text in outputs:
        for key in env.keys_hex():
            assert key not in text.lower()


def test_add_version_refuses_a_keystore_not_loaded_from_the_master_card(env):
    create(env)
    env.insert_master()
    ks = env.path / "plain.ks"
    assert (
        env.run(
            "sam", "create-keystore", "--out", ks, "--passphrase-file", env.path / "pass", "--enterprise", "00010001"
        )
        == 0
    )
    assert (
        env.run(
            "keys",
            "add-version",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "pos",
            "--keystore",
            ks,
            "--passphrase-file",
            env.path / "pass",
        )
        == 1
    )
    assert "was not loaded from a key master card" in env.error


def test_wrong_pin_says_tries_left_and_a_blocked_card_says_what_to_do(env):
    create(env)
    env.insert_master()
    for left in ("2 tries left", "1 try left", "that was the last of 3 tries and the card is now blocked for good"):
        assert env.run("keys", "inspect", "--reader", env.master_reader, "--pin-file", env.path / "wrong") == 1
        assert left in env.error and "0 tries" not in env.error
    # A blocked card is reported, and the exit code says it is not usable.
    assert env.run("keys", "inspect", "--reader", env.master_reader) == 1
    assert "BLOCKED" in env.out and "onecard sim restore-master-card" in env.out
    for argv in (
        ("generate-version", "--reader", env.master_reader, "--pin-file", env.path / "pin"),
        (
            "change-pin",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--new-pin-file",
            env.path / "pin",
        ),
        (
            "load-keystore",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "door",
            "--out",
            env.path / "x.ks",
            "--passphrase-file",
            env.path / "pass",
        ),
    ):
        assert env.run("keys", *argv) == 1
        assert "blocked" in env.error and "onecard sim restore-master-card" in env.error


def test_load_psam_refuses_a_master_card_of_another_enterprise(env):
    create(env, "00010001", "a.json")
    create(env, "00020002", "b.json")
    assert env.run("sim", "new-blank-psam", "--out", env.path / "psam.json") == 0
    env.insert_psam()
    env.insert_master("a.json")
    assert (
        env.run(
            "keys",
            "load-psam",
            "--reader",
            env.master_reader,
            "--psam-reader",
            env.psam_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "door",
        )
        == 0
    ), env.out
    env.insert_master("b.json")
    assert (
        env.run(
            "keys",
            "load-psam",
            "--reader",
            env.master_reader,
            "--psam-reader",
            env.psam_reader,
            "--pin-file",
            env.path / "pin",
            "--role",
            "door",
        )
        == 1
    )
    assert "enterprise mismatch" in env.error and "00010001" in env.error and "00020002" in env.error


def test_backup_restore_and_change_pin(env):
    create(env)
    env.insert_master()
    assert (
        env.run("keys", "new-backup-recipient", "--out-private", env.path / "r.key", "--out-public", env.path / "r.pub")
        == 0
    )
    assert "KEEP THIS" in env.out and "r.key" in env.out
    assert (
        env.run(
            "keys",
            "backup",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--recipient-key",
            env.path / "r.pub",
            "--out",
            env.path / "backup.bin",
        )
        == 0
    ), env.out
    assert "KEEP THIS" in env.out
    assert (
        env.run(
            "keys",
            "backup",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin",
            "--recipient-key",
            env.path / "r.pub",
            "--out",
            env.path / "backup.bin",
        )
        == 2
    )
    assert "already exists" in env.out
    assert env.run("keys", "inspect", "--reader", env.master_reader) == 0
    original = env.stdout.splitlines()[-13:]  # header + 12 keys
    (env.path / "pin2").write_text("97531864\n")
    assert (
        env.run(
            "sim",
            "restore-master-card",
            "--backup",
            env.path / "backup.bin",
            "--recipient-private-key",
            env.path / "r.key",
            "--pin-file",
            env.path / "pin2",
            "--out",
            env.path / "restored.json",
        )
        == 0
    ), env.out
    env.insert_master("restored.json")
    assert env.run("keys", "inspect", "--reader", env.master_reader, "--pin-file", env.path / "pin2") == 0, env.out
    assert env.stdout.splitlines()[-13:] == original  # same keys, same KCVs
    assert (
        env.run(
            "keys",
            "change-pin",
            "--reader",
            env.master_reader,
            "--pin-file",
            env.path / "pin2",
            "--new-pin-file",
            env.path / "pin",
        )
        == 0
    ), env.out
    assert "KEEP THIS" in env.out
    assert env.run("keys", "inspect", "--reader", env.master_reader, "--pin-file", env.path / "pin") == 0, env.out
    for key in env.keys_hex():
        assert key not in (env.path / "backup.bin").read_bytes().hex()


def test_a_retired_version_leaves_the_psam_only_when_no_card_uses_it(env):
    create(env)
    env.insert_master()
    assert env.run("keys", "generate-version", "--reader", env.master_reader, "--pin-file", env.path / "pin") == 0
    assert env.run("sim", "new-blank-psam", "--out", env.path / "psam.json") == 0
    env.insert_psam()
    load = (
        "keys",
        "load-psam",
        "--reader",
        env.master_reader,
        "--psam-reader",
        env.psam_reader,
        "--pin-file",
        env.path / "pin",
        "--role",
        "door",
    )
    assert env.run(*load) == 0, env.out
    (env.path / "busy.json").write_text(json.dumps({"00010001": {"1": 2, "2": 5}}))
    (env.path / "done.json").write_text(json.dumps({"00010001": {"2": 7}}))

    # Not without the platform's report, and not while the report counts cards on version 1.
    assert env.run(*load, "--retire-below", "2") == 2 and "--key-versions REPORT" in env.error
    assert env.run(*load, "--retire-below", "2", "--key-versions", env.path / "busy.json") == 1
    assert "version 1: 2 card(s)" in env.error and "--retire-although-cards-use-it" in env.error
    assert env.run("keys", "versions", "--reader", env.psam_reader) == 0 and "key versions: 1, 2" in env.out

    assert env.run(*load, "--retire-below", "2", "--key-versions", env.path / "done.json") == 0, env.out
    assert "key versions below 2 retired" in env.out
    assert env.run("keys", "versions", "--reader", env.psam_reader) == 0 and "key versions: 2" in env.out
    # In the PSAM's EEPROM too: the version-1 ACCESS key is gone, so a version-1 card is refused at the door.
    held = json.loads((env.path / "psam.json").read_text())["keys"]
    assert held and all(k["version"] == 2 for k in held)
