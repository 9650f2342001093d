r"""``wk2``: LASG-WK2 lazy aggregation, the rule SASG uses.

At round k, worker m uploads if any of

* ``k < D``  (warm-up: the window of parameter steps is not full yet),
* ``tau_m > D``  (bounded staleness: at most D skips in a row),
* ``k mod M = m`` under aggregate ``"rotating"`` (its turn: :func:`.lazy.designated`),
* :math:`\|g - \nabla\ell(\hat\theta_m;\xi_m^k)\|^2 > thr_k` where the stale gradient is taken
  at the worker's anchor :math:`\hat\theta_m` (its parameters at its last upload) on the **same**
  minibatch and

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

The sum runs over the last ``D - 1`` server steps (``history``; the last ``D`` with
``window_sum="D"``, and ``eta`` may lag the schedule: see :mod:`.lazy`). Larger ``c`` lowers the
threshold (more uploads); larger ``D`` allows longer skips and averages over more steps. The second
gradient is computed only for workers the rule must check: never in warm-up, never for a forced
upload.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .lazy import LazyRule, set_anchor


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


class WK2(LazyRule):
    """LASG-WK2 with window ``D`` and threshold scale ``c``."""

    name = "wk2"
    needs_stale_grads = True  # the gradient at the anchor on the same minibatch
    worker_buffers = ("anchor",)

    def checked_rows(self, iteration: int, staleness: Tensor, worker_ids: Sequence[int] | None = None,
                     num_workers: int | None = None) -> Tensor:
        """The rows whose stale gradient :meth:`decide` asks for: all but the forced uploads (the
        rows' global ``worker_ids`` and ``num_workers`` M are needed where the rule takes turns)."""
        return ~self.forced(iteration, staleness, worker_ids, num_workers)

    def decide(self, rnd) -> Tensor:
        check_mask = ~self.forced_in(rnd)  # checked_rows, for this round
        upload = ~check_mask
        check = check_mask.nonzero().squeeze(1)
        if check.numel():
            stale = rnd.stale_grads(check)
            work = rnd.workspace.buffer("wk2-difference", (rnd.layout.numel,), rnd.grads[0])
            diff_sq = squared_change(rnd.grads, check, stale, work)
            thr = self.threshold(rnd)
            upload[check] = diff_sq > thr
        return upload

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        set_anchor(workers, rows, theta)
