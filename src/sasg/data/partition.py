"""Split a training set over workers.

``iid_shards`` is the paper's split: a seeded permutation cut into M disjoint shards of equal
size (``floor(n / M)`` each; the remainder is left out so every worker sees as much data).
"""

from __future__ import annotations

import torch
from torch import Tensor


def iid_shards(num_samples: int, num_workers: int, generator: torch.Generator) -> list[Tensor]:
    if num_workers < 1:
        raise ValueError(f"workers must be >= 1, got {num_workers}")
    if num_workers > num_samples:
        raise ValueError(
            f"{num_workers} workers but only {num_samples} training samples; use --workers {num_samples} or fewer"
        )
    per = num_samples // num_workers
    perm = torch.randperm(num_samples, generator=generator)
    return [perm[m * per : (m + 1) * per].clone() for m in range(num_workers)]
