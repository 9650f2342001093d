r"""Value formats: the values of a message as bytes, and back.

A message's ``n`` values (the ``K`` kept values of a sparse message, or the ``d`` values of a
dense one) belong to tensors (layout segments): a sparse message's value ``j`` to the tensor of
its index, a dense message's values to the segments in order. "Per tensor" below means per
segment, within one message. Every format has a fixed size given ``n`` and the number of
tensors ``S``, so the value part of a message is self-delimiting. Multi-byte numbers are
little-endian, bit streams big-endian within a byte (:mod:`.bitstream`).

* ``fp32``, ``fp16``, ``bf16`` — every value cast to float32 / float16 / bfloat16 (torch's cast:
  round to nearest, ties to even; ``fp16`` overflows to ±inf past 65504), ``n`` x 4 / 2 / 2
  bytes. Lossless only ``fp32`` on float32 values; ±0, subnormals (flushed only where the narrow
  type has none), ±inf and NaN payloads pass through the cast as torch casts them.
* ``int8`` — per tensor one float32 scale ``a_s = max_j |v_j| / 127`` then every value as
  ``round(v / a_s)`` (ties to even) clamped to ``[-127, 127]``; decoded value ``q a_s`` (values
  rounding to 0, -0 included, decode to +0). Bytes:
  ``S`` x float32 scales, then ``n`` x int8. ``a_s = 0`` (all zeros, or an empty tensor) sends
  ``q = 0``. A tensor holding ±inf or NaN gets a non-finite scale and decodes to NaN throughout
  (a diverged run stays visibly diverged). -128 is never written (a decoder rejects it).
* ``sign`` — one bit per value (1 = negative, ``v < 0``; so ``sign(+0) = sign(-0) = sign(NaN) =
  +``) and per tensor one float32 magnitude ``m_s`` = mean ``|v_j|`` over that tensor's values in
  the message (0 for an empty tensor); decoded value ``-m_s`` or ``+m_s``. Bytes: ``S`` x float32
  magnitudes, then ``ceil(n / 8)`` bytes of sign bits, zero-padded. A tensor holding ±inf or NaN
  has a non-finite magnitude, which every value of it decodes to (with its sign).

Values are cast to float32 before ``int8``/``sign`` arithmetic, and decoded values come back in
the requested dtype. Decoding is a pure function of the bytes: the same values on every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from .bitstream import as_bytes, from_bytes, itemsize, pack_bits, unpack_bits
from .protocol import CodecError


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
        float32 cascade sum, in float64 where that overflows); 0 for an empty tensor."""
        c = self.counts(x.device)
        if self.layout is not None:
            tot = torch.stack([_sum_rows(blk) for blk in self.layout.columns(x)], dim=1)
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


class _Cast(ValueFormat):
    wire: torch.dtype = torch.float32

    def nbytes(self, n: int) -> int:
        return n * itemsize(self.wire)

    def encode(self, values: Tensor, groups: Groups | None) -> Tensor:
        return as_bytes(values.to(self.wire))

    def decode(self, rows: Tensor, groups: Groups | None, dtype: torch.dtype, who: str) -> Tensor:
        return from_bytes(rows, self.wire).to(dtype)


class Fp32(_Cast):
    """``fp32``: every value as float32 (lossless for float32 values)."""

    name = "fp32"
    lossless = True
    wire = torch.float32


class Fp16(_Cast):
    """``fp16``: every value as IEEE half (round to nearest even; ±inf past 65504)."""

    name = "fp16"
    wire = torch.float16


class Bf16(_Cast):
    """``bf16``: every value as bfloat16 (float32's range, 8 significant bits)."""

    name = "bf16"
    wire = torch.bfloat16


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


class Int8(ValueFormat):
    """``int8``: per tensor a float32 scale max|v|/127, values round(v/scale) in [-127, 127]."""

    name = "int8"
    needs_groups = True

    def nbytes(self, n: int) -> int:
        return 4 * self.S + n

    def encode(self, values: Tensor, groups: Groups) -> Tensor:
        v = values.to(torch.float32)
        scale = groups.amax(v.abs()) / 127
        # x/0 (a zero scale) and inf/inf, NaN/x (non-finite tensors) all write 0.
        q = torch.nan_to_num(v / groups.expand(scale), nan=0.0, posinf=0.0, neginf=0.0)
        q = torch.round(q).clamp_(-127, 127).to(torch.int8)
        return torch.cat([as_bytes(scale), q.view(torch.uint8)], dim=1)

    def decode(self, rows: Tensor, groups: Groups, dtype: torch.dtype, who: str) -> Tensor:
        S = self.S
        scale = from_bytes(rows[:, : 4 * S], torch.float32)
        q = rows[:, 4 * S :].contiguous().view(torch.int8)
        i = _first_row(q == -128)
        if i is not None:
            raise CodecError(f"{who}: message {i} has the int8 value -128, which int8 codes never write: corrupted")
        _check_scales(scale, groups, who, "int8 scale")
        return (q.to(torch.float32) * groups.expand(scale)).to(dtype)


class Sign(ValueFormat):
    """``sign``: one bit per value (1 = negative) and the mean magnitude of every tensor."""

    name = "sign"
    needs_groups = True

    def nbytes(self, n: int) -> int:
        return 4 * self.S + (n + 7) // 8

    def encode(self, values: Tensor, groups: Groups) -> Tensor:
        v = values.to(torch.float32)
        mag = groups.mean(v.abs())
        bits = pack_bits(v < 0).to(v.device)
        return torch.cat([as_bytes(mag), bits], dim=1)

    def decode(self, rows: Tensor, groups: Groups, dtype: torch.dtype, who: str) -> Tensor:
        S, n = self.S, groups.n
        mag = from_bytes(rows[:, : 4 * S], torch.float32)
        packed = rows[:, 4 * S :]
        if n % 8:
            i = _first_row((packed[:, -1] & ((1 << (8 - n % 8)) - 1)) != 0)
            if i is not None:
                raise CodecError(f"{who}: message {i} has a padding bit set after its sign bits: corrupted")
        _check_scales(mag, groups, who, "sign magnitude")
        neg = unpack_bits(packed, n).to(rows.device)
        m = groups.expand(mag)
        return torch.where(neg, -m, m).to(dtype)


VALUE_FORMATS = {
    "fp32": (Fp32, "values as float32 (lossless for float32 models)"),
    "fp16": (Fp16, "values as IEEE float16, round to nearest even (lossy; error feedback keeps the rest)"),
    "bf16": (Bf16, "values as bfloat16, round to nearest even (lossy; error feedback keeps the rest)"),
    "int8": (Int8, "values as int8 with one float32 scale max|v|/127 per tensor (lossy)"),
    "sign": (Sign, "one sign bit per value and one float32 mean magnitude per tensor (lossy)"),
}

__all__ = ["Bf16", "Fp16", "Fp32", "Groups", "Int8", "Sign", "VALUE_FORMATS", "ValueFormat"]
