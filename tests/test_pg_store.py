"""The platform on PostgreSQL (central/sql.py, central/schema.py, central/migrate.py), against a real server from
Debian's binaries (tests/pg_env.py): a server restarted mid-ingest loses and doubles nothing; concurrent outbound
publishers never send one notification twice; an SQLite platform moves to PostgreSQL verified, and a target that is
not empty is refused; an SQLite platform.db from before migrations opens and is baselined."""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central import schema
from central.db import SQLITE_BASELINE_SCHEMA, PlatformError
from central.store import Platform
from common import money_records as mr
from common import sync_protocol as p
from common import transactions as tx
from onecard.cli import main
from sam import purse_crypto
from sam.interface import Algorithm, CardIdentity, KeyPurpose, KeyUsage
from terminal.event_log import EventLog
from tests.mqtt_env import ENTERPRISE
from tests.pg_env import PostgresServer
from tests.support import make_sam

pytestmark = pytest.mark.postgres

KEY = Ed25519PrivateKey.generate()
NOW = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.timezone.utc)
TOPUP, DOOR, POS = "000000000301", "000000000101", "000000000201"


def wire(log: EventLog, after: int = 0) -> list[p.WireEvent]:
    return [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in log.events()
        if e.seq > after
    ]


class Loads:
    """A top-up terminal's real event log: loads on cards with TACs computed from the enterprise's TAC key (so the
    platform's TAC check passes), some with a forged TAC (held, never accounted)."""

    def __init__(self, path, sam, terminal=TOPUP):
        self.sam, self.terminal = sam, terminal
        self.log = EventLog.open(path, terminal)
        self.log.db.execute("PRAGMA synchronous = OFF")
        self.counter: dict[str, int] = {}
        self.balance: dict[str, int] = {}
        self.checked: dict[str, int] = {}  # the TAC-checked sums the platform must end with
        self.forged = 0

    def load(self, asn: str, amount: int, *, forge: bool = False) -> None:
        counter, before = self.counter.get(asn, 0), self.balance.get(asn, 0)
        after = before + amount
        d = {
            "amount": amount,
            "counter": counter,
            "date": "20261123",
            "time": "100000",
            "key_version": 1,
            "algorithm": "AES128",
            "intent_seq": 1,
            "proof": "11" * 8,
            "balance_after": after,
            "resolved_at_next_tap": False,
        }
        card = CardIdentity(bytes.fromhex(asn), bytes.fromhex(ENTERPRISE), 1, Algorithm.AES128)
        alg, k_tac = self.sam._card_key(KeyPurpose.TAC, card, KeyUsage.VERIFY)
        tac = purse_crypto.tac(
            alg,
            k_tac,
            amount=amount,
            tx_type=tx.LOAD,
            terminal_id=bytes.fromhex(self.terminal),
            tsn=0,
            date=bytes.fromhex(d["date"]),
            time=bytes.fromhex(d["time"]),
            counter=counter,
            balance_after=after,
        )
        d["tac"] = (bytes(8) if forge else tac).hex()
        self.log.append(NOW, mr.LOAD, asn=asn, reason_code="completed", message="Top-up", detail=d)
        if forge:
            self.forged += 1
        else:
            self.counter[asn], self.balance[asn] = counter + 1, after
            self.checked[asn] = self.checked.get(asn, 0) + amount


def door_log(path, n: int) -> EventLog:
    log = EventLog.open(path, DOOR)
    log.db.execute("PRAGMA synchronous = OFF")
    for i in range(n):
        log.append(
            NOW + dt.timedelta(seconds=i),
            "door.grant",
            asn=f"{i % 7 + 1:016X}",
            reason_code="granted",
            message="Welcome",
            detail={},
        )
    return log


def setup_platform(pf: Platform, cards: list[str]) -> None:
    pf.add_enterprise(ENTERPRISE, "Test Co")
    pf.add_terminal(TOPUP, ENTERPRISE, kind="topup")
    pf.add_terminal(DOOR, ENTERPRISE, kind="door")
    for i, asn in enumerate(cards):
        pf.add_holder(ENTERPRISE, f"E{i}", f"Holder {i}")
        pf.issue_card(ENTERPRISE, f"E{i}", asn)


# -- PostgreSQL restarted mid-ingest ------------------------------------------------------------------------------


def _agent(target, terminal: str, events: list[p.WireEvent], tac_sam, result: dict, stop: threading.Event) -> None:
    """An agent's upload loop against its own worker's Platform: batches from the acknowledged seq, each one
    repeating the last records already acknowledged (a redelivery); any failure means the batch is sent again."""
    rng = random.Random(terminal)
    pf = None
    acked, duplicates_sent, failures = 0, 0, 0
    while acked < len(events) and not stop.is_set():
        try:
            if pf is None:
                pf = Platform(target, KEY, clock=lambda: NOW, tac_sam=tac_sam)
            start = max(0, acked - rng.randint(0, 5))
            batch = events[start : acked + 40]
            r = pf.ingest(terminal, batch)
            duplicates_sent += acked - start
            assert not r.problem, r.problem
            acked = r.acked_seq
        except PlatformError:
            failures += 1
            time.sleep(0.05)  # could not connect: the server is down
        except Exception as exc:  # noqa: BLE001 - the connection broke mid-batch: resend it
            if "OperationalError" not in type(exc).__name__ and "Connection" not in type(exc).__name__:
                result.setdefault("errors", []).append(repr(exc))
            failures += 1
            time.sleep(0.05)
    if pf is not None:
        pf.close()
    result[terminal] = {"acked": acked, "duplicates_sent": duplicates_sent, "failures": failures}


def test_postgresql_restarted_mid_ingest_loses_nothing_and_stores_nothing_twice(tmp_path):
    server = PostgresServer()
    try:
        target = "postgresql:" + server.new_database()
        sam = make_sam()
        cards = [f"{0x0102030405060700 + i:016X}" for i in range(12)]
        admin = Platform(target, KEY, clock=lambda: NOW, tac_sam=sam)
        setup_platform(admin, cards)
        loads = Loads(tmp_path / "topup.db", sam)
        rng = random.Random(7)
        for i in range(600):
            loads.load(cards[i % 10], rng.randint(1, 500))
        for asn in cards[10:]:  # the last record of these two cards carries a forged TAC
            loads.load(asn, 1_000)
            loads.load(asn, 2_000, forge=True)
        topup_events = wire(loads.log)
        door_events = wire(door_log(tmp_path / "door.db", 900))

        result: dict = {}
        stop = threading.Event()
        agents = [
            threading.Thread(target=_agent, args=(target, TOPUP, topup_events, sam, result, stop)),
            threading.Thread(target=_agent, args=(target, DOOR, door_events, sam, result, stop)),
        ]
        for a in agents:
            a.start()
        deadline = time.monotonic() + 60
        while admin.terminal(TOPUP)["contiguous_seq"] < len(topup_events) // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        stored_before = admin.terminal(TOPUP)["contiguous_seq"] + admin.terminal(DOOR)["contiguous_seq"]
        server.restart("immediate", down_for=0.5)  # a crash: in-flight transactions are lost, commits are not
        for a in agents:
            a.join(120)
        stop.set()
        assert not result.get("errors"), result.get("errors")
        assert stored_before < len(topup_events) + len(door_events)  # the restart came mid-ingest
        assert sum(result[t]["failures"] for t in (TOPUP, DOOR)) > 0  # and the agents felt it

        # Exact counts: every record once, none twice; balances are the TAC-checked sums.
        topup, door = admin.terminal(TOPUP), admin.terminal(DOOR)
        assert (topup["contiguous_seq"], topup["events"]) == (len(topup_events), len(topup_events))
        assert (door["contiguous_seq"], door["events"]) == (len(door_events), len(door_events))
        assert topup["head_hash"] == topup_events[-1].hash and door["head_hash"] == door_events[-1].hash
        assert topup["pending"]["count"] == 0 and topup["chain_problem"] is None
        assert admin.totals() == {"door.grant": len(door_events), mr.LOAD: len(topup_events)}
        booked = admin.conn.execute("SELECT count(*), count(DISTINCT (terminal_id, seq)) FROM purse_transactions")
        assert booked.fetchone() == (len(topup_events) - loads.forged,) * 2
        for asn in cards:
            assert admin.card(asn)["balance_cents"] == loads.checked[asn], asn
        held = admin.held_money()
        assert sorted((h["asn"], h["reason_code"]) for h in held) == [(a, "bad_tac") for a in cards[10:]]
        assert topup["duplicates"] + door["duplicates"] >= sum(result[t]["duplicates_sent"] for t in (TOPUP, DOOR))
        admin.close()
    finally:
        server.close()


# -- several outbound publishers ---------------------------------------------------------------------------------


def test_concurrent_outbound_publishers_never_send_one_notification_twice(pg_dsn):
    target = "postgresql:" + pg_dsn
    cards = [f"{0x0A00000000000000 + i:016X}" for i in range(40)]
    admin = Platform(target, KEY)
    setup_platform(admin, cards)
    for asn in cards:
        admin.report_loss(asn)  # each queues its signed blacklist delta in the flow's own transaction
    with admin._txn():
        for _i in range(360):
            admin._queue(p.terminal_topic(TOPUP, p.DOWN_MSG), admin.time_message(TOPUP))
    queued = admin.conn.execute("SELECT count(*) FROM outbound WHERE published_at IS NULL").fetchone()[0]
    assert queued == 400

    sent: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def publisher(n: int) -> None:
        pf = Platform(target, KEY)

        def send(topic: str, payload: bytes) -> None:
            time.sleep(0.0005)  # the broker's round trip, while the others claim their own rows
            with lock:
                sent.append((n, payload))

        try:
            while pf.publish_pending(send, limit=7):
                pass
        finally:
            pf.close()

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    payloads = [s[1] for s in sent]
    assert len(payloads) == 400 and len(set(payloads)) == 400  # each once, none twice
    assert len({s[0] for s in sent}) >= 2  # they really ran side by side
    assert admin.conn.execute("SELECT count(*) FROM outbound WHERE published_at IS NULL").fetchone()[0] == 0
    ids = {json.loads(x)["id"] for x in payloads}
    assert len(ids) == 400
    admin.close()


def test_a_failed_send_leaves_the_claim_unpublished(pg_dsn):
    pf = Platform("postgresql:" + pg_dsn, KEY)
    setup_platform(pf, ["0B00000000000001"])
    pf.report_loss("0B00000000000001")

    def broken(topic, payload):
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        pf.publish_pending(broken)
    assert len(pf.unpublished()) == 1
    got = []
    assert pf.publish_pending(lambda t, b: got.append(b)) == 1 and len(got) == 1 and pf.unpublished() == []
    pf.close()


# -- concurrent ingest and flows on one card: serializable ------------------------------------------------------


def test_concurrent_workers_on_one_terminal_store_each_record_once(pg_dsn, tmp_path):
    """Two workers given the same batches at once (a redelivery to another consumer): one order, no double."""
    target = "postgresql:" + pg_dsn
    sam = make_sam()
    cards = [f"{0x0C00000000000000 + i:016X}" for i in range(3)]
    admin = Platform(target, KEY, clock=lambda: NOW, tac_sam=sam)
    setup_platform(admin, cards)
    loads = Loads(tmp_path / "topup.db", sam)
    for i in range(150):
        loads.load(cards[i % 3], 100 + i)
    events = wire(loads.log)
    barrier = threading.Barrier(2)
    errors: list[str] = []

    def worker():
        pf = Platform(target, KEY, clock=lambda: NOW, tac_sam=sam)
        try:
            barrier.wait()
            for k in range(0, len(events), 10):
                r = pf.ingest(TOPUP, events[k : k + 10])
                if r.problem:
                    errors.append(r.problem)
        finally:
            pf.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    t = admin.terminal(TOPUP)
    assert (t["contiguous_seq"], t["events"], t["duplicates"]) == (150, 150, 150)
    for asn in cards:
        assert admin.card(asn)["balance_cents"] == loads.checked[asn]
    assert admin.held_money() == []
    admin.close()


def test_concurrent_workers_given_batches_out_of_order_store_each_record_once(pg_dsn, tmp_path):
    """Three workers take one terminal's batches in three orders at once (competing consumers and redeliveries):
    batches ahead of a gap wait, the same waiting batch stored by two workers at once is stored once, and the
    batch that fills a gap takes the waiting ones along; every record is stored and accounted exactly once."""
    target = "postgresql:" + pg_dsn
    sam = make_sam()
    cards = [f"{0x0E00000000000000 + i:016X}" for i in range(3)]
    admin = Platform(target, KEY, clock=lambda: NOW, tac_sam=sam)
    setup_platform(admin, cards)
    loads = Loads(tmp_path / "topup.db", sam)
    for i in range(240):
        loads.load(cards[i % 3], 100 + i)
    events = wire(loads.log)
    batches = [events[k : k + 20] for k in range(0, len(events), 20)]
    orders = [list(reversed(batches)), batches[1::2] + batches[0::2], random.Random(7).sample(batches, len(batches))]
    barrier = threading.Barrier(len(orders))
    errors: list[str] = []

    def worker(order):
        pf = Platform(target, KEY, clock=lambda: NOW, tac_sam=sam)
        try:
            barrier.wait()
            for b in order:
                r = pf.ingest(TOPUP, b)
                if r.problem:
                    errors.append(r.problem)
        finally:
            pf.close()

    threads = [threading.Thread(target=worker, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    t = admin.terminal(TOPUP)
    assert (t["contiguous_seq"], t["events"], t["pending"]["count"]) == (240, 240, 0)
    for asn in cards:
        assert admin.card(asn)["balance_cents"] == loads.checked[asn]
    assert admin.held_money() == []
    assert admin.conn.execute("SELECT count(*) FROM pending_events").fetchone()[0] == 0
    admin.close()


# -- sqlite -> postgresql ----------------------------------------------------------------------------------------


def _sqlite_platform(tmp_path):
    key = tmp_path / "platform.key"
    assert main(["platform", "init", "--db", str(tmp_path / "platform.db"), "--key", str(key)]) == 0
    sam = make_sam()
    pf = Platform(tmp_path / "platform.db", KEY, clock=lambda: NOW, tac_sam=sam)
    cards = [f"{0x0D00000000000000 + i:016X}" for i in range(4)]
    setup_platform(pf, cards)
    loads = Loads(tmp_path / "topup.db", sam)
    for i in range(30):
        loads.load(cards[i % 4], 250 + i)
    loads.load(cards[0], 99, forge=True)
    assert pf.ingest(TOPUP, wire(loads.log)).acked_seq == 31
    door = door_log(tmp_path / "door.db", 20)
    assert pf.ingest(DOOR, wire(door)).acked_seq == 20
    pf.report_loss(cards[3])
    pf.publish_config(ENTERPRISE, {"topup": {"max_load": "500.00"}})
    return pf, cards, loads, sam


def test_migrate_sqlite_to_postgresql_is_verified_and_the_chains_go_on(tmp_path, pg_dsn, capsys):
    pf, cards, loads, sam = _sqlite_platform(tmp_path)
    before = {
        "cards": pf.cards(),
        "heads": {t: (pf.terminal(t)["contiguous_seq"], pf.terminal(t)["head_hash"]) for t in (TOPUP, DOOR)},
        "held": pf.held_money(),
        "outbound": pf.unpublished(1000),
        "epoch": pf.epoch(),
        "totals": pf.totals(),
    }
    pf.close()
    src = tmp_path / "platform.db"
    digest = src.read_bytes()
    target = "postgresql:" + pg_dsn
    assert main(["central", "migrate", "--from", f"sqlite:{src}", "--to", target]) == 0
    out = capsys.readouterr().out
    assert "chain heads, balances and row counts verified" in out and "51 events of 2 terminal(s)" in out
    assert src.read_bytes() == digest  # the source is only read

    pg = Platform(target, KEY, clock=lambda: NOW, tac_sam=sam)
    assert pg.cards() == before["cards"]
    assert {t: (pg.terminal(t)["contiguous_seq"], pg.terminal(t)["head_hash"]) for t in (TOPUP, DOOR)} == before[
        "heads"
    ]
    assert pg.held_money() == before["held"] and pg.epoch() == before["epoch"] and pg.totals() == before["totals"]
    assert [(i, t, bytes(b)) for i, t, b in pg.unpublished(1000)] == before["outbound"]
    # The chains are verified across the move: the next records continue them; new ids follow the copied ones.
    loads.load(cards[1], 40)
    assert pg.ingest(TOPUP, wire(loads.log, after=31)).acked_seq == 32
    assert pg.card(cards[1])["balance_cents"] == loads.checked[cards[1]]
    assert pg.add_holder(ENTERPRISE, "NEW", "New Holder") == 5
    assert pg.report_loss(cards[2]) == 2
    assert pg.unpublished(1000)[-1][0] == before["outbound"][-1][0] + 1
    pg.close()

    # A second run is refused: the target is no longer empty, and nothing in it changes.
    assert main(["platform", "migrate", "--from", f"sqlite:{src}", "--to", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a platform" in err and "nothing was written" in err


def test_migrate_refusals_are_one_line_and_write_nothing(tmp_path, pg_dsn, pg_server, capsys):
    import psycopg

    pf, *_ = _sqlite_platform(tmp_path)
    pf.close()
    capsys.readouterr()
    src = f"sqlite:{tmp_path / 'platform.db'}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE unrelated (x int)")
    cases = [
        (["--from", f"sqlite:{tmp_path / 'missing.db'}", "--to", "postgresql:" + pg_dsn], "does not exist"),
        (["--from", src, "--to", "postgresql:" + pg_dsn], "is not empty (it has table unrelated)"),
        (["--from", src, "--to", str(tmp_path / "other.db")], "is not postgresql:DSN"),
        (["--from", str(tmp_path / "platform.db"), "--to", "postgresql:" + pg_dsn], "is not sqlite:PATH"),
        (["--from", src, "--to", "postgresql:host=127.0.0.1 port=1 dbname=x"], "cannot connect to PostgreSQL"),
        (["--from", src, "--to", "postgresql:"], "needs a connection string"),
    ]
    for args, message in cases:
        assert main(["platform", "migrate", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") <= 1 and "Traceback" not in err, (args, err)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"unrelated"}


def test_cli_runs_the_flows_on_postgresql(tmp_path, pg_dsn, capsys):
    db = "postgresql:" + pg_dsn
    key = str(tmp_path / "platform.key")
    assert main(["platform", "add-enterprise", ENTERPRISE, "--name", "X", "--db", db, "--key", key]) == 2
    assert "holds no platform" in capsys.readouterr().err
    assert main(["platform", "init", "--db", db, "--key", key]) == 0
    assert main(["platform", "add-enterprise", ENTERPRISE, "--name", "Test Co", "--db", db, "--key", key]) == 0
    assert (
        main(["platform", "add-holder", "E1", "--enterprise", ENTERPRISE, "--name", "Z", "--db", db, "--key", key]) == 0
    )
    asn = "0E00000000000001"
    assert (
        main(["platform", "issue-card", asn, "--enterprise", ENTERPRISE, "--employee", "E1", "--db", db, "--key", key])
        == 0
    )
    assert main(["platform", "report-loss", asn, "--db", db, "--key", key]) == 0
    capsys.readouterr()
    assert main(["platform", "card", asn, "--db", db, "--key", key]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "LOST"
    signing = serialization.load_pem_private_key(open(key, "rb").read(), None)
    pf = Platform(db, signing)
    assert [json.loads(b)["type"] for _i, _t, b in pf.unpublished()] == ["blacklist.delta"]
    pf.close()


# -- the schema under migrations --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_platform_database_records_its_migrations_and_opens_without_redoing_them(backend, tmp_path, request):
    target = tmp_path / "p.db" if backend == "sqlite" else "postgresql:" + request.getfixturevalue("pg_dsn")
    pf = Platform(target, KEY)
    assert schema.applied_ids(pf.conn) == set(schema.migration_ids()) and "0001_baseline" in schema.migration_ids()
    assert schema.upgrade(pf.target, pf.conn) == []
    pf.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_sub_applications_registration_records_its_card_serial_for_the_holders_phone(backend, tmp_path, request):
    """Migration 0005_card_serial: the SIM's serial, found again from any enterprise's holder on the same phone."""
    target = tmp_path / "p.db" if backend == "sqlite" else "postgresql:" + request.getfixturevalue("pg_dsn")
    pf = Platform(target, KEY)
    try:
        other = "00020002"
        pf.add_enterprise(ENTERPRISE, "Test Co")
        pf.add_enterprise(other, "Community")
        pf.add_holder(ENTERPRISE, "E1", "Zhang Wei", phone="8613900000012")
        pf.add_holder(other, "R-1", "Zhang Wei", phone="8613900000012")
        pf.add_holder(other, "R-2", "Li Na", phone="8613900000099")
        assert pf.card_serial_for(other, "R-1") is None
        pf.issue_card(ENTERPRISE, "E1", "1000000000000001", card_serial="5a5a000000000001")
        assert pf.card_serial_for(other, "R-1") == "5A5A000000000001" == pf.card_serial_for(ENTERPRISE, "E1")
        assert pf.card_serial_for(other, "R-2") is None  # another phone
        with pytest.raises(PlatformError, match="not registered"):
            pf.card_serial_for(other, "R-9")
    finally:
        pf.close()


def test_an_sqlite_platform_from_before_migrations_opens_and_is_baselined(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(SQLITE_BASELINE_SCHEMA)  # what `platform init` made before migrations were kept
    conn.execute("INSERT INTO platform_epoch VALUES (1, 'aa', 3, '2026-01-01T00:00:00Z', 'restored')")
    conn.execute(
        "INSERT INTO enterprises (enterprise_id, name, blacklist_version) VALUES (?, 'Old Co', 9)", (ENTERPRISE,)
    )
    conn.commit()
    conn.close()
    pf = Platform(db, KEY)
    assert pf.epoch() == p.Epoch(3, "aa") and pf.blacklist_version(ENTERPRISE) == 9  # kept, not re-created
    # Baselined, then every later migration applied (0002_holder_shift: the attendance shift, NULL until set).
    assert (
        schema.applied_ids(pf.conn)
        == {
            "0001_baseline",
            "0002_holder_shift",
            "0003_subsidy",
            "0004_ota_jobs",
            "0005_card_serial",
            "0006_allowance_numbers",
            "0007_subsidy_carried",
            "0008_cancel_subsidy",
        }
        == set(schema.migration_ids())
    )
    assert "shift" in {r[1] for r in pf.conn.execute("PRAGMA table_info(holders)")}
    pf.close()


# -- the service on PostgreSQL -----------------------------------------------------------------------------------


def test_the_service_serves_agents_from_postgresql(broker, pg_dsn, tmp_path):
    """`platform serve --db postgresql:...`: two workers ingest an agent's upload over the real broker, and a loss
    report queued by the administrator reaches the terminal's blacklist."""
    from tests.mqtt_env import AgentThread, fill_log, start_platform, terminal_id, wait_until, write_terminal_config

    (tmp_path / "platform").mkdir()
    admin, service = start_platform(tmp_path / "platform", broker, db="postgresql:" + pg_dsn)
    tid = terminal_id(1)
    cfg = write_terminal_config(tmp_path / "t1", tid, broker, batch_size=100)
    n = fill_log(tmp_path / "t1" / "events.db", tid, 1500)
    agent = AgentThread(cfg).start()
    try:
        wait_until(lambda: agent.acked_seq() == n, 60, "the agent recording the platform's ack of every record")
        t = admin.terminal(tid)
        assert (t["contiguous_seq"], t["events"], t["chain_problem"]) == (n, n, None)
        admin.add_holder(ENTERPRISE, "E1", "Zhang Wei")
        admin.issue_card(ENTERPRISE, "E1", "0102030405060799")
        admin.report_loss("0102030405060799")
        wait_until(lambda: agent.blacklist_version() == 1, 30, "the loss report on the terminal's blacklist")
        assert admin.unpublished() == []
    finally:
        agent.stop()
        service.stop()
        admin.close()


def test_concurrent_loss_reports_of_one_card_change_the_list_once(pg_dsn):
    """Four administrators report one card lost at once: one flow commits with its one signed delta, the others
    see the card already lost (their transactions were run again after PostgreSQL aborted them)."""
    target = "postgresql:" + pg_dsn
    asn = "0F00000000000001"
    admin = Platform(target, KEY)
    setup_platform(admin, [asn])
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def report():
        pf = Platform(target, KEY)
        try:
            barrier.wait()
            outcomes.append(pf.report_loss(asn))
        except PlatformError as exc:
            outcomes.append(str(exc))
        finally:
            pf.close()

    threads = [threading.Thread(target=report) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, outcomes)) == ["1"] + [f"card {asn} is already reported lost; nothing changed"] * 3
    assert admin.blacklist_version(ENTERPRISE) == 1 and admin.card(asn)["status"] == "LOST"
    assert [json.loads(b)["type"] for _i, _t, b in admin.unpublished()] == ["blacklist.delta"]
    admin.close()
