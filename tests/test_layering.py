"""The house rules of who may import whom (README "House rules"), checked over every module's AST; and the checker
itself, on small synthetic sources, so a rule that silently stopped matching would fail here."""

from __future__ import annotations

import pytest

from tests import layering as L


def test_the_tree_keeps_the_house_rules():
    found = L.check_tree()
    assert not found, "house rules broken (README, House rules):\n" + "\n".join(map(str, found))


def test_no_import_cycles_between_modules():
    graph = L.import_graph(L.tree_sources())
    found = L.cycles(graph)
    assert not found, "import cycles (function-level imports counted):\n" + "\n".join(
        " -> ".join(c)
        + " ("
        + ", ".join(f"{a} imports {b} at line {graph[a][b]}" for a in c for b in c if b in graph[a])
        + ")"
        for c in found
    )


def test_the_wiring_module_exists():
    assert "onecard.wiring" in L.known_modules()


def test_the_sans_io_cores_exist():
    # a renamed core must be renamed here too, or it would silently drop out of the rule
    known = L.known_modules()
    assert [m for m in L.SANS_IO_CORES if m not in known] == []


# --- the checker on synthetic sources: each import named in issue 9, in the shape it was written ---


def _rules(source: str, module: str) -> list[str]:
    return [f"{v.line}: {v.rule}: {v.detail}" for v in L.check_source(source, module, "x.py", known=L.known_modules())]


@pytest.mark.parametrize(
    "module, source, expected",
    [
        (
            "terminal.cli",
            "def open_reader():\n    from simulator.card import SimulatedCard\n",
            "2: terminal/ must not import simulator/: imports simulator.card",
        ),
        (
            "terminal.cli",
            "def open_reader():\n    from simulator import inprocess\n",
            "2: terminal/ must not import simulator/: imports simulator.inprocess",
        ),
        (
            "terminal.issuing_cli",
            "import os\n\ndef f():\n    from central.store import Platform\n",
            "4: terminal/ must not import central/: imports central.store",
        ),
        (
            "terminal.issuing",
            "def f():\n    from central import cli as platform_cli\n",
            "2: terminal/ must not import central/: imports central.cli",
        ),
        (
            "terminal.provision",
            "def sign():\n    import central.ca\n",
            "2: terminal/ must not import central/: imports central.ca",
        ),
        (
            "sam.keys_cli",
            "def create():\n    from simulator.master_card import SimulatedMasterCard\n",
            "2: sam/ must not import simulator/: imports simulator.master_card",
        ),
        (
            "sync_agent.agent",
            "import importlib\nm = importlib.import_module('central.store')\n",
            "2: sync_agent/ must not import central/: imports central.store",
        ),
        (
            "sam.keys_cli",
            "from importlib import import_module\nimport_module('simulator.master_card')\n",
            "2: sam/ must not import simulator/: imports simulator.master_card",
        ),
        (
            "terminal.readers.pcsc",
            "from ...simulator import vpcd\n",
            "1: terminal/ must not import simulator/: imports simulator.vpcd",
        ),
        (
            "onecard.cli",
            "def build():\n    from simulator import cli\n",
            "2: simulator/ is wired in only by onecard/wiring.py and the demo: imports simulator.cli",
        ),
        (
            "central.service",
            "from terminal.event_log import EventLog\n",
            "1: central/ must not import terminal/: imports terminal.event_log",
        ),
        (
            "central.ingest",
            "def f():\n    import sync_agent.store\n",
            "2: central/ must not import sync_agent/: imports sync_agent.store",
        ),
        ("common.db", "from sam.interface import Sam\n", "1: common/ imports only common/: imports sam.interface"),
        ("terminal.issuing", "import argparse\n", "1: argparse only in CLI modules: imports argparse"),
        ("terminal.selftest", "def report():\n    print('PASS')\n", "2: print() only in CLI modules: calls print()"),
        (
            "terminal.issuing",
            "import signal\nsignal.signal(signal.SIGINT, None)\n",
            "2: signal handlers only in CLI modules: calls signal.signal()",
        ),
        ("terminal.door", "def f():\n    import time\n", "2: a sans-I/O core does no I/O: imports time"),
        ("sync_agent.core", "import sqlite3\n", "1: a sans-I/O core does no I/O: imports sqlite3"),
        ("common.events", "from socket import socket\n", "1: a sans-I/O core does no I/O: imports socket"),
        (
            "terminal.rules",
            "from datetime import datetime as d\nx = d.now()\n",
            "2: a sans-I/O core reads no clock and no randomness: calls datetime.datetime.now()",
        ),
        (
            "terminal.attendance",
            "import datetime as dt\nx = dt.datetime.utcnow()\n",
            "2: a sans-I/O core reads no clock and no randomness: calls datetime.datetime.utcnow()",
        ),
        (
            "sam.crypto",
            "import os\nk = os.urandom(16)\n",
            "2: a sans-I/O core reads no clock and no randomness: calls os.urandom()",
        ),
        (
            "common.sync_protocol",
            "import secrets\n",
            "1: a sans-I/O core reads no clock and no randomness: imports secrets",
        ),
    ],
)
def test_the_checker_names_file_line_and_rule(module, source, expected):
    assert expected in _rules(source, module)
    assert str(L.check_source(source, module, "pkg/mod.py")[0]).startswith("pkg/mod.py:")


@pytest.mark.parametrize(
    "module, source",
    [
        ("onecard.wiring", "from simulator.card import SimulatedCard\n"),
        ("onecard.demo", "def f():\n    import simulator.pcscd\n"),
        ("simulator.card", "from simulator import psam\n"),
        ("terminal.cli", "import argparse\nprint('ok')\nimport signal\nsignal.signal(2, None)\n"),
        ("sam.keys_cli", "import argparse\n"),
        ("onecard.demo", "print('demo')\n"),
        ("terminal.app", "import time\nimport signal\nimport os\nos.kill(1, signal.SIGTERM)\n"),
        ("terminal.door", "import datetime as dt\nx = dt.datetime(2024, 1, 1)\n"),
        ("common.events", "from common.errors import UserError\n"),
        ("central.store", "from common.events import event_hash\nfrom sam.interface import Sam\n"),
        ("terminal.card_protocol", "def print(x):\n    pass\nprint(1)\n"),
    ],
)
def test_the_checker_allows(module, source):
    assert _rules(source, module) == []


def test_from_package_import_submodule_is_the_submodule():
    known = frozenset({"terminal.provision", "terminal"})
    imports = L.imports_of(
        L.ast.parse("from terminal import provision, cli\nfrom . import provision\n"), "terminal.selftest", False, known
    )
    assert [(i.target, i.line) for i in imports] == [
        ("terminal.provision", 1),
        ("terminal", 1),
        ("terminal.provision", 2),
    ]


def test_cycles_are_found_through_function_level_imports():
    sources = {
        "terminal.cli": ("from terminal import provision\n", False),
        "terminal.provision": ("def f():\n    from terminal import selftest\n", False),
        "terminal.selftest": ("def g():\n    import terminal.cli\n", False),
        "terminal.door": ("from terminal import rules\n", False),
        "terminal.rules": ("", False),
        "simulator.card": ("def f():\n    from simulator.psam import x\n", False),
        "simulator.psam": ("from simulator.card import y\n", False),
    }
    graph = L.import_graph(sources)
    assert graph["terminal.provision"] == {"terminal.selftest": 2}
    assert L.cycles(graph) == [
        ["simulator.card", "simulator.psam"],
        ["terminal.cli", "terminal.provision", "terminal.selftest"],
    ]


def test_no_script_folder_or_top_level_part_shadows_the_standard_library():
    """A script's folder comes first on sys.path: a bench/platform.py once broke every bench script (paho, shutil and
    uuid imported it as `platform`). No file of a folder that holds scripts, and no top-level part, may take the name
    of a standard-library module, unless, imported under that name from its folder, it hands over the standard
    library's module (bench/platform.py, the name issue 14 gives the platform bench, does)."""
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names = [p for folder in ("bench", "deploy", "tests") for p in (root / folder).glob("*.py")]
    names += [p for p in root.iterdir() if (p / "__init__.py").exists()]
    shadowing = sorted(p for p in names if p.stem in sys.stdlib_module_names)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    hiding = []
    for p in shadowing:
        probe = f"import sys; sys.path.insert(0, {str(p.parent)!r}); import {p.stem}; print({p.stem}.__file__)"
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd="/")
        if r.returncode != 0 or Path(r.stdout.strip()).resolve().parent != stdlib:
            hiding.append(str(p.relative_to(root)))
    assert hiding == [], f"rename these; they hide the standard library's modules of the same name: {hiding}"
    assert [str(p.relative_to(root)) for p in shadowing] == ["bench/platform.py"]
