"""Run folder, summary, metrics, plots and the Markdown report."""

from __future__ import annotations

import json
from pathlib import Path

from .markdown import render_report
from .metrics import write_ledger, write_metrics
from .plots import plot_curves
from .rundir import check_destination, staged_run_dir
from .summary import build_summary
from .table import ratio_lines, text_table


def write_run_folder(folder: Path, runs, config, extra: dict | None = None) -> dict:
    """Write ``config.json``, ``summary.json``, ``metrics.csv``, ``rounds.csv``, the plots and
    ``report.md``. ``runs`` maps seed -> {algorithm: RunResult} (a bare {algorithm: RunResult}
    is taken as one seed, ``config.seed``)."""
    folder = Path(folder)
    if runs and not isinstance(next(iter(runs)), int):
        runs = {config.seed: runs}
    summary = build_summary(runs, config)
    resolved = {**config.to_dict(), "seeds": list(runs), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_metrics(runs, folder / "metrics.csv")
    write_ledger(runs, folder / "rounds.csv")
    histories = {}
    for results in runs.values():
        for name, r in results.items():
            histories.setdefault(name, []).append(r.history)
    metric = "test_top5" if config.target_metric == "top5" else "test_acc"
    plots = plot_curves(histories, folder, summary["target_acc"], metric)
    (folder / "report.md").write_text(render_report(summary, plots))
    return summary


__all__ = [
    "build_summary",
    "check_destination",
    "ratio_lines",
    "render_report",
    "staged_run_dir",
    "text_table",
    "write_run_folder",
]
