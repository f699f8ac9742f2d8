"""The library's structure (issue #33): no module imports another that imports it back, directly or
through others; nothing outside `sparsevlm/models/` touches a model's private `_sparsevlm` state.
Read from the source with `ast`: every import counts, at the top of a module or inside a function."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sparsevlm"

# Imports known to close a cycle, owned elsewhere: (importer, imported). Issue #33 item 1 removes this
# one (`models/patching.py` takes `sparsify` / `unsparsify` from its own package, inside a function);
# delete the entry then (test_allowances_are_still_needed says so).
ALLOWED_EDGES: set[tuple[str, str]] = {("sparsevlm.models.patching", "sparsevlm.models")}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The sparsevlm modules `module` imports (a package's own `__init__` for `from . import name`
    when the name is not a submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import sparsevlm.bench.timing` also runs its packages
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the sparsevlm modules it imports}, parents of a submodule included (importing
    `sparsevlm.a.b` runs `sparsevlm.a` first)."""
    modules = _modules()
    graph = {m: _imported(m, p, set(modules)) for m, p in modules.items()}
    for m in graph:
        for dep in list(graph[m]):
            parent = dep.rpartition(".")[0]
            while parent and parent in graph and parent != m and not m.startswith(parent + "."):
                graph[m].add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions_and_through_parents():
    graph = import_graph()
    assert "sparsevlm.recipes" in graph["sparsevlm.cli"]  # at the top
    assert "sparsevlm.bench" in graph["sparsevlm.cli"]  # inside `parser` and `demo`
    assert "sparsevlm.bench" in graph["sparsevlm.course"]  # `from .bench import ...` inside functions
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    for importer, imported in ALLOWED_EDGES:
        graph[importer].discard(imported)
    found = cycles(graph)
    assert not found, f"import cycles (modules of each): {found}"


def test_allowances_are_still_needed():
    graph = import_graph()
    stale = [edge for edge in ALLOWED_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"these imports are gone: remove them from ALLOWED_EDGES: {stale}"


def test_shared_code_sits_below_its_users():
    """cli, bench and lmms share `recipes`; it imports none of them, and bench and lmms import no cli."""
    graph = import_graph()
    assert not graph["sparsevlm.recipes"] & {"sparsevlm.cli", "sparsevlm.bench", "sparsevlm.lmms"}
    for module, deps in graph.items():
        if module.startswith(("sparsevlm.bench", "sparsevlm.lmms")):
            assert "sparsevlm.cli" not in deps, module


def test_only_the_adapters_touch_the_models_private_state():
    pattern = re.compile(r"\b_sparsevlm\b")
    outside = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in _modules().values() if "models" not in p.parts
               for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not outside, f"model._sparsevlm read outside sparsevlm/models/: {outside}"
