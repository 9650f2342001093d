"""Per-worker minibatches: each worker reshuffles its own shard every epoch with its own
generator and walks it in batches (the last incomplete batch of an epoch is dropped)."""

from __future__ import annotations

import torch
from torch import Tensor


class WorkerSampler:
    """Yields, for every round, an ``(M, B)`` tensor of sample indices (one row per worker).

    Shards must have equal length here (the IID split guarantees it). An epoch is one pass over a
    shard: ``len(shard) // B`` rounds.
    """

    def __init__(self, shards: list[Tensor], batch_size: int, seed: int):
        lengths = {int(s.numel()) for s in shards}
        if len(lengths) != 1:
            raise ValueError("WorkerSampler needs shards of equal length")
        self.shard_len = lengths.pop()
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if batch_size > self.shard_len:
            raise ValueError(
                f"batch size {batch_size} is larger than a worker's shard ({self.shard_len} samples); "
                f"use --batch-size {self.shard_len} or fewer, or fewer workers"
            )
        self.shards = torch.stack(shards)  # (M, shard_len)
        self.batch_size = batch_size
        self.rounds_per_epoch = self.shard_len // batch_size
        self.generators = [torch.Generator().manual_seed(seed * 1_000_003 + 7919 * m + 1) for m in range(len(shards))]
        self.round = 0
        self._order: Tensor | None = None

    @property
    def num_workers(self) -> int:
        return self.shards.shape[0]

    def _reshuffle(self) -> None:
        perms = torch.stack([torch.randperm(self.shard_len, generator=g) for g in self.generators])
        self._order = torch.gather(self.shards, 1, perms)

    def next(self) -> Tensor:
        pos = self.round % self.rounds_per_epoch
        if pos == 0 or self._order is None:
            self._reshuffle()
        self.round += 1
        b = self.batch_size
        return self._order[:, pos * b : (pos + 1) * b]

    def state_dict(self) -> dict:
        return {
            "round": self.round,
            "generators": [g.get_state() for g in self.generators],
            "order": None if self._order is None else self._order.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        self._order = None if state["order"] is None else state["order"].clone()
