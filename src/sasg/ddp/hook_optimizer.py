"""The hook and the user's optimizer: what :class:`~sasg.ddp.HookState` does with it.

DGC's momentum correction under momentum SGD, Adam's second moment frozen after the warm-up
(:mod:`sasg.ddp.optimizers` says why), and the metric a lazy rule measures the parameters' real
steps in (the module docstring of :mod:`sasg.ddp.hook_state`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .. import validation
from ..core.capabilities import provided
from ..core.momentum import compressed_entries
from ..core.tensor_policy import whole_segments
from ..runtime import build_algorithm, engine_codec
from .clipping import GradientWatch
from .optimizers import (FrozenVariance, MomentumCorrection, adam_metric, groups_of, is_adam, is_momentum_sgd,
                         is_sharded)
from .rules import hook_algorithm

# How a lazy rule measures the parameters' real steps: "auto" (Adam's metric under Adam/AdamW,
# else Euclidean) or "euclidean" (||theta^{j+1} - theta^j||^2 whatever the optimizer).
STEP_METRICS = ("auto", "euclidean")


def lr_reader(lr) -> Callable[[], float] | None:
    """``lr`` as a function returning the current lr (``None`` stays ``None``)."""
    if lr is None:
        return None
    if isinstance(lr, torch.optim.Optimizer):
        return lambda: lr.param_groups[0]["lr"]
    if callable(lr):
        return lr
    value = lr_value(lr)
    return lambda: value


def lr_value(lr) -> float:
    """The optimizer's learning rate (a one-element tensor read out) as a checked float."""
    if isinstance(lr, Tensor) and lr.numel() == 1:
        lr = lr.item()
    return validation.lr(lr, fix="pass the optimizer's learning rate, e.g. lr=0.05 or lr=optimizer")


class OptimizerLink:
    """A mixin of :class:`~sasg.ddp.HookState`: its optimizer's side (``self.index``,
    ``self.engine``, ``self.group`` and ``self._choices``, the settings it was made with, are the
    state's; this sets ``self.spec``, ``self.codec`` and ``self.algorithm``)."""

    def use_optimizer(self, optimizer) -> "OptimizerLink":
        """Link the optimizer that steps the model after the state was made, as ``optimizer=``
        would have: for a framework that builds the optimizer after the hook's state (Lightning's
        ``configure_optimizers``: ``examples/lightning_ddp.py`` calls it when the fit starts).
        Call it on every rank before the first backward pass; returns the state."""
        if self.engine is not None:
            raise RuntimeError("use_optimizer: the hook has started already (its round engine exists): link the "
                               "optimizer before the first backward pass, or pass optimizer= when making the state")
        for linked in (self.variance, self._watch):
            if linked is not None:
                linked.remove()  # (the step hooks of the optimizer linked before)
        self._link(optimizer)
        return self

    def _require_lr(self) -> None:
        """A lazy rule needs the lr: a ValueError when the hook starts without one (not when the
        state is made: use_optimizer may still bring it)."""
        if self.algorithm.lazy and self._lr is None:
            raise ValueError(
                f"the lazy rule {self.spec.trigger!r} compares with a threshold made of the recent parameter "
                "steps, so the hook needs the learning rate: pass lr= (a number, a function returning the "
                "current lr, or the optimizer), or link the optimizer first (state.use_optimizer(opt))"
            )

    def _link(self, optimizer) -> None:
        """What the optimizer decides, made from the state's settings: the algorithm (under Adam a
        lazy rule's default aggregate differs), the lr a lazy rule reads, DGC's correction or
        Adam's frozen second moment, and what the round reads."""
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be the torch.optim.Optimizer that steps this model, got "
                             f"{type(optimizer).__name__}")
        c = self._choices
        self.spec = hook_algorithm(c["algo"], **c["knobs"], adam=optimizer is not None and is_adam(optimizer))
        self.codec = engine_codec(c["codec"], self.spec.name)
        self.algorithm = build_algorithm(self.spec, self.index.layout, self.codec)
        self._lr = lr_reader(c["lr"] if c["lr"] is not None else optimizer)
        self._join_optimizer(optimizer, c["momentum_correction"], c["freeze_variance"], c["step_metric"])
        # theta^k is copied out of the parameters each round only where someone reads it (a copy
        # of the whole model: 15 ms a round for ResNet-18 on one core). The engine never changes
        # it (the user's optimizer steps the parameters), so it is still theta^k when the next
        # round measures the real step.
        # `always` never looks at it; any other trigger (a plug-in too) may.
        self._needs_theta = self.spec.trigger != "always" or self.momentum is not None
        # The engine (the trigger and the memory: both only read them) and DGC's velocity get the
        # round's gradients where DDP keeps them, the buckets' views, unless something reads a
        # flat copy: Adam's second moment, the velocity at a second gradient's anchor (wk2 under
        # momentum). What it saves: one pass over the model's gradient a round, written and read
        # again (ResNet-18 on one core: about 4 ms).
        self._in_place = (self.variance is None and not self._coasts
                          and not (self.momentum is not None and self.algorithm.needs_stale_grads))

    def _join_optimizer(self, optimizer, momentum_correction: bool, freeze_variance: bool, step_metric: str) -> None:
        """The user's optimizer, where the hook must work with it (:mod:`sasg.ddp.optimizers`): DGC's
        momentum correction under momentum SGD, Adam's second moment frozen after the warm-up, and
        the metric a lazy rule measures the parameters' real steps in."""
        validation.flag(momentum_correction, "momentum_correction")
        validation.flag(freeze_variance, "freeze_variance")
        self.optimizer = optimizer
        self._compressed_round = False  # did the latest round compress (past the warm-up)?
        self.momentum = self.variance = None
        # A clipping call (or anything) that rewrites the hook's gradients before the step: a warning.
        self._watch = GradientWatch(optimizer, self.index) if optimizer is not None else None
        # Rounds nobody sends in (a lazy rule, aggregate "senders") hand Adam a zero gradient.
        self._coasts = (optimizer is not None and is_adam(optimizer) and self.algorithm.lazy
                        and self.spec.settings.aggregate == "senders")
        if optimizer is not None and momentum_correction and is_momentum_sgd(optimizer):
            compressed = compressed_entries(self.index.layout, self.spec.settings.tensor_policy, self.index.device)
            self.momentum = MomentumCorrection(optimizer, self.index, compressed)
        if optimizer is not None and freeze_variance and is_adam(optimizer):
            self.variance = FrozenVariance(optimizer, self.index, lambda: self._compressed_round,
                                           self.spec.settings.warmup, self._kept_fractions())
        step_metric = validation.choice(step_metric, "step_metric", STEP_METRICS,
                                        fix="how a lazy rule measures the parameters' steps, e.g. step_metric='auto'")
        # The real steps measured in the units of what the rule compares (module docstring): Adam's
        # metric under Adam; (1 - momentum) where momentum SGD's velocity steps meet a rule that
        # compares gradients (no DGC correction, or wk2, whose fresh and stale velocities differ by
        # a gradient difference); else Euclidean.
        self._metric_kind = None
        if step_metric == "auto" and optimizer is not None and self.algorithm.lazy:
            if is_adam(optimizer):
                if is_sharded(optimizer):
                    raise ValueError(
                        f"the lazy rule {self.spec.trigger!r} measures the parameters' steps in Adam's metric, read "
                        "from every parameter's Adam state, and under ZeroRedundancyOptimizer each rank holds only "
                        "its shard's: pass step_metric='euclidean' (the rule then skips more), or use always+topk")
                self._metric_kind = "adam"
            elif is_momentum_sgd(optimizer) and (self.momentum is None or self.algorithm.needs_stale_grads):
                self._metric_kind = "momentum"
        self._metric_groups = groups_of(optimizer, self.index.params) if self._metric_kind else None

    def _step_metric(self):
        """Per tensor, the weights the real step is measured with (None: plain Euclidean)."""
        if self._metric_kind == "adam":
            return adam_metric(self.optimizer, self.index.params, self._metric_groups)
        if self._metric_kind == "momentum":
            return [torch.tensor(1.0 - g["momentum"], dtype=torch.float64) for g in self._metric_groups]
        return None

    def _kept_fractions(self) -> list[float | None]:
        """Per tensor, the fraction of its entries a message keeps (None: sent whole)."""
        whole = whole_segments(self.index.layout, self.spec.settings.tensor_policy)
        ks = provided(self.algorithm.compressor, "k_per_segment")
        density = self.spec.settings.density
        return [None if w else (k / seg.numel if ks is not None else density)
                for seg, w, k in zip(self.index.layout.segments, whole, ks or [None] * len(whole))]

    def _average(self, t: Tensor) -> None:
        """``t`` <- the mean of every rank's ``t`` (one all-reduce on the hook's group)."""
        if self.engine.num_workers > 1:
            dist.all_reduce(t, group=self.group)
            t.div_(self.engine.num_workers)
