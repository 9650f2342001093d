r"""``ps``: LASG-PS lazy aggregation: parameter drift since the last upload times a smoothness estimate.

Source: T. Chen, Y. Sun, W. Yin, *LASG: Lazily Aggregated Stochastic Gradients for
Communication-Efficient Distributed Learning*, arXiv:2002.11360 — its parameter-server rule (PS),
the stochastic form of LAG-PS (Chen, Giannakis, Sun, Yin, arXiv:1805.09965).

At round k, worker m uploads if any of

* ``k < D`` (warm-up) or ``tau_m > D`` (at most D skips in a row): :func:`.lazy.forced_uploads`;
* :math:`L_m^2\,\|\theta^k - \hat\theta_m\|^2 > thr_k`, with :math:`\hat\theta_m` the anchor (the
  parameters at m's last upload), :math:`L_m` an estimate of the smoothness constant of m's loss,
  and the threshold of ``wk2``/``wk1``:

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

Why: if :math:`\ell(\cdot;\xi)` is :math:`L_m`-smooth, :math:`L_m\|\theta^k-\hat\theta_m\|` bounds
the gradient change :math:`\|\nabla\ell(\theta^k;\xi)-\nabla\ell(\hat\theta_m;\xi)\|` that WK2
measures with a second gradient; PS only needs parameters, so in LASG the *server* can decide whom
to ask for a fresh gradient (it saves downloads as well as uploads). Mapping of the threshold to
the paper's :math:`\frac{1}{\alpha^2M^2}\sum_{d=1}^{D}\xi_d\|\theta^{k+1-d}-\theta^{k-d}\|^2`:
:math:`\alpha = \eta/M` and equal weights :math:`\xi_d = \eta/(cM)` on the last ``D - 1`` steps,
exactly as for :mod:`.wk1`.

The smoothness estimate (deterministic, no second gradient). :math:`L_m` is the running maximum of
the secants between m's consecutive uploads,

.. math:: L_m \leftarrow \max\Big(L_m,\;
          \frac{\|g_m^k - \hat g_m\|}{\|\theta^k - \hat\theta_m\|}\Big)
          \quad\text{when m uploads at round } k \ge 1 \text{ and } \theta^k \ne \hat\theta_m,

where :math:`g_m^k` is the gradient it uploads now and :math:`\hat g_m` the one it uploaded at
:math:`\hat\theta_m` (``L_m = 0`` before the first secant; every worker uploads at round 0, a
warm-up round). These are exactly what a LASG parameter server receives, so the estimate keeps the
rule server-side in spirit. A Lipschitz constant is a supremum over pairs of points, and the
running maximum over the observed pairs is its natural estimate from below; it only grows, so the
rule errs towards uploading. The two gradients are on different minibatches, so their difference
also holds sampling noise: the secant over-estimates the curvature most where the parameters moved
least (more uploads, never fewer). :math:`L_m` is frozen between uploads: the decision itself uses
parameters only.

Cost: no second gradient (``rnd.stale_grads`` is never called); per worker two ``(N, d)``
buffers (``anchor``, ``last_grad``) and one number (``lipschitz``). The uploaded gradient and the
estimate are recorded in :meth:`PS.decide`, the only place that sees the fresh gradients (its
answer is final); the anchor in :meth:`PS.uploaded`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .lazy import LazyRule, forced_uploads, set_anchor
from .wk1 import distance_to_rows, store_rows


def drift(theta: Tensor, anchor: Tensor, work: Tensor) -> Tensor:
    """``||theta - anchor[r]||^2`` for every row ``r`` (shape ``(N,)``), each row reduced on its
    own (the same bits for a row alone on a rank and among all rows in the simulator)."""
    out = torch.empty(anchor.shape[0], dtype=work.dtype, device=work.device)
    for r in range(anchor.shape[0]):
        torch.sub(theta, anchor[r], out=work)
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[r : r + 1])
    return out


class PS(LazyRule):
    """LASG-PS with window ``D``, threshold scale ``c`` and a secant estimate of each L_m."""

    name = "ps"
    needs_stale_grads = False
    # (name, width): lipschitz is one number per worker, the others (N, d).
    worker_buffers = ("anchor", "last_grad", ("lipschitz", 1))

    def decide(self, rnd) -> Tensor:
        upload = forced_uploads(rnd.iteration, rnd.workers.staleness, self.window)
        if rnd.iteration == 0:  # round 0: everyone uploads; nothing to compare with yet
            store_rows(rnd.workers.buffer("last_grad"), rnd.grads, upload.nonzero().squeeze(1))
            return upload
        anchor, last = rnd.workers.buffer("anchor"), rnd.workers.buffer("last_grad")
        lipschitz = rnd.workers.buffer("lipschitz")[:, 0]
        work = rnd.workspace.buffer("ps-difference", (rnd.layout.numel,), rnd.theta)
        moved = drift(rnd.theta, anchor, work)
        check = (~upload).nonzero().squeeze(1)
        if check.numel():
            thr = self.threshold(rnd)
            bound = lipschitz[check].double().square() * moved[check].double()
            upload[check] = bound > thr
        rows = upload.nonzero().squeeze(1)
        if rows.numel():
            changed = distance_to_rows(rnd.grads, last, rows, work)
            dist = moved[rows]
            secant = torch.where(dist > 0, (changed / dist.clamp_min(torch.finfo(dist.dtype).tiny)).sqrt(),
                                 torch.zeros_like(dist))
            lipschitz[rows] = torch.maximum(lipschitz[rows], secant.to(lipschitz.dtype))
            store_rows(last, rnd.grads, rows)
        return upload

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        set_anchor(workers, rows, theta)
