"""``python -m sasg.kernels``: compile every kernel into numba's cache now.

The Makefile runs it after the install and whenever a kernel source changes, so that the first
run (``make demo``, a test, a training job) loads machine code instead of spending tens of
seconds compiling it, and never loads machine code built from an older helper (:mod:`.cache`).
"""

from __future__ import annotations

import importlib
import pkgutil
import time

from . import _WARMERS, __path__, available, warm
from .cache import drop_stale


def main() -> int:
    import sasg.core.members  # noqa: F401  (the members import the kernels they use: their warm-ups register)

    for module in pkgutil.iter_modules(__path__):  # and every kernel no member imports (the DDP hook's)
        if module.name not in ("__main__", "cache"):
            importlib.import_module(f"{__package__}.{module.name}")

    if not available():
        print("sasg.kernels: off (SASG_KERNELS=0 or numba missing): the torch paths run")
        return 0
    started = time.perf_counter()
    dropped = drop_stale()
    if dropped:
        print(f"sasg.kernels: {dropped} cached entries older than the kernel sources dropped")
    warm()
    print(f"sasg.kernels: {len(_WARMERS)} kernel groups compiled or loaded from the cache in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
