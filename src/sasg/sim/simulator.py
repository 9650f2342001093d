"""M virtual workers in one process, following the algorithm core round by round.

Deterministic under the seed: the model is initialised from its own generator, the split over
workers from another, and every worker shuffles its shard with its own generator. The global RNG
is never used.
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
from ..core.scratch import scratch
from ..data import make_augmentation, make_partition, worker_seed
from ..data.dataset import ArrayDataset, DataSplit
from ..data.sampler import WorkerSampler
from ..models import build_model
from ..schedule import step_decay
from .evaluate import evaluate
from .gradients import make_gradients
from .memory import retain_freed_memory


TRAIN_EVAL_SAMPLES = 10_000


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

    ``algorithm``: one of :data:`~sasg.core.algorithms.ALGORITHMS` (built with the config's
    density, window and threshold scale), or a function ``layout -> Algorithm`` for a trigger or
    compressor of your own (see ``docs/extending.md``); the bit count follows its compressor.

    Example::

        from sasg import RunConfig, Simulator, load_dataset
        cfg = RunConfig(epochs=1).validate()
        sim = Simulator(cfg, "sasg", load_dataset("mnist5k"))
        result = sim.run()
        print(result.history[-1]["test_acc"], result.ledger.totals()["uploads"])
    """

    def __init__(self, config, algorithm: str | Callable[[Layout], Algorithm], data: DataSplit):
        self.config = config
        self.data = data
        device = torch.device(config.device)
        self.device = device
        self.num_workers = M = config.workers
        self.model = build_model(config.model, data.sample_shape, data.num_classes, config.seed).to(device)
        self.layout = Layout.from_module(self.model)
        self.theta = self.layout.flatten(dict(self.model.named_parameters())).detach().clone()
        if callable(algorithm):
            self.algorithm: Algorithm = algorithm(self.layout)
            built = self.algorithm.layout.segments if isinstance(self.algorithm, Algorithm) else None
            if built is None or list(built) != list(self.layout.segments):
                raise ValueError("an algorithm factory must return an Algorithm built on the layout it is given")
        else:
            self.algorithm = make_algorithm(
                algorithm, self.layout, config.density, config.window, config.threshold_scale
            )
        if device.type == "cpu":
            retain_freed_memory()  # (M, d) temporaries would page-fault in afresh every round
        self.workers = self.algorithm.init_worker_state(M, device=device)
        self.server = self.algorithm.init_server_state(M, device=device)
        self.shards = make_partition(
            config.partition, data.train.y.cpu(), M, torch.Generator().manual_seed(config.seed),
            beta=config.beta, shards_per_worker=config.shards_per_worker, min_size=config.batch_size,
        )
        self.sampler = WorkerSampler([s.to(device) for s in self.shards], config.batch_size, config.seed)
        self.augment = make_augmentation(config.augment)
        self.augment_generators = (
            None if config.augment == "none"
            # CPU generators on every device: the draws (a few numbers per image) are moved to the
            # data, so a GPU run augments exactly as a CPU run with the same seed does.
            else [torch.Generator().manual_seed(worker_seed(config.seed, m, stream=1)) for m in range(M)]
        )
        self.gradients = make_gradients(self.model, self.layout, config.backend)
        convention = CONVENTIONS[config.convention]
        self.bits_per_upload = uplink_bits_per_upload(self.algorithm.compressor, convention)
        self.bits_down_per_round = downlink_bits_per_round(self.layout.numel, M, convention)
        self.ledger = Ledger(num_workers=M)
        # Train loss is measured on the whole training set up to TRAIN_EVAL_SAMPLES, else on a
        # fixed evenly spaced subset of that size (a full pass over 50,000 CIFAR images at every
        # evaluation would cost more than the training between evaluations).
        n = len(data.train)
        if n <= TRAIN_EVAL_SAMPLES:
            self._train_eval = data.train
        else:
            pick = torch.linspace(0, n - 1, TRAIN_EVAL_SAMPLES).long().to(data.train.x.device)
            self._train_eval = ArrayDataset(data.train.x[pick], data.train.y[pick], data.num_classes, data.name)
        self._step = torch.zeros_like(self.theta)
        self.lr_at: Callable[[int], float] = step_decay(
            config.lr, config.lr_decay_epochs, config.lr_decay_factor, self.sampler.rounds_per_epoch
        )

    @property
    def iteration(self) -> int:
        return self.server.iteration

    @property
    def total_iterations(self) -> int:
        if self.config.iterations is not None:
            return self.config.iterations
        return max(1, int(round(self.config.epochs * self.sampler.rounds_per_epoch)))

    def step(self) -> Tensor:
        """One round; returns the (M,) bool upload mask."""
        k = self.iteration
        lr = self.lr_at(k)
        M = self.num_workers
        idx = self.sampler.next()
        x, y = self.data.train.x[idx], self.data.train.y[idx]
        if self.augment_generators is not None:
            # Each worker augments its own batch with its own generator (as a real rank would).
            x = torch.stack([self.augment(x[m], g) for m, g in enumerate(self.augment_generators)])
        # Fresh and (lazy rules, checked workers only) stale gradients as per-parameter column
        # blocks, as the backend has them: the core reads them block by block, so vmap's
        # outputs are never copied into a flat buffer. Nothing keeps them past this round.
        g = self.gradients.blocks(self.theta, x, y)

        def stale(rows: Tensor) -> tuple[Tensor, ...]:
            if rows.numel() == M:  # everyone is checked: no copies of the anchors or the batch
                return self.gradients.blocks(self.workers.anchor, x, y, workers=rows, update_stats=False)
            # The anchors of the checked rows, gathered into a buffer reused every round.
            work = scratch(self, "anchors", (rows.numel(), self.layout.numel), self.theta)
            anchors = torch.index_select(self.workers.anchor, 0, rows, out=work)
            return self.gradients.blocks(anchors, x[rows], y[rows], workers=rows, update_stats=False)

        upload = self.algorithm.decide(k, self.workers, self.server, M, lr, g, stale)
        q = self.algorithm.upload(self.workers, upload, g, self.theta, lr / M)
        senders = upload.nonzero().squeeze(1)
        self.algorithm.aggregate(self.server, senders, q, self._step)
        self.theta.sub_(self._step)
        n_up = int(senders.numel())
        self.ledger.record(n_up, n_up * self.bits_per_upload, self.bits_down_per_round)
        return upload

    def communication_point(self) -> dict:
        """Cumulative counts at the current iteration, the first columns of an eval point."""
        totals = self.ledger.totals()
        return {
            "iteration": totals["iterations"],
            "uploads": totals["uploads"],
            "bits_up": totals["bits_up"],
            "bits_down": totals["bits_down"],
        }

    def evaluate(self) -> dict:
        # Models with running statistics are evaluated with worker 0's (rank 0 evaluates in a
        # real run); parameters are the server's.
        buffers = self.gradients.buffers_of(0)
        test = evaluate(self.model, self.layout, self.theta, self.data.test, buffers=buffers)
        train = evaluate(self.model, self.layout, self.theta, self._train_eval, buffers=buffers)
        return {
            **self.communication_point(),
            "train_loss": train["loss"],
            "test_acc": test["acc"],
            "test_top5": test["acc5"],
            "lr": self.lr_at(max(0, self.iteration - 1)),
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
            "gradients": self.gradients.state_dict(),
            "augment_generators": None
            if self.augment_generators is None
            else [g.get_state() for g in self.augment_generators],
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
        self.gradients.load_state_dict(state["gradients"])
        if self.augment_generators is not None:
            for g, st in zip(self.augment_generators, state["augment_generators"]):
                g.set_state(st)
