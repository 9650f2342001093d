"""Keep freed memory for reuse: the allocator setting behind fast large simulations.

Every round of a simulation frees and re-allocates tensors of shape ``(M, d)`` (``torch.func``'s
per-worker gradients, a dense message). glibc's ``malloc`` serves requests above its mmap
threshold (128 KiB, raised up to 32 MiB as mapped blocks are freed) with fresh mappings and
unmaps them on free, so each round pays a page fault for every 4 KiB of every such tensor: at
M = 100 workers of the 407,050-parameter FC net (163 MB per buffer) that is more time than the
arithmetic, and even at the default M = 10 (16 MB) it was 2,500–3,400 faults and 20–35 % of
a round. Two ``mallopt`` settings make freed memory stay in the heap and be reused instead:

- ``M_MMAP_MAX = 0``: serve large requests from the heap, not from separate mappings;
- ``M_TRIM_THRESHOLD = 2**31 - 1``: do not give the heap's free top back to the system.

Numbers are unaffected (this is where memory comes from, not what is computed). The process's
resident memory stays at its peak instead of shrinking between rounds. The setting is
process-wide, so no library object applies it: the ``sasg`` command line (and each worker of
``sasg launch``) calls :func:`retain_freed_memory` at start; a Python program opts in by calling
it. ``SASG_RETAIN_FREED_MEMORY=0`` in the environment turns it off. Only glibc (Linux) has these
settings; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the settings above once per process; True if they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("SASG_RETAIN_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    _applied = False
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
