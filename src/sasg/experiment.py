"""Run several algorithms on one setting: same data, same seed, same split."""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import ConfigError, RunConfig, resolve_device
from .data import DataSplit, describe_partition, load_dataset, make_partition
from .data.dataset import to_device
from .sim import RunResult, Simulator


def load_data(config: RunConfig) -> DataSplit:
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    device = resolve_device(config.device)  # "auto" too, for a config not validated yet
    if device != "cpu":
        data = to_device(data, device)
    return data


def check_fits(config: RunConfig, data: DataSplit) -> None:
    """Errors that need the data's size, raised before anything runs or is written."""
    if len(data.test) == 0:
        raise ConfigError(f"the test set of {config.dataset!r} is empty; the test files hold no samples")
    n = len(data.train)
    if config.workers > n:
        raise ConfigError(
            f"{config.workers} workers but only {n} training samples; use --workers {n} or fewer"
        )
    shard = n // config.workers
    if config.partition == "iid" and config.batch_size > shard:
        raise ConfigError(
            f"batch size {config.batch_size} is larger than a worker's shard ({shard} samples = "
            f"{n} / {config.workers} workers); use --batch-size {shard} or fewer, or fewer workers"
        )


def run_algorithms(
    config: RunConfig, data: DataSplit | None = None, progress: bool = False
) -> dict[str, RunResult]:
    """Every algorithm of ``config.algorithms`` on the same data, split and seed."""
    return run_seeds(config, [config.seed], data, progress)[config.seed]


@dataclass(frozen=True)
class Checkpoints:
    """Where and how often each run saves itself, and whether to continue from what is there.

    Every (seed, algorithm) run writes ``seed<S>-<algorithm>-iter<K>.pt`` every ``every`` rounds
    (the last two kept) and ``seed<S>-<algorithm>-done.pt`` when it finishes. With ``resume``, a
    finished run is taken as it is and an interrupted one continues from its newest intact
    checkpoint, bit-exactly: the run folder equals the uninterrupted one's except timings."""

    folder: Path
    every: int = 0
    resume: bool = False


def run_seeds(
    config: RunConfig, seeds: list[int], data: DataSplit | None = None, progress: bool = False,
    checkpoints: Checkpoints | None = None, watchers=(),
) -> dict[int, dict[str, RunResult]]:
    """``{seed: {algorithm: RunResult}}`` for every seed (one simulator at a time, so memory
    holds one model's state, not seeds x algorithms of them). ``watchers`` (see
    :mod:`sasg.report.live`) are called after every round with the simulator and a label."""
    config.validate()
    data = load_data(config) if data is None else data
    check_fits(config, data)
    configs = [replace(config, seed=s) for s in seeds]
    per_run = Simulator(configs[0], config.algorithms[0], data).total_iterations
    _note_long_windows(config, per_run)
    bar = _progress_bar(per_run * len(seeds) * len(config.algorithms)) if progress else nullcontext()
    runs: dict[int, dict[str, RunResult]] = {}
    with bar as pbar, _closing(watchers):
        for cfg in configs:
            runs[cfg.seed] = {}
            for name in config.algorithms:
                if pbar is not None:
                    pbar.set_description(f"seed {cfg.seed} {name:>6}" if len(seeds) > 1 else f"{name:>6}")
                tick = pbar.update if pbar is not None else None
                label = f"seed {cfg.seed} {name}" if len(seeds) > 1 else name
                runs[cfg.seed][name] = _run_one(cfg, name, data, tick, checkpoints, watchers, label)
    return runs


@contextmanager
def _closing(watchers):
    try:
        yield
    finally:  # also on an error or Ctrl-C: what a TensorBoard log holds so far is flushed
        for w in watchers:
            w.close()


def _run_one(cfg: RunConfig, name: str, data: DataSplit, tick, checkpoints: Checkpoints | None, watchers=(),
             label: str = "") -> RunResult:
    from .lifecycle.checkpoint import (CheckpointWriteError, check_same_setting, checkpoint_path, newest_intact,
                                       read_state, remove_checkpoint, result_path, save_checkpoint,
                                       saved_iterations, write_atomically)

    ck = checkpoints
    setting = cfg.to_dict()
    if ck is not None and ck.resume:
        done = result_path(ck.folder, cfg.seed, name)
        if done.exists():
            state = read_state(done)
            check_same_setting(state["config"], setting)
            result = RunResult.from_state(state["run"])
            if tick is not None:
                tick(result.ledger.iterations)
            return result
    sim = Simulator(cfg, name, data)
    if ck is not None and ck.resume:
        found = newest_intact(ck.folder, cfg.seed, name)
        if found is None and saved_iterations(ck.folder, cfg.seed, name):
            raise _none_readable(ck.folder, cfg.seed, name)  # never a silent fresh start under --resume
        if found is not None:
            check_same_setting(found[1]["config"], setting)
            sim.load_state_dict(found[1]["run"])
            if tick is not None:
                tick(sim.iteration)

    def after_round(s: Simulator) -> None:
        k = s.iteration
        if ck is not None and ck.every and k % ck.every == 0 and k < s.total_iterations:
            save_checkpoint(ck.folder, cfg.seed, name, k, {"config": setting, "run": s.state_dict()})
        for w in watchers:
            w(s, label or name)

    try:
        result = sim.run(progress=tick, after_round=after_round if ck is not None or watchers else None)
    except (RuntimeError, ValueError, ArithmeticError) as e:
        if isinstance(e, (ConfigError, CheckpointWriteError)):
            raise  # a setting or the disk: the whole command stops with its one line
        # A SIGTERM that came during the round (its exit may surface as whatever torch made of it,
        # e.g. an internal assert): the stop it is, not this algorithm's failure.
        from .lifecycle.signals import stop_if_signalled

        stop_if_signalled()
        # Something inside this algorithm broke (e.g. a member refusing non-finite values after a
        # too large lr): its record says so and the other algorithms and seeds still run.
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"
        print(f"sasg: error: {name} (seed {cfg.seed}) failed at iteration {sim.iteration}: {why}; "
              "the other runs go on", file=sys.stderr, flush=True)
        result = sim.result(failed=why)
    if ck is not None and result.failed is None:  # kept whole, so that a resumed compare skips it
        # (a failed one is not: --resume tries it again from its last checkpoint); its round checkpoints go
        write_atomically(result_path(ck.folder, cfg.seed, name), {"config": setting, "run": result.state_dict()})
        for it in saved_iterations(ck.folder, cfg.seed, name):
            remove_checkpoint(checkpoint_path(ck.folder, cfg.seed, name, it))
    return result


def _none_readable(folder: Path, seed: int, name: str) -> ConfigError:
    """``--resume`` found checkpoints of this run, and none of them loads."""
    from .lifecycle.checkpoint import checkpoint_path, saved_iterations

    files = ", ".join(checkpoint_path(folder, seed, name, it).name for it in saved_iterations(folder, seed, name))
    return ConfigError(
        f"no readable checkpoint of {name} (seed {seed}) in {folder}: {files} cannot be read (see the notes "
        "above); move them away to start that run afresh, or drop --resume"
    )


def _note_long_windows(config: RunConfig, rounds: int) -> None:
    """A lazy rule whose window D covers the whole run never skips (its warm-up is D rounds): not
    an error (a quick trial run often is that short), but worth a line, as it looks like one."""
    from .core import REGISTRIES, AlgorithmSpec
    from .core.declared import capability

    for name in config.algorithms:
        spec = AlgorithmSpec.parse(name, config.settings_for(name))
        # Only a rule with a warm-up window (not always, not clag, which has no window): its
        # declared capability "window" (sasg.core.capabilities).
        if capability(REGISTRIES["trigger"].get(spec.trigger), "window") and spec.settings.window >= rounds:
            print(f"sasg: note: {name}: window D = {spec.settings.window} covers the whole run ({rounds} rounds), "
                  "so it uploads every round (warm-up); use a smaller --window or a longer run", file=sys.stderr)


def has_checkpoints(folder: Path, seeds: list[int], algorithms) -> bool:
    """Anything for ``--resume`` to continue from: a finished or an interrupted run."""
    from .lifecycle.checkpoint import result_path, saved_iterations

    return any(result_path(folder, s, a).exists() or saved_iterations(folder, s, a) for s in seeds for a in algorithms)


def partition_report(config: RunConfig, data: DataSplit) -> dict:
    """How the training set is split over workers (sizes and labels), for the run folder."""
    shards = make_partition(
        config.partition, data.train.y.cpu(), config.workers, torch.Generator().manual_seed(config.seed),
        beta=config.beta, shards_per_worker=config.shards_per_worker, min_size=config.batch_size,
    )
    return {"kind": config.partition, "workers": describe_partition(shards, data.train.y.cpu())}


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, silence when stderr is a pipe or a CI log.
    return tqdm(total=total, unit="it", dynamic_ncols=True, disable=None, leave=False)
