"""Size limits of src/sasg (issue #26): no function over 80 lines, no file over 400 lines.

Why limits at all: a function a reader cannot hold on one screen, or a file that holds several
jobs, is where set-up, validation and the run loop start to be written twice. The numbers are
the issue's; the test reads the source with ``ast`` (nothing is imported) and names every
offender, so a failure says what to split.

How lines are counted:

- a file: its lines (``wc -l``);
- a function (or method, or nested function: each is checked on its own): from its ``def`` line
  to its last line, docstring and comments included, decorators not.

Exempt: **argparse declarations**, functions that are mostly ``add_argument`` calls (a flag a
line reads best as one list; splitting it by size alone would scatter related flags). A function
counts as one when at least half of its statements are calls of the argparse declaration methods
in :data:`ARGPARSE_CALLS`, as expression statements or assigned (``g = p.add_argument_group(...)``).
A function that also parses, validates or runs is not exempt.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sasg"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 400
ARGPARSE_CALLS = frozenset({
    "add_argument", "add_argument_group", "add_mutually_exclusive_group", "add_parser", "add_subparsers",
    "set_defaults",
})

# Offenders tolerated while a split is in progress, as "path" for a file and "path:Qualified.name"
# for a function, paths relative to src/sasg. Empty since issue #26's consolidation; it may only
# shrink: an entry that is no longer over its limit fails the test too.
PENDING: frozenset[str] = frozenset()


def _is_argparse_call(stmt: ast.stmt) -> bool:
    value = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in ARGPARSE_CALLS
    )


def is_argparse_declaration(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """At least half of ``fn``'s statements (at any depth, its docstring left out) declare flags."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    stmts = [s for top in body for s in ast.walk(top) if isinstance(s, ast.stmt)]
    return bool(stmts) and 2 * sum(map(_is_argparse_call, stmts)) >= len(stmts)


def _functions(tree: ast.AST, prefix: str = ""):
    """``(qualified name, node)`` of every function in ``tree``, methods and nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def offenders(src: Path = SRC) -> dict[str, str]:
    """Everything over its limit: ``{key: what is wrong}``, keys as in :data:`PENDING`."""
    found: dict[str, str] = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_FILE_LINES:
            found[rel] = f"{rel}: {n} lines (limit {MAX_FILE_LINES}): split it into modules named for what they hold"
        for name, fn in _functions(ast.parse(text, filename=str(path))):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES and not is_argparse_declaration(fn):
                found[f"{rel}:{name}"] = (
                    f"{rel}:{fn.lineno} {name}: {length} lines (limit {MAX_FUNCTION_LINES}): "
                    "extract well-named helpers"
                )
    return found


def test_no_function_or_file_over_its_limit():
    new = {k: v for k, v in offenders().items() if k not in PENDING}
    assert not new, "over the size limits of issue #26:\n  " + "\n  ".join(new.values())


def test_pending_offenders_only_shrink():
    fixed = sorted(PENDING - offenders().keys())
    assert not fixed, (
        "no longer over the limits, remove from PENDING in tests/test_code_shape.py: " + ", ".join(fixed)
    )


def _parse_function(source: str) -> ast.FunctionDef:
    return ast.parse(source).body[0]


def test_argparse_declarations_are_recognised():
    flags = "\n".join(f"    p.add_argument('--f{i}', type=int, help='flag {i}')" for i in range(90))
    assert is_argparse_declaration(_parse_function(f"def add_flags(p):\n    '''Doc.'''\n{flags}\n"))
    grouped = (
        "def add_flags(p, d):\n    g = p.add_argument_group('data')\n"
        "    g.add_argument('--a', help=f'{d.a}')\n    g.add_argument('--b')\n    g = p.add_argument_group('x')\n"
        "    g.add_argument('--c')\n    return g\n"
    )
    assert is_argparse_declaration(_parse_function(grouped))


@pytest.mark.parametrize("body", [
    "    x = 1\n" * 85,  # plain code
    "    p.add_argument('--a')\n" + "    if x:\n        y = x + 1\n" * 40,  # a few flags, mostly logic
])
def test_other_long_functions_are_not_exempt(tmp_path, body):
    assert not is_argparse_declaration(_parse_function(f"def f(p, x):\n{body}"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("class C:\n    def f(self, p, x):\n" + textwrap.indent(body, "    "))
    assert "mod.py:C.f" in offenders(pkg)


def test_a_long_file_is_named(tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_FILE_LINES)
    assert set(offenders(tmp_path)) == {"long.py"}
