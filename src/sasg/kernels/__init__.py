r"""Compiled loops for the hot members (numba), apart from the members that use them.

Why: a message of a few thousand entries costs more in torch's per-op fixed costs (tens of
small ops, each a few microseconds) than in its data; one compiled loop over the entries runs
at memory speed. Each module here holds the loops of one job (Rice coding, top-k selection, ...)
and is imported by the member it speeds up; the member keeps its vectorized torch path as the
reference (and for tensors off the CPU), and the tests check both give the same result bit for bit.

Rules every kernel here keeps:

* :func:`jit` compiles with ``cache=True`` (the machine code is kept beside the source, or in
  numba's per-user cache when that folder is read-only), so a fresh process loads it instead of
  compiling it;
* a kernel registers a small call with :func:`on_warm`; :func:`warm` runs them all once, at
  set-up (a round engine calls it when it is built), so no compile lands inside a training step;
* ``SASG_KERNELS=0`` in the environment (or :data:`ENABLED` set to False) makes every member take
  its torch path: the reference, and a way out if numba misbehaves on some platform.
"""

from __future__ import annotations

import os
from typing import Callable

ENABLED = os.environ.get("SASG_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no")

try:  # numba is a dependency; a broken install leaves the torch paths, which give the same bytes
    import numba as _numba
except ImportError:  # pragma: no cover - numba is in the package's dependencies
    _numba = None
    ENABLED = False

_WARMERS: list[Callable[[], None]] = []
_warmed = 0  # how many of _WARMERS have run (a module imported after a warm-up registers more)


def available() -> bool:
    """True when members should call the compiled kernels (CPU tensors only: callers check)."""
    return ENABLED and _numba is not None


def jit(fn=None, **options):
    """``numba.njit`` with the project's options (cached machine code, no GIL held, no Python
    objects); usable as ``@jit`` or ``@jit(fastmath=False)``."""
    opts = dict(cache=True, nogil=True)
    opts.update(options)

    def wrap(f):
        if _numba is None:  # pragma: no cover
            return f
        return _numba.njit(**opts)(f)

    return wrap(fn) if fn is not None else wrap


def on_warm(fn: Callable[[], None]) -> Callable[[], None]:
    """Register ``fn`` (no arguments): a tiny call that compiles or loads a kernel's machine code."""
    _WARMERS.append(fn)
    return fn


def warm() -> None:
    """Compile (or load from the cache) every registered kernel, each once per process."""
    global _warmed
    if not available():
        return
    while _warmed < len(_WARMERS):
        _WARMERS[_warmed]()
        _warmed += 1


__all__ = ["ENABLED", "available", "jit", "on_warm", "warm"]
