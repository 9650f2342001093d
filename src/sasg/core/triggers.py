r"""Triggers: decide, per worker and round, whether the fresh gradient is uploaded.

``AlwaysTrigger`` uploads every round (SGD, top-k + EF). ``LazyTrigger`` is the LASG-WK2 rule
that SASG uses. At round k, worker m uploads if any of

* ``k < D``  (warm-up: the window of parameter steps is not full yet),
* ``tau_m > D``  (bounded staleness: at most D skips in a row),
* :math:`\|g - \nabla\ell(\hat\theta_m;\xi_m^k)\|^2 > thr_k` where the stale gradient is taken
  at the worker's anchor (its parameters at its last upload) on the **same** minibatch and

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

The sum runs over the last ``D - 1`` server steps, so the window keeps ``D - 1`` squared step
norms. Larger ``c`` lowers the threshold (more uploads); larger ``D`` allows longer skips and
averages the threshold over more steps.

A trigger is split in two so the runner can skip work: ``forced(k, tau)`` needs no gradient and
says who uploads regardless; only the others need the stale gradient and ``fires(...)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


class AlwaysTrigger:
    name = "always"
    lazy = False
    window = 0

    def forced(self, iteration: int, staleness: Tensor) -> Tensor:
        return torch.ones_like(staleness, dtype=torch.bool)

    def describe(self) -> dict:
        return {"trigger": self.name}


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


def squared_change(grads: Sequence[Tensor], rows: Tensor, stale: Sequence[Tensor], work: Tensor) -> Tensor:
    """``||g[rows[i]] - stale[i]||^2`` for every checked row ``i`` (shape ``(n,)``, float32).

    ``grads`` (``N`` rows) and ``stale`` (the ``n`` checked rows) come as matching column blocks
    (see :meth:`~sasg.core.layout.Layout.as_columns`); ``work`` is a ``(d,)`` buffer.

    One row at a time: the difference is formed in ``work``, squared there and summed while it
    is still in cache, which reads each gradient once instead of writing and re-reading an
    ``(n, d)`` difference three times. Every row is reduced on its own, so a row gives the same
    bits whether it is checked alone (a distributed rank) or with others (the simulator).
    """
    n = rows.numel()
    out = torch.empty(n, dtype=work.dtype, device=work.device)
    for i, r in enumerate(rows.tolist()):
        col = 0
        for g, s in zip(grads, stale, strict=True):
            width = g.shape[1]
            torch.sub(g[r], s[i], out=work[col : col + width])
            col += width
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[i : i + 1])
    return out


def lazy_fires(diff_sq: Tensor, threshold: float) -> Tensor:
    """The gradient changed enough since the anchor: ``||g - g_stale||^2 > thr``."""
    return diff_sq > threshold


class LazyTrigger:
    """LASG-WK2 lazy aggregation with window ``D`` and threshold scale ``c``."""

    name = "lazy"
    lazy = True

    def __init__(self, window: int, c: float):
        if (
            isinstance(window, bool)
            or not isinstance(window, (int, float))
            or not math.isfinite(window)
            or int(window) != window
            or window < 1
        ):
            raise ValueError(f"window D must be an integer >= 1, got {window!r}")
        if not (c > 0) or math.isinf(c):
            raise ValueError(f"threshold scale c must be a finite number > 0, got {c!r}")
        self.window = int(window)
        self.c = float(c)

    def forced(self, iteration: int, staleness: Tensor) -> Tensor:
        return forced_uploads(iteration, staleness, self.window)

    def threshold(self, recent_step_sq: Tensor, num_workers: int, lr: float) -> float:
        return lazy_threshold(recent_step_sq, self.c, num_workers, lr)

    def fires(self, diff_sq: Tensor, threshold: float) -> Tensor:
        return lazy_fires(diff_sq, threshold)

    def describe(self) -> dict:
        return {"trigger": self.name, "window": self.window, "threshold_scale": self.c}
