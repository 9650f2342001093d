r"""Bits and bytes, vectorized: the building blocks of the codecs' wire formats.

Conventions (every codec of this package follows them):

* **Bit order: big-endian within a byte** (numpy's ``bitorder="big"``). Bit ``j`` of a bit stream
  is bit ``7 - j % 8`` (value ``2**(7 - j % 8)``) of byte ``j // 8``: the first bit of a stream is
  the most significant bit of its first byte. A stream whose length is not a multiple of 8 is
  padded to a whole byte (with zeros unless a format says otherwise).
* **Fields** (an integer written in ``w`` bits, e.g. a Rice remainder) are written most
  significant bit first, at any bit position; ``w = 0`` writes nothing.
* **Multi-byte numbers** (int32/int64 counts and indices, float32/float16/bfloat16 values) are
  **little-endian** IEEE/two's-complement, the in-memory layout of every platform torch runs on;
  importing this module on a big-endian machine fails rather than writing other bytes.

Nothing here loops over entries: bit packing is ``numpy.packbits`` on CPU tensors (torch ops
on other devices: the same bytes), and fields are written through byte windows (see
:func:`pack_fields`).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor

from ... import kernels

if sys.byteorder != "little":  # pragma: no cover - no such platform in use
    raise ImportError("sasg codecs write little-endian bytes by reinterpreting memory: big-endian hosts unsupported")

MAX_FIELD_BITS = 48  # widest field pack_fields/unpack_fields handle: 7 offset bits + 48 <= 56 = 7 bytes

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)

# numpy's bit routines on CPU tensors (several times faster there than torch ops); tensors on
# other devices always take the torch path. Tests turn this off to check both give the same bytes.
NUMPY_ON_CPU = True


def _numpy(t: Tensor) -> bool:
    return NUMPY_ON_CPU and t.device.type == "cpu"


def on_kernels(t: Tensor) -> bool:
    """Whether a codec member takes its compiled path (:mod:`sasg.kernels`) for ``t``: kernels
    on, and ``t`` on the CPU. The torch path stays the reference, and serves every other device."""
    return t.device.type == "cpu" and kernels.available()


def as_numpy(t: Tensor, dtype) -> np.ndarray:
    """A C-contiguous numpy array of ``t``'s numbers as ``dtype`` (a view when it already is one)."""
    return np.ascontiguousarray(t.detach().numpy(), dtype=dtype)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def as_bytes(t: Tensor) -> Tensor:
    """``(N, n)`` tensor -> ``(N, n * itemsize)`` uint8 of the same (little-endian) bits."""
    if t.numel() == 0:
        return torch.empty(*t.shape[:-1], t.shape[-1] * t.element_size(), dtype=torch.uint8, device=t.device)
    return t.contiguous().view(torch.uint8)


def from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """``(..., n * itemsize)`` uint8 -> ``(..., n)`` of ``dtype``, the same bits (a view where
    the bytes are contiguous and aligned for ``dtype``, else from an aligned copy)."""
    size = itemsize(dtype)
    if b.numel() == 0:
        return torch.empty(*b.shape[:-1], b.shape[-1] // size, dtype=dtype, device=b.device)
    if size == 1:
        return b.contiguous().view(dtype)
    aligned = b.storage_offset() % size == 0 and all(s % size == 0 for s in b.stride()[:-1])
    if not (aligned and b.is_contiguous()):
        b = b.clone(memory_format=torch.contiguous_format)  # fresh storage: aligned
    return b.view(dtype)


def pack_bits(bits: Tensor) -> Tensor:
    """Bool (or 0/1) tensor ``(..., n)`` -> uint8 ``(..., ceil(n / 8))``, big-endian bit order,
    each row's last byte zero-padded."""
    if _numpy(bits):
        arr = bits.contiguous()
        if arr.dtype != torch.bool:
            arr = arr != 0
        return torch.from_numpy(np.packbits(arr.numpy(), axis=-1, bitorder="big"))
    n = bits.shape[-1]
    pad = (-n) % 8
    b = torch.nn.functional.pad(bits.to(torch.uint8), (0, pad)).reshape(*bits.shape[:-1], (n + pad) // 8, 8)
    w = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (b * w).sum(-1, dtype=torch.uint8)  # distinct powers of two: no carry


def unpack_bits(data: Tensor, count: int | None = None) -> Tensor:
    """uint8 ``(..., m)`` -> bool ``(..., 8 m)`` (or the first ``count`` bits of each row)."""
    if _numpy(data):
        out = np.unpackbits(data.contiguous().numpy(), axis=-1, count=count, bitorder="big")
        return torch.from_numpy(out).view(torch.bool)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=data.device)
    bits = ((data.unsqueeze(-1) >> shifts) & 1).reshape(*data.shape[:-1], 8 * data.shape[-1]).bool()
    return bits if count is None else bits[..., :count]


def set_bit_positions(data: Tensor) -> Tensor:
    """Positions (int64, ascending) of the 1 bits of a 1-D uint8 stream; touches each zero byte
    once and unpacks only the nonzero ones (fast for sparse bitmaps)."""
    nz = torch.nonzero(data).reshape(-1)
    bits = unpack_bits(data[nz].unsqueeze(1))  # (m, 8)
    row, col = torch.nonzero(bits, as_tuple=True)
    return nz[row] * 8 + col


def ones_then_zero(ends: Tensor, total_bits: int) -> Tensor:
    """A packed stream of ``total_bits`` ones with zeros at positions ``ends`` (int64): the unary
    codes ``1^q 0`` of consecutive numbers when ``ends`` are the cumulative sums of ``q + 1``, less
    one; every other position (the padding included) is a one."""
    if _numpy(ends):
        bits = np.ones(total_bits, dtype=bool)
        bits[ends.numpy()] = False
        return torch.from_numpy(np.packbits(bits, bitorder="big"))
    bits = torch.ones(total_bits, dtype=torch.bool, device=ends.device)
    bits[ends] = False
    return pack_bits(bits)


def zero_positions(data: Tensor) -> Tensor:
    """Positions (int64, ascending) of the 0 bits of a 1-D uint8 stream."""
    if _numpy(data):
        bits = np.unpackbits(np.invert(data.contiguous().numpy()), bitorder="big")
        return torch.from_numpy(np.flatnonzero(bits))
    return torch.nonzero(~unpack_bits(data)).reshape(-1)


def pack_fields(values: Tensor, widths: Tensor, starts: Tensor, nbytes: int) -> Tensor:
    r"""Write integer fields into a zeroed stream of ``nbytes`` bytes.

    Field ``e`` holds ``values[e]`` (``0 <= values[e] < 2**widths[e]``, ``widths <= 48``) in the
    bits ``starts[e] .. starts[e] + widths[e] - 1``, most significant bit first; fields must not
    overlap and must end inside the stream. Bits no field covers stay 0.

    How: a field spans at most ``T = ceil((7 + max w) / 8)`` bytes from byte ``starts >> 3``.
    Shifted into a ``T``-byte window (``v << (8T - (starts & 7) - w)``), its ``T`` bytes are added
    to the stream with ``index_add_``, one pass per window byte; since fields occupy disjoint bits,
    the sums never carry and adding is OR. Cost: ``T`` passes over the fields, not one per bit.
    """
    device = starts.device
    maxw = int(widths.max()) if widths.numel() else 0
    if maxw == 0:
        return torch.zeros(nbytes, dtype=torch.uint8, device=device)
    if maxw > MAX_FIELD_BITS:
        raise ValueError(f"fields of at most {MAX_FIELD_BITS} bits, got {maxw}")
    T = (7 + maxw + 7) // 8
    if T <= 3 and 8 * (nbytes + T) < 2**31:  # the window and every position fit in int32
        values, widths, starts = values.to(torch.int32), widths.to(torch.int32), starts.to(torch.int32)
    lo = starts >> 3
    window = values << (8 * T - (starts & 7) - widths)
    acc = torch.zeros(nbytes + T, dtype=torch.int32, device=device)
    for t in range(T):
        part = window >> (8 * (T - 1 - t)) if t < T - 1 else window
        acc.index_add_(0, lo + t if t else lo, (part & 0xFF).to(torch.int32))
    return acc[:nbytes].to(torch.uint8)


def unpack_fields(data: Tensor, widths: Tensor, starts: Tensor) -> Tensor:
    """Read the fields :func:`pack_fields` wrote (int64). The caller checks that every field lies
    inside ``data``; the window may read up to 7 bytes past a field, which this pads."""
    maxw = int(widths.max()) if widths.numel() else 0
    if maxw == 0:
        return torch.zeros(widths.shape, dtype=torch.long, device=data.device)
    if maxw > MAX_FIELD_BITS:
        raise ValueError(f"fields of at most {MAX_FIELD_BITS} bits, got {maxw}")
    T = (7 + maxw + 7) // 8
    padded = torch.cat([data, data.new_zeros(T)])
    dt = torch.int32 if T <= 3 and 8 * padded.numel() < 2**31 else torch.int64
    starts, widths = starts.to(dt), widths.to(dt)
    lo = starts >> 3
    window = padded[lo].to(dt)
    for t in range(1, T):
        window = (window << 8) | padded[lo + t].to(dt)
    one = torch.ones((), dtype=dt, device=data.device)
    return ((window >> (8 * T - (starts & 7) - widths)) & ((one << widths) - 1)).to(torch.long)


def exclusive_cumsum(x: Tensor) -> Tensor:
    """``[0, x0, x0 + x1, ...]`` without the total (same length as ``x``)."""
    return torch.cumsum(x, 0) - x


def bit_length(x: Tensor) -> Tensor:
    """Bits needed to write each non-negative int64 (< 2**53): 0 for 0, 1 for 1, 3 for 4..7."""
    _, e = torch.frexp(x.to(torch.float64))
    return e.to(torch.long)


__all__ = [
    "MAX_FIELD_BITS", "NUMPY_ON_CPU", "as_bytes", "as_numpy", "bit_length", "exclusive_cumsum", "from_bytes",
    "itemsize", "on_kernels", "ones_then_zero", "pack_bits", "pack_fields", "set_bit_positions", "unpack_bits",
    "unpack_fields", "zero_positions",
]
