"""The terminal's own files: an empty, truncated, foreign or garbage database stops the terminal, its sync agent and
`onecard log` at start with one line naming the file and the fix, and the file is left byte for byte as it was."""
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_cli import one_error_line, onecard, site, write_config  # noqa: F401  (site is a fixture)
from terminal.blacklist import Blacklist
from terminal.event_log import EventLog

TERMINAL = "000000000101"


def sync_config(site: Path, tmp: Path, name: str = "sync.toml") -> Path:
    """A door configuration whose files live in `tmp`, with a [sync] section (the agent never gets to connect)."""
    key = Ed25519PrivateKey.generate().public_key()
    (tmp / "platform.pub").write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    cfg = write_config(site, name, database=f'"{tmp / "events.db"}"', blacklist=f'"{tmp / "bl.db"}"')
    text = cfg.read_text() + f"""[sync]
broker_host = "127.0.0.1"
broker_port = 1
ca_file = "{tmp / 'ca.pem'}"
cert_file = "{tmp / 'cert.pem'}"
key_file = "{tmp / 'key.pem'}"
platform_public_key = "{tmp / 'platform.pub'}"
database = "{tmp / 'sync.db'}"
"""
    cfg.write_text(text)
    return cfg


def real_files(tmp: Path) -> None:
    """The three databases as a running terminal and agent leave them."""
    from sync_agent.store import SyncStore
    import datetime as dt

    with EventLog.open(tmp / "events.db", TERMINAL) as log:
        log.append(dt.datetime(2026, 1, 5, 8, tzinfo=dt.timezone.utc), "door.grant", asn="0102030405060708",
                   reason_code="granted", message="Welcome", detail={})
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
        path.write_bytes(data[:4096 + 100])
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
WORDS = {"empty": "is empty (0 bytes)", "truncated": "is truncated", "header only": "is truncated",
         "garbage": "not an SQLite file", "foreign": "not a onecard"}


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
        one_error_line(onecard("log", command, "--db", tmp_path / "events.db"), str(tmp_path / "events.db"),
                       WORDS[how])
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
