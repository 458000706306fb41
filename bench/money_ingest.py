"""Platform ingest of money records (schema, kind, continuity checks; lab mode, no TAC) against door records.

Prints one JSON line per measurement. Run from the repository root: python bench/money_ingest.py [--records 20000]
[--backend sqlite|postgresql] [--workers N]; postgresql starts a private server from Debian's binaries
(tests/pg_env.py). With --workers N, N processes (one connection each) ingest N terminals' chains (disjoint cards)
into the one database at once; the records are split evenly over them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from central.store import Platform  # noqa: E402
from common import sync_protocol as p  # noqa: E402
from terminal.event_log import EventLog  # noqa: E402

EID, TID, ASNS = "00010001", "000000000301", [f"{i:016X}" for i in range(1, 101)]
START = dt.datetime(2026, 11, 23, 1, 0, tzinfo=dt.timezone.utc)


def terminal(w: int) -> str:
    """Worker w's terminal (worker 0's is TID)."""
    return f"{int(TID) + w:012d}"


def cards(w: int) -> list[str]:
    """Worker w's cards: its own 100, so that workers contend on the store, not on one card's balance."""
    return [f"{w * 0x1000 + i:016X}" for i in range(1, 101)]


def chain(path: Path, n: int, money: bool, w: int = 0) -> list[p.WireEvent]:
    asns = cards(w)
    counters, balance = {a: 0 for a in asns}, {a: 0 for a in asns}
    with EventLog.open(path, terminal(w)) as log:
        log.db.execute("PRAGMA synchronous = OFF")
        for i in range(n):
            asn = asns[i % len(asns)]
            if money:
                balance[asn] += 100
                d = {
                    "amount": 100,
                    "counter": counters[asn],
                    "date": "20261123",
                    "time": "100000",
                    "key_version": 1,
                    "algorithm": "AES128",
                    "intent_seq": 1,
                    "tac": "00" * 8,
                    "proof": "11" * 8,
                    "balance_after": balance[asn],
                    "resolved_at_next_tap": False,
                }
                counters[asn] += 1
                log.append(
                    START + dt.timedelta(seconds=i),
                    "topup.load",
                    asn=asn,
                    reason_code="completed",
                    message="Top-up",
                    detail=d,
                )
            else:
                log.append(
                    START + dt.timedelta(seconds=i),
                    "door.grant",
                    asn=asn,
                    reason_code="ok",
                    message="Welcome",
                    detail={"i": i},
                )
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000, help="records in all (split evenly over the workers)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument(
        "--workers", type=int, default=1, help="processes ingesting at once, each its own terminal, one database"
    )
    args = ap.parse_args()
    if args.workers < 1 or args.records < args.workers:
        ap.error("--workers must be at least 1 and at most --records")
    server = None
    if args.backend == "postgresql":
        from tests.pg_env import PostgresServer

        server = PostgresServer()
    try:
        for money in (False, True):
            run(args, money, server)
    finally:
        if server is not None:
            server.close()


def worker(db, w: int, events: list[p.WireEvent], batch: int, barrier, results) -> None:
    pf = Platform(db, Ed25519PrivateKey.generate(), unverified_money=True)
    barrier.wait()
    t0 = time.time()
    for i in range(0, len(events), batch):
        result = pf.ingest(terminal(w), events[i : i + batch])
        if result.problem:
            raise SystemExit(f"worker {w}: {result.problem}")
    results.put((w, t0, time.time()))
    pf.close()


def run(args, money: bool, server) -> None:
    n = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "p.db") if server is None else "postgresql:" + server.new_database()
        pf = Platform(db, Ed25519PrivateKey.generate(), unverified_money=True)
        pf.add_enterprise(EID, "Bench Co")
        pf.add_holder(EID, "E1", "Bench")
        chains = []
        for w in range(n):
            pf.add_terminal(terminal(w), EID, kind="topup")
            for asn in cards(w):
                pf.issue_card(EID, "E1", asn, max_balance_cents=2**32 - 1)
            chains.append(chain(Path(tmp) / f"t{w}.db", args.records // n, money, w))
        records = sum(len(c) for c in chains)
        if n == 1:
            t0 = time.perf_counter()
            for i in range(0, len(chains[0]), args.batch):
                pf.ingest(terminal(0), chains[0][i : i + args.batch])
            elapsed = time.perf_counter() - t0
        else:
            ctx = mp.get_context("fork")
            barrier, results = ctx.Barrier(n), ctx.Queue()
            procs = [
                ctx.Process(target=worker, args=(db, w, chains[w], args.batch, barrier, results)) for w in range(n)
            ]
            for proc in procs:
                proc.start()
            spans = []
            while len(spans) < n:  # a worker that dies (its traceback on stderr) ends the run instead of hanging it
                try:
                    spans.append(results.get(timeout=1))
                except queue.Empty:
                    if any(proc.exitcode for proc in procs):
                        for proc in procs:
                            proc.kill()
                        raise SystemExit("a worker failed; its error is above") from None
            for proc in procs:
                proc.join()
                if proc.exitcode:
                    raise SystemExit(f"a worker failed (exit code {proc.exitcode})")
            elapsed = max(s[2] for s in spans) - min(s[1] for s in spans)
        held = len(pf.held_money())
        total = sum(pf.card(a)["balance_cents"] for w in range(n) for a in cards(w))
        stored = sum(pf.totals().values())
        pf.close()
    print(
        json.dumps(
            {
                "bench": "platform_ingest",
                "backend": args.backend,
                "kind": "topup.load" if money else "door.grant",
                "workers": n,
                "records": records,
                "stored": stored,
                "batch": args.batch,
                "seconds": round(elapsed, 3),
                "records_per_s": round(records / elapsed),
                "held": held,
                "balance_total_cents": total,
            }
        )
    )


if __name__ == "__main__":
    main()
