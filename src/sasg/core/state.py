"""Algorithm state: per worker (staleness and the members' buffers) and on the server.

Both carry a leading worker dimension: the simulator holds all ``M`` workers in one
``WorkerState``; a distributed rank holds its own worker (``N = 1``) plus a replica of the
``ServerState``. Everything is reachable through ``state_dict()`` / ``load_state_dict()``; a load
checks everything first and changes nothing when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .payloads import Payload


@dataclass
class WorkerState:
    """State of ``N`` workers: ``staleness`` and the ``(N, d)`` buffers the members asked for
    (``anchor`` for a lazy trigger, ``error`` for error feedback, ...)."""

    staleness: Tensor  # (N,) int64: rounds since the last upload (1 right after one)
    buffers: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def create(cls, n: int, d: int, names, device=None, dtype=torch.float32) -> "WorkerState":
        return cls(
            staleness=torch.ones(n, dtype=torch.long, device=device),
            buffers={name: torch.zeros(n, d, device=device, dtype=dtype) for name in names},
        )

    @property
    def num_workers(self) -> int:
        return self.staleness.shape[0]

    def buffer(self, name: str) -> Tensor:
        return self.buffers[name]

    @property
    def error(self) -> Tensor | None:
        """The error-feedback memory e_m, if the algorithm keeps one."""
        return self.buffers.get("error")

    @property
    def anchor(self) -> Tensor | None:
        """The parameters at each worker's last upload, if the trigger keeps them."""
        return self.buffers.get("anchor")

    def state_dict(self) -> dict:
        return {"staleness": self.staleness.clone(), "buffers": {k: v.clone() for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state["buffers"]
        if set(saved) != set(self.buffers):
            raise ValueError(
                f"worker state holds {sorted(saved)} but this algorithm keeps {sorted(self.buffers)} "
                "(saved by another algorithm?)"
            )
        for key, mine, theirs in [("staleness", self.staleness, state["staleness"])] + [
            (k, v, saved[k]) for k, v in self.buffers.items()
        ]:
            if mine.shape != theirs.shape:
                raise ValueError(f"worker state {key!r}: saved shape {tuple(theirs.shape)} != {tuple(mine.shape)}")
        self.staleness.copy_(state["staleness"])
        for k, v in self.buffers.items():
            v.copy_(saved[k])


@dataclass
class ServerState:
    """What the server holds: the last message of every worker and the recent squared steps."""

    last: Payload  # M messages, q_m
    step_sq: Tensor  # (history,) float64, oldest first: ||theta^{j+1} - theta^j||^2
    iteration: int = 0

    def push_step(self, step_sq: float) -> None:
        if self.step_sq.numel():
            self.step_sq = torch.roll(self.step_sq, -1)
            self.step_sq[-1] = step_sq

    def state_dict(self) -> dict:
        return {"last": self.last.state_dict(), "step_sq": self.step_sq.clone(), "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        if state["step_sq"].shape != self.step_sq.shape:
            raise ValueError("server state 'step_sq': window length mismatch (another window D?)")
        # Into the buffers this state already has: a checkpoint saved in another dtype or on
        # another device (CPU -> GPU) takes this run's, as torch.optim's load_state_dict does.
        self.last.load_state_dict(state["last"])
        self.step_sq = state["step_sq"].clone().to(self.step_sq)
        self.iteration = int(state["iteration"])
