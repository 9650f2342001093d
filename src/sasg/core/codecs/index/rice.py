r"""``rice`` — Golomb–Rice codes of the gaps, one Rice parameter ``b_s`` per tensor:
``g = q 2^{b_s} + r`` with ``q = g >> b_s`` written in unary (``q`` ones then a zero) and
``r < 2^{b_s}`` in ``b_s`` bits, ``b_s = max(0, floor(log2(mean_j g_j)))`` (0 for an empty
tensor, at most ``min(48, floor(log2 d_s))``). For geometric gaps of mean ``m`` this costs about
``log2 m + 2`` bits per entry. Two streams make decoding vectorizable: the unary parts of all
entries in one (a decoder finds the terminating zeros with ``nonzero``), the remainders in
another (their widths follow from the header). Bytes of one message::

    counts  S x W   c_s (int32/int64)
    U       W       length in bytes of the unary stream
    params  S x 1   b_s (uint8)
    remainders      ceil(sum_s c_s b_s / 8) bytes: every entry's r in b_s bits, tensor after
                    tensor; zero-padded
    unary           U bytes: every entry's 1^q 0, in the same order; padded with ones (fewer
                    than 8 padding bits)

Header: ``(S + 1) W + S`` bytes (24 for the 4 tensors of an FC 784-512-10, 314 for the 62 of a
ResNet-18). ``c(b + 1) + sum q`` bits per tensor plus the header and byte padding.

Notation as in :mod:`sasg.core.codecs.index`. The sectioned message (:class:`_Sections`) and its
two streams serve :mod:`.auto` too; the streams' arithmetic is in :mod:`.rice_streams`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ....kernels import rice as kernel
from ....kernels import rice_read as read_kernel
from ..bitstream import (
    as_bytes,
    as_numpy,
    bit_length,
    exclusive_cumsum,
    from_bytes,
    on_kernels,
    pack_bits,
    set_bit_positions,
)
from .common import IndexCode, _check_ascending, _check_room, _fail, _first, message_rows
from .rice_streams import diff_less_one, group_bounds, rice_read, rice_streams, work_dtype


def _read_idx32(data, p0, p2, k0, off, nums, index_dtype, S, who) -> Tensor:
    """The indices of the idx32 sections (``data[p0:p2]`` of each message; ``k0``: each entry's
    tensor ``n S + s``), checked to lie inside their tensor and to ascend within it."""
    raw = torch.cat([data[a:z] for a, z in zip(p0.tolist(), p2.tolist())])
    idx0 = from_bytes(raw, index_dtype).long()
    lo = off[k0]
    same = torch.zeros_like(k0, dtype=torch.bool)
    same[1:] = k0[1:] == k0[:-1]
    bad = (idx0 < lo) | (idx0 >= lo + nums[k0]) | (same & (idx0 <= torch.roll(idx0, 1)))
    j = _first(bad)
    if j is not None:
        _fail(who, int(k0[j]) // S, "has an idx32 index outside its tensor or not ascending")
    return idx0


def _read_bitmaps(data, p2, pr, B2b, c, tflat, off, nums, S, who) -> Tensor:
    """The indices of the bitmap sections (``data[p2:pr]``, ``B2b`` bytes, of each message: the
    ``d_s`` bits of every tag-2 tensor back to back), checked: no padding bit set, and as many set
    bits per tensor as its count ``c``."""
    N = tflat.numel() // S
    keys = torch.arange(N * S, device=data.device)
    raw = torch.cat([data[a:z] for a, z in zip(p2.tolist(), pr.tolist())])
    pos = set_bit_positions(raw)
    reg_len = nums * (tflat == 2)
    reg_start = (torch.cumsum(reg_len.view(N, S), 1) - reg_len.view(N, S)).reshape(-1)
    reg_start = reg_start + torch.repeat_interleave(8 * exclusive_cumsum(B2b), S)
    rkey = keys[tflat == 2]
    rs, rl = reg_start[rkey], reg_len[rkey]
    reg = (torch.searchsorted(rs, pos, right=True) - 1).clamp(min=0)
    loc = pos - rs[reg]
    j = _first((loc < 0) | (loc >= rl[reg]))
    if j is not None:
        _fail(who, int(rkey[reg[j]]) // S, "has a padding bit set in its bitmap section")
    found = torch.bincount(reg, minlength=rkey.numel())
    j = _first(found != c[rkey])
    if j is not None:
        _fail(who, int(rkey[j]) // S,
              f"has {int(found[j])} bits set in the bitmap of tensor {int(rkey[j]) % S}, "
              f"its count says {int(c[rkey[j]])}")
    return loc + off[rkey[reg]]


def _read_rice_indices(data, pr, Rb, pu, U, b, c1, off, nums, it, d, S, who) -> Tensor:
    """The indices of the Rice-coded tensors (``c1`` entries each, parameters ``b``) from each
    message's remainders at ``pr`` (``Rb`` bytes) and unary stream at ``pu`` (``U`` bytes), in
    ``it`` arithmetic; checked that no gap runs past its tensor. int64."""
    N = c1.numel() // S
    dev = data.device
    keys = torch.arange(N * S, device=dev)
    per_msg = c1.view(N, S).sum(1)
    E1 = int(per_msg.sum())
    if not (E1 or int(U.sum()) or int(Rb.sum())):
        return torch.zeros(0, dtype=torch.long, device=dev)
    w = torch.repeat_interleave(b.reshape(-1).to(it), c1, output_size=E1)
    q, r = rice_read(data, pr, Rb, pu, U, w, per_msg, who, it)
    if not E1:
        return torch.zeros(0, dtype=torch.long, device=dev)
    bmx = int(b.max())
    if (int(q.max()) << bmx) + (1 << bmx) > d:  # a gap may pass its tensor: check each
        n1 = torch.repeat_interleave(nums, c1, output_size=E1)
        j = _first(q > ((n1 - 1) >> w))
        if j is not None:
            k1 = torch.repeat_interleave(keys, c1, output_size=E1)
            _fail(who, int(k1[j]) // S, "has a Rice gap past the end of its tensor")
    # Now every gap < d. index = offset + sum of (gap + 1) over the tensor's entries so
    # far, less one: a running sum of the batch's (gap + 1), less its value before the tensor.
    g1 = (q << w) | r
    g1 += 1
    y, base, _ = group_bounds(c1, g1, it)
    if it == torch.int32 and E1 > 1 and bool((y[1:] <= y[:-1]).any()):
        # The sum wrapped: only corrupted gaps add up that far; redo it exactly (the
        # range check below then names the message).
        y, base, _ = group_bounds(c1, g1, torch.int64)
    idx1 = y + torch.repeat_interleave((off - base - 1).to(y.dtype), c1, output_size=E1)
    nz = c1 > 0
    lastpos = (exclusive_cumsum(c1) + c1 - 1)[nz]
    j = _first(idx1[lastpos].long() >= (off + nums)[nz])
    if j is not None:
        _fail(who, int(keys[nz][j]) // S, "has a Rice-coded index past the end of its tensor")
    return idx1.long()


class _Sections(IndexCode):
    """``rice`` and ``auto``: a header (counts, unary length, Rice parameters[, tags]) and up to
    four sections (idx32, bitmap, remainders, unary). ``rice`` is ``auto`` with every tag 1 and
    no tag bytes."""

    TAGS = False  # whether the header carries a tag per tensor

    def header_bytes(self) -> int:
        t = self.tables
        return (t.S + 1) * t.W + t.S * (2 if self.TAGS else 1)

    # ---------------------------------------------------------------- encode
    def encode(self, indices: Tensor) -> tuple[list[list[Tensor]] | tuple[Tensor, list[int]], Tensor]:
        if on_kernels(indices):
            t = self.tables
            data, sizes, counts, err = kernel.sections_encode(
                as_numpy(indices, np.int64), *t.arrays(), t.d, t.W, int(self.TAGS), kernel.CHOOSE)
            if not err:  # else the reference raises its error
                return (torch.from_numpy(data), sizes.tolist()), torch.from_numpy(counts)
        return self._encode_torch(indices)

    def _encode_torch(self, indices: Tensor) -> tuple[list[list[Tensor]], Tensor]:
        """The reference encoder: vectorized torch ops over every entry of the batch."""
        t = self.tables
        tab = t.on(indices.device)
        S, W = t.S, t.W
        N, K = indices.shape
        dev = indices.device
        indices = indices.contiguous()
        _check_ascending(indices, t.d, self.name, error=ValueError)
        counts = t.counts_of(indices)
        it = work_dtype(N, t.d, K)
        c = counts.reshape(-1)
        flat = indices.reshape(-1)
        off = tab["offsets"].repeat(N)
        first = exclusive_cumsum(c)
        nonempty = c > 0
        # gaps: index - previous index - 1 inside a tensor; a tensor's first from its first entry
        gap = diff_less_one(flat.to(it))
        fpos = first[nonempty]
        gap[fpos] = (flat[fpos] - off[nonempty]).to(it)
        last_local = flat[(first + c - 1).clamp(min=0)] - off if flat.numel() else torch.zeros_like(c)
        sum_gap = torch.where(nonempty, last_local + 1 - c, 0)
        b = torch.minimum((bit_length(sum_gap // c.clamp(min=1)) - 1).clamp(min=0), tab["bmax"].repeat(N))
        w = torch.repeat_interleave(b.to(it), c, output_size=N * K)
        q = gap >> w
        r = gap - (q << w)
        numels = tab["numels"].repeat(N)
        if self.TAGS:
            _, before, after = group_bounds(c, q, it)
            tag = self.choose_tags(c * (8 * W), c * (b + 1) + after - before, numels)
        else:
            tag = torch.ones_like(c)
        b = torch.where(tag == 1, b, 0)

        def per_message(x: Tensor) -> Tensor:  # (N*S,) -> (N,): sum over each message's tensors
            return x.view(N, S).sum(1)

        empty = [flat.new_zeros(0, dtype=torch.uint8)] * N
        sec0 = sec2 = empty
        if bool((tag == 1).all()):
            per_msg = per_message(c)
        else:
            tag_e = torch.repeat_interleave(tag, c, output_size=N * K)
            m0, m1, m2 = tag_e == 0, tag_e == 1, tag_e == 2
            n0 = per_message(c * (tag == 0))
            if int(n0.sum()):
                sec0 = as_bytes(flat[m0].to(t.index_dtype)).split((n0 * W).tolist())
            reg_len = numels * (tag == 2)
            B2b = (per_message(reg_len) + 7) // 8
            if int(B2b.sum()):
                reg_start = (torch.cumsum(reg_len.view(N, S), 1) - reg_len.view(N, S)).reshape(-1)
                reg_start = reg_start + torch.repeat_interleave(8 * exclusive_cumsum(B2b), S) - off
                pos2 = flat[m2] + torch.repeat_interleave(reg_start, c, output_size=N * K)[m2]
                bits = torch.zeros(8 * int(B2b.sum()), dtype=torch.bool, device=dev)
                bits[pos2] = True
                sec2 = pack_bits(bits).to(dev).split(B2b.tolist())
            q, r, w = q[m1], r[m1], w[m1]
            per_msg = per_message(c * (tag == 1))
        rem, Rb, un, U = rice_streams(q, r, w, per_msg, it)
        sec_r, sec_u = rem.split(Rb.tolist()), un.split(U.tolist())
        parts = [as_bytes(counts.to(t.index_dtype)), as_bytes(U.view(N, 1).to(t.index_dtype)),
                 b.view(N, S).to(torch.uint8)]
        if self.TAGS:
            parts.append(tag.view(N, S).to(torch.uint8))
        header = torch.cat(parts, dim=1)
        pieces = [[header[n], sec0[n], sec2[n], sec_r[n], sec_u[n]] for n in range(N)]
        return pieces, counts

    # ---------------------------------------------------------------- decode
    def nnz_of(self, data, starts, sizes, value_nbytes, who) -> list[int]:
        """The sum of each message's per-tensor counts (its header's first ``S W`` bytes)."""
        t = self.tables
        _check_room(who, sizes, self.header_bytes())
        hdr = message_rows(data, starts, sizes, 0, t.S * t.W).contiguous()
        return from_bytes(hdr, t.index_dtype).long().sum(1).tolist()

    def decode(self, data, starts, sizes, tail, nnz, who):
        if on_kernels(data):
            t = self.tables
            offsets, numels, bmax = t.arrays()
            indices = np.empty((len(sizes), nnz), np.int64)  # allocated here, not in the kernel: see its module
            counts, used, err = read_kernel.sections_decode(
                as_numpy(data, np.uint8), np.asarray(starts, np.int64), np.asarray(sizes, np.int64), int(tail),
                int(nnz), offsets, numels, bmax, t.W, int(self.TAGS), indices)
            if not err:  # else the reference names what is wrong
                return torch.from_numpy(indices), torch.from_numpy(counts), torch.from_numpy(used)
        return self._decode_torch(data, starts, sizes, tail, nnz, who)

    def _decode_torch(self, data, starts, sizes, tail, nnz, who):
        """The reference decoder (and the one that raises: see :mod:`sasg.kernels.rice`). Checks
        come in the kernel's order: headers, lengths, idx32, bitmap, then the Rice sections."""
        t = self.tables
        tab = t.on(data.device)
        S, W, N = t.S, t.W, len(sizes)
        dev = data.device
        H = self.header_bytes()
        counts, U, b, tag = self._read_headers(data, starts, sizes, tail, nnz, who, tab)
        n0 = (counts * (tag == 0)).sum(1)
        B2b = ((tab["numels"] * (tag == 2)).sum(1) + 7) // 8
        Rb = ((counts * b).sum(1) + 7) // 8  # b is 0 outside rice tensors
        start_t = torch.tensor(list(starts), dtype=torch.long, device=dev)
        p0 = start_t + H
        p2 = p0 + n0 * W
        pr = p2 + B2b
        pu = pr + Rb
        end = pu + U
        _check_room(who, sizes, end - start_t + tail)

        c = counts.reshape(-1)
        tflat = tag.reshape(-1)
        off = tab["offsets"].repeat(N)
        nums = tab["numels"].repeat(N)
        out = None
        c1 = c * (tflat == 1)
        if not bool((tag == 1).all()):
            out = torch.empty(N * nnz, dtype=torch.long, device=dev)
            tag_e = torch.repeat_interleave(tflat, c, output_size=N * nnz)
            if int(n0.sum()):
                k0 = torch.repeat_interleave(torch.arange(N * S, device=dev), c, output_size=N * nnz)[tag_e == 0]
                out[tag_e == 0] = _read_idx32(data, p0, p2, k0, off, nums, t.index_dtype, S, who)
            if int(B2b.sum()):
                out[tag_e == 2] = _read_bitmaps(data, p2, pr, B2b, c, tflat, off, nums, S, who)
        idx1 = _read_rice_indices(data, pr, Rb, pu, U, b, c1, off, nums, work_dtype(N, t.d, nnz), t.d, S, who)
        if out is None:
            out = idx1
        else:
            out[tag_e == 1] = idx1
        return out.view(N, nnz), counts, end - start_t

    def _read_headers(self, data, starts, sizes, tail, nnz, who, tab):
        """Every message's header, checked against the tables: (counts, unary length ``U``,
        Rice parameters ``b``, tags), int64, ``(N, S)`` but ``U`` ``(N,)``."""
        t = self.tables
        S, W, N = t.S, t.W, len(sizes)
        H = self.header_bytes()
        _check_room(who, sizes, H + tail)
        hdr = message_rows(data, starts, sizes, 0, H).contiguous()
        counts = from_bytes(hdr[:, : S * W], t.index_dtype).long()  # (N, S)
        U = from_bytes(hdr[:, S * W : (S + 1) * W], t.index_dtype).long().reshape(N)
        b = hdr[:, (S + 1) * W : (S + 1) * W + S].long()
        tag = hdr[:, (S + 1) * W + S :].long() if self.TAGS else torch.ones_like(b)

        i = _first((tag > 2).any(1))
        if i is not None:
            _fail(who, i, f"has a tensor tag {int(tag[i].max())} (0 = idx32, 1 = rice, 2 = bitmap): corrupted header")
        i = _first(((counts < 0) | (counts > tab["numels"])).any(1))
        if i is not None:
            _fail(who, i, f"has a per-tensor count outside 0..d_s (counts {counts[i].tolist()[:8]}): corrupted header")
        total = counts.sum(1)
        i = _first(total != nnz)
        if i is not None:
            _fail(who, i, f"has per-tensor counts summing to {int(total[i])}, expected {nnz}: corrupted header")
        i = _first(((b > tab["bmax"]) | ((tag != 1) & (b != 0))).any(1))
        if i is not None:
            _fail(who, i, f"has a Rice parameter out of range ({b[i].tolist()[:8]}): corrupted header")
        size_t = torch.tensor(list(sizes), dtype=torch.long, device=data.device)
        i = _first((U < 0) | (U > size_t))
        if i is not None:
            _fail(who, i, f"has an impossible unary stream length {int(U[i])}: corrupted header")
        return counts, U, b, tag


class Rice(_Sections):
    """``rice``: Golomb–Rice coded gaps, per-tensor parameter (see the module docstring)."""

    name = "rice"
    TAGS = False
