r"""``ps``: LASG-PS lazy aggregation, parameter drift since the last upload times a smoothness
estimate, the estimate taken beyond the minibatch noise; ``ps-plain``: the same rule with the
noisy running-maximum estimate.

Source: T. Chen, Y. Sun, W. Yin, *LASG: Lazily Aggregated Stochastic Gradients for
Communication-Efficient Distributed Learning*, arXiv:2002.11360 — its parameter-server rule (PS),
the stochastic form of LAG-PS (Chen, Giannakis, Sun, Yin, arXiv:1805.09965). The noise-aware
estimate of ``ps`` is this library's (below; we could not read the paper's own stochastic
statement of the rule in any source at hand).

At round k, worker m uploads if any of

* ``k < D`` (warm-up) or ``tau_m > D`` (at most D skips in a row), or its turn under aggregate
  ``"rotating"``: :func:`.lazy.forced_uploads`;
* :math:`L_m^2\,\|\theta^k - \hat\theta_m\|^2 > thr_k`, with :math:`\hat\theta_m` the anchor (the
  parameters at m's last upload), :math:`L_m` an estimate of the smoothness constant of m's loss,
  and the threshold of ``wk2``/``wk1``:

  .. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 .

Why: if :math:`f_m` is :math:`L_m`-smooth, :math:`L_m\|\theta^k-\hat\theta_m\|` bounds the
gradient change :math:`\|\nabla f_m(\theta^k)-\nabla f_m(\hat\theta_m)\|` that a lazy rule
means to measure; PS only needs parameters, so in LASG the *server* can decide whom to ask for a
fresh gradient (it saves downloads as well as uploads). Mapping of the threshold to the paper's
:math:`\frac{1}{\alpha^2M^2}\sum_{d=1}^{D}\xi_d\|\theta^{k+1-d}-\theta^{k-d}\|^2`:
:math:`\alpha = \eta/M` and equal weights :math:`\xi_d = \eta/(cM)` on the last ``D - 1`` steps,
exactly as for :mod:`.wk1`. The decision itself holds no sampled quantity; the noise enters
through the estimate of :math:`L_m`, from pairs of uploaded gradients on different minibatches.

``ps-plain``'s estimate: :math:`L_m` is the running maximum of the secants between m's
consecutive uploads,

.. math:: L_m \leftarrow \max\Big(L_m,\;
          \frac{\|g_m^k - \hat g_m\|}{\|\theta^k - \hat\theta_m\|}\Big)
          \quad\text{when m uploads at round } k \ge 1 \text{ and } \theta^k \ne \hat\theta_m,

where :math:`g_m^k` is the gradient it uploads now and :math:`\hat g_m` the one it uploaded at
:math:`\hat\theta_m` (``L_m = 0`` before the first secant). Its squared numerator holds the noise
:math:`2s_m^2` (:mod:`.noise`), which does not shrink with the drift in the denominator: the
secant is largest where the parameters moved least, and the running maximum keeps the largest.
On the default setting ``ps-plain`` does not skip even at c = 0.002.

``ps``'s estimate: every round, each held worker's fresh gradient and the one it uploaded last
give the drift :math:`b = \|\theta^k - \hat\theta_m\|^2` and the debiased squared gradient change
:math:`a = \|g_m^k - \hat g_m\|^2 - 2\hat s_m^2` (an estimate of
:math:`\|\nabla f_m(\theta^k) - \nabla f_m(\hat\theta_m)\|^2`, negative at times), and
:math:`L_m^2` is the least-squares slope of :math:`a` on :math:`b` through the origin over recent
rounds,

.. math:: L_m^2 = \frac{\max(0,\ \overline{ab})}{\overline{b^2}}, \qquad
          \overline{ab} \leftarrow \beta\,\overline{ab} + (1-\beta)\,ab, \quad
          \overline{b^2} \leftarrow \beta\,\overline{b^2} + (1-\beta)\,b^2, \quad \beta = 0.9,

started at the first pair with :math:`b > 0` (``L_m = 0`` before it). The decision of round k uses
the estimate of the rounds before it; the round's own pair is folded in afterwards. Choices, and
why:

* *Least squares, not a maximum.* The maximum of noisy secants is the noise's extreme, not the
  curvature. The noise in :math:`a` is about the same whatever the drift, so the pairs that say
  most about the curvature are those where the parameters moved most; the slope weights each pair
  by :math:`b^2`, so pairs one step apart (where :math:`a` is nearly all noise) count little and
  those deep in a run of skips count most. (A ratio of the averages of :math:`a` and :math:`b`,
  which weights pairs by :math:`b`, was tried: it let the short, noise-dominated pairs pull
  :math:`L_m` down, and ``ps+topk`` then skipped too much: 1435 uploads, 91.9 % on the default
  setting.)
* *Every round, not only at uploads.* LASG-PS decides on the server, where only uploaded gradients
  arrive; here every runner computes every worker's gradient every round anyway (the noise
  estimate needs it too), and the pairs inside a run of skips are the informative ones. From
  upload pairs only, the default setting gave 2647 uploads and 92.3 % (SGD: 92.8 %); from every
  round's pair: the figures in ``docs/algorithms.md``.
* *A running average* (:math:`\beta` as for the noise, about 19 rounds) follows the curvature as it
  changes over training.

A bias to know: while m skips, the server reapplies m's last message, noise included, so the
drift correlates with that message's noise and :math:`a` holds a positive cross term (about
:math:`2\tau\frac{\eta}{M}\,\xi^\top H\xi` after :math:`\tau` skips, H the Hessian, :math:`\xi` the
stale noise). It makes :math:`L_m` larger, the rule more careful where reused noise moves the
parameters most; ``wk1``'s difference holds the same term. :math:`\hat s_m^2` is the running
estimate of :mod:`.noise`.

Cost: no second gradient (``rnd.stale_grads`` is never called). ``ps-plain``: per worker two
``(N, d)`` buffers (``anchor``, ``last_grad``) and one number (``lipschitz``); ``ps``: also
``prev_grad`` (``(N, d)``, rewritten every round), ``noise`` (one number) and ``secant`` (two
numbers: the averages of :math:`ab` and :math:`b^2`) instead of ``lipschitz``, and three passes
over a d-vector per worker per round (drift, change, noise). The uploaded
gradient and the estimate are recorded in ``decide``, the only place that sees the fresh
gradients (its answer is final); the anchor in ``uploaded``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .lazy import LazyRule, set_anchor
from .noise import NOISE_BUFFERS, NOISE_DECAY, noise_allowance, track_noise
from .rows import distance_to_rows, store_rows


def drift(theta: Tensor, anchor: Tensor, work: Tensor) -> Tensor:
    """``||theta - anchor[r]||^2`` for every row ``r`` (shape ``(N,)``), each row reduced on its
    own (the same bits for a row alone on a rank and among all rows in the simulator)."""
    out = torch.empty(anchor.shape[0], dtype=work.dtype, device=work.device)
    for r in range(anchor.shape[0]):
        torch.sub(theta, anchor[r], out=work)
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[r : r + 1])
    return out


class PSPlain(LazyRule):
    """LASG-PS with window ``D``, threshold scale ``c`` and the running maximum of the secants as L_m."""

    name = "ps-plain"
    needs_stale_grads = False
    # (name, width): lipschitz is one number per worker, the others (N, d).
    worker_buffers = ("anchor", "last_grad", ("lipschitz", 1))

    def decide(self, rnd) -> Tensor:
        upload = self.forced_in(rnd)
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


class PS(LazyRule):
    """LASG-PS with window ``D``, threshold scale ``c`` and a noise-aware least-squares estimate of
    each :math:`L_m^2`."""

    name = "ps"
    needs_stale_grads = False
    # (name, width): noise is one number per worker, secant two (mean of a*b, mean of b^2).
    worker_buffers = ("anchor", "last_grad", *NOISE_BUFFERS, ("secant", 2))

    def decide(self, rnd) -> Tensor:
        upload = self.forced_in(rnd)
        work = rnd.workspace.buffer("ps-difference", (rnd.layout.numel,), rnd.theta)
        last = rnd.workers.buffer("last_grad")
        if rnd.iteration == 0:  # round 0: everyone uploads; nothing to compare with yet
            store_rows(last, rnd.grads, upload.nonzero().squeeze(1))
            track_noise(rnd, work)
            return upload
        secant = rnd.workers.buffer("secant")
        moved = drift(rnd.theta, rnd.workers.buffer("anchor"), work)
        check = (~upload).nonzero().squeeze(1)
        if check.numel():
            bound = curvature_sq(secant[check]) * moved[check].double()
            upload[check] = (bound > self.threshold(rnd)).to(upload.device)
        # This round's pair of every held worker (fresh gradient against the last uploaded one,
        # drift since the anchor), folded in after the decision: it informs the next rounds.
        everyone = torch.arange(upload.numel())
        changed = distance_to_rows(rnd.grads, last, everyone, work).double() - noise_allowance(rnd.workers, everyone)
        fold_secants(secant, everyone, changed, moved.double())
        store_rows(last, rnd.grads, upload.nonzero().squeeze(1))
        track_noise(rnd, work)
        return upload

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        set_anchor(workers, rows, theta)


def curvature_sq(secant: Tensor) -> Tensor:
    r""":math:`L_m^2 = \max(0, \overline{ab}) / \overline{b^2}` per row of ``secant`` (float64; 0
    before the first pair)."""
    ab, bb = secant[:, 0].double(), secant[:, 1].double()
    return torch.where(bb > 0, ab.clamp_min(0) / bb.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(bb))


def fold_secants(secant: Tensor, rows: Tensor, a: Tensor, b: Tensor, decay: float = NOISE_DECAY) -> None:
    """Fold the pairs ``(a, b)`` of the workers ``rows`` into their running averages of ``a*b``
    and ``b*b``; a row's first pair with ``b > 0`` starts them, a pair with ``b = 0`` (the
    parameters did not move) says nothing and is left out."""
    for i, r in enumerate(rows.tolist()):
        bi = float(b[i])
        if bi <= 0:
            continue
        pair = torch.tensor([float(a[i]) * bi, bi * bi], dtype=torch.float64)
        row = secant[r]
        if float(row[1]) > 0:
            pair = decay * row.double() + (1.0 - decay) * pair
        row.copy_(pair.to(row.dtype))
