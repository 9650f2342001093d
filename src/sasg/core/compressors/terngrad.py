r"""``terngrad``: stochastic ternary messages (Wen et al., "TernGrad: Ternary Gradients to Reduce
Communication in Distributed Deep Learning", NeurIPS 2017, arXiv 1705.07878), per tensor:

.. math:: s_s = \max_i |v_i|, \qquad b_i \sim \text{Bernoulli}(|v_i| / s_s), \qquad
          C(v)_i = s_s\,\mathrm{sign}(v_i)\,b_i

so :math:`\mathbb{E}[C(v)] = v` (unbiased) with :math:`\mathrm{Var}[C(v)_i] = s_s |v_i| - v_i^2`.
The paper's per-layer scale, without its gradient clipping or scale sharing. ``b_i = [u_i s_s <
|v_i|]`` with ``u`` uniform in [0, 1) drawn from the generator of the worker of each row only
(``d`` float32 draws per message, whatever the model's dtype), so rank ``m`` of a real run draws
what simulated worker ``m`` draws. A dense message of ``0`` and ``±s_s``; under ``--codec ternary``
it costs 2 bits per entry plus one float32 per tensor and decodes to ``C(v)`` exactly (float32
models). Default memory ``none`` (it is unbiased); ``+ef`` keeps ``v - C(v)`` as for any
compressor. A tensor holding ±inf or NaN sends NaN throughout (``0 * s_s``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.dense import DensePayload


class TernGrad:
    name = "terngrad"
    default_memory = "none"
    default_codec = "ternary"  # priced with its own code when no codec is named (sasg.core.natural)
    exact_under = ("ternary", "elias")  # lossy codecs that still decode its messages bit for bit

    def __init__(self, layout: Layout):
        self.layout = layout

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> DensePayload:
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        if generators is None or len(generators) != len(rows):
            raise ValueError("terngrad draws from its workers' generators: pass one per row")
        x = v if rows == list(range(v.shape[0])) else v[torch.tensor(rows, dtype=torch.long, device=v.device)]
        d = self.layout.numel
        u = torch.empty(len(rows), d)
        for i, g in enumerate(generators):
            torch.rand(d, generator=g, out=u[i])
        u = u.to(device=x.device, dtype=x.dtype)
        out = torch.empty_like(x)  # never aliases v
        for seg in self.layout.segments:
            xs, us = x[:, seg.offset : seg.end], u[:, seg.offset : seg.end]
            mag = xs.abs()
            s = mag.amax(1, keepdim=True)  # s_s; NaN propagates
            keep = us * s < mag  # b_i: P = |v_i| / s_s
            # s b_i with the sign of v_i; + 0 turns the -0 of a dropped negative entry into +0
            torch.copysign(keep * s, xs, out=out[:, seg.offset : seg.end]).add_(0.0)
        return DensePayload(out, owned=True)

    def empty(self, n: int, device=None, dtype=torch.float32) -> DensePayload:
        return DensePayload(torch.zeros(n, self.layout.numel, device=device, dtype=dtype))

    def describe(self) -> dict:
        return {"compressor": self.name}
