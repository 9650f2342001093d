r"""What the lazy rules (``wk2``, ``wk1``, ``ps``) share: forced uploads, the threshold and the
anchor.

Each rule uploads worker m when warm-up or the staleness bound forces it (:func:`forced_uploads`),
or when its own measure of change exceeds

.. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2

(:func:`lazy_threshold`, over the last ``D - 1`` server steps the server keeps: ``history``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def check_window(window) -> int:
    if (
        isinstance(window, bool)
        or not isinstance(window, (int, float))
        or not math.isfinite(window)
        or int(window) != window
        or window < 1
    ):
        raise ValueError(f"window D must be an integer >= 1, got {window!r}")
    return int(window)


def check_threshold_scale(c) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not (c > 0) or math.isinf(c):
        raise ValueError(f"threshold scale c must be a finite number > 0, got {c!r}")
    return float(c)


def lazy_threshold(recent_step_sq: Tensor, c: float, num_workers: int, lr: float) -> float:
    """thr_k = sum(recent squared steps) / (c * M * lr); ``recent_step_sq`` holds the last D-1.

    ``lr = 0`` (a schedule that ends at 0) takes the limit lr -> 0+: an infinite threshold (nobody
    needs to send, nothing would move) unless the recent steps were all 0, where it stays 0."""
    total = float(recent_step_sq.sum().item())
    if lr == 0:
        return math.inf if total > 0 else 0.0
    return total / (c * num_workers * lr)


def forced_uploads(iteration: int, staleness: Tensor, window: int) -> Tensor:
    """Workers that upload without looking at gradients: warm-up or staleness bound reached."""
    if iteration < window:
        return torch.ones_like(staleness, dtype=torch.bool)
    return staleness > window


def set_anchor(workers, rows: Sequence[int], theta: Tensor) -> None:
    """``anchor[r] = theta`` for the workers ``rows`` that just uploaded."""
    anchor = workers.buffer("anchor")
    if len(rows) == anchor.shape[0]:
        anchor.copy_(theta.expand_as(anchor))
    else:  # row by row: several times faster than an index_put of a broadcast theta
        for r in rows:
            anchor[r].copy_(theta)


class LazyRule:
    """The window ``D`` and threshold scale ``c`` of a lazy rule, checked; its server history."""

    lazy = True

    def __init__(self, window: int, c: float):
        self.window = check_window(window)
        self.c = check_threshold_scale(c)
        self.history = self.window - 1

    def describe(self) -> dict:
        return {"trigger": self.name, "window": self.window, "threshold_scale": self.c}
