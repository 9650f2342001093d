"""Exact top-k selection by magnitude over the last dimension of a batch of rows.

The contract every selector here keeps (the compressor relies on it):
- exactly ``k`` indices per row, those of the ``k`` largest ``|x|``;
- ties in magnitude are broken towards the **lower index**, so the result is a pure function of
  the input (same input, same message, on every backend and rank);
- indices are returned **sorted ascending** within each row.

How it is fast (see ``docs/performance.md``). ``torch.topk`` on a long row costs many memory
passes; the selectors here touch a long row about three times (``|x|``, one compare, one
``nonzero`` over 8-byte words) and run ``torch.topk`` only on a short list of candidates:

1. *Candidate threshold from a sample.* Magnitudes at fixed pseudo-random positions (no global
   RNG; about 128 of them expected in the top k) give a threshold ``t_c`` a little *below* the
   k-th largest magnitude: the sample's r-th largest, r four standard deviations above 128.
2. *Candidates.* ``|x| >= t_c`` keeps about 1.4 k entries per row. If every row has at least
   ``k`` of them, each row's top k are among them: every entry outside is smaller than ``t_c``,
   hence smaller than the k-th largest. If not (a rare unlucky sample), or if the candidates are
   no saving (e.g. rows of equal magnitudes), the batch falls back to the direct selection
   below; the result is the same either way, only the time differs.
3. *Exact selection among the candidates* (also used directly for short rows): ``torch.topk`` of
   ``k + 1``; if the k-th and (k+1)-th largest differ, the top k is unambiguous and just needs
   sorting. Only a tie at the boundary needs the lower-index rule, resolved with a cumulative
   count on that row set (:func:`topk_mask`).

Candidates keep their original order, so "lower position among candidates" is "lower index" and
the tie rule carries over.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from .scratch import scratch

# Sampled candidates pay off when the sample is a small part of the row.
_SAMPLE_HITS = 128  # expected number of top-k members in the sample of a long row
_SAMPLE_HITS_MIN = 48  # ... for medium rows
_SAMPLE_MAX_FRACTION = 8  # sample at most n / 8 elements, else select directly
_SEED = 0x5A56  # the sample positions: any fixed choice gives the same (exact) result

_sample_cache: dict[tuple[int, int, str], Tensor] = {}


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
    mag = x.reshape(-1, n).abs()
    return topk_indices_of_magnitudes(mag, k).reshape(*lead, k)


def topk_indices_of_magnitudes(mag: Tensor, k: int, scratch_owner: object | None = None) -> Tensor:
    """:func:`topk_indices` on precomputed magnitudes ``mag`` (shape ``(N, n)``, values >= 0 and
    contiguous; it is only read). Returns ``(N, k)`` int64, ascending in each row.

    ``scratch_owner``: an object to keep the ``(N, n)`` candidate mask on between calls (see
    :mod:`sasg.core.scratch`); by default it is allocated per call."""
    n_rows, n = mag.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k == n:
        return torch.arange(n, device=mag.device).expand(n_rows, n).clone()
    plan = _sample_plan(n, k)
    if plan is not None and n_rows > 0:
        out = _select_from_candidates(mag, k, *plan, scratch_owner=scratch_owner)
        if out is not None:
            return out
    return _select_direct(mag, k)


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
    key = (n, size, str(device))
    pos = _sample_cache.get(key)
    if pos is None:
        # Distinct positions spread over the whole row, sorted for locality. Single entries, not
        # blocks: neighbouring gradient entries are strongly correlated (one hidden unit's row of
        # a weight matrix), which would make a block sample's threshold unreliable.
        gen = torch.Generator().manual_seed(_SEED + n)
        pos = torch.randperm(n, generator=gen)[:size].sort().values.to(device)
        if len(_sample_cache) > 256:
            _sample_cache.clear()
        _sample_cache[key] = pos
    return pos


def _select_from_candidates(
    mag: Tensor, k: int, size: int, rank: int, scratch_owner: object | None = None
) -> Tensor | None:
    n_rows, n = mag.shape
    dev = mag.device
    sample = mag.index_select(1, _sample_positions(n, size, dev))
    # r-th largest of each row's sample: the candidate threshold t_c.
    t_c = torch.topk(sample, rank, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    # The candidate mask, padded with False to whole 8-byte words for _nonzero_positions.
    total = n_rows * n
    padded = -(-total // 8) * 8
    owner = scratch_owner if scratch_owner is not None else SimpleNamespace()  # per call
    buf = scratch(owner, "candidates", (padded,), mag, torch.bool)
    torch.ge(mag, t_c, out=buf[:total].view(n_rows, n))
    buf[total:] = False
    flat = _nonzero_positions(buf)  # row-major: rows in order, cols ascending
    bounds = torch.searchsorted(flat, torch.arange(n_rows + 1, device=dev) * n)
    counts = bounds[1:] - bounds[:-1]
    lo, hi = (int(c) for c in torch.aminmax(counts))
    if lo < k or hi * 4 > n:
        return None  # unlucky sample (some row has fewer than k candidates) or no saving: go direct
    # One row of candidates per row of mag, padded to the longest: values with -1 (below every
    # magnitude, so never selected: each row has at least k real ones), columns with 0. At least
    # one pad column, so topk(k + 1) below always exists.
    per_row = counts.tolist()
    values = list(mag.view(-1).index_select(0, flat).split(per_row))
    cand = F.pad(pad_sequence(values, batch_first=True, padding_value=-1.0), (0, 1), value=-1.0)
    cols = pad_sequence(list(flat.split(per_row)), batch_first=True, padding_value=0)
    cols -= (torch.arange(n_rows, device=dev) * n).unsqueeze(1)
    return cols.gather(1, _select_direct(cand, k, by_mask=True))


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
    two = torch.topk(vals, 2, dim=1, largest=False, sorted=True)
    kth_plus_1, kth = two.values[:, :1], two.values[:, 1:]
    # If the k-th largest is strictly above the (k+1)-th, the top k are unambiguous: no tie rule
    # is needed. (NaN fails the comparison and takes the reference rule.)
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
    if int(mask.sum()) != n_rows * k:  # NaN magnitudes: leave it to the reference rule
        mask = _mask_of_magnitudes(mag, k)
    return _mask_to_indices(mask, k)
