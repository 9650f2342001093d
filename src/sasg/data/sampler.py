"""Per-worker minibatches.

Each worker walks its own shard in batches of ``B`` and reshuffles it with its own generator when
fewer than ``B`` unseen samples are left (the incomplete tail is dropped), so shards of unequal
size (non-IID splits) work too. One *epoch* is ``n_train // (M * B)`` rounds — a pass over each
shard when shards are equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..seeds import worker_seed


class WorkerSampler:
    """Yields, for every round, an ``(M, B)`` tensor of sample indices (one row per worker)."""

    def __init__(self, shards: list[Tensor], batch_size: int, seed: int, first_worker: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        smallest = min(int(s.numel()) for s in shards)
        if batch_size > smallest:
            raise ValueError(
                f"batch size {batch_size} is larger than the smallest worker shard ({smallest} samples); "
                f"use --batch-size {max(1, smallest)} or fewer, or fewer workers"
            )
        self.shards = [s.clone() for s in shards]
        self.batch_size = batch_size
        total = sum(int(s.numel()) for s in shards)
        self.rounds_per_epoch = max(1, total // (len(shards) * batch_size))
        # ``first_worker`` lets a distributed rank hold worker m's stream under its global index.
        self.generators = [
            torch.Generator().manual_seed(worker_seed(seed, first_worker + m)) for m in range(len(shards))
        ]
        self.round = 0
        self._order: list[Tensor | None] = [None] * len(shards)
        self._pos = [0] * len(shards)

    @property
    def num_workers(self) -> int:
        return len(self.shards)

    def next(self) -> Tensor:
        b = self.batch_size
        rows = []
        for m, shard in enumerate(self.shards):
            if self._order[m] is None or self._pos[m] + b > shard.numel():
                perm = torch.randperm(shard.numel(), generator=self.generators[m])
                self._order[m] = shard[perm.to(shard.device)]
                self._pos[m] = 0
            rows.append(self._order[m][self._pos[m] : self._pos[m] + b])
            self._pos[m] += b
        self.round += 1
        return torch.stack(rows)

    def state_dict(self) -> dict:
        return {
            "round": self.round,
            "generators": [g.get_state() for g in self.generators],
            "order": [None if o is None else o.clone() for o in self._order],
            "pos": list(self._pos),
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["generators"]) != len(self.generators):
            raise ValueError("sampler state is for another number of workers")
        self.round = int(state["round"])
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        self._order = [None if o is None else o.clone() for o in state["order"]]
        self._pos = [int(p) for p in state["pos"]]
