r"""Indices a codec need not write: those of the tensors a tensor policy sends whole.

A tensor the policy names (:mod:`sasg.core.tensor_policy`) is in every sparse message with all of
its ``d_s`` entries, so its indices are known to every receiver in advance: a codec built with
such a policy writes only the other indices and the values of all entries, and the receiver puts
the implied indices back. The values keep their places (the message's order), so a per-tensor
value format (``int8``, ``sign``) scales a whole tensor as it scales any other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels import implied as kernel
from ..layout import Layout
from ..tensor_policy import whole_segments
from .bitstream import on_kernels


class ImpliedIndices:
    """The whole tensors of a layout and the index bookkeeping around them."""

    def __init__(self, layout: Layout, whole: list[bool]):
        self.layout = layout
        self.whole = list(whole)
        self.count = sum(seg.numel for seg, w in zip(layout.segments, whole) if w)
        self._tables: dict = {}

    @classmethod
    def for_settings(cls, layout: Layout, settings) -> "ImpliedIndices | None":
        """The whole tensors under ``settings.tensor_policy``, or None when there are none (then a
        codec writes what it always wrote)."""
        policy = getattr(settings, "tensor_policy", "all") if settings is not None else "all"
        whole = whole_segments(layout, policy)
        return cls(layout, whole) if any(whole) else None

    def _on(self, device) -> dict:
        device = torch.device(device)
        t = self._tables.get(device)
        if t is None:
            mask = torch.zeros(self.layout.numel, dtype=torch.bool, device=device)
            for seg, w in zip(self.layout.segments, self.whole):
                if w:
                    mask[seg.offset : seg.end] = True
            counts = torch.tensor([seg.numel if w else 0 for seg, w in zip(self.layout.segments, self.whole)],
                                  dtype=torch.long, device=device)
            t = self._tables[device] = {"mask": mask, "implied": mask.nonzero().squeeze(1), "counts": counts}
        return t

    def split(self, indices: Tensor, who: str) -> Tensor:
        """``(N, K)`` ascending indices -> the ``(N, K - count)`` a codec writes; a ``ValueError``
        when a message does not hold every entry of the whole tensors."""
        N, K = indices.shape
        if on_kernels(indices) and indices.dtype == torch.long and K >= self.count:
            # One compiled pass (sasg.kernels.implied); on any error the reference below raises.
            out = torch.empty(N, K - self.count, dtype=torch.long)
            tables = self._on(indices.device)
            if kernel.split_rows(indices.contiguous().numpy(), tables["mask"].numpy(), out.numpy()) == kernel.OK:
                return out
        implied = self._on(indices.device)["mask"][indices]
        per = implied.sum(1)
        if bool((per != self.count).any()):
            raise ValueError(f"{who}: a message does not hold every entry of the tensors the tensor policy sends "
                             f"whole ({int(per.min())} of {self.count}); the compressor must keep them all")
        return indices[~implied].view(N, K - self.count)

    def merge(self, kept: Tensor) -> Tensor:
        """The written ``(N, K - count)`` indices -> all ``(N, K)``, ascending."""
        N = kept.shape[0]
        if on_kernels(kept):  # one ordered merge instead of a sort (sasg.kernels.implied)
            kept = kept.to(torch.long).contiguous()
            out = torch.empty(N, kept.shape[1] + self.count, dtype=torch.long)
            kernel.merge_rows(kept.numpy(), self._on(kept.device)["implied"].numpy(), out.numpy())
            return out
        implied = self._on(kept.device)["implied"].expand(N, self.count)
        return torch.cat([kept.to(torch.long), implied], dim=1).sort(dim=1).values

    def counts(self, device) -> Tensor:
        """``(S,)``: entries every message holds in each tensor on top of the written ones."""
        return self._on(device)["counts"]
