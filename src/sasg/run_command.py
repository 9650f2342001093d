"""What ``sasg run`` and ``sasg compare`` do once their flags are read: the data, every seed and
algorithm through the run loop (:func:`sasg.experiment.run_seeds`), and the run folder.

The same for one rank of ``sasg launch`` is :mod:`sasg.distributed.rank`. Its own module, apart
from :mod:`sasg.experiment`, because the run folder's writer (:mod:`sasg.report`) reads
``sasg.__version__``, and ``sasg`` itself imports :mod:`sasg.experiment` (``sasg.compare``).
"""

from __future__ import annotations

from pathlib import Path

from . import report
from .config import RunConfig
from .experiment import check_fits, load_data, partition_report, run_seeds
from .lifecycle.rundir import staged_run_dir
from .run_loop import Checkpoints


def run_to_folder(
    config: RunConfig, seeds: list[int], out: Path, overwrite: bool, settings: dict, progress: bool = False,
    checkpoints: Checkpoints | None = None, watchers=(),
) -> tuple[Path, dict]:
    """:func:`run_seeds`, written as a run folder: staged, and moved to ``out`` whole once every
    run is done (nothing there on an error or a stop). ``settings`` are recorded beside the
    results, with the partition's detail. Returns where the folder went, and its summary."""
    data = load_data(config)
    check_fits(config, data)
    settings = {**settings, "partition_detail": partition_report(config, data)}
    folder = staged_run_dir(out, overwrite)
    with folder as stage:
        runs = run_seeds(config, seeds, data=data, progress=progress, checkpoints=checkpoints, watchers=watchers)
        summary = report.write_run_folder(stage, runs, config, extra=settings)
    return folder.path, summary
