"""What every value format shares: the :class:`ValueFormat` base, :class:`Groups` (which tensor
each value belongs to, and the per-tensor reductions), and the checks that name a bad message."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...layout import Layout
from ..bitstream import as_numpy
from ..bitstream import on_kernels as _cpu_kernels
from ..protocol import CodecError


class Groups:
    """Which tensor each of the ``n`` values of each of ``N`` messages belongs to, and the
    per-tensor reductions the formats need. A message's values come tensor by tensor (a sparse
    message's indices ascend), so ``(N, S)`` counts say it all: ``sparse(counts)``; ``dense``:
    the layout's segments, in order, for every message."""

    def __init__(self, counts: Tensor, n: int, layout: Layout | None = None):
        self.N, self.S = counts.shape
        self.n = n
        self._counts = counts
        self.layout = layout  # dense: reduce over column blocks (no per-entry tables)

    @classmethod
    def sparse(cls, counts: Tensor, n: int) -> "Groups":
        return cls(counts, n)

    @classmethod
    def dense(cls, layout: Layout, N: int, device=None) -> "Groups":
        numels = torch.tensor([s.numel for s in layout.segments], dtype=torch.long, device=device)
        return cls(numels.expand(N, len(numels)), layout.numel, layout)

    def counts(self, device=None) -> Tensor:
        """``(N, S)``: how many values of each message belong to each tensor."""
        return self._counts if device is None else self._counts.to(device)

    def amax(self, x: Tensor) -> Tensor:
        """``(N, S)`` max of ``x >= 0`` (``(N, n)``) per tensor; 0 for an empty one; NaN propagates."""
        if self.layout is not None:
            return torch.stack([blk.amax(1) for blk in self.layout.columns(x)], dim=1)
        if self.n == 0:
            return x.new_zeros(self.N, self.S)
        return torch.segment_reduce(x, "max", lengths=self.counts(x.device), axis=1, unsafe=True, initial=0)

    def mean(self, x: Tensor) -> Tensor:
        """``(N, S)`` float32 mean of ``x`` per tensor (sparse: summed in float64; dense: torch's
        float32 cascade sum, in float64 where that overflows, the mean then rounded into the
        tensor's [min, max]); 0 for an empty tensor. Either way the mean of equal numbers is that
        number exactly (so a dense ``sign`` compressor's message ``±m_s`` decodes to itself)."""
        c = self.counts(x.device)
        if self.layout is not None:
            blocks = self.layout.columns(x)
            tot = torch.stack([_sum_rows(blk) for blk in blocks], dim=1)
            mean = (tot / c).to(torch.float32)
            lo, hi = (torch.stack(t, dim=1) for t in zip(*(blk.aminmax(dim=1) for blk in blocks)))
            return torch.minimum(torch.maximum(mean, lo.to(torch.float32)), hi.to(torch.float32))
        elif self.n == 0:
            tot = torch.zeros(self.N, self.S, dtype=torch.float64, device=x.device)
        else:
            tot = torch.segment_reduce(x.to(torch.float64), "sum", lengths=c, axis=1, unsafe=True)
        return torch.where(c > 0, tot / c.clamp(min=1), 0.0).to(torch.float32)

    def expand(self, t: Tensor) -> Tensor:
        """``(N, S)`` per-tensor numbers -> ``(N, n)``: each value's own tensor's number."""
        c = self.counts(t.device)
        if self.layout is not None:
            return torch.repeat_interleave(t, c[0], dim=1, output_size=self.n)
        return torch.repeat_interleave(t.reshape(-1), c.reshape(-1), output_size=self.N * self.n).view(self.N, self.n)


def on_kernels(t: Tensor, groups: Groups) -> bool:
    """Whether a per-tensor format takes its compiled path (:mod:`sasg.kernels.values`): a
    sparse message's groups, on the CPU, kernels on. Dense groups keep the torch path (a few
    column blocks: whole-tensor ops already)."""
    return groups.layout is None and _cpu_kernels(t)


def kernel_encode(encode, v: Tensor, groups: Groups, nbytes: int, zeroed: bool) -> Tensor | None:
    """The ``(N, nbytes)`` rows a :mod:`sasg.kernels.values` encoder writes for the float32
    values ``v``, into a buffer allocated here (``zeroed`` where the kernel only sets bits); None
    where the compiled path does not apply or the kernel refuses: the torch path then runs and
    raises the error that names the problem."""
    if not on_kernels(v, groups):
        return None
    rows = (np.zeros if zeroed else np.empty)((v.shape[0], nbytes), np.uint8)
    if encode(as_numpy(v, np.float32), as_numpy(groups.counts(), np.int64), rows):
        return None
    return torch.from_numpy(rows)


def kernel_decode(decode, rows: Tensor, groups: Groups, out_dtype) -> np.ndarray | None:
    """The ``(N, n)`` array (``out_dtype``) a :mod:`sasg.kernels.values` decoder fills from the
    message rows; None as in :func:`kernel_encode` (the torch path names what is wrong).

    Dense groups decode here too, unlike encoding: a decoded value depends only on the bytes, so
    the kernel gives the torch path's numbers whatever the groups, and a dense message is where the
    torch path costs most (a dense ``sign`` message of 11.6M values: 150–180 ms to expand the
    magnitudes and pick the signs, in every warm-up round, once per rank's message)."""
    if not _cpu_kernels(rows):
        return None
    out = np.empty((rows.shape[0], groups.n), out_dtype)
    if decode(as_numpy(rows, np.uint8), as_numpy(groups.counts(), np.int64), groups.n, out):
        return None
    return out


def _sum_rows(blk: Tensor) -> Tensor:
    """Row sums as float64: torch's float32 (cascade) sum, redone in float64 where it overflowed."""
    tot = blk.sum(1)
    if bool(torch.isinf(tot).any()):
        return blk.to(torch.float64).sum(1)
    return tot.to(torch.float64)


def _first_row(mask: Tensor) -> int | None:
    rows = mask.reshape(mask.shape[0], -1).any(1)
    if not bool(rows.any()):
        return None
    return int(torch.nonzero(rows)[0, 0])


class ValueFormat:
    """Base: ``nbytes(n)``; ``encode(values (N, n), groups) -> (N, nbytes(n))`` uint8;
    ``decode(rows, groups, dtype, who) -> (N, n)``."""

    name = "value"
    lossless = False
    fixed_size = True  # every format's size depends only on n and S
    needs_groups = False

    def __init__(self, layout: Layout, settings=None):
        self.S = len(layout.segments)

    def describe(self) -> dict:
        return {"value": self.name}


def _check_scales(scales: Tensor, groups: Groups, who: str, what: str) -> None:
    """Scales come from max or mean of magnitudes: never negative (NaN aside), 0 for an empty tensor."""
    bad = torch.signbit(scales) & ~torch.isnan(scales)
    i = _first_row(bad)
    if i is not None:
        raise CodecError(f"{who}: message {i} has a negative {what} ({scales[i][bad[i]][0].item()}): corrupted")
    empty = groups.counts(scales.device) == 0
    i = _first_row(empty & (scales != 0))
    if i is not None:
        raise CodecError(f"{who}: message {i} has a nonzero {what} for a tensor it holds no value of: corrupted")
