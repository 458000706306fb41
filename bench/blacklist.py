"""Benchmark: apply a 1,000,000-entry blacklist snapshot, then time 100k lookups; prints one JSON line.

Run from the repository root: python bench/blacklist.py [--entries N] [--lookups N] [--keep DIR]
Targets: lookup p99 <= 50 µs, process RSS <= 60 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, without installing

from terminal.blacklist import Blacklist  # noqa: E402

REASONS = ("lost", "cancelled", "replaced", "damaged")


def rss_mb() -> float:
    # /proc first: no dependency; psutil elsewhere.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / (1024 * 1024)


def entries(n: int, rng: random.Random, sample: list[bytes], every: int):
    """Random ASNs, generated lazily (as a sync download would stream them); keeps every n-th for hits."""
    step = max(1, n // 20)
    for i in range(n):
        asn = rng.randbytes(8)
        if i % every == 0:
            sample.append(asn)
        if i % step == 0:
            print(f"\rsnapshot: {i:>9,}/{n:,} entries", end="", file=sys.stderr, flush=True)
        yield asn, REASONS[i & 3]
    print(f"\rsnapshot: {n:>9,}/{n:,} entries", file=sys.stderr, flush=True)


def percentile(sorted_values: list[int], p: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="directory for the database (default: a temp dir, removed)")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    print(f"rss at start: {rss_mb():.1f} MB", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        path = Path(tmp) / "blacklist.db"
        present: list[bytes] = []
        bl = Blacklist.open(path)
        t0 = time.perf_counter()
        bl.apply_snapshot(1, entries(args.entries, rng, present, every=20))
        snapshot_s = time.perf_counter() - t0
        bl.close()

        # Reopen, as the terminal process would after the sync agent applied the snapshot.
        bl = Blacklist.open(path)
        # Compact sample and timings (bytes blob, array) so the bench's own data barely moves RSS.
        present_blob = b"".join(present)
        del present
        n_present = len(present_blob) // 8

        def probe() -> bytes:  # half hits, half (almost surely) misses
            if rng.random() < 0.5:
                i = rng.randrange(n_present) * 8
                return present_blob[i : i + 8]
            return rng.randbytes(8)

        print(f"lookups: {args.lookups:,} (about half hits)", file=sys.stderr, flush=True)
        for _ in range(1000):  # warm the statement cache and the page cache like a running terminal
            bl.lookup(probe())
        times = array("q")
        hits = 0
        clock = time.perf_counter_ns
        for _ in range(args.lookups):
            asn = probe()
            t = clock()
            entry = bl.lookup(asn)
            times.append(clock() - t)
            hits += entry is not None
        times = sorted(times)
        result = {
            "name": "blacklist",
            "entries": bl.count(),
            "lookup_p50_us": round(percentile(times, 50) / 1000, 2),
            "lookup_p99_us": round(percentile(times, 99) / 1000, 2),
            "lookup_max_us": round(times[-1] / 1000, 2),
            "hits": hits,
            "rss_mb": round(rss_mb(), 1),
            "snapshot_apply_s": round(snapshot_s, 2),
            "db_mb": round(path.stat().st_size / (1024 * 1024), 1),
        }
        bl.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
