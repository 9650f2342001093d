r"""``wk1``: LASG-WK1 lazy aggregation: the fresh gradient against the one last uploaded.

Source: T. Chen, Y. Sun, W. Yin, *LASG: Lazily Aggregated Stochastic Gradients for
Communication-Efficient Distributed Learning*, arXiv:2002.11360 — its first worker-side rule
(WK1); the second (WK2, the one SASG uses) is :mod:`.wk2`.

At round k, worker m uploads if any of

* ``k < D`` (warm-up) or ``tau_m > D`` (at most D skips in a row): :func:`.lazy.forced_uploads`;
* :math:`\|g_m^k - \hat g_m\|^2 > thr_k` with :math:`g_m^k = \nabla\ell(\theta^k;\xi_m^k)` the
  fresh stochastic gradient, :math:`\hat g_m = \nabla\ell(\hat\theta_m;\hat\xi_m)` the stochastic
  gradient the worker computed (and uploaded) at its last upload — at its anchor
  :math:`\hat\theta_m` and on *that* round's minibatch — and the same threshold as ``wk2``:

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

Mapping to the paper: LASG writes its rules with the step :math:`\alpha` on the *sum* of the M
gradients and weights :math:`\xi_d`, as
:math:`\|\delta\nabla_m^k\|^2 \le \frac{1}{\alpha^2 M^2}\sum_{d=1}^{D}\xi_d\|\theta^{k+1-d}-\theta^{k-d}\|^2`
(skip). With :math:`\alpha = \eta/M` the factor is :math:`1/\eta^2`, so ``thr_k`` above is that
right-hand side with equal weights :math:`\xi_d = \eta/(cM)` on the last ``D - 1`` steps (and
:math:`\xi_D = 0`). WK1 and WK2 differ only in :math:`\delta\nabla_m^k`: WK1 compares two gradients
on two minibatches, WK2 two gradients on the same one (which costs WK2 a second backward pass at
the anchor every checked round).

Cost: no second gradient (``rnd.stale_grads`` is never called); one extra ``(N, d)`` buffer,
``last_grad``, written at every upload. Because the two minibatches differ, the left side keeps
a floor of about :math:`2\sigma^2` (:math:`\sigma^2` the minibatch-gradient variance) even where
:math:`\theta` stops moving, while ``thr_k`` shrinks with the steps: late in training wk1 uploads
more often than wk2 at the same ``c``; the staleness bound holds either way.

The last uploaded gradient is recorded in :meth:`WK1.decide`, the only place that sees the fresh
gradients; its answer is final (the engine sends exactly the rows it flags).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .lazy import LazyRule, forced_uploads


def distance_to_rows(grads: Sequence[Tensor], other: Tensor, rows: Tensor, work: Tensor) -> Tensor:
    """``||g[r] - other[r]||^2`` for every ``r`` in ``rows`` (shape ``(n,)``).

    ``grads`` are the ``N`` rows as per-segment column blocks, ``other`` an ``(N, d)`` buffer and
    ``work`` a ``(d,)`` scratch buffer. Row by row, each reduced on its own (as
    :func:`.wk2.squared_change`): a row gives the same bits whether a distributed rank checks it
    alone or the simulator checks it among others."""
    out = torch.empty(rows.numel(), dtype=work.dtype, device=work.device)
    for i, r in enumerate(rows.tolist()):
        col = 0
        for g in grads:
            width = g.shape[1]
            torch.sub(g[r], other[r, col : col + width], out=work[col : col + width])
            col += width
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[i : i + 1])
    return out


def store_rows(buffer: Tensor, grads: Sequence[Tensor], rows: Tensor) -> None:
    """``buffer[r] = g[r]`` for every ``r`` in ``rows`` (``grads`` as per-segment column blocks)."""
    everyone = rows.numel() == buffer.shape[0]
    col = 0
    for g in grads:
        width = g.shape[1]
        if everyone:
            buffer[:, col : col + width].copy_(g)
        else:
            for r in rows.tolist():
                buffer[r, col : col + width].copy_(g[r])
        col += width


class WK1(LazyRule):
    """LASG-WK1 with window ``D`` and threshold scale ``c``: no second gradient."""

    name = "wk1"
    needs_stale_grads = False
    worker_buffers = ("last_grad",)

    def decide(self, rnd) -> Tensor:
        upload = forced_uploads(rnd.iteration, rnd.workers.staleness, self.window)
        last = rnd.workers.buffer("last_grad")
        check = (~upload).nonzero().squeeze(1)
        if check.numel():
            work = rnd.workspace.buffer("wk1-difference", (rnd.layout.numel,), rnd.grads[0])
            diff_sq = distance_to_rows(rnd.grads, last, check, work)
            thr = self.threshold(rnd)
            upload[check] = diff_sq > thr
        store_rows(last, rnd.grads, upload.nonzero().squeeze(1))
        return upload

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        pass  # the uploaded gradient was recorded in decide
