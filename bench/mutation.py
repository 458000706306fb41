"""Mutation score of the sans-I/O protocol cores, with mutmut 3.

For each module: copy the repository (without .git/.venv) into a temporary directory, write a [tool.mutmut] section
that mutates only that module and runs only the fast test files that exercise it, run `mutmut run`, and count the
results. Mutants documented as equivalent in tests/mutation_equivalents.toml are excluded from the score (an entry
whose diff no longer matches the mutant mutmut generated is reported as stale and NOT excluded).

Prints one JSON line per module on stdout; progress on stderr. Slow (minutes per module): not part of .ci/run.
In a line, `mutants` counts the mutants scored (documented equivalents excluded, their number in
`excluded_equivalent`), `killed` those a test failed on (or that timed out), `survived` all the others (including
mutants no selected test reaches), `score` = 100 * killed / mutants.

    python bench/mutation.py                       # every module
    python bench/mutation.py --fail-under 95       # exit 1 if a module scores below 95 %
    python bench/mutation.py --module terminal/door.py
    python bench/mutation.py --module terminal/door.py --show-survivors   # diffs of the survivors on stderr

To cover another core, add it to MODULES with the fast test files that exercise it (those that start no pcscd,
broker or subprocess). A survivor is either a missing test (write it) or an equivalent mutant (document it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.toml"
PACKAGES = ["common", "central", "onecard", "terminal", "sam", "sync_agent", "simulator", "phone"]

# module -> the fast test files that exercise it (no pcscd, broker or subprocess; each runs in seconds)
MODULES: dict[str, list[str]] = {
    "terminal/card_protocol.py": [
        "tests/test_card_application.py",
        "tests/test_card_protocol_fuzz.py",
        "tests/test_mutation_card_protocol.py",
        "tests/test_mutation_card_history.py",
        "tests/test_mutation_card_v2.py",
        "tests/test_card_spec_tables.py",
    ],
    "common/card_apdu.py": ["tests/test_card_apdu.py", "tests/test_card_application.py"],
    "terminal/purse_protocol.py": ["tests/test_purse.py", "tests/test_mutation_purse_protocol.py"],
    "terminal/door.py": [
        "tests/test_door_attendance.py",
        "tests/test_mutation_door_rules.py",
        "tests/test_door_rules.py",
    ],
    "terminal/rules.py": ["tests/test_door_attendance.py", "tests/test_mutation_door_rules.py"],
    "terminal/attendance.py": ["tests/test_door_attendance.py", "tests/test_mutation_door_rules.py"],
    "sync_agent/core.py": [
        "tests/test_sync_protocol.py",
        "tests/test_mutation_sync.py",
        "tests/test_mutation_sync_epoch.py",
    ],
    "common/sync_protocol.py": [
        "tests/test_sync_protocol.py",
        "tests/test_mutation_sync.py",
        "tests/test_mutation_sync_downlinks.py",
        "tests/test_sync_compression.py",
    ],
    "sam/crypto.py": ["tests/test_crypto.py", "tests/test_mutation_crypto.py"],
    "terminal/door_monitor.py": ["tests/test_mutation_door_monitor.py", "tests/test_door_rules.py"],
    "central/attendance_rules.py": ["tests/test_attendance_rules.py"],
    "terminal/screens.py": ["tests/test_mutation_screens.py"],
    "common/ota.py": ["tests/test_ota.py", "tests/test_mutation_ota.py"],
    "terminal/meal_rules.py": ["tests/test_mutation_canteen.py"],
    "terminal/shifts.py": ["tests/test_mutation_canteen.py"],
    "terminal/spending_pin.py": ["tests/test_mutation_spending_pin.py"],
    "terminal/subsidy_protocol.py": ["tests/test_mutation_subsidy_protocol.py", "tests/test_subsidy_terminal.py"],
    "common/settlement.py": ["tests/test_mutation_canteen.py"],
    "common/stk.py": ["tests/test_stk_codec.py", "tests/test_mutation_stk.py", "tests/test_phone_menu.py"],
    "common/journal.py": ["tests/test_mutation_journal.py"],
    "common/passwords.py": ["tests/test_mutation_passwords.py", "tests/test_mutation_canteen.py"],
    "common/deletion_request.py": ["tests/test_mutation_deletion_request.py", "tests/test_stk_codec.py"],
    "common/bcd.py": ["tests/test_bcd.py", "tests/test_mutation_small_cores.py"],
    "common/door_events.py": ["tests/test_mutation_small_cores.py"],
    "terminal/decision.py": ["tests/test_mutation_small_cores.py"],
    "common/events.py": ["tests/test_mutation_events.py"],
    "sam/purse_crypto.py": ["tests/test_mutation_purse_crypto.py"],
    "common/registry_protocol.py": ["tests/test_registry_protocol.py", "tests/test_mutation_registry.py"],
    "terminal/authenticate.py": [
        "tests/test_mutation_authenticate.py",
        "tests/test_door_attendance.py",
        "tests/test_card_v2.py",
    ],
    "phone/handset.py": ["tests/test_mutation_handset.py", "tests/test_phone_menu.py", "tests/test_phone_menu_v2.py"],
}

KILLED = {"killed", "timeout", "caught by type check"}


def progress(msg: str) -> None:
    print(f"mutation: {msg}", file=sys.stderr, flush=True)


def load_equivalents() -> dict[str, list[dict]]:
    """module -> [{"mutant": ..., "diff": ..., "why": ...}]"""
    if not EQUIVALENTS.exists():
        return {}
    data = tomllib.loads(EQUIVALENTS.read_text("utf-8"))
    out: dict[str, list[dict]] = {}
    for entry in data.get("equivalent", []):
        out.setdefault(entry["module"], []).append(entry)
    return out


def copy_tree(dest: Path) -> None:
    for name in PACKAGES + ["tests", "docs"]:  # docs: tests that check the specs' tables against the code
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis"))
    for name in ["firmware.toml", "README.md"]:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)


def write_config(dest: Path, module: str, tests: list[str]) -> None:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    (dest / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        f"source_paths = {toml_list(PACKAGES)}\n"
        f"only_mutate = {toml_list([module])}\n"
        'also_copy = ["docs"]\n'
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        "use_git_change_detection = false\n"
        "track_dependencies = false\n"
        '\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
        "utf-8",
    )


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n) for n in json.loads(sys.stdin.read())}))
"""


def mutant_diffs(work: Path, env: dict, names: list[str]) -> dict[str, str]:
    """name -> unified diff of the mutant, all in one process (`mutmut show` is one process per mutant)."""
    if not names:
        return {}
    out = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=work,
        env=env,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def changed_lines(diff: str) -> str:
    """The -/+ lines of a unified diff, without the file headers: what an equivalents entry pins."""
    keep = [line.rstrip() for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return "\n".join(keep)


def run_module(module: str, tests: list[str], equivalents: list[dict], jobs: int, show: bool) -> dict:
    missing = [t for t in tests if not (ROOT / t).exists()]
    tests = [t for t in tests if t not in missing]
    for t in missing:
        progress(f"{module}: test file {t} not found, running without it")
    with tempfile.TemporaryDirectory(prefix="onecard-mutation-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        write_config(work, module, tests)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        t0 = time.monotonic()
        progress(f"{module}: mutmut run ({', '.join(tests)})")
        proc = subprocess.Popen(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tail: list[str] = []
        last = 0.0
        try:
            for line in proc.stdout:  # mutmut redraws a status line with \r; pass a sample of it through
                for part in line.replace("\r", "\n").splitlines():
                    if part.strip():
                        tail = (tail + [part])[-20:]
                        if time.monotonic() - last > 5:
                            progress(f"{module}: {part.strip()[:150]}")
                            last = time.monotonic()
        finally:
            if proc.poll() is None:  # interrupted: stop mutmut before its directory goes
                proc.terminate()
                proc.wait()
        if proc.wait() != 0:
            progress(f"{module}: mutmut run failed (exit {proc.returncode}); its last lines:")
            for part in tail:
                print("    " + part, file=sys.stderr)
            return {"name": "mutation", "module": module, "error": f"mutmut exit {proc.returncode}"}
        out = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        statuses = {}
        for line in out.splitlines():
            name, sep, status = line.strip().rpartition(": ")
            if sep:
                statuses[name] = status
        excluded, stale = [], []
        diffs = mutant_diffs(work, env, [e["mutant"] for e in equivalents if e["mutant"] in statuses])
        for entry in equivalents:
            name = entry["mutant"]
            if name not in statuses:
                stale.append(name)
                continue
            if changed_lines(diffs[name]) != entry["diff"].strip("\n"):
                stale.append(name)
                continue
            excluded.append(name)
        for name in stale:
            progress(
                f"{module}: equivalents entry {name} no longer matches its mutant: NOT excluded, update "
                f"{EQUIVALENTS.relative_to(ROOT)}"
            )
        counted = {n: s for n, s in statuses.items() if n not in excluded and s != "skipped"}
        killed = sum(1 for s in counted.values() if s in KILLED)
        survivors = sorted(n for n, s in counted.items() if s not in KILLED)
        if show:
            for name, diff in mutant_diffs(work, env, survivors).items():
                print(f"--- survivor {name} ({counted[name]})\n{diff}", file=sys.stderr)
        n = len(counted)
        progress(
            f"{module}: {n} mutants, {killed} killed, {len(survivors)} survived, {len(excluded)} excluded as "
            f"equivalent, {time.monotonic() - t0:.0f} s"
        )
        return {
            "name": "mutation",
            "module": module,
            "mutants": n,
            "killed": killed,
            "survived": len(survivors),
            "score": round(100.0 * killed / n, 1) if n else None,
            "excluded_equivalent": len(excluded),
            "stale_equivalents": len(stale),
            "survivors": survivors,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--module", action="append", choices=sorted(MODULES), help="module to mutate (repeatable; default: all)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1: shared machine)")
    parser.add_argument("--show-survivors", action="store_true", help="print each survivor's diff on stderr")
    parser.add_argument(
        "--fail-under",
        type=float,
        metavar="SCORE",
        help="exit 1 when a module scores below SCORE percent (the target is 95)",
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    # SIGTERM unwinds like Ctrl-C, so the temporary copy is removed and mutmut stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutation: mutmut is not installed: pip install 'mutmut>=3.8'", file=sys.stderr)
        return 2
    equivalents = load_equivalents()
    unknown = sorted(set(equivalents) - set(MODULES))
    if unknown:
        print(f"mutation: {EQUIVALENTS.relative_to(ROOT)} names unknown modules {unknown}", file=sys.stderr)
        return 2
    status = 0
    for module in args.module or list(MODULES):
        result = run_module(module, MODULES[module], equivalents.get(module, []), args.jobs, args.show_survivors)
        print(json.dumps(result), flush=True)
        if "error" in result or (
            args.fail_under is not None and result["score"] is not None and result["score"] < args.fail_under
        ):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
