"""Platform ingest at operator scale: a 3-node RabbitMQ cluster with W AMQP worker processes, against the embedded
SQLite + one mosquitto with W MQTT worker processes, in the same run; then a loss report's fan-out.

Prints JSON lines (issue 14):
  {"name": "platform_ingest", "backend": "sqlite", "broker": "rabbitmq-3.10-cluster-3", ...}
  {"name": "platform_ingest", "backend": "sqlite", "broker": "mosquitto", ...}
  {"name": "loss_propagation", "terminals": N, "p50_ms": ..., "p99_ms": ..., "max_ms": ...}
Simulated terminals are simulator.fleet.LightTerminal: lightweight MQTT 3.1.1 clients on one thread publishing
sealed batches of real hash chains (every k-th record a top-up with a real TAC, checked by the workers).
`--backend postgresql` runs the cluster platform on the PostgreSQL store (a private server, tests/pg_env.py); the
embedded one stays on SQLite, its default, unless `--embedded-backend postgresql`.
The terminals send their uploads compressed ([sync].compress_uploads = true; --plain-uploads for JSON).
Run from the repository root: python bench/platform.py [--terminals 1000 --events 1000000] (the same as
python bench/platform_ingest.py; bench/platform.py says why there are two names)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from central.store import Platform  # noqa: E402
from sam.keystore import KeystoreUnlock, save_keystore  # noqa: E402
from simulator.broker import Broker, make_pki  # noqa: E402
from simulator.fleet import Fleet, LightTerminal, Records  # noqa: E402
from simulator.rabbitmq import RabbitCluster  # noqa: E402
from tests.support import make_keystore  # noqa: E402

EID = "00010001"


def tid_of(i: int) -> str:
    return f"{100000 + i:012d}"


def card_of(tid: str) -> str:
    return "0A0B" + tid


def setup_db(path: Path, key, tids: list[str]) -> None:
    pf = Platform(path, key)
    pf.add_enterprise(EID, "Bench Co")
    pf.add_holder(EID, "E1", "Bench")
    pf.add_holder(EID, "LOST", "Loser")
    for tid in tids:
        pf.add_terminal(tid, EID, kind="topup")
        pf.issue_card(EID, "E1", card_of(tid), max_balance_cents=2**31)
    pf.issue_card(EID, "LOST", "0C0D000000000001")
    pf.close()


def serve(db: Path, key: Path, ca: Path, cert_dir: Path, ks: Path, pw: Path, index: int, broker_args: list[str], log):
    args = [sys.executable, "-m", "onecard", "platform", "serve", "--db", db, "--key", key, "--ca", ca]
    args += ["--cert-dir", cert_dir, "--workers", "1", "--first-worker", str(index)]
    args += ["--tac-keystore", ks, "--passphrase-file", pw, *broker_args]
    return subprocess.Popen(
        [str(a) for a in args], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=log, stderr=log
    )


def counts(db: Path, key, records: list[Records]) -> dict:
    pf = Platform(db, key)
    try:
        total, distinct = pf.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT terminal_id || ':' || seq) FROM events"
        ).fetchone()
        balances_ok = all(pf.card(card_of(r.tid))["balance_cents"] == r.loaded for r in records)
        held = len(pf.held_money())
    finally:
        pf.close()
    expected = sum(len(r.events) for r in records)
    return {
        "lost": expected - distinct,
        "duplicates_stored": total - distinct,
        "balances_equal_tac_sums": balances_ok,
        "held": held,
    }


def broker_memory(cluster, broker) -> int:
    """Bytes held by the broker: every live RabbitMQ node's Erlang VM (erlang:memory(total)), or mosquitto's RSS."""
    if cluster is not None:
        return sum(int(cluster.ctl(n, "eval", "erlang:memory(total).").strip()) for n in cluster.live())
    import psutil

    return psutil.Process(broker.proc.pid).memory_info().rss


def cpu_seconds(procs, *, tree: bool = False) -> float:
    """CPU seconds used so far by `procs` (and, with `tree`, by their descendants: a RabbitMQ node's Erlang VM)."""
    import psutil

    total = 0.0
    for w in procs:
        try:
            top = psutil.Process(w.pid)
            for q in [top, *(top.children(recursive=True) if tree else [])]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def broker_procs(cluster, broker) -> list:
    if cluster is not None:
        return [n.proc for n in cluster.nodes if n.proc is not None]
    return [broker.proc]


def database_procs(args) -> list:
    """The PostgreSQL server's postmaster (its backends are its children), or nothing for SQLite (in the workers)."""
    if args.pg is None:
        return []
    import psutil

    pid = int((args.pg.data / "postmaster.pid").read_text().split()[0])
    return [psutil.Process(pid)]


def own_cpu_seconds() -> float:
    """This process's CPU time: the simulated fleet (its one loop thread) and the bench's polling."""
    t = os.times()
    return t.user + t.system


def run(label, broker_desc, addresses, amqp, work, pki, key_pem, ks, pw, records, args, cluster=None, broker=None):
    backend = args.embedded_backend if label == "embedded" else args.backend
    db = work / f"{label}.db" if backend == "sqlite" else "postgresql:" + args.pg.new_database()
    setup_db(db, pki.platform_key, [r.tid for r in records])
    log = open(work / f"{label}-workers.log", "ab")  # noqa: SIM115
    broker_args = (
        [a for host, port in amqp for a in ("--amqp", f"{host}:{port}")]
        if amqp
        else ["--broker-host", addresses[0][0], "--broker-port", str(addresses[0][1])]
    )
    workers = [
        serve(db, key_pem, pki.ca.cert, pki.platform_cert_dir, ks, pw, i, broker_args, log) for i in range(args.workers)
    ]
    terminals = [
        LightTerminal(
            r,
            addresses,
            pki.ca.cert,
            pki.client(r.tid).cert,
            pki.client(r.tid).key,
            pki.platform_key.public_key(),
            batch=args.batch,
            window=args.window,
            ack_timeout=15.0,
            start_node=i,
            compress=args.compress,
        )
        for i, r in enumerate(records)
    ]
    # The fleet encodes every batch before the timed phase (simulator.fleet.LightTerminal.pregenerate): its CPU
    # then goes to sending only, not to building what real terminals would build on their own cores.
    t_gen = time.monotonic()
    pregenerated = sum(t.pregenerate() for t in terminals)
    pregenerate_s = time.monotonic() - t_gen
    mem_before = broker_memory(cluster, broker)
    fleet = Fleet(terminals).start(pump=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(t.connected for t in terminals) < len(terminals):
        time.sleep(0.2)
    connected = sum(t.connected for t in terminals)
    time.sleep(3)  # the workers connect
    mem_after = broker_memory(cluster, broker)
    cpu_before = cpu_seconds(workers)
    brokers = broker_procs(cluster, broker)
    broker_cpu_before = [cpu_seconds([b], tree=True) for b in brokers]
    broker_cpu_killed = 0.0  # what the killed node used until it was killed
    fleet_cpu_before = own_cpu_seconds()
    database = database_procs(args) if backend == "postgresql" else []
    database_cpu_before = cpu_seconds(database, tree=True)
    expected = sum(len(r.events) for r in records)
    t0 = time.monotonic()
    fleet.pumping.set()
    killed = False
    while time.monotonic() - t0 < args.timeout:
        acked = sum(t.acked for t in terminals)
        if cluster is not None and not killed and acked >= expected * 0.3:
            broker_cpu_killed = cpu_seconds([cluster.nodes[1].proc], tree=True) - broker_cpu_before[1]
            cluster.kill(1)
            killed = True
        if acked >= expected:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    acked = sum(t.acked for t in terminals)
    worker_cpu = cpu_seconds(workers) - cpu_before
    broker_cpu = broker_cpu_killed + sum(
        cpu_seconds([b], tree=True) - before
        for b, before in zip(brokers, broker_cpu_before, strict=True)
        if b.poll() is None
    )
    fleet_cpu = own_cpu_seconds() - fleet_cpu_before
    database_cpu = cpu_seconds(database, tree=True) - database_cpu_before
    loss = None
    if args.loss:
        loss = loss_propagation(db, pki.platform_key, terminals)
    fleet.stop()
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
    log.close()
    line = {
        "name": "platform_ingest",
        "backend": backend,
        "broker": broker_desc,
        "terminals": connected,
        "workers": args.workers,
        "events": expected,
        "compressed_uploads": args.compress,
        "events_acked": acked,
        "seconds": round(elapsed, 2),
        "ingest_events_per_s": round(acked / elapsed),
        **counts(db, pki.platform_key, records),
        "node_killed": killed,
        "reconnects": sum(max(0, t.reconnects - 1) for t in terminals),
        "worker_cpu_s": round(worker_cpu, 1),
        "events_per_worker_cpu_s": round(acked / worker_cpu) if worker_cpu else None,
        "broker_cpu_s": round(broker_cpu, 1),
        "fleet_cpu_s": round(fleet_cpu, 1),
        "database_cpu_s": round(database_cpu, 1) if database else None,  # PostgreSQL's server; SQLite is in-worker
        "fleet_batches_pregenerated": pregenerated,
        "fleet_pregenerate_s": round(pregenerate_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "broker_kib_per_connection": round((mem_after - mem_before) / 1024 / max(1, connected), 1),
        "cores": os.cpu_count(),
    }
    print(json.dumps(line), flush=True)
    if loss:
        print(json.dumps({**loss, "broker": broker_desc}), flush=True)


def loss_propagation(db: Path, key, terminals: list[LightTerminal]) -> dict:
    """A loss report, from the platform's commit to each connected terminal's receipt of the signed delta."""
    for t in terminals:
        with t.lock:
            t.downlinks.clear()
    live = [t for t in terminals if t.connected]
    pf = Platform(db, key)
    backlog = len(pf.unpublished(limit=1_000_000))  # notifications still queued ahead of the loss report
    t0 = time.monotonic()
    pf.report_loss("0C0D000000000001")
    committed = time.monotonic()
    published = None  # when the publisher marked the delta published (the broker had it): the platform's share
    deadline = t0 + 60
    while time.monotonic() < deadline and not all(t.downlinks for t in live):
        if published is None and not pf.unpublished(limit=1):
            published = time.monotonic()
        time.sleep(0.01)
    pf.close()
    delays = sorted((t.downlinks[0][0] - t0) * 1000 for t in live if t.downlinks)
    missing = len(live) - len(delays)

    def pct(q):
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 1) if delays else None

    return {
        "name": "loss_propagation",
        "terminals": len(live),
        "received": len(delays),
        "missing": missing,
        "outbound_queued_before": backlog,
        "commit_ms": round((committed - t0) * 1000, 1),
        "published_ms": round((published - t0) * 1000, 1) if published is not None else None,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(delays[-1], 1) if delays else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--events", type=int, default=1_000_000, help="in all, split evenly over the terminals")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--money-every", type=int, default=20, help="every k-th record a TAC-checked top-up")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument(
        "--backend", choices=("sqlite", "postgresql"), default="sqlite", help="the cluster platform's store"
    )
    ap.add_argument(
        "--embedded-backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the embedded platform's store (its default is SQLite next to one mosquitto)",
    )
    ap.add_argument("--skip-embedded", action="store_true")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--no-loss", dest="loss", action="store_false")
    ap.add_argument(
        "--plain-uploads",
        dest="compress",
        action="store_false",
        help="send uploads as JSON; by default as zlib streams ([sync].compress_uploads = true)",
    )
    args = ap.parse_args()
    args.pg = None
    # A private server from Debian's binaries, one new database per run.
    if "postgresql" in (args.backend, args.embedded_backend):
        from tests.pg_env import PostgresServer

        args.pg = PostgresServer()
    try:
        bench(args)
    finally:
        if args.pg is not None:
            args.pg.close()


def bench(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keystore = make_keystore()
        save_keystore(work / "tac.keystore", keystore, KeystoreUnlock.from_passphrase("bench"))
        (work / "pw").write_text("bench\n")
        tids = [tid_of(i) for i in range(args.terminals)]
        pki = make_pki(work / "pki", {t: EID for t in tids})
        key_pem = work / "platform.key"
        key_pem.write_bytes(
            pki.platform_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        per = args.events // args.terminals
        t0 = time.monotonic()
        records = []
        for tid in tids:
            r = Records(tid, EID, card_of(tid), keystore, money_every=args.money_every)
            r.extend(per)
            records.append(r)
        print(json.dumps({"name": "setup", "records_built_s": round(time.monotonic() - t0, 1)}), file=sys.stderr)
        cluster = RabbitCluster(work / "rabbit", pki, {t: EID for t in tids}, workers=max(8, args.workers))
        if not args.skip_cluster:
            cluster.start()
        try:
            if not args.skip_cluster:
                run(
                    "cluster",
                    "rabbitmq-3.10-cluster-3",
                    cluster.mqtt_addresses,
                    cluster.amqp_addresses,
                    work,
                    pki,
                    key_pem,
                    work / "tac.keystore",
                    work / "pw",
                    records,
                    args,
                    cluster=cluster,
                )
        finally:
            cluster.stop()
        if not args.skip_embedded:
            broker = Broker(work / "mosquitto", pki, {t: EID for t in tids})
            broker.start()
            try:
                run(
                    "embedded",
                    "mosquitto",
                    [("127.0.0.1", broker.port)],
                    None,
                    work,
                    pki,
                    key_pem,
                    work / "tac.keystore",
                    work / "pw",
                    records,
                    args,
                    broker=broker,
                )
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
