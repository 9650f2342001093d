r"""The Memory protocol: what a worker keeps of what it did not send.

An uploading worker with fresh gradient ``g`` and step scale ``s`` (``s = eta / M``) sends

.. math:: q_m = C(v), \qquad v = s\,g + (\text{what its memory adds})

and its memory decides what it keeps for later rounds. ``upload(workers, rows, grads, scale,
compressor, generators)`` does this for the uploading ``rows`` of a batch of workers and returns
their payload (one message per row, in ``rows`` order). ``grads`` holds all ``N`` workers' fresh
gradients as per-segment column blocks (:meth:`~sasg.core.layout.Layout.as_columns`).

``worker_buffers`` names the ``(N, d)`` buffers it keeps per worker (created zero by the
:class:`~sasg.core.state.WorkerState`, saved in checkpoints). A fast path (updating its buffer
where it lies) belongs in the member's ``upload``, never in the round engine.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..payloads import Payload


@runtime_checkable
class Memory(Protocol):
    name: str
    worker_buffers: tuple[str, ...]

    def upload(
        self,
        workers,
        rows: Sequence[int],
        grads: Sequence[Tensor],
        scale: float,
        compressor,
        generators: Sequence[torch.Generator] | None,
    ) -> Payload:
        ...

    def describe(self) -> dict:
        ...
