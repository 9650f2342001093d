r"""Exact per-segment top-k of rows in one compiled call (the kernel behind :mod:`sasg.core.topk`).

Contract: that of :mod:`sasg.core.topk`, for every segment ``[start_s, end_s)`` of every selected
row: exactly ``k_s`` positions, those of the ``k_s`` largest ``|x|``; ties to the **lower index**;
positions **ascending**; NaN larger than every number (all NaNs equal). The result is the same,
bit for bit, as the torch path's (``SASG_KERNELS=0``); only the time differs.

How (one call for all rows and segments, so per-tensor Python and torch fixed costs vanish):

* *Integer keys.* A float's bits with the sign cleared order like its magnitude (``+inf`` above
  every number); clamping them at ``inf + 1`` maps every NaN to one key above ``inf``. So the
  kernel works on the data's bits (``int32`` for float32, ``int64`` for float64) and the rule
  becomes "the ``k`` largest keys, ties to the lower index": no float compares, no NaN cases.
* *Threshold from a sample*, as the torch path: the keys at fixed positions (one pseudo-random
  position per stratum of the segment) give ``t_c``, the sample's ``rank``-th largest key, a
  little below the segment's k-th largest (:func:`sasg.core.topk._sample_plan` sizes it).
* *Candidates in one pass.* ``key > t_c`` is tested a block of :data:`_BLOCK` entries at a time
  (a vectorised max over the block); only blocks with a candidate are walked to append their
  positions. If there are at least ``k`` candidates, every entry outside them is at most ``t_c``,
  below every candidate: the top k are among them. Otherwise (an unlucky sample, or too many
  equal keys) the segment is selected directly, over all its entries: same result, more time.
* *Exact selection* among the candidates (or all entries): the k-th largest key ``t`` by
  ``np.partition``; then one walk in index order emits every key ``> t`` and, of those ``== t``,
  the first ones, until ``k``: ascending positions and the lower-index tie rule at once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from numba.cpython.unsafe.numbers import trailing_zeros

from . import available, jit, on_warm

_CHUNK = 4096  # entries whose candidate bits are made before they are read (512 bytes of bits)

# (sign-clearing mask, key of every NaN = bits of +inf plus one) for each supported float type.
_KEYS = {
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800001),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000001),
}


def supports(x: Tensor) -> bool:
    """True when :func:`select` can take ``x`` (shape ``(N, n)``): kernels on, a CPU tensor of
    float32 or float64 whose rows are contiguous (a column slice of a wider batch is fine)."""
    return (
        available()
        and x.device.type == "cpu"
        and x.dtype in _KEYS
        and x.dim() == 2
        and (x.stride(1) == 1 or x.shape[1] <= 1)
    )


def select(
    x: Tensor,
    rows,
    plan: "SegmentPlan",
    scratch: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The top ``k_s`` of every segment of the rows ``rows`` of ``x`` (where ``supports(x)``):
    ``(indices, values)``, both of shape ``(len(rows), sum k_s)``; indices are column positions in
    ``x`` (int64), ascending within each segment, segments in plan order; values are ``x``'s entries
    there. ``rows``: row numbers (a sequence, array or tensor), None for all rows. ``scratch``: two 1-D tensors (int64 and the key type) of at least ``plan.longest``
    entries, reused between calls; made afresh when None. ``x`` is only read."""
    rows = _row_array(rows, x.shape[0])
    key_dtype, mask, nan_key = _KEYS[x.dtype]
    np_key = np.int32 if key_dtype == torch.int32 else np.int64
    mask, nan_key = np_key(mask), np_key(nan_key)  # the data's width, so the compares stay narrow
    n_rows = len(rows)
    indices = torch.empty(n_rows, plan.nnz, dtype=torch.long)
    values = torch.empty(n_rows, plan.nnz, dtype=x.dtype)
    if n_rows == 0 or plan.nnz == 0:
        return indices, values
    # One flat view of the rows' storage (no copy): row r starts at r * stride(0).
    span = (x.shape[0] - 1) * x.stride(0) + x.shape[1]
    flat = torch.as_strided(x.detach(), (span,), (1,)).view(key_dtype).numpy()
    row_starts = np.asarray(rows, dtype=np.int64) * x.stride(0)
    if scratch is None:
        scratch = (torch.empty(plan.longest, dtype=torch.long), torch.empty(plan.longest, dtype=key_dtype))
    _select_rows(
        flat, row_starts, plan.starts, plan.ends, plan.ks, plan.sizes, plan.ranks, mask, nan_key,
        indices.numpy(), values.view(key_dtype).numpy(), scratch[0].numpy(), scratch[1].numpy(),
    )
    return indices, values


def _row_array(rows, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, Tensor):
        out = rows.detach().cpu().reshape(-1).to(torch.long).numpy()
    else:
        out = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64).reshape(-1)
    if len(out) and (int(out.min()) < -n or int(out.max()) >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(out < 0, out + n, out)  # (the kernel reads memory unchecked)


class SegmentPlan:
    """Per-segment constants of :func:`select` as arrays: ``starts``/``ends`` (columns), ``ks``,
    and the sample ``sizes``/``ranks`` (size 0: no sample, select directly)."""

    def __init__(self, starts, ends, ks, sample_plan):
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.ks = np.asarray(ks, dtype=np.int64)
        lengths = self.ends - self.starts
        if len(lengths) and not bool(((self.ks >= 1) & (self.ks <= lengths)).all()):
            raise ValueError("every k_s must be in [1, d_s]")
        # (a sampled segment's strata are addressed with 32-bit arithmetic)
        plans = [sample_plan(int(n), int(k)) if k < n < 2**31 else None for n, k in zip(lengths, self.ks)]
        self.sizes = np.array([p[0] if p else 0 for p in plans], dtype=np.int64)
        self.ranks = np.array([p[1] if p else 0 for p in plans], dtype=np.int64)
        self.nnz = int(self.ks.sum())
        self.longest = int(lengths.max()) if len(lengths) else 0

    def scratch(self, workspace, like: Tensor) -> tuple[Tensor, Tensor]:
        """The two scratch buffers of :func:`select`, kept in ``workspace``."""
        key_dtype = _KEYS[like.dtype][0]
        n = (max(self.longest, 1),)
        return (workspace.buffer("topk-kernel-idx", n, like, torch.long),
                workspace.buffer("topk-kernel-keys", n, like, key_dtype))


@jit
def _select_rows(flat, row_starts, starts, ends, ks, sizes, ranks, mask, nan_key,
                 out_idx, out_val, cand, keys):
    words = np.empty(_CHUNK // 64, dtype=np.uint64)  # candidate bits of one chunk
    for i in range(row_starts.shape[0]):
        base = row_starts[i]
        col = 0
        for s in range(starts.shape[0]):
            k = ks[s]
            # Slices, so that every loop below counts from 0: numba then drops its negative-index
            # fix-up, which would keep LLVM from vectorising them (measured: 16x on a max).
            seg = flat[base + starts[s] : base + ends[s]]
            _select_segment(seg, k, sizes[s], ranks[s], mask, nan_key, cand, keys, words,
                            out_idx[i, col : col + k], out_val[i, col : col + k])
            for j in range(k):
                out_idx[i, col + j] += starts[s]
            col += k


@jit
def _select_segment(seg, k, size, rank, mask, nan_key, cand, keys, words, out_idx, out_val):
    """Top k of ``seg`` into ``out_idx`` (positions in ``seg``) and ``out_val`` (the bits)."""
    n = seg.shape[0]
    if k >= n:
        for j in range(n):
            out_idx[j] = j
            out_val[j] = seg[j]
        return
    c = 0
    if size > 0:
        t_c = _sample_threshold(seg, size, rank, mask, nan_key, keys)
        if t_c < nan_key:  # (a NaN threshold would leave no key above it)
            c = _collect(seg, t_c, mask, cand, words)
    if c < k:  # no sample, or an unlucky one: every entry is a candidate
        c = n
        for j in range(n):
            cand[j] = j
    for j in range(c):
        keys[j] = min(seg[cand[j]] & mask, nan_key)
    t = np.partition(keys[:c], c - k)[c - k]  # the k-th largest key
    above = 0
    for j in range(c):
        above += keys[j] > t
    need = k - above  # places left for keys equal to t: the lowest positions take them
    m = 0
    for j in range(c):
        kj = keys[j]
        if kj > t or (kj == t and need > 0):
            if kj == t:
                need -= 1
            p = cand[j]
            out_idx[m] = p
            out_val[m] = seg[p]
            m += 1
            if m == k:
                break


@jit
def _sample_threshold(seg, size, rank, mask, nan_key, keys):
    """The ``rank``-th largest key among ``size`` positions of ``seg``, one in each stratum."""
    width = np.uint64(seg.shape[0] // size)
    h = np.uint64(0x5A56) ^ np.uint64(seg.shape[0])
    for j in range(size):
        # A 64-bit LCG's high half scaled to [0, width): a fixed offset inside stratum j (a
        # multiply and a shift; a modulo here cost more than the read).
        h = h * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        offset = np.int64(((h >> np.uint64(32)) * width) >> np.uint64(32))
        keys[j] = min(seg[j * np.int64(width) + offset] & mask, nan_key)
    return np.partition(keys[:size], size - rank)[size - rank]


@jit
def _collect(seg, t_c, mask, cand, words):
    """Positions ``p`` of ``seg`` with ``seg[p] & mask > t_c`` into ``cand``, ascending; their
    count. ``t_c`` is below the NaN key, so every NaN bit pattern is above it as it stands.

    A chunk at a time: first its candidate bits as 64-bit words (a vectorised compare), then the
    set bits of the words (few: about 1.5 %). Fused in one loop, the two ran 3x slower."""
    n = seg.shape[0]
    c = 0
    for a in range(0, n - n % _CHUNK, _CHUNK):
        chunk = seg[a : a + _CHUNK]
        for q in range(_CHUNK // 64):
            w = np.uint64(0)
            for j in range(64):
                w |= np.uint64((chunk[q * 64 + j] & mask) > t_c) << np.uint64(j)
            words[q] = w
        for q in range(_CHUNK // 64):
            w = words[q]
            while w:
                cand[c] = a + q * 64 + trailing_zeros(w)
                c += 1
                w &= w - np.uint64(1)
    for p in range(n - n % _CHUNK, n):
        cand[c] = p
        c += (seg[p] & mask) > t_c
    return c


def _warm() -> None:
    from ..core.topk import _sample_plan

    plan = SegmentPlan([0, 1000], [1000, 60000], [3, 600], _sample_plan)
    for dtype in _KEYS:
        select(torch.zeros(1, 60000, dtype=dtype), np.zeros(1, dtype=np.int64), plan)


on_warm(_warm)
