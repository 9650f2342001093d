"""Exact top-k selection by magnitude over the last dimension of a batch of rows.

The contract every selector here keeps (the compressor relies on it):
- exactly ``k`` indices per row, those of the ``k`` largest ``|x|``;
- ties in magnitude are broken towards the **lower index**, so the result is a pure function of
  the input (same input, same message, on every backend and rank);
- indices are returned **sorted ascending** within each row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_mask(x: Tensor, k: int) -> Tensor:
    """Boolean mask (same shape as ``x``) of the ``k`` largest magnitudes in each row."""
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    mag = x.abs()
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


def topk_indices(x: Tensor, k: int) -> Tensor:
    """Indices (shape ``(..., k)``, int64, ascending) of the ``k`` largest magnitudes of ``x``.

    Ties in magnitude go to the lower index.
    """
    mask = topk_mask(x, k)
    lead = x.shape[:-1]
    # Exactly k True per row, and nonzero walks rows in order: the column indices reshape to
    # (..., k) and come out ascending.
    return mask.reshape(-1, x.shape[-1]).nonzero()[:, 1].reshape(*lead, k)
