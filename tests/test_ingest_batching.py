"""A batch's money records are decided from one read of its cards (central/purse.py): every outcome must be the one
the record-at-a-time checks give, whatever the batch boundaries, on both engines."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.store import Platform
from common import money_records as mr
from common import sync_protocol as p
from tests.mqtt_env import ENTERPRISE
from tests.test_platform_money import KEY, NOW, POS, TOPUP, Chain, detail

A, B, C, D, E = "0A00000000000001", "0B00000000000002", "0C00000000000003", "0D00000000000004", "0E00000000000005"


class BatchChain(Chain):
    def upload_in(self, pf, batch: int, events: list[p.WireEvent] | None = None) -> None:
        """Upload everything not yet acknowledged (or `events`), `batch` records at a time."""
        events = events if events is not None else self.wire()
        for k in range(0, len(events), batch):
            r = pf.ingest(self.tid, events[k : k + batch])
            assert not r.problem, r.problem
            self.sent = r.acked_seq

    def wire(self) -> list[p.WireEvent]:
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
            for e in self.log.events()
            if e.seq > self.sent
        ]


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_batched_money_decisions_equal_record_at_a_time(platform_db, tmp_path, batch):
    pf = Platform(platform_db, KEY, clock=lambda: NOW, unverified_money=True)
    pf.add_enterprise(ENTERPRISE, "Test Co")
    pf.add_terminal(TOPUP, ENTERPRISE, kind="topup")
    pf.add_terminal(POS, ENTERPRISE, kind="pos")
    pf.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    for asn in (A, B, D, E):
        pf.issue_card(ENTERPRISE, "E1", asn)
    topup = BatchChain(tmp_path, TOPUP)
    load = mr.LOAD
    topup.add(load, detail(load, 0, 100, 100), asn=A)  # 1 accounted
    topup.add(load, detail(load, 0, 50, 50), asn=B)  # 2 accounted
    topup.add(load, detail(load, 1, 100, 200), asn=A)  # 3 accounted
    topup.add(load, detail(load, 3, 100, 400), asn=A)  # 4 waits (counter 2 missing), then accounted by 7
    topup.add(load, detail(load, 0, 50, 50), asn=B)  # 5 a replay: held
    topup.add(load, detail(load, 0, 10, 10), asn=C)  # 6 unknown card: held
    topup.add(load, detail(load, 2, 100, 300), asn=A)  # 7 accounted, releases 4
    topup.add(load, detail(load, 4, 100, 500), asn=A)  # 8 accounted
    topup.add(load, detail(load, 0, 10, 999), asn=D)  # 9 a balance gap: waits
    topup.add(load, detail(load, 1, 50, 100), asn=B)  # 10 accounted
    topup.add(load, detail(load, 3, 50, 200), asn=B)  # 11 waits (counter 2 missing) ...
    topup.add(load, detail(load, 2, 50, 150), asn=B)  # 12 ... until this one: both accounted
    topup.add(load, detail(load, 5, 1, 450), asn=A)  # 13 balance_after not 500 + 1: waits (balance gap)
    topup.add(load, detail(load, 0, 10, 10), asn=E)  # 14 accounted
    topup.add(load, detail(load, 2, 10, 20), asn=E)  # 15 the balance continues, the counter does not: waits
    topup.upload_in(pf, batch)
    pos = BatchChain(tmp_path, POS)
    pos.add(mr.PURCHASE, detail(mr.PURCHASE, 0, 200, 300), asn=A)  # the purchase stream has its own counter
    pos.add(mr.PURCHASE, detail(mr.PURCHASE, 1, 100, 100), asn=B)
    pos.add(mr.PURCHASE, detail(mr.PURCHASE, 1, 100, 0), asn=B)  # counter 1 again, other content: conflicting
    pos.upload_in(pf, batch)

    assert {asn: pf.card(asn)["balance_cents"] for asn in (A, B, D, E)} == {A: 300, B: 100, D: 0, E: 10}
    assert [(t["kind"], t["counter"], t["balance_after_cents"]) for t in pf.purse_transactions(A)] == [
        (mr.PURCHASE, 0, 300),
        (mr.LOAD, 0, 100),
        (mr.LOAD, 1, 200),
        (mr.LOAD, 2, 300),
        (mr.LOAD, 3, 400),
        (mr.LOAD, 4, 500),
    ]
    assert [t["counter"] for t in pf.purse_transactions(B) if t["kind"] == mr.LOAD] == [0, 1, 2, 3]
    held = {(h["terminal_id"], h["seq"]): (h["status"], h["reason_code"]) for h in pf.held_money(include_resolved=True)}
    assert held == {
        (TOPUP, 4): ("accounted", "counter_gap"),
        (TOPUP, 5): ("held", "replayed"),
        (TOPUP, 6): ("held", "unknown_card"),
        (TOPUP, 9): ("waiting", "balance_gap"),
        (TOPUP, 11): ("accounted", "counter_gap"),
        (TOPUP, 13): ("waiting", "balance_gap"),
        (TOPUP, 15): ("waiting", "counter_gap"),
        (POS, 3): ("held", "conflicting"),
    }
    assert pf.totals() == {mr.LOAD: 15, mr.PURCHASE: 3}
    pf.close()


TOPUP2 = "000000000302"


def test_two_workers_loading_the_same_cards_from_two_terminals_account_every_load_once(platform_db, tmp_path):
    """Each card's loads alternate between two top-up terminals, whose chains two workers ingest at once: a load
    that arrives before the one it continues waits, and is released by the worker that stores that one. A release
    neither worker sees (each committing without the other's rows) would leave a load waiting for ever."""
    import threading

    admin = Platform(platform_db, KEY, clock=lambda: NOW, unverified_money=True)
    admin.add_enterprise(ENTERPRISE, "Test Co")
    admin.add_holder(ENTERPRISE, "E1", "Zhang Wei")
    cards = [A, B, D]
    for tid in (TOPUP, TOPUP2):
        admin.add_terminal(tid, ENTERPRISE, kind="topup")
    for asn in cards:
        admin.issue_card(ENTERPRISE, "E1", asn)
    chains = {TOPUP: BatchChain(tmp_path, TOPUP), TOPUP2: BatchChain(tmp_path, TOPUP2)}
    balance = dict.fromkeys(cards, 0)
    for i in range(90):
        asn, counter = cards[i % 3], i // 3
        balance[asn] += 10 + i
        terminal = (TOPUP, TOPUP2)[counter % 2]
        chains[terminal].add(mr.LOAD, detail(mr.LOAD, counter, 10 + i, balance[asn]), asn=asn)
    events = {tid: chain.wire() for tid, chain in chains.items()}  # the logs stay in this thread
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(tid):
        pf = Platform(platform_db, KEY, clock=lambda: NOW, unverified_money=True)
        try:
            barrier.wait()
            chains[tid].upload_in(pf, 3, events[tid])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            pf.close()

    threads = [threading.Thread(target=worker, args=(tid,)) for tid in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert {asn: admin.card(asn)["balance_cents"] for asn in cards} == balance
    assert [h for h in admin.held_money() if h["status"] in ("waiting", "held")] == []
    assert sum(len(admin.purse_transactions(asn)) for asn in cards) == 90
    assert admin.totals() == {mr.LOAD: 90}
    admin.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
            st.one_of(st.none(), st.text(alphabet="\t\n\r\\'\",{}N", max_size=6)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_rows_stored_together_read_back_exactly_on_both_engines(platform_db, rows):
    """central.sql.insert_rows (COPY on PostgreSQL, executemany on SQLite) stores any text as given: tabs, newlines,
    backslashes, quotes, \\N, non-ASCII, NULL."""
    from central.sql import insert_rows

    pf = Platform(platform_db, KEY, clock=lambda: NOW)
    try:
        tid = "000000009999"
        batch = [
            (tid, i + 1, "2026-11-23T01:00:00.000000Z", "door.grant", None, "ok", m, d or "", "h")
            for i, (m, d) in enumerate(rows)
        ]
        with pf._txn():
            pf.conn.execute("DELETE FROM events WHERE terminal_id = ?", (tid,))
            insert_rows(pf.conn, "events", batch)
        got = pf.conn.execute(
            "SELECT terminal_id, seq, time, kind, asn, reason_code, message, detail, hash FROM events "
            "WHERE terminal_id = ? ORDER BY seq",
            (tid,),
        ).fetchall()
        assert [tuple(r) for r in got] == batch
    finally:
        pf.close()
