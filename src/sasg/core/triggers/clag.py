r"""``clag``: CLAG, the lazy rule of the 3PC framework (Richtárik, Sokolov, Fatkhullin, Gasanov, Li,
Gorbunov, "3PC: Three Point Compressors for Communication-Efficient Distributed Training and a
Better Theory for Lazy Aggregation", ICML 2022, arXiv 2202.00998): EF21 that skips a round when
the estimate is already close enough.

Worker ``m`` keeps the EF21 estimate :math:`g_m^k` (the ``ef21`` memory's ``h_m``) and the fresh
gradient of its previous round, :math:`\nabla f_m(x^k)`. At round ``k + 1`` it uploads
:math:`C(\nabla f_m(x^{k+1}) - g_m^k)` (what ``ef21`` sends) if

.. math:: \|\nabla f_m(x^{k+1}) - g_m^k\|^2 > \zeta\,\|\nabla f_m(x^{k+1}) - \nabla f_m(x^k)\|^2,

and sends nothing otherwise (:math:`g_m` stays, on the worker and on the server). Every worker
uploads at round 0 (there is no previous gradient; with :math:`h_m = 0` this is EF21's
:math:`g_m^0 = C(\nabla f_m(x^0))`). The gradients are this engine's stochastic ones on each
round's minibatch, and the estimate is in the engine's step units, :math:`h_m = s\,g_m` with
``s = eta / M``, so the rule is evaluated as
:math:`\|s\,g_m^{k+1} - h_m\|^2 > \zeta\,s^2\,\|g_m^{k+1} - g_m^k\|^2` (row by row, in float64
after float32 sums; at ``s = 0`` a worker uploads iff :math:`h_m \neq 0`).

:math:`\zeta` is the threshold scale's reciprocal, :math:`\zeta = 1/c` (``--threshold-scale c``),
so that, as for the other lazy rules, a larger ``c`` means more uploads: ``c -> inf`` is
``always`` (a worker skips only when its estimate is exact), ``c = 1`` is :math:`\zeta = 1`.
CLAG has no window and no staleness bound (``--window`` is not used; ``history`` is 0) and its
threshold has no lr in it (``--threshold-lr-lag`` does not apply).

Cost: no second gradient (``rnd.stale_grads`` is never called); one ``(N, d)`` buffer,
``prev_grad``, rewritten for every worker every round, and the memory's estimate. It needs the
``ef21`` memory (or another that keeps an ``estimate`` buffer and says so): ``clag+topk`` gets
``ef21`` by default (:attr:`CLAG.default_memory`, which a composition's default takes over the
compressor's), and ``clag+topk+ef`` is refused with an error naming the fix.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..memories.ef21 import ESTIMATE
from .lazy import check_threshold_scale
from .rows import distance_to_rows, store_rows


def estimate_gap(grads: Sequence[Tensor], scale: float, estimate: Tensor, work: Tensor) -> Tensor:
    """``||scale * g[r] - estimate[r]||^2`` for every row ``r`` (shape ``(N,)``), each row formed in
    ``work`` and reduced on its own (the same bits alone on a rank or among all rows)."""
    out = torch.empty(estimate.shape[0], dtype=work.dtype, device=work.device)
    for r in range(estimate.shape[0]):
        col = 0
        for g in grads:
            width = g.shape[1]
            torch.mul(g[r], scale, out=work[col : col + width])
            col += width
        work.sub_(estimate[r])
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[r : r + 1])
    return out


class CLAG:
    """CLAG with :math:`\\zeta = 1/c`."""

    name = "clag"
    lazy = True
    history = 0
    needs_stale_grads = False
    worker_buffers = ("prev_grad",)
    default_memory = "ef21"

    def __init__(self, c: float):
        self.c = check_threshold_scale(c)
        self.zeta = 1.0 / self.c

    def check_algorithm(self, algorithm) -> None:
        """CLAG compares with the EF21 estimate: the memory must keep one."""
        memory = algorithm.memory
        if getattr(memory, "estimate", None) != ESTIMATE:
            raise ValueError(
                f"{algorithm.name}: the clag rule compares the fresh gradient with the worker's EF21 estimate, "
                f"which memory {memory.name!r} does not keep; use the ef21 memory "
                f"(clag+{algorithm.compressor.name}+ef21, or leave the memory out: clag's default is ef21)"
            )

    def decide(self, rnd) -> Tensor:
        prev = rnd.workers.buffer("prev_grad")
        n = prev.shape[0]
        upload = torch.ones(n, dtype=torch.bool, device=rnd.workers.staleness.device)
        if rnd.iteration > 0 and n:
            s = rnd.lr / rnd.num_workers
            work = rnd.workspace.buffer("clag-difference", (rnd.layout.numel,), rnd.grads[0])
            gap = estimate_gap(rnd.grads, s, rnd.workers.buffer(ESTIMATE), work).double()
            change = distance_to_rows(rnd.grads, prev, torch.arange(n), work).double()
            upload = (gap > self.zeta * s * s * change).to(upload.device)
        store_rows(prev, rnd.grads, torch.arange(n))  # every worker computed a fresh gradient
        return upload

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        pass  # the previous gradient was recorded in decide, for every worker

    def describe(self) -> dict:
        return {"trigger": self.name, "threshold_scale": self.c, "zeta": self.zeta}
