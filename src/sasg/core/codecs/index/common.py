"""What every index code shares: the :class:`IndexCode` base, the layout's tables
(:class:`LayoutTables`), the rows of a batch's messages and the checks that name a bad message.
Notation as in :mod:`sasg.core.codecs.index`."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ....kernels import idx32 as kernel
from ...layout import Layout
from ..bitstream import MAX_FIELD_BITS, as_numpy, bit_length, on_kernels
from ..protocol import CodecError


def _first(mask: Tensor) -> int | None:
    """Position of the first True of a 1-D bool tensor, or None."""
    if mask.numel() == 0 or not bool(mask.any()):
        return None
    return int(torch.nonzero(mask)[0, 0])


def _fail(who: str, i: int | None, what: str):
    raise CodecError(f"{who}: message {i} {what}" if i is not None else f"{who}: {what}")


def message_rows(data: Tensor, starts: Sequence[int], sizes: Sequence[int], offsets, length: int) -> Tensor:
    """``(N, length)`` uint8: ``length`` bytes of every message from ``offsets`` (one int or a
    list) bytes into it. A view where the messages all have one size, else a stacked copy."""
    n = len(starts)
    if n == 0:
        return data.new_zeros(0, length)
    if isinstance(offsets, int):
        if sizes[0] > 0 and all(s == sizes[0] for s in sizes):
            return data.reshape(n, sizes[0])[:, offsets : offsets + length]
        offsets = [offsets] * n
    return torch.stack([data[s + o : s + o + length] for s, o in zip(starts, offsets)])


def _check_room(who: str, sizes: Sequence[int], need) -> None:
    """Every message at least ``need`` bytes (an int or a per-message tensor), else truncated."""
    if isinstance(need, int):
        for i, s in enumerate(sizes):
            if s < need:
                _fail(who, i, f"is truncated: {s} bytes, needs at least {need}")
        return
    size_t = torch.tensor(list(sizes), dtype=torch.long)
    need = need.cpu()
    i = _first(need > size_t)
    if i is not None:
        _fail(who, i, f"is truncated: {int(size_t[i])} bytes, needs at least {int(need[i])}")


class LayoutTables:
    """The layout's offsets and sizes as tensors (per device), and the widths derived from it."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.S = len(layout.segments)
        self.d = layout.numel
        self.index_dtype = torch.int32 if self.d < 2**31 else torch.int64
        self.W = 4 if self.index_dtype == torch.int32 else 8
        self._cache: dict = {}

    def on(self, device) -> dict:
        device = torch.device(device)
        t = self._cache.get(device)
        if t is None:
            segs = self.layout.segments
            offsets = torch.tensor([s.offset for s in segs], dtype=torch.long, device=device)
            numels = torch.tensor([s.numel for s in segs], dtype=torch.long, device=device)
            t = self._cache[device] = {
                "offsets": offsets,
                "numels": numels,
                "bounds": torch.cat([offsets, offsets.new_tensor([self.d])]),
                "bmax": (bit_length(numels) - 1).clamp(0, MAX_FIELD_BITS),  # floor(log2 d_s), capped
            }
        return t

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CPU tables as int64 numpy arrays, for the kernels: (offsets, numels, bmax)."""
        t = self.on("cpu")
        if "arrays" not in t:
            t["arrays"] = tuple(t[k].numpy() for k in ("offsets", "numels", "bmax"))
        return t["arrays"]

    def counts_of(self, indices: Tensor) -> Tensor:
        """``(N, S)``: how many indices of every row fall in every tensor (rows ascending, or not)."""
        N, K = indices.shape
        if on_kernels(indices):
            counts, err = kernel.segment_counts(as_numpy(indices, np.int64), self.arrays()[0], self.d)
            if not err:  # else (an index outside 0..d-1) as the reference counts it
                return torch.from_numpy(counts)
        tab = self.on(indices.device)
        if K == 0:
            return torch.zeros(N, self.S, dtype=torch.long, device=indices.device)
        indices = indices.contiguous()
        if bool((indices[:, 1:] >= indices[:, :-1]).all()):
            pos = torch.searchsorted(indices, tab["bounds"].expand(N, self.S + 1).contiguous())
            return torch.diff(pos, dim=1)
        # Unordered rows (only ever encoded, e.g. a size template): group by bucket.
        seg = torch.bucketize(indices, tab["offsets"][1:], right=True)
        key = (seg + torch.arange(N, device=indices.device).unsqueeze(1) * self.S).reshape(-1)
        return torch.bincount(key, minlength=N * self.S).view(N, self.S)


def _check_ascending(indices: Tensor, d: int, who: str, error=CodecError) -> None:
    """Every row strictly ascending inside ``0..d-1``, else ``error`` naming the first bad row."""
    if indices.numel() == 0:
        return
    order = (indices[:, 1:] <= indices[:, :-1]).any(1)
    outside = (indices[:, 0] < 0) | (indices[:, -1] >= d)
    i = _first(order | outside)
    if i is None:
        return
    if bool(order[i]):
        raise error(f"{who}: message {i} has indices that do not ascend (repeated or out of order)")
    raise error(f"{who}: message {i} has an index outside 0..{d - 1}")


class IndexCode:
    """Base: an index code for one layout.

    ``encode(indices (N, K) int64)`` -> (bytes: an ``(N, B)`` uint8 tensor when every message has
    ``B`` bytes, else each message's list of pieces, or a pair (the parts back to back as one
    uint8 tensor, each part's size); the ``(N, S)`` per-tensor counts, or None).
    ``decode(data, starts, sizes, tail, nnz, who)`` -> (indices ``(N, nnz)``, counts ``(N, S)``,
    index bytes used per message ``(N,)``): the messages lie in ``data`` at ``starts`` with
    ``sizes``, each ending with a ``tail`` of ``tail`` bytes (the value part)."""

    name = "index"
    fixed_size = False

    def __init__(self, layout: Layout, settings=None):
        self.tables = LayoutTables(layout)

    def counts_of(self, indices: Tensor) -> Tensor:
        return self.tables.counts_of(indices)

    def nnz_of(self, data: Tensor, starts: Sequence[int], sizes: Sequence[int], value_nbytes, who: str) -> list[int]:
        """How many entries each message holds, from its bytes alone (messages of varying length):
        ``value_nbytes(n)`` is the value part's size for ``n`` entries. This base serves a code
        whose part has ``part_bytes(n)`` bytes, strictly more for more entries (``idx32``): the
        one ``n`` whose index and value parts fill the message. A code whose size does not tell
        (``bitmap``) or that writes its counts (``rice``, ``auto``) reads them instead."""
        part = getattr(self, "part_bytes", None)
        if part is None:
            raise ValueError(f"{who}: index code {self.name!r} cannot tell how many entries a message holds "
                             "(it defines neither nnz_of nor part_bytes)")

        def fill(n: int) -> int:
            return part(n) + value_nbytes(n)

        out = []
        for i, s in enumerate(sizes):
            hi = 1
            while fill(hi) < s:
                hi *= 2
                if hi > 8 * s + 8:
                    _fail(who, i, f"has {s} bytes, which no number of entries fills")
            lo = 0  # the smallest n with fill(n) >= s lies in lo..hi
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if fill(mid) < s else (lo, mid)
            if fill(lo) != s:
                _fail(who, i, f"has {s} bytes, which no number of entries fills (corrupted or truncated)")
            if fill(lo + 1) == s:
                raise ValueError(f"{who}: index code {self.name!r} writes {s} bytes for {lo} and {lo + 1} entries: "
                                 "the size does not tell how many entries a message holds")
            out.append(lo)
        return out

    def describe(self) -> dict:
        return {"index": self.name}
