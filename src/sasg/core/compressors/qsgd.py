r"""``qsgd``: stochastic quantization to ``s`` levels (Alistarh, Grubic, Li, Tomioka and Vojnovic,
"QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding", NeurIPS 2017,
arXiv 1610.02132), per tensor:

.. math:: u_s \approx \lVert v_s \rVert_2 / s, \qquad x_i = |v_i| / u_s, \qquad
          \xi_i = \lfloor x_i \rfloor + [\,r_i < x_i - \lfloor x_i \rfloor\,], \qquad
          C(v)_i = u_s\,\mathrm{sign}(v_i)\,\xi_i

with ``r`` uniform in [0, 1) from the generator of each row's worker only (``d`` float32 draws
per message: rank ``m`` of a real run draws what simulated worker ``m`` draws). ``xi_i`` is an
integer in ``0..s`` with :math:`\mathbb{E}[\xi_i] = x_i`, so :math:`\mathbb{E}[C(v)] = v` and
:math:`\mathrm{Var}[C(v)_i] = u_s^2 p_i (1 - p_i)`, ``p_i`` the fractional part of ``x_i``; summed,
at most :math:`\min(d_s/s^2, \sqrt{d_s}/s) \lVert v_s \rVert^2` (the paper's Lemma 3.1, per tensor).
``u_s`` is :math:`\lVert v_s \rVert_2 / s` rounded *up* to ``24 - bitlen(s)`` significant bits
(:func:`level_unit`): every ``u_s xi`` is then exact in float32, so the ``elias`` codec recovers
``u_s`` and the levels bit for bit; the draw stays unbiased, the bound grows by a factor at most ``1 + 2^-17``.
``s = 16`` in the registered member; ``QSGD(layout, levels=s)`` (Python API, plug-ins) takes any
``1 <= s <= 65536``. Dense; default memory ``none``. A tensor holding ±inf or NaN sends NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.dense import DensePayload

DEFAULT_LEVELS = 16
MAX_LEVELS = 2**16


def level_unit(norm: Tensor, levels: int) -> Tensor:
    """``norm / levels`` (float64) rounded up to ``24 - bitlen(levels)`` significant bits: then
    ``unit * l`` is exact in float32 for every integer ``0 <= l <= levels``."""
    bits = 24 - int(levels).bit_length()
    m, e = torch.frexp(norm.to(torch.float64) / levels)
    return torch.ldexp(torch.ceil(torch.ldexp(m, torch.tensor(bits))), (e - bits).to(torch.float64))


class QSGD:
    name = "qsgd"
    default_memory = "none"
    default_codec = "elias"  # priced with its own code when no codec is named (sasg.core.natural)
    exact_under = ("elias",)  # a lossy codec that still decodes its messages bit for bit

    def __init__(self, layout: Layout, levels: int = DEFAULT_LEVELS):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"qsgd: levels s must be an integer in 1..{MAX_LEVELS}, got {levels!r}")
        self.layout = layout
        self.levels = levels

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> DensePayload:
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        if generators is None or len(generators) != len(rows):
            raise ValueError("qsgd draws from its workers' generators: pass one per row")
        x = v if rows == list(range(v.shape[0])) else v[torch.tensor(rows, dtype=torch.long, device=v.device)]
        d = self.layout.numel
        r = torch.empty(len(rows), d)
        for i, g in enumerate(generators):
            torch.rand(d, generator=g, out=r[i])
        r = r.to(device=x.device)
        out = torch.empty_like(x)  # never aliases v
        work = torch.promote_types(x.dtype, torch.float32)  # u_s xi is exact in it
        for seg in self.layout.segments:
            xs = x[:, seg.offset : seg.end]
            norm = torch.linalg.vector_norm(xs, dim=1, keepdim=True, dtype=torch.float64)
            unit = level_unit(norm, self.levels).to(work)
            ratio = xs.abs().to(work) / torch.where(unit > 0, unit, 1.0)  # x_i <= s; 0 for a zero tensor
            level = ratio.floor()
            level += r[:, seg.offset : seg.end] < ratio.sub_(level)  # xi_i: E = x_i
            q = level.mul_(unit)
            if not bool(unit.isfinite().all()):
                q = torch.where(unit.isfinite(), q, torch.nan)
            # the sign of v_i; + 0 turns the -0 of a negative entry at level 0 into +0
            torch.copysign(q.to(x.dtype), xs, out=out[:, seg.offset : seg.end]).add_(0.0)
        return DensePayload(out, owned=True)

    def empty(self, n: int, device=None, dtype=torch.float32) -> DensePayload:
        return DensePayload(torch.zeros(n, self.layout.numel, device=device, dtype=dtype))

    def describe(self) -> dict:
        return {"compressor": self.name, "levels": self.levels}
