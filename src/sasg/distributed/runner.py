"""The rank's part of a run: the simulator's setting, one worker per process.

:class:`DistributedRun` is a :class:`~sasg.sim.Simulator` over a
:class:`~sasg.distributed.TorchTransport`: it holds only its own worker (rank ``m`` is worker
``m``: same model init, split, sampler stream, augmentation and member generators as simulated
worker ``m``) plus a replica of the server, and runs the same round engine. It differs only in
:meth:`evaluate` (rank 0 evaluates; the others keep the communication columns) and in what it
reports of the transport (:meth:`transport_totals`, :meth:`flag_entry_bytes`). The rank's loop
over seeds, checkpoints and the run folder is :mod:`sasg.distributed.rank`.
"""

from __future__ import annotations

import math

from ..data.dataset import DataSplit
from ..sim.simulator import Simulator


class DistributedRun(Simulator):
    """Rank ``transport.rank`` of ``config.workers`` real workers running ``algorithm``."""

    def __init__(self, config, algorithm, data: DataSplit, transport):
        super().__init__(config, algorithm, data, transport=transport)
        self.rank = transport.rank

    def evaluate(self) -> dict:
        if self.rank == 0:
            return super().evaluate()
        # Only rank 0 evaluates (and writes); the others keep the communication columns.
        return {**self.communication_point(), "train_loss": math.nan, "test_acc": math.nan,
                "test_top5": math.nan, "lr": self.lr_at(max(0, self.iteration - 1))}

    def transport_totals(self) -> dict:
        """Counters of all ranks summed (a collective: every rank must call it)."""
        c = self.transport.counters.to_dict()
        keys = sorted(c)
        if hasattr(self.transport, "all_sum_int"):
            sums = self.transport.all_sum_int([c[k] for k in keys])
        else:
            sums = [c[k] for k in keys]
        return dict(zip(keys, sums))

    def flag_entry_bytes(self) -> int:
        """Bytes of one worker's entry in a round's flag exchange: a flag (1) when every upload of
        this codec has one size, else the upload's size (4)."""
        return 1 if self.engine.template.fixed_size(self.algorithm.codec) else 4
