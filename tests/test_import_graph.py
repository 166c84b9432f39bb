"""The three packages import in layers: no import circle, no private name imported from another module.

Read statically from each module's AST, never by importing it. Every ``import`` counts, at module
level *and* inside a function: a deferred import only postpones the circle to the first call, and it
still ties the two modules together (the data layer must not need the modules that use it). An
``import a.b.c`` or ``from a.b import c`` is an edge to the deepest module of the three packages it
names (``c`` when ``a.b.c`` is a module, else ``a.b``); importing a submodule does not add an edge to
its parent package's ``__init__``, which Python runs first without depending on it.

A private name is one with a single leading underscore (``_identity``; ``__future__`` and other dunders
are public), whether it is the imported name or a module on the path (``torch._dynamo``): a helper two
modules share gets a public name in the module that owns it, and a library is used through its public
API. The checker is itself tested on a small package written into ``tmp_path``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGES = ("lrvd", "lrvd_baselines", "lrvd_bench")


def package_modules(roots: dict[str, Path]) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under each package root (``__init__``
    files named by their package)."""
    modules = {}
    for name, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(module: str, path: Path, modules: dict[str, Path]) -> tuple[set[tuple[str, int]], list[str]]:
    """(``{(imported module of the packages, line)}``, ``["module:line imports name from source"]``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    edges: set[tuple[str, int]] = set()
    private: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [(source, alias.name) for alias in node.names]
        else:
            continue
        for source, name in targets:
            if source == "__future__":
                continue
            full = f"{source}.{name}" if name else source
            target = full if full in modules else owner(source)
            if target is not None and target != module:
                edges.add((target, node.lineno))
            bad = [part for part in source.split(".") if _private(part)]
            if name is not None and _private(name):
                bad.append(name)
            if bad:
                private.append(f"{module}:{node.lineno} imports {', '.join(bad)} from {source}")
    return edges, private


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(roots: dict[str, Path]) -> tuple[list[str], list[str]]:
    """(one line per circle naming each member's imports inside it, one line per private import)."""
    modules = package_modules(roots)
    graph: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], int] = {}
    private: list[str] = []
    for module, path in modules.items():
        edges, bad = imports(module, path, modules)
        graph[module] = {target for target, _ in edges}
        for target, line in edges:
            lines[(module, target)] = min(line, lines.get((module, target), line))
        private += bad
    report = []
    for component in circles(graph):
        inside = set(component)
        report.append(
            "circle: "
            + "; ".join(
                f"{m} -> " + ", ".join(f"{t} (line {lines[(m, t)]})" for t in sorted(graph[m] & inside))
                for m in component
            )
        )
    return report, private


def installed_roots() -> dict[str, Path]:
    roots = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name
        roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def test_the_three_packages_have_no_import_circle():
    circle_report, _ = check(installed_roots())
    assert circle_report == [], "\n".join(circle_report)


def test_no_module_imports_a_private_name():
    _, private = check(installed_roots())
    assert private == [], "\n".join(private)


def test_the_layers_point_one_way_between_packages():
    """core imports neither other package; the baselines never import the bench."""
    roots = installed_roots()
    modules = package_modules(roots)
    wrong = []
    for module, path in modules.items():
        edges, _ = imports(module, path, modules)
        top = module.partition(".")[0]
        allowed = {"lrvd": {"lrvd"}, "lrvd_baselines": {"lrvd", "lrvd_baselines"}}.get(top, set(PACKAGES))
        wrong += [f"{module} -> {t} (line {line})" for t, line in edges if t.partition(".")[0] not in allowed]
    assert wrong == [], "\n".join(sorted(wrong))


# -- the checker on a package written here -----------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"pkg": root / "pkg"}


def test_checker_finds_a_circle_closed_by_a_function_level_import(tmp_path):
    roots = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import helper\n",
            "b.py": "def helper():\n    from pkg import c\n    return c\n",
            "c.py": "import pkg.a\n",
            "d.py": "from pkg import a, b\n",  # points into the circle, is not part of it
        },
    )
    report, private = check(roots)
    assert report == ["circle: pkg.a -> pkg.b (line 1); pkg.b -> pkg.c (line 2); pkg.c -> pkg.a (line 1)"]
    assert private == []


def test_checker_resolves_relative_imports_and_submodules_without_parent_edges(tmp_path):
    roots = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.sub.x import X\n",
            "sub/__init__.py": "from .x import X\n",
            "sub/x.py": "X = 1\n",
            "sub/y.py": "from . import x\nfrom .. import other\n",
            "other.py": "from pkg.sub import y\n",  # closes other -> sub.y -> other
        },
    )
    report, _ = check(roots)
    assert report == ["circle: pkg.other -> pkg.sub.y (line 1); pkg.sub.y -> pkg.other (line 2)"]


def test_checker_flags_private_names_and_private_modules_but_not_dunders(tmp_path):
    roots = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "_hidden = 1\nshown = 2\n",
            "b.py": "from __future__ import annotations\nfrom pkg.a import _hidden, shown\n",
            "c.py": "def f():\n    from torch._dynamo import config\n    from pkg import __doc__\n",
            "d.py": "from pkg import _priv\n",  # a private *module* of the package: a module import, but private
            "_priv.py": "",
        },
    )
    _, private = check(roots)
    assert private == [
        "pkg.b:2 imports _hidden from pkg.a",
        "pkg.c:2 imports _dynamo from torch._dynamo",
        "pkg.d:1 imports _priv from pkg",
    ], private


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_found_with_its_modules(package):
    modules = package_modules(installed_roots())
    assert package in modules and sum(m.startswith(package + ".") for m in modules) >= 5
