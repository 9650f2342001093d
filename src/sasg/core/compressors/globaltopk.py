r"""``globaltopk``: one top-k over the whole model instead of one per tensor (the model-wide
selection of Shi et al., "A Distributed Synchronous SGD Algorithm with Global Top-k Sparsification
for Low Bandwidth Networks", arXiv 1901.04359, applied to each worker's own vector: their gTop-k
also selects across workers when aggregating, which the server here does not).

.. math:: C(v) = \text{the } K = \sum_s k_s \text{ entries of } v \text{ of largest } |v_i|
          \text{ over all } d \text{ entries, the rest } 0, \qquad k_s = \max(1, \lfloor h\,d_s \rfloor)

so a message keeps as many entries as ``topk``'s, but a tensor with large entries may take more
than its ``k_s`` and another none at all. Ties go to the lower index (:mod:`sasg.core.selection`), so
the message is a pure function of ``v``. Indices ascend over the whole row, hence within each
tensor, tensors in layout order: the per-tensor counts ``c_s`` vary from message to message
(``sum_s c_s = K`` always), and every codec takes them from the indices (``rice``/``auto`` write
them in their header, ``int8``/``sign`` values group by them; an empty tensor costs no value).
The values are copies of ``v``'s (error feedback, the default memory, may update ``v`` in place).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.sparse import SparsePayload
from ..selection import topk_rows
from ..workspace import Workspace
from .topk import kept_per_segment


class GlobalTopK:
    name = "globaltopk"
    default_memory = "ef"

    def __init__(self, layout: Layout, density: float):
        self.layout = layout
        self.density = float(density)
        self.nnz = sum(kept_per_segment(layout, self.density))  # K: as many as topk keeps
        self.workspace = Workspace()

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> SparsePayload:
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        if not rows:
            return self.empty(0, v.device, v.dtype)
        everyone = rows == list(range(v.shape[0]))
        indices, values = topk_rows(v, self.nnz, None if everyone else rows, self.workspace)  # fresh tensors
        return SparsePayload(indices, values, self.layout.numel)

    def empty(self, n: int, device=None, dtype=torch.float32) -> SparsePayload:
        return SparsePayload.zeros(n, self.nnz, self.layout.numel, device, dtype)

    def describe(self) -> dict:
        return {"compressor": self.name, "density": self.density, "nnz_per_message": self.nnz}
