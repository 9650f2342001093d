r"""``sign``: the scaled sign of EF-signSGD (Karimireddy, Rebjock, Stich and Jaggi, "Error Feedback
Fixes SignSGD and other Gradient Compression Schemes", ICML 2019, arXiv 1901.09847), per tensor:

.. math:: C(v)_s = \frac{\lVert v_s \rVert_1}{d_s}\,\mathrm{sign}(v_s), \qquad
          \mathrm{sign}(x) = -1 \text{ if } x < 0 \text{ else } +1

a dense message whose every entry is ``±m_s``, ``m_s = mean |v_s|``. ``sign(0) = +1``: every
entry then has magnitude ``m_s``, as the paper's bound assumes
(:math:`\lVert C(v) \rVert^2 = \lVert v \rVert_1^2 / d`, so
:math:`\lVert C(v) - v \rVert^2 = \lVert v \rVert^2 - \lVert v \rVert_1^2 / d`), and it is what the
``sign`` value format writes (bit 1 = ``v < 0``): under ``--codec sign`` a message costs one bit
per entry plus one float32 per tensor and decodes to ``C(v)`` exactly (float32 models; the format
sends the mean magnitude of a tensor whose entries all have magnitude ``m_s``, i.e. ``m_s``).
``C`` is biased; its default memory is error feedback (``ef``), the point of the paper. A tensor
holding ±inf or NaN gets a non-finite ``m_s`` throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.dense import DensePayload


class ScaledSign:
    name = "sign"
    default_memory = "ef"
    default_codec = "sign"  # priced with its own code when no codec is named (sasg.core.natural)
    exact_under = ("sign", "elias")  # lossy codecs that still decode its messages bit for bit

    def __init__(self, layout: Layout):
        self.layout = layout

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> DensePayload:
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        x = v if rows == list(range(v.shape[0])) else v[torch.tensor(rows, dtype=torch.long, device=v.device)]
        out = torch.empty_like(x)  # never aliases v: error feedback updates v in place afterwards
        for seg in self.layout.segments:
            xs = x[:, seg.offset : seg.end]
            m = (xs.abs().sum(1, keepdim=True) / seg.numel).to(x.dtype)  # ||v_s||_1 / d_s
            # x + 0 turns -0 into +0, so that sign(+-0) = +1
            torch.copysign(m.expand_as(xs), xs + 0.0, out=out[:, seg.offset : seg.end])
        return DensePayload(out, owned=True)

    def empty(self, n: int, device=None, dtype=torch.float32) -> DensePayload:
        return DensePayload(torch.zeros(n, self.layout.numel, device=device, dtype=dtype))

    def describe(self) -> dict:
        return {"compressor": self.name}
