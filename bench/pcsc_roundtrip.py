"""One APDU round trip through a private pcscd + vpcd to a simulated card, timed from the PC/SC client; JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.pcscd import private_pcscd  # noqa: E402
from simulator.vpcd import VirtualIcc  # noqa: E402
from terminal.readers.pcsc import PcscReader  # noqa: E402


class StatusWordCard:
    """Answers 9000 at once, so the time measured is the transport's, not a card application's."""

    atr = bytes.fromhex("3B80800101")

    def power_on(self) -> None:
        pass

    def power_off(self) -> None:
        pass

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x90\x00"


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="timed round trips (default 2000)")
    ap.add_argument("--apdu", default="00A4040007A0000000031010", help="command APDU in hex")
    args = ap.parse_args()
    apdu = bytes.fromhex(args.apdu)

    with private_pcscd(n_readers=1) as pcscd:
        icc = VirtualIcc(pcscd.ports[0], label="bench")
        icc.insert(StatusWordCard())
        reader = PcscReader(pcscd.names[0])
        try:
            conn = reader.wait_for_card(10)
            if conn is None:
                raise SystemExit(f"pcscd did not report the virtual card within 10 s; see {pcscd.log_path}")
            for _ in range(100):  # warm up sockets, caches and the CPU frequency
                conn.transmit(apdu)
            times = []
            for _ in range(args.n):
                t = time.perf_counter()
                conn.transmit(apdu)
                times.append(time.perf_counter() - t)
            conn.close()
        finally:
            reader.close()
            icc.remove()
    times.sort()
    print(
        json.dumps(
            {
                "name": "pcsc_roundtrip",
                "transport": "pcscd+vpcd",
                "n": args.n,
                "apdu_bytes": len(apdu),
                "p50_ms": round(percentile(times, 50) * 1e3, 4),
                "p99_ms": round(percentile(times, 99) * 1e3, 4),
                "max_ms": round(times[-1] * 1e3, 4),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
