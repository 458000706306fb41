"""Benchmark: door decisions and POS purchases, per transport, with a large blacklist and the durable log.

Prints JSON lines. door_decision: SELECT + ACCESS READ + SAM verify + blacklist + log, as `Terminal.handle_tap`
makes it (targets: apdus <= 2, p99_ms <= 10 over pcscd). purchase: SELECT + INITIALIZE + DEBIT with the SAM's MAC1
and MAC2 and the intent and outcome records (targets: apdus <= 3, sam_apdus <= 2, p99_ms <= 20 over pcscd). Transports: in-process, pcscd + vpcd, nfcpy's
udp driver with the simulated ISO 14443-4 card (bench/nfc_roundtrip.py adds the activation time); fsyncs
per purchase are counted with strace in a separate short run when strace is installed. The card stays on the
reader; every iteration is one complete decision or purchase, timed host-side.

Run from the repository root: python bench/tap.py [--n 500] [--blacklist 1000000] [--transport all]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, without installing

from sam.keystore import KeystoreUnlock, save_keystore  # noqa: E402
from sam.software import SoftwareSam  # noqa: E402
from tests.support import MONDAY_10AM, make_card, make_keystore, make_terminal  # noqa: E402
from terminal.keypad import Charge  # noqa: E402

PURCHASE = Charge(1)  # 0.01 yuan per purchase: a card with 2,000.00 lasts the whole run


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


def measure(term, conn, count_apdus, n: int, request=None) -> tuple[list[float], float]:
    times = []
    before = count_apdus()
    for i in range(n):
        t0 = time.perf_counter()
        decision = term.handle_tap(conn, MONDAY_10AM, request)
        times.append((time.perf_counter() - t0) * 1000)
        if not decision.accepted:
            raise SystemExit(f"bench card was refused: {decision.message}")
        if (i + 1) % max(1, n // 5) == 0:
            print(f"decisions: {i + 1}/{n}", file=sys.stderr, flush=True)
    return times, (count_apdus() - before) / n


def line(name: str, transport: str, n: int, times: list[float], apdus: float, entries: int, **extra) -> str:
    return json.dumps({
        "name": name, "transport": transport, "n": n, "apdus": apdus,
        "p50_ms": round(statistics.median(times), 3), "p99_ms": round(percentile(times, 99), 3),
        "max_ms": round(max(times), 3), "blacklist_entries": entries, "log_synchronous": "FULL", **extra,
    })


class CountingSam:
    """Counts SAM operations (each is one PSAM APDU when the SAM is a card) without changing them."""

    def __init__(self, sam):
        self._sam, self.ops = sam, 0

    def __getattr__(self, name):
        attr = getattr(self._sam, name)
        if name in ("purchase_mac1", "verify_purchase_mac2", "verify_card_mac", "load_mac2", "verify_load_mac3"):
            def counted(*args, **kwargs):
                self.ops += 1
                return attr(*args, **kwargs)
            return counted
        return attr


def run_both(terms, conn, count_apdus, n: int, entries: int, transport: str) -> None:
    door, pos = terms
    times, apdus = measure(door, conn, count_apdus, n)
    print(line("door_decision", transport, n, times, apdus, entries), flush=True)
    sam = pos.purse.sam
    before = sam.ops
    times, apdus = measure(pos, conn, count_apdus, n, PURCHASE)
    print(line("purchase", transport, n, times, apdus, entries, sam_apdus=(sam.ops - before) / n,
               fsyncs=FSYNCS.get(transport)), flush=True)


def bench_inprocess(terms, card, n, entries) -> None:
    from simulator.inprocess import InProcessReader

    reader = InProcessReader()
    reader.tap(card)
    conn = reader.wait_for_card(0)
    run_both(terms, conn, lambda: reader.apdu_count, n, entries, "in-process")


def bench_reader(terms, reader, field, n, entries, transport: str) -> None:
    """Wait for the card `field` (the simulator's side of the transport) holds, warm up, then measure."""
    try:
        conn = reader.wait_for_card(10)
        if conn is None:
            raise SystemExit(f"{transport}: the reader did not report the simulated card within 10 s")
        for _ in range(20):  # warm up the connection and the caches
            terms[0].handle_tap(conn, MONDAY_10AM)
        run_both(terms, conn, lambda: field.apdu_count, n, entries, transport)
        conn.close()
    finally:
        field.remove()
        reader.close()


def bench_pcsc(terms, card, n, entries, work: Path) -> None:
    from simulator.pcscd import private_pcscd
    from simulator.vpcd import VirtualIcc
    from terminal.readers.pcsc import PcscReader

    with private_pcscd(n_readers=2, workdir=work / "pcscd") as pcscd:
        icc = VirtualIcc(pcscd.ports[0])
        icc.insert(card)
        bench_reader(terms, PcscReader(pcscd.names[0]), icc, n, entries, "pcscd+vpcd")


def bench_nfc(terms, card, n, entries) -> None:
    from simulator.nfc_udp import VirtualPicc
    from terminal.readers.nfc import NfcReader

    with VirtualPicc(label="bench") as picc:
        picc.insert(card)
        bench_reader(terms, NfcReader(picc.path), picc, n, entries, "nfcpy-udp")


FSYNCS: dict[str, float | None] = {}


def _fsync_calls(n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        subprocess.run(["strace", "-f", "-qq", "-c", "-o", str(out), "-e", "trace=fsync,fdatasync", sys.executable,
                        __file__, "--fsync-probe", str(n)], check=True, stdout=subprocess.DEVNULL)
        # strace -c rows: % time, seconds, usecs/call, calls, [errors], syscall
        return sum(int(row.split()[3]) for row in out.read_text().splitlines()
                   if row.split() and row.split()[-1] in ("fsync", "fdatasync"))


def count_fsyncs(n: int = 50) -> float | None:
    """fsync + fdatasync calls per purchase, as the difference between runs of n and 2n purchases under strace
    (so opening the databases does not count)."""
    if shutil.which("strace") is None:
        print("strace not installed: fsyncs per purchase not measured", file=sys.stderr)
        return None
    return round((_fsync_calls(2 * n) - _fsync_calls(n)) / n, 2)


def build(work: Path, blacklist_entries: int):
    # A SAM from a keystore file, as a terminal has: its TSN state file is written (and synced) per purchase.
    (work / "pass").write_text("bench\n")
    unlock = KeystoreUnlock.from_passphrase_file(work / "pass")
    save_keystore(work / "keystore", make_keystore(), unlock, scrypt_n=2**10)
    sam = SoftwareSam.open(work / "keystore", unlock)
    terms = []
    for kind in ("door", "pos"):
        (work / kind).mkdir()
        term, _screen = make_terminal(work / kind, sam if kind == "door" else CountingSam(sam), kind)
        term.outputs.stream = io.StringIO()
        terms.append(term)
    fill_blacklist(terms[0].blacklist, blacklist_entries)
    terms[1].blacklist.close()
    terms[1].blacklist = terms[1].purse.blacklist = terms[0].blacklist  # one 1M-entry list serves both
    card = make_card(sam, path=work / "card.json", opening_balance=200_000)
    return terms, card


def fsync_probe(n: int) -> None:
    """Runs under strace: n purchases in-process, nothing else that syncs (no blacklist fill)."""
    from simulator.inprocess import InProcessReader

    with tempfile.TemporaryDirectory(prefix="onecard-fsync-") as tmp:
        terms, card = build(Path(tmp), 0)
        reader = InProcessReader()
        reader.tap(card)
        conn = reader.wait_for_card(0)
        for _ in range(n):
            terms[1].handle_tap(conn, MONDAY_10AM, PURCHASE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--blacklist", type=int, default=1_000_000)
    ap.add_argument("--transport", choices=["all", "in-process", "pcscd", "nfcpy"], default="all")
    ap.add_argument("--fsync-probe", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fsync_probe:
        fsync_probe(args.fsync_probe)
        return
    per_purchase = count_fsyncs()
    FSYNCS.update({"in-process": per_purchase, "pcscd+vpcd": per_purchase, "nfcpy-udp": per_purchase})
    with tempfile.TemporaryDirectory(prefix="onecard-bench-") as tmp:
        work = Path(tmp)
        (work / "pcscd").mkdir()
        terms, card = build(work, args.blacklist)
        if args.transport in ("all", "in-process"):
            bench_inprocess(terms, card, args.n, args.blacklist)
        if args.transport in ("all", "pcscd"):
            bench_pcsc(terms, card, args.n, args.blacklist, work)
        if args.transport in ("all", "nfcpy"):
            bench_nfc(terms, card, args.n, args.blacklist)


if __name__ == "__main__":
    main()
