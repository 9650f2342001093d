"""Run several algorithms on one setting: same data, same seed, same split."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

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


def run_seeds(
    config: RunConfig, seeds: list[int], data: DataSplit | None = None, progress: bool = False
) -> dict[int, dict[str, RunResult]]:
    """``{seed: {algorithm: RunResult}}`` for every seed (one simulator at a time, so memory
    holds one model's state, not seeds x algorithms of them)."""
    config.validate()
    data = load_data(config) if data is None else data
    check_fits(config, data)
    configs = [replace(config, seed=s) for s in seeds]
    per_run = Simulator(configs[0], config.algorithms[0], data).total_iterations
    bar = _progress_bar(per_run * len(seeds) * len(config.algorithms)) if progress else nullcontext()
    runs: dict[int, dict[str, RunResult]] = {}
    with bar as pbar:
        for cfg in configs:
            runs[cfg.seed] = {}
            for name in config.algorithms:
                sim = Simulator(cfg, name, data)
                if pbar is not None:
                    pbar.set_description(f"seed {cfg.seed} {name:>6}" if len(seeds) > 1 else f"{name:>6}")
                runs[cfg.seed][name] = sim.run(progress=pbar.update if pbar is not None else None)
    return runs


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
