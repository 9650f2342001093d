"""Compressors: map a batch of vectors ``v`` (shape ``(N, d)``) to a payload ``q``.

A compressor is a small object with ``compress(v) -> payload``, an ``empty(n)`` payload of all
zeros (the server's initial "last message"), and ``error(v, q)`` — the part of ``v`` that was not
sent, which error feedback keeps. The invariant ``q.to_dense() + error(v, q) == v`` holds
*exactly* (bit for bit) for every compressor here.

New members of the family (random-k with a shared seed, quantised values) drop in as another
class with the same three methods. Optionally, ``error_(v, q)`` does :meth:`error` in place on a
``v`` the caller owns (the payload must hold copies of what it sends) and ``compress(v, rows)``
compresses only some rows of ``v`` where they lie; the algorithm then keeps the error memory up
to date without ``(N, d)`` temporaries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layout import Layout
from .payload import DensePayload, SparsePayload
from .topk import topk_rows


class Identity:
    """Send ``v`` as it is (dense)."""

    name = "identity"

    def __init__(self, layout: Layout):
        self.layout = layout

    def compress(self, v: Tensor) -> DensePayload:
        # No copy: callers pass a freshly computed v and never write to it afterwards.
        return DensePayload(v)

    def empty(self, n: int, device=None, dtype=torch.float32) -> DensePayload:
        return DensePayload(torch.zeros(n, self.layout.numel, device=device, dtype=dtype))

    def error(self, v: Tensor, q: DensePayload) -> Tensor:
        return torch.zeros_like(v)

    def describe(self) -> dict:
        return {"compressor": self.name}


def kept_per_segment(layout: Layout, density: float) -> list[int]:
    """k_s = max(1, floor(h * d_s)) for every segment s."""
    if not (0.0 < density <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be in (0, 1], got {density}")
    # The small epsilon keeps floor(h*d) exact when h*d is an integer that float rounding puts
    # just below it (e.g. 0.07 * 100 = 7.000000000000001 is fine, 0.29 * 100 = 28.999999999999996).
    return [max(1, min(seg.numel, math.floor(density * seg.numel + 1e-9))) for seg in layout.segments]


class TopK:
    """Keep the ``k_s = max(1, floor(h*d_s))`` largest magnitudes of every segment s.

    Ties go to the lower index (see :mod:`sasg.core.topk`); the indices of one message are
    ascending within each segment and segments follow the layout order.
    """

    name = "topk"

    def __init__(self, layout: Layout, density: float):
        self.layout = layout
        self.density = float(density)
        self.k_per_segment = kept_per_segment(layout, self.density)
        self.nnz = sum(self.k_per_segment)

    def compress(self, v: Tensor, rows: Tensor | None = None) -> SparsePayload:
        """The messages of the rows of ``v`` (shape ``(N, d)``), or only of ``rows`` (int64, in
        that order) — read where they lie, without a gathered copy of them."""
        row_list = None if rows is None else rows.tolist()
        n = v.shape[0] if row_list is None else len(row_list)
        indices = torch.empty(n, self.nnz, dtype=torch.long, device=v.device)
        values = torch.empty(n, self.nnz, dtype=v.dtype, device=v.device)
        col = 0
        for seg, k in zip(self.layout.segments, self.k_per_segment):
            idx, val = topk_rows(v[:, seg.offset : seg.end], k, row_list, scratch_owner=self)
            torch.add(idx, seg.offset, out=indices[:, col : col + k])
            values[:, col : col + k] = val
            col += k
        return SparsePayload(indices, values, self.layout.numel)

    def empty(self, n: int, device=None, dtype=torch.float32) -> SparsePayload:
        # Index 0 with value 0 adds nothing; a valid index keeps index_add_ in bounds.
        return SparsePayload(
            torch.zeros(n, self.nnz, dtype=torch.long, device=device),
            torch.zeros(n, self.nnz, dtype=dtype, device=device),
            self.layout.numel,
        )

    def error(self, v: Tensor, q: SparsePayload) -> Tensor:
        # v with the sent entries zeroed: q + e == v exactly, with no subtraction rounding.
        return v.scatter(1, q.indices, 0.0)

    def error_(self, v: Tensor, q: SparsePayload) -> Tensor:
        """:meth:`error` in place: zero the sent entries of ``v`` and return it. Only for a ``v``
        the caller owns; ``q`` holds copies of the sent values, so it stays valid."""
        return v.scatter_(1, q.indices, 0.0)

    def describe(self) -> dict:
        return {"compressor": self.name, "density": self.density, "nnz_per_message": self.nnz}
