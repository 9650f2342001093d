"""M virtual workers in one process, following the algorithm core round by round.

Deterministic under the seed: the model is initialised from its own generator, the IID split from
another, and every worker shuffles its shard with its own generator. The global RNG is never used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..accounting import CONVENTIONS, Ledger, downlink_bits_per_round, uplink_bits_per_upload
from ..core.algorithms import Algorithm, make_algorithm
from ..core.layout import Layout
from ..data.dataset import DataSplit
from ..data.partition import iid_shards
from ..data.sampler import WorkerSampler
from ..models import build_model
from .evaluate import evaluate
from .gradients import make_gradients


@dataclass
class RunResult:
    """What one algorithm's run produced: eval history, per-round ledger and timings."""

    algorithm: str
    history: list[dict]
    ledger: Ledger
    train_seconds: float
    eval_seconds: float
    backend: str
    num_parameters: int
    theta: Tensor = field(repr=False)

    @property
    def wall_seconds(self) -> float:
        return self.train_seconds + self.eval_seconds

    @property
    def iters_per_second(self) -> float:
        return self.ledger.iterations / self.train_seconds if self.train_seconds > 0 else float("inf")


class Simulator:
    """Simulate ``config.workers`` workers running ``algorithm`` on ``data``.

    Example::

        from sasg import RunConfig, Simulator, load_dataset
        cfg = RunConfig(epochs=1).validate()
        sim = Simulator(cfg, "sasg", load_dataset("mnist5k"))
        result = sim.run()
        print(result.history[-1]["test_acc"], result.ledger.totals()["uploads"])
    """

    def __init__(self, config, algorithm: str, data: DataSplit):
        self.config = config
        self.data = data
        device = torch.device(config.device)
        self.device = device
        self.num_workers = M = config.workers
        self.model = build_model(config.model, data.sample_shape, data.num_classes, config.seed).to(device)
        self.layout = Layout.from_module(self.model)
        self.theta = self.layout.flatten(dict(self.model.named_parameters())).detach().clone()
        self.algorithm: Algorithm = make_algorithm(
            algorithm, self.layout, config.density, config.window, config.threshold_scale
        )
        self.workers = self.algorithm.init_worker_state(M, device=device)
        self.server = self.algorithm.init_server_state(M, device=device)
        shards = iid_shards(len(data.train), M, torch.Generator().manual_seed(config.seed))
        self.sampler = WorkerSampler([s.to(device) for s in shards], config.batch_size, config.seed)
        self.gradients = make_gradients(self.model, self.layout, config.backend)
        convention = CONVENTIONS[config.convention]
        self.bits_per_upload = uplink_bits_per_upload(self.algorithm.compressor, convention)
        self.bits_down_per_round = downlink_bits_per_round(self.layout.numel, M, convention)
        self.ledger = Ledger(num_workers=M)
        self._step = torch.zeros_like(self.theta)
        self.lr_at: Callable[[int], float] = lambda iteration: config.lr

    @property
    def iteration(self) -> int:
        return self.server.iteration

    @property
    def total_iterations(self) -> int:
        return max(1, int(round(self.config.epochs * self.sampler.rounds_per_epoch)))

    def step(self) -> Tensor:
        """One round; returns the (M,) bool upload mask."""
        k = self.iteration
        lr = self.lr_at(k)
        M = self.num_workers
        idx = self.sampler.next()
        x, y = self.data.train.x[idx], self.data.train.y[idx]
        g = self.gradients(self.theta, x, y)

        def stale(rows: Tensor) -> Tensor:
            return self.gradients(self.workers.anchor[rows], x[rows], y[rows])

        upload = self.algorithm.decide(k, self.workers, self.server, M, lr, g, stale)
        q = self.algorithm.upload(self.workers, upload, g, self.theta, lr / M)
        senders = upload.nonzero().squeeze(1)
        self.algorithm.aggregate(self.server, senders, q, self._step)
        self.theta.sub_(self._step)
        n_up = int(senders.numel())
        self.ledger.record(n_up, n_up * self.bits_per_upload, self.bits_down_per_round)
        return upload

    def evaluate(self) -> dict:
        test = evaluate(self.model, self.layout, self.theta, self.data.test)
        train = evaluate(self.model, self.layout, self.theta, self.data.train)
        totals = self.ledger.totals()
        return {
            "iteration": totals["iterations"],
            "uploads": totals["uploads"],
            "bits_up": totals["bits_up"],
            "bits_down": totals["bits_down"],
            "train_loss": train["loss"],
            "test_acc": test["acc"],
        }

    def run(self, iterations: int | None = None, progress: Callable[[int], None] | None = None) -> RunResult:
        """Run to ``iterations`` rounds (default: ``epochs`` worth), evaluating every
        ``eval_every`` rounds, at round 0 and at the end."""
        total = self.total_iterations if iterations is None else iterations
        every = self.config.eval_every
        history: list[dict] = []
        train_s = eval_s = 0.0
        t0 = time.perf_counter()
        history.append(self.evaluate())
        eval_s += time.perf_counter() - t0
        while self.iteration < total:
            t0 = time.perf_counter()
            self.step()
            train_s += time.perf_counter() - t0
            if self.iteration % every == 0 or self.iteration == total:
                t0 = time.perf_counter()
                history.append(self.evaluate())
                eval_s += time.perf_counter() - t0
            if progress is not None:
                progress(1)
        return RunResult(
            algorithm=self.algorithm.name,
            history=history,
            ledger=self.ledger,
            train_seconds=train_s,
            eval_seconds=eval_s,
            backend=self.gradients.backend,
            num_parameters=self.layout.numel,
            theta=self.theta.clone(),
        )

    # ----- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "algorithm": self.algorithm.name,
            "theta": self.theta.clone(),
            "workers": self.workers.state_dict(),
            "server": self.server.state_dict(),
            "sampler": self.sampler.state_dict(),
            "ledger": self.ledger.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.algorithm.name:
            raise ValueError(f"checkpoint is for {state['algorithm']!r}, not {self.algorithm.name!r}")
        if state["theta"].shape != self.theta.shape:
            raise ValueError("checkpoint parameters do not match this model")
        self.theta.copy_(state["theta"])
        self.workers.load_state_dict(state["workers"])
        self.server.load_state_dict(state["server"])
        self.sampler.load_state_dict(state["sampler"])
        self.ledger.load_state_dict(state["ledger"])
