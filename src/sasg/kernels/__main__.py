"""``python -m sasg.kernels``: compile every kernel into numba's cache now.

The Makefile's install step runs it, so that the first run (``make demo``, a test, a training
job) loads machine code instead of spending tens of seconds compiling it.
"""

from __future__ import annotations

import time

from . import _WARMERS, available, warm


def main() -> int:
    import sasg.core.members  # noqa: F401  (the members import the kernels they use: their warm-ups register)

    if not available():
        print("sasg.kernels: off (SASG_KERNELS=0 or numba missing): the torch paths run")
        return 0
    started = time.perf_counter()
    warm()
    print(f"sasg.kernels: {len(_WARMERS)} kernel groups compiled or loaded from the cache in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
