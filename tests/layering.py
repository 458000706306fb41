"""The house rules of who may import whom, as a checker over the source tree's AST (tests/test_layering.py runs it).

Every import counts: module level, inside functions, and `importlib.import_module("...")` string literals. A broken
rule is reported as `path:line: rule: what was found`, so a failure names the line to fix.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The packages the rules are about; tests/ and bench/ may use anything.
PARTS = ("common", "central", "terminal", "sam", "sync_agent", "simulator", "onecard", "phone")
PRODUCT = ("terminal", "sam", "sync_agent", "phone")

#: Modules that may import simulator/ (besides simulator itself, tests/ and bench/).
SIMULATOR_IMPORTERS = ("onecard.wiring", "onecard.demo")

#: The sans-I/O cores: bytes and times in, bytes and decisions out.
SANS_IO_CORES = (
    "terminal.card_protocol",
    "terminal.purse_protocol",
    "terminal.subsidy_protocol",
    "terminal.door",
    "terminal.rules",
    "terminal.attendance",
    "terminal.decision",
    "terminal.authenticate",
    "sync_agent.core",
    "common.sync_protocol",
    "common.events",
    "sam.crypto",
    "sam.purse_crypto",
    "common.bcd",
    "common.registry_protocol",
    "terminal.door_monitor",
    "terminal.screens",
    "common.door_events",
    "common.journal",
    "common.ota",
    "terminal.meal_rules",
    "terminal.shifts",
    "terminal.spending_pin",
    "common.settlement",
    "common.passwords",
    "common.stk",
    "common.deletion_request",
    "common.card_apdu",
    "phone.handset",
    "central.attendance_rules",
)
SANS_IO_FORBIDDEN_IMPORTS = ("sqlite3", "socket", "ssl", "threading", "subprocess", "time")
SANS_IO_FORBIDDEN_CALLS = (
    "datetime.now",
    "datetime.utcnow",
    "datetime.datetime.now",
    "datetime.datetime.utcnow",
    "os.urandom",
    "date.today",
    "datetime.date.today",
)


@dataclasses.dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Import:
    target: str  # dotted module name as written, resolved for relative imports
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_cli_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return module.split(".")[0] == "onecard" or last == "cli" or last.endswith("_cli") or last == "__main__"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def imports_of(
    tree: ast.AST, module: str, is_package: bool, known: set[str] | frozenset[str] = frozenset()
) -> list[Import]:
    """Every module this source imports, at any depth, with relative imports resolved. `from a import b` yields `a.b`
    when `a.b` is a known module (a submodule import), else `a`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.append(Import(sub if sub in known else base, node.lineno))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("importlib.import_module", "import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append(Import(arg.value.lstrip("."), node.lineno))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for `import x [as y]` and `from x import y [as z]`, so `dt.now()` after
    `from datetime import datetime as dt` is recognised."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node.name
    return names


def check_source(
    source: str, module: str, path: str, is_package: bool = False, known: set[str] | frozenset[str] = frozenset()
) -> list[Violation]:
    """The rules broken by one module's source."""
    tree = ast.parse(source, filename=path)
    out: list[Violation] = []
    top = _top(module)
    for imp in imports_of(tree, module, is_package, known):
        target = _top(imp.target)
        if top in PRODUCT and target in ("simulator", "central"):
            out.append(Violation(path, imp.line, f"{top}/ must not import {target}/", f"imports {imp.target}"))
        if target == "simulator" and top not in ("simulator", "tests", "bench") and module not in SIMULATOR_IMPORTERS:
            if top not in PRODUCT:  # the product rule above already names it
                out.append(
                    Violation(
                        path,
                        imp.line,
                        "simulator/ is wired in only by onecard/wiring.py and the demo",
                        f"imports {imp.target}",
                    )
                )
        if top == "central" and target in ("terminal", "sync_agent"):
            out.append(Violation(path, imp.line, f"central/ must not import {target}/", f"imports {imp.target}"))
        if top == "common" and target in PARTS and target != "common":
            out.append(Violation(path, imp.line, "common/ imports only common/", f"imports {imp.target}"))
        if top in PARTS and not is_cli_module(module) and target == "argparse":
            out.append(Violation(path, imp.line, "argparse only in CLI modules", "imports argparse"))
        if module in SANS_IO_CORES and target in ("secrets", "random"):
            out.append(
                Violation(path, imp.line, "a sans-I/O core reads no clock and no randomness", f"imports {imp.target}")
            )
        if module in SANS_IO_CORES and target in SANS_IO_FORBIDDEN_IMPORTS:
            out.append(Violation(path, imp.line, "a sans-I/O core does no I/O", f"imports {imp.target}"))
    names = _imported_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        written = _dotted(node.func)
        if written is None:
            continue
        head, _, rest = written.partition(".")
        resolved = names.get(head, head) + (f".{rest}" if rest else "")
        if top in PARTS and not is_cli_module(module):
            if written == "print" and "print" not in names:
                out.append(Violation(path, node.lineno, "print() only in CLI modules", "calls print()"))
            if resolved in ("signal.signal", "signal.set_wakeup_fd"):
                out.append(Violation(path, node.lineno, "signal handlers only in CLI modules", f"calls {resolved}()"))
        if module in SANS_IO_CORES and resolved in SANS_IO_FORBIDDEN_CALLS:
            out.append(
                Violation(path, node.lineno, "a sans-I/O core reads no clock and no randomness", f"calls {resolved}()")
            )
    return sorted(set(out), key=lambda v: (v.path, v.line, v.rule, v.detail))


def source_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for part in PARTS for p in (root / part).rglob("*.py"))


def known_modules(root: Path = ROOT) -> set[str]:
    return {module_name(p, root) for p in source_files(root)}


def check_tree(root: Path = ROOT) -> list[Violation]:
    known = known_modules(root)
    out: list[Violation] = []
    for path in source_files(root):
        out.extend(
            check_source(
                path.read_text(encoding="utf-8"),
                module_name(path, root),
                str(path.relative_to(root)),
                path.name == "__init__.py",
                known,
            )
        )
    return out


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}; `sources` maps module -> (source, is_package). An import of
    something that is not a module here (`a.b.name`) is an edge to the nearest enclosing module (`a.b`)."""
    known = set(sources)
    graph: dict[str, dict[str, int]] = {}
    for module, (source, is_package) in sources.items():
        edges: dict[str, int] = {}
        for imp in imports_of(ast.parse(source), module, is_package, known):
            target = imp.target
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, imp.line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def tree_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    return {module_name(p, root): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in source_files(root)}
