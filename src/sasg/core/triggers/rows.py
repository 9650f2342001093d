"""Row-wise helpers of the rules that keep gradients per worker (``wk1``, ``ps``, ``clag``): each row
is reduced on its own, so a row gives the same bits alone on a distributed rank and among all
rows in the simulator."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def distance_to_rows(grads: Sequence[Tensor], other: Tensor, rows: Tensor, work: Tensor) -> Tensor:
    """``||g[r] - other[r]||^2`` for every ``r`` in ``rows`` (shape ``(n,)``).

    ``grads`` are the ``N`` rows as per-segment column blocks, ``other`` an ``(N, d)`` buffer and
    ``work`` a ``(d,)`` scratch buffer. Row by row, each reduced on its own (as
    :func:`.wk2.squared_change`): a row gives the same bits whether a distributed rank checks it
    alone or the simulator checks it among others."""
    out = torch.empty(rows.numel(), dtype=work.dtype, device=work.device)
    for i, r in enumerate(rows.tolist()):
        col = 0
        for g in grads:
            width = g.shape[1]
            torch.sub(g[r], other[r, col : col + width], out=work[col : col + width])
            col += width
        torch.sum(work.square_(), dim=0, keepdim=True, out=out[i : i + 1])
    return out


def store_rows(buffer: Tensor, grads: Sequence[Tensor], rows: Tensor) -> None:
    """``buffer[r] = g[r]`` for every ``r`` in ``rows`` (``grads`` as per-segment column blocks)."""
    everyone = rows.numel() == buffer.shape[0]
    col = 0
    for g in grads:
        width = g.shape[1]
        if everyone:
            buffer[:, col : col + width].copy_(g)
        else:
            for r in rows.tolist():
                buffer[r, col : col + width].copy_(g[r])
        col += width
