r"""The minibatch noise the rules without a second gradient must allow for, estimated inside the rule.

Why. ``wk1`` compares the fresh stochastic gradient :math:`g_m^k = \nabla\ell(\theta^k;\xi_m^k)`
with the one it uploaded last, :math:`\hat g_m = \nabla\ell(\hat\theta_m;\hat\xi_m)`, on another
minibatch. With :math:`s_m^2(\theta) = E\|\nabla\ell(\theta;\xi) - \nabla f_m(\theta)\|^2` the
variance of one of worker m's minibatch gradients (the trace of its covariance, :math:`\sigma^2/B`
for B samples of variance :math:`\sigma^2`), and independent minibatches,

.. math:: E\|g_m^k - \hat g_m\|^2 = \|\nabla f_m(\theta^k) - \nabla f_m(\hat\theta_m)\|^2
          + s_m^2(\theta^k) + s_m^2(\hat\theta_m) \approx \|\nabla f_m(\theta^k) - \nabla f_m(\hat\theta_m)\|^2 + 2 s_m^2 .

The first term is what a lazy rule means to measure (how far m's gradient moved since it last
spoke); the second never shrinks, while the threshold does, so a rule that compares the raw
difference uploads every round once the steps are small. Subtracting :math:`2\hat s_m^2` gives an
estimate of the first term alone: that is the allowance the noise-aware rules add.

The estimate. Every runner hands the rule the fresh gradients of the workers it holds, every
round (the simulator its M rows, a distributed rank its own, the optimizer and the DDP hook the
gradient of the step), and nothing else: no second gradient, no split minibatch. So the rule
keeps, per worker, the previous round's fresh gradient (``prev_grad``) and a running average of
half the squared change between consecutive rounds' gradients (``noise``, one number):

.. math:: \hat s_m^2 \leftarrow \beta\,\hat s_m^2 + (1-\beta)\,\tfrac12\|g_m^k - g_m^{k-1}\|^2,
          \qquad \beta = 0.9,

started at its first value (round 1; round 0 has no previous gradient). Consecutive gradients are
on independent minibatches one step apart, so :math:`E\,\tfrac12\|g_m^k-g_m^{k-1}\|^2 = s_m^2 +
\tfrac12\|\nabla f_m(\theta^k)-\nabla f_m(\theta^{k-1})\|^2`: the one-step drift makes the estimate
a little high (the rule then skips a little more where the gradient moves fast; the staleness
bound still caps every skip run at D). Why consecutive rounds rather than the pair the rule
compares: the compared pair holds the very drift the rule tests for, consecutive rounds hold as
little of it as any pair can. Why an average over rounds: one squared difference of two
minibatch gradients fluctuates by tens of per cent; ``beta = 0.9`` averages about 19 rounds
(variance factor :math:`(1-\beta)/(1+\beta)`) and still follows the noise as the loss falls over
an epoch. A round decides with the estimate of the rounds before it and then folds its own pair
in, so the allowance is never made of the difference it judges.

Cost: one ``(N, d)`` buffer (``prev_grad``) rewritten every round and one pass over a d-vector
per worker per round; both are saved in checkpoints with the rest of the worker state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rows import distance_to_rows, store_rows

# (N, d) previous fresh gradient and (N, 1) running noise estimate: a noise-aware rule lists these
# among its worker_buffers.
NOISE_BUFFERS = ("prev_grad", ("noise", 1))
NOISE_DECAY = 0.9  # beta of the running average


def noise_allowance(workers, rows: Tensor) -> Tensor:
    """:math:`2\\hat s_m^2` for the workers ``rows``, float64: what two independent minibatch
    gradients differ by on average when the gradient itself has not moved."""
    return 2.0 * workers.buffer("noise")[rows, 0].double()


def track_noise(rnd, work: Tensor, decay: float = NOISE_DECAY) -> None:
    """Fold this round's consecutive-gradient pair into every held worker's noise estimate and keep
    the fresh gradients for the next round. Call it after the decision (see the module)."""
    prev = rnd.workers.buffer("prev_grad")
    noise = rnd.workers.buffer("noise")[:, 0]
    n = prev.shape[0]
    if not n:
        return
    everyone = torch.arange(n)
    if rnd.iteration > 0:
        half = distance_to_rows(rnd.grads, prev, everyone, work).mul_(0.5).to(noise.dtype)
        if rnd.iteration == 1:
            noise.copy_(half)
        else:
            noise.mul_(decay).add_(half, alpha=1.0 - decay)
    store_rows(prev, rnd.grads, everyone)
