"""``bitmap`` — one bit per entry of ``d`` (bit ``i`` set iff index ``i`` is kept): ``ceil(d/8)``
bytes whatever ``K``, no header; smaller than ``idx32`` above a density of 1/32 (~3 %)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ....kernels import bitmap as kernel
from ..bitstream import as_numpy, on_kernels, pack_bits, set_bit_positions
from .common import IndexCode, _check_room, _fail, _first, message_rows


class Bitmap(IndexCode):
    """``bitmap``: bit ``i`` of a ``ceil(d/8)``-byte stream set iff index ``i`` is kept."""

    name = "bitmap"
    fixed_size = True

    def part_bytes(self, nnz: int) -> int:
        return (self.tables.d + 7) // 8

    def encode(self, indices: Tensor) -> tuple[Tensor, None]:
        N, K = indices.shape
        d, nb = self.tables.d, self.part_bytes(K)
        if on_kernels(indices):
            rows = np.zeros((N, nb), np.uint8)
            if not kernel.bitmap_encode(as_numpy(indices, np.int64), d, rows):  # else the reference raises its error
                return torch.from_numpy(rows), None
        if K and (bool((indices < 0).any()) or bool((indices >= d).any())):
            raise ValueError(f"bitmap: an index is outside 0..{d - 1}")
        rows = torch.arange(N, device=indices.device).unsqueeze(1)
        if K == 0 or bool((indices[:, 1:] > indices[:, :-1]).all()):
            # Distinct indices: add each one's bit into its byte (disjoint bits never carry).
            acc = torch.zeros(N * nb, dtype=torch.int32, device=indices.device)
            pos = (rows * nb + (indices >> 3)).reshape(-1)
            acc.index_add_(0, pos, (128 >> (indices & 7)).reshape(-1).to(torch.int32))
            return acc.to(torch.uint8).view(N, nb), None
        bits = torch.zeros(N, nb * 8, dtype=torch.bool, device=indices.device)  # repeats: set semantics
        bits[rows.expand_as(indices), indices] = True
        return pack_bits(bits).to(indices.device), None

    def nnz_of(self, data, starts, sizes, value_nbytes, who) -> list[int]:
        """The bits set in each message's bitmap (its size is the same for every count)."""
        B = self.part_bytes(0)
        _check_room(who, sizes, B)
        rows = message_rows(data, starts, sizes, 0, B).reshape(-1)
        msg = set_bit_positions(rows) // (8 * B)
        return torch.bincount(msg, minlength=len(sizes)).tolist()

    def decode(self, data, starts, sizes, tail, nnz, who):
        N, d, B = len(sizes), self.tables.d, self.part_bytes(nnz)
        if on_kernels(data):
            indices = np.empty((N, nnz), np.int64)
            counts, err = kernel.bitmap_decode(
                as_numpy(data, np.uint8), np.asarray(starts, np.int64), np.asarray(sizes, np.int64), int(tail),
                int(nnz), d, self.tables.arrays()[0], indices)
            if not err:  # else the reference names what is wrong
                return torch.from_numpy(indices), torch.from_numpy(counts), torch.full((N,), B, dtype=torch.long)
        _check_room(who, sizes, B + tail)
        rows = message_rows(data, starts, sizes, 0, B).reshape(-1)
        pos = set_bit_positions(rows)
        msg, idx = pos // (8 * B), pos % (8 * B)
        i = _first(idx >= d)
        if i is not None:
            _fail(who, int(msg[i]), f"has a padding bit set in its bitmap (past entry {d - 1})")
        found = torch.bincount(msg, minlength=N)
        i = _first(found != nnz)
        if i is not None:
            _fail(who, i, f"has {int(found[i])} bits set in its bitmap, expected {nnz}")
        indices = idx.view(N, nnz)
        return indices, self.counts_of(indices), torch.full((N,), B, dtype=torch.long)
