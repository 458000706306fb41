#!/usr/bin/env python3
"""Make a test CA, broker/platform/terminal certificates, the ACL and a mosquitto.conf (cryptography only, no
openssl)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from central.broker_config import DEFAULT_PLATFORM_WORKERS, render_acl, render_conf, worker_cns  # noqa: E402
from simulator.test_pki import TestCa  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("outdir", type=Path)
    ap.add_argument(
        "--terminal",
        action="append",
        default=[],
        metavar="TID:EID",
        help="a terminal and its enterprise, e.g. 000000000001:00010001 (repeat)",
    )
    ap.add_argument(
        "--station",
        action="append",
        default=[],
        metavar="SID:EID",
        help="an issuing station and its enterprise (registry topics in the ACL), repeatable",
    )
    ap.add_argument("--host", action="append", default=[], help="broker host name or IP for the server certificate")
    ap.add_argument("--port", type=int, default=8883)
    ap.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_PLATFORM_WORKERS,
        help="platform workers: one certificate (platform-wN) and ACL block each",
    )
    args = ap.parse_args()
    terminals, stations = {}, {}
    for items, into in ((args.terminal, terminals), (args.station, stations)):
        for item in items:
            tid, _, eid = item.partition(":")
            into[tid] = eid
    ca = TestCa(args.outdir, days=365)
    server = ca.issue(
        args.host[0] if args.host else "127.0.0.1", server=True, hosts=tuple(args.host) or ("127.0.0.1", "localhost")
    )
    try:
        platform = worker_cns(args.workers)
        acl_text = render_acl(terminals, args.workers, stations=stations)
    except ValueError as exc:
        print(
            f"error: {exc}; pass --terminal TID:EID and --station SID:EID with 12 and 8 digits and --workers 1..64",
            file=sys.stderr,
        )
        return 2
    for cn in [*platform, *terminals, *stations]:
        ca.issue(cn)
    (args.outdir / "acl").write_text(acl_text, encoding="utf-8")
    (args.outdir / "mosquitto.conf").write_text(
        render_conf(port=args.port, ca=ca.files.cert, server=server, acl=args.outdir / "acl", bind="0.0.0.0"),
        encoding="utf-8",
    )
    print(
        f"CA, certificates (server, {', '.join(platform)}, {len(terminals)} terminal(s), {len(stations)} "
        "station(s)), acl and mosquitto.conf "
        f"written to {args.outdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
