"""The package's structure: no import cycle among xpnet's modules, no import running back up a
floor, and no function longer than 80 lines. Read from the source (every import, those inside
functions too), so a lazy import counts like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xpnet"
MAX_LINES = 80

# The floors, lowest first: a module imports only from its own floor and those below it. The
# commands (cli) and the measuring tools share the top floor: the CLI dispatches to bench and
# report, which parse flags with the CLI's argument types.
FLOORS = (
    ("xpnet", "xpnet.errors", "xpnet.testing"),
    ("xpnet.backend",),
    ("xpnet.functional",),
    ("xpnet.nn",),
    ("xpnet.models", "xpnet.optim", "xpnet.checkpoint", "xpnet.data", "xpnet.gradient_check"),
    ("xpnet.distributed",),
    ("xpnet.reference",),
    ("xpnet.training",),
    ("xpnet.tools", "xpnet.cli", "xpnet.__main__"),
)


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, modules=MODULES) -> set[str]:
    """The xpnet modules a module's source imports (``from a import b`` is ``a.b`` where that is a
    module), at any depth of the code."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return {m for m in out if m in modules}


def graph(modules=MODULES) -> dict[str, set[str]]:
    return {m: imports(p.read_text(), modules) - {m} for m, p in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``edges`` (strongly connected parts of more than one module)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on.discard(part[-1])
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> int:
    """The floor of ``module``: that of the longest prefix FLOORS names."""
    best = None
    for i, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[0]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_import_runs_back_up():
    up = [(m, t) for m, targets in graph().items() for t in sorted(targets) if floor(t) > floor(m)]
    assert up == []


def test_the_lower_floors_never_import_the_application():
    top = ("xpnet.training", "xpnet.tools", "xpnet.cli")
    lower = ("xpnet.backend", "xpnet.functional", "xpnet.nn", "xpnet.models", "xpnet.optim", "xpnet.checkpoint",
             "xpnet.data")
    bad = [(m, t) for m, targets in graph().items() if m.startswith(lower)
           for t in targets if t.startswith(top)]
    assert bad == []


def test_the_checks_find_a_cycle_and_an_import_up():
    fake = {"xpnet.a": "from xpnet.b import f\n", "xpnet.b": "def g():\n    import xpnet.a\n",
            "xpnet.nn.x": "from xpnet.training import loop\n", "xpnet.training": "", "xpnet.training.loop": ""}
    modules = dict.fromkeys(fake)
    edges = {m: imports(src, modules) - {m} for m, src in fake.items()}
    assert cycles(edges) == [["xpnet.a", "xpnet.b"]]
    assert edges["xpnet.nn.x"] == {"xpnet.training.loop"} and floor("xpnet.training.loop") > floor("xpnet.nn.x")


def long_functions(source: str) -> list[tuple[str, int]]:
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_is_longer_than_80_lines(module):
    assert long_functions(MODULES[module].read_text()) == []


def test_the_length_check_counts_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_LINES + 1)]
    assert long_functions("def g():\n    return 1\n") == []
