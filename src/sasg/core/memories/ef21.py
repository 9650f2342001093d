r"""``ef21``: EF21 (Richtárik, Sokolov and Fatkhullin, "EF21: A New, Simpler, Theoretically Better,
and Practically Faster Error Feedback", NeurIPS 2021, arXiv 2106.05203). Worker ``m`` keeps an
estimate :math:`h_m` of its (scaled) gradient and sends only the compressed change; the server
keeps every worker's estimate and applies their sum:

.. math:: c_m = C(s\,g_m - h_m), \qquad h_m \leftarrow h_m + \mathrm{decoded}(c_m)
          \quad\text{(on the worker and on the server alike)}, \qquad
          \theta \leftarrow \theta - \sum_m h_m

with ``s = eta / M`` the engine's step scale, as for ``ef``: :math:`h_m` is kept in step units, so
:math:`h_m = s\,g_m^{\text{EF21}}` with the paper's :math:`g_i` and its step
:math:`x^{t+1} = x^t - \gamma \frac1n\sum_i g_i^t` is ours with :math:`\gamma = \eta`. The paper's
initialisation :math:`g_i^0 = C(\nabla f_i(x^0))` is round 0 here (:math:`h_m = 0` before it).
Under an lr schedule the estimate tracks :math:`s\,g_m` at the current ``s``: a change of the lr
is one more change it sends.

A worker that does not upload (a lazy trigger: ``clag``, the rule EF21 is paired with in the 3PC
paper, or any other) sends nothing, and its :math:`h_m` stays on both sides. With the identity
compressor the estimate is the scaled gradient itself, up to float rounding
(:math:`h + (x - h)` is ``x`` within one rounding of the difference and one of the sum), so
``always+identity+ef21`` is dense SGD.

Engine capabilities: :meth:`EF21.server_store` (the server's ``(M, d)`` estimates, in place of
its last messages, saved in checkpoints as its ``last``) and :meth:`EF21.receive` (accumulate
instead of replace). Worker and server update their copies of :math:`h_m` by the same operation
(:func:`accumulate`), so they stay equal bit for bit. Worker buffer: ``estimate`` (``(N, d)``),
which ``clag`` reads. ``corrects``: what the compressor or a lossy codec leaves out of
:math:`h_m` is part of the next difference sent.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..payloads.dense import DensePayload
from ..payloads.encoded import Encoded, transmit
from ..payloads.protocol import Payload

ESTIMATE = "estimate"  # the worker buffer holding h_m


def accumulate(target: Tensor, rows: Tensor, payload: Payload) -> None:
    """``target[rows[i]] += decoded(q_i)``: the one update of an estimate, worker and server."""
    target.index_add_(0, rows, payload.to_dense())


class EF21:
    name = "ef21"
    corrects = True
    worker_buffers = (ESTIMATE,)
    estimate = ESTIMATE  # the buffer a rule comparing with the estimate reads (clag)

    def upload(self, workers, rows: Sequence[int], grads: Sequence[Tensor], scale: float, compressor, generators,
               codec) -> Encoded:
        h = workers.buffer(ESTIMATE)
        n, everyone = len(rows), len(rows) == grads[0].shape[0]
        index = torch.as_tensor(list(rows), dtype=torch.long, device=h.device)
        # v = s * g - h in one fresh (n, d) buffer, handed to the compressor to keep.
        v = torch.empty(n, compressor.layout.numel, dtype=grads[0].dtype, device=grads[0].device)
        for seg, g in zip(compressor.layout.segments, grads):
            torch.mul(g if everyone else g.index_select(0, index), scale, out=v[:, seg.offset : seg.end])
        v.sub_(h if everyone else h.index_select(0, index))
        sent = transmit(compressor.compress(v, range(n), generators=generators, donate=True), codec)
        accumulate(h, index, sent.payload)
        return sent

    def server_store(self, compressor, n: int, device=None, dtype=torch.float32) -> DensePayload:
        """The server's estimates of the ``n`` workers, zero: :math:`h_m` before any upload."""
        return DensePayload(torch.zeros(n, compressor.layout.numel, device=device, dtype=dtype))

    def receive(self, store: DensePayload, senders: Tensor, payload: Payload) -> None:
        """:math:`h_m \\mathrel{+}= \\mathrm{decoded}(c_m)` for every sender (a skipper's stays)."""
        accumulate(store.values, senders, payload)

    def describe(self) -> dict:
        return {"memory": self.name}
