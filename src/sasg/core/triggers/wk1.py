r"""``wk1``: LASG-WK1 lazy aggregation, the fresh gradient against the one last uploaded, with an
allowance for minibatch noise; ``wk1-plain``: the same rule without it.

Source: T. Chen, Y. Sun, W. Yin, *LASG: Lazily Aggregated Stochastic Gradients for
Communication-Efficient Distributed Learning*, arXiv:2002.11360 — its first worker-side rule
(WK1); the second (WK2, the one SASG uses) is :mod:`.wk2`. The variance allowance is this
library's (see below and :mod:`.noise`): we could not read the paper's own stochastic statement
of WK1 in any source at hand (only its abstract), so we derive the allowance and say so.

At round k, worker m uploads if any of

* ``k < D`` (warm-up) or ``tau_m > D`` (at most D skips in a row), or its turn under aggregate
  ``"rotating"``: :func:`.lazy.forced_uploads`;
* ``wk1``: :math:`\|g_m^k - \hat g_m\|^2 - 2\hat s_m^2 > thr_k`, ``wk1-plain``:
  :math:`\|g_m^k - \hat g_m\|^2 > thr_k`, with :math:`g_m^k = \nabla\ell(\theta^k;\xi_m^k)` the
  fresh stochastic gradient, :math:`\hat g_m = \nabla\ell(\hat\theta_m;\hat\xi_m)` the stochastic
  gradient the worker computed (and uploaded) at its last upload — at its anchor
  :math:`\hat\theta_m` and on *that* round's minibatch —, :math:`\hat s_m^2` the running estimate
  of m's minibatch-gradient variance (:func:`.noise.track_noise`) and the same threshold as
  ``wk2``:

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

Why the allowance. The two gradients are on independent minibatches, so
:math:`E\|g_m^k - \hat g_m\|^2 = \|\nabla f_m(\theta^k) - \nabla f_m(\hat\theta_m)\|^2 + 2 s_m^2`
(:mod:`.noise`). The plain rule compares the sum with thr_k; the noise term does not shrink while
thr_k does (a sum of squared steps), so late in training ``wk1-plain`` uploads every round (on the
default setting it never skips at c = 2). ``wk1`` subtracts the noise term's estimate and so
compares an unbiased estimate of the gradient's own change, the quantity LAG's deterministic rule
bounds, with thr_k. It skips where the gradient has moved less than thr_k allows *beyond* what two
minibatches differ by anyway; where thr_k vanishes it still skips the rounds whose difference is
within the noise (so, unlike ``wk1-plain``, ``c -> inf`` is not ``always``).

Mapping to the paper: LASG writes its rules with the step :math:`\alpha` on the *sum* of the M
gradients and weights :math:`\xi_d`, as
:math:`\|\delta\nabla_m^k\|^2 \le \frac{1}{\alpha^2 M^2}\sum_{d=1}^{D}\xi_d\|\theta^{k+1-d}-\theta^{k-d}\|^2`
(skip). With :math:`\alpha = \eta/M` the factor is :math:`1/\eta^2`, so ``thr_k`` above is that
right-hand side with equal weights :math:`\xi_d = \eta/(cM)` on the last ``D - 1`` steps (and
:math:`\xi_D = 0`). WK1 and WK2 differ only in :math:`\delta\nabla_m^k`: WK1 compares two gradients
on two minibatches, WK2 two gradients on the same one (which costs WK2 a second backward pass at
the anchor every checked round, and needs no allowance).

Cost: no second gradient (``rnd.stale_grads`` is never called). ``wk1-plain``: one extra
``(N, d)`` buffer, ``last_grad``, written at every upload. ``wk1``: also ``prev_grad`` (the
previous round's gradient, ``(N, d)``, rewritten every round) and ``noise`` (one number per
worker), one more pass over a d-vector per worker per round.

The last uploaded gradient is recorded in :meth:`WK1Plain.decide`, the only place that sees the
fresh gradients; its answer is final (the engine sends exactly the rows it flags).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .lazy import LazyRule
from .noise import NOISE_BUFFERS, noise_allowance, track_noise
from .rows import distance_to_rows, store_rows


class WK1Plain(LazyRule):
    """LASG-WK1 with window ``D`` and threshold scale ``c`` and no noise allowance: no second gradient."""

    name = "wk1-plain"
    needs_stale_grads = False
    worker_buffers = ("last_grad",)

    def decide(self, rnd) -> Tensor:
        upload = self.forced_in(rnd)
        last = rnd.workers.buffer("last_grad")
        check = (~upload).nonzero().squeeze(1)
        work = rnd.workspace.buffer("wk1-difference", (rnd.layout.numel,), rnd.grads[0])
        if check.numel():
            diff_sq = distance_to_rows(rnd.grads, last, check, work)
            upload[check] = self.exceeds(rnd, diff_sq, check)
        store_rows(last, rnd.grads, upload.nonzero().squeeze(1))
        self.after_decision(rnd, work)
        return upload

    def exceeds(self, rnd, diff_sq: Tensor, rows: Tensor) -> Tensor:
        """Which of the checked ``rows`` (their squared differences ``diff_sq``) must upload."""
        return diff_sq > self.threshold(rnd)

    def after_decision(self, rnd, work: Tensor) -> None:
        """Bookkeeping once the round's answer is known (none for the plain rule)."""

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        pass  # the uploaded gradient was recorded in decide


class WK1(WK1Plain):
    r"""LASG-WK1 whose difference is measured beyond the minibatch noise :math:`2\hat s_m^2`."""

    name = "wk1"
    worker_buffers = ("last_grad", *NOISE_BUFFERS)

    def exceeds(self, rnd, diff_sq: Tensor, rows: Tensor) -> Tensor:
        excess = diff_sq.double() - noise_allowance(rnd.workers, rows)
        return (excess > self.threshold(rnd)).to(diff_sq.device)

    def after_decision(self, rnd, work: Tensor) -> None:
        track_noise(rnd, work)
