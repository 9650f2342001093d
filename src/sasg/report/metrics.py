"""``metrics.csv``: one row per algorithm and evaluation point."""

from __future__ import annotations

import csv
from pathlib import Path

from ..sim import RunResult

COLUMNS = ("algorithm", "iteration", "uploads", "bits_up", "bits_down", "train_loss", "test_acc")


def write_metrics(results: dict[str, RunResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for name, result in results.items():
            for p in result.history:
                w.writerow([name] + [p[c] for c in COLUMNS[1:]])


def write_ledger(results: dict[str, RunResult], path: Path) -> None:
    """``rounds.csv``: the per-round ledger (uploads and bits of every iteration)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("algorithm", "iteration", "uploads", "bits_up", "bits_down", "bits_flags"))
        for name, result in results.items():
            led = result.ledger
            for k in range(led.iterations):
                w.writerow((name, k + 1, led.uploads[k], led.bits_up[k], led.bits_down[k], led.bits_flags[k]))
