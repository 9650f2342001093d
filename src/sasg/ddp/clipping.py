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
(``benchmarks/ddp_accuracy.py --clip 1.0``, docs/ddp-hook.md): DDP clipped 51-87 % of the steps,
the hook's aggregate 98-100 %, and AdamW lost 3-4 points on two conv nets.

So the hook clips, before the round, where the gradients still exist: ``clip_grad_norm=tau``
(:class:`~sasg.ddp.HookState`, :func:`~sasg.ddp.register`) scales every rank's gradient by the
factor ``clip_grad_norm_`` would give the mean gradient under DDP,

.. math:: g_m \leftarrow g_m \min\Big(1, \frac{\tau}{\|\bar g\|_2 + 10^{-6}}\Big), \qquad
          \bar g = \tfrac{1}{M}\textstyle\sum_m g_m,

before anything else of the round reads them (the error memory, DGC's velocity, Adam's
second-moment estimate, a lazy rule's comparison; a ``wk2`` second gradient is scaled by the same
factor). So what enters the round is DDP's clipped mean gradient, spread over the ranks.

The mean gradient itself never exists in a sparse round, so its norm is estimated, the same on
every rank, from one all-reduce of a small packet (:class:`MeanNormClip`): each rank's exact
:math:`\|g_m\|^2` and a count sketch :math:`Sg_m` of ``SKETCH`` floats (the entries of each
``SKETCH``-long row of a tensor added into the buckets with the row's random sign, the same signs
on every rank). :math:`\|\sum_m g_m\|^2` is the sum of the exact squared norms plus the cross
terms :math:`\sum_{m\ne m'}\langle g_m, g_{m'}\rangle`, which the sketches estimate without bias
(:math:`\|\sum_m Sg_m\|^2 - \sum_m\|Sg_m\|^2`). On one rank there is nothing to estimate: the
factor is ``clip_grad_norm_``'s, bit for bit. Why not clip each rank's gradient by its own norm
(DGC clips locally, Lin et al., ICLR 2018): a rank's gradient is noisier than the mean of M, so
its norm is larger, and measured under momentum SGD that clipped too much (0.7-1.6 points below
DDP at threshold 1 on all four models; docs/results/ddp_accuracy_clip_per_rank.json), while
DGC's threshold :math:`\tau/\sqrt{M}` for sums (:math:`\tau\sqrt{M}` per rank in mean units) lets a
spike that every rank sees through at :math:`\sqrt{M}` times DDP's bound.

:class:`GradientWatch`: the job's own clipping call must go. Every ``CHECK_EVERY`` rounds the
hook notes each gradient's norm as it hands it over, and the optimizer's step checks them; a
gradient changed in between (a clipping call, or anything else that rewrote ``.grad``) gets one
warning that says what changed and what to do. Under ``find_unused_parameters=True`` the tensors
DDP left out of a round keep their old ``.grad`` and are not compared (:mod:`sasg.ddp.unused`).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .. import validation

SKETCH = 256  # buckets of the mean-norm sketch (its norm's RMS error: a few %, tests/test_clipping.py)
CHECK_EVERY = 16  # rounds between two checks of the handed-over gradients (a norm per tensor, twice)
TOLERANCE = 1e-3  # relative: a norm computed twice on the same values agrees to far better


def max_norm_of(value) -> float | None:
    """``clip_grad_norm`` checked: None (no clipping) or a positive finite number."""
    return validation.optional(validation.number, value, "clip_grad_norm", gt=0,
                               fix="the largest 2-norm of the mean gradient, as clip_grad_norm_'s max_norm, e.g. "
                                   "clip_grad_norm=1.0, or None for no clipping")


def scale_(blocks: Sequence[Tensor], max_norm: float, norm: Tensor) -> Tensor:
    """``blocks`` times ``min(1, max_norm / (norm + 1e-6))``, clip_grad_norm_'s factor; returns it."""
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    # (multiplied also where the factor is 1: exact, and no host sync on a GPU, as torch does)
    torch._foreach_mul_(list(blocks), factor.to(blocks[0].device))
    return factor


def sketch_signs(index, seed: int) -> list[tuple[Tensor, float]]:
    """Per tensor, the random signs of its rows of SKETCH entries (a tensor) and of its last,
    partial row (a float), the same on every rank (drawn from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for seg in index.layout.segments:
        signs = torch.randint(0, 2, (seg.numel // SKETCH + 1,), generator=gen).to(torch.float32).mul_(2).sub_(1)
        out.append((signs[:-1].to(index.device), float(signs[-1])))
    return out


def sketch(blocks: Sequence[Tensor], signs: list[tuple[Tensor, float]], sq_norm: Tensor) -> Tensor:
    """One rank's packet: the count sketch ``S g`` of its gradient (``blocks``; entry ``i`` of a
    tensor's row ``j`` goes to bucket ``i`` with the row's sign: one matrix-vector product a tensor,
    one read of the gradient), then ``||g||^2`` (``sq_norm``) and ``||S g||^2``."""
    packet = torch.zeros(SKETCH + 2, dtype=torch.float32, device=blocks[0].device)
    buckets = packet[:SKETCH]
    for block, (rows, tail_sign) in zip(blocks, signs):
        flat = block.reshape(-1)
        n = rows.numel() * SKETCH
        if n:
            buckets.addmv_(flat[:n].view(-1, SKETCH).t(), rows)
        if flat.numel() > n:
            buckets[: flat.numel() - n].add_(flat[n:], alpha=tail_sign)
    packet[SKETCH] = sq_norm
    packet[SKETCH + 1] = buckets.dot(buckets)
    return packet


def mean_norm(total: Tensor, world: int) -> Tensor:
    """The mean gradient's 2-norm from the sum of every rank's packet (:func:`sketch`):
    ``||sum_m g_m||^2 = sum_m ||g_m||^2 + sum_{m != m'} <g_m, g_m'>``, the first sum exact and the
    cross terms from the sketches (``||sum_m S g_m||^2 - sum_m ||S g_m||^2``; unbiased: the signs
    make every cross term of two entries in one bucket average out)."""
    cross = total[:SKETCH].dot(total[:SKETCH]) - total[SKETCH + 1]
    return (total[SKETCH] + cross).clamp(min=0).sqrt() / world


class MeanNormClip:
    """``clip_grad_norm``'s factor from the mean gradient's norm, the same on every rank (module
    docstring): one all-reduce of a ``SKETCH + 2``-float packet a round (none on one rank)."""

    def __init__(self, max_norm: float, index, seed: int):
        self.max_norm = max_norm
        self._signs = sketch_signs(index, seed)
        self.grad_norm: Tensor | None = None  # the latest round's estimate, before clipping
        self.factor: Tensor | None = None  # ... and the factor every rank's gradient was scaled by
        # Rounds whose factor was below 1, counted where the gradients are (no host sync a round)
        self.clipped = torch.zeros((), dtype=torch.int64, device=index.device)

    @torch.no_grad()
    def clip_(self, blocks: Sequence[Tensor], world: int, group=None, flag: Tensor | None = None) -> int:
        """Scale this rank's gradient (``blocks``) in place; returns the bytes each rank sent.
        ``flag``: a GradScaler's found-inf flag (sasg.ddp.loss_scale), which rides in the packet's
        last slot and comes back summed over the ranks (its own 4 bytes not counted here)."""
        norm = torch.nn.utils.get_total_norm(blocks, 2.0)
        if world == 1:  # the mean is this gradient: clip_grad_norm_'s own numbers
            self.grad_norm, sent = norm, 0
        else:
            packet = sketch(blocks, self._signs, norm.square())
            if flag is not None:
                packet = torch.cat([packet, flag.to(packet.device)])
            dist.all_reduce(packet, group=group)
            if flag is not None:
                flag.copy_(packet[SKETCH + 2 :])
            self.grad_norm, sent = mean_norm(packet, world), (SKETCH + 2) * packet.element_size()
        self.factor = scale_(blocks, self.max_norm, self.grad_norm)
        self.clipped += self.factor < 1
        return sent


class GradientWatch:
    """Warns once where the gradients the hook handed over changed before the optimizer's step
    (module docstring). ``optimizer``: the linked one; ``index``: the hook's parameters."""

    def __init__(self, optimizer, index):
        mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._numbers = [i for i, p in enumerate(index.params) if id(p) in mine]
        self._index = index
        self._expected: tuple[Tensor, float] | None = None
        self._left_out: set[int] = set()  # this round's tensors DDP left out (left_out)
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
        self._left_out = set()

    def left_out(self, numbers) -> None:
        """Tensors (the hook's numbers) whose gradient DDP did not hand over this round
        (``find_unused_parameters``: sasg.ddp.unused): they keep their old ``.grad``, not compared."""
        self._left_out = set(numbers)

    def before_step(self) -> None:
        expected, self._expected = self._expected, None
        if expected is None:
            return
        norms, scale = expected
        params = self._index.params
        had = [n for n, i in enumerate(self._numbers) if params[i].grad is not None and i not in self._left_out]
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
                "clip_grad_norm=<max_norm> to sasg.ddp.register (or HookState), which clips the gradients before "
                "they are compressed, by the mean gradient's norm as DDP's clipping does, and drop your own "
                "clipping call (under PyTorch Lightning: leave the Trainer's gradient_clip_val unset).")


__all__ = ["CHECK_EVERY", "SKETCH", "GradientWatch", "MeanNormClip", "max_norm_of", "mean_norm", "scale_", "sketch",
           "sketch_signs"]
