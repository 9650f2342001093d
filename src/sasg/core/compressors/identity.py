"""``identity``: send ``v`` as it is (dense), :math:`C(v) = v`."""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.dense import DensePayload


class Identity:
    """The dense message ``v`` itself (dense SGD, LASG)."""

    name = "identity"
    default_memory = "none"
    honours_tensor_policy = True  # every tensor is sent whole anyway

    def __init__(self, layout: Layout):
        self.layout = layout

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> DensePayload:
        rows = range(v.shape[0]) if rows is None else rows
        if donate and len(rows) == v.shape[0] and list(rows) == list(range(v.shape[0])):
            return DensePayload(v, owned=True)  # the caller gave v away: no copy
        index = torch.as_tensor(list(rows), dtype=torch.long, device=v.device)
        return DensePayload(v.index_select(0, index), owned=True)

    def empty(self, n: int, device=None, dtype=torch.float32) -> DensePayload:
        return DensePayload(torch.zeros(n, self.layout.numel, device=device, dtype=dtype))

    def describe(self) -> dict:
        return {"compressor": self.name}
