"""The platform's ingest at its boundaries: bounded pending records, rewritten acknowledged records, chain breaks
and their re-anchoring (real SQLite, real event logs; the broker is not needed to decide these)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import central.ingest
from central.db import PlatformError, load_signing_key
from central.store import Platform
from common import sync_protocol as p
from common.events import event_hash
from terminal.event_log import EventLog
from tests.mqtt_env import fill_log

NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
KEY = Ed25519PrivateKey.generate()
TID, EID = "000000000101", "00010001"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pf(platform_db):
    platform = Platform(platform_db, KEY, clock=lambda: NOW)
    platform.add_enterprise(EID, "Test Co")
    platform.add_terminal(TID, EID, kind="door")
    yield platform
    platform.close()


def wire(db, n, **kw):
    fill_log(db, TID, n, **kw)
    with EventLog.open(db, TID) as log:
        return [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in log.events()
        ]


def rewritten(e: p.WireEvent, **changes) -> p.WireEvent:
    """The record with other content and a hash that is consistent with it (what a log rewrite produces)."""
    e = dataclasses.replace(e, **changes)
    return dataclasses.replace(
        e, hash=event_hash(e.seq, e.time, TID, e.kind, e.asn, e.reason_code, e.message, e.detail, e.prev_hash)
    )


def ack_body(pf, result):
    return p.open_envelope(pf.ack_message(result), KEY.public_key()).body


def test_records_far_past_a_gap_are_refused_with_a_reason_and_kept_by_the_agent(pf, tmp_path, monkeypatch):
    monkeypatch.setattr(central.ingest, "MAX_PENDING_GAP", 50)
    ev = wire(tmp_path / "events.db", 120)
    r = pf.ingest(TID, ev[10:120])  # seqs 11..120: 11..50 may wait behind the gap, 51.. may not
    assert (r.acked_seq, r.pending, r.reason) == (0, 40, "pending_gap")
    body = ack_body(pf, r)
    assert body["reason"] == "pending_gap" and "more than 50 records ahead" in body["problem"]
    # Nothing is lost: the agent resends from its ack, and everything lands once the gap is filled.
    r = pf.ingest(TID, ev[0:60])
    assert (r.acked_seq, r.problem) == (60, "")
    r = pf.ingest(TID, ev[60:120])
    assert (r.acked_seq, r.pending, r.problem) == (120, 0, "")
    assert pf.totals() == {"door.grant": 120}


def test_pending_bytes_are_bounded_per_terminal(pf, tmp_path, monkeypatch):
    monkeypatch.setattr(central.ingest, "MAX_PENDING_BYTES", 40_000)
    big = "x" * 4000
    fill_log(tmp_path / "events.db", TID, 1)
    with EventLog.open(tmp_path / "events.db", TID) as log:
        for i in range(30):
            log.append(NOW, "door.grant", asn=None, reason_code="ok", message=big, detail={"i": i})
        ev = [
            p.WireEvent(
                e.seq,
                p.format_time(e.time),
                e.kind,
                e.asn,
                e.reason_code,
                e.message,
                e.detail_json,
                e.prev_hash,
                e.hash,
            )
            for e in log.events()
        ]
    r = pf.ingest(TID, ev[1:])  # seq 1 missing: all of it would wait, ~124 kB
    assert r.reason == "pending_bytes" and 5 <= r.pending < 10
    stored = pf.conn.execute("SELECT sum(length(message)) FROM pending_events").fetchone()[0]
    assert stored <= 40_000
    r = pf.ingest(TID, ev)  # the gap filled: all 31 accepted in the end
    assert (r.acked_seq, r.pending) == (31, 0)


def test_a_rewritten_acknowledged_record_raises_a_divergence_alarm_not_a_duplicate(pf, tmp_path, caplog):
    ev = wire(tmp_path / "events.db", 10)
    assert pf.ingest(TID, ev).acked_seq == 10
    forged = rewritten(ev[4], message="Welcome, Mallory")
    r = pf.ingest(TID, [*ev[3:4], forged, *ev[5:7]])
    assert (r.acked_seq, r.duplicates, r.reason) == (10, 3, "diverged")
    assert "seq 5 was acknowledged with hash" in ack_body(pf, r)["problem"]
    t = pf.terminal(TID)
    assert t["duplicates"] == 3 and [(a["kind"], a["seq"]) for a in t["alarms"]] == [("diverged", 5)]
    assert "event=platform.diverged" in caplog.text
    # The stored record is the acknowledged one.
    assert pf.conn.execute("SELECT message FROM events WHERE seq = 5").fetchone()[0] == "Welcome"
    assert pf.ingest(TID, [forged]).reason == "diverged"  # resent: refused again, stored and alarmed once
    assert pf.conn.execute("SELECT why, seq, message FROM chain_evidence").fetchall() == [
        ("diverged", 5, "Welcome, Mallory")
    ]
    assert len(pf.terminal(TID)["alarms"]) == 1


def test_a_chain_break_is_kept_as_evidence_and_an_administrator_can_reanchor(pf, tmp_path, caplog):
    ev = wire(tmp_path / "a.db", 10)
    # The terminal's log after seq 4 was replaced by another one (e.g. restored from another card's backup).
    other = [dataclasses.replace(e) for e in wire(tmp_path / "b.db", 10, asn="1122334455667788")]
    r = pf.ingest(TID, ev[:4] + other[4:])
    assert (r.acked_seq, r.reason) == (4, "chain_broken") and "chain broken at seq 5" in r.problem
    r = pf.ingest(TID, other[4:])  # the agent keeps resending: later records wait, never accepted
    assert (r.acked_seq, r.pending) == (4, 6)
    with pytest.raises(PlatformError, match="not after the verified chain"):
        pf.reanchor(TID, 3, "checked")
    with pytest.raises(PlatformError, match="must say"):
        pf.reanchor(TID, 6, " ")
    r = pf.reanchor(TID, 6, "log replaced after the SD card failed; seq 5 investigated, ticket 42")
    assert (r.acked_seq, r.pending, r.problem) == (10, 0, "")
    t = pf.terminal(TID)
    assert t["chain_problem"] is None and t["reanchors"][0]["old_seq"] == 4 and t["reanchors"][0]["at_seq"] == 6
    assert [a["kind"] for a in t["alarms"]] == ["chain_broken", "reanchored"]
    # Evidence: the record that broke the chain, and the pending record below the anchor, kept, not deleted.
    kept = pf.conn.execute("SELECT why, seq, hash FROM chain_evidence ORDER BY id").fetchall()
    assert kept == [("chain_broken", 5, other[4].hash), ("reanchor", 5, other[4].hash)]
    assert pf.conn.execute("SELECT count(*) FROM events WHERE seq = 5").fetchone()[0] == 0
    # The ack for the agent is queued, and the chain goes on from the new anchor.
    assert p.open_envelope(pf.unpublished()[-1][2], KEY.public_key()).body == {
        "acked_seq": 10,
        "acked_hash": other[9].hash,
    }


def test_reanchor_command_refuses_in_one_line_and_reanchors(tmp_path):
    db, key = tmp_path / "platform.db", tmp_path / "platform.key"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def onecard(*args):
        return subprocess.run(
            [sys.executable, "-m", "onecard", "platform", *map(str, args), "--db", db, "--key", key],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    assert onecard("init").returncode == 0
    pf = Platform(db, load_signing_key(key))
    pf.add_enterprise(EID, "Co")
    pf.add_terminal(TID, EID, kind="door")
    ev = wire(tmp_path / "a.db", 6)
    other = wire(tmp_path / "b.db", 6, asn="1122334455667788")
    pf.ingest(TID, ev[:3] + other[3:])
    pf.ingest(TID, other[3:])
    pf.close()
    r = onecard("reanchor", TID, "--at", 9, "--reason", "x")
    assert r.returncode != 0 and "has not been received" in r.stderr and "Traceback" not in r.stderr
    r = onecard("reanchor", TID, "--at", 4, "--reason", "investigated: log replaced")
    assert r.returncode == 0 and "verified up to seq 6" in r.stdout, r.stderr
    r = onecard("terminal", TID)
    assert '"kind": "reanchored"' in r.stdout


def test_two_different_records_for_one_waiting_seq_raise_the_alarm_and_both_are_kept(pf, tmp_path):
    ev = wire(tmp_path / "events.db", 6)
    pf.ingest(TID, ev[3:6])  # 4..6 wait behind the gap
    other = rewritten(ev[4], message="Welcome, Mallory")
    r = pf.ingest(TID, [other])
    assert r.reason == "diverged" and "is waiting with hash" in r.problem
    assert pf.conn.execute("SELECT why, seq, hash FROM chain_evidence").fetchall() == [("diverged", 5, other.hash)]
    assert [a["kind"] for a in pf.terminal(TID)["alarms"]] == ["diverged"]


def test_waiting_records_are_stored_together_and_drained_in_chunks_when_the_gap_fills(pf, tmp_path, monkeypatch):
    """Batches that arrive ahead of a gap wait; the batch that fills the gap takes every waiting record that follows
    on, across several read chunks, and stops at the first one that does not (a chain break there is alarmed)."""
    monkeypatch.setattr(central.ingest, "DRAIN_CHUNK", 7)
    events = wire(tmp_path / "t.db", 40)
    broken = rewritten(events[29], message="rewritten")  # seq 30: its own hash is consistent, its successor's not
    r = pf.ingest(TID, events[20:29] + [broken] + events[30:])  # seqs 21..40 wait behind the gap 1..20
    assert (r.acked_seq, r.pending, r.problem) == (0, 20, "")
    again = pf.ingest(TID, events[25:29] + [broken] + events[30:35])  # 26..35 again: all waiting, nothing added
    assert (again.acked_seq, again.pending, again.problem) == (0, 20, "")
    other = pf.ingest(TID, events[29:31])  # the true seq 30 (and 31) while the rewritten 30 waits: both are kept
    assert other.reason == "diverged" and "seq 30 is waiting" in other.problem and other.pending == 20
    r = pf.ingest(TID, events[10:20])  # still a gap (1..10): these wait too
    assert (r.acked_seq, r.pending) == (0, 30)
    r = pf.ingest(TID, events[:10])  # fills it: 11..30 follow on (three chunks of 7), 31 does not link to 30
    assert r.acked_seq == 30 and r.reason == "chain_broken" and "seq 31" in r.problem
    t = pf.terminal(TID)
    assert t["contiguous_seq"] == 30 and t["events"] == 30


def test_a_whole_chunk_that_follows_on_reads_the_next_chunk(pf, tmp_path, monkeypatch):
    monkeypatch.setattr(central.ingest, "DRAIN_CHUNK", 5)
    events = wire(tmp_path / "t.db", 21)
    assert pf.ingest(TID, events[1:]).pending == 20  # exactly four chunks wait
    r = pf.ingest(TID, events[:1])
    assert (r.acked_seq, r.pending, r.new, r.problem) == (21, 0, 21, "")
