"""Benchmark: door decisions over nfcpy's udp driver and the simulated ISO 14443-4 card (simulator.nfc_udp).

Prints JSON lines like bench/tap.py: "door_decision" (card held on the reader, one complete decision per iteration,
as Terminal.handle_tap makes it) and "activation" (poll + anticollision + RATS until a connection is returned).

Run from the repository root: python bench/nfc_roundtrip.py [--n 500] [--blacklist 1000000] [--fwi 7]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, without installing

from bench.tap import fill_blacklist, line, measure, percentile  # noqa: E402
from simulator.nfc_udp import DEFAULT_FWI, VirtualPicc  # noqa: E402
from terminal.readers.nfc import NfcReader  # noqa: E402
from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal  # noqa: E402

TRANSPORT = "nfcpy-udp"


def bench_activation(picc: VirtualPicc, reader: NfcReader, n: int) -> None:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = reader.wait_for_card(5)
        times.append((time.perf_counter() - t0) * 1000)
        if conn is None:
            raise SystemExit("nfcpy did not find the simulated card within 5 s")
    print(json.dumps({"name": "activation", "transport": TRANSPORT, "n": n, "fwi": picc.fwi,
                      "p50_ms": round(statistics.median(times), 3), "p99_ms": round(percentile(times, 99), 3),
                      "max_ms": round(max(times), 3)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--blacklist", type=int, default=1_000_000)
    ap.add_argument("--fwi", type=int, default=DEFAULT_FWI, help="the card's frame waiting time integer (ATS TB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-bench-") as tmp:
        work = Path(tmp)
        sam = make_sam()
        term, _screen = make_terminal(work, sam, "door")
        term.outputs.stream = io.StringIO()
        fill_blacklist(term.blacklist, args.blacklist)
        card = make_card(sam, path=work / "card.json")
        with VirtualPicc(label="bench", fwi=args.fwi) as picc:
            picc.insert(card)
            reader = NfcReader(picc.path)
            try:
                bench_activation(picc, reader, min(args.n, 200))
                conn = reader.wait_for_card(5)
                if conn is None:
                    raise SystemExit("nfcpy did not find the simulated card within 5 s")
                for _ in range(20):  # warm up the connection and the caches
                    term.handle_tap(conn, MONDAY_10AM)
                times, apdus = measure(term, conn, lambda: picc.apdu_count, args.n)
                conn.close()
            finally:
                reader.close()
        record = json.loads(line(TRANSPORT, args.n, times, apdus, args.blacklist))
        record["fwi"] = args.fwi
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
