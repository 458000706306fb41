"""Money at the platform: only pos/top-up terminals' records are accounted, TAC checks on by default, a record that
does not continue the card's history is held for review (alarm, `held`, `resolve-held`), odd money details are
refused as protocol errors, card actions are validated, reported failed and cancellable (docs/sync-protocol.md)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.db import PlatformError
from central.store import Platform
from common import money_records as mr
from common import sync_protocol as p
from terminal.event_log import EventLog
from tests.mqtt_env import ENTERPRISE, AgentThread, start_platform, terminal_id, wait_until, write_terminal_config

KEY = Ed25519PrivateKey.generate()
NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
ASN = "0102030405060708"
POS, TOPUP, DOOR = "000000000201", "000000000301", "000000000101"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def detail(kind, counter, amount, balance_after, **extra):
    d = {
        "amount": amount,
        "counter": counter,
        "date": "20261123",
        "time": "100000",
        "key_version": 1,
        "algorithm": "AES128",
        "intent_seq": 1,
        "tac": "00" * 8,
        "proof": "11" * 8,
        "balance_after": balance_after,
        "resolved_at_next_tap": False,
    }
    if kind == mr.PURCHASE:
        d["tsn"] = counter + 1
    if kind == mr.UNDO:
        d["purchase_seq"] = 1
    d.update(extra)
    return d


class Chain:
    """A terminal's real event log (hash chain), and the uploads the platform ingests from it."""

    def __init__(self, tmp_path, tid):
        self.tid = tid
        self.log = EventLog.open(tmp_path / f"{tid}.db", tid)
        self.sent = 0

    def add(self, kind, d, asn=ASN):
        self.log.append(NOW, kind, asn=asn, reason_code="completed", message=kind, detail=d)

    def upload(self, pf):
        events = [
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
            for e in self.log.events()
            if e.seq > self.sent
        ]
        r = pf.ingest(self.tid, events)
        self.sent = r.acked_seq
        return r


@pytest.fixture
def pf(platform_db):
    platform = Platform(platform_db, KEY, clock=lambda: NOW, unverified_money=True)
    platform.add_enterprise(ENTERPRISE, "Test Co")
    for tid, kind in ((POS, "pos"), (TOPUP, "topup"), (DOOR, "door")):
        platform.add_terminal(tid, ENTERPRISE, kind=kind)
    platform.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    platform.issue_card(ENTERPRISE, "E1", ASN)
    yield platform
    platform.close()


def balance(pf):
    return pf.card(ASN)["balance_cents"]


def test_money_records_from_a_door_terminal_are_held_not_accounted(pf, tmp_path, caplog):
    door = Chain(tmp_path, DOOR)
    door.add(mr.LOAD, detail(mr.LOAD, 0, 100_000, 100_000))
    door.add(mr.LOAD, detail(mr.LOAD, 0, 100_000, 100_000))
    with caplog.at_level(logging.WARNING, "platform"):
        assert door.upload(pf).acked_seq == 2  # the chain moves on; the money does not
    assert balance(pf) == 0 and pf.purse_transactions(ASN) == []
    held = pf.held_money()
    assert [(h["seq"], h["status"], h["reason_code"]) for h in held] == [
        (1, "held", "terminal_kind"),
        (2, "held", "terminal_kind"),
    ]
    assert "event=platform.money_held" in caplog.text and "a door terminal cannot topup.load" in caplog.text
    assert pf.card(ASN)["held_money_records"] == 2


def test_kind_is_required_and_kept(pf):
    with pytest.raises(TypeError):
        pf.add_terminal("000000000999", ENTERPRISE)  # noqa  (no kind: refused)
    with pytest.raises(PlatformError, match="is not one of door, attendance, pos, topup, issuing"):
        pf.add_terminal("000000000999", ENTERPRISE, kind="vending")
    with pytest.raises(PlatformError, match="registered as a door terminal"):
        pf.add_terminal(DOOR, ENTERPRISE, kind="topup")
    assert pf.terminal(POS)["kind"] == "pos"


def test_duplicate_counter_and_discontinuous_balance_are_held_then_resolved(pf, tmp_path):
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 100_000, 100_000))
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 100_000, 100_000))  # the same counter again: a replay
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 5_000, 5_000, tac="22" * 8))  # the same counter, other content
    topup.add(mr.LOAD, detail(mr.LOAD, 1, 1_000, 999_000))  # balance_after not 1000.00 + 10.00
    topup.upload(pf)
    assert balance(pf) == 100_000
    assert pf.card(ASN)["balance_status"].startswith("unverified (1 transaction")
    held = {h["seq"]: (h["status"], h["reason_code"]) for h in pf.held_money()}
    assert held == {2: ("held", "replayed"), 3: ("held", "conflicting"), 4: ("waiting", "balance_gap")}
    ids = {h["seq"]: h["id"] for h in pf.held_money()}
    with pytest.raises(PlatformError, match="--note"):
        pf.resolve_held(ids[2], "reject", " ")
    assert pf.resolve_held(ids[2], "reject", "terminal resent after a crash; checked the card") == "rejected"
    with pytest.raises(PlatformError, match="already rejected"):
        pf.resolve_held(ids[2], "account", "again")
    assert pf.resolve_held(ids[4], "account", "card shows 9990.00; platform was restored from a backup") == "accounted"
    assert balance(pf) == 101_000
    resolved = {h["seq"]: (h["status"], h["resolution"]) for h in pf.held_money(include_resolved=True)}
    assert resolved[2] == ("rejected", "by administrator: terminal resent after a crash; checked the card")
    assert [h["seq"] for h in pf.held_money()] == [3]


def test_a_record_waiting_for_an_offline_pos_is_accounted_when_it_arrives(pf, tmp_path):
    pos, topup = Chain(tmp_path, POS), Chain(tmp_path, TOPUP)
    # On the card: load 0 (0 -> 100.00), purchase 0 at the offline POS (-> 90.00), load 1 (-> 190.00).
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 10_000, 10_000))
    pos.add(mr.PURCHASE, detail(mr.PURCHASE, 0, 1_000, 9_000))
    topup.add(mr.LOAD, detail(mr.LOAD, 1, 10_000, 19_000))
    topup.add(mr.LOAD, detail(mr.LOAD, 3, 10_000, 39_000))  # load 2 not uploaded yet
    topup.upload(pf)
    assert balance(pf) == 10_000
    assert [(h["reason_code"], h["status"]) for h in pf.held_money()] == [
        ("balance_gap", "waiting"),
        ("counter_gap", "waiting"),
    ]
    pos.upload(pf)
    assert balance(pf) == 19_000
    assert [h["counter"] for h in pf.held_money()] == [3]
    assert [h["resolution"] for h in pf.held_money(include_resolved=True) if h["status"] == "accounted"] == [
        "accounted automatically: the records before it arrived"
    ]
    topup.add(mr.LOAD, detail(mr.LOAD, 2, 10_000, 29_000))
    topup.upload(pf)
    assert balance(pf) == 39_000 and pf.held_money() == []


@pytest.mark.parametrize(
    "bad",
    [
        {"drop": "counter"},
        {"drop": "key_version"},
        {"key_version": "1"},
        {"amount": True},
        {"amount": 1.5},
        {"tac": "zz" * 8},
        {"extra": 1},
        {"algorithm": "DES"},
        {"balance_after": -1},
    ],
)
def test_odd_money_details_are_protocol_errors_not_key_errors(pf, tmp_path, caplog, bad):
    d = detail(mr.LOAD, 0, 1_000, 1_000)
    if "drop" in bad:
        del d[bad["drop"]]
    else:
        d.update(bad)
    with pytest.raises(p.ProtocolError):
        mr.check_money_detail(mr.LOAD, d)
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.LOAD, d)
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 1_000, 1_000))
    with caplog.at_level(logging.WARNING, "platform"):
        assert topup.upload(pf).acked_seq == 2
    [held] = pf.held_money()
    assert (held["seq"], held["reason_code"]) == (1, "malformed") and "protocol error" in held["reason"]
    assert "reason_code=malformed" in caplog.text
    assert balance(pf) == 1_000  # the next, valid record was accounted


def test_schema_algorithms_are_the_sams():
    from sam.interface import Algorithm

    assert mr.ALGORITHMS == tuple(a.name for a in Algorithm)


def test_without_tac_keys_and_without_the_lab_flag_money_is_held(tmp_path):
    pf = Platform(tmp_path / "strict.db", KEY, clock=lambda: NOW)
    pf.add_enterprise(ENTERPRISE, "Test Co")
    pf.add_terminal(TOPUP, ENTERPRISE, kind="topup")
    pf.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    pf.issue_card(ENTERPRISE, "E1", ASN)
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 1_000, 1_000))
    topup.upload(pf)
    assert pf.card(ASN)["balance_cents"] == 0 and pf.held_money()[0]["reason_code"] == "no_tac_keys"
    from central.service import BrokerSettings, PlatformService

    with pytest.raises(PlatformError, match="needs the TAC keys"):
        PlatformService(tmp_path / "strict.db", KEY, BrokerSettings("127.0.0.1", 1, None, None))
    pf.close()


def test_a_forged_tac_is_held_in_the_default_mode(tmp_path):
    from tests.support import make_sam

    pf = Platform(tmp_path / "tac.db", KEY, clock=lambda: NOW, tac_sam=make_sam())
    pf.add_enterprise(ENTERPRISE, "Test Co")
    pf.add_terminal(TOPUP, ENTERPRISE, kind="topup")
    pf.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    pf.issue_card(ENTERPRISE, "E1", ASN)
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 1_000, 1_000))
    topup.upload(pf)
    assert pf.card(ASN)["balance_cents"] == 0
    assert [(h["reason_code"], h["tac_status"]) for h in pf.held_money()] == [("bad_tac", "bad")]
    pf.close()


# -- card actions ------------------------------------------------------------------------------------


def test_over_the_air_top_ups_are_checked_against_the_card_and_enterprise_limits(pf):
    with pytest.raises(PlatformError, match=r"over the enterprise's top-up limit of 1000\.00"):
        pf.add_card_action(ASN, "topup", {"amount": 2_000_000})
    pf.publish_config(ENTERPRISE, {"topup": {"max_load": "1500.00"}})
    first = pf.add_card_action(ASN, "topup", {"amount": 150_000})
    with pytest.raises(PlatformError, match=r"over its maximum balance of 2000\.00 .*at most 500\.00 fits"):
        pf.add_card_action(ASN, "topup", {"amount": 60_000})
    with pytest.raises(PlatformError, match="unknown"):
        pf.add_card_action(ASN, "write_back", {"balance_cents": 1})
    with pytest.raises(PlatformError, match="amount"):
        pf.add_card_action(ASN, "topup", {"amount": "5"})
    assert [a["action_id"] for a in pf.card_actions(ASN)] == [first]


def test_a_card_action_the_card_refused_is_failed_and_no_longer_offered(pf, tmp_path):
    action = pf.add_card_action(ASN, "topup", {"amount": 50_000})
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.CARD_ACTION_FAILED, {"action_id": action, "reason_code": "card_error", "sw": "6A80"})
    topup.upload(pf)
    [a] = pf.card_actions(ASN)
    assert (a["status"], a["note"]) == ("failed", f"refused at terminal {TOPUP}: card_error (SW 6A80)")
    req = p.Request(TOPUP, "sync", 0, 0)
    assert [p.open_envelope(m, KEY.public_key()).type for _, m in pf.answer_request(req)] == ["time"]
    with pytest.raises(PlatformError, match="already failed"):
        pf.cancel_action(action)


def test_cancel_action_and_an_applied_action_cannot_be_cancelled(pf, tmp_path):
    done = pf.add_card_action(ASN, "topup", {"amount": 1_000})
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 1_000, 1_000, action_id=done))
    topup.upload(pf)
    with pytest.raises(PlatformError, match="was already applied on card .* cannot be cancelled"):
        pf.cancel_action(done)
    pending = pf.add_card_action(ASN, "topup", {"amount": 2_000})
    assert pf.cancel_action(pending) == ASN
    [(_, _, payload)] = pf.unpublished()[-1:]
    env = p.open_envelope(payload, KEY.public_key())
    assert (env.type, env.body) == ("card_action.cancel", {"action_id": pending, "asn": ASN, "action": "topup"})
    with pytest.raises(PlatformError, match="does not exist"):
        pf.cancel_action("nope")


# -- the CLI ------------------------------------------------------------------------------------------


def onecard(*args, check=True):
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run(
        [sys.executable, "-m", "onecard", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_cli_kinds_serve_refusal_held_resolve_and_ota_limits(tmp_path):
    db, key = tmp_path / "p.db", tmp_path / "p.key"
    base = ("--db", db, "--key", key)
    onecard("platform", "init", *base)
    onecard("platform", "add-enterprise", ENTERPRISE, "--name", "Co", *base)
    r = onecard("platform", "add-terminal", DOOR, "--enterprise", ENTERPRISE, *base, check=False)
    assert r.returncode != 0 and "--kind" in r.stderr
    onecard("platform", "add-terminal", DOOR, "--enterprise", ENTERPRISE, "--kind", "door", *base)
    onecard("platform", "add-holder", "E1", "--enterprise", ENTERPRISE, "--name", "Zhang", *base)
    onecard("platform", "issue-card", ASN, "--enterprise", ENTERPRISE, "--employee", "E1", *base)
    r = onecard("platform", "ota-topup", ASN, "20000.00", *base, check=False)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "top-up limit of 1000.00" in r.stderr
    for f in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / f).write_text("x")
    tls = ("--ca", tmp_path / "ca.pem", "--cert-dir", tmp_path)
    r = onecard("platform", "serve", *base, *tls, check=False)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no TAC keys" in r.stderr
    assert "Traceback" not in r.stderr
    pf = Platform(db, serialization.load_pem_private_key(key.read_bytes(), None), unverified_money=True)
    door = Chain(tmp_path, DOOR)
    door.add(mr.LOAD, detail(mr.LOAD, 0, 100_000, 100_000))
    door.upload(pf)
    pf.close()
    out = onecard("platform", "held", *base).stdout
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["reason_code"], row["status"], row["terminal_id"]) == ("terminal_kind", "held", DOOR)
    assert "ALARM: 1 money record" in onecard("platform", "purse", ASN, *base).stdout
    r = onecard("platform", "resolve-held", row["id"], "--reject", *base, check=False)
    assert r.returncode != 0 and "--note" in r.stderr
    onecard("platform", "resolve-held", row["id"], "--reject", "--note", "door terminal cert misused", *base)
    assert onecard("platform", "held", *base).stdout.strip() == "no held money records"
    assert json.loads(onecard("platform", "card", ASN, *base).stdout)["balance_cents"] == 0


def test_unverified_balances_are_labelled_in_card_purse_and_bill(pf, tmp_path):
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.LOAD, detail(mr.LOAD, 0, 1_000, 1_000))
    topup.upload(pf)
    assert pf.card(ASN)["balance_status"] != "verified"
    assert "closing balance 10.00 yuan (UNVERIFIED" in pf.spending_bill(ENTERPRISE, "E1", "2026-11")


# -- over the broker: a door terminal's real agent uploads money records ---------------------------------


def test_a_door_terminal_uploading_top_ups_over_mqtt_moves_no_money(broker, tmp_path, caplog):
    from tests.support import make_sam

    tid = terminal_id(3)
    (tmp_path / "platform").mkdir()
    admin, service = start_platform(
        tmp_path / "platform",
        broker,
        tac_sam=make_sam(),
        terminals={tid: ENTERPRISE, terminal_id(4): ENTERPRISE},
        kinds={terminal_id(4): "topup"},
    )
    try:
        admin.add_holder(ENTERPRISE, "E1", "Zhang Wei")
        admin.issue_card(ENTERPRISE, "E1", ASN)
        cfg = write_terminal_config(tmp_path / "door", tid, broker)
        with EventLog.open(tmp_path / "door" / "events.db", tid) as log:
            for _ in range(2):
                log.append(
                    NOW,
                    mr.LOAD,
                    asn=ASN,
                    reason_code="completed",
                    message="Top-up",
                    detail=detail(mr.LOAD, 0, 100_000, 100_000),
                )
            log.append(NOW, "door.grant", asn=ASN, reason_code="ok", message="Welcome", detail={})
        cfg4 = write_terminal_config(tmp_path / "topup", terminal_id(4), broker, kind="topup")
        with EventLog.open(tmp_path / "topup" / "events.db", terminal_id(4)) as log:
            log.append(
                NOW,
                mr.LOAD,
                asn=ASN,
                reason_code="completed",
                message="Top-up",
                detail={k: v for k, v in detail(mr.LOAD, 0, 100_000, 100_000).items() if k != "counter"},
            )
            log.append(NOW, "door.grant", asn=ASN, reason_code="ok", message="Welcome", detail={})
        with caplog.at_level(logging.WARNING, "platform"):
            agents = [AgentThread(cfg).start(), AgentThread(cfg4).start()]
            try:
                wait_until(
                    lambda: agents[0].acked_seq() == 3 and agents[1].acked_seq() == 2,
                    30,
                    "both terminals' uploads being acknowledged",
                )
            finally:
                for a in agents:
                    a.stop()
        assert admin.card(ASN)["balance_cents"] == 0
        assert sorted((h["terminal_id"], h["reason_code"]) for h in admin.held_money()) == [
            (tid, "terminal_kind"),
            (tid, "terminal_kind"),
            (terminal_id(4), "malformed"),
        ]
        assert "field 'counter' is missing" in caplog.text and "worker_error" not in caplog.text
    finally:
        service.stop()
        admin.close()


def test_the_documented_money_record_fields_are_the_schemas():
    import re

    text = open(os.path.join(REPO, "docs", "sync-protocol.md"), encoding="utf-8").read()
    section = text[text.index("### Money records") : text.index("### Purse accounting")]
    documented = re.findall(r"^\| `([a-z_]+)` \| ", section, re.M)
    kinds = [k for k in documented if "." not in k]
    assert set(kinds) == set(mr.CHECKS), "docs/sync-protocol.md Money records table vs common/money_records.py"
    assert set(re.findall(r"^\| `(pos\.[a-z]+|topup\.[a-z]+)` \|", section, re.M)) == set(mr.MONEY_SIGN)


def test_an_older_platform_database_gets_kinds_and_its_unknown_kind_terminals_money_is_held(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    pf = Platform(db, KEY, clock=lambda: NOW, unverified_money=True)
    pf.add_enterprise(ENTERPRISE, "Test Co")
    pf.add_terminal(TOPUP, ENTERPRISE, kind="topup")
    pf.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    pf.issue_card(ENTERPRISE, "E1", ASN)
    pf.close()
    conn = sqlite3.connect(db)  # the schema before kinds were recorded (and before migrations were kept)
    old_columns = (("terminals", "kind"), ("cards", "max_balance_cents"), ("card_actions", "status_note"))
    for table, column in (*old_columns, ("holders", "shift")):  # shift: migration 0002
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for table in (
        "subsidy_allowances",
        "subsidy_transactions",
        "ota_counters",
        "ota_jobs",
        "ota_job_params",
        "ota_loads",
        "card_serials",
        "subsidy_carried",
        "voided_purses",
        "subsidy_returned",
    ):
        conn.execute(f"DROP TABLE {table}")  # migrations 0003, 0004, 0005, 0007 and 0008
    for (table,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%yoyo%'"
    ).fetchall():
        conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    pf = Platform(db, KEY, clock=lambda: NOW, unverified_money=True)
    try:
        assert pf.terminal(TOPUP)["kind"] is None and pf.card(ASN)["max_balance_cents"] == 200_000
        topup = Chain(tmp_path, TOPUP)
        topup.add(mr.LOAD, detail(mr.LOAD, 0, 1_000, 1_000))
        topup.upload(pf)
        [held] = pf.held_money()
        assert held["reason_code"] == "terminal_kind" and "has no registered kind" in held["reason"]
        pf.add_terminal(TOPUP, ENTERPRISE, kind="topup")
        assert pf.terminal(TOPUP)["kind"] == "topup"
        pf.resolve_held(held["id"], "account", "terminal 301 is the card office's top-up machine; kind registered")
        assert pf.card(ASN)["balance_cents"] == 1_000
    finally:
        pf.close()


@pytest.mark.parametrize(
    "d, ok",
    [
        ({"action_id": "a1", "reason_code": "over_load_limit", "sw": None}, True),
        ({"action_id": "a1", "reason_code": "card_error", "sw": "6A80"}, True),
        ({"action_id": "a1", "reason_code": "card_error", "sw": "6a80"}, False),
        ({"action_id": "a1", "reason_code": "card_error"}, False),
        ({"action_id": "a1", "reason_code": "card_error", "sw": None, "more": 1}, False),
        ({"action_id": 7, "reason_code": "card_error", "sw": None}, False),
    ],
)
def test_card_action_failed_detail_schema(d, ok):
    if ok:
        assert mr.check_action_failed_detail(d) == d
    else:
        with pytest.raises(p.ProtocolError):
            mr.check_action_failed_detail(d)


def test_a_malformed_failure_report_is_refused_and_the_action_stays_pending(pf, tmp_path, caplog):
    action = pf.add_card_action(ASN, "topup", {"amount": 50_000})
    topup = Chain(tmp_path, TOPUP)
    topup.add(mr.CARD_ACTION_FAILED, {"action_id": action, "reason_code": "card_error"})
    topup.add(mr.CARD_ACTION_FAILED, {"action_id": action, "reason_code": "card_error", "sw": None}, asn="0" * 16)
    door = Chain(tmp_path, DOOR)
    door.add(mr.CARD_ACTION_FAILED, {"action_id": action, "reason_code": "card_error", "sw": None})
    with caplog.at_level(logging.WARNING, "platform"):
        assert topup.upload(pf).acked_seq == 2 and door.upload(pf).acked_seq == 1
    assert [a["status"] for a in pf.card_actions(ASN)] == ["pending"]
    assert caplog.text.count("event=platform.card_action_report_refused") == 3
    assert "only a top-up terminal carries out card actions" in caplog.text
