"""``always``: every worker uploads every round (dense SGD, top-k + error feedback)."""

from __future__ import annotations

import torch
from torch import Tensor


class Always:
    name = "always"
    lazy = False
    needs_stale_grads = False
    history = 0
    worker_buffers: tuple[str, ...] = ()

    def decide(self, rnd) -> Tensor:
        return torch.ones_like(rnd.workers.staleness, dtype=torch.bool)

    def uploaded(self, workers, rows, theta: Tensor) -> None:
        pass

    def describe(self) -> dict:
        return {"trigger": self.name}
