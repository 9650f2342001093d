"""``sasg.optim.SASG``'s learning rates: each parameter group's update hyperparameters read every
step (a scheduler may change them), the one lr a lazy rule's threshold divides by (refused where
groups differ), per-entry lr scales where they may differ, and the lagged lr of
``threshold_lr_lag``. A mixin of :class:`sasg.optim.SASG`."""

from __future__ import annotations

import torch
from torch import Tensor

from .param_groups import _bad_value, _check_update


class LearningRates:
    """The lr handling of :class:`sasg.optim.SASG` (``param_groups``, ``_spans``, ``_lrs``, ``_lag``)."""

    def _threshold_lr(self, lr: float) -> float:
        """The lr the lazy threshold divides by at this step k: ``lr`` itself, or (``threshold_lr_lag``
        L > 0) the lr of step ``max(0, k - L)``, from the changes of the lr kept since then."""
        if not self._lag:
            return lr
        k, lrs = self.engine.iteration, self._lrs
        if not lrs or lrs[-1][1] != lr:
            lrs.append((k, lr))
        while len(lrs) > 1 and lrs[1][0] <= k - self._lag:
            lrs.popleft()  # the lr of step k - L is the last change at or before it
        return lrs[0][1]

    def _group_updates(self) -> list[tuple]:
        """:func:`_check_update` of every group; with several, an error names the group."""
        if len(self.param_groups) == 1:
            return [_check_update(self.param_groups[0])]
        out = []
        for i, group in enumerate(self.param_groups):
            try:
                out.append(_check_update(group))
            except ValueError as e:
                raise _bad_value(getattr(e, "key", ""), f"parameter group {i}: {e}") from None
        return out

    def _one_lr(self, lrs: list[float]) -> float | None:
        """The lr of every group, or None where groups differ and the algorithm can take that.

        A lazy rule cannot: its threshold Σ‖θ^{j+1} − θ^j‖² / (c·M·η) divides by one lr, and
        groups with their own lrs have none (the step of each part moves with its own lr)."""
        if all(lr == lrs[0] for lr in lrs):
            return lrs[0]
        if self.algorithm.lazy:
            raise ValueError(
                f"SASG's lazy rule ({self.spec.trigger}) divides its threshold by one lr "
                f"(sum of |theta^(j+1) - theta^j|^2 / (c * M * lr)), but the parameter groups have lrs "
                f"{', '.join(f'{lr:g}' for lr in lrs)}; give every group the same lr (per-group "
                "weight_decay, momentum, dampening and nesterov work with any algorithm), or use a "
                "trigger that reads no lr, e.g. algorithm='sparse' (always+topk) or 'sgd'"
            )
        return None

    def _lr_scale(self, lrs: list[float]) -> Tensor:
        """Per entry of the flat vector: its group's lr / the largest lr."""
        top = max(lrs)
        scale = torch.empty(self._spans[-1][1], device=self._plist[0].device, dtype=self._plist[0].dtype)
        for (a, b), lr in zip(self._spans, lrs):
            scale[a:b] = lr / top
        return scale
