"""A benchmark run as a script times the sasg of the checkout it sits in.

    import checkout  # noqa: F401  (first, before anything that imports sasg)

Why: the venv's ``sasg`` is an editable install of one checkout. A before/after comparison runs
the same script from two worktrees (``python /tmp/base/benchmarks/X.py``, then this tree's), and
without this both runs imported the installed checkout's code: two columns of the same thing.
So when a benchmark is the script being run (``sys.argv[0]`` lies in this folder), its
checkout's ``src/`` goes first on ``sys.path`` and on ``PYTHONPATH``, which carries it to the
processes the benchmark starts (``mp.spawn``, ``subprocess``, ``torchrun``, ``sasg launch``).
A test that imports a benchmark's module keeps its own path: nothing happens then.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def run_as_script(argv0: str) -> bool:
    """Whether ``argv0`` (``sys.argv[0]``) is a script of this folder."""
    try:
        return bool(argv0) and Path(argv0).resolve().parent == HERE
    except OSError:  # (a path that cannot be resolved: not ours)
        return False


def put_first(src: Path, path: list[str], environ) -> None:
    """``src`` first on ``path`` and on ``environ['PYTHONPATH']``, each once."""
    s = str(src)
    if s in path:
        path.remove(s)
    path.insert(0, s)
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != s]
    environ["PYTHONPATH"] = os.pathsep.join([s, *rest])


if run_as_script(sys.argv[0] if sys.argv else "") and (SRC / "sasg").is_dir():
    put_first(SRC, sys.path, os.environ)
