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


def write_run_folder(folder: Path, results, config) -> dict:
    """Write ``summary.json``, ``metrics.csv``, ``rounds.csv``, the plots and ``report.md``."""
    folder = Path(folder)
    summary = build_summary(results, config)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_metrics(results, folder / "metrics.csv")
    write_ledger(results, folder / "rounds.csv")
    plots = plot_curves(results, folder, summary["target_acc"])
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
