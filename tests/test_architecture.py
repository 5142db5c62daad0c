"""The layer rules of docs/architecture.md, checked on the code's own imports (module-level and lazy ones alike).

Packages are ranked from the bottom up; a module imports only from its own package or from packages ranked below
it, plus the narrower rules: reports read records only, records and families stand on core alone, records name no
method. Also: no import cycle between modules, every package is installed, no module over 500 lines and no function
over 80 lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "sptbench"

# bottom to top (docs/architecture.md); "api" is sptbench/api.py, the facade, and "sptbench" the package root
LAYERS = ("core", "records", "data", "families", "models", "training", "methods", "run", "reports", "sweep", "cli",
          "api", "trainer", "testing", "sptbench")
# packages that may import only these (besides themselves), whatever their rank says
ONLY = {
    "core": set(),
    "records": {"core"},
    "families": {"core"},
    "reports": {"core", "records"},  # reports read records only: no model, no data
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sptbench"


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _imports(module: str, path: Path) -> set[str]:
    """The sptbench modules `module` imports anywhere in its body (resolved to modules, not names)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "sptbench" and n != module}
    return {n if n in MODULES else n.rsplit(".", 1)[0] for n in found}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_package_is_a_known_layer():
    assert {_layer(m) for m in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    here = _layer(module)
    bad = []
    for target in sorted(GRAPH[module]):
        there = _layer(target)
        if there == here or (target == "sptbench" and here != "sptbench"):
            continue
        if here in ONLY and there not in ONLY[here]:
            bad.append(f"{target} ({here} may import only {sorted(ONLY[here]) or 'nothing of sptbench'})")
        elif LAYERS.index(there) > LAYERS.index(here):
            bad.append(f"{target} (runs back up: {there} is above {here})")
    assert not bad, f"{module} imports " + "; ".join(bad)


def test_no_import_cycle():
    """Depth-first search over module imports (lazy imports included): a cycle is named module by module."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if t.startswith("sptbench.cli.__main__"):
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t in GRAPH and not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    # the package root only re-exports the API lazily: start below it so its facade does not close a loop
    for m in sorted(MODULES):
        if m != "sptbench" and not state.get(m):
            visit(m)


def test_records_name_no_method():
    """The records layer knows no method by name: no string of records/ that code branches on or looks up (a
    comparison, a mapping key, a subscript) is a registered method's name. Record sections that share a method's
    name (`head`) are not method names there."""
    from sptbench.methods.registry import load_methods
    from sptbench.records.schema import RECORD

    names = set(load_methods()) - {field.name for field in RECORD}
    hits = []
    for m, path in MODULES.items():
        if _layer(m) != "records":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            looked_up = []
            if isinstance(node, ast.Compare):
                looked_up = [node.left, *node.comparators]
                looked_up += [e for c in node.comparators if isinstance(c, ast.Tuple | ast.List | ast.Set)
                              for e in c.elts]
            elif isinstance(node, ast.Dict):
                looked_up = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.Subscript):
                looked_up = [node.slice]
            hits += [f"{path.relative_to(REPO)}:{c.lineno}: {c.value!r}" for c in looked_up
                     if isinstance(c, ast.Constant) and c.value in names]
    assert not hits, hits


def test_methods_name_no_family():
    """Methods ask the Family, never name an architecture module."""
    hits = [m for m in MODULES if _layer(m) == "methods" for t in GRAPH[m]
            if _layer(t) == "families" and t != "sptbench.families.base"]
    assert not hits, hits


def test_every_package_is_installed():
    """pyproject lists its packages by hand (tasks/ installs as sptbench.task_specs): none may be missing."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in SRC.rglob("__init__.py")}
    assert packages <= listed, sorted(packages - listed)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_small_modules_and_functions(module):
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in functions
            if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_the_rules_are_the_documented_ones():
    """docs/architecture.md lists the layers in the order this test enforces."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    order = re.search(r"<!-- layers: (.*?) -->", doc)
    assert order and tuple(order.group(1).split()) == LAYERS
