"""Run several algorithms on one setting: same data, same seed, same split."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import replace

import torch

from .config import ConfigError, RunConfig, resolve_device
from .data import DataSplit, describe_partition, load_dataset, make_partition
from .data.dataset import to_device
from .run_loop import Checkpoints, RunLoop
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


def run_seeds(
    config: RunConfig, seeds: list[int], data: DataSplit | None = None, progress: bool = False,
    checkpoints: Checkpoints | None = None, watchers=(),
) -> dict[int, dict[str, RunResult]]:
    """``{seed: {algorithm: RunResult}}`` for every seed, through :class:`sasg.run_loop.RunLoop`
    (one simulator at a time). ``watchers`` (see :mod:`sasg.report.live`) are called after every
    round with the simulator and a label."""
    config.validate()
    data = load_data(config) if data is None else data
    check_fits(config, data)
    configs = [replace(config, seed=s) for s in seeds]
    per_run = Simulator(configs[0], config.algorithms[0], data).total_iterations
    _note_long_windows(config, per_run)
    bar = _progress_bar(per_run * len(seeds) * len(config.algorithms)) if progress else nullcontext()
    with bar as pbar:
        loop = RunLoop(configs, config.algorithms, data, checkpoints, watchers,
                       tick=pbar.update if pbar is not None else None,
                       describe=pbar.set_description if pbar is not None else None)
        return loop.run()


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
