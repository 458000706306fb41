"""Platform ingest of money records (schema, kind, continuity checks; lab mode, no TAC) against door records.

Prints one JSON line per measurement. Run from the repository root: python bench/money_ingest.py [--records 20000]
[--backend sqlite|postgresql]; postgresql starts a private server from Debian's binaries (tests/pg_env.py), one
worker, one connection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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


def chain(path: Path, n: int, money: bool) -> list[p.WireEvent]:
    counters, balance = {a: 0 for a in ASNS}, {a: 0 for a in ASNS}
    with EventLog.open(path, TID) as log:
        log.db.execute("PRAGMA synchronous = OFF")
        for i in range(n):
            asn = ASNS[i % len(ASNS)]
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
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
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


def run(args, money: bool, server) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "p.db" if server is None else "postgresql:" + server.new_database()
        pf = Platform(db, Ed25519PrivateKey.generate(), unverified_money=True)
        pf.add_enterprise(EID, "Bench Co")
        pf.add_terminal(TID, EID, kind="topup")
        pf.add_holder(EID, "E1", "Bench")
        for asn in ASNS:
            pf.issue_card(EID, "E1", asn, max_balance_cents=2**32 - 1)
        events = chain(Path(tmp) / "t.db", args.records, money)
        t0 = time.perf_counter()
        for i in range(0, len(events), args.batch):
            pf.ingest(TID, events[i : i + args.batch])
        elapsed = time.perf_counter() - t0
        held = len(pf.held_money())
        total = sum(pf.card(a)["balance_cents"] for a in ASNS)
        pf.close()
    print(
        json.dumps(
            {
                "bench": "platform_ingest",
                "backend": args.backend,
                "kind": "topup.load" if money else "door.grant",
                "records": args.records,
                "batch": args.batch,
                "seconds": round(elapsed, 3),
                "records_per_s": round(args.records / elapsed),
                "held": held,
                "balance_total_cents": total,
            }
        )
    )


if __name__ == "__main__":
    main()
