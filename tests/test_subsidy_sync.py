"""The subsidy wallet's production path (issue 13): `onecard platform subsidy issue` -> signed `subsidy_allowances`
over real MQTT (mosquitto with TLS) -> the sync agent verifies and stores it in sync.db -> the till's inbox gives it to
PurseTerminal -> the next tap collects it once -> the upload -> the platform shows it collected, and its subsidy
ledger equals the card's subsidy purse (docs/canteen.md "Subsidy wallet", docs/sync-protocol.md "Inbox")."""

from __future__ import annotations

import contextlib
import datetime as dt
import io

from common.config import load_config
from sam.interface import KeyUsage
from simulator.inprocess import InProcessReader
from sync_agent.store import SyncStore
from terminal.adapters import build_terminal
from terminal.inbox import Inbox
from terminal.keypad import Charge
from terminal.outputs import ConsoleOutputs
from tests.mqtt_env import ENTERPRISE, AgentThread, start_platform, terminal_id, wait_until, write_terminal_config
from tests.support import ALL_USAGES, make_sam
from tests.test_subsidy_terminal import sam, subsidy_card  # noqa: F401 (sam is a fixture)

POS = """
[pos]
max_purchase = "100.00"
offline_limit = "150.00"
"""


def now():
    return dt.datetime.now(dt.timezone.utc)


def tap(terminal, card, request=None):
    reader = InProcessReader()
    reader.tap(card)
    return terminal.handle_tap(reader.wait_for_card(0), now(), request)


def body(allowances, eid=ENTERPRISE):
    return {"enterprise_id": eid, "allowances": allowances}


def row(aid, asn="0102030405060708", collected=False, expiry="2026-12-31", number=1):
    return {"allowance_id": aid, "asn": asn, "number": number, "amount": 500, "expiry": expiry,
            "policy": "cash_first", "collected": collected}  # fmt: skip


def test_the_agent_keeps_the_newest_whole_list_and_the_inbox_reads_it(tmp_path):
    store = SyncStore.open(tmp_path / "sync.db", "000000000101")
    inbox = Inbox(tmp_path / "sync.db")
    try:
        assert inbox.pending_allowances("0102030405060708") == []  # nothing stored yet: nothing to collect
        t1, t2, t0 = "2026-11-23T02:00:00.000000Z", "2026-11-23T03:00:00.000000Z", "2026-11-23T01:00:00.000000Z"
        assert store.store_subsidy_allowances(body([row("a"), row("b", asn="0A0B0C0D0E0F1011")]), "m1", t1, t1)
        got = inbox.pending_allowances("0102030405060708")
        assert [(a.allowance_id, a.amount, a.expiry, a.policy, a.collected) for a in got] == [
            ("a", 500, dt.date(2026, 12, 31), "cash_first", False)
        ]
        # The next list replaces the whole one: "a" collected elsewhere, "b" gone (its card was replaced), "c" new.
        assert store.store_subsidy_allowances(body([row("c"), row("a", collected=True)]), "m2", t2, t2)
        assert [(a.allowance_id, a.collected) for a in inbox.pending_allowances("0102030405060708")] == [
            ("c", False),
            ("a", True),
        ]
        assert inbox.pending_allowances("0a0b0c0d0e0f1011") == []
        # An older list arriving late changes nothing, and is still remembered as seen.
        assert not store.store_subsidy_allowances(body([row("z")]), "m0", t0, t2)
        assert [a.allowance_id for a in inbox.pending_allowances("0102030405060708")] == ["c", "a"]
        assert store.seen("m0") and store.seen("m2")
        # An empty list (all expired) empties the inbox.
        assert store.store_subsidy_allowances(body([]), "m3", "2026-11-24T00:00:00.000000Z", t2)
        assert inbox.pending_allowances("0102030405060708") == []
    finally:
        inbox.close()
        store.close()


def test_issued_allowance_travels_to_the_till_is_collected_once_and_the_ledgers_agree(broker, tmp_path):
    sam = make_sam(usages=(*ALL_USAGES, KeyUsage.SUBSIDY))
    tid, other = terminal_id(21), terminal_id(22)
    (tmp_path / "platform").mkdir()
    admin, service = start_platform(tmp_path / "platform", broker, tac_sam=sam, kinds={tid: "pos", other: "pos"})
    agents = {}
    with contextlib.ExitStack() as stack:
        try:
            tills = {}
            for t in (tid, other):
                path = write_terminal_config(tmp_path / t, t, broker, kind="pos")
                path.write_text(path.read_text() + POS, encoding="utf-8")
                agents[t] = AgentThread(path).start()
                tills[t], _ = build_terminal(
                    load_config(path),
                    stack,
                    sam=sam,
                    reader=InProcessReader(),
                    outputs=ConsoleOutputs(t, io.StringIO(), color=False),
                )
                wait_until(lambda t=t: agents[t].agent.online, 20, f"agent {t} connecting")
            till, till2 = tills[tid], tills[other]
            card = subsidy_card(sam, cash=5_000)
            card.state.subsidy.expiry = bytes(4)  # a new, empty subsidy purse
            asn = card.state.asn.hex().upper()
            admin.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
            admin.issue_card(ENTERPRISE, "E1001", asn, balance_cents=5_000)
            expiry = now().date() + dt.timedelta(days=30)
            admin.issue_subsidy(ENTERPRISE, ["E1001"], 3_000, expiry, "subsidy_first", "lunch-1")
            inbox = Inbox(agents[tid].config.sync.database)
            stack.callback(inbox.close)
            wait_until(lambda: inbox.pending_allowances(asn) != [], 30, "the allowance reaching the till's inbox")
            assert [(a.allowance_id, a.amount, a.collected) for a in inbox.pending_allowances(asn)] == [
                ("lunch-1.E1001", 3_000, False)
            ]

            sale = tap(till, card, Charge(1_200))
            assert sale.accepted, sale.message
            assert "subsidy of 30.00 collected" in sale.message and "(subsidy 12.00, cash 0.00)" in sale.message
            assert card.state.subsidy.balance == 1_800 and card.state.purse.balance == 5_000
            # The list in the inbox still says "not collected" (nothing uploaded yet): the till's own log knows.
            assert tap(till, card, Charge(100)).accepted
            loads = [e for e in till.event_log.events() if e.kind == "subsidy.load"]
            assert len(loads) == 1 and card.state.subsidy.online_counter == 1

            wait_until(lambda: agents[tid].acked_seq() == till.event_log.last_seq(), 30, "the upload acknowledged")
            assert [(x["allowance_id"], x["state"], x["tac_status"]) for x in admin.subsidy_list(ENTERPRISE)] == [
                ("lunch-1.E1001", "collected", "ok")
            ]
            report = admin.subsidy_report(ENTERPRISE)
            assert report == {
                "issued": 3_000,
                "collected": 3_000,
                "spent": 1_300,
                "withdrawn": 0,
                "refunded": 0,
                "carried": 0,
                "lapsed": 0,
                "returned": 0,
                "on_cards": 1_700,
                "allowances_lapsed": 0,
            }
            assert report["on_cards"] == card.state.subsidy.balance
            assert admin.card(asn)["balance_cents"] == card.state.purse.balance == 5_000
            # The platform announced the list again with the allowance collected; the other till, whose own log
            # never saw the load, does not offer it.
            inbox2 = Inbox(agents[other].config.sync.database)
            stack.callback(inbox2.close)
            wait_until(
                lambda: [a.collected for a in inbox2.pending_allowances(asn)] == [True], 30, "the collected list"
            )
            assert tap(till2, card, Charge(200)).accepted
            assert [e for e in till2.event_log.events() if e.kind.startswith("subsidy.load")] == []
            assert card.state.subsidy.balance == 1_500 and card.state.subsidy.online_counter == 1
        finally:
            for agent in agents.values():
                agent.stop()
            service.stop()
            admin.close()


def test_only_a_load_the_card_proved_marks_an_allowance_collected(platform_db, tmp_path, sam):  # noqa: F811
    """A subsidy.load whose TAC fails (a forged or corrupted record) is held and leaves the allowance on offer; the
    card's real record then marks it collected."""
    from central.store import Platform
    from common import sync_protocol as p
    from terminal.event_log import EventLog
    from terminal.subsidy_protocol import allowances_from_body
    from tests.support import MONDAY_10AM
    from tests.test_purse import present
    from tests.test_subsidy_platform import KEY
    from tests.test_subsidy_terminal import terminal

    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM, tac_sam=sam)
    forger = "000000000102"
    try:
        pf.add_enterprise(ENTERPRISE, "Test Co")
        pf.add_terminal("000000000101", ENTERPRISE, kind="pos")
        pf.add_terminal(forger, ENTERPRISE, kind="pos")
        pf.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
        card = subsidy_card(sam, cash=5_000)
        card.state.subsidy.expiry = bytes(4)
        asn = card.state.asn.hex().upper()
        pf.issue_card(ENTERPRISE, "E1001", asn, balance_cents=5_000)
        pf.issue_subsidy(ENTERPRISE, ["E1001"], 3_000, dt.date(2026, 11, 30), "subsidy_first", "2026-11")
        pos = terminal(tmp_path, sam, allowances=allowances_from_body(pf.subsidy_allowances_body(ENTERPRISE)))
        pos.purchase(present(card)[1], 100, MONDAY_10AM)
        real = next(e for e in pos.event_log.events() if e.kind == "subsidy.load")
        forged_detail = {**real.detail, "tac": "00" * 8}
        with EventLog.open(tmp_path / "forger.db", forger) as log:
            log.append(real.time, real.kind, asn=asn, reason_code="ok", message=real.message, detail=forged_detail)
            events = [
                p.WireEvent(e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json,
                            e.prev_hash, e.hash)
                for e in log.events()
            ]  # fmt: skip
        pf.ingest(forger, events)
        stored = pf.conn.execute("SELECT terminal_id, tac_status FROM subsidy_transactions").fetchall()
        assert [tuple(r) for r in stored] == [(forger, "bad")]
        assert [a["collected"] for a in pf.subsidy_allowances_body(ENTERPRISE)["allowances"]] == [False]
        assert pf.subsidy_report(ENTERPRISE)["collected"] == 0  # held, not accounted
        ours = [
            p.WireEvent(e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json,
                        e.prev_hash, e.hash)
            for e in pos.event_log.events()
        ]  # fmt: skip
        pf.ingest("000000000101", ours)
        assert [a["collected"] for a in pf.subsidy_allowances_body(ENTERPRISE)["allowances"]] == [True]
        assert pf.subsidy_report(ENTERPRISE)["on_cards"] == card.state.subsidy.balance == 2_900
    finally:
        pf.close()


def test_a_terminal_back_from_an_outage_gets_the_current_list_in_its_sync_answer(platform_db):
    from central.store import Platform
    from common import sync_protocol as p
    from tests.support import MONDAY_10AM
    from tests.test_subsidy_platform import KEY

    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM)
    try:
        pf.add_enterprise(ENTERPRISE, "Test Co")
        pf.add_terminal("000000000101", ENTERPRISE, kind="pos")
        pf.add_holder(ENTERPRISE, "E1001", "Zhang Wei")
        pf.issue_card(ENTERPRISE, "E1001", "0102030405060708", balance_cents=0)
        req = p.Request("000000000101", "sync", 0, 0)

        def answer():
            return [p.open_envelope(m, KEY.public_key()) for _, m in pf.answer_request(req)]

        assert "subsidy_allowances" not in [e.type for e in answer()]  # no allowance ever: nothing to say
        pf.issue_subsidy(ENTERPRISE, ["E1001"], 3_000, dt.date(2026, 11, 30), "cash_first", "2026-11")
        got = [e for e in answer() if e.type == "subsidy_allowances"]
        assert len(got) == 1 and got[0].target == "t:000000000101"
        assert got[0].body == pf.subsidy_allowances_body(ENTERPRISE)
        assert [a["allowance_id"] for a in got[0].body["allowances"]] == ["2026-11.E1001"]
    finally:
        pf.close()


def test_an_agent_database_from_before_the_numbers_gets_the_column(tmp_path):
    import sqlite3

    SyncStore.open(tmp_path / "sync.db", "000000000101").close()
    conn = sqlite3.connect(tmp_path / "sync.db")
    conn.execute("ALTER TABLE inbox_subsidy_allowances DROP COLUMN number")
    conn.execute("INSERT INTO inbox_subsidy_allowances VALUES ('old', '0102030405060708', 5, '2026-12-31', "
                 "'cash_first', 0, 0)")  # fmt: skip
    conn.commit()
    conn.close()
    store = SyncStore.open(tmp_path / "sync.db", "000000000101")
    inbox = Inbox(tmp_path / "sync.db")
    try:
        assert [(a.allowance_id, a.number) for a in inbox.pending_allowances("0102030405060708")] == [("old", 0)]
        assert store.store_subsidy_allowances(
            body([row("new", number=4)]), "m1", "2026-11-23T02:00:00.000000Z", "2026-11-23T02:00:00.000000Z"
        )
        assert [(a.allowance_id, a.number) for a in inbox.pending_allowances("0102030405060708")] == [("new", 4)]
    finally:
        inbox.close()
        store.close()
