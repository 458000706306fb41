"""Issuing-station registry round trips over loopback mosquitto/TLS: a holder lookup per request, signed answer
verified (what every `onecard issue card` does a few times). Prints one JSON line.

Run from the repository root: python bench/registry.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.mqtt import TlsFiles  # noqa: E402
from terminal.registry_client import MqttRegistry, load_platform_public_key  # noqa: E402
from tests.mqtt_env import ENTERPRISE, STATIONS, Broker, make_pki, start_platform  # noqa: E402

STATION = next(sid for sid, eid in STATIONS.items() if eid == ENTERPRISE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-bench-registry-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki", {})
        broker = Broker(work / "broker", pki, terminals={}, stations=dict(STATIONS))
        broker.start()
        try:
            admin, service = start_platform(work, broker, terminals={STATION: ENTERPRISE}, kinds={STATION: "issuing"})
            admin.add_holder(ENTERPRISE, "E1", "Zhang Wei", phone="13800000001")
            c = pki.client(STATION)
            times = []
            with MqttRegistry(
                STATION,
                "127.0.0.1",
                broker.port,
                TlsFiles(pki.ca.cert, c.cert, c.key),
                load_platform_public_key(pki.platform_public),
            ) as registry:
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    registry.holder(ENTERPRISE, "E1")
                    times.append((time.perf_counter() - t0) * 1000)
            service.stop()
            admin.close()
        finally:
            broker.stop()
    print(
        json.dumps(
            {
                "bench": "registry_holder_round_trip",
                "requests": len(times),
                "p50_ms": round(statistics.median(times), 2),
                "p99_ms": round(statistics.quantiles(times, n=100)[98], 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
