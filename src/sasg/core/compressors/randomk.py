r"""``randomk``: keep ``k_s`` entries of every segment chosen uniformly at random (Stich, Cordonnier
and Jaggi, "Sparsified SGD with Memory", NeurIPS 2018, arXiv 1809.07599).

.. math:: C(v)_s = v_s \odot \mathbb{1}_{\Omega_s}, \qquad
          \Omega_s \sim \text{Uniform}\{\Omega \subset \{1..d_s\} : |\Omega| = k_s\}

with ``topk``'s ``k_s = max(1, floor(h d_s))``; values ``v``'s, unscaled (no ``d_s / k_s``: error
feedback, the default memory, sends the rest later). Positions come from the generator of each
row's worker only (rank ``m`` of a real run draws what simulated worker ``m`` draws) and ascend
within a segment. For ``4 k_s > d_s`` they are a random permutation's first ``k_s``; otherwise the
first ``k_s`` distinct of uniform draws with replacement (also a uniform ``k_s``-subset, from about
``k_s`` draws instead of a permutation of ``d_s``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.sparse import SparsePayload
from .topk import kept_per_segment


def uniform_subset(n: int, k: int, gen: torch.Generator) -> Tensor:
    """``k`` distinct positions of ``0..n-1`` (ascending), every ``k``-subset equally likely."""
    if 4 * k > n:
        return torch.randperm(n, generator=gen)[:k].sort().values
    draws = torch.empty(0, dtype=torch.long)
    while True:  # one batch almost always suffices (k <= n/4: ~k(1 + k/2n) draws needed)
        draws = torch.cat([draws, torch.randint(n, (k + k // 4 + 8,), generator=gen)])
        distinct, which = torch.unique(draws, return_inverse=True)  # sorted
        if distinct.numel() >= k:
            break
    first = torch.full_like(distinct, draws.numel()).scatter_reduce_(0, which, torch.arange(draws.numel()), "amin")
    return distinct[first <= torch.kthvalue(first, k).values]  # the first k distinct, ascending


class RandomK:
    name = "randomk"
    default_memory = "ef"

    def __init__(self, layout: Layout, density: float):
        self.layout = layout
        self.density = float(density)
        self.k_per_segment = kept_per_segment(layout, self.density)
        self.nnz = sum(self.k_per_segment)

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> SparsePayload:
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        if generators is None or len(generators) != len(rows):
            raise ValueError("randomk draws from its workers' generators: pass one per row")
        segs = list(zip(self.layout.segments, self.k_per_segment))
        picks = [torch.cat([uniform_subset(s.numel, k, g) + s.offset for s, k in segs]) for g in generators]
        indices = torch.stack(picks).to(v.device) if picks else self.empty(0, v.device).indices
        index = torch.tensor(rows, dtype=torch.long, device=v.device)
        values = v[index.unsqueeze(1), indices]  # a copy of the kept entries: v may change afterwards
        return SparsePayload(indices, values, self.layout.numel)

    def empty(self, n: int, device=None, dtype=torch.float32) -> SparsePayload:
        return SparsePayload.zeros(n, self.nnz, self.layout.numel, device, dtype)

    def describe(self) -> dict:
        return {"compressor": self.name, "density": self.density, "nnz_per_message": self.nnz}
