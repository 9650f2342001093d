"""No import cycle among sasg's modules (docs/DESIGN: "no import cycles").

The graph is read from the source with ``ast``, not by importing: every ``import`` statement of a
file counts, at module level or inside a function. Edges, from the importing module:

- ``import a.b`` and ``from a.b import name`` -> module ``a.b``; ``from a.b import name`` ->
  ``a.b.name`` instead when that is itself a module (a submodule is imported, not a name);
- relative imports are resolved against the importing module's package first;
- no implicit edge to parent packages (importing ``a.b`` runs ``a/__init__`` too, but a package
  that re-exports its children is then not a cycle with them).

Only modules of ``src/sasg`` are nodes; everything else (torch, the standard library) is ignored.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sasg"


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package's name -> its ``__init__.py``)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(module: str, level: int, target: str | None, modules: dict[str, Path]) -> str:
    """The absolute name that ``from <level dots><target>`` means inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not _is_package(module, modules):
        base = base[:-1]  # a plain module's relative imports start at its package
    base = base[: len(base) - level + 1]
    return ".".join([*base, target] if target else base)


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that ``module``'s file imports (see the module docstring)."""
    tree = ast.parse(modules[module].read_text(), filename=str(modules[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node.level, node.module, modules)
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if child in modules else source)
    return {name for name in found if name in modules and name != module}


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    modules = module_files() if modules is None else modules
    return {name: imports_of(name, modules) for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for root in sorted(graph):
        if colour[root] != WHITE:
            continue
        colour[root] = GREY
        path = [root]
        stack = [iter(sorted(graph[root]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                stack.pop()
            elif colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_is_read_as_documented(tmp_path):
    """The edge rules on a small package of our own (and a cycle through a function-level import)."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "import pkg.sub.c\nA = 1\n",
        "b.py": "from . import sub\nfrom .sub import c, helper\n",
        "sub/__init__.py": "helper = 2\n",
        "sub/c.py": "def late():\n    from ..b import x\n",
        "sub/d.py": "from .. import a, A\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    modules = module_files(tmp_path, "pkg")
    graph = import_graph(modules)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.c"},
        "pkg.b": {"pkg.sub", "pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.b"},
        "pkg.sub.d": {"pkg", "pkg.a"},
    }
    assert find_cycle(graph) == ["pkg.sub.c", "pkg.b", "pkg.sub.c"]
    (pkg / "sub" / "c.py").write_text("def late():\n    from ..sub import helper\n")  # a name: pkg.sub
    assert find_cycle(import_graph(modules)) is None


def test_sasg_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 100 and "sasg.core.spec" in graph  # the scan sees the whole package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
