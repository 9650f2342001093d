r"""Exact per-segment top-k of rows in one compiled call (the kernel behind :mod:`sasg.core.selection`).

Contract: that of :mod:`sasg.core.selection`, for every segment ``[start_s, end_s)`` of every selected
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
  little below the segment's k-th largest (:func:`sample_plan` sizes it).
* *Candidates in one pass.* ``key > t_c`` for 64 entries is made into one 64-bit word by a
  vector compare, and the set bits of the words give the positions, ascending. If there
  are at least ``k`` candidates, every entry outside them is at most ``t_c``, below every
  candidate: the top k are among them. Otherwise (no sample planned for a short segment, an
  unlucky sample, too many equal keys) the segment is selected directly: same result.
* *Exact selection* among the candidates (or all entries): the k-th largest key ``t`` by a
  quickselect; then the positions with a key ``>= t`` in order. If there are more than ``k``
  (a tie at ``t``), the keys equal to ``t`` fill the places left, lowest positions first:
  ascending positions and the lower-index tie rule at once.

Measured on FC 784-512-10 (one row of 407,050 floats, 4 segments, h = 1 %): about 0.06 ms for
the whole ``TopK.compress``, 2.2-2.6 memory passes (a ``clone`` of the row), where the torch path
(``SASG_KERNELS=0``) takes 0.8-1.4 ms; on ResNet-18's 11.2M parameters, 10 rows: 0.26-0.33 of a
``clone``, 1.4-1.5 times a bare ``copy_`` of them (``benchmarks/compress.py``, 2-core AMD EPYC,
``docs/performance.md``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import available, jit, on_warm
from .vector import above_bits

try:
    from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM's cttz: one instruction
except ImportError:  # pragma: no cover - no numba: the kernels are off (see sasg.kernels)
    trailing_zeros = None

# A segment's sample holds about this many of its top k (else, for medium segments, the second
# figure; below that, no sample). The torch path takes 64: here a sample's scattered reads cost
# more, relative to the candidates they save (FC row: 0.079 ms at 32, 0.090 ms at 64).
_SAMPLE_HITS = (32, 24)
_SAMPLE_MAX_FRACTION = 8  # a sample of at most n / 8 entries

_SUB = 31  # sub-sample of a quickselect round, sorted to choose its pivot
_NUDGE = 3  # ... whose pivot is taken this many places past the target's rank in it
_BLOCK = 64  # an unsampled segment of at least _BLOCK k entries: threshold from its blocks' maxima

# For each supported float type: the integer type of its bits, the mask that clears the sign,
# and the one key of every NaN (the bits of +inf, plus one).
_KEYS = {
    torch.float32: (torch.int32, np.int32(0x7FFFFFFF), np.int32(0x7F800001)),
    torch.float64: (torch.int64, np.int64(0x7FFFFFFFFFFFFFFF), np.int64(0x7FF0000000000001)),
}


def supports(x: Tensor) -> bool:
    """True when :func:`select` can take ``x`` (shape ``(N, n)``): kernels on, a CPU tensor of
    float32 or float64 whose rows are contiguous (a column slice of a wider batch is fine)."""
    return (
        x.dtype in _KEYS
        and x.device.type == "cpu"
        and x.dim() == 2
        and (x.stride(1) == 1 or x.shape[1] <= 1)
        and available()
    )


def sample_plan(n: int, k: int) -> tuple[int, int] | None:
    """(sample size, rank in the sample) for a segment of ``n`` entries with ``k`` kept, or None
    (select directly). The sample's rank-th largest lies below the segment's k-th largest unless
    ``rank`` or more of the sample land in the top k: ``rank`` is the expected count + 4 standard
    deviations (binomial) + 1, so that happens about once in 30,000 (then: the direct path)."""
    if not 1 <= k < n < 2**31:  # (strata are addressed with 32-bit arithmetic)
        return None
    for hits in _SAMPLE_HITS:
        size = math.ceil(hits * n / k)
        if size * _SAMPLE_MAX_FRACTION <= n:
            return size, min(size, math.ceil(hits + 4.0 * math.sqrt(hits)) + 1)
    return None


class SegmentPlan:
    """What :func:`select` needs to know of the segments, as arrays: their columns ``starts`` and
    ``ends``, the ``ks`` kept, the sample ``sizes`` and ``ranks`` (size 0: select directly); and
    its scratch buffers. A plan is used by one call at a time (like a :class:`Workspace`)."""

    def __init__(self, starts, ends, ks):
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.ks = np.asarray(ks, dtype=np.int64)
        lengths = self.ends - self.starts
        if len(lengths) and not bool(((self.ks >= 1) & (self.ks <= lengths)).all()):
            raise ValueError("every k_s must be in [1, d_s]")
        plans = [sample_plan(int(n), int(k)) for n, k in zip(lengths, self.ks)]
        self.sizes = np.array([p[0] if p else 0 for p in plans], dtype=np.int64)
        self.ranks = np.array([p[1] if p else 0 for p in plans], dtype=np.int64)
        self.nnz = int(self.ks.sum())
        self.longest = int(lengths.max()) if len(lengths) else 0
        self.width = int(self.ends.max()) if len(lengths) else 0  # columns the rows must have
        if len(lengths) and int(self.starts.min()) < 0:
            raise ValueError("segments start at column 0 or later")
        self._scratch: dict = {}
        self._starts_key = None  # (rows as a tuple, n, row stride) of the last call ...
        self._starts = np.zeros(0, np.int64)  # ... and where those rows start in the flat storage
        self._flat_key, self._flat = None, None  # (data_ptr, shape, strides, dtype) of the last rows, their keys

    def scratch(self, key_dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate positions (uint64, ``longest``), their keys (``longest``) and room to select
        among them (``2 longest``), made once per key type."""
        got = self._scratch.get(key_dtype)
        if got is None:
            n = max(self.longest, 1)
            got = self._scratch[key_dtype] = (np.empty(n, np.uint64), np.empty(n, _NUMPY[key_dtype]),
                                              np.empty(2 * n, _NUMPY[key_dtype]))
        return got

    def flat_keys(self, x: Tensor, key_dtype: torch.dtype) -> np.ndarray:
        """The storage of ``x``'s rows as one flat array of keys (row ``r`` at ``r * stride(0)``).
        The last one is kept, keyed by where it lies: a hook selects from the same error buffer
        every round. (The kept array holds that storage alive, so no other tensor can lie there.)"""
        key = (x.data_ptr(), x.shape, x.stride(), x.dtype)
        if key == self._flat_key:
            return self._flat
        if x.is_contiguous():
            flat = x.detach().numpy().view(_NUMPY[key_dtype]).reshape(-1)
        else:  # a column slice: one flat view of the rows' storage
            span = (x.shape[0] - 1) * x.stride(0) + x.shape[1]
            flat = torch.as_strided(x.detach(), (span,), (1,)).view(key_dtype).numpy()
        self._flat_key, self._flat = key, flat
        return flat

    def row_starts(self, rows, n: int, stride: int) -> np.ndarray:
        """Where the rows ``rows`` (None: all ``n``; a sequence, array or tensor) start in the flat
        storage of rows ``stride`` apart, int64, checked: the kernel reads memory unchecked.
        The answer for the last plain sequence (or None) is kept: a hook asks for the same rows
        every round, and the conversion and check cost more than a small top-k's selection."""
        key = None
        if rows is None or isinstance(rows, (list, tuple)):
            key = (None if rows is None else tuple(rows), n, stride)
            if key == self._starts_key:
                return self._starts
        if rows is None:
            out = np.arange(n, dtype=np.int64)
        elif isinstance(rows, Tensor):
            out = rows.detach().cpu().reshape(-1).to(torch.long).numpy()
        else:
            out = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64).reshape(-1)
        if len(out) and (int(out.min()) < 0 or int(out.max()) >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = out * stride
        if key is not None:
            self._starts_key, self._starts = key, out
        return out


_NUMPY = {torch.int32: np.int32, torch.int64: np.int64, torch.float32: np.float32, torch.float64: np.float64}


def select(x: Tensor, rows, plan: SegmentPlan) -> tuple[Tensor, Tensor]:
    """The top ``k_s`` of every segment of the rows ``rows`` of ``x`` (where ``supports(x)``;
    ``rows``: a sequence, array or tensor of row numbers, None for all):
    ``(indices, values)``, both of shape ``(len(rows), sum k_s)``; indices are column positions in
    ``x`` (int64), ascending within each segment, segments in plan order; values are ``x``'s
    entries there (copies). ``x`` is only read."""
    key_dtype, mask, nan_key = _KEYS[x.dtype]
    if x.shape[1] < plan.width:  # (the kernel reads memory unchecked)
        raise ValueError(f"rows of {x.shape[1]} entries, but the segments reach column {plan.width}")
    starts = plan.row_starts(rows, x.shape[0], x.stride(0))
    if len(starts) == 0 or plan.nnz == 0:  # (torch's strides: numpy's for an empty array are 0)
        return torch.empty(len(starts), plan.nnz, dtype=torch.long), torch.empty(len(starts), plan.nnz, dtype=x.dtype)
    # numpy arrays made here and handed to torch: a few microseconds less than torch.empty
    # and .numpy(), which counts on a short row.
    indices = np.empty((len(starts), plan.nnz), dtype=np.int64)
    values = np.empty((len(starts), plan.nnz), dtype=_NUMPY[x.dtype])
    flat = plan.flat_keys(x, key_dtype)
    cand, keys, work = plan.scratch(key_dtype)
    _select_rows(flat, starts, plan.starts, plan.ends, plan.ks, plan.sizes, plan.ranks,
                 mask, nan_key, indices, values.view(_NUMPY[key_dtype]), cand, keys, work)
    return torch.from_numpy(indices), torch.from_numpy(values)


# The loops below index with unsigned integers (``u8``) wherever they are hot: numba corrects a
# signed index for Python's negative indexing on every access, which costs 2-3x on a partition
# pass and keeps loops from vectorising. (uint64 mixed with int64 in numba gives float64, so the
# two are kept apart.)
u8 = np.uint64


@jit
def _select_rows(flat, row_starts, starts, ends, ks, sizes, ranks, mask, nan_key,
                 out_idx, out_val, cand, keys, work):
    for i in range(row_starts.shape[0]):
        base = row_starts[i]
        col = u8(0)
        for s in range(starts.shape[0]):
            seg = flat[base + starts[s] : base + ends[s]]
            k = u8(ks[s])
            _select_segment(seg, k, u8(sizes[s]), u8(ranks[s]), mask, nan_key, cand, keys, work)
            start = starts[s]
            idx_row = out_idx[i]
            val_row = out_val[i]
            for j in range(k):
                p = cand[j]
                idx_row[col + j] = np.int64(p) + start
                val_row[col + j] = seg[p]
            col += k


@jit
def _select_segment(seg, k, size, rank, mask, nan_key, cand, keys, work):
    """The top ``k`` of ``seg`` (``1 <= k``): their positions, ascending, in ``cand[:k]``."""
    n = u8(seg.shape[0])
    if k >= n:
        for j in range(n):
            cand[j] = j
        return
    c = u8(0)
    if size > 0:
        t_c = _sample_threshold(seg, size, rank, mask, nan_key, keys, work)
        if t_c < nan_key:  # (a NaN threshold would leave no key above it)
            c = _collect(seg, t_c, mask, nan_key, cand, keys)
    elif n >= u8(_BLOCK) * k:
        # No sample (a short segment): the k-th largest of its blocks' largest keys is a
        # threshold no higher than the segment's k-th largest, so the keys >= it hold the top k.
        keys[0] = _block_threshold(seg, k, mask, nan_key, keys, work) - 1  # (keeps the key type)
        c = _collect(seg, keys[0], mask, nan_key, cand, keys)
    if c >= k:
        # The k-th largest key t among the candidates; then those with a key >= t, in order.
        t = _kth_largest(keys, c, k, work)
        m = u8(0)
        for j in range(c):  # compacted in place (m <= j), without branches, keys alike
            cand[m] = cand[j]
            keys[m] = keys[j]
            m += u8(keys[j] >= t)
    else:
        # No sample, or an unlucky one: the k-th largest key of the whole segment; then the
        # positions with a key >= t, found as candidates are (t - 1 < t <= nan_key).
        for j in range(n):
            keys[j] = min(seg[j] & mask, nan_key)
        t = _kth_largest(keys, n, k, work)
        keys[0] = t - 1  # (stored, so that it keeps the key type: a wider one would not vectorise)
        m = _collect(seg, keys[0], mask, nan_key, cand, keys)
    if m == k:
        return  # no tie at t beyond the k places (the usual case)
    # Keys equal to t fill the places that keys above t leave, lowest positions first
    # (keys[:m] are the m positions' keys: both branches above leave them so).
    above = u8(0)
    for j in range(m):
        above += u8(keys[j] > t)
    need = k - above
    out = u8(0)
    for j in range(m):
        p = cand[j]
        key = keys[j]
        tie = u8(key == t)
        take = u8(key > t) | (tie & u8(need > 0))
        need -= take & tie
        cand[out] = p
        out += take


@jit
def _kth_largest(a, n, k, work):
    """The ``k``-th largest of ``a[:n]`` (``1 <= k <= n``); ``a`` is only read, ``work``
    (``2 n`` entries) is scratch.

    Quickselect with out-of-place, branch-free partitions (each entry is written to both ends of
    the output, and only one cursor moves). Each pivot is taken from a sorted sub-sample at the
    target's rank, nudged so that the target's side is the small one: about 1.5 passes in all.
    A range whose pivot is its least key splits that key's equals off (so ranges of equal keys
    end at once); a range still long after many rounds (adversarial keys) is sorted."""
    target = n - k  # its position in ascending order
    sub = np.empty(_SUB, dtype=a.dtype)
    # The first partition reads ``a`` itself (a copy into ``work`` first was a third of the
    # time); the later ones go back and forth between the two halves of ``work``.
    src = a[:n]
    dst = work[:n]
    spare = work[n : 2 * n]
    lo = u8(0)
    hi = n
    for _ in range(64):
        m = hi - lo
        if m <= u8(2 * _SUB):
            break
        for j in range(_SUB):  # sorted sub-sample, spread over the range
            v = src[lo + (u8(j) * m) // u8(_SUB) + m // u8(2 * _SUB)]
            i = j
            while i > 0 and sub[i - 1] > v:
                sub[i] = sub[i - 1]
                i -= 1
            sub[i] = v
        q = np.int64(((target - lo) * u8(_SUB)) // m)
        pivot = sub[min(q + _NUDGE, _SUB - 1)] if u8(2) * (target - lo) < m else sub[max(q - _NUDGE, 0)]
        lt = lo
        r = hi - u8(1)
        for i in range(lo, hi):  # dst[lo:lt] < pivot <= dst[lt:hi]
            v = src[i]
            dst[lt] = v
            dst[r] = v
            below = u8(v < pivot)
            lt += below
            r -= u8(1) - below
        src, dst, spare = dst, spare, dst
        if target < lt:
            hi = lt
        elif lt > lo:
            lo = lt
        else:  # the pivot is the least key: split its equals off, else the range would not shrink
            eq = lo
            r = hi - u8(1)
            for i in range(lo, hi):  # dst[lo:eq] == pivot < dst[eq:hi]
                v = src[i]
                dst[eq] = v
                dst[r] = v
                same = u8(v == pivot)
                eq += same
                r -= u8(1) - same
            src, dst, spare = dst, spare, dst
            if target < eq:
                return pivot
            lo = eq
    rest = np.sort(src[lo:hi])
    return rest[target - lo]


@jit
def _block_threshold(seg, k, mask, nan_key, keys, work):
    """The ``k``-th largest of the largest keys of ``seg``'s blocks of :data:`_BLOCK` entries (``k``
    at most the number of blocks). FC's 5,120-entry layer (k = 51): 9 -> 4.6 us a selection."""
    # Each step cast back to the key type (numba widens int32 to int64, and AVX2 has no 64-bit
    # vector min or max: see .values._scan_signs): this loop alone over 401,408 keys, 103 -> 37 us.
    kt, blocks = seg.dtype.type, u8(seg.shape[0]) // u8(_BLOCK)
    for b in range(blocks):
        blk = seg[b * _BLOCK : b * _BLOCK + _BLOCK]
        m = kt(min(kt(blk[0] & mask), nan_key))
        for j in range(1, _BLOCK):  # (a vector max)
            m = kt(max(m, kt(min(kt(blk[j] & mask), nan_key))))
        keys[b] = m
    return _kth_largest(keys, blocks, k, work)


@jit
def _sample_threshold(seg, size, rank, mask, nan_key, keys, work):
    """The ``rank``-th largest key among ``size`` positions of ``seg``, one in each stratum."""
    width = u8(seg.shape[0]) // size
    h = u8(0x5A56) ^ u8(seg.shape[0])
    for j in range(size):
        # A 64-bit LCG's high half scaled to [0, width): a fixed offset inside stratum j (a
        # multiply and a shift; a modulo here cost more than the read).
        h = h * u8(6364136223846793005) + u8(1442695040888963407)
        keys[j] = min(seg[j * width + (((h >> u8(32)) * width) >> u8(32))] & mask, nan_key)
    return _kth_largest(keys, size, rank, work)


@jit
def _collect(seg, t_c, mask, nan_key, cand, keys):
    """Positions ``p`` of ``seg`` with ``seg[p] & mask > t_c`` into ``cand``, ascending, and their
    keys into ``keys`` (read while the entries are in cache); their count. ``t_c`` is below the
    NaN key, so every NaN bit pattern is above it as it stands.

    64 entries at a time: their compares as one word (:func:`.vector.above_bits`, a few vector
    instructions), then the word's set bits (few: about 1.5 %). With the word built by a Python
    loop of shifts this pass took 1.5 reads of the row; now it takes about one."""
    n = u8(seg.shape[0])
    end = n - n % u8(64)
    c = u8(0)
    for a in range(u8(0), end, u8(64)):
        w = above_bits(seg, a, mask, t_c)
        while w:
            p = a + u8(trailing_zeros(w))
            cand[c] = p
            keys[c] = min(seg[p] & mask, nan_key)
            c += u8(1)
            w &= w - u8(1)
    for p in range(end, n):
        cand[c] = p
        keys[c] = min(seg[p] & mask, nan_key)
        c += u8((seg[p] & mask) > t_c)
    return c


def _warm() -> None:
    plan = SegmentPlan([0, 1000], [1000, 60000], [3, 600])
    for dtype in _KEYS:
        select(torch.zeros(1, 60000, dtype=dtype), None, plan)


on_warm(_warm)
