"""What a run folder holds: summary, metrics, plots and the Markdown report (the folder itself,
staged and locked, is :mod:`sasg.lifecycle.rundir`'s)."""

from __future__ import annotations

import json
from pathlib import Path

from .markdown import render_report
from .metrics import write_ledger, write_metrics
from .plots import plot_curves
from .summary import build_summary, json_ready
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
    (folder / "config.json").write_text(strict_json(json_ready(resolved)))
    (folder / "summary.json").write_text(strict_json(summary))
    write_metrics(runs, folder / "metrics.csv")
    write_ledger(runs, folder / "rounds.csv")
    histories = {}
    for results in runs.values():
        for name, r in results.items():
            histories.setdefault(name, []).append(r.history)
    metric = "test_top5" if config.target_metric == "top5" else "test_acc"
    plots = plot_curves(histories, folder, summary["target_acc"], metric)
    (folder / "report.md").write_text(render_report(summary, plots, resolved))
    return summary


def strict_json(value) -> str:
    """Standard JSON text. ``value`` must already be JSON-ready (``build_summary``'s result is;
    see ``json_ready``): ``allow_nan=False`` turns a non-finite number that slipped through into
    an error here, not a ``NaN`` token that strict JSON readers reject."""
    return json.dumps(value, indent=2, allow_nan=False) + "\n"


__all__ = [
    "build_summary",
    "ratio_lines",
    "render_report",
    "strict_json",
    "text_table",
    "write_run_folder",
]
