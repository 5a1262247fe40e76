"""The import graph of the project, parsed (module-level and function-level imports alike): no circles, and the
compression library stays offline (no simulator, no CLI / api / pipeline above it)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_rerank", "device_sdk", "cloud", "converters", "compression", "simulator")
# what sits one floor up from the libraries: edge_rerank's own modules (cli, api, pipeline, ...)
TOP_FLOOR = {f"edge_rerank.{f.stem}" for f in (ROOT / "edge_rerank").glob("*.py") if f.stem != "__init__"}


def _module_name(f: Path) -> str:
    parts = list(f.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "edge_rerank" else ["edge_rerank", *parts])


MODULES = {_module_name(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py") if "_proto" not in f.parts}


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (its longest known prefix), None outside the project."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (top level or inside functions).
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module, else ``pkg``."""
    graph = {}
    for mod, f in MODULES.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps.update(_resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in MODULES else _resolve(node.module))
        deps.discard(None)
        deps.discard(mod)
        # a package importing its own submodules (its __init__ re-exporting them) is not a circle
        graph[mod] = {d for d in deps if not d.startswith(mod + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert len(graph) > 50
    # edge_rerank.api imports training inside its functions only (torch stays unloaded until a call)
    assert "edge_rerank.cloud.training.train" in graph["edge_rerank.api"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_compression_imports_neither_the_simulator_nor_the_top_floor():
    bad = {(mod, dep) for mod, deps in import_graph().items() if (mod + ".").startswith("edge_rerank.compression.")
           for dep in deps if dep.startswith("edge_rerank.simulator") or dep in TOP_FLOOR or dep == "edge_rerank"}
    assert not bad, sorted(bad)
