"""Sync benchmarks on loopback mosquitto/TLS: backlog drain, loss propagation to 50 terminals, taps during a 1M
snapshot.

Prints one JSON line per measurement. Run from the repository root: python bench/sync.py [--backlog 100000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mqtt_env import (
    ENTERPRISE,
    TERMINAL_SYNC_TOML,
    TERMINALS,
    AgentThread,
    Broker,
    fill_log,  # noqa: E402
    make_pki,
    start_platform,
    terminal_id,
    wait_until,
    write_terminal_config,
)

TAP_TERMINAL = "000000000101"  # the ID tests.support.make_terminal gives its terminal


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def bench_drain(work: Path, broker: Broker, admin, backlog: int) -> dict:
    tid = terminal_id(1)
    cfg = write_terminal_config(
        work / "drain", tid, broker, batch_size=500, max_inflight_batches=8, max_events_per_s=1_000_000
    )
    n = fill_log(work / "drain" / "events.db", tid, backlog)
    t0 = time.perf_counter()
    agent = AgentThread(cfg).start()
    wait_until(lambda: admin.terminal(tid)["contiguous_seq"] == n, 600, "the backlog draining", interval=0.01)
    elapsed = time.perf_counter() - t0
    agent.stop()
    return {"name": "sync_drain", "backlog": n, "drain_tx_per_s": round(n / elapsed), "seconds": round(elapsed, 2)}


class AppliedTimes(logging.Handler):
    """Records when each terminal's agent logs sync.blacklist_applied (the blacklist file has committed)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[tuple[str, int], float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "event=sync.blacklist_applied" in msg:
            fields = dict(kv.split("=", 1) for kv in msg.split() if "=" in kv and not kv.startswith("text"))
            self.times[(fields["terminal"], int(fields["version"]))] = time.perf_counter()


def bench_loss(work: Path, broker: Broker, admin, terminals: int, rounds: int) -> dict:
    handler = AppliedTimes()
    logger = logging.getLogger("sync.agent")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    admin.add_holder(ENTERPRISE, "BENCH", "Bench Holder")
    asns = [f"{0xB0 + r:02X}00000000000001" for r in range(rounds)]
    for asn in asns:
        admin.issue_card(ENTERPRISE, "BENCH", asn)
    tids = [terminal_id(10 + i) for i in range(terminals)]
    agents = [
        AgentThread(write_terminal_config(work / f"loss{i}", tid, broker, heartbeat_seconds=600))
        for i, tid in enumerate(tids)
    ]
    for a in agents:
        a.start()
    wait_until(lambda: all(a.agent.online for a in agents), 60, "every agent connecting")
    time.sleep(1.0)  # let the connect-time sync answers settle so they do not mix with the measurement
    samples = []
    for asn in asns:
        t0 = time.perf_counter()
        v = admin.report_loss(asn)
        wait_until(
            lambda: all((t, v) in handler.times for t in tids), 60, "every terminal applying the loss", interval=0.005
        )
        samples += [(handler.times[(t, v)] - t0) * 1000 for t in tids]
    for a in agents:
        a.stop()
    logger.removeHandler(handler)
    return {
        "name": "loss_propagation",
        "terminals": terminals,
        "rounds": rounds,
        "propagation_p50_ms": round(statistics.median(samples), 1),
        "propagation_p99_ms": round(p99(samples), 1),
        "propagation_max_ms": round(max(samples), 1),
    }


def bench_tap_during_snapshot(work: Path, broker: Broker, admin, entries: int) -> dict:
    from simulator.inprocess import InProcessReader
    from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal

    v = admin.blacklist_bulk(ENTERPRISE, (i.to_bytes(8, "big") for i in range(1, entries + 1)))
    tdir = work / "tap"
    tdir.mkdir()
    sam = make_sam()
    term, _ = make_terminal(tdir, sam)
    card = make_card(sam)
    c = broker.pki.client(TAP_TERMINAL)
    cfg = tdir / "sync.toml"
    text = TERMINAL_SYNC_TOML.format(
        tid=TAP_TERMINAL,
        kind="door",
        eid=ENTERPRISE,
        dir=tdir,
        port=broker.port,
        ca=broker.pki.ca.cert,
        cert=c.cert,
        key=c.key,
        pub=broker.pki.platform_public,
        extra="",
    )
    text = text.replace(f"{tdir}/events.db", f"{tdir}/door.db").replace(
        f"{tdir}/blacklist.db", f"{tdir}/door-blacklist.db"
    )
    cfg.write_text(text, encoding="utf-8")
    # The agent in its own process, as deployed: its snapshot apply never shares a GIL with the taps.
    agent = subprocess.Popen(
        [sys.executable, "-m", "onecard", "--log-level", "WARNING", "sync", "run", "--config", str(cfg)],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    latencies = []
    deadline = time.monotonic() + 600
    try:
        while term.blacklist.version() != v and time.monotonic() < deadline:
            reader = InProcessReader()
            reader.tap(card)
            conn = reader.wait_for_card(0)
            t0 = time.perf_counter()
            decision = term.handle_tap(conn, MONDAY_10AM)
            latencies.append((time.perf_counter() - t0) * 1000)
            assert decision.accepted, decision.message
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    if term.blacklist.version() != v:
        raise SystemExit("the 1M snapshot was not applied within 600 s")
    return {
        "name": "tap_during_snapshot",
        "blacklist_entries": term.blacklist.count(),
        "taps": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(p99(latencies), 2),
        "max_ms": round(max(latencies), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--terminals", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--entries", type=int, default=1_000_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="onecard-bench-sync-") as tmp:
        work = Path(tmp)
        terminals = {**TERMINALS, TAP_TERMINAL: ENTERPRISE}
        pki = make_pki(work / "pki", terminals)
        broker = Broker(work / "broker", pki, terminals=terminals)
        broker.start()
        (work / "platform").mkdir()
        admin, service = start_platform(work / "platform", broker)
        try:
            print(json.dumps(bench_drain(work, broker, admin, args.backlog)), flush=True)
            print(json.dumps(bench_loss(work, broker, admin, args.terminals, args.rounds)), flush=True)
            print(json.dumps(bench_tap_during_snapshot(work, broker, admin, args.entries)), flush=True)
        finally:
            service.stop()
            admin.close()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
