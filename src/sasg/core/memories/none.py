r"""``none``: no memory. What the compressor drops, or a lossy codec rounds away, is lost:
:math:`q_m = C(s\,g)` (a lossy codec makes such a run biased; the report says so)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..payloads.encoded import Encoded, transmit


class NoMemory:
    name = "none"
    corrects = False  # what the compressor and the codec drop is lost
    worker_buffers: tuple[str, ...] = ()

    def upload(self, workers, rows: Sequence[int], grads: Sequence[Tensor], scale: float, compressor, generators,
               codec) -> Encoded:
        segments = compressor.layout.segments
        n, everyone = len(rows), len(rows) == grads[0].shape[0]
        # v = s * g formed block by block into one fresh (n, d) buffer, handed to the compressor
        # to keep (a dense message is v itself: no copy, and the server may keep it as it is).
        v = torch.empty(n, compressor.layout.numel, dtype=grads[0].dtype, device=grads[0].device)
        index = None if everyone else torch.as_tensor(list(rows), dtype=torch.long, device=v.device)
        for seg, g in zip(segments, grads):
            torch.mul(g if everyone else g.index_select(0, index), scale, out=v[:, seg.offset : seg.end])
        return transmit(compressor.compress(v, range(n), generators=generators, donate=True), codec)

    def describe(self) -> dict:
        return {"memory": self.name}
