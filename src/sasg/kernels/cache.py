"""Stale machine code in numba's cache, found and dropped before the kernels are compiled.

Why: numba keys a cached function on the file that defines it (its modification time and size),
not on the files its code comes from. Our kernels inline helpers from other modules here
(:mod:`.vector`, :mod:`.words`, :mod:`.bits`, ...): after an edit to a helper, a kernel in another
file would go on loading the machine code built from the helper as it was. A fresh install never
meets this (every file is new, the cache is built after); a developer editing kernels does.

:func:`drop_stale` removes the cache entries of this package's kernels that are older than the
newest kernel source, so that they are compiled again. ``python -m sasg.kernels`` (the Makefile
runs it whenever a kernel source changes) calls it first. It touches only regular files named as
numba names a cache entry of a module of this folder (``MODULE.FUNCTION-LINE.pyXY[.N].nbi|nbc``),
inside this folder's ``__pycache__``: never a link, never anything else.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

HERE = Path(__file__).resolve().parent
# numba's names: an index per function, one data file per compiled signature
_ENTRY = re.compile(r"^(?P<module>[a-z_][a-z0-9_]*)\.[A-Za-z_][\w.<>]*-\d+\.py\d+(\.\d+\.nbc|\.nbi)$")


def _modules(folder: Path) -> dict[str, float]:
    """This folder's kernel modules and their sources' modification times."""
    return {p.stem: p.stat().st_mtime for p in folder.glob("*.py") if p.is_file()}


def stale_entries(folder: Path = HERE) -> list[Path]:
    """The cache entries of ``folder``'s modules older than its newest module source."""
    sources = _modules(folder)
    cache = folder / "__pycache__"
    if not sources or not cache.is_dir():
        return []
    newest = max(sources.values())
    stale = []
    for entry in os.scandir(cache):
        match = _ENTRY.match(entry.name)
        if match is None or match["module"] not in sources:
            continue
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and info.st_mtime < newest:
            stale.append(Path(entry.path))
    return sorted(stale)


def drop_stale(folder: Path = HERE) -> int:
    """Remove :func:`stale_entries`; how many were removed (one that vanished meanwhile is not
    counted: another process dropped it)."""
    dropped = 0
    for path in stale_entries(folder):
        try:
            path.unlink()
            dropped += 1
        except FileNotFoundError:
            pass
        except PermissionError:  # a read-only install: numba keeps its cache elsewhere then
            pass
    return dropped


__all__ = ["drop_stale", "stale_entries"]
