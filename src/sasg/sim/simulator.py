"""M workers' data, model and gradients around the round engine: the simulator, and a rank's run.

:class:`Simulator` holds the workers its transport gives it: all ``M`` over the default
in-process transport (one process simulates every worker, vectorised over them), or one per rank
over :class:`sasg.distributed.TorchTransport` (:class:`sasg.distributed.DistributedRun`). Either
way the round is :class:`sasg.engine.RoundEngine`'s, and a held worker draws exactly the
minibatches, augmentations and member randomness of simulated worker ``m``: the same seed gives
the same trajectory in every runner.

Deterministic under the seed: the model is initialised from its own generator, the split over
workers from another, and every worker shuffles its shard with its own generator. The global RNG
is never used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor

from ..config import ConfigError, RunConfig
from ..core.algorithm import Algorithm
from ..core.capabilities import provided
from ..core.layout import Layout
from ..core.spec import AlgorithmSpec
from ..core.round_state import at_least, check_like, generator_state, list_of, optional
from ..core.workspace import Workspace
from ..data import make_augmentation, make_partition, worker_seed
from ..data.dataset import ArrayDataset, DataSplit, to_device
from ..data.sampler import WorkerSampler
from ..models import build_model
from ..runtime import EngineViews, build_algorithm, build_engine
from ..schedule import lagged, step_decay
from .evaluate import evaluate
from .gradients import make_gradients
from .result import RunResult


TRAIN_EVAL_SAMPLES = 10_000


class Simulator(EngineViews):
    """Run ``config.workers`` workers of ``algorithm`` on ``data``.

    ``algorithm``: a registered name — an alias (``sgd``, ``sparse``, ``lasg``, ``sasg``) or a
    composition ``TRIGGER+COMPRESSOR[+MEMORY]`` — built with the config's settings for it
    (:meth:`RunConfig.settings_for`), or a function ``layout -> Algorithm`` for members built by
    hand (see ``docs/extending.md``). ``transport``: which workers this object holds (default:
    all of them, in this process).

    Example::

        from sasg import RunConfig, Simulator, load_dataset
        cfg = RunConfig(epochs=1).validate()
        sim = Simulator(cfg, "sasg", load_dataset("mnist5k"))
        result = sim.run()
        print(result.history[-1]["test_acc"], result.ledger.totals()["uploads"])
    """

    def __init__(self, config, algorithm: str | Callable[[Layout], Algorithm], data: DataSplit, transport=None):
        if not isinstance(config, RunConfig):
            raise TypeError(f"Simulator needs a sasg.RunConfig, got {type(config).__name__}")
        # Checked before anything is built (a bad setting is one ConfigError, not NaNs hours into
        # a run), on a copy: validate() normalizes in place (device auto -> cpu/cuda, ...) and the
        # caller's config stays as it was. Idempotent, so a validated config comes out equal.
        self.config = config = replace(config).validate()
        if not all(hasattr(data, part) for part in ("train", "test", "sample_shape", "num_classes")):
            raise TypeError(
                f"Simulator needs the data set, a DataSplit such as sasg.load_dataset('mnist5k'), got "
                f"{type(data).__name__}"
            )
        spec = None if callable(algorithm) else _spec_of(algorithm, config)
        device = torch.device(config.device)
        if data.train.x.device != device:  # e.g. load_dataset's CPU tensors for a CUDA run
            data = to_device(data, device)
        self.data = data
        self.device = device
        self.num_workers = M = config.workers
        if transport is not None and transport.world_size != M:
            raise ConfigError(
                f"--workers {M} but {transport.world_size} processes; the number of workers is the "
                "number of processes"
            )
        self.model = build_model(config.model, data.sample_shape, data.num_classes, config.seed).to(device)
        self.layout = Layout.from_module(self.model)
        self.theta = self.layout.flatten(dict(self.model.named_parameters())).detach().clone()
        self.algorithm: Algorithm = (_built_by(algorithm, self.layout) if spec is None
                                     else build_algorithm(spec, self.layout, config.codec_for(algorithm)))
        # Default: all M workers in this process; a rank's TorchTransport holds one.
        self.engine = build_engine(self.algorithm, transport, workers=M, seed=config.seed, device=device)
        self.transport = self.engine.transport
        self.local_workers = list(self.transport.local_workers)
        self._holds_all = len(self.local_workers) == M
        self._local = torch.tensor(self.local_workers, dtype=torch.long, device=device)
        self.shards = make_partition(
            config.partition, data.train.y.cpu(), M, torch.Generator().manual_seed(config.seed),
            beta=config.beta, shards_per_worker=config.shards_per_worker, min_size=config.batch_size,
        )
        # Every worker's stream (index bookkeeping only): a held worker m draws exactly what
        # simulated worker m draws, whatever the partition.
        self.sampler = WorkerSampler([s.to(device) for s in self.shards], config.batch_size, config.seed)
        self.augment = make_augmentation(config.augment)
        self.augment_generators = (
            None if config.augment == "none"
            # CPU generators on every device: the draws (a few numbers per image) are moved to the
            # data, so a GPU run augments exactly as a CPU run with the same seed does.
            else [torch.Generator().manual_seed(worker_seed(config.seed, m, stream=1)) for m in self.local_workers]
        )
        self.gradients = make_gradients(self.model, self.layout, config.backend)
        # A rule that says before the round which rows it will check (wk2) lets a one-worker
        # engine (a rank of a real run) compute the fresh and the stale gradient in one call.
        self._checked_rows = provided(self.algorithm.trigger, "checked_rows")
        self._pair_gradients = (self._checked_rows is not None and len(self.local_workers) == 1
                                and hasattr(self.gradients, "fresh_and_stale"))
        self.workspace = Workspace()  # the gathered anchors of the checked workers
        self._train_eval = _train_eval_set(data)
        self.lr_at: Callable[[int], float] = step_decay(
            config.lr, config.lr_decay_epochs, config.lr_decay_factor, self.sampler.rounds_per_epoch
        )
        # The lr the lazy threshold divides by: lr_at itself, or lr_at --threshold-lr-lag epochs
        # late (the algorithm's own lag; a hand-built algorithm takes the shared one).
        lag = spec.settings.threshold_lr_lag if spec is not None else config.threshold_lr_lag
        self.threshold_lr_at: Callable[[int], float] = lagged(self.lr_at, lag, self.sampler.rounds_per_epoch)
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    # The engine's state under the names a reader expects.
    @property
    def workers(self):
        return self.engine.workers

    @property
    def server(self):
        return self.engine.server

    @property
    def total_iterations(self) -> int:
        if self.config.iterations is not None:
            return self.config.iterations
        return max(1, int(round(self.config.epochs * self.sampler.rounds_per_epoch)))

    def step(self) -> Tensor:
        """One round; returns the (M,) bool flags (who sent)."""
        k = self.iteration
        idx = self.sampler.next()
        if not self._holds_all:
            idx = idx.index_select(0, self._local)
        x, y = self.data.train.x[idx], self.data.train.y[idx]
        if self.augment_generators is not None:
            # Each worker augments its own batch with its own generator (as a real rank would).
            x = torch.stack([self.augment(x[i], g) for i, g in enumerate(self.augment_generators)])
        ids = None if self._holds_all else self._local
        # Fresh and (lazy rules, checked workers only) stale gradients as per-parameter column
        # blocks, as the backend has them: the members read them block by block, so vmap's
        # outputs are never copied into a flat buffer. Nothing keeps them past this round.
        anchor = self.workers.anchor
        early = None  # the stale gradients, when computed with the fresh ones
        if self._pair_gradients and bool(self._checked_rows(k, self.workers.staleness, self.local_workers,
                                                           self.num_workers).all()):
            # One worker held (a rank) whose rule will compare against the anchor this round:
            # both gradients in one pass (VmapGradients.fresh_and_stale says what that buys).
            g, early = self.gradients.fresh_and_stale(self.theta, anchor, x, y)
        else:
            g = self.gradients.blocks(self.theta, x, y, workers=ids)

        def stale(rows: Tensor) -> tuple[Tensor, ...]:
            if early is not None and rows.numel() == 1:
                return early
            if rows.numel() == len(self.local_workers):  # everyone is checked: no copies
                return self.gradients.blocks(anchor, x, y, workers=ids, update_stats=False)
            # The anchors of the checked rows, gathered into a buffer reused every round.
            work = self.workspace.buffer("anchors", (rows.numel(), self.layout.numel), self.theta)
            anchors = torch.index_select(anchor, 0, rows, out=work)
            who = rows if ids is None else ids[rows]
            return self.gradients.blocks(anchors, x[rows], y[rows], workers=who, update_stats=False)

        # No lag: the threshold takes the round's lr.
        threshold_lr = None if self.threshold_lr_at is self.lr_at else self.threshold_lr_at(k)
        result = self.engine.step(self.theta, g, stale, self.lr_at(k), threshold_lr)
        self.theta.sub_(result.step)  # theta^{k+1} = theta^k - sum_m q_m
        return result.flags

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

    def run(
        self,
        iterations: int | None = None,
        progress: Callable[[int], None] | None = None,
        after_round: Callable[["Simulator"], None] | None = None,
    ) -> RunResult:
        """Run to ``iterations`` rounds (default: ``epochs`` worth), evaluating at round 0, every
        ``eval_every`` rounds and at the end. Resumable: a loaded state continues its history.
        ``after_round(self)`` runs after every round (checkpoints)."""
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
        return self.result()

    def result(self, failed: str | None = None) -> RunResult:
        """What the run has produced so far (``failed``: why it stopped early, if it did)."""
        return RunResult(
            algorithm=self.algorithm.name,
            history=list(self.history),
            ledger=self.ledger,
            train_seconds=self.train_seconds,
            eval_seconds=self.eval_seconds,
            backend=self.gradients.backend,
            num_parameters=self.layout.numel,
            theta=self.theta.clone(),
            codec=self.algorithm.codec_name,
            biased=self.algorithm.biased,
            failed=failed,
        )

    # ----- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "algorithm": self.algorithm.name,
            "theta": self.theta.clone(),
            "engine": self.engine.state_dict(),
            "sampler": self.sampler.state_dict(),
            "gradients": self.gradients.state_dict(),
            "augment_generators": None
            if self.augment_generators is None
            else [g.get_state() for g in self.augment_generators],
            "history": [dict(p) for p in self.history],
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
        }

    def check_state_dict(self, state) -> None:
        """Raise one ``ValueError`` naming the first part of ``state`` (a :meth:`state_dict`) that is
        missing or does not fit this run: another algorithm, model, number of workers, augmentation
        or backend. Changes nothing."""
        saved = state.get("algorithm") if isinstance(state, Mapping) else None
        if isinstance(saved, str) and saved != self.algorithm.name:
            raise ValueError(f"checkpoint is for {saved!r}, not {self.algorithm.name!r}")
        sampler = self.sampler
        check_like(state, {
            "algorithm": self.algorithm.name,
            "theta": self.theta,
            "engine": self.engine.check_state_dict,
            "sampler": {
                "round": at_least(0),
                "generators": [generator_state] * len(sampler.generators),
                # a worker's shuffled shard (None before its first batch), and where it stands in it
                "order": [optional(shard) for shard in sampler.shards],
                "pos": [at_least(0)] * len(sampler.shards),
            },
            "gradients": self._gradients_reference(),
            "augment_generators": None
            if self.augment_generators is None
            else [generator_state] * len(self.augment_generators),
            "history": list_of(_history_point),
            "train_seconds": 0.0,
            "eval_seconds": 0.0,
        })

    def _gradients_reference(self):
        """What the gradient backend's state looks like: the loop backend keeps the running
        statistics (the model's buffers) of each worker it has seen, made on first use; vmap none."""
        if self.gradients.backend == "loop":
            return {"worker_buffers": list_of(dict(self.model.named_buffers()))}
        return self.gradients.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """All or nothing: :meth:`check_state_dict` first (a state with a part missing or wrong is
        refused and this simulator is left as it was), then every part."""
        self.check_state_dict(state)
        self.engine._apply_state(state["engine"])
        self.theta.copy_(state["theta"])
        self.sampler.load_state_dict(state["sampler"])
        self.gradients.load_state_dict(state["gradients"])
        if self.augment_generators is not None:
            for g, st in zip(self.augment_generators, state["augment_generators"]):
                g.set_state(st)
        self.history = [dict(p) for p in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        self.eval_seconds = float(state["eval_seconds"])


def _spec_of(algorithm: str, config: RunConfig) -> AlgorithmSpec:
    """``algorithm`` parsed with the config's settings for it (:meth:`RunConfig.settings_for`): the
    algorithm run here need not be one of ``config.algorithms``, so it is checked here too."""
    try:
        return AlgorithmSpec.parse(algorithm, config.settings_for(algorithm))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _built_by(factory: Callable[[Layout], Algorithm], layout: Layout) -> Algorithm:
    """The algorithm a hand-written factory builds on ``layout`` (docs/extending.md), checked."""
    algorithm = factory(layout)
    built = algorithm.layout.segments if isinstance(algorithm, Algorithm) else None
    if built is None or list(built) != list(layout.segments):
        raise ValueError("an algorithm factory must return an Algorithm built on the layout it is given")
    return algorithm


def _train_eval_set(data: DataSplit) -> ArrayDataset:
    """Where train loss is measured: the whole training set up to TRAIN_EVAL_SAMPLES, else a fixed
    evenly spaced subset of that size (a full pass over 50,000 CIFAR images at every evaluation
    would cost more than the training between evaluations)."""
    n = len(data.train)
    if n <= TRAIN_EVAL_SAMPLES:
        return data.train
    pick = torch.linspace(0, n - 1, TRAIN_EVAL_SAMPLES).long().to(data.train.x.device)
    return ArrayDataset(data.train.x[pick], data.train.y[pick], data.num_classes, data.name)


def _history_point(saved, where: str) -> None:
    if not isinstance(saved, Mapping):
        raise ValueError(f"state part {where!r} is {type(saved).__name__}, expected a dict (an evaluation point)")
