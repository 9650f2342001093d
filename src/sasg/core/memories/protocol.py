r"""The Memory protocol: what a worker keeps of what it did not send.

An uploading worker with fresh gradient ``g`` and step scale ``s`` (``s = eta / M``) sends

.. math:: q_m = C(v), \qquad v = s\,g + (\text{what its memory adds})

encoded by the codec, and its memory decides what it keeps for later rounds, from the message
as it will be *decoded* (:func:`~sasg.core.payloads.transmit`). ``upload(workers, rows, grads,
scale, compressor, generators, codec)`` does this for the uploading ``rows`` of a batch of workers
and returns their :class:`~sasg.core.payloads.Encoded` messages (one per row, in ``rows``
order). ``grads`` holds all ``N`` workers' fresh gradients as per-segment column blocks (:meth:`~sasg.core.layout.Layout.as_columns`).

``corrects``: what the compressor and a lossy codec drop is sent in later rounds (error feedback),
so a lossy codec leaves the updates unbiased over time; without it such a run is biased.
``worker_buffers`` names the ``(N, d)`` buffers it keeps per worker (created zero by the
:class:`~sasg.core.round_state.WorkerState`, saved in checkpoints). A fast path (updating its buffer
where it lies) belongs in the member's ``upload``, never in the round engine.

``upload`` calls ``compressor.compress`` once per round, also with no rows (a compressor with an
exchange of its own, ``powersgd``, takes part in its collective there). Optional server side,
capabilities declared where the memory registers (:mod:`sasg.core.capabilities`;
:mod:`sasg.engine.round` calls them where a memory has them): ``server_store(compressor, M,
device=..., dtype=...)`` is what the server keeps per worker instead of the last messages, and
``receive(store, senders, q_all)`` updates it instead of replacing the senders' messages
(``ef21``: the estimates, :math:`h_m \mathrel{+}= \mathrm{decoded}(c_m)`); the step is still
``store.sum``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..payloads.encoded import Encoded


@runtime_checkable
class Memory(Protocol):
    name: str
    corrects: bool
    worker_buffers: tuple[str, ...]

    def upload(
        self,
        workers,
        rows: Sequence[int],
        grads: Sequence[Tensor],
        scale: float,
        compressor,
        generators: Sequence[torch.Generator] | None,
        codec,
    ) -> Encoded:
        ...

    def describe(self) -> dict:
        ...
