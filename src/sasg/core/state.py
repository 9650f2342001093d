"""Algorithm state: per-worker (error memory, anchor, staleness) and server (last messages, window).

Both carry a leading worker dimension: the simulator holds all ``M`` workers in one
``WorkerState``; a distributed rank holds its own worker (``N = 1``) plus a replica of the
``ServerState``. Everything is reachable through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .payload import Payload, SparsePayload, payload_from_state


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone()


@dataclass
class WorkerState:
    """State of ``N`` workers. ``error``/``anchor`` are ``None`` when the algorithm has none."""

    staleness: Tensor  # (N,) int64: rounds since the last upload (1 right after one)
    error: Tensor | None = None  # (N, d) error-feedback memory e_m
    anchor: Tensor | None = None  # (N, d) parameters at the last upload, theta-hat_m

    @property
    def num_workers(self) -> int:
        return self.staleness.shape[0]

    def state_dict(self) -> dict:
        return {
            "staleness": self.staleness.clone(),
            "error": _clone(self.error),
            "anchor": _clone(self.anchor),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("staleness", "error", "anchor"):
            mine, theirs = getattr(self, key), state[key]
            if (mine is None) != (theirs is None):
                raise ValueError(f"worker state {key!r}: algorithm mismatch (saved by another algorithm?)")
            if mine is not None:
                if mine.shape != theirs.shape:
                    raise ValueError(
                        f"worker state {key!r}: saved shape {tuple(theirs.shape)} != {tuple(mine.shape)}"
                    )
                mine.copy_(theirs)


@dataclass
class ServerState:
    """What the server holds: the last message of every worker and the recent squared steps."""

    last: Payload  # M messages, q_m
    step_sq: Tensor  # (D-1,) float64, oldest first: ||theta^{j+1} - theta^j||^2
    iteration: int = 0

    def push_step(self, step_sq: float) -> None:
        if self.step_sq.numel():
            self.step_sq = torch.roll(self.step_sq, -1)
            self.step_sq[-1] = step_sq

    def state_dict(self) -> dict:
        return {
            "last": self.last.state_dict(),
            "step_sq": self.step_sq.clone(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict) -> None:
        last = payload_from_state(state["last"])
        if type(last) is not type(self.last) or last.values.shape != self.last.values.shape:
            raise ValueError("server state 'last': message shape or kind mismatch (another algorithm or model?)")
        if state["step_sq"].shape != self.step_sq.shape:
            raise ValueError("server state 'step_sq': window length mismatch (another window D?)")
        # Into the buffers this state already has: a checkpoint saved in another dtype or on
        # another device (CPU -> GPU) takes this run's, as torch.optim's load_state_dict does.
        self.last.values.copy_(last.values)
        if isinstance(last, SparsePayload):
            self.last.indices.copy_(last.indices)
        self.step_sq = state["step_sq"].clone().to(self.step_sq)
        self.iteration = int(state["iteration"])
