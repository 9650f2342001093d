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
from .optimizers import (FrozenVariance, MomentumCorrection, adam_metric, groups_of, is_adam, is_momentum_sgd,
                         is_sharded)

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
    ``self.spec``, ``self.algorithm``, ``self.engine``, ``self.group`` are the state's)."""

    def _join_optimizer(self, optimizer, momentum_correction: bool, freeze_variance: bool, step_metric: str) -> None:
        """The user's optimizer, where the hook must work with it (:mod:`sasg.ddp.optimizers`): DGC's
        momentum correction under momentum SGD, Adam's second moment frozen after the warm-up, and
        the metric a lazy rule measures the parameters' real steps in."""
        validation.flag(momentum_correction, "momentum_correction")
        validation.flag(freeze_variance, "freeze_variance")
        self.optimizer = optimizer
        self._compressed_round = False  # did the latest round compress (past the warm-up)?
        self.momentum = self.variance = None
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
