"""The one loop every run goes through: seeds, resume, per-round checkpoints and watchers, result.

``sasg run`` and ``sasg compare`` (:func:`sasg.experiment.run_seeds`) and every rank of
``sasg launch`` (:class:`sasg.distributed.rank.RankLoop`) train the same way: for each seed and
algorithm, continue from the kept result or the newest checkpoint under ``--resume``, run the
rounds with a checkpoint every ``--checkpoint-every`` rounds and the watchers (progress lines,
TensorBoard, the stop check) after each, then keep the result. :class:`RunLoop` is that loop for
one process holding every worker; a rank subclasses it for what differs there (its checkpoint
names, the resume point all ranks agree on, the collectives around a run, no containment of a
failure: a rank that fails stops every rank).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, RunConfig
from .data import DataSplit
from .lifecycle.checkpoint import (CheckpointWriteError, check_same_setting, checkpoint_path, newest_intact,
                                   read_state, remove_checkpoint, result_path, save_checkpoint, saved_iterations,
                                   write_atomically)
from .sim import RunResult, Simulator


@dataclass(frozen=True)
class Checkpoints:
    """Where and how often each run saves itself, and whether to continue from what is there.

    Every (seed, algorithm) run writes ``seed<S>-<algorithm>-iter<K>.pt`` every ``every`` rounds
    (the last two kept) and ``seed<S>-<algorithm>-done.pt`` when it finishes (a rank of
    ``sasg launch``: ``seed<S>-rank<R>-iter<K>.pt``, and no finished file). With ``resume``, a
    finished run is taken as it is and an interrupted one continues from its newest intact
    checkpoint, bit-exactly: the run folder equals the uninterrupted one's except timings."""

    folder: Path
    every: int = 0
    resume: bool = False


class RunLoop:
    """The runs of ``configs`` (one per seed) x ``algorithms`` on ``data``, one simulator at a
    time (memory holds one model's state, not seeds x algorithms of them).

    ``watchers`` (see :mod:`sasg.report.live`) are called after every round with the simulator and
    a label, and closed at the end (also on an error or Ctrl-C: what a TensorBoard log holds so
    far is flushed). ``tick(n)`` is told of every round done (a progress bar), ``describe(text)``
    of the run starting (the bar's label)."""

    # A run that raises one of these fails alone: its record says why, the other runs go on.
    contained: tuple[type[BaseException], ...] = (RuntimeError, ValueError, ArithmeticError)

    def __init__(self, configs: list[RunConfig], algorithms, data: DataSplit, checkpoints: Checkpoints | None = None,
                 watchers=(), tick=None, describe=None):
        self.configs, self.algorithms, self.data = list(configs), tuple(algorithms), data
        self.checkpoints, self.watchers, self.tick, self.describe = checkpoints, list(watchers), tick, describe

    def run(self) -> dict[int, dict[str, RunResult]]:
        """``{seed: {algorithm: RunResult}}``."""
        several = len(self.configs) > 1
        runs: dict[int, dict[str, RunResult]] = {}
        with self._closing_watchers():
            for cfg in self.configs:
                runs[cfg.seed] = {}
                for name in self.algorithms:
                    if self.describe is not None:
                        self.describe(f"seed {cfg.seed} {name:>6}" if several else f"{name:>6}")
                    label = f"seed {cfg.seed} {name}" if several else name
                    runs[cfg.seed][name] = self.run_one(cfg, name, label)
        return runs

    @contextmanager
    def _closing_watchers(self):
        try:
            yield
        finally:
            for w in self.watchers:
                w.close()

    def run_one(self, cfg: RunConfig, name: str, label: str) -> RunResult:
        """One run: from its kept result, its newest checkpoint or its start, to its result."""
        ck, tick, setting = self.checkpoints, self.tick, cfg.to_dict()
        if ck is not None and ck.resume:
            result = self.finished(cfg, name, setting)
            if result is not None:
                if tick is not None:
                    tick(result.ledger.iterations)
                return result
        sim = self.build(cfg, name)
        if ck is not None and ck.resume:
            state = self.resume_state(cfg, name)
            if state is not None:
                check_same_setting(state["config"], setting)
                sim.load_state_dict(state["run"])
                if tick is not None:
                    tick(sim.iteration)

        def after_round(s: Simulator) -> None:
            k = s.iteration
            if ck is not None and ck.every and k % ck.every == 0 and k < s.total_iterations:
                save_checkpoint(ck.folder, cfg.seed, self.who(name), k, {"config": setting, "run": s.state_dict()})
            for w in self.watchers:
                w(s, label)

        try:
            result = self.train(sim, after_round if ck is not None or self.watchers else None)
        except self.contained as e:
            result = self.failed(sim, cfg, name, e)
        if ck is not None and result.failed is None:
            self.keep(cfg, name, setting, result)
        return result

    # ----- what a rank does differently (sasg.distributed.rank) ---------------------------------
    def who(self, name: str):
        """Whose checkpoints these are: the algorithm's (a rank's: the rank's)."""
        return name

    def build(self, cfg: RunConfig, name: str) -> Simulator:
        return Simulator(cfg, name, self.data)

    def train(self, sim: Simulator, after_round) -> RunResult:
        return sim.run(progress=self.tick, after_round=after_round)

    def finished(self, cfg: RunConfig, name: str, setting: dict) -> RunResult | None:
        """The kept result of a run that finished before (``--resume`` takes it as it is)."""
        done = result_path(self.checkpoints.folder, cfg.seed, name)
        if not done.exists():
            return None
        state = read_state(done)
        check_same_setting(state["config"], setting)
        return RunResult.from_state(state["run"])

    def resume_state(self, cfg: RunConfig, name: str) -> dict | None:
        """The state to continue from: the newest intact checkpoint (None: start afresh, as there
        is none; never a silent fresh start when there are some and none loads)."""
        folder = self.checkpoints.folder
        found = newest_intact(folder, cfg.seed, name)
        if found is None and saved_iterations(folder, cfg.seed, name):
            raise _none_readable(folder, cfg.seed, name)
        return None if found is None else found[1]

    def failed(self, sim: Simulator, cfg: RunConfig, name: str, e: Exception) -> RunResult:
        """Something inside this algorithm broke (e.g. a member refusing non-finite values after a
        too large lr): its record says so and the other algorithms and seeds still run."""
        if isinstance(e, (ConfigError, CheckpointWriteError)):
            raise e  # a setting or the disk: the whole command stops with its one line
        # A SIGTERM that came during the round (its exit may surface as whatever torch made of it,
        # e.g. an internal assert): the stop it is, not this algorithm's failure.
        from .lifecycle.signals import stop_if_signalled

        stop_if_signalled()
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"
        print(f"sasg: error: {name} (seed {cfg.seed}) failed at iteration {sim.iteration}: {why}; "
              "the other runs go on", file=sys.stderr, flush=True)
        return sim.result(failed=why)

    def keep(self, cfg: RunConfig, name: str, setting: dict, result: RunResult) -> None:
        """A finished run is kept whole, so that a resumed compare skips it (a failed one is not:
        ``--resume`` tries it again from its last checkpoint); its round checkpoints go."""
        folder = self.checkpoints.folder
        write_atomically(result_path(folder, cfg.seed, name), {"config": setting, "run": result.state_dict()})
        for it in saved_iterations(folder, cfg.seed, name):
            remove_checkpoint(checkpoint_path(folder, cfg.seed, name, it))


def _none_readable(folder: Path, seed: int, name: str) -> ConfigError:
    """``--resume`` found checkpoints of this run, and none of them loads."""
    files = ", ".join(checkpoint_path(folder, seed, name, it).name for it in saved_iterations(folder, seed, name))
    return ConfigError(
        f"no readable checkpoint of {name} (seed {seed}) in {folder}: {files} cannot be read (see the notes "
        "above); move them away to start that run afresh, or drop --resume"
    )


def has_checkpoints(folder: Path, seeds: list[int], algorithms) -> bool:
    """Anything for ``--resume`` to continue from: a finished or an interrupted run."""
    return any(result_path(folder, s, a).exists() or saved_iterations(folder, s, a) for s in seeds for a in algorithms)
