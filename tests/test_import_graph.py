"""The import graph of adtk's own modules, read from the source (nothing is imported):

* no import circles, counting imports inside functions too (a lazy import only hides a circle), and counting
  the package __init__ that importing a submodule runs;
* no module imports another module's private (`_name`) names;
* research protocols stay out of the everyday evaluation: toolkit/evaluation imports no build.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"adtk.toolkit": REPO / "toolkit", "adtk.export": REPO / "export", "adtk.runtime": REPO / "runtime"}


def source_modules() -> dict[str, Path]:
    """adtk module name -> file, for every .py under the mapped package folders."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(path: Path, module: str, known: dict[str, Path]):
    """Yield (imported module, imported name or None, line) for every adtk import in the file, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("adtk."):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("adtk."):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:  # `from package import module`
                    yield submodule, None, node.lineno
                else:
                    yield base, alias.name, node.lineno


def with_parents(module: str, known: dict[str, Path]) -> list[str]:
    """Importing a.b.c runs a.b's __init__ (and a's): each is an edge of the graph too."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in known]


def import_graph() -> dict[str, set[str]]:
    known = source_modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        for target, _, _ in imports_of(path, name, known):
            for reached in with_parents(target, known):
                if reached != name and not name.startswith(reached + "."):  # a package's own parents run first
                    graph[name].add(reached)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one module are circles."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read_from_real_imports():
    graph = import_graph()
    assert "adtk.toolkit.methods.base" in graph["adtk.toolkit.methods.patchcore"]
    assert "adtk.toolkit.methods.all" in graph["adtk.toolkit.methods.registry"]
    # a circle is found when there is one
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Allowed circles, each with its reason. None today.
KNOWN_CIRCLES: list[list[str]] = []  # none: keep it that way


def test_no_import_circles():
    circles = [c for c in strongly_connected(import_graph()) if c not in KNOWN_CIRCLES]
    assert circles == [], "import circles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_no_module_imports_another_modules_private_names():
    known = source_modules()
    offenders = []
    for name, path in known.items():
        for target, imported, line in imports_of(path, name, known):
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {imported} from {target}")
    assert offenders == []


def test_evaluation_and_runtime_do_not_reach_into_the_build():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith(("adtk.toolkit.evaluation", "adtk.runtime", "adtk.export")):
            assert "adtk.toolkit.build" not in targets, name
