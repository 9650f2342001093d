r"""``dgc``: top-k with a sampled threshold, as in Deep Gradient Compression (Lin, Han, Mao, Wang and
Dally, arXiv 1712.01887, section "Implementation": the threshold from top-k on a sample, then a
precise selection among what passed it when too much did).

For every segment s (one parameter tensor) of ``d_s`` entries, with ``topk``'s
``k_s = max(1, floor(h d_s))``:

1. **Sample.** ``n_s = max(512, ceil(f d_s))`` positions drawn uniformly *with replacement*
   (``f`` = ``sample_fraction``, 1 % by default: the top of the paper's 0.1-1 %); the threshold
   ``t_s`` is the ``r_s``-th largest ``|v_i|`` of the sample, ``r_s = max(1, round(h n_s))``.
   A tensor of at most ``n_s`` entries is its own sample (``t_s`` exact: ``topk``'s selection).
2. **Select** ``{i : |v_i| >= t_s}`` (NaN counts as larger than every number, as in
   :mod:`sasg.core.selection`). If more than ``k_s`` entries pass, keep the exact top ``k_s`` of them
   (ties to the lower index); since every entry left out is below ``t_s``, that is the exact top
   ``k_s`` of the whole tensor. If fewer pass, send fewer.

So segment s sends ``n_s' = min(#{|v_i| >= t_s}, k_s)`` entries, at least 1 (the sample's
``r_s``-th entry itself passes) and at most ``k_s``: a message holds at most ``K = sum_s k_s``
entries, a number that varies from worker to worker and round to round. The payload is a
:class:`~sasg.core.payloads.varsparse.VarSparsePayload` and every codec prices the real entries
only. On Gaussian vectors the count passing ``t_s`` is about ``k_s (1 +- 1/sqrt(r_s))``, so a
message holds about ``K (1 - 0.4 / sqrt(r_s))`` entries.

The positions come from the generator of each row's worker only: per upload, one float64 draw
``u`` of ``sum_s n_s`` uniforms (over the sampled tensors, in layout order), position
``floor(u d_s)``; so rank ``m`` of a real run draws what simulated worker ``m`` draws, and a worker
that skips a round draws nothing. Indices ascend within a segment, segments follow the layout;
the values are copies of ``v``'s (error feedback, the default memory, then keeps ``v`` with the
sent entries exactly 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.varsparse import VarSparsePayload
from ..selection import topk_rows
from .topk import kept_per_segment

SAMPLE_FRACTION = 0.01  # DGC samples 0.1 % to 1 % of a tensor
MIN_SAMPLE = 512  # ... but never fewer than this many entries (a small tensor is its own sample)


class DGC:
    name = "dgc"
    default_memory = "ef"

    def __init__(self, layout: Layout, density: float, sample_fraction: float = SAMPLE_FRACTION,
                 min_sample: int = MIN_SAMPLE):
        if not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
        self.layout = layout
        self.density = float(density)
        self.sample_fraction = float(sample_fraction)
        self.min_sample = int(min_sample)
        self.k_per_segment = kept_per_segment(layout, self.density)
        self.nnz = sum(self.k_per_segment)  # K: the most a message holds
        # Per segment: (sample size n_s, rank r_s in the sample), or None when the tensor is its own sample.
        self.plan: list[tuple[int, int] | None] = []
        for seg in layout.segments:
            n = max(self.min_sample, math.ceil(self.sample_fraction * seg.numel))
            if n >= seg.numel:
                self.plan.append(None)
            else:
                self.plan.append((n, max(1, min(n, math.floor(self.density * n + 0.5)))))
        self.sample_total = sum(p[0] for p in self.plan if p is not None)

    def sample_positions(self, generators) -> list[Tensor | None]:
        """Per segment the ``(len(generators), n_s)`` sampled positions (inside the segment), None
        for an unsampled one; one float64 draw of ``sum_s n_s`` uniforms per generator."""
        if not self.sample_total:
            return [None] * len(self.plan)
        u = torch.stack([torch.rand(self.sample_total, generator=g, dtype=torch.float64) for g in generators]) \
            if generators else torch.zeros(0, self.sample_total, dtype=torch.float64)
        out, col = [], 0
        for seg, p in zip(self.layout.segments, self.plan):
            if p is None:
                out.append(None)
                continue
            pos = (u[:, col : col + p[0]] * seg.numel).long().clamp_(max=seg.numel - 1)
            out.append(pos)
            col += p[0]
        return out

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> VarSparsePayload:
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        n = len(rows)
        if self.sample_total and (generators is None or len(generators) != n):
            raise ValueError("dgc samples from its workers' generators: pass one per row")
        if n == 0:
            return self.empty(0, v.device, v.dtype)
        everyone = rows == list(range(v.shape[0]))
        index = None if everyone else torch.tensor(rows, dtype=torch.long, device=v.device)
        positions = self.sample_positions(generators)
        kept: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(n)]
        for seg, k, p, pos in zip(self.layout.segments, self.k_per_segment, self.plan, positions):
            block = v[:, seg.offset : seg.end]
            if index is not None:
                block = block.index_select(0, index)
            if p is None:  # the whole tensor is the sample: the threshold is exact, so is the top k
                idx, val = topk_rows(block, k)
                for i in range(n):
                    kept[i].append((idx[i] + seg.offset, val[i]))
                continue
            mag = block.abs()
            # r_s-th largest |v| of the sample (sorted: NaN first, the r_s-th last)
            t = torch.topk(mag.gather(1, pos.to(v.device)), p[1], dim=1, sorted=True).values[:, -1:]
            passed = (mag >= t) | torch.isnan(mag)
            cols = passed.nonzero()[:, 1].split(passed.sum(1).tolist())  # row by row, ascending
            for i, c in enumerate(cols):
                val = block[i].index_select(0, c)
                if c.numel() > k:  # too many passed: the exact top k among them
                    sel = topk_rows(val.unsqueeze(0), k)[0][0]
                    c, val = c.index_select(0, sel), val.index_select(0, sel)
                kept[i].append((c + seg.offset, val))
        messages = [(torch.cat([c for c, _ in parts]), torch.cat([x for _, x in parts])) for parts in kept]
        return VarSparsePayload.from_rows(messages, self.nnz, self.layout.numel, v.device, v.dtype)

    def empty(self, n: int, device=None, dtype=torch.float32) -> VarSparsePayload:
        return VarSparsePayload.zeros(n, self.nnz, self.layout.numel, device, dtype)

    def describe(self) -> dict:
        return {"compressor": self.name, "density": self.density, "max_nnz_per_message": self.nnz,
                "sample_fraction": self.sample_fraction, "min_sample": self.min_sample}
