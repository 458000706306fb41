"""Benchmark: resident memory of a real `onecard terminal run` process with a 1,000,000-entry blacklist.

The terminal is started as in production (its own process, keystore file, SQLite files) with the in-process
simulator reader, serves one tap (so the tap path, the SAM and the blacklist lookup have all run), and its VmRSS
is read from /proc. Prints one JSON line: name, kind, blacklist_entries, rss_mb. Target: rss_mb <= 60.

Run from the repository root: python bench/terminal_rss.py [--entries 1000000] [--kind door|pos]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # repo root, without installing

from sam.keystore import KeystoreUnlock, save_keystore  # noqa: E402
from sam.software import SoftwareSam  # noqa: E402
from terminal.blacklist import Blacklist  # noqa: E402
from tests.support import TERMINAL_TOML, make_card_v2, make_keystore  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS in /proc: this benchmark needs Linux")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--kind", choices=["door", "attendance"], default="door")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onecard-rss-") as tmp:
        work = Path(tmp)
        (work / "pass").write_text("bench\n")
        unlock = KeystoreUnlock.from_passphrase_file(work / "pass")
        save_keystore(work / "keystore", make_keystore(), unlock, scrypt_n=2**10)
        make_card_v2(SoftwareSam.open(work / "keystore", unlock), path=work / "card.json")
        rng = random.Random(3)
        print(f"blacklist: writing {args.entries:,} entries", file=sys.stderr, flush=True)
        with Blacklist.open(work / "blacklist.db") as bl:
            bl.apply_snapshot(1, ((rng.randbytes(8), "lost") for _ in range(args.entries)))
        toml = TERMINAL_TOML.format(kind=args.kind, db=work / "events.db", bl=work / "blacklist.db")
        toml = toml.replace('card = "unused.json"', f'card = "{work / "card.json"}"')
        toml = toml.replace('keystore = "unused.keystore"', f'keystore = "{work / "keystore"}"')
        toml = toml.replace('passphrase_file = "unused.pass"', f'passphrase_file = "{work / "pass"}"')
        (work / "firmware.toml").write_text(toml)
        err = work / "stderr"
        with open(err, "w") as err_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "onecard", "terminal", "run", "--config", str(work / "firmware.toml")],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
            )
        try:
            deadline = time.monotonic() + 60
            while "event=tap.decided" not in err.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the terminal did not serve its tap: {err.read_text()[-500:]}")
                time.sleep(0.1)
            time.sleep(0.5)
            rss = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    print(
        json.dumps(
            {"name": "terminal_rss", "kind": args.kind, "blacklist_entries": args.entries, "rss_mb": round(rss, 1)}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
