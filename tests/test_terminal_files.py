"""The terminal's own files: an empty, truncated, foreign or garbage database stops the terminal, its sync agent and
`onecard log` at start with one line naming the file and the fix, and the file is left byte for byte as it was."""

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.blacklist import Blacklist
from terminal.event_log import EventLog
from tests.test_cli import one_error_line, onecard, site, write_config  # noqa: F401  (site is a fixture)

TERMINAL = "000000000101"


def sync_config(site: Path, tmp: Path, name: str = "sync.toml") -> Path:
    """A door configuration whose files live in `tmp`, with a [sync] section (the agent never gets to connect)."""
    key = Ed25519PrivateKey.generate().public_key()
    (tmp / "platform.pub").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cfg = write_config(site, name, database=f'"{tmp / "events.db"}"', blacklist=f'"{tmp / "bl.db"}"')
    text = (
        cfg.read_text()
        + f"""[sync]
broker_host = "127.0.0.1"
broker_port = 1
ca_file = "{tmp / "ca.pem"}"
cert_file = "{tmp / "cert.pem"}"
key_file = "{tmp / "key.pem"}"
platform_public_key = "{tmp / "platform.pub"}"
database = "{tmp / "sync.db"}"
"""
    )
    cfg.write_text(text)
    return cfg


def real_files(tmp: Path) -> None:
    """The three databases as a running terminal and agent leave them."""
    import datetime as dt

    from sync_agent.store import SyncStore

    with EventLog.open(tmp / "events.db", TERMINAL) as log:
        log.append(
            dt.datetime(2026, 1, 5, 8, tzinfo=dt.timezone.utc),
            "door.grant",
            asn="0102030405060708",
            reason_code="granted",
            message="Welcome",
            detail={},
        )
    with Blacklist.open(tmp / "bl.db") as bl:
        bl.apply_snapshot(3, [(bytes(range(1, 9)), "lost")])
    SyncStore.open(tmp / "sync.db", TERMINAL).close()


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix != ".toml"}


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: 4096 + 100])
    elif how == "header only":
        path.write_bytes(data[:60])
    elif how == "garbage":
        path.write_bytes(b"this is not a database at all\n" * 50)
    else:  # foreign: somebody else's SQLite file
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE contacts (name TEXT)")
        conn.commit()
        conn.close()


HOW = ["empty", "truncated", "header only", "garbage", "foreign"]
WORDS = {
    "empty": "is empty (0 bytes)",
    "truncated": "is truncated",
    "header only": "is truncated",
    "garbage": "not an SQLite file",
    "foreign": "not a onecard",
}


@pytest.mark.parametrize("file", ["events.db", "bl.db", "sync.db"])
@pytest.mark.parametrize("how", HOW)
def test_terminal_and_agent_refuse_a_damaged_database_untouched(site, tmp_path, file, how):  # noqa: F811
    cfg = sync_config(site, tmp_path)
    real_files(tmp_path)
    damage(tmp_path / file, how)
    before = files_in(tmp_path)
    for command in (("terminal", "run"), ("sync", "run")):
        line = one_error_line(onecard(*command, "--config", cfg), str(tmp_path / file), WORDS[how])
        assert files_in(tmp_path) == before, (command, line)  # byte-identical, and no -wal/-shm appeared
        if how in ("empty", "truncated"):
            assert "delete it if this is a new install" in line


@pytest.mark.parametrize("how", ["empty", "truncated", "header only", "garbage"])
def test_log_commands_refuse_a_damaged_log_untouched(site, tmp_path, how):  # noqa: F811
    real_files(tmp_path)
    damage(tmp_path / "events.db", how)
    before = files_in(tmp_path)
    for command in ("show", "verify"):
        one_error_line(onecard("log", command, "--db", tmp_path / "events.db"), str(tmp_path / "events.db"), WORDS[how])
    assert files_in(tmp_path) == before


def test_a_new_install_creates_its_files(site, tmp_path):  # noqa: F811
    from sync_agent.store import SyncStore

    cfg = sync_config(site, tmp_path)
    r = onecard("terminal", "check-config", "--config", cfg)
    assert r.returncode == 0, r.stderr
    with EventLog.open(tmp_path / "events.db", TERMINAL) as log, Blacklist.open(tmp_path / "bl.db") as bl:
        assert log.last_seq() == 0 and bl.version() == 0
    store = SyncStore.open(tmp_path / "sync.db", TERMINAL)
    assert store.acked()[0] == 0
    store.close()


def test_sync_db_of_another_terminal_is_refused_at_terminal_start(site, tmp_path):  # noqa: F811
    from sync_agent.store import SyncStore

    cfg = sync_config(site, tmp_path)
    SyncStore.open(tmp_path / "sync.db", "000000000999").close()
    before = files_in(tmp_path)
    one_error_line(onecard("terminal", "run", "--config", cfg), "belongs to terminal '000000000999'")
    assert files_in(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# firmware.toml and platform documents: every unknown key or section is an error with the nearest valid name
# ---------------------------------------------------------------------------------------------

FULL = (Path(__file__).resolve().parent.parent / "firmware.toml").read_text()


@pytest.mark.parametrize(
    "edit, words",
    [
        (("group = 1", "grup = 3"), ["[door].grup is not a known key", "did you mean 'group'?"]),
        (('max_purchase = "100.00"', 'max_purchse = "5.00"'), ["[pos].max_purchse", "did you mean 'max_purchase'?"]),
        (("[topup]", "[topupp]"), ["[topupp] is not a known section", "did you mean 'topup'?"]),
        (("[output]", "[lights]"), ["[lights] is not a known section", "remove it or use one of"]),
        (('timezone = "Asia/Shanghai"', 'time_zone = "Asia/Shanghai"'), ["[terminal].time_zone", "'timezone'"]),
        (('driver = "pcsc"', 'drver = "pcsc"\ndriver = "pcsc"'), ["[reader].drver", "'driver'"]),
        (('backend = "keystore"', 'backend = "keystore"\nkeystor = "x"'), ["[sam].keystor", "'keystore'"]),
        (("open_seconds = 5", "open_seconds = 5\nopen_second = 9"), ["[door].open_second", "'open_seconds'"]),
        (("repeat_window_seconds = 60", "repeat_window_secs = 60"), ["[attendance].repeat_window_secs"]),
        (('max_load = "1000.00"', 'maxload = "1000.00"'), ["[topup].maxload", "'max_load'"]),
        (("color = true", "colour = true"), ["[output].colour", "'color'"]),
        (
            ('name = "office hours"', 'name = "office hours"\nmonday = ["07:00-09:00"]'),
            ["[time_profiles.1].monday", "'mon'"],
        ),
        (("batch_size = 500", "batch_sise = 500"), ["[sync].batch_sise", "'batch_size'"]),
        (("# onecard terminal", "grup = 3\n# onecard terminal"), ["[grup] is not a known key outside any section"]),
    ],
)
def test_typos_in_firmware_toml_are_errors_naming_the_nearest_key(tmp_path, edit, words):
    old, new = edit
    assert old in FULL
    (tmp_path / "f.toml").write_text(FULL.replace(old, new, 1))
    one_error_line(
        onecard("terminal", "check-config", "--config", tmp_path / "f.toml"), str(tmp_path / "f.toml"), *words
    )


def test_documented_firmware_toml_passes_check_config():
    r = onecard("terminal", "check-config", "--config", Path(__file__).resolve().parent.parent / "firmware.toml")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "document, words",
    [
        ({"doors": {"000000000101": {"grup": 3}}}, ["doors.000000000101].grup", "'group'"]),
        ({"doors": {"000000000999": {"group": 99}}}, ["doors.000000000999].group", "1 to 64"]),  # another door's entry
        ({"doors": {"door-1": {"group": 3}}}, ["doors.door-1 is not a terminal ID"]),
        ({"pos": {"max_purchse": "5.00"}}, ["[pos].max_purchse", "'max_purchase'"]),
        ({"topupp": {"max_load": "5.00"}}, ["unknown section 'topupp'", "'topup'"]),
        ({"time_profiles": {"1": {"mon": ["07:00-09:00"], "tues": []}}}, ["[time_profiles.1].tues", "'tue'"]),
    ],
)
def test_platform_documents_are_validated_like_firmware_toml(document, words):
    from common.config import ConfigError, validate_platform_document

    with pytest.raises(ConfigError) as info:
        validate_platform_document(document)
    for w in words:
        assert w in str(info.value)


def test_publish_config_refuses_a_document_terminals_would_refuse(tmp_path):
    import json

    db, key = tmp_path / "platform.db", tmp_path / "platform.key"
    assert onecard("platform", "init", "--db", db, "--key", key).returncode == 0
    assert onecard("platform", "add-enterprise", "00010001", "--name", "Acme", "--db", db, "--key", key).returncode == 0
    doc = tmp_path / "config.json"
    doc.write_text(json.dumps({"doors": {"000000000101": {"grup": 3}}}))
    before = db.read_bytes()
    one_error_line(
        onecard("platform", "publish-config", "--enterprise", "00010001", doc, "--db", db, "--key", key),
        "doors.000000000101].grup is not a known key",
        "did you mean 'group'?",
        "nothing was queued",
    )
    assert db.read_bytes() == before
    doc.write_text(json.dumps({"doors": {"000000000101": {"group": 3}}}))
    r = onecard("platform", "publish-config", "--enterprise", "00010001", doc, "--db", db, "--key", key)
    assert r.returncode == 0 and "configuration version 1 queued" in r.stdout, r.stderr
