"""The subsidy wallet at the platform: `subsidy issue`, the signed downlink, ingest of subsidy loads, two-purse sales
and withdrawals with TAC checks (stored once, never in the cash purse's accounts), list/report, and the settlement
that agrees with the till's Z report (SQLite, and PostgreSQL under the `postgres` marker)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.db import PlatformError
from central.store import Platform
from common import settlement as st
from common import sync_protocol as p
from terminal.subsidy_protocol import allowances_from_body
from tests.support import MONDAY_10AM
from tests.test_purse import present
from tests.test_subsidy_terminal import outcomes, sam, subsidy_card, terminal  # noqa: F401 (sam is a fixture)

KEY = Ed25519PrivateKey.generate()
ENT, TID = "00010001", "000000000101"


def upload(pf, log, after=0):
    events = [
        p.WireEvent(
            e.seq, p.format_time(e.time), e.kind, e.asn, e.reason_code, e.message, e.detail_json, e.prev_hash, e.hash
        )
        for e in log.events()
        if e.seq > after
    ]
    return pf.ingest(TID, events)


@pytest.fixture
def setup(platform_db, tmp_path, sam):
    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM, tac_sam=sam)
    pf.add_enterprise(ENT, "Test Co")
    pf.add_terminal(TID, ENT, kind="pos")
    pf.add_holder(ENT, "E1001", "Zhang Wei")
    pf.add_holder(ENT, "E1002", "Li Na")
    card = subsidy_card(sam, cash=5_000)
    card.state.subsidy.expiry = bytes(4)
    pf.issue_card(ENT, "E1001", card.state.asn.hex().upper(), balance_cents=5_000)
    yield pf, card
    pf.close()


def downlink(pf):
    row = pf.conn.execute("SELECT payload FROM outbound ORDER BY rowid DESC LIMIT 1").fetchone()
    env = p.open_envelope(bytes(row[0]), KEY.public_key()) if hasattr(p, "open_envelope") else None
    return env


def test_issue_refuses_bad_input_whole(setup):
    pf, _ = setup
    with pytest.raises(PlatformError, match="employee E9 is not registered"):
        pf.issue_subsidy(ENT, ["E1001", "E9"], 100, dt.date(2026, 11, 30), "subsidy_first", "2026-11")
    assert pf.subsidy_list(ENT) == []
    with pytest.raises(PlatformError, match="in the past"):
        pf.issue_subsidy(ENT, ["E1001"], 100, dt.date(2026, 11, 1), "subsidy_first", "2026-11")
    with pytest.raises(PlatformError, match="policy"):
        pf.issue_subsidy(ENT, ["E1001"], 100, dt.date(2026, 11, 30), "cash_only", "2026-11")
    pf.issue_subsidy(ENT, ["E1001"], 100, dt.date(2026, 11, 30), "subsidy_first", "2026-11")
    with pytest.raises(PlatformError, match="already has allowance 2026-11"):
        pf.issue_subsidy(ENT, ["E1001", "E1002"], 100, dt.date(2026, 11, 30), "subsidy_first", "2026-11")
    assert [r["employee_no"] for r in pf.subsidy_list(ENT)] == ["E1001"]


def test_issue_collect_spend_ingest_report_and_settlement_agree(setup, tmp_path, sam):
    pf, card = setup
    ids = pf.issue_subsidy(ENT, ["E1001", "E1002"], 5_000, dt.date(2026, 11, 30), "subsidy_first", "2026-11")
    assert ids == ["2026-11.E1001", "2026-11.E1002"]
    body = pf.subsidy_allowances_body(ENT)
    p.BODY_CHECKS["subsidy_allowances"](body)  # the agent's schema
    assert body["allowances"] == [  # E1002 has no card yet: nothing to announce for them
        {
            "allowance_id": "2026-11.E1001",
            "asn": card.state.asn.hex().upper(),
            "number": 1,
            "amount": 5_000,
            "expiry": "2026-11-30",
            "policy": "subsidy_first",
            "collected": False,
        }
    ]
    queued = pf.conn.execute("SELECT topic FROM outbound").fetchall()
    assert [t for (t,) in queued] == [p.enterprise_topic(ENT)]
    pos = terminal(tmp_path, sam, allowances=allowances_from_body(body))
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)
    assert card.state.subsidy.balance == 3_800
    pos.purchase(present(card)[1], 5_000, MONDAY_10AM + dt.timedelta(minutes=1))  # 38.00 subsidy + 12.00 cash
    r = upload(pf, pos.event_log)
    assert r.acked_seq == pos.event_log.events()[-1].seq
    assert pf.subsidy_report(ENT) == {
        "issued": 10_000,
        "collected": 5_000,
        "spent": 5_000,
        "withdrawn": 0,
        "refunded": 0,
        "carried": 0,
        "returned": 0,
        "on_cards": 0,
        "lapsed": 0,
        "allowances_lapsed": 0,
    }
    assert card.state.subsidy.balance == 0
    # The cash purse's accounts saw only the cash share (12.00), continuing the card's history.
    assert pf.card(card.state.asn.hex().upper())["balance_cents"] == 5_000 - 1_200 == card.state.purse.balance
    assert [x["state"] for x in pf.subsidy_list(ENT)] == ["collected", "pending"]
    assert pf.subsidy_allowances_body(ENT)["allowances"][0]["collected"] is True
    # Settlement: the platform's lines equal the till's for the same records, subsidy spent counted apart.
    till = st.settle(
        st.select_day(
            [st.Record(e.seq, e.time, e.kind, e.detail) for e in pos.event_log.events()],
            dt.date(2026, 11, 23),
            pos.config.terminal.timezone,
        )
    )
    assert till.subsidy_spent.amount == 5_000 and till.sales.amount == 6_200
    report = pf.settlement(TID, dt.date(2026, 11, 23))
    for line in st.format_totals(till):
        assert line in report
    # The same upload again stores nothing twice.
    upload(pf, pos.event_log)
    assert pf.conn.execute("SELECT count(*) FROM subsidy_transactions").fetchone()[0] == 3


def test_a_forged_subsidy_tac_is_not_accounted(setup, tmp_path, sam):
    pf, card = setup
    pf.issue_subsidy(ENT, ["E1001"], 5_000, dt.date(2026, 11, 30), "cash_first", "one-off")
    pos = terminal(tmp_path, sam, allowances=allowances_from_body(pf.subsidy_allowances_body(ENT)))
    pos.balance_inquiry(present(card)[1], MONDAY_10AM)
    load = outcomes(pos, "subsidy.load")[0]
    forged = dict(load.detail, amount=500_000, balance_after=500_000)
    pos.event_log.append(MONDAY_10AM, "subsidy.load", asn=load.asn, reason_code="completed", message="x", detail=forged)
    upload(pf, pos.event_log)
    rows = pf.conn.execute("SELECT amount_cents, tac_status FROM subsidy_transactions ORDER BY seq").fetchall()
    assert rows == [(5_000, "ok"), (500_000, "duplicate")] or rows == [(5_000, "ok"), (500_000, "bad")]
    assert pf.subsidy_report(ENT)["collected"] == 5_000


def test_a_withdrawal_is_accounted(setup, tmp_path, sam):
    pf, card = setup
    card.state.subsidy.balance, card.state.subsidy.expiry = 1_234, bytes.fromhex("20261101")
    pos = terminal(tmp_path, sam)
    pos.purchase(present(card)[1], 100, MONDAY_10AM)
    upload(pf, pos.event_log)
    assert pf.subsidy_report(ENT)["withdrawn"] == 1_234


def test_the_cli_issues_lists_and_reports(setup, tmp_path, platform_db):
    import subprocess
    import sys

    pf, _ = setup
    if not str(platform_db).endswith(".db"):
        pytest.skip("the CLI is exercised on SQLite")
    pf.close()
    from central.db import write_signing_key

    key = tmp_path / "k.pem"
    write_signing_key(key)
    lst = tmp_path / "list.txt"
    lst.write_text("E1001\n# comment\nE1002\n")
    base = [sys.executable, "-m", "onecard.cli", "platform", "subsidy"]
    args = ["--db", str(platform_db), "--key", str(key), "--enterprise", ENT]
    r = subprocess.run(
        [
            *base,
            "issue",
            *args,
            "--list",
            str(lst),
            "--amount",
            "150.00",
            "--expiry",
            "2099-12-31",
            "--policy",
            "cash_first",
            "--label",
            "2099-12",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "issued 2 allowance(s) of 150.00 yuan" in r.stdout
    r = subprocess.run([*base, "list", *args], capture_output=True, text=True)
    assert "2099-12.E1002" in r.stdout and "pending" in r.stdout
    r = subprocess.run([*base, "report", *args], capture_output=True, text=True)
    assert "issued" in r.stdout and "300.00" in r.stdout
    r = subprocess.run(
        [
            *base,
            "issue",
            *args,
            "--employee",
            "E1001",
            "--amount",
            "1",
            "--expiry",
            "2099-12-31",
            "--policy",
            "cash_first",
            "--label",
            "2099-12",
        ],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2 and "already has allowance" in r.stderr
    )  # the platform CLI: PlatformError -> 2 and "Traceback" not in r.stderr


def test_the_spending_bill_lists_the_subsidy_wallet_apart(setup, tmp_path, sam):
    """docs/canteen.md "Spending bill": the subsidy wallet's records are listed with its own opening and closing
    balance; the cash purse's line shows only the cash share of a two-purse sale."""
    pf, card = setup
    pf.issue_subsidy(ENT, ["E1001"], 5_000, dt.date(2026, 11, 30), "subsidy_first", "2026-11")
    pos = terminal(tmp_path, sam, allowances=allowances_from_body(pf.subsidy_allowances_body(ENT)))
    pos.purchase(present(card)[1], 1_200, MONDAY_10AM)  # collects the 50.00 allowance, pays from it
    pos.purchase(present(card)[1], 5_000, MONDAY_10AM + dt.timedelta(minutes=1))  # 38.00 subsidy + 12.00 cash
    upload(pf, pos.event_log)
    [bill] = pf.spending_bills("2026-11", ENT, "E1001")
    assert [(i.wallet, i.label, i.amount) for i in bill.items] == [
        ("subsidy", "subsidy", 5_000),
        ("subsidy", "paid from subsidy", -1_200),
        ("cash", "paid", -1_200),
        ("subsidy", "paid from subsidy", -3_800),
    ]
    assert (bill.opening, bill.closing) == (5_000, 3_800) and bill.closing == card.state.purse.balance
    assert (bill.subsidy_opening, bill.subsidy_closing) == (0, 0) == (0, card.state.subsidy.balance)
    text = bill.sms()
    assert "spent 12.00, topped up 0.00, closing balance 38.00 yuan; subsidy 0.00 -> 0.00 yuan. " in text
    assert "10:00 subsidy 50.00 at " in text and "10:01 paid from subsidy 38.00 at " in text
    rows = [r for r in bill.csv_rows() if r[5] == "subsidy"]
    assert [r[6] for r in rows] == [
        "opening balance",
        "subsidy",
        "paid from subsidy",
        "paid from subsidy",
        "closing balance",
    ]
    assert [r[10] for r in rows] == ["0.00", "50.00", "38.00", "0.00", "0.00"]


# --- allowance numbers (card-application.md 5.6): two records of one allowance are never both valid ---------------


def _append_load(pos, load, **changes):
    detail = dict(load.detail, **changes)
    pos.event_log.append(MONDAY_10AM, "subsidy.load", asn=load.asn, reason_code="completed", message="x", detail=detail)


def test_a_second_record_of_one_allowance_is_held_whatever_it_claims(setup, tmp_path, sam):
    pf, card = setup
    pf.issue_subsidy(ENT, ["E1001"], 5_000, dt.date(2026, 11, 30), "cash_first", "one-off")
    pf.issue_subsidy(ENT, ["E1001"], 5_000, dt.date(2026, 11, 30), "cash_first", "two-off")
    body = pf.subsidy_allowances_body(ENT)
    assert [(a["allowance_id"], a["number"]) for a in body["allowances"]] == [
        ("one-off.E1001", 1),
        ("two-off.E1001", 2),
    ]
    pos = terminal(tmp_path, sam, allowances=allowances_from_body(body)[:1])  # the till heard of allowance 1 only
    pos.balance_inquiry(present(card)[1], MONDAY_10AM)
    load = outcomes(pos, "subsidy.load")[0]
    assert load.detail["allowance_no"] == 1
    _append_load(pos, load, counter=1)  # "loaded again" at the next counter: the TAC covers the counter
    _append_load(pos, load, allowance_id="two-off.E1001")  # passed off as allowance 2: its number is not 2
    _append_load(pos, load, allowance_id="two-off.E1001", allowance_no=2, counter=1)  # the TAC covers the number
    upload(pf, pos.event_log)
    rows = pf.conn.execute("SELECT allowance_id, counter, tac_status FROM subsidy_transactions ORDER BY seq").fetchall()
    assert rows == [
        ("one-off.E1001", 0, "ok"),
        ("one-off.E1001", 1, "bad"),
        ("two-off.E1001", 0, "mismatch"),  # not allowance 2's number (and counter 0 was already proven)
        ("two-off.E1001", 1, "bad"),
    ]
    assert [(x["allowance_id"], x["state"]) for x in pf.subsidy_list(ENT)] == [
        ("one-off.E1001", "collected"),
        ("two-off.E1001", "pending"),
    ]
    assert pf.subsidy_report(ENT)["collected"] == 5_000
    assert [a["collected"] for a in pf.subsidy_allowances_body(ENT)["allowances"]] == [True, False]


def test_without_tac_keys_the_allowance_check_alone_refuses_a_second_collection(platform_db, tmp_path, sam):
    """A lab platform without the TAC key (unverified_money): a second record of allowance 1 from another till is
    `duplicate`, one naming another allowance with this one's number `mismatch`; only the first counts."""
    pf = Platform(platform_db, KEY, clock=lambda: MONDAY_10AM, unverified_money=True)
    try:
        pf.add_enterprise(ENT, "Test Co")
        pf.add_terminal(TID, ENT, kind="pos")
        pf.add_holder(ENT, "E1001", "Zhang Wei")
        card = subsidy_card(sam, cash=5_000)
        card.state.subsidy.expiry = bytes(4)
        pf.issue_card(ENT, "E1001", card.state.asn.hex().upper(), balance_cents=5_000)
        pf.issue_subsidy(ENT, ["E1001"], 5_000, dt.date(2026, 11, 30), "cash_first", "one-off")
        pf.issue_subsidy(ENT, ["E1001"], 5_000, dt.date(2026, 11, 30), "cash_first", "two-off")
        pos = terminal(tmp_path, sam, allowances=allowances_from_body(pf.subsidy_allowances_body(ENT))[:1])
        pos.balance_inquiry(present(card)[1], MONDAY_10AM)
        load = outcomes(pos, "subsidy.load")[0]
        _append_load(pos, load, counter=1, tac="0" * 16)
        _append_load(pos, load, allowance_id="two-off.E1001", counter=2)
        _append_load(pos, load, allowance_id="two-off.E1001", allowance_no=2, counter=3, amount=4_000)
        upload(pf, pos.event_log)
        rows = pf.conn.execute("SELECT counter, tac_status FROM subsidy_transactions ORDER BY seq").fetchall()
        assert rows == [(0, "unchecked"), (1, "duplicate"), (2, "mismatch"), (3, "mismatch")]
        assert pf.subsidy_report(ENT)["collected"] == 5_000
        assert [x["state"] for x in pf.subsidy_list(ENT)] == ["collected", "pending"]
    finally:
        pf.close()


def test_an_allowance_skipped_because_it_expired_lapses_back_to_the_enterprise(setup, tmp_path, sam):
    pf, card = setup
    pf.issue_subsidy(ENT, ["E1001"], 2_000, dt.date(2026, 11, 23), "subsidy_first", "short")  # expires today
    pf.issue_subsidy(ENT, ["E1001"], 3_000, dt.date(2026, 11, 30), "subsidy_first", "month")
    pos = terminal(tmp_path, sam, allowances=allowances_from_body(pf.subsidy_allowances_body(ENT)))
    tomorrow = MONDAY_10AM + dt.timedelta(days=1)
    pos.balance_inquiry(present(card)[1], tomorrow)  # allowance 1 has expired: skipped; allowance 2 loaded
    assert [e.detail["allowance_no"] for e in outcomes(pos, "subsidy.load")] == [2]
    assert [x["state"] for x in pf.subsidy_list(ENT)] == ["pending", "pending"]  # nothing uploaded yet
    upload(pf, pos.event_log)
    assert [(x["allowance_id"], x["number"], x["state"]) for x in pf.subsidy_list(ENT)] == [
        ("short.E1001", 1, "lapsed"),
        ("month.E1001", 2, "collected"),
    ]
    report = pf.subsidy_report(ENT)
    assert (report["issued"], report["collected"], report["allowances_lapsed"], report["on_cards"]) == (
        5_000,
        3_000,
        2_000,
        3_000,
    )
    assert [a["allowance_id"] for a in pf.subsidy_allowances_body(ENT)["allowances"]] == ["month.E1001"]
    # numbers are never reused: the next allowance is 3
    pf.issue_subsidy(ENT, ["E1001"], 100, dt.date(2026, 11, 30), "subsidy_first", "extra")
    assert [a["number"] for a in pf.subsidy_allowances_body(ENT)["allowances"]] == [2, 3]
