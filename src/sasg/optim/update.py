"""The functional core of ``sasg.optim.SASG``'s update: heavy-ball momentum, dampening, Nesterov and
(coupled or decoupled) weight decay on the round's aggregated step."""

from __future__ import annotations

from torch import Tensor

def sasg_update(theta: Tensor, step: Tensor, buf: Tensor | None, *, lr: float, momentum: float,
                dampening: float, weight_decay: float, nesterov: bool, decoupled_weight_decay: bool,
                ) -> Tensor | None:
    r"""The parameter update on the aggregated step (the functional core of :class:`SASG`).

    ``theta`` (:math:`\theta^k`, flat) is updated in place to :math:`\theta^{k+1}`; ``step`` is
    :math:`s^k = \sum_m q_m` (the round's aggregate, lr already inside); ``buf`` the momentum
    buffer :math:`b^{k-1}` (``None`` before the first step with momentum), updated in place.
    Returns the buffer (``None`` while momentum is 0). With every hyperparameter 0 this is
    ``theta.sub_(step)``, the round engine's own update."""
    u = step
    decay = lr * weight_decay
    if weight_decay != 0 and not decoupled_weight_decay:
        u = step.add(theta, alpha=decay)
    if momentum != 0:
        if buf is None:
            buf = u.clone()
        else:
            buf.mul_(momentum).add_(u, alpha=1 - dampening)
        u = u.add(buf, alpha=momentum) if nesterov else buf
    if weight_decay != 0 and decoupled_weight_decay:
        theta.mul_(1 - decay)
    theta.sub_(u)
    return buf
