"""Run several algorithms on one setting: same data, same seed, same split."""

from __future__ import annotations

from contextlib import nullcontext

from .config import ConfigError, RunConfig
from .data import DataSplit, load_dataset
from .data.dataset import to_device
from .sim import RunResult, Simulator


def load_data(config: RunConfig) -> DataSplit:
    data = load_dataset(config.dataset)
    if config.device != "cpu":
        data = to_device(data, config.device)
    return data


def check_fits(config: RunConfig, data: DataSplit) -> None:
    """Errors that need the data's size, raised before anything runs or is written."""
    n = len(data.train)
    if config.workers > n:
        raise ConfigError(
            f"{config.workers} workers but only {n} training samples; use --workers {n} or fewer"
        )
    shard = n // config.workers
    if config.batch_size > shard:
        raise ConfigError(
            f"batch size {config.batch_size} is larger than a worker's shard ({shard} samples = "
            f"{n} / {config.workers} workers); use --batch-size {shard} or fewer, or fewer workers"
        )


def run_algorithms(
    config: RunConfig, data: DataSplit | None = None, progress: bool = False
) -> dict[str, RunResult]:
    config.validate()
    data = load_data(config) if data is None else data
    check_fits(config, data)
    sims = [Simulator(config, name, data) for name in config.algorithms]
    total = sum(s.total_iterations for s in sims)
    bar = _progress_bar(total) if progress else nullcontext()
    results: dict[str, RunResult] = {}
    with bar as pbar:
        for sim in sims:
            if pbar is not None:
                pbar.set_description(f"{sim.algorithm.name:>6}")
            results[sim.algorithm.name] = sim.run(progress=pbar.update if pbar is not None else None)
    return results


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, silence when stderr is a pipe or a CI log.
    return tqdm(total=total, unit="it", dynamic_ncols=True, disable=None, leave=False)
