"""terminal.event_log and terminal.log_cli: the hash chain catches every single alteration, appends survive SIGKILL,
bad files are refused without being touched."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.db import DatabaseError
from common.events import GENESIS_HASH, event_hash
from terminal import log_cli
from terminal.event_log import EventLog

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 5, 1, 0, 30, tzinfo=timezone.utc)
ASNS = ["0102030405060708", "1122334455667788", None]
KINDS = ["door.grant", "door.deny", "attendance.in", "attendance.out", "tap.incomplete"]
N = 12  # records in the chain the property tests tamper with
FIELDS = ["time", "kind", "asn", "reason_code", "message", "detail", "prev_hash", "hash"]
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fill(log: EventLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.append(
            T0 + timedelta(minutes=i),
            KINDS[i % len(KINDS)],
            asn=ASNS[i % len(ASNS)],
            reason_code="ok" if i % 2 else "blacklisted",
            message=f"Tap {i}: 欢迎",
            detail={"i": i, "door": "1F", "nested": {"b": [1, 2], "a": None}},
        )


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def chain_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chain") / "events.db"
    with EventLog.open(path, "T-0001") as log:
        fill(log, N)
    assert not Path(f"{path}-wal").exists()  # closed cleanly: the file is self-contained, safe to copy
    return path


def tampered_copy(chain_file: Path, sql: list[tuple[str, tuple]]) -> Path:
    """A copy of the chain with raw SQL applied (as someone with write access to the file could)."""
    path = Path(tempfile.mkdtemp(prefix="tamper-")) / "events.db"
    shutil.copy(chain_file, path)
    conn = sqlite3.connect(path)
    for statement, params in sql:
        conn.execute(statement, params)
    conn.commit()
    conn.close()
    return path


def verify(path: Path):
    with EventLog.open_readonly(path) as log:
        report = log.verify()
    shutil.rmtree(path.parent)
    return report


def row(chain_file: Path, seq: int) -> dict:
    conn = sqlite3.connect(f"file:{chain_file}?immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    r = dict(conn.execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone())
    conn.close()
    return r


# ---------------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------------


def test_untampered_chain_verifies(chain_file):
    with EventLog.open_readonly(chain_file) as log:
        report = log.verify()
        events = log.events()
    assert report.ok and report.checked == N and report.first_bad_seq is None and report.problem == ""
    assert report.head_seq == N and report.head_hash == events[-1].hash
    assert [e.seq for e in events] == list(range(1, N + 1))
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))


def test_empty_and_single_record_chains(tmp_path):
    with EventLog.open(tmp_path / "e.db", "T1") as log:
        report = log.verify()
        assert (report.ok, report.checked, report.first_bad_seq, report.head_seq, report.head_hash) == (
            True,
            0,
            None,
            0,
            GENESIS_HASH,
        )
        assert log.events() == [] and log.last_seq() == 0
        e = log.append(T0, "door.grant", asn=None, reason_code="ok", message="hi", detail={})
        assert (e.seq, e.prev_hash) == (1, GENESIS_HASH)
        report = log.verify()
        assert (report.ok, report.checked, report.head_seq, report.head_hash) == (True, 1, 1, e.hash)


@HYP
@given(data=st.data())
def test_any_changed_field_is_detected_at_that_record(chain_file, data):
    seq = data.draw(st.integers(1, N), label="seq")
    field = data.draw(st.sampled_from(FIELDS), label="field")
    old = row(chain_file, seq)[field]
    new_values = st.text(max_size=30)
    if field == "asn":
        new_values = new_values | st.none()
    new = data.draw(new_values.filter(lambda v: v != old), label="new")
    path = tampered_copy(chain_file, [(f"UPDATE events SET {field} = ? WHERE seq = ?", (new, seq))])
    report = verify(path)
    assert not report.ok
    assert report.first_bad_seq == seq, report.problem
    assert report.checked == seq - 1
    assert f"seq {seq}" in report.problem


@HYP
@given(seq=st.integers(1, N))
def test_deleted_record_is_detected(chain_file, seq):
    report = verify(tampered_copy(chain_file, [("DELETE FROM events WHERE seq = ?", (seq,))]))
    assert not report.ok and report.first_bad_seq == seq, report.problem


@HYP
@given(pair=st.lists(st.integers(1, N), min_size=2, max_size=2, unique=True))
def test_swapped_records_are_detected(chain_file, pair):
    i, j = sorted(pair)
    # Swap everything but seq (seq is the order: swapping the seq numbers is the same thing).
    sql = [
        ("UPDATE events SET seq = -1 WHERE seq = ?", (i,)),
        ("UPDATE events SET seq = ? WHERE seq = ?", (i, j)),
        ("UPDATE events SET seq = ? WHERE seq = -1", (j,)),
    ]
    report = verify(tampered_copy(chain_file, sql))
    assert not report.ok and report.first_bad_seq == i, report.problem


@HYP
@given(bounds=st.lists(st.integers(1, N), min_size=2, max_size=2))
def test_truncated_range_is_detected(chain_file, bounds):
    lo, hi = sorted(bounds)
    report = verify(tampered_copy(chain_file, [("DELETE FROM events WHERE seq BETWEEN ? AND ?", (lo, hi))]))
    assert not report.ok and report.first_bad_seq == lo, report.problem


@HYP
@given(lo=st.integers(2, N - 1))
def test_renumbered_truncation_is_detected(chain_file, lo):
    # Delete the middle and shift the rest down so seqs look contiguous: seq is hashed, so it shows.
    sql = [("DELETE FROM events WHERE seq = ?", (lo,)), ("UPDATE events SET seq = seq - 1 WHERE seq > ?", (lo,))]
    report = verify(tampered_copy(chain_file, sql))
    assert not report.ok and report.first_bad_seq == lo, report.problem


def test_forged_record_appended_is_detected(chain_file):
    last = row(chain_file, N)
    seq, time = N + 1, "2024-05-02T00:00:00.000000Z"
    forged = (seq, time, "door.grant", None, "ok", "forged", "{}", last["hash"])
    h = event_hash(seq, time, "T-0001", "door.grant", None, "ok", "forged", "{}", last["hash"])
    report = verify(tampered_copy(chain_file, [("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", (*forged, h))]))
    assert not report.ok and report.first_bad_seq == N + 1, report.problem


def test_inserted_record_with_gap_seq_is_detected(chain_file):
    report = verify(
        tampered_copy(
            chain_file,
            [("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", (N + 5, "t", "k", None, "r", "m", "{}", "00", "00"))],
        )
    )
    assert not report.ok and report.first_bad_seq == N + 1, report.problem


def test_changed_terminal_id_breaks_the_first_record(chain_file):
    report = verify(tampered_copy(chain_file, [("UPDATE meta SET terminal_id = 'T-9999'", ())]))
    assert not report.ok and report.first_bad_seq == 1


def test_consistent_rewrite_passes_verify_but_changes_the_head(chain_file):
    """The documented limit: without a secret, whoever rewrites every later hash (and the head) is only caught
    by comparing the head with the one the platform acknowledged."""
    with EventLog.open_readonly(chain_file) as log:
        events, acknowledged_head = log.events(), log.verify().head_hash
    sql, prev = [], events[4].prev_hash
    for e in events[4:]:
        message = "rewritten" if e.seq == 5 else e.message
        h = event_hash(e.seq, e.time_text, "T-0001", e.kind, e.asn, e.reason_code, message, e.detail_json, prev)
        sql.append(("UPDATE events SET message = ?, prev_hash = ?, hash = ? WHERE seq = ?", (message, prev, h, e.seq)))
        prev = h
    sql.append(("UPDATE meta SET head_hash = ?", (prev,)))
    report = verify(tampered_copy(chain_file, sql))
    assert report.ok
    assert report.head_hash != acknowledged_head


def test_hash_follows_the_documented_encoding(chain_file):
    """An independent implementation of docs/event-log.md, byte by byte."""

    def text(s):
        return b"\xff\xff\xff\xff" if s is None else struct.pack(">I", len(s.encode())) + s.encode()

    import hashlib

    for seq in (1, 2, 3):
        r = row(chain_file, seq)
        encoded = (
            b"onecard.event.v1\x00"
            + struct.pack(">Q", seq)
            + text(r["time"])
            + text("T-0001")
            + text(r["kind"])
            + text(r["asn"])
            + text(r["reason_code"])
            + text(r["message"])
            + text(r["detail"])
            + bytes.fromhex(r["prev_hash"])
        )
        assert hashlib.sha256(encoded).hexdigest() == r["hash"]


def test_documented_test_vector():
    # The worked example in docs/event-log.md.
    assert (
        event_hash(
            1,
            "2024-05-01T00:30:00.000000Z",
            "000000000101",
            "door.grant",
            "0102030405060708",
            "ok",
            "Welcome, Li Lei",
            '{"door_group":1}',
            GENESIS_HASH,
        )
        == "cb6421d11b7e3408d051c562884131de667f82d47d7d328e9903e784a23fcb9f"
    )


# ---------------------------------------------------------------------------------------------
# Appending and reading
# ---------------------------------------------------------------------------------------------


def test_stored_forms(tmp_path):
    with EventLog.open(tmp_path / "e.db", "T1") as log:
        cst = timezone(timedelta(hours=8))
        e = log.append(
            datetime(2024, 5, 1, 8, 0, tzinfo=cst),
            "attendance.in",
            asn=bytes.fromhex("0a0b0c0d0e0f1011"),
            reason_code="ok",
            message="Clocked in",
            detail={"z": 1, "a": "é", "m": [True, None]},
        )
        r = log.db.execute("SELECT time, asn, detail FROM events").fetchone()
    assert r == ("2024-05-01T00:00:00.000000Z", "0A0B0C0D0E0F1011", '{"a":"é","m":[true,null],"z":1}')
    assert e.time == datetime(2024, 5, 1, 0, 0, tzinfo=timezone.utc) and e.time_text == r[0]
    assert e.detail == {"z": 1, "a": "é", "m": [True, None]}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"time": datetime(2024, 5, 1)}, ValueError),  # naive time
        ({"time": "2024-05-01T00:00:00Z"}, TypeError),
        ({"kind": ""}, ValueError),
        ({"kind": "   "}, ValueError),
        ({"asn": "0102"}, ValueError),
        ({"asn": "zz02030405060708"}, ValueError),
        ({"asn": b"\x01\x02"}, ValueError),
        ({"detail": ["not", "a", "dict"]}, TypeError),
        ({"detail": {"x": float("nan")}}, ValueError),
        ({"detail": {"x": object()}}, ValueError),
        ({"message": None}, TypeError),
    ],
)
def test_append_validates_and_writes_nothing(tmp_path, kwargs, error):
    args = {"time": T0, "kind": "door.grant", "asn": None, "reason_code": "ok", "message": "m", "detail": {}} | kwargs
    with EventLog.open(tmp_path / "e.db", "T1") as log:
        with pytest.raises(error):
            log.append(args.pop("time"), args.pop("kind"), **args)
        assert log.last_seq() == 0 and log.events() == []


def test_reopening_keeps_seq_monotonic_and_never_reuses(tmp_path):
    path = tmp_path / "e.db"
    with EventLog.open(path, "T1") as log:
        fill(log, 3)
    with EventLog.open(path, "T1") as log:
        e = log.append(T0, "door.grant", asn=None, reason_code="ok", message="m", detail={})
        assert e.seq == 4 and e.prev_hash == log.events()[2].hash
        assert log.verify().ok
    # Even if the newest record disappears, its seq is not handed out again (the head counter is in meta).
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM events WHERE seq = 4")
    conn.commit()
    conn.close()
    with EventLog.open(path, "T1") as log:
        assert log.append(T0, "door.grant", asn=None, reason_code="ok", message="m", detail={}).seq == 5
        report = log.verify()
        assert not report.ok and report.first_bad_seq == 4


def test_events_paging(chain_file):
    with EventLog.open_readonly(chain_file) as log:
        assert [e.seq for e in log.events(after_seq=5, limit=3)] == [6, 7, 8]
        assert [e.seq for e in log.events(after_seq=10)] == [11, 12]
        assert log.events(after_seq=N) == []
        assert log.last_seq() == N


def test_last_event_returns_the_newest_of_the_given_kinds(tmp_path):
    a, b = "0102030405060708", "1122334455667788"
    with EventLog.open(tmp_path / "e.db", "T1") as log:

        def add(minute, kind, asn):
            return log.append(T0 + timedelta(minutes=minute), kind, asn=asn, reason_code="ok", message="m", detail={})

        add(0, "attendance.in", a)
        out = add(1, "attendance.out", a)
        add(2, "attendance.in", b)
        add(3, "door.grant", a)
        add(4, "attendance.repeat", a)
        assert log.last_event(a, ("attendance.in", "attendance.out")) == out
        assert log.last_event(a.lower(), ("attendance.in",)).seq == 1
        assert log.last_event(bytes.fromhex(b), ("attendance.in", "attendance.out")).seq == 3
        assert log.last_event(b, ("attendance.out",)) is None
        assert log.last_event("FFFFFFFFFFFFFFFF", ("attendance.in",)) is None


def test_last_event_is_an_index_seek(tmp_path):
    with EventLog.open(tmp_path / "e.db", "T1") as log:
        plan = " ".join(
            r[3]
            for r in log.db.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM events WHERE asn = ? AND kind = ? ORDER BY seq DESC LIMIT 1",
                ("a", "b"),
            )
        )
    assert "events_asn_kind_seq (asn=? AND kind=?)" in plan and "TEMP B-TREE" not in plan and "SCAN" not in plan


def test_wal_and_synchronous_full_are_set(tmp_path):
    with EventLog.open(tmp_path / "e.db", "T1") as log:
        assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert log.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with EventLog.open(tmp_path / "e.db", "T1") as log:  # synchronous is per connection: set on every open
        assert log.db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_readonly_open_needs_no_terminal_id_and_refuses_appends(chain_file):
    before = files_in(chain_file.parent)
    with EventLog.open_readonly(chain_file) as log:
        assert log.terminal_id == "T-0001"
        with pytest.raises(DatabaseError, match="read-only"):
            log.append(T0, "door.grant", asn=None, reason_code="ok", message="m", detail={})
    assert files_in(chain_file.parent) == before  # no -wal/-shm left behind either


CHILD = """
import sys
from datetime import datetime, timedelta, timezone
from terminal.event_log import EventLog
log = EventLog.open(sys.argv[1], "T-CRASH")
start = log.last_seq()
print("ready", flush=True)
for i in range(5000):  # more than fit before the kill: it lands mid-append
    log.append(datetime(2024, 5, 1, tzinfo=timezone.utc) + timedelta(seconds=start + i), "door.grant",
               asn="0102030405060708", reason_code="ok", message="x" * (i % 50), detail={"i": i})
print("done", flush=True)
"""


def test_sigkill_during_appends_leaves_a_verifiable_chain(tmp_path):
    path = tmp_path / "crash.db"
    rng = random.Random(20240501)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    previous = 0
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        try:
            child.wait(timeout=rng.uniform(0.05, 0.4))  # a random moment during the appends
        except subprocess.TimeoutExpired:
            pass
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with EventLog.open(path, "T-CRASH") as log:  # what the terminal does on the next boot
            report = log.verify()
            seqs = [e.seq for e in log.events()]
            assert report.ok, report.problem
            assert seqs == list(range(1, len(seqs) + 1)) and log.last_seq() == len(seqs) == report.checked
            assert len(seqs) >= previous
            previous = len(seqs)


# ---------------------------------------------------------------------------------------------
# Refusing files that are not ours, without touching them
# ---------------------------------------------------------------------------------------------


def _refused(path: Path, match: str, terminal_id: str = "T1") -> str:
    before = files_in(path.parent)
    with pytest.raises(DatabaseError, match=match) as info:
        EventLog.open(path, terminal_id)
    assert files_in(path.parent) == before  # same bytes, and no -wal/-shm created
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "firmware.toml"
    path.write_bytes(b"[terminal]\nid = 'T1'\n" * 50)
    assert "point [terminal].database at the right file" in _refused(path, "not a onecard database")


def test_corrupt_database_is_refused_untouched(tmp_path):
    path = tmp_path / "e.db"
    with EventLog.open(path, "T1") as log:
        fill(log, 300)
    data = bytearray(path.read_bytes())
    page = 4096 * 9  # a b-tree page of the events table
    data[page + 8 : page + 208] = bytes(range(200))
    path.write_bytes(bytes(data))
    assert "restore from backup" in _refused(path, "is corrupt")


def test_truncated_database_is_refused_untouched(tmp_path):
    path = tmp_path / "e.db"
    with EventLog.open(path, "T1") as log:
        fill(log, 300)
    path.write_bytes(path.read_bytes()[: 4096 * 5])
    _refused(path, r"is truncated \(20480 bytes of the \d+ its header records\); keep it .*restore it from backup")


@pytest.mark.parametrize("keep", [0, 10, 99, 100, 4096 + 17])
def test_short_database_is_refused_untouched(tmp_path, keep):
    path = tmp_path / "e.db"
    with EventLog.open(path, "T1") as log:
        fill(log, 30)
    path.write_bytes(path.read_bytes()[:keep])
    message = _refused(path, "is empty|is truncated")
    assert "delete it if this is a new install" in message


def test_other_terminals_database_is_refused_untouched(tmp_path):
    path = tmp_path / "e.db"
    EventLog.open(path, "T-A").close()
    assert "belongs to terminal 'T-A'" in _refused(path, "belongs to terminal", terminal_id="T-B")


def test_unknown_schema_version_is_refused_untouched(tmp_path):
    path = tmp_path / "e.db"
    EventLog.open(path, "T1").close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET schema_version = 99")
    conn.commit()
    conn.close()
    _refused(path, "schema version 99")


def test_foreign_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.commit()
    conn.close()
    _refused(path, r"not a onecard terminal database \(no events, meta table\)")


def test_blacklist_database_is_not_an_event_log(tmp_path):
    from terminal.blacklist import Blacklist

    path = tmp_path / "bl.db"
    Blacklist.open(path).close()
    _refused(path, "not a onecard terminal database")


def test_directory_is_refused(tmp_path):
    with pytest.raises(DatabaseError, match="not a regular file"):
        EventLog.open(tmp_path, "T1")


def test_empty_file_is_refused_not_initialised(tmp_path):
    # A wiped log must not be replaced by a new one behind everybody's back: absent is new, empty is refused.
    path = tmp_path / "e.db"
    path.touch()
    message = _refused(path, r"is empty \(0 bytes\), so it was wiped or truncated")
    assert "delete it if this is a new install" in message
    path.unlink()
    with EventLog.open(path, "T1") as log:  # a genuinely new install: the file is created
        assert log.verify().ok


def test_readonly_open_of_missing_or_empty_file(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        EventLog.open_readonly(tmp_path / "nope.db")
    (tmp_path / "empty.db").touch()
    with pytest.raises(DatabaseError, match="is empty"):
        EventLog.open_readonly(tmp_path / "empty.db")


# ---------------------------------------------------------------------------------------------
# onecard log show / verify
# ---------------------------------------------------------------------------------------------


def test_cli_show_table_and_json(chain_file, capsys):
    assert log_cli.main(["show", "--db", str(chain_file), "--last", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "LOCAL", "TIME", "KIND", "ASN", "MESSAGE"]
    assert [ln.split()[0] for ln in lines[1:]] == ["11", "12"]
    assert "Tap 11: 欢迎" in lines[-1]
    assert log_cli.main(["show", "--db", str(chain_file), "--last", "0", "--json"]) == 0
    records = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, N + 1))
    assert records[0]["time"] == "2024-05-01T00:30:00.000000Z" and records[0]["detail"]["door"] == "1F"


def test_cli_verify_intact(chain_file, capsys):
    with EventLog.open_readonly(chain_file) as log:
        head = log.verify().head_hash
    assert log_cli.main(["verify", "--db", str(chain_file)]) == 0
    assert capsys.readouterr().out == f"chain intact: {N} records, last seq {N}, head hash {head}\n"


def test_cli_verify_broken(chain_file, capsys):
    path = tampered_copy(chain_file, [("UPDATE events SET message = 'x' WHERE seq = 7", ())])
    assert log_cli.main(["verify", "--db", str(path)]) == 1
    assert capsys.readouterr().out.startswith("chain BROKEN at seq 7: hash mismatch")
    shutil.rmtree(path.parent)


def test_cli_missing_or_corrupt_database(tmp_path, capsys):
    assert log_cli.main(["verify", "--db", str(tmp_path / "nope.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: database") and err.count("\n") == 1
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + b"\x00" * 5000)
    assert log_cli.main(["show", "--db", str(junk)]) == 2
    assert capsys.readouterr().err.startswith("error: database")


def test_cli_reads_the_database_named_by_the_config(tmp_path, capsys):
    from common.config import load_config
    from tests.support import TERMINAL_TOML

    cfg = tmp_path / "door.toml"
    cfg.write_text(TERMINAL_TOML.format(kind="door", db=tmp_path / "door.db", bl=tmp_path / "bl.db"), encoding="utf-8")
    config = load_config(cfg)
    with EventLog.open(config.terminal.database, config.terminal.id) as log:
        log.append(T0, "door.grant", asn=None, reason_code="ok", message="hi", detail={})
    assert log_cli.main(["show", "--config", str(cfg)]) == 0
    local = T0.astimezone(config.terminal.timezone).strftime("%Y-%m-%d %H:%M:%S")
    assert local in capsys.readouterr().out  # local time in the terminal's own zone
    assert log_cli.main(["verify", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.startswith("chain intact: 1 records, last seq 1")


def _open_both(path: str, results) -> None:
    from terminal.blacklist import Blacklist

    try:
        EventLog.open(Path(path), "000000000001").close()
        Blacklist.open(Path(path + ".bl")).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


def test_terminal_and_agent_creating_the_files_at_once_both_succeed(tmp_path):
    """The terminal and its sync agent start together and both open (and so may create) the log and blacklist."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for i in range(15):
        results = ctx.Queue()
        path = str(tmp_path / f"run{i}.db")
        procs = [ctx.Process(target=_open_both, args=(path, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".new")]
