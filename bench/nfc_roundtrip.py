"""Benchmark: card activation over nfcpy's udp driver and the simulated ISO 14443-4 card (simulator.nfc_udp).

Prints one JSON line "activation" (poll + anticollision + RATS until a connection is returned). Door decisions and
purchases over nfcpy are measured by bench/tap.py (transport "nfcpy-udp").

Run from the repository root: python bench/nfc_roundtrip.py [--n 200] [--fwi 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, without installing

from bench.tap import percentile  # noqa: E402
from simulator.nfc_udp import DEFAULT_FWI, VirtualPicc  # noqa: E402
from terminal.readers.nfc import NfcReader  # noqa: E402
from tests.support import make_card_v2, make_sam  # noqa: E402

TRANSPORT = "nfcpy-udp"


def bench_activation(picc: VirtualPicc, reader: NfcReader, n: int) -> None:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = reader.wait_for_card(5)
        times.append((time.perf_counter() - t0) * 1000)
        if conn is None:
            raise SystemExit("nfcpy did not find the simulated card within 5 s")
    print(
        json.dumps(
            {
                "name": "activation",
                "transport": TRANSPORT,
                "n": n,
                "fwi": picc.fwi,
                "p50_ms": round(statistics.median(times), 3),
                "p99_ms": round(percentile(times, 99), 3),
                "max_ms": round(max(times), 3),
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--fwi", type=int, default=DEFAULT_FWI, help="the card's frame waiting time integer (ATS TB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-bench-") as tmp:
        card = make_card_v2(make_sam(), path=Path(tmp) / "card.json")
        with VirtualPicc(label="bench", fwi=args.fwi) as picc:
            picc.insert(card)
            reader = NfcReader(picc.path)
            try:
                bench_activation(picc, reader, args.n)
            finally:
                reader.close()


if __name__ == "__main__":
    main()
