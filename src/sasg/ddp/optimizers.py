r"""The hook and the user's optimizer: DGC's momentum correction for SGD, a frozen second moment
for Adam.

The hook hands DDP an aggregate :math:`G` that the user's optimizer then treats as the gradient.
With plain SGD that is the whole story. Two optimizers need more, each for a reason the
compression literature found:

**Momentum SGD** (:class:`MomentumCorrection`; Lin et al., *Deep Gradient Compression*, ICLR
2018, §3.2). Error feedback delays an entry until it is large enough to be sent; momentum
applied *after* the exchange then smooths a stream of rare bursts instead of the gradient, and
the two fight. DGC accumulates the velocity locally and compresses that:

.. math:: u_m \leftarrow \mu u_m + g_m + \lambda\theta, \qquad
          v_m \leftarrow e_m + u_m / M, \quad q_m = C(v_m), \quad e_m \leftarrow v_m - q_m,
          \qquad \Delta = \textstyle\sum_m q_m

and steps :math:`\theta \leftarrow \theta - \eta\Delta` (with *factor masking*: :math:`u_m` is set
to 0 where :math:`q_m` was sent, so a sent entry's momentum does not carry stale velocity on).
Here the user's ``torch.optim.SGD(momentum=mu)`` makes the step, so the hook hands it

.. math:: G = \Delta - \mu b - \lambda\theta

(:math:`b` the optimizer's momentum buffer, :math:`\lambda` its weight decay): the optimizer adds
:math:`\lambda\theta` back and forms :math:`b \leftarrow \mu b + G + \lambda\theta = \Delta`, so its
step is exactly DGC's :math:`\eta\Delta`, with its own lr schedule. Masking applies to the
compressed tensors only: a tensor the tensor policy sends whole is sent every round, and
masking it would reset its velocity every round (no momentum at all); without masking its
update is exactly momentum SGD's.

**Adam and AdamW** (:class:`FrozenVariance`; Tang et al., *1-bit Adam*, ICML 2021). Adam divides
by the root of its second-moment estimate. An error-fed top-k aggregate is zero most rounds and
a burst of ~1/h rounds' worth when sent, so its mean square is ~1/h times the gradient's: the
estimate inflates and the effective step shrinks by ~sqrt(h) (10x at h = 1 %). 1-bit Adam runs
dense Adam for a warm-up, then freezes the second moment. A frozen estimate from a short warm-up
is too noisy (measured: 5 dense rounds, then a small CNN under AdamW diverged), and a long dense
warm-up costs what compression saves, so the hook estimates the second moment where it is free:
every rank keeps Adam's own EMA of the squares of its *local, dense* gradient (before
compression), and the ranks average those estimates by one all-reduce at the end of the warm-up
and again at doubling intervals (rounds W, 2W, 4W, ... for a warm-up of W rounds; bf16 on the
wire, counted). Between two averages the estimate :math:`\hat v_{frozen}` is frozen and shared by
all ranks. (A rank's gradient has M times the noise variance of the mean gradient, so the
estimate errs large: steps at most sqrt(M) smaller where noise dominates, never larger.) After
every step on a compressed round the hook replaces the update the optimizer made with the
frozen one:

.. math:: \theta \leftarrow \theta + \eta\,\hat m\Big(\frac{1}{\sqrt{\hat v_{used}}+\epsilon}
          - \frac{1}{\sqrt{\hat v_{frozen}}+\epsilon}\Big), \qquad
          v \leftarrow \hat v_{frozen}\,(1-\beta_2^t)

(:math:`\hat m`, :math:`\hat v` bias-corrected as torch's Adam does; decoupled weight decay is
untouched). Every rank holds the same optimizer state, so every rank makes the same correction
(under ``ZeroRedundancyOptimizer`` each rank holds its shard's and corrects its shard, before
ZeRO sends it to the others).
Two guards: tensors sent whole are left to Adam (their aggregate is not bursty), and the frozen
estimate never falls below ``GUARD`` x :math:`h_s` times Adam's own estimate on the aggregate
(``h_s = k_s / d_s``, the tensor's kept fraction: bursts of ~1/h_s rounds inflate that estimate
~1/h_s times, so :math:`h_s` times it is a rough estimate of the true one).
The second keeps an entry whose gradient was ~0 when the estimate was averaged (a dead ReLU that
wakes up later) from dividing by ~0: measured, LeNet-5 under AdamW diverged without it.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch
from torch import Tensor

from ..core.momentum import factor_mask_

# The frozen estimate's floor, as a fraction of h_s x Adam's own estimate on the aggregate: it
# catches an estimate off by more than 10x (an entry that was ~0 when averaged), not the usual
# spread (measured: 1.0 held small CNN AdamW runs back by ~1 point, none diverged either way).
GUARD = 0.1
# The averaged second moment travels as bf16: it sets a step size, 3 significant digits suffice.
VARIANCE_WIRE_DTYPE = torch.bfloat16


def groups_of(optimizer, params) -> list[dict]:
    """The optimizer's parameter group of every tensor in ``params`` (a ValueError for a tensor it
    does not train: the hook's state and the optimizer must cover the same parameters)."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in where]
    if missing:
        raise ValueError(f"the optimizer does not hold {len(missing)} of the model's trained parameters (e.g. "
                         f"number {missing[0]}); give sasg.ddp.register the optimizer that steps this model")
    return [where[id(p)] for p in params]


def local_optimizer(optimizer):
    """The optimizer that holds the state and steps: a ``ZeroRedundancyOptimizer``'s local one
    (each rank's shard of the parameters; its ``param_groups`` hold every parameter), or itself."""
    # Looked up, not imported: a ZeRO object means its module is loaded, and importing
    # torch.distributed.optim scripts a dozen functional optimizers (a second, and warnings).
    zero = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    return optimizer.optim if zero is not None and isinstance(optimizer, zero.ZeroRedundancyOptimizer) else optimizer


def is_sharded(optimizer) -> bool:
    return local_optimizer(optimizer) is not optimizer


def is_momentum_sgd(optimizer) -> bool:
    return (isinstance(local_optimizer(optimizer), torch.optim.SGD)
            and any(g.get("momentum", 0) for g in optimizer.param_groups))


def is_adam(optimizer) -> bool:
    return isinstance(local_optimizer(optimizer), (torch.optim.Adam, torch.optim.AdamW))


def adam_metric(optimizer, params, groups) -> list[Tensor | None]:
    """Per tensor of ``params`` (``groups``: the optimizer's group of each), the root of Adam's
    bias-corrected second moment plus eps, or None before its first step: Adam's step divided by
    the lr, times this, is back in gradient units (the lazy rules' threshold measures steps in it)."""
    out = []
    for p, g in zip(params, groups):
        s = local_optimizer(optimizer).state.get(p) or {}
        if "exp_avg_sq" not in s:
            out.append(None)
            continue
        bc2 = 1 - g["betas"][1] ** float(s["step"])
        out.append((s["exp_avg_sq"] / bc2).sqrt() + g["eps"])
    return out


class MomentumCorrection:
    """DGC's momentum correction between the hook and a ``torch.optim.SGD`` (module docstring).

    ``masking``: DGC's momentum factor masking on the compressed tensors."""

    def __init__(self, optimizer, index, compressed: Tensor, masking: bool = True):
        for g in optimizer.param_groups:
            if g.get("nesterov") or g.get("dampening", 0) or g.get("maximize"):
                raise ValueError(
                    "momentum correction needs torch.optim.SGD without nesterov, dampening or maximize (the "
                    "hook inverts its momentum step); pass momentum_correction=False to compress the gradient instead"
                )
        self.optimizer, self.index, self.masking = optimizer, index, bool(masking)
        # (read .state each time: load_state_dict replaces it; under ZeRO this rank's shard's, the
        # only parameters whose .grad its step reads)
        self._local = local_optimizer(optimizer)
        self.groups = groups_of(optimizer, index.params)
        self.velocity = torch.zeros(index.numel, device=index.device, dtype=torch.float32)
        self._compressed = compressed  # (d,) bool: the entries factor masking may clear

    def accumulate(self, grads, theta: Tensor, tensors: Sequence[int] | None = None) -> Tensor:
        """``u <- mu u + g + lambda theta`` in place, for every tensor or the numbered ``tensors``
        (a round made part by part); returns ``u`` (what the round compresses). ``grads``: the
        flat gradient (layout order), or tensor ``i``'s ``(1, d_s)`` block at ``grads[i]`` (the
        buckets' own views)."""
        u = self.velocity
        segments, groups = self.index.layout.segments, self.groups
        flat = isinstance(grads, Tensor)
        for i in (range(len(segments)) if tensors is None else tensors):
            seg, g = segments[i], groups[i]
            s = slice(seg.offset, seg.end)
            u[s].mul_(g["momentum"]).add_(grads[s] if flat else grads[i][0])
            if g["weight_decay"]:
                u[s].add_(theta[s], alpha=g["weight_decay"])
        return u

    def stale_velocity(self, grads: Tensor, stale: Tensor, theta: Tensor, anchor: Tensor) -> Tensor:
        """What ``u`` would be had this round's gradient been taken at the anchor (for ``wk2``, which
        then compares velocities): ``u - g + g_hat - lambda (theta - anchor)``, in a new tensor."""
        out = self.velocity - grads + stale
        for seg, g in zip(self.index.layout.segments, self.groups):
            if g["weight_decay"]:
                s = slice(seg.offset, seg.end)
                out[s].sub_(theta[s] - anchor[s], alpha=g["weight_decay"])
        return out

    def mask(self, last, rank: int, uploaded: bool) -> None:
        """Factor masking: zero the velocity where this rank's message (``last[rank]``) sent."""
        if self.masking and uploaded:
            factor_mask_(self.velocity, last, rank, self._compressed)

    def to_gradient(self, delta: Tensor, out: Tensor) -> Tensor:
        """``G = Delta - mu b - lambda theta`` into ``out``: what makes the optimizer step by Delta
        (theta read from the parameters themselves, which the optimizer has not stepped yet)."""
        out.copy_(delta)
        for seg, p, g in zip(self.index.layout.segments, self.index.params, self.groups):
            s = slice(seg.offset, seg.end)
            buf = self._local.state.get(p, {}).get("momentum_buffer")
            if buf is not None and g["momentum"]:
                out[s].sub_(buf.detach().reshape(-1).to(out.dtype), alpha=g["momentum"])
            if g["weight_decay"]:
                out[s].sub_(p.detach().reshape(-1).to(out.dtype), alpha=g["weight_decay"])
        return out


class FrozenVariance:
    """1-bit Adam's frozen second moment for a ``torch.optim.Adam``/``AdamW`` (module docstring).

    Installs a step post-hook on the optimizer; ``compressed()`` tells it whether the gradient of
    the step that just ran came from a compressed round (else it is a warm-up round, and the
    optimizer's own estimate is kept as the one to freeze)."""

    def __init__(self, optimizer, index, compressed, warmup: int, kept: list[float | None]):
        for g in optimizer.param_groups:
            if g.get("amsgrad") or g.get("maximize"):
                raise ValueError("the frozen second moment needs Adam/AdamW without amsgrad or maximize; pass "
                                 "freeze_variance=False to let the optimizer see the compressed aggregate as it is")
        self.optimizer, self.index, self._compressed = optimizer, index, compressed
        self.groups = groups_of(optimizer, index.params)
        self.first_sync = max(1, int(warmup))
        self.local = torch.zeros(index.numel, device=index.device, dtype=torch.float32)  # EMA of g_m^2
        self._b2 = torch.empty(index.numel, device=index.device, dtype=torch.float32)
        self.seen = 0  # rounds in the local EMA
        self.frozen: list[Tensor] | None = None
        # per tensor: its kept fraction k_s / d_s, or None for a tensor sent whole (left to Adam)
        self.kept = list(kept)
        # Adam's own estimate on the aggregate, kept here (the optimizer's is overwritten each step)
        self.aggregate = [torch.zeros_like(p, dtype=torch.float32) for p in index.params]
        # On the optimizer that steps: a ZeroRedundancyOptimizer's local one, so that the correction
        # is made on this rank's shard before ZeRO sends the shard's parameters to the other ranks.
        self._local = local_optimizer(optimizer)
        self._handle = self._local.register_step_post_hook(lambda opt, args, kwargs: self.after_step())

    def _beta2(self) -> Tensor:
        """Every entry's beta2, read from its group now (a scheduler may change the betas)."""
        for seg, g in zip(self.index.layout.segments, self.groups):
            self._b2[seg.offset : seg.end] = g["betas"][1]
        return self._b2

    def sync_due(self) -> bool:
        """Is this round (the ``seen``-th) one of W, 2W, 4W, ...?"""
        n = self.seen // self.first_sync
        return self.seen % self.first_sync == 0 and n >= 1 and n & (n - 1) == 0

    def observe(self, grads: Tensor, average) -> int:
        """This rank's dense gradient of the round into the local EMA; on a sync round, the ranks'
        bias-corrected estimates averaged (``average(tensor)``: an all-reduce mean, in place) and
        frozen. Returns the bytes this rank sent for it (0 on other rounds)."""
        b2 = self._beta2()
        self.local.mul_(b2).addcmul_(grads * (1 - b2), grads)  # Adam's own EMA, of this rank's g
        self.seen += 1
        if not self.sync_due():
            return 0
        estimate = (self.local / (1 - b2 ** self.seen)).to(VARIANCE_WIRE_DTYPE)
        average(estimate)
        flat = estimate.to(torch.float32)
        self.frozen = [flat[seg.offset : seg.end].view(p.shape).to(p.dtype)
                       for seg, p in zip(self.index.layout.segments, self.index.params)]
        return estimate.numel() * estimate.element_size()

    def remove(self) -> None:
        self._handle.remove()

    @torch.no_grad()
    def after_step(self) -> None:
        params = self.index.params
        states = [self._local.state.get(p) for p in params]
        if all(s is None or "exp_avg_sq" not in s for s in states):
            return  # no step taken yet
        found_inf = getattr(self.optimizer, "found_inf", None)
        if found_inf is not None and bool(found_inf):
            # A GradScaler steps a fused Adam even when a gradient overflowed, handing it the flag:
            # the kernel then changes nothing, so neither may this (its NaN gradients would poison
            # the estimate on the aggregate for good). Unfused, the scaler does not call step at all.
            return
        for p, g, a in zip(params, self.groups, self.aggregate):
            if p.grad is not None:
                a.mul_(g["betas"][1]).addcmul_(p.grad.float() * (1 - g["betas"][1]), p.grad.float())
        if not self._compressed() or self.frozen is None:
            return  # a dense round: the optimizer's own estimate is the true one
        for p, s, g, vf, h, a in zip(params, states, self.groups, self.frozen, self.kept, self.aggregate):
            if h is None:
                continue  # sent whole every round: Adam's own estimate is right
            if p.grad is None or s is None or "exp_avg_sq" not in s:
                # Adam skipped it this step (no rank used it: DDP left its .grad None) or has never
                # stepped it: there is no step of Adam's to redo, and its moments must stay as they are.
                continue
            beta1, beta2 = g["betas"]
            t = float(s["step"])
            bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
            v = torch.maximum(vf, (a * (GUARD * h / bc2)).to(vf.dtype))
            m_hat = s["exp_avg"] / bc1
            used = m_hat / ((s["exp_avg_sq"] / bc2).sqrt() + g["eps"])
            want = m_hat / (v.sqrt() + g["eps"])
            p.add_(used - want, alpha=g["lr"])
            s["exp_avg_sq"].copy_(v * bc2)

    def state_dict(self) -> dict:
        return {"frozen": None if self.frozen is None else [v.clone() for v in self.frozen],
                "local_variance": self.local.clone(), "local_rounds": self.seen,
                "aggregate_variance": [a.clone() for a in self.aggregate]}

    def load_state_dict(self, state: dict) -> None:
        frozen = state.get("frozen")
        self.frozen = None if frozen is None else [v.clone() for v in frozen]
        self.local.copy_(state["local_variance"])
        self.seen = int(state["local_rounds"])
        for a, saved in zip(self.aggregate, state["aggregate_variance"]):
            a.copy_(saved)
