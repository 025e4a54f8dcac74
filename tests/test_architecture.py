"""Structural checks on the pipeline package, from its source alone (nothing is imported).

- No import cycles among pipeline modules, counting every import: module-level and inside functions,
  relative ones, and ``from pipeline.x import y`` where ``y`` is a submodule. A package's ``__init__``
  importing a submodule is an edge from the package to it. Importing ``pipeline.x.y`` is an edge to
  ``pipeline.x`` as well (Python runs the package ``__init__`` first), except from inside ``pipeline.x``,
  whose ``__init__`` is already running; but importing a name from the package itself
  (``from pipeline.x import Thing`` in ``pipeline.x.y``) is an edge to it: submodules import siblings directly.
- The library (everything but ``pipeline.cli`` and ``pipeline.__main__``) never imports ``pipeline.cli``.
- Each part imports only parts at or below its place on the data path (LAYERS), except KNOWN_UPWARD edges.
- No module is longer than MAX_LINES, except those listed with a reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pipeline"

MAX_LINES = 450
LONG_MODULES: dict[str, str] = {
    # module: reason
}

# The parts of the package, in data-path order: a module may import modules of its own part or of a part with a
# lower rank, never a higher one. "pipeline" is the root's own modules (errors, fileio, glog, registry).
LAYERS = {
    "pipeline": 0,
    "pipeline.proto": 0,
    "pipeline.exact": 1,  # the bit-exact engine and the C++ ops it loads (each uses the other)
    "pipeline.ops": 1,
    "pipeline.text": 2,  # template -> prototxt text -> NetParameter
    "pipeline.weights": 3,  # weight files: NetParameters and arrays, no Net
    "pipeline.data": 4,  # the data layers' sources
    "pipeline.net": 5,  # Net, layers, blobs
    "pipeline.solvers": 6,  # solver -> snapshot
    "pipeline.export": 7,
    "pipeline.transfer": 7,
    "pipeline.viz": 7,
    "pipeline.sweep": 8,
    "pipeline.cli": 9,
    "pipeline.__main__": 9,
}
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    # (importer, imported): reason
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        if "pycaffe" in path.relative_to(PKG).parts:
            continue  # a stand-in for the external `caffe` package, not a pipeline module
        out[_module_name(path)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest prefix of `name` that is a pipeline module, or None."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts.pop()
    return None


def _with_parents(target: str, importer: str) -> set[str]:
    """`target` and the packages above it that importing it runs first, less the importer's own packages."""
    parts = target.split(".")
    own = set(_with_parents_of(importer))
    return {".".join(parts[:i]) for i in range(2, len(parts))} - own | {target}


def _with_parents_of(mod: str) -> list[str]:
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


def _imports(mod: str, path: Path) -> dict[str, int]:
    """Pipeline modules imported by `mod`, each with the line of its first import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        target = _resolve(name)
        if target is None:
            return
        for t in _with_parents(target, mod):
            if t != mod and t != "pipeline":
                found.setdefault(t, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pipeline":
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if full.split(".")[0] != "pipeline":
                continue
            if full != "pipeline":
                found.setdefault(_resolve(full) or full, node.lineno)  # the module (or package) named
                add(full, node.lineno)
            for alias in node.names:
                if f"{full}.{alias.name}" in MODULES:
                    add(f"{full}.{alias.name}", node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    return {mod: _imports(mod, path) for mod, path in MODULES.items()}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def describe_cycles(graph: dict[str, dict[str, int]]) -> str:
    out = []
    for comp in find_cycles(graph):
        cycle = _cycle_in(graph, set(comp))
        out.append(
            f"import cycle among {len(comp)} modules: {', '.join(comp)}\n"
            f"for example ({len(cycle) - 1} modules):\n{_describe(graph, cycle)}"
        )
    return "\n\n".join(out)


def _cycle_in(graph: dict[str, dict[str, int]], comp: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component (breadth-first, so a short one)."""
    start = min(comp)
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w not in comp:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return sorted(comp)


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        where = MODULES[a].relative_to(ROOT) if a in MODULES else a
        steps.append(f"  {a} -> {b}  ({where}:{graph[a][b]})")
    return "\n".join(steps)


def test_graph_sees_the_imports():
    graph = import_graph()
    assert "pipeline.net" in graph["pipeline.cli.train"] or any(
        m.startswith("pipeline.") for m in graph["pipeline.cli.train"]
    )
    assert graph["pipeline.net.layers"], "the layers package imports its modules"


def test_no_import_cycles():
    graph = import_graph()
    assert not find_cycles(graph), describe_cycles(graph)


def test_library_never_imports_cli():
    graph = import_graph()
    bad = []
    for mod, deps in graph.items():
        if mod == "pipeline.__main__" or mod == "pipeline.cli" or mod.startswith("pipeline.cli."):
            continue
        for dep, line in deps.items():
            if dep == "pipeline.cli" or dep.startswith("pipeline.cli."):
                bad.append(f"  {MODULES[mod].relative_to(ROOT)}:{line} imports {dep}")
    assert not bad, "the library imports the command line:\n" + "\n".join(bad)


def part(mod: str) -> str:
    """The part of the package (a LAYERS key) that `mod` belongs to."""
    parts = mod.split(".")
    if len(parts) > 1 and ".".join(parts[:2]) in LAYERS:
        return ".".join(parts[:2])
    return "pipeline"


def test_every_part_has_a_place():
    tops = {".".join(m.split(".")[:2]) for m in MODULES if m != "pipeline"}
    sub = {t for t in tops if (PKG / t.split(".")[1]).is_dir()} | {"pipeline.__main__"}
    assert sub <= set(LAYERS), f"parts with no place in LAYERS: {sorted(sub - set(LAYERS))}"


def test_parts_import_only_downward():
    graph = import_graph()
    bad = []
    for mod, deps in graph.items():
        for dep, line in deps.items():
            a, b = part(mod), part(dep)
            if LAYERS[b] > LAYERS[a] and (a, b) not in KNOWN_UPWARD:
                bad.append(f"  {MODULES[mod].relative_to(ROOT)}:{line} ({a}) imports {dep} ({b})")
    assert not bad, "imports up the data path (see LAYERS):\n" + "\n".join(bad)


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert "a -> b" in describe_cycles(graph) and "c -> a" in describe_cycles(graph)
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_length(mod):
    if mod in LONG_MODULES:
        return
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[mod].relative_to(ROOT)} has {n} lines (> {MAX_LINES}); split it or list it"
