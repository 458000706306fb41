"""The mutation run's own data: every documented equivalent mutant names a configured module, its diff and a reason,
and every configured module's test files exist (bench/mutation.py, issue 15)."""

import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_mutation():
    spec = importlib.util.spec_from_file_location("bench_mutation", ROOT / "bench" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_module_has_existing_fast_test_files():
    m = bench_mutation()
    # Issue 15's cores, the door logic and screens of issue 10, the SIM toolkit codec of issue 11, the SCP80 core of
    # issue 12, the canteen's of issue 13: a new core is added, never one dropped.
    assert set(m.MODULES) == {
        "terminal/door_monitor.py",
        "terminal/screens.py",
        "terminal/card_protocol.py",
        "terminal/purse_protocol.py",
        "terminal/door.py",
        "terminal/rules.py",
        "terminal/attendance.py",
        "sync_agent/core.py",
        "common/sync_protocol.py",
        "sam/crypto.py",
        "terminal/meal_rules.py",  # issue 13's canteen cores
        "terminal/shifts.py",
        "common/settlement.py",
        "common/ota.py",  # issue 12's SCP80 core
        "common/stk.py",  # issue 11's SIM toolkit codec
        "central/attendance_rules.py",  # issue 13
        "common/journal.py",  # sans-I/O cores of tests/layering.py SANS_IO_CORES
        "common/passwords.py",
        "common/deletion_request.py",
        "common/bcd.py",
        "common/door_events.py",
        "terminal/decision.py",
        "common/events.py",
        "sam/purse_crypto.py",
        "common/registry_protocol.py",
        "terminal/authenticate.py",
        "phone/handset.py",
        "terminal/spending_pin.py",  # issue 13's spending password
        "terminal/subsidy_protocol.py",  # issue 13's subsidy purse
        "common/card_apdu.py",  # issue 12's card commands shared by the station and the platform (over the air)
    }
    for module, tests in m.MODULES.items():
        assert (ROOT / module).is_file(), module
        assert tests and all((ROOT / t).is_file() for t in tests), module


def test_equivalents_are_complete_entries():
    m = bench_mutation()
    entries = tomllib.loads((ROOT / "tests" / "mutation_equivalents.toml").read_text("utf-8"))["equivalent"]
    names = [e["mutant"] for e in entries]
    assert len(names) == len(set(names))
    for e in entries:
        assert set(e) == {"module", "mutant", "diff", "why"}, e
        assert e["module"] in m.MODULES
        assert e["mutant"].startswith(e["module"][:-3].replace("/", ".") + ".x"), e["mutant"]
        lines = e["diff"].strip("\n").splitlines()
        assert len(lines) >= 2 and lines[0].startswith("-") and any(x.startswith("+") for x in lines), e["mutant"]
        assert e["why"].strip(), e["mutant"]


def test_changed_lines_ignores_headers_and_context():
    m = bench_mutation()
    diff = "--- a.py\n+++ a.py\n@@ -1,3 +1,3 @@\n ctx\n-    x = 1  \n+    x = 2\n ctx"
    assert m.changed_lines(diff) == "-    x = 1\n+    x = 2"


def test_every_sans_io_core_is_mutated():
    from tests.layering import SANS_IO_CORES

    m = bench_mutation()
    assert {core.replace(".", "/") + ".py" for core in SANS_IO_CORES} <= set(m.MODULES)
