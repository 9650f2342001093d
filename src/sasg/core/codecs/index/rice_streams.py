r"""The two Rice streams of a sectioned message (:mod:`.rice`, :mod:`.auto`), written and read
with tensor ops over every entry of a batch: the remainders (``b_s`` bits an entry) and the unary
parts (``1^q 0`` an entry), each message's streams starting on a byte boundary.

Kept apart from the message layout in :mod:`.rice` because this is the arithmetic (group sums,
stream bit positions, the int32/int64 choice) and that is the format (header, sections, checks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bitstream import exclusive_cumsum, ones_then_zero, pack_fields, unpack_fields, zero_positions
from .common import _fail, _first


def work_dtype(n_messages: int, d: int, nnz: int) -> torch.dtype:
    """The integer type of per-entry arithmetic: int32 (twice as fast as int64, memory-bound)
    wherever every index, gap, stream bit position and running sum of a batch fits in it."""
    return torch.int32 if n_messages * (2 * d + 64 * nnz + 64) < 2**31 else torch.int64


def diff_less_one(x: Tensor) -> Tensor:
    """``x[j] - x[j - 1] - 1`` (``x[0] - 1`` first), in ``x``'s dtype."""
    out = torch.empty_like(x)
    if x.numel():
        torch.sub(x[1:], x[:-1], out=out[1:])
        out[0] = x[0]
        out -= 1
    return out


def group_bounds(sizes: Tensor, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """For consecutive groups of ``sizes`` elements of ``x``: (cumsum of x in ``dtype``, int64 sum
    of x before each group, int64 sum up to each group's end). A group's exclusive cumsum is
    ``cumsum - x - before`` (``before`` repeated over the group)."""
    c = torch.cumsum(x, 0, dtype=dtype)
    end = torch.cumsum(sizes, 0)
    begin = end - sizes
    if c.numel() == 0:
        zero = torch.zeros_like(sizes)
        return c, zero, zero
    before = torch.where(begin > 0, c[(begin - 1).clamp(min=0)].long(), 0)
    after = torch.where(end > 0, c[(end - 1).clamp(min=0)].long(), 0)
    return c, before, after


def rice_streams(q: Tensor, r: Tensor, w: Tensor, per_msg: Tensor, it: torch.dtype):
    """The remainder and unary streams of every message (entries message after message,
    ``per_msg`` of them each): (remainder bytes, their length per message, unary bytes, length per
    message). Each message's streams start on a byte boundary."""
    E = q.numel()
    cw, before, after = group_bounds(per_msg, w, it)
    Rb = (after - before + 7) // 8
    shift = (8 * exclusive_cumsum(Rb) - before).to(it)  # each message's stream starts on a byte
    starts = cw - w + torch.repeat_interleave(shift, per_msg, output_size=E)
    rem = pack_fields(r, w, starts, int(Rb.sum()))
    q1 = q + 1
    cl, before, after = group_bounds(per_msg, q1, it)
    U = (after - before + 7) // 8
    shift = (8 * exclusive_cumsum(U) - before - 1).to(it)
    ends = cl + torch.repeat_interleave(shift, per_msg, output_size=E)
    un = ones_then_zero(ends, 8 * int(U.sum())).to(q.device)
    return rem, Rb, un, U


def rice_read(data, rem_at, Rb, un_at, U, w, per_msg, who, it: torch.dtype):
    """Read back what :func:`rice_streams` wrote, from each message's remainder stream at byte
    ``rem_at`` (``Rb`` bytes) and unary stream at ``un_at`` (``U`` bytes): (q, r) in ``it``."""
    E = w.numel()
    dev = data.device
    cw, before, after = group_bounds(per_msg, w, it)
    R = after - before
    starts = cw - w + torch.repeat_interleave((8 * rem_at - before).to(it), per_msg, output_size=E)
    r = unpack_fields(data, w, starts).to(it)
    pad = 8 * Rb - R
    has_pad = pad > 0
    if bool(has_pad.any()):
        last = data[(rem_at + Rb - 1)[has_pad]].long()
        bad = torch.zeros_like(has_pad)
        bad[has_pad] = (last & ((1 << pad[has_pad]) - 1)) != 0
        i = _first(bad)
        if i is not None:
            _fail(who, i, "has a padding bit set after its Rice remainders")
    # unary parts: q ones, then the zero that ends the code
    ub = torch.cat([data[a : a + u] for a, u in zip(un_at.tolist(), U.tolist())])
    z = zero_positions(ub).to(dev)
    Uoff8 = 8 * exclusive_cumsum(U)
    found = torch.diff(torch.searchsorted(z, torch.cat([Uoff8, 8 * U.sum().reshape(1)])))
    i = _first(found != per_msg)
    if i is not None:
        _fail(who, i, f"has {int(found[i])} unary codes in its unary stream, its counts say {int(per_msg[i])}")
    first = exclusive_cumsum(per_msg)
    nonempty = per_msg > 0
    used = torch.zeros_like(U)  # bits up to each message's last code
    if E:
        used[nonempty] = z[(first + per_msg - 1)[nonempty]] + 1 - Uoff8[nonempty]
    i = _first(U != (used + 7) // 8)
    if i is not None:
        _fail(who, i, f"has a unary stream of {int(U[i])} bytes whose codes end in byte {int((used[i] + 7) // 8)}")
    z = z.to(it)
    q = diff_less_one(z)
    if E:
        fn = first[nonempty]
        q[fn] = (z[fn].long() - Uoff8[nonempty]).to(it)
    return q, r


__all__ = ["diff_less_one", "group_bounds", "rice_read", "rice_streams", "work_dtype"]
