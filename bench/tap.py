"""Benchmark: door decisions (SELECT + ACCESS READ + SAM verify + blacklist + durable log) per transport.

Prints one JSON line per transport: name, transport, n, apdus (card round trips per decision), p50_ms, p99_ms,
blacklist_entries, log_fsync ("FULL"). The card stays on the reader; each iteration is one complete decision as
`Terminal.handle_tap` makes it, timed host-side. Targets: apdus <= 2, p99_ms <= 10 over pcscd.

Run from the repository root: python bench/tap.py [--n 500] [--blacklist 1000000] [--transport both]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, without installing

from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def fill_blacklist(blacklist, n: int) -> None:
    rng = random.Random(7)
    step = max(1, n // 10)

    def entries():
        for i in range(n):
            if i % step == 0:
                print(f"\rblacklist: {i:>9,}/{n:,}", end="", file=sys.stderr, flush=True)
            yield rng.randbytes(8), "lost"
        print(f"\rblacklist: {n:>9,}/{n:,}", file=sys.stderr, flush=True)

    blacklist.apply_snapshot(1, entries())


def measure(term, conn, count_apdus, n: int) -> tuple[list[float], float]:
    times = []
    before = count_apdus()
    for i in range(n):
        t0 = time.perf_counter()
        decision = term.handle_tap(conn, MONDAY_10AM)
        times.append((time.perf_counter() - t0) * 1000)
        if not decision.accepted:
            raise SystemExit(f"bench card was refused: {decision.message}")
        if (i + 1) % max(1, n // 5) == 0:
            print(f"decisions: {i + 1}/{n}", file=sys.stderr, flush=True)
    return times, (count_apdus() - before) / n


def line(transport: str, n: int, times: list[float], apdus: float, entries: int) -> str:
    return json.dumps({
        "name": "door_decision", "transport": transport, "n": n, "apdus": apdus,
        "p50_ms": round(statistics.median(times), 3), "p99_ms": round(percentile(times, 99), 3),
        "max_ms": round(max(times), 3), "blacklist_entries": entries, "log_fsync": "FULL",
    })


def bench_inprocess(term, card, n, entries) -> None:
    from simulator.inprocess import InProcessReader

    reader = InProcessReader()
    reader.tap(card)
    conn = reader.wait_for_card(0)
    times, apdus = measure(term, conn, lambda: reader.apdu_count, n)
    print(line("in-process", n, times, apdus, entries), flush=True)


def bench_pcsc(term, card, n, entries, work: Path) -> None:
    from simulator.pcscd import private_pcscd
    from simulator.vpcd import VirtualIcc
    from terminal.readers.pcsc import PcscReader

    with private_pcscd(n_readers=2, workdir=work / "pcscd") as pcscd:
        icc = VirtualIcc(pcscd.ports[0])
        icc.insert(card)
        reader = PcscReader(pcscd.names[0])
        try:
            conn = reader.wait_for_card(10)
            if conn is None:
                raise SystemExit("pcscd did not report the virtual card within 10 s")
            for _ in range(20):  # warm up the connection and the caches
                term.handle_tap(conn, MONDAY_10AM)
            times, apdus = measure(term, conn, lambda: icc.apdu_count, n)
            conn.close()
        finally:
            icc.remove()
            reader.close()
    print(line("pcscd+vpcd", n, times, apdus, entries), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--blacklist", type=int, default=1_000_000)
    ap.add_argument("--transport", choices=["both", "in-process", "pcscd"], default="both")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-bench-") as tmp:
        work = Path(tmp)
        (work / "pcscd").mkdir()
        sam = make_sam()
        term, _screen = make_terminal(work, sam, "door")
        term.outputs.stream = io.StringIO()
        fill_blacklist(term.blacklist, args.blacklist)
        card = make_card(sam, path=work / "card.json")
        if args.transport in ("both", "in-process"):
            bench_inprocess(term, card, args.n, args.blacklist)
        if args.transport in ("both", "pcscd"):
            bench_pcsc(term, card, args.n, args.blacklist, work)


if __name__ == "__main__":
    main()
