r"""``wk2``: LASG-WK2 lazy aggregation, the rule SASG uses.

At round k, worker m uploads if any of

* ``k < D``  (warm-up: the window of parameter steps is not full yet),
* ``tau_m > D``  (bounded staleness: at most D skips in a row),
* :math:`\|g - \nabla\ell(\hat\theta_m;\xi_m^k)\|^2 > thr_k` where the stale gradient is taken
  at the worker's anchor :math:`\hat\theta_m` (its parameters at its last upload) on the **same**
  minibatch and

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

The sum runs over the last ``D - 1`` server steps (``history``). Larger ``c`` lowers the threshold
(more uploads); larger ``D`` allows longer skips and averages over more steps. The second
gradient is computed only for workers the rule must check: never in warm-up, never for a forced
upload.
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


def squared_change(grads: Sequence[Tensor], rows: Tensor, stale: Sequence[Tensor], work: Tensor) -> Tensor:
    """``||g[rows[i]] - stale[i]||^2`` for every checked row ``i`` (shape ``(n,)``).

    ``grads`` (``N`` rows) and ``stale`` (the ``n`` checked rows) come as matching column blocks;
    ``work`` is a ``(d,)`` buffer. One row at a time: the difference is formed in ``work``, squared
    there and summed while it is still in cache, which reads each gradient once instead of writing
    and re-reading an ``(n, d)`` difference three times. Every row is reduced on its own, so a row
    gives the same bits whether it is checked alone (a distributed rank) or with others."""
    out = torch.empty(rows.numel(), dtype=work.dtype, device=work.device)
    for i, r in enumerate(rows.tolist()):
        col = 0
        for g, s in zip(grads, stale, strict=True):
            width = g.shape[1]
            torch.sub(g[r], s[i], out=work[col : col + width])
            col += width
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[i : i + 1])
    return out


class WK2:
    """LASG-WK2 with window ``D`` and threshold scale ``c``."""

    name = "wk2"
    lazy = True
    worker_buffers = ("anchor",)

    def __init__(self, window: int, c: float):
        self.window = check_window(window)
        self.c = check_threshold_scale(c)
        self.history = self.window - 1

    def decide(self, rnd) -> Tensor:
        upload = forced_uploads(rnd.iteration, rnd.workers.staleness, self.window)
        check = (~upload).nonzero().squeeze(1)
        if check.numel():
            stale = rnd.stale_grads(check)
            work = rnd.workspace.buffer("wk2-difference", (rnd.layout.numel,), rnd.grads[0])
            diff_sq = squared_change(rnd.grads, check, stale, work)
            thr = lazy_threshold(rnd.server.step_sq, self.c, rnd.num_workers, rnd.lr)
            upload[check] = diff_sq > thr
        return upload

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        anchor = workers.buffer("anchor")
        if len(rows) == anchor.shape[0]:
            anchor.copy_(theta.expand_as(anchor))
        else:  # row by row: several times faster than an index_put of a broadcast theta
            for r in rows:
                anchor[r].copy_(theta)

    def describe(self) -> dict:
        return {"trigger": self.name, "window": self.window, "threshold_scale": self.c}
