"""Benchmark: door decisions and POS purchases, per transport, with a large blacklist and the durable log.

Prints JSON lines, one per (decision, transport). door_decision: SELECT + ACCESS READ + SAM verify + blacklist +
log, as `Terminal.handle_tap` makes it. purchase: SELECT + INITIALIZE + DEBIT with the SAM's MAC1 and MAC2 and the
intent and outcome records. Transports: in-process, pcscd + vpcd, nfcpy's udp driver with the simulated ISO 14443-4
card (bench/nfc_roundtrip.py adds the activation time). The card stays on the reader; every iteration is one
complete decision, timed host-side.

Each line also has:
- fsyncs: fsync + fdatasync calls per decision (strace, the difference between runs of n and 2n decisions, so
  opening the databases does not count; null without strace). Targets: door 1, purchase 2.
- bytes_written: write_bytes of /proc/self/io per decision (what reaches the SD card, checkpoints included).
  Targets: door <= 16 KiB, purchase <= 32 KiB.
- cpu_ms: process CPU per decision (the simulated card and, over pcscd, vpcd's card side run in this process too).
- floor_ms: p50 of what the decision cannot avoid, measured in the same run on the same transport: the time its
  own card round trips took on the reader's connection (SCardTransmit / nfcpy exchange, the card's work included,
  the terminal's deadline thread excluded) plus as many bare durable SQLite commits (WAL, synchronous=FULL, one
  small row each) as the decision makes, made right after it.
- overhead_ratio: p50_ms / floor_ms. Targets over pcscd: <= 2.0 for both.

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

from common.db import connect_readwrite  # noqa: E402
from sam.keystore import KeystoreUnlock, save_keystore  # noqa: E402
from sam.software import SoftwareSam  # noqa: E402
from terminal.event_log import AUTOCHECKPOINT_PAGES, CHECKPOINT_AFTER_RECORDS, PAGE_SIZE  # noqa: E402
from terminal.keypad import Charge  # noqa: E402
from terminal.sam_state_log import LoggedSamState  # noqa: E402
from tests.support import MONDAY_10AM, make_card_v2, make_keystore, make_terminal  # noqa: E402

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


def io_written() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("write_bytes:")).split()[1])


class Timed:
    """The reader's own connection, timing each bare round trip (what SCardTransmit / nfcpy's exchange takes)."""

    def __init__(self, conn):
        self.conn, self.atr, self.spent = conn, conn.atr, 0.0

    def transmit(self, apdu: bytes) -> bytes:
        t0 = time.perf_counter()
        try:
            return self.conn.transmit(apdu)
        finally:
            self.spent += time.perf_counter() - t0

    def close(self) -> None:
        pass


def measure(term, conn, count_apdus, n: int, commits: int, work: Path, request=None) -> dict:
    """n decisions. Each one's floor is its own bare round trips (timed on the reader's connection, below the
    terminal's deadline thread) plus `commits` bare durable SQLite commits made right after it, so that both see
    the same load on a shared machine. Bytes written include the log checkpoints the idle tap loop makes."""
    times, floors = [], []
    apdus = written = cpu = 0.0
    commit = BareCommits(work, commits)
    timed = Timed(conn)
    try:
        for i in range(n):
            a, w, c = count_apdus(), io_written(), time.process_time()
            timed.spent = 0.0
            t0 = time.perf_counter()
            decision = term.handle_tap(timed, MONDAY_10AM, request)
            times.append((time.perf_counter() - t0) * 1000)
            c = time.process_time() - c
            term.event_log.checkpoint_if_due()  # what Terminal.run does while no card is presented
            w, a = io_written() - w, count_apdus() - a
            apdus, written, cpu = apdus + a, written + w, cpu + c
            if not decision.accepted:
                raise SystemExit(f"bench card was refused: {decision.message}")
            floors.append(timed.spent * 1000 + commit())
            if (i + 1) % max(1, n // 5) == 0:
                print(f"decisions: {i + 1}/{n}", file=sys.stderr, flush=True)
    finally:
        commit.close()
    return {
        "times": times,
        "apdus": apdus / n,
        "bytes_written": round(written / n),
        "cpu_ms": round(cpu * 1000 / n, 3),
        "floor_ms": statistics.median(floors),
    }


class BareCommits:
    """`commits` durable commits of one small row each; call for their ms. Stored as the log is (WAL,
    synchronous=FULL, the same page size, checkpointed between decisions, untimed, as the log is when idle)."""

    def __init__(self, work: Path, commits: int):
        self.commits, self.made = commits, 0
        self.db = connect_readwrite(work / f"floor-{commits}.db", page_size=PAGE_SIZE)
        self.db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        self.db.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, detail TEXT NOT NULL)")
        self.row = "x" * 300  # about the size of a logged decision

    def __call__(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.commits):
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO t (detail) VALUES (?)", (self.row,))
            self.db.execute("COMMIT")
        spent = (time.perf_counter() - t0) * 1000
        self.made += self.commits
        if self.made % CHECKPOINT_AFTER_RECORDS < self.commits:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return spent

    def close(self) -> None:
        self.db.close()


def line(name: str, transport: str, n: int, m: dict, entries: int, **extra) -> str:
    times = m["times"]
    p50, floor = statistics.median(times), m["floor_ms"]
    return json.dumps(
        {
            "name": name,
            "transport": transport,
            "n": n,
            "apdus": m["apdus"],
            "p50_ms": round(p50, 3),
            "p99_ms": round(percentile(times, 99), 3),
            "max_ms": round(max(times), 3),
            "blacklist_entries": entries,
            "log_synchronous": "FULL",
            "fsyncs": FSYNCS.get(name),
            "bytes_written": m["bytes_written"],
            "cpu_ms": m["cpu_ms"],
            "floor_ms": round(floor, 3),
            "overhead_ratio": round(p50 / floor, 2),
            **extra,
        }
    )


class CountingSam:
    """Counts SAM operations (each is one PSAM APDU when the SAM is a card) without changing them."""

    def __init__(self, sam):
        self._sam, self.ops = sam, 0

    def __getattr__(self, name):
        attr = getattr(self._sam, name)
        if name in (
            "purchase_mac1",
            "purchase_mac1_sealed",  # a version 2 card: the same PSAM APDU opens the sealed balance (5.2a)
            "verify_purchase_mac2",
            "verify_card_mac",
            "load_mac2",
            "load_mac2_sealed",
            "reversal_mac2_sealed",
            "verify_load_mac3",
        ):

            def counted(*args, **kwargs):
                self.ops += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def run_both(terms, conn, count_apdus, n: int, entries: int, transport: str, work: Path) -> None:
    door, pos = terms
    print(line("door_decision", transport, n, measure(door, conn, count_apdus, n, 1, work), entries), flush=True)
    sam = pos.purse.sam
    before = sam.ops
    m = measure(pos, conn, count_apdus, n, 2, work, PURCHASE)
    print(line("purchase", transport, n, m, entries, sam_apdus=(sam.ops - before) / n), flush=True)


def bench_inprocess(terms, card, n, entries, work) -> None:
    from simulator.inprocess import InProcessReader

    reader = InProcessReader()
    reader.tap(card)
    conn = reader.wait_for_card(0)
    run_both(terms, conn, lambda: reader.apdu_count, n, entries, "in-process", work)
    two_purse(terms[1], n, entries, work)


def two_purse(pos, n: int, entries: int, work: Path) -> None:
    """A purchase from a card with a subsidy purse: one two-purse sale (docs/card-application.md 5.6), same
    targets as a plain purchase (3 card APDUs, 2 SAM operations). In-process only: the counts do not depend on the
    transport, and the plain purchase lines already give each transport's time."""
    import datetime as dt

    from common import bcd
    from simulator.card import SubsidyPurse
    from simulator.inprocess import InProcessReader

    card = make_card_v2(pos.purse.sam, opening_balance=200_000)
    # Both purses hold money, so every sale is a two-purse sale (subsidy first); it lasts the whole run.
    card.state.subsidy = SubsidyPurse(100_000, bcd.encode_date(dt.date(2026, 12, 31)), 100_000)
    reader = InProcessReader()
    reader.tap(card)
    conn = reader.wait_for_card(0)
    sam = pos.purse.sam
    before = sam.ops
    m = measure(pos, conn, lambda: reader.apdu_count, n, 2, work, PURCHASE)
    print(line("two_purse_purchase", "in-process", n, m, entries, sam_apdus=(sam.ops - before) / n), flush=True)


def bench_reader(terms, reader, field, n, entries, transport: str, work: Path) -> None:
    """Wait for the card `field` (the simulator's side of the transport) holds, warm up, then measure."""
    try:
        conn = reader.wait_for_card(10)
        if conn is None:
            raise SystemExit(f"{transport}: the reader did not report the simulated card within 10 s")
        for _ in range(20):  # warm up the connection and the caches
            terms[0].handle_tap(conn, MONDAY_10AM)
        run_both(terms, conn, lambda: field.apdu_count, n, entries, transport, work)
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
        bench_reader(terms, PcscReader(pcscd.names[0]), icc, n, entries, "pcscd+vpcd", work)


def bench_nfc(terms, card, n, entries, work) -> None:
    from simulator.nfc_udp import VirtualPicc
    from terminal.readers.nfc import NfcReader

    with VirtualPicc(label="bench") as picc:
        picc.insert(card)
        bench_reader(terms, NfcReader(picc.path), picc, n, entries, "nfcpy-udp", work)


FSYNCS: dict[str, float | None] = {}


def _fsync_calls(kind: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        subprocess.run(
            [
                "strace",
                "-f",
                "-qq",
                "-c",
                "-o",
                str(out),
                "-e",
                "trace=fsync,fdatasync",
                sys.executable,
                __file__,
                "--fsync-probe",
                kind,
                str(n),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # strace -c rows: % time, seconds, usecs/call, calls, [errors], syscall
        return sum(
            int(row.split()[3])
            for row in out.read_text().splitlines()
            if row.split() and row.split()[-1] in ("fsync", "fdatasync")
        )


def count_fsyncs(kind: str, n: int = 100) -> float | None:
    """fsync + fdatasync calls per decision, as the difference between runs of n and 2n decisions under strace
    (so opening the databases does not count)."""
    if shutil.which("strace") is None:
        print("strace not installed: fsyncs per decision not measured", file=sys.stderr)
        return None
    return round((_fsync_calls(kind, 2 * n) - _fsync_calls(kind, n)) / n, 2)


def build(work: Path, blacklist_entries: int):
    # The SAM as `onecard terminal run` opens it: a keystore file, its purse state (TSN) kept in the POS's log.
    (work / "pass").write_text("bench\n")
    unlock = KeystoreUnlock.from_passphrase_file(work / "pass")
    save_keystore(work / "keystore", make_keystore(), unlock, scrypt_n=2**10)
    terms = []
    for kind in ("door", "pos"):
        (work / kind).mkdir()
        term, _screen = make_terminal(work / kind, None, kind)
        term.outputs.stream = io.StringIO()
        terms.append(term)
    door, pos = terms
    sam = SoftwareSam.open(
        work / "keystore", unlock, state=LoggedSamState(pos.event_log, pos.config.terminal.enterprise_id)
    )
    door.sam = sam
    pos.sam = pos.purse.sam = CountingSam(sam)
    fill_blacklist(door.blacklist, blacklist_entries)
    pos.blacklist.close()
    pos.blacklist = pos.purse.blacklist = door.blacklist  # one 1M-entry list serves both
    # In memory: the simulated card's state file would be written inside the DEBIT round trip, i.e. in the floor.
    card = make_card_v2(sam, opening_balance=200_000)  # version 2: door 2 APDUs, purchase 3
    return terms, card


def fsync_probe(kind: str, n: int) -> None:
    """Runs under strace: n decisions in-process, nothing else that syncs (no blacklist fill)."""
    from simulator.inprocess import InProcessReader

    with tempfile.TemporaryDirectory(prefix="onecard-fsync-") as tmp:
        terms, card = build(Path(tmp), 0)
        reader = InProcessReader()
        reader.tap(card)
        conn = reader.wait_for_card(0)
        term, request = (terms[0], None) if kind == "door_decision" else (terms[1], PURCHASE)
        for _ in range(n):
            term.handle_tap(conn, MONDAY_10AM, request)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--blacklist", type=int, default=1_000_000)
    ap.add_argument("--transport", choices=["all", "in-process", "pcscd", "nfcpy"], default="all")
    ap.add_argument("--fsync-probe", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fsync_probe:
        fsync_probe(args.fsync_probe[0], int(args.fsync_probe[1]))
        return
    FSYNCS.update({name: count_fsyncs(name) for name in ("door_decision", "purchase")})
    # The SD card's stand-in is the repository's disk, not a tmpfs /tmp: write_bytes and fsyncs are real there.
    with tempfile.TemporaryDirectory(prefix="onecard-bench-", dir=Path(__file__).resolve().parent) as tmp:
        work = Path(tmp)
        (work / "pcscd").mkdir()
        terms, card = build(work, args.blacklist)
        if args.transport in ("all", "in-process"):
            bench_inprocess(terms, card, args.n, args.blacklist, work)
        if args.transport in ("all", "pcscd"):
            bench_pcsc(terms, card, args.n, args.blacklist, work)
        if args.transport in ("all", "nfcpy"):
            bench_nfc(terms, card, args.n, args.blacklist, work)


if __name__ == "__main__":
    main()
