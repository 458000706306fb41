"""A platform restored from a backup: terminals ahead of it are re-based by a signed newer epoch (and only by one),
and heartbeats reveal any terminal whose list differs from the platform's (real mosquitto, agents, platform)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from common import sync_protocol as p
from sync_agent import core
from terminal.blacklist import Blacklist, BlacklistRollbackError
from tests.mqtt_env import ENTERPRISE, AgentThread, start_platform, terminal_id, wait_until, write_terminal_config

A, B = p.Epoch(1, "aa" * 16), p.Epoch(2, "aa" * 16)
OTHER = p.Epoch(1, "bb" * 16)
ASN_Y, ASN_X = "00000000000000A1", "00000000000000B2"


def snap(version, epoch):
    return {"enterprise_id": ENTERPRISE, "epoch": epoch.to_json(), "version": version, "count": 0, "groups": []}


def dlt(base, version, epoch):
    return {
        "enterprise_id": ENTERPRISE,
        "epoch": epoch.to_json(),
        "base_version": base,
        "version": version,
        "added": [],
        "removed": [],
    }


@pytest.mark.parametrize(
    "type_, body, held, held_epoch, action, reason",
    [
        ("blacklist.snapshot", snap(3, B), 5, A, core.APPLY, "rebase"),  # newer epoch: re-based
        ("blacklist.snapshot", snap(3, A), 5, A, core.REJECT, "rollback"),  # same epoch: a rollback
        ("blacklist.snapshot", snap(9, A), 5, B, core.REJECT, "old_epoch"),  # older epoch, whatever the version
        ("blacklist.snapshot", snap(9, OTHER), 5, A, core.REJECT, "epoch_conflict"),
        ("blacklist.snapshot", snap(3, A), 5, None, core.APPLY, "rebase"),  # a list from before epochs
        ("blacklist.delta", dlt(5, 6, B), 5, A, core.REQUEST_SNAPSHOT, "new_epoch"),
        ("blacklist.delta", dlt(5, 6, A), 5, B, core.REJECT, "old_epoch"),
        ("blacklist.delta", dlt(0, 1, A), 0, None, core.APPLY, "next"),  # a first list may be a delta
    ],
)
def test_epoch_decisions(type_, body, held, held_epoch, action, reason):
    d = core.blacklist_decision(type_, body, held, ENTERPRISE, held_epoch)
    assert (d.action, d.reason) == (action, reason)


def test_the_blacklist_file_enforces_the_same_epoch_rule_and_keeps_a_digest(tmp_path):
    with Blacklist.open(tmp_path / "bl.db") as bl:
        bl.apply_snapshot(5, [(bytes(8), "lost", 5)], A)
        d5 = bl.digest()
        with pytest.raises(BlacklistRollbackError):
            bl.apply_snapshot(3, [], A)
        with pytest.raises(BlacklistRollbackError, match="older than the held epoch"):
            bl.apply_snapshot(9, [], p.Epoch(0, "aa" * 16))
        assert (bl.version(), bl.epoch(), bl.digest()) == (5, A, d5)
        bl.apply_snapshot(3, [(bytes([1]) * 8, "lost", 2)], B)
        assert (bl.version(), bl.epoch()) == (3, B)
        # The digest is incremental and equals the one computed from scratch.
        bl.apply_delta(3, 4, [(bytes([2]) * 8, "lost", 4)], [bytes([1]) * 8], B)
        expected = p.digest_add(p.EMPTY_DIGEST, p.blacklist_entry_hash(bytes([2]) * 8, "lost", 4))
        assert bl.digest() == expected


def _restore(backup, db):
    for suffix in ("-wal", "-shm"):
        (db.parent / (db.name + suffix)).unlink(missing_ok=True)
    shutil.copyfile(backup, db)


def test_a_restored_platform_rebases_its_terminals_with_a_new_epoch(broker, tmp_path):
    tid = terminal_id(40)
    work = tmp_path / "platform"
    work.mkdir()
    admin, service = start_platform(work, broker, terminals={tid: ENTERPRISE})
    agent = AgentThread(write_terminal_config(tmp_path / "t", tid, broker, heartbeat_seconds=0.5))
    try:
        admin.add_holder(ENTERPRISE, "E1", "Wang Fang")
        admin.add_holder(ENTERPRISE, "E2", "Zhao Lei")
        admin.issue_card(ENTERPRISE, "E1", ASN_Y)
        admin.issue_card(ENTERPRISE, "E2", ASN_X)
        agent.start()
        wait_until(lambda: agent.agent.online, 10, "the agent connecting")
        backup = tmp_path / "backup.db"
        with sqlite3.connect(backup) as copy:
            admin.conn.backup(copy)  # the nightly backup, at version 0
        v = admin.report_loss(ASN_Y)  # after the backup: Y lost, the terminal gets it
        wait_until(lambda: agent.blacklist_version() == v == 1, 10, "the terminal applying version 1")
        service.stop()
        admin.close()
        # The platform's disk dies; the backup is restored. The platform notices it is older than what it
        # published and refuses to serve it as it is.
        _restore(backup, work / "platform.db")
        from central.db import PlatformError
        from central.service import BrokerSettings, PlatformService

        with pytest.raises(
            PlatformError,
            match="was already published: it was restored or rolled back: run `onecard platform restore-epoch",
        ):
            PlatformService(
                work / "platform.db",
                broker.pki.platform_key,
                BrokerSettings("127.0.0.1", broker.port, broker.pki.ca.cert, broker.pki.platform_cert_dir),
                unverified_money=True,
            )
        # Had the whole directory been restored (that file too), it would serve; meanwhile card X is reported lost.
        (work / "platform.db.published").unlink()
        admin, service = start_platform(work, broker, terminals={})
        assert admin.report_loss(ASN_X) == 1  # version 1 again, a different list
        wait_until(
            lambda: any(a["kind"] == "blacklist_differs" for a in admin.terminal(tid)["alarms"]),
            15,
            "the platform noticing from the heartbeat that the terminal's list is not its own",
        )
        wait_until(
            lambda: any(r == "rollback" for r, _ in agent.agent.rejected),
            10,
            "the terminal refusing the restored platform's version 1 delta",
        )
        with Blacklist.open(tmp_path / "t" / "blacklist.db") as bl:
            assert bl.lookup(bytes.fromhex(ASN_X)) is None  # the lost card X still opens this door...
        # ...until the administrator follows the restore procedure.
        epoch = admin.restore_epoch("restored from the nightly backup after a disk failure")
        assert epoch.generation == 2

        def rebased():
            with Blacklist.open(tmp_path / "t" / "blacklist.db") as bl:
                return bl.epoch() == epoch and bl.lookup(bytes.fromhex(ASN_X)) is not None

        wait_until(rebased, 15, "the terminal applying the re-based snapshot of epoch 2")
        with Blacklist.open(tmp_path / "t" / "blacklist.db") as bl:
            assert bl.lookup(bytes.fromhex(ASN_Y)) is None and bl.version() == 2
        # Its heartbeats now match the platform's list; a later loss travels as a delta again.
        wait_until(
            lambda: (admin.terminal(tid)["heartbeat"] or {}).get("blacklist_epoch") == epoch.to_json(),
            10,
            "a heartbeat of the new epoch",
        )
        v2 = admin.report_loss(ASN_Y)
        wait_until(lambda: agent.blacklist_version() == v2, 10, "the next delta")
        alarms = [a["kind"] for a in admin.terminal(tid)["alarms"]]
        assert alarms.count("blacklist_differs") == 1
    finally:
        agent.stop()
        service.stop()
        admin.close()


def test_restore_epoch_goes_past_the_generation_terminals_report(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.store import Platform

    pf = Platform(tmp_path / "p.db", Ed25519PrivateKey.generate())
    try:
        pf.add_enterprise(ENTERPRISE, "Co")
        pf.add_terminal(terminal_id(1), ENTERPRISE, kind="door")
        e = pf.epoch()
        hb = p.Heartbeat(
            terminal_id(1), "2026-11-23T02:00:00.000000Z", 0, 0, 0, 7, 0, None, p.Epoch(4, e.instance), p.EMPTY_DIGEST
        )
        pf.record_heartbeat(hb)
        assert [a["kind"] for a in pf.terminal(terminal_id(1))["alarms"]] == ["platform_behind"]
        (tmp_path / "p.db.published").write_text(
            json.dumps({"instance": e.instance, "generation": 1, "blacklist_versions": {ENTERPRISE: 7}})
        )
        assert "version 0 of enterprise 00010001, but version 7 was already published" in pf.restored_problem()
        assert pf.restore_epoch("restored").generation == 5
        assert pf.restored_problem() is None
        queued = [p.open_envelope(row[2], pf.key.public_key()) for row in pf.unpublished()]
        assert [(m.type, m.target, m.body["epoch"]["generation"]) for m in queued] == [
            ("blacklist.snapshot", f"e:{ENTERPRISE}", 5)
        ]
    finally:
        pf.close()
