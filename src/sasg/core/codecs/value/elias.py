r"""``elias`` — values as integer levels in Elias gamma codes, after the coding of QSGD (Alistarh
et al., arXiv 1610.02132: a float per tensor, then every value's level in an Elias integer code and
its sign): per tensor one float32 unit, per value a level and a sign.

A whole codec, named ``--codec elias`` (not ``INDEX+VALUE``): its value part has a length that
depends on the values, while an ``INDEX+VALUE`` codec needs value parts of a size fixed by ``n``.
A dense message is its value part alone; a sparse message is its ``K`` indices as ``idx32``
(int32, ascending; :mod:`..index.idx32`) followed by the value part of its ``K`` values, grouped
into tensors by their indices (as ``INDEX+VALUE`` codecs do for a value-only name).

Value part of one message with ``n`` values in ``S`` tensors::

    units      S x float32   u_s, one per tensor (0 for a tensor with no value in the message)
    unary      every value's floor(log2(l + 1)) zero bits and the one bit that ends them, in
               order; zero-padded to a byte (it ends at its n-th one bit)
    remainder  every value's floor(log2(l + 1)) low bits of l + 1 then, for l > 0, its sign bit
               (1 = negative), in order; zero-padded to a byte

The two streams hold exactly the bits of the Elias gamma code of ``l + 1`` followed by the sign
(level 0 -> ``1``, 1 -> ``010s``, 2 -> ``011s``, 3 -> ``00100s``), reordered so that a decoder
finds every code's length from the unary stream's one bits without a scan. A value decodes to
``±u_s l`` (level 0: ``+0``). Cost: ``32 S + sum_i (2 floor(log2(l_i + 1)) + 1 + [l_i > 0])``
bits, plus under 16 bits of padding (and ``32 K`` for the indices of a sparse message).

The encoder sees only the values, and picks ``u_s`` per tensor:

* **on a grid**: every ``|v_i|`` of the tensor is ``fl32(u l_i)`` for one float32 ``u`` and
  integers ``l_i <= 65536``, ``u`` being the smallest nonzero ``|v_i|``, else the gcd of the first
  16 nonzero ones (as multiples of the smallest one's last bit), else the gcd of all of them:
  then that ``u`` and those levels (checked value by value), and the tensor decodes to itself bit
  for bit. ``qsgd``'s messages are on their grid (float32 and float64 models, units in float32's
  normal range), as are ``terngrad``'s and ``sign``'s;
* **otherwise, the nearest level** (lossy): ``l_i = round(|v_i| / u_s)`` (ties to even) with
  ``u_s = max_j |v_j| / 16`` rounded up as ``qsgd``'s units are
  (:func:`~sasg.core.compressors.qsgd.level_unit`): the nearest of the 17 levels ``0 .. 16 u_s``,
  as ``int8`` with 5-bit levels (QSGD's own ``||v_s|| / s`` would round nearly every value of a
  large tensor to 0). Error feedback keeps the rest; a decoded message is on a grid, so coding it
  again changes nothing;
* a tensor of zeros: ``u_s = 0``; one holding ±inf or NaN: ``u_s = NaN`` and every level 0, so
  it decodes to NaN throughout.

Values are cast to float32 first, and decoded values come back in the requested dtype. Decoding
is a pure function of the bytes and checks what a corrupted message can get wrong without a
checksum (negative units, a unit for an empty tensor, truncated or trailing bytes, set padding
bits, codes longer than any the encoder writes), raising :class:`~..protocol.CodecError`.
Messages vary in size: ``fixed_size`` is false for both kinds (each sender's size travels).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...compressors.qsgd import DEFAULT_LEVELS, MAX_LEVELS, level_unit
from ...layout import Layout
from ..bitstream import (
    as_bytes, exclusive_cumsum, from_bytes, pack_bits, pack_fields, unpack_bits, unpack_fields,
)
from ..index.common import LayoutTables
from ..index.idx32 import Idx32
from ..protocol import CodecError, check_messages

MAX_ZEROS = MAX_LEVELS.bit_length() - 1  # the longest unary part the encoder writes (level 65536: 16)
_SAMPLE = 16  # nonzero values per tensor whose gcd is the first guess of the unit
_BIG = 1 << 20


def _gcd_rows(m: Tensor) -> Tensor:
    """``(G, R)`` int64 -> ``(G,)``: the gcd of every row (0 for a row of zeros)."""
    while m.shape[1] > 1:
        if m.shape[1] % 2:
            m = torch.cat([m, m.new_zeros(m.shape[0], 1)], dim=1)
        m = torch.gcd(m[:, 0::2], m[:, 1::2])
    return m[:, 0] if m.shape[1] else m.new_zeros(m.shape[0])


def _fits(a: Tensor, gid: Tensor, unit: Tensor) -> Tensor:
    """Per group: whether ``unit * round(a / unit)`` gives every magnitude ``a`` (float32, in
    groups ``gid``) back exactly in float32, as a decoder computes it."""
    u = unit[gid]
    fits = torch.ones_like(unit, dtype=torch.bool)
    fits[gid[torch.round(a / u) * u != a]] = False
    return fits


def _gcd_unit(a: Tensor, gid: Tensor, G: int) -> Tensor:
    """Per group the gcd of its float32 magnitudes ``a`` (nonzero and finite; ``gid`` ascending), as a float64
    number: a unit every ``a`` is an integer multiple of; 0 where the group spans more than 17
    binades (no grid of levels <= 65536 does) or holds nothing."""
    e = torch.frexp(a)[1].to(torch.long)
    emin = torch.full((G,), _BIG, dtype=torch.long).scatter_reduce_(0, gid, e, "amin")
    emax = torch.full((G,), -_BIG, dtype=torch.long).scatter_reduce_(0, gid, e, "amax")
    close = (emax >= emin) & (emax - emin <= MAX_ZEROS + 1)
    e0 = torch.where(close, emin - 24, 0)
    # every a / 2^e0 is then an integer below 2^42
    ints = torch.where(close[gid], torch.ldexp(a.to(torch.float64), -e0[gid].to(torch.float64)), 0.0).long()
    counts = torch.bincount(gid, minlength=G)  # gid ascends
    if gid.numel() == 0 or int(counts.max()) <= _SAMPLE:
        table = torch.zeros(G, _SAMPLE, dtype=torch.long)
        table[gid, torch.arange(gid.numel()) - exclusive_cumsum(counts)[gid]] = ints
        g = _gcd_rows(table)
    else:  # whole tensors: one at a time
        g = torch.zeros(G, dtype=torch.long)
        ends = torch.cumsum(counts, 0)
        for k in torch.nonzero(counts).reshape(-1).tolist():
            g[k] = _gcd_rows(ints[ends[k] - counts[k] : ends[k]].unsqueeze(0))[0]
    return torch.where(close, torch.ldexp(g.to(torch.float64), e0.to(torch.float64)), 0.0)


def quantize(values: Tensor, counts: Tensor, layout: Layout | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(N, n)`` values, grouped into tensors by ``(N, S)`` counts -> (units ``(N, S)`` float32,
    levels ``(N, n)`` int32, negative ``(N, n)`` bool: set only where the level is nonzero).
    ``layout``: dense messages, whose tensors are its segments (reduced over column blocks)."""
    N, n = values.shape
    c = counts.reshape(-1).to(device="cpu", dtype=torch.long)
    G = c.numel()
    x = values.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    gid = torch.repeat_interleave(torch.arange(G), c, output_size=N * n)
    a = x.abs()

    def reduce(t: Tensor, how: str, initial: float) -> Tensor:
        if layout is not None:
            op = {"max": torch.amax, "min": torch.amin}[how]
            return torch.stack([op(blk, 1) for blk in layout.columns(t.view(N, n))], dim=1).reshape(-1)
        return torch.segment_reduce(t, how, lengths=c, unsafe=True, initial=initial)

    amax = reduce(a, "max", 0.0)  # NaN and inf propagate
    broken = ~torch.isfinite(amax)
    has = (amax > 0) & ~broken

    def candidates(unit: Tensor) -> Tensor:  # float32 units giving levels <= 65536
        return (unit > 0) & (torch.round(amax / torch.where(unit > 0, unit, 1.0)) <= MAX_LEVELS)

    # First guess of the unit: the smallest nonzero magnitude (a level-1 value).
    unit = torch.where(has, reduce(torch.where(a > 0, a, torch.inf), "min", torch.inf), 0.0)
    todo = has & ~(candidates(unit) & _fits(a, gid, unit))
    if bool(todo.any()):
        sel = torch.nonzero(todo[gid] & (a > 0)).reshape(-1)  # the nonzero values of those tensors
        sa, sg = a[sel], gid[sel]
        rank = torch.arange(sel.numel()) - exclusive_cumsum(torch.bincount(sg, minlength=G))[sg]
        # Second guess: the gcd of the first few nonzero values, checked against all of them;
        # where it fits none but gives small levels, the gcd of all of them (rare).
        guess = _gcd_unit(sa[rank < _SAMPLE], sg[rank < _SAMPLE], G)
        for attempt in range(2):
            u32 = guess.to(torch.float32)
            cand = todo & candidates(u32) & (u32.to(torch.float64) == guess)
            if not bool(cand.any()):
                break
            inside = cand[sg]
            won = cand & _fits(sa[inside], sg[inside], torch.where(cand, u32, 1.0))
            unit = torch.where(won, u32, unit)
            todo &= ~won
            stray = cand & ~won
            if attempt or not bool(stray.any()):
                break
            inside = stray[sg]
            guess = _gcd_unit(sa[inside], sg[inside], G)
        # The rest: the nearest of 17 levels 0, u, .., 16 u with u = max|v| / 16 (rounded up).
        unit = torch.where(todo, level_unit(amax, DEFAULT_LEVELS).to(torch.float32), unit)
    unit = torch.where(has, unit, 0.0)
    level = torch.round(a / torch.where(has, unit, 1.0)[gid])  # exact on a grid: checked above
    if bool(broken.any()):
        level = torch.where(broken[gid], 0.0, level)
        unit = torch.where(broken, torch.nan, unit)
    level = level.to(torch.int32)
    neg = (x < 0) & (level > 0)
    dev = values.device
    return unit.view(counts.shape).to(dev), level.view(N, n).to(dev), neg.view(N, n).to(dev)


def pack_part(units: Tensor, levels: Tensor, neg: Tensor) -> Tensor:
    """One message's value part: its ``(S,)`` units, ``(n,)`` levels and signs -> uint8 bytes."""
    units, levels, neg = units.cpu(), levels.cpu(), neg.cpu()
    l1 = levels + 1
    zeros = (torch.frexp(l1.to(torch.float32))[1] - 1).to(torch.long)  # floor(log2(l + 1)), exact below 2^24
    ones_at = torch.cumsum(zeros + 1, 0) - 1  # where each code's unary part ends
    total = int(ones_at[-1]) + 1 if levels.numel() else 0
    bits = torch.zeros(8 * ((total + 7) // 8), dtype=torch.bool)
    bits[ones_at] = True
    at = torch.nonzero(zeros).reshape(-1)  # the levels > 0: N low bits of l + 1, then the sign
    za = zeros[at]
    width = za + 1
    field = ((l1[at].long() - (1 << za)) << 1) | neg[at].long()
    nbits = int(width.sum())
    rem = pack_fields(field, width, exclusive_cumsum(width), (nbits + 7) // 8)
    return torch.cat([as_bytes(units.to(torch.float32)), pack_bits(bits), rem])


def unpack_part(part: Tensor, n: int, counts: Tensor, who: str, i: int) -> Tensor:
    """The ``n`` float32 values of one message's value part (``part``: exactly its bytes), grouped
    into tensors by ``(S,)`` counts."""
    part = part.cpu()
    S = counts.numel()

    def fail(what: str):
        raise CodecError(f"{who}: message {i} {what}")

    if part.numel() < 4 * S:
        fail(f"is truncated: its value part has {part.numel()} bytes, the units alone need {4 * S}")
    units = from_bytes(part[: 4 * S], torch.float32)
    if bool((torch.signbit(units) & ~torch.isnan(units)).any()):
        fail("has a negative unit: corrupted")
    if bool(((counts == 0) & (units != 0)).any()):
        fail("has a nonzero unit for a tensor it holds no value of: corrupted")
    body = part[4 * S :]
    ones = torch.nonzero(unpack_bits(body)).reshape(-1)
    if ones.numel() < n:
        fail(f"is truncated: {ones.numel()} Elias codes found, {n} values expected")
    if n == 0:
        if body.numel():
            fail(f"has {body.numel()} trailing bytes")
        return torch.zeros(0)
    U = int(ones[n - 1]) // 8 + 1
    if ones.numel() > n and int(ones[n]) < 8 * U:
        fail("has a padding bit set after its unary codes: corrupted")
    zeros = torch.diff(ones[:n], prepend=ones.new_full((1,), -1)) - 1
    if int(zeros.max()) > MAX_ZEROS:
        fail(f"has an Elias code of {int(zeros.max())} leading zeros, longer than any level up to {MAX_LEVELS}: "
             "corrupted")
    at = torch.nonzero(zeros).reshape(-1)  # the levels > 0
    za = zeros[at]
    width = za + 1  # N low bits of l + 1, then the sign
    nbits = int(width.sum())
    need = U + (nbits + 7) // 8
    if body.numel() != need:
        what = "is truncated" if body.numel() < need else "has trailing bytes"
        fail(f"{what}: {4 * S + body.numel()} value bytes, its codes fill {4 * S + need}")
    rem = body[U:]
    if nbits % 8 and int(rem[-1]) & ((1 << (8 - nbits % 8)) - 1):
        fail("has a padding bit set after its remainder bits: corrupted")
    field = unpack_fields(rem, width, exclusive_cumsum(width))
    level = torch.zeros(n, dtype=torch.float32)
    level[at] = ((1 << za) + (field >> 1) - 1).to(torch.float32)
    out = torch.repeat_interleave(units, counts, output_size=n) * level
    neg = torch.zeros(n, dtype=torch.bool)
    neg[at] = (field & 1).bool()
    return torch.where(neg, -out, out)


class Elias:
    """``elias``: per tensor a float32 unit, per value an Elias gamma coded level and a sign bit
    (dense messages; sparse ones after idx32 indices). See the module docstring."""

    name = dense_name = "elias"
    lossless = False
    fixed_size = False
    dense_fixed_size = False

    def __init__(self, layout: Layout, settings=None):
        self.layout = layout
        self.tables = LayoutTables(layout)
        self.S = self.tables.S
        self.index = Idx32(layout)

    def __repr__(self) -> str:
        return f"Elias({self.layout!r})"

    def _numels(self, N: int) -> Tensor:
        return self.tables.on("cpu")["numels"].expand(N, self.S)

    # ------------------------------------------------------------------ dense
    def encode_dense(self, values: Tensor) -> tuple[Tensor, list[int]]:
        if values.dim() != 2 or values.shape[1] != self.layout.numel:
            raise ValueError(f"{self.name}: expected (N, {self.layout.numel}) values, got {tuple(values.shape)}")
        N = values.shape[0]
        units, levels, neg = quantize(values, self._numels(N), self.layout)
        parts = [pack_part(units[m], levels[m], neg[m]) for m in range(N)]
        return self._join(parts, values.device)

    def decode_dense(self, data: Tensor, sizes: Sequence[int], dtype: torch.dtype) -> Tensor:
        sizes, starts = self._check_batch(data, sizes)
        d, numels, host = self.layout.numel, self._numels(1)[0], data.cpu()
        rows = [unpack_part(host[a : a + s], d, numels, self.name, i) for i, (a, s) in enumerate(zip(starts, sizes))]
        out = torch.stack(rows) if rows else torch.zeros(0, d)
        return out.to(device=data.device, dtype=dtype)

    # ------------------------------------------------------------------ sparse
    def encode_sparse(self, indices: Tensor, values: Tensor) -> tuple[Tensor, list[int]]:
        if indices.dim() != 2 or indices.shape != values.shape:
            raise ValueError(f"{self.name}: expected (N, K) indices and values, got {tuple(indices.shape)} "
                             f"and {tuple(values.shape)}")
        N = indices.shape[0]
        idx, _ = self.index.encode(indices.to(torch.long))
        counts = self.tables.counts_of(indices.to(torch.long).cpu())
        units, levels, neg = quantize(values, counts)
        parts = [torch.cat([idx[m].cpu(), pack_part(units[m], levels[m], neg[m])]) for m in range(N)]
        return self._join(parts, values.device)

    def decode_sparse(self, data: Tensor, sizes: Sequence[int], nnz: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        sizes, starts = self._check_batch(data, sizes)
        N, nnz = len(sizes), int(nnz)
        if N == 0:
            return (torch.zeros(0, nnz, dtype=torch.long, device=data.device),
                    torch.zeros(0, nnz, dtype=dtype, device=data.device))
        host = data.cpu()
        indices, counts, used = self.index.decode(host, starts, sizes, 4 * self.S, nnz, self.name)
        B = int(used[0])
        vals = [unpack_part(host[a + B : a + s], nnz, counts[i], self.name, i)
                for i, (a, s) in enumerate(zip(starts, sizes))]
        return indices.to(data.device), torch.stack(vals).to(device=data.device, dtype=dtype)

    # ------------------------------------------------------------------
    @staticmethod
    def _join(parts: list[Tensor], device) -> tuple[Tensor, list[int]]:
        if not parts:
            return torch.zeros(0, dtype=torch.uint8, device=device), []
        return torch.cat(parts).to(device), [p.numel() for p in parts]

    def _check_batch(self, data: Tensor, sizes: Sequence[int]) -> tuple[list[int], list[int]]:
        sizes = check_messages(self.name, data, sizes)
        starts = exclusive_cumsum(torch.tensor(sizes, dtype=torch.long)).tolist() if sizes else []
        return sizes, starts

    def describe(self) -> dict:
        return {"codec": self.name, "codec_index": "idx32", "codec_value": self.name}
