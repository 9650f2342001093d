r"""``topk``: keep the largest magnitudes of every segment (the paper's per-layer top-k).

.. math:: C(v)_s = \text{the } k_s = \max(1, \lfloor h\,d_s \rfloor) \text{ entries of } v_s
          \text{ of largest } |v_i| \text{, the rest } 0

for every segment s (one parameter tensor) of ``d_s`` entries, density ``h``. Ties go to the lower
index (:mod:`sasg.core.selection`); a message's indices ascend within each segment and segments follow
the layout. The values are copies of ``v``'s, so error feedback may update ``v`` in place.

Under a tensor policy (:mod:`sasg.core.tensor_policy`) the tensors it names are kept whole,
:math:`k_s = d_s`, in the same message; the codec then writes no index for them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.sparse import SparsePayload
from ..tensor_policy import whole_segments
from ...kernels import topk as topk_kernel
from ..selection import topk_rows
from ..workspace import Workspace


def kept_per_segment(layout: Layout, density: float, policy: str = "all") -> list[int]:
    """k_s = max(1, floor(h * d_s)) for every segment s; d_s for those the tensor policy sends whole."""
    if not (0.0 < density <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be in (0, 1], got {density}")
    # The small epsilon keeps floor(h*d) exact when h*d is an integer that float rounding puts
    # just below it (e.g. 0.29 * 100 = 28.999999999999996).
    return [seg.numel if whole else max(1, min(seg.numel, math.floor(density * seg.numel + 1e-9)))
            for seg, whole in zip(layout.segments, whole_segments(layout, policy))]


class TopK:
    name = "topk"
    default_memory = "ef"
    honours_tensor_policy = True

    def __init__(self, layout: Layout, density: float, policy: str = "all"):
        self.layout = layout
        self.density = float(density)
        self.k_per_segment = kept_per_segment(layout, self.density, policy)
        self.whole = any(k == seg.numel and w for k, seg, w in
                         zip(self.k_per_segment, layout.segments, whole_segments(layout, policy)))
        self.nnz = sum(self.k_per_segment)
        self.workspace = Workspace()  # candidate buffers and sample positions, reused every round
        # the compiled path's per-segment constants and scratch (sasg.kernels.topk)
        self.plan = topk_kernel.SegmentPlan([s.offset for s in layout.segments], [s.end for s in layout.segments],
                                            self.k_per_segment)

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> SparsePayload:
        """Rows ``rows`` of ``v`` read where they lie, without a gathered copy of them."""
        if topk_kernel.supports(v):
            # One compiled call for every row and segment: no per-tensor fixed costs, one read of
            # v at memory speed (benchmarks/compress.py). The torch path below is the reference.
            idx, val = topk_kernel.select(v, rows, self.plan)
            return SparsePayload(idx, val, self.layout.numel)
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        everyone = rows == list(range(v.shape[0]))
        n = len(rows)
        indices = torch.empty(n, self.nnz, dtype=torch.long, device=v.device)
        values = torch.empty(n, self.nnz, dtype=v.dtype, device=v.device)
        col = 0
        for seg, k in zip(self.layout.segments, self.k_per_segment):
            idx, val = topk_rows(v[:, seg.offset : seg.end], k, None if everyone else rows, self.workspace)
            torch.add(idx, seg.offset, out=indices[:, col : col + k])
            values[:, col : col + k] = val
            col += k
        return SparsePayload(indices, values, self.layout.numel)

    def empty(self, n: int, device=None, dtype=torch.float32) -> SparsePayload:
        if not self.whole:
            return SparsePayload.zeros(n, self.nnz, self.layout.numel, device, dtype)
        # A codec that implies the whole tensors' indices reads every template as a message: the
        # first k_s indices of every tensor, values 0 (it still adds nothing).
        first = torch.cat([torch.arange(seg.offset, seg.offset + k, device=device)
                           for seg, k in zip(self.layout.segments, self.k_per_segment)])
        return SparsePayload(first.expand(n, -1).clone(), torch.zeros(n, self.nnz, dtype=dtype, device=device),
                             self.layout.numel)

    def describe(self) -> dict:
        return {"compressor": self.name, "density": self.density, "nnz_per_message": self.nnz}
