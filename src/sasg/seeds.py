"""Seeds of the per-worker generators, derived from (run seed, worker id, stream).

Shared by the simulator, the distributed runner and the optimizer, so rank m of a real run draws
exactly what simulated worker m draws. Streams: 0 shuffling, 1 augmentation, 2 the algorithm's
randomized members (e.g. random-k).
"""

from __future__ import annotations


def worker_seed(seed: int, worker: int, stream: int = 0) -> int:
    """The seed of worker ``worker``'s own generator for ``stream``."""
    return seed * 1_000_003 + 7919 * worker + 1 + 104_729 * stream
