r"""Gradient clipping in a job with the sasg hook: where it has to happen, and a watch on where it
must not.

Under plain DDP, ``torch.nn.utils.clip_grad_norm_`` between ``loss.backward()`` and
``optimizer.step()`` clips the mean gradient. With the sasg hook, what the optimizer holds at that
point is the hook's aggregate, and that is not the mean gradient: error feedback sends an entry
in a burst of ~1/h rounds' worth once it is large enough, so the aggregate's norm is several times
the gradient's, and under DGC's momentum correction it also cancels the optimizer's old momentum
(:mod:`sasg.ddp.optimizers`). Clipping it clips far more often than under DDP, and under
Adam/AdamW it shrinks every step, since the frozen second moment is in the gradient's units. A
user's ``clip_grad_norm_(params, 1.0)`` with the hook at its defaults, measured
(``benchmarks/ddp_accuracy.py --clip 1.0``, docs/ddp-hook.md): DDP clipped 70-80 % of the steps,
the hook 97-100 %, and AdamW lost up to 9 points.

So the hook clips, where the gradient still exists: ``clip_grad_norm=max_norm``
(:class:`~sasg.ddp.HookState`, :func:`~sasg.ddp.register`) clips each rank's own gradient as
``clip_grad_norm_`` clips, before anything else of the round reads it (the error memory, DGC's
velocity, Adam's second-moment estimate, a lazy rule's comparison; a ``wk2`` second gradient is
clipped by its own norm):

.. math:: g_m \leftarrow g_m \min\Big(1, \frac{\tau}{\|g_m\|_2 + 10^{-6}}\Big)

Per rank, because the mean gradient never exists in a sparse round (DGC clips locally too, Lin et
al., ICLR 2018). The mean of the clipped gradients then has norm at most :math:`\tau`, the bound
DDP's clipped mean has. A rank's gradient is noisier than the mean of M of them, so where the
noise dominates the hook clips somewhat more often than DDP; DGC's threshold
:math:`\tau M^{-1/2}` (for a sum of gradients) would clip less there, but would let a spike
every rank sees through at up to :math:`\sqrt{M}` times DDP's bound.

:class:`GradientWatch`: the job's own clipping call must go. Every ``CHECK_EVERY`` rounds the
hook notes each gradient's norm as it hands it over, and the optimizer's step checks them; a
gradient changed in between (a clipping call, or anything else that rewrote ``.grad``) gets one
warning that says what changed and what to do.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

from .. import validation

CHECK_EVERY = 16  # rounds between two checks of the handed-over gradients (a norm per tensor, twice)
TOLERANCE = 1e-3  # relative: a norm computed twice on the same values agrees to far better


def max_norm_of(value) -> float | None:
    """``clip_grad_norm`` checked: None (no clipping) or a positive finite number."""
    return validation.optional(validation.number, value, "clip_grad_norm", gt=0,
                               fix="the largest 2-norm a rank's gradient may have, e.g. clip_grad_norm=1.0, "
                                   "or None for no clipping")


def clip_(blocks: Sequence[Tensor], max_norm: float) -> Tensor:
    """Scale ``blocks`` (one rank's gradient, a tensor each, fp32) in place to a 2-norm of at
    most ``max_norm``, with the ops ``torch.nn.utils.clip_grad_norm_`` uses (so the same numbers);
    returns the norm before."""
    total = torch.nn.utils.get_total_norm(blocks, 2.0)
    # (multiplied also where the factor is 1: exact, and no host sync on a GPU, as torch does)
    torch._foreach_mul_(list(blocks), torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


class GradientWatch:
    """Warns once where the gradients the hook handed over changed before the optimizer's step
    (module docstring). ``optimizer``: the linked one; ``index``: the hook's parameters."""

    def __init__(self, optimizer, index):
        mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._numbers = [i for i, p in enumerate(index.params) if id(p) in mine]
        self._index = index
        self._expected: tuple[Tensor, float] | None = None
        self.warned = False
        self._handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_step())

    def remove(self) -> None:
        self._handle.remove()

    def after_round(self, buckets, rounds: int, scale: float = 1.0) -> None:
        """The round's gradients are in ``buckets`` as DDP will hand them to the parameters (times
        a GradScaler's ``scale``, which ``scaler.step`` divides out before the step)."""
        if self.warned or rounds % CHECK_EVERY or not self._numbers:
            return
        views = self._index.round_gradients(buckets)
        self._expected = (torch.stack(torch._foreach_norm([views[i] for i in self._numbers])).float(), scale)

    def before_step(self) -> None:
        expected, self._expected = self._expected, None
        if expected is None:
            return
        norms, scale = expected
        params = self._index.params
        had = [n for n, i in enumerate(self._numbers) if params[i].grad is not None]
        if not had:
            return
        got = torch.stack(torch._foreach_norm([params[self._numbers[n]].grad for n in had])).float()
        want = norms[had] / scale
        ok = torch.isfinite(want) & (want > 0)
        ratio = torch.where(ok, got / torch.where(ok, want, 1.0), 1.0)
        if bool(((ratio - 1).abs() > TOLERANCE).any()):
            self.warned = True
            warnings.warn(self._message(ratio, want, got, had), stacklevel=4)  # (the step call)

    def _message(self, ratio: Tensor, want: Tensor, got: Tensor, had: list[int]) -> str:
        worst = int((ratio - 1).abs().argmax())
        name = self._index.layout.segments[self._numbers[had[worst]]].name
        lo, hi = float(ratio.min()), float(ratio.max())
        what = (f"every parameter's gradient scaled by {lo:.3g}, as torch.nn.utils.clip_grad_norm_ does"
                if hi - lo <= TOLERANCE * hi else
                f"{name!r}: norm {float(want[worst]):.4g} handed over, {float(got[worst]):.4g} at the step")
        return (f"the sasg hook's gradients changed between the hook and optimizer.step() ({what}). The hook "
                "hands the optimizer its aggregate, not the mean gradient: error feedback sends in bursts, so its "
                "norm is several times the gradient's, and clipping it clips far more often than under DDP and, "
                "under Adam/AdamW, shrinks every step (docs/ddp-hook.md, 'Gradient clipping'). To clip, pass "
                "clip_grad_norm=<max_norm> to sasg.ddp.register (or HookState), which clips each rank's "
                "gradient before it is compressed, and drop your own clipping call.")


__all__ = ["CHECK_EVERY", "GradientWatch", "clip_", "max_norm_of"]
