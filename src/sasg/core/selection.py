"""Exact top-k selection by magnitude over the last dimension of a batch of rows.

The contract every selector here keeps (the compressor relies on it):
- exactly ``k`` indices per row, those of the ``k`` largest ``|x|``;
- ties in magnitude are broken towards the **lower index**, so the result is a pure function of
  the input (same input, same message, on every backend and rank);
- indices are returned **sorted ascending** within each row.

NaN (a diverged run) counts as larger than every number, as in ``torch.sort``.

How it is fast (see ``docs/performance.md``). ``torch.topk`` on a long row costs many memory
passes; :func:`topk_rows` reads a long row where it lies (a segment's columns of an ``(N, d)``
batch, no gathered copy) about twice, plus one ``nonzero`` over 8-byte words of a byte mask, and
runs ``torch.topk`` only on a short list of candidates:

1. *Candidate threshold from a sample.* Magnitudes at fixed pseudo-random positions (no global
   RNG; about 64 of them expected in the top k) give a threshold ``t_c`` a little *below* the
   k-th largest magnitude: the sample's r-th largest, r four standard deviations above 64.
2. *Candidates.* ``|x| > t_c`` keeps about 1.5 k entries per row. If every row has at least
   ``k`` of them, each row's top k are among them: every entry outside is at most ``t_c``,
   hence smaller than every candidate. If not (a rare unlucky sample), or if the candidates are
   no saving (e.g. rows of equal magnitudes), the batch falls back to the direct selection
   below; the result is the same either way, only the time differs. The mask comes from
   ``hardshrink`` (``x`` where ``|x| > t``, else 0) cast to bool: two vectorised passes, where
   ``|x|`` and a compare into bool would be three times slower.
3. *Exact selection among the candidates* (also used directly for short rows): ``torch.topk`` of
   ``k + 1``; if the k-th and (k+1)-th largest differ, the top k is unambiguous and just needs
   sorting. Only a tie at the boundary needs the lower-index rule, resolved with a cumulative
   count on that row set (:func:`topk_mask`).

Candidates keep their original order, so "lower position among candidates" is "lower index" and
the tie rule carries over.

Compiled path: float32 and float64 rows on the CPU go to :mod:`sasg.kernels.topk`, the same three
steps as one compiled loop per row (about 20 times faster: it reads a row once, at memory speed,
where the torch ops above pay fixed costs per op and per tensor). The torch code here is the
reference it is tested against (``SASG_KERNELS=0`` selects it) and the path for other devices
and dtypes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..kernels import topk as _kernel
from .workspace import Workspace

# Sampled candidates pay off when the sample is a small part of the row.
_SAMPLE_HITS = 64  # expected number of top-k members in the sample of a long row
_SAMPLE_HITS_MIN = 48  # ... for medium rows
_SAMPLE_MAX_FRACTION = 8  # sample at most n / 8 elements, else select directly
_SEED = 0x5A56  # the sample positions: any fixed choice gives the same (exact) result


def topk_mask(x: Tensor, k: int) -> Tensor:
    """Boolean mask (same shape as ``x``) of the ``k`` largest magnitudes in each row."""
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return _mask_of_magnitudes(x.abs(), k)


def _mask_of_magnitudes(mag: Tensor, k: int) -> Tensor:
    """The reference rule on magnitudes (any shape ``(..., n)``): a threshold, then the tie fix."""
    n = mag.shape[-1]
    if k == n:
        return torch.ones_like(mag, dtype=torch.bool)
    if bool(torch.isnan(mag).any()):
        # NaN ranks above every number (as in torch.sort); the first k of a stable descending sort
        # are the top k with ties to the lower index.
        order = torch.sort(mag, dim=-1, descending=True, stable=True).indices[..., :k]
        return torch.zeros_like(mag, dtype=torch.bool).scatter_(-1, order, True)
    # The k-th largest magnitude of each row is the threshold t. Everything above t is in; of the
    # entries equal to t, the lowest-index ones fill the remaining places. torch.topk alone picks
    # among ties in an unspecified order, hence this fix-up.
    t = torch.topk(mag, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    at_least = mag >= t
    if bool((at_least.sum(dim=-1) == k).all()):
        return at_least  # no tie at the threshold (the usual case): nothing to break
    above = mag > t
    at = mag == t
    need = k - above.sum(dim=-1, keepdim=True)
    return above | (at & (torch.cumsum(at, dim=-1) <= need))


def _mask_to_indices(mask: Tensor, k: int) -> Tensor:
    # Exactly k True per row, and nonzero walks rows in order: the column indices reshape to
    # (N, k) and come out ascending.
    return mask.reshape(-1, mask.shape[-1]).nonzero()[:, 1].reshape(-1, k)


def topk_indices(x: Tensor, k: int) -> Tensor:
    """Indices (shape ``(..., k)``, int64, ascending) of the ``k`` largest magnitudes of ``x``.

    Ties in magnitude go to the lower index.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    lead = x.shape[:-1]
    return topk_rows(x.reshape(-1, n), k)[0].reshape(*lead, k)


# Below this many selected entries, rows named by ``rows`` are gathered into one copy first
# (fewer, larger calls); above it, each row is read where it lies.
_GATHER_BELOW = 1 << 18


def topk_rows(
    x: Tensor, k: int, rows: Sequence[int] | None = None, workspace: Workspace | None = None
) -> tuple[Tensor, Tensor]:
    """The top ``k`` of rows of ``x`` (shape ``(N, n)``) by magnitude: ``(indices, values)``,
    both ``(len(rows), k)`` (all N rows when ``rows`` is None), indices ascending in each row,
    values the signed entries of ``x`` there.

    ``x`` is only read; it may be a column slice of a wider tensor (one segment of an ``(N, d)``
    batch): long rows are read where they lie, with no gathered or ``|x|`` copy of them.
    ``workspace``: where the candidate buffers and sample positions are kept between calls (see
    :mod:`sasg.core.workspace`); by default they are made afresh for this call."""
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, n), got {tuple(x.shape)}")
    n = x.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if _kernel.supports(x):  # the same result, one compiled pass (sasg.kernels.topk)
        ws = workspace if workspace is not None else Workspace()
        plan = ws.cached(("topk-kernel-plan", n, k), lambda: _kernel.SegmentPlan([0], [n], [k]))
        return _kernel.select(x, rows, plan)
    if rows is not None and (len(rows) * n < _GATHER_BELOW or x.stride(1) != 1):
        x, rows = _gather_rows(x, rows), None
    n_sel = x.shape[0] if rows is None else len(rows)
    plan = _sample_plan(n, k)
    if plan is not None and n_sel > 0 and k < n:
        got = _select_from_candidates(x, k, *plan, rows=rows, workspace=workspace)
        if got is not None:
            return got
    if rows is not None:
        x = _gather_rows(x, rows)
    idx = _select_direct(x.abs(), k)
    return idx, x.gather(1, idx)


def _gather_rows(x: Tensor, rows: Sequence[int]) -> Tensor:
    return x.index_select(0, torch.tensor(list(rows), dtype=torch.long, device=x.device))


def _sample_plan(n: int, k: int) -> tuple[int, int] | None:
    """(sample size, rank in the sample) for a row of ``n`` with ``k`` kept, or None when a direct
    selection is cheaper."""
    p = k / n
    for hits in (_SAMPLE_HITS, _SAMPLE_HITS_MIN):
        size = math.ceil(hits / p)
        if size * _SAMPLE_MAX_FRACTION <= n:
            # The sample's r-th largest lies below the row's k-th largest unless fewer than r of
            # the sample land in the top k; r = hits + 4 sd of that count (binomial), + 1.
            rank = min(size, math.ceil(hits + 4.0 * math.sqrt(hits)) + 1)
            return size, rank
    return None


def _sample_positions(n: int, size: int, device: torch.device) -> Tensor:
    # Distinct positions spread over the whole row, sorted for locality. Single entries, not
    # blocks: neighbouring gradient entries are strongly correlated (one hidden unit's row of a
    # weight matrix), which would make a block sample's threshold unreliable.
    gen = torch.Generator().manual_seed(_SEED + n)
    return torch.randperm(n, generator=gen)[:size].sort().values.to(device)


def _select_from_candidates(
    x: Tensor,
    k: int,
    size: int,
    rank: int,
    rows: Sequence[int] | None = None,
    workspace: Workspace | None = None,
) -> tuple[Tensor, Tensor] | None:
    """:func:`topk_rows` through sampled candidates; None when the sample was unlucky or the
    candidates would be no saving (the caller then selects directly)."""
    n = x.shape[1]
    dev = x.device
    ids = list(range(x.shape[0])) if rows is None else [int(r) for r in rows]
    n_sel = len(ids)
    ws = workspace if workspace is not None else Workspace()  # per call
    pos = ws.cached(("topk-sample", n, size, str(dev)), lambda: _sample_positions(n, size, dev))
    # Row by row: an index_select along dim 1 of a column slice is several times slower.
    sample = torch.empty(n_sel, size, dtype=x.dtype, device=dev)
    for i, r in enumerate(ids):
        torch.index_select(x[r], 0, pos, out=sample[i])
    # r-th largest magnitude of each row's sample: the candidate threshold t_c.
    t_c = torch.topk(sample.abs_(), rank, dim=1, sorted=False).values.amin(dim=1).tolist()
    # The candidates |x| > t_c as a bool mask, padded with False to whole 8-byte words for
    # _nonzero_positions. hardshrink(x, t) is x where |x| > t and 0 elsewhere: one vectorised
    # pass into a row buffer that stays in cache, and its cast to bool another. Together they
    # cost about a third of |x| followed by a compare into bool, which PyTorch does not
    # vectorise on the CPU (measured: 0.5 vs 1.4 ms for 7 rows of 401,408).
    total = n_sel * n
    padded = -(-total // 8) * 8
    mask = ws.buffer("topk-candidates", (padded,), x, torch.bool)
    shrunk = ws.buffer("topk-shrunk", (n,), x)
    for i, (r, t) in enumerate(zip(ids, t_c)):
        torch.hardshrink(x[r], t, out=shrunk)
        mask[i * n : (i + 1) * n].copy_(shrunk)
    mask[total:] = False
    flat = _nonzero_positions(mask)  # row-major: rows in order, cols ascending
    bounds = torch.searchsorted(flat, torch.arange(n_sel + 1, device=dev) * n)
    counts = bounds[1:] - bounds[:-1]
    lo, hi = (int(c) for c in torch.aminmax(counts))
    if lo < k or hi * 4 > n:
        return None  # unlucky sample (some row has fewer than k candidates) or no saving: go direct
    # Every entry outside the candidates has |x| <= t_c < |any candidate|, and each row has at
    # least k candidates: the row's top k (ties included) are among them.
    per_row = counts.tolist()
    starts = torch.arange(n_sel, device=dev) * n
    cols = list((flat - torch.repeat_interleave(starts, counts)).split(per_row))
    # One row of candidates per row of x, padded to the longest (plus one column, so that
    # topk(k + 1) below always exists) with 0: every real candidate has |x| > t_c >= 0, so a pad
    # is never selected.
    signed = [x[r].index_select(0, c) for r, c in zip(ids, cols)]
    cand = F.pad(pad_sequence(signed, batch_first=True), (0, 1))
    cand_cols = pad_sequence(cols, batch_first=True)
    sel = _select_direct(cand.abs(), k, by_mask=True)
    return cand_cols.gather(1, sel), cand.gather(1, sel)


def _nonzero_positions(mask: Tensor) -> Tensor:
    """``mask.nonzero().squeeze(1)`` for a 1-D bool (or int8) mask whose length is a multiple
    of 8.

    ``nonzero`` costs per element scanned. A sparse mask is scanned as 8-byte words first; only
    the bytes of words with a hit are scanned again (about 10 % of them at 1.4 % density).
    Ascending, like ``nonzero``."""
    words = mask.view(torch.int64).nonzero().squeeze(1)
    hits = mask.view(-1, 8).index_select(0, words).view(-1).nonzero().squeeze(1)
    return words.index_select(0, hits >> 3) * 8 + (hits & 7)


def _select_direct(mag: Tensor, k: int, by_mask: bool = False) -> Tensor:
    """Exact top-k positions (ascending) of each row of ``mag`` (shape ``(N, n)``).

    ``by_mask``: read the positions off a mask of ``mag`` (cheap when ``n`` is a small multiple
    of ``k``) instead of sorting the ``k`` indices ``torch.topk`` returns (cheap when ``k << n``)."""
    n_rows, n = mag.shape
    if k >= n:
        return torch.arange(n, device=mag.device).expand(n_rows, n).clone()
    vals, idx = torch.topk(mag, k + 1, dim=1, sorted=False)
    if bool(torch.isnan(vals).any()):
        # NaN (a diverged run) ranks above every number, as in torch.sort; a rare case, so the
        # plainest exact rule serves it.
        order = torch.sort(mag, dim=1, descending=True, stable=True).indices[:, :k]
        return order.sort(dim=1).values
    two = torch.topk(vals, 2, dim=1, largest=False, sorted=True)
    kth_plus_1, kth = two.values[:, :1], two.values[:, 1:]
    # If the k-th largest is strictly above the (k+1)-th, the top k are unambiguous: no tie rule
    # is needed.
    if bool((kth > kth_plus_1).all()):
        if by_mask:
            # Exactly k entries per row are >= the k-th largest; nonzero lists them in order.
            return _mask_to_indices(mag >= kth, k)
        # Drop the (k+1)-th from topk's k+1 indices (push it past the end), sort, keep k.
        idx.scatter_(1, two.indices[:, :1], n)
        return idx.sort(dim=1).values[:, :k]
    # A tie at the boundary: everything above the k-th largest is in; of the entries equal to it,
    # the lowest-index ones fill the remaining places (the rule of :func:`topk_mask`).
    above = mag > kth
    at = mag == kth
    need = k - above.sum(dim=1, keepdim=True)
    mask = above | (at & (torch.cumsum(at, dim=1) <= need))
    return _mask_to_indices(mask, k)
