"""``idx32`` — the indices as they are: ``K`` x int32 (int64 when ``d >= 2**31``), no header;
``32 K`` bits (the ``paper32`` index bytes exactly)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ....kernels import idx32 as kernel
from ..bitstream import as_bytes, as_numpy, from_bytes, on_kernels
from .common import IndexCode, _check_ascending, _check_room, message_rows


class Idx32(IndexCode):
    """``idx32``: every index as int32 (int64 when d >= 2**31), ``K W`` bytes, no header."""

    name = "idx32"
    fixed_size = True

    def part_bytes(self, nnz: int) -> int:
        return nnz * self.tables.W

    def encode(self, indices: Tensor) -> tuple[Tensor, None]:
        # No check: any indices encode (a fixed-size transport sizes messages from an all-zero
        # template), as in paper32; the decoder checks that they ascend inside 0..d-1.
        return as_bytes(indices.to(self.tables.index_dtype)), None

    def decode(self, data, starts, sizes, tail, nnz, who):
        B = self.part_bytes(nnz)
        if on_kernels(data):
            t = self.tables
            indices = np.empty((len(sizes), nnz), np.int64)
            counts, err = kernel.idx32_decode(
                as_numpy(data, np.uint8), np.asarray(starts, np.int64), np.asarray(sizes, np.int64), int(tail),
                int(nnz), t.W, t.d, t.arrays()[0], indices)
            if not err:  # else the reference names what is wrong
                used = torch.full((len(sizes),), B, dtype=torch.long)
                return torch.from_numpy(indices), torch.from_numpy(counts), used
        _check_room(who, sizes, B + tail)
        rows = message_rows(data, starts, sizes, 0, B)
        indices = from_bytes(rows, self.tables.index_dtype).to(torch.long)
        _check_ascending(indices, self.tables.d, who)
        return indices, self.counts_of(indices), torch.full((len(sizes),), B, dtype=torch.long)
