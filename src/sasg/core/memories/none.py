r"""``none``: no memory. What the compressor drops is lost: :math:`q_m = C(s\,g)`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class NoMemory:
    name = "none"
    worker_buffers: tuple[str, ...] = ()

    def upload(self, workers, rows: Sequence[int], grads: Sequence[Tensor], scale: float, compressor, generators):
        segments = compressor.layout.segments
        n, everyone = len(rows), len(rows) == grads[0].shape[0]
        # v = s * g formed block by block into one fresh (n, d) buffer, handed to the compressor
        # to keep (a dense message is v itself: no copy, and the server may keep it as it is).
        v = torch.empty(n, compressor.layout.numel, dtype=grads[0].dtype, device=grads[0].device)
        index = None if everyone else torch.as_tensor(list(rows), dtype=torch.long, device=v.device)
        for seg, g in zip(segments, grads):
            torch.mul(g if everyone else g.index_select(0, index), scale, out=v[:, seg.offset : seg.end])
        return compressor.compress(v, range(n), generators=generators, donate=True)

    def describe(self) -> dict:
        return {"memory": self.name}
