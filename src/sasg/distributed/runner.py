"""The rank's part of a run: the simulator's setting, one worker per process.

:class:`DistributedRun` is built like :class:`~sasg.sim.Simulator` (same model init from the seed,
same IID split, same per-worker sampler streams, same gradient code), so rank ``m`` draws exactly
the minibatches of simulated worker ``m`` and the run follows the simulator's trajectory. It
differs only in :meth:`step` (one worker + server replica through :class:`~.rank.RankStep` and a
transport), in :meth:`evaluate` (rank 0 evaluates; the others only keep the ledger) and in
:meth:`run` (history and timings live on the object, so a checkpoint can resume them).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor

from ..config import ConfigError
from ..data.dataset import DataSplit
from ..sim.simulator import RunResult, Simulator
from .rank import RankStep


class DistributedRun(Simulator):
    """Rank ``transport.rank`` of ``config.workers`` real workers running ``algorithm``."""

    def __init__(self, config, algorithm: str, data: DataSplit, transport):
        if config.workers != transport.world_size:
            raise ConfigError(
                f"--workers {config.workers} but {transport.world_size} processes; "
                f"the number of workers is the number of processes"
            )
        super().__init__(config, algorithm, data)
        self.transport = transport
        self.rank = transport.rank
        self.engine = RankStep(self.algorithm, transport, config.convention, device=self.device)
        # The simulator's names now point at this rank's state (one worker + server replica).
        self.workers = self.engine.workers
        self.server = self.engine.server
        self.ledger = self.engine.ledger
        self._me = torch.tensor([self.rank], device=self.device)
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    def step(self) -> Tensor:
        """One round on this rank; returns the (M,) bool flags (who sent), the same on every rank."""
        k = self.iteration
        m = self.rank
        # The simulator's sampler, all M streams (index bookkeeping only): row m is exactly what
        # virtual worker m draws, whatever the partition.
        idx = self.sampler.next()[m : m + 1]
        x, y = self.data.train.x[idx], self.data.train.y[idx]
        if self.augment_generators is not None:
            x = self.augment(x[0], self.augment_generators[m]).unsqueeze(0)
        me = self._me
        g = self.gradients(self.theta, x, y, workers=me)[0]

        def stale(anchor: Tensor) -> Tensor:
            return self.gradients(anchor.reshape(1, -1), x, y, workers=me, update_stats=False)[0]

        return self.engine.step(self.theta, g, stale, self.lr_at(k))

    def evaluate(self) -> dict:
        if self.rank == 0:
            return super().evaluate()
        # Only rank 0 evaluates (and writes); the others keep the communication columns.
        return {**self.communication_point(), "train_loss": math.nan, "test_acc": math.nan,
                "test_top5": math.nan, "lr": self.lr_at(max(0, self.iteration - 1))}

    def run(
        self,
        iterations: int | None = None,
        progress: Callable[[int], None] | None = None,
        after_round: Callable[["DistributedRun"], None] | None = None,
    ) -> RunResult:
        """Same schedule as :meth:`Simulator.run` (evaluate at 0, every ``eval_every`` and at the
        end), resumable: a loaded checkpoint continues its history. ``after_round(self)`` runs
        after every round (checkpoints)."""
        total = self.total_iterations if iterations is None else iterations
        every = self.config.eval_every
        if not self.history:
            t0 = time.perf_counter()
            self.history.append(self.evaluate())
            self.eval_seconds += time.perf_counter() - t0
        while self.iteration < total:
            t0 = time.perf_counter()
            self.step()
            self.train_seconds += time.perf_counter() - t0
            if self.iteration % every == 0 or self.iteration == total:
                t0 = time.perf_counter()
                self.history.append(self.evaluate())
                self.eval_seconds += time.perf_counter() - t0
            if progress is not None:
                progress(1)
            if after_round is not None:
                after_round(self)
        return RunResult(
            algorithm=self.algorithm.name,
            history=list(self.history),
            ledger=self.ledger,
            train_seconds=self.train_seconds,
            eval_seconds=self.eval_seconds,
            backend=self.gradients.backend,
            num_parameters=self.layout.numel,
            theta=self.theta.clone(),
        )

    def transport_totals(self) -> dict:
        """Counters of all ranks summed (a collective: every rank must call it)."""
        c = self.transport.counters.to_dict()
        keys = sorted(c)
        if hasattr(self.transport, "all_sum_int"):
            sums = self.transport.all_sum_int([c[k] for k in keys])
        else:
            sums = [c[k] for k in keys]
        return dict(zip(keys, sums))

    # ----- checkpointing: per rank ---------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(
            rank=self.rank,
            world_size=self.transport.world_size,
            transport=self.transport.counters.to_dict(),
            history=[dict(p) for p in self.history],
            train_seconds=self.train_seconds,
            eval_seconds=self.eval_seconds,
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        if (state["rank"], state["world_size"]) != (self.rank, self.transport.world_size):
            raise ValueError(
                f"checkpoint of rank {state['rank']} of {state['world_size']} loaded into "
                f"rank {self.rank} of {self.transport.world_size}"
            )
        super().load_state_dict(state)
        self.transport.counters.load(state["transport"])
        self.history = [dict(p) for p in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        self.eval_seconds = float(state["eval_seconds"])
