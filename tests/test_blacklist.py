"""terminal.blacklist: snapshots and deltas, version rules, atomic replacement seen by a concurrent reader."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest

from common.db import DatabaseError
from terminal.blacklist import (
    Blacklist,
    BlacklistEntry,
    BlacklistRollbackError,
    BlacklistVersionError,
)
from terminal.event_log import EventLog


def asns(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(8) for _ in range(n)]


A = bytes.fromhex("0102030405060708")
B = bytes.fromhex("1122334455667788")
C = bytes.fromhex("A1A2A3A4A5A6A7A8")


@pytest.fixture
def bl(tmp_path):
    with Blacklist.open(tmp_path / "bl.db") as b:
        yield b


def test_new_blacklist_is_empty_at_version_zero(bl):
    assert (bl.version(), bl.count(), bl.lookup(A)) == (0, 0, None)


def test_snapshot_then_lookup(bl):
    assert bl.apply_snapshot(3, [(A, "lost"), BlacklistEntry(B, "cancelled", 2), (C, "frozen", 1)]) == 3
    assert (bl.version(), bl.count()) == (3, 3)
    assert bl.lookup(A) == BlacklistEntry(A, "lost", 3)
    assert bl.lookup(B) == BlacklistEntry(B, "cancelled", 2)
    assert bl.lookup(C).reason == "frozen"  # reasons beyond the known ones are kept
    assert bl.lookup(bytes(8)) is None


def test_snapshot_replaces_everything(bl):
    bl.apply_snapshot(1, [(A, "lost"), (B, "lost")])
    bl.apply_snapshot(2, [(C, "damaged")])
    assert (bl.lookup(A), bl.lookup(B), bl.lookup(C).reason, bl.count()) == (None, None, "damaged", 1)


def test_snapshot_with_duplicates_keeps_the_last(bl):
    bl.apply_snapshot(1, [(A, "lost"), (A, "cancelled")])
    assert bl.lookup(A).reason == "cancelled" and bl.count() == 1


def test_same_version_snapshot_is_allowed_older_is_refused(bl):
    bl.apply_snapshot(5, [(A, "lost")])
    bl.apply_snapshot(5, [(A, "lost"), (B, "lost")])  # re-applying the current version repairs a list
    with pytest.raises(BlacklistRollbackError, match="older"):
        bl.apply_snapshot(4, [])
    assert (bl.version(), bl.count()) == (5, 2)


def test_delta_adds_and_removes(bl):
    bl.apply_snapshot(1, [(A, "lost"), (B, "lost")])
    assert bl.apply_delta(1, 2, added=[(C, "cancelled"), (B, "replaced")], removed=[A]) == 2
    assert bl.version() == 2
    assert bl.lookup(A) is None
    assert bl.lookup(B) == BlacklistEntry(B, "replaced", 2)
    assert bl.lookup(C) == BlacklistEntry(C, "cancelled", 2)
    bl.apply_delta(2, 3, added=[], removed=[bytes(8)])  # removing an unlisted card changes nothing
    assert (bl.version(), bl.count()) == (3, 2)


def test_delta_with_a_gap_raises_version_error_and_changes_nothing(bl):
    bl.apply_snapshot(1, [(A, "lost")])
    with pytest.raises(BlacklistVersionError, match="fetch a full snapshot") as info:
        bl.apply_delta(2, 3, added=[(B, "lost")], removed=[A])
    assert not isinstance(info.value, BlacklistRollbackError)
    assert (bl.version(), bl.count(), bl.lookup(A).reason, bl.lookup(B)) == (1, 1, "lost", None)


@pytest.mark.parametrize("base, new", [(4, 4), (4, 3), (2, 3)])
def test_delta_rollback_or_replay_is_refused(bl, base, new):
    bl.apply_snapshot(4, [(A, "lost")])
    with pytest.raises(BlacklistRollbackError, match="refused"):
        bl.apply_delta(base, new, added=[], removed=[A])
    assert (bl.version(), bl.lookup(A).reason) == (4, "lost")


def test_rollback_error_is_a_version_error():
    assert issubclass(BlacklistRollbackError, BlacklistVersionError)


def test_delta_adding_and_removing_the_same_card_is_refused(bl):
    bl.apply_snapshot(1, [(A, "lost")])
    with pytest.raises(ValueError, match="both adds and removes"):
        bl.apply_delta(1, 2, added=[(B, "lost")], removed=[B])
    assert bl.version() == 1 and bl.lookup(B) is None


@pytest.mark.parametrize("bad", [(b"short", "lost"), ("0102030405060708", "lost"), (A, ""), (A, "lost", 9)])
def test_bad_snapshot_entry_rolls_back_the_whole_snapshot(bl, bad):
    bl.apply_snapshot(2, [(A, "lost")])
    good = [(x, "lost") for x in asns(25_000, seed=1)]
    with pytest.raises(ValueError):
        bl.apply_snapshot(3, good + [bad])  # the bad entry arrives after a few executemany chunks
    assert (bl.version(), bl.count(), bl.lookup(A).reason, bl.lookup(good[0][0])) == (2, 1, "lost", None)


@pytest.mark.parametrize("asn", [b"\x01" * 7, b"\x01" * 9, "0102030405060708", None])
def test_lookup_requires_eight_bytes(bl, asn):
    with pytest.raises(ValueError):
        bl.lookup(asn)


def test_state_persists_across_reopen(tmp_path):
    path = tmp_path / "bl.db"
    with Blacklist.open(path) as bl:
        bl.apply_snapshot(7, [(A, "lost")])
        bl.apply_delta(7, 8, added=[(B, "damaged")], removed=[])
    with Blacklist.open(path) as bl:
        assert (bl.version(), bl.count(), bl.lookup(B)) == (8, 2, BlacklistEntry(B, "damaged", 8))


def test_snapshot_of_100k_entries(bl):
    cards = asns(100_000, seed=7)
    assert bl.apply_snapshot(1, ((a, "lost") for a in cards)) == 100_000
    assert bl.count() == 100_000
    rng = random.Random(3)
    for a in rng.sample(cards, 1000):
        assert bl.lookup(a) == BlacklistEntry(a, "lost", 1)
    for a in asns(1000, seed=99):
        assert bl.lookup(a) is None


def test_storage_and_pragmas(bl):
    conn = bl._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'blacklist'").fetchone()[0]
    assert "WITHOUT ROWID" in sql
    plan = " ".join(
        r[3]
        for r in conn.execute("EXPLAIN QUERY PLAN SELECT reason, listed_in_version FROM blacklist WHERE asn = ?", (A,))
    )
    assert "SEARCH blacklist USING PRIMARY KEY (asn=?)" in plan


# ---------------------------------------------------------------------------------------------
# A reader never sees half a snapshot
# ---------------------------------------------------------------------------------------------

OLD, NEW = asns(30_000, seed=11), asns(30_000, seed=12)


def check_consistent(reader: Blacklist, sample_old: list[bytes], sample_new: list[bytes]) -> int:
    """Read version, count and lookups in one read transaction; they must describe one version."""
    with reader.read_transaction():
        version, count = reader.version(), reader.count()
        old_hits = sum(reader.lookup(a) is not None for a in sample_old)
        new_hits = sum(reader.lookup(a) is not None for a in sample_new)
    expected = {1: (len(OLD), len(sample_old), 0), 2: (len(NEW), 0, len(sample_new))}[version]
    assert (count, old_hits, new_hits) == expected, f"mixed state at version {version}"
    return version


def test_reader_during_snapshot_sees_the_old_version_until_commit(tmp_path):
    path = tmp_path / "bl.db"
    writer = Blacklist.open(path)
    writer.apply_snapshot(1, [(a, "lost") for a in OLD])
    reader = Blacklist.open(path)  # second connection, as the terminal process has
    sample_old, sample_new = OLD[::300], NEW[::300]
    seen_mid_apply = []

    def new_entries():
        for i, a in enumerate(NEW):
            if i in (1, 15_000, len(NEW) - 1):  # the writer's transaction is open and has written rows
                seen_mid_apply.append(check_consistent(reader, sample_old, sample_new))
            yield a, "cancelled"

    writer.apply_snapshot(2, new_entries())
    assert seen_mid_apply == [1, 1, 1]
    assert check_consistent(reader, sample_old, sample_new) == 2
    reader.close()
    writer.close()


def test_concurrent_reader_thread_never_sees_a_mix(tmp_path):
    path = tmp_path / "bl.db"
    with Blacklist.open(path) as writer:
        writer.apply_snapshot(1, [(a, "lost") for a in OLD])
        stop = threading.Event()
        seen: list[int] = []
        errors: list[BaseException] = []

        def read_loop():
            try:
                with Blacklist.open(path) as reader:  # sqlite3 connections stay in the thread that made them
                    while not stop.is_set():
                        seen.append(check_consistent(reader, OLD[::1000], NEW[::1000]))
                    seen.append(check_consistent(reader, OLD[::1000], NEW[::1000]))
            except BaseException as exc:  # surface assertion failures in the main thread
                errors.append(exc)

        t = threading.Thread(target=read_loop)
        t.start()
        writer.apply_snapshot(2, [(a, "cancelled") for a in NEW])
        stop.set()
        t.join()
    assert not errors, errors[0]
    assert seen and seen[-1] == 2 and seen == sorted(seen)


# ---------------------------------------------------------------------------------------------
# Files that are not a blacklist
# ---------------------------------------------------------------------------------------------


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_event_log_file_is_not_a_blacklist(tmp_path):
    path = tmp_path / "events.db"
    EventLog.open(path, "T1").close()
    before = files_in(tmp_path)
    with pytest.raises(DatabaseError, match=r"not a onecard blacklist database .*point \[terminal\].blacklist"):
        Blacklist.open(path)
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("keep", [0, 50, 4096 * 2])
def test_empty_or_truncated_blacklist_is_refused_untouched(tmp_path, keep):
    # A 0-byte blacklist used to be replaced by an empty list: every lost card admitted until the next sync.
    path = tmp_path / "bl.db"
    with Blacklist.open(path) as bl:
        bl.apply_snapshot(7, ((bytes([i]) * 8, "lost", 7) for i in range(1, 200)))
    path.write_bytes(path.read_bytes()[:keep])
    before = files_in(tmp_path)
    with pytest.raises(DatabaseError, match=r"is (empty|truncated).*delete it if this is a new install") as info:
        Blacklist.open(path)
    assert files_in(tmp_path) == before and str(path) in str(info.value) and "\n" not in str(info.value)


def test_absent_blacklist_is_created_empty(tmp_path):
    with Blacklist.open(tmp_path / "bl.db") as bl:
        assert bl.version() == 0


def test_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "bl.db"
    path.write_bytes(bytes(range(256)) * 20)
    before = files_in(tmp_path)
    with pytest.raises(DatabaseError, match="not an SQLite file"):
        Blacklist.open(path)
    assert files_in(tmp_path) == before


def test_unknown_blacklist_schema_is_refused(tmp_path):
    path = tmp_path / "bl.db"
    Blacklist.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE bl_meta SET schema_version = 2")
    conn.commit()
    conn.close()
    before = files_in(tmp_path)
    with pytest.raises(DatabaseError, match="schema version 2.*next sync fetches a snapshot"):
        Blacklist.open(path)
    assert files_in(tmp_path) == before
