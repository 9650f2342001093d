"""``metrics.csv`` (one row per algorithm, seed and evaluation point) and ``rounds.csv``
(the per-round ledger)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..sim import RunResult

COLUMNS = ("algorithm", "iteration", "uploads", "bits_up", "bits_down", "train_loss", "test_acc", "test_top5", "lr")


def write_metrics(runs: dict[int, dict[str, RunResult]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS + ("seed",))
        for seed, results in runs.items():
            for name, result in results.items():
                for p in result.history:
                    w.writerow([name] + [p[c] for c in COLUMNS[1:]] + [seed])


def write_ledger(runs: dict[int, dict[str, RunResult]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("algorithm", "iteration", "uploads", "bits_up", "bits_down", "bits_flags", "seed"))
        for seed, results in runs.items():
            for name, result in results.items():
                led = result.ledger
                for k in range(led.iterations):
                    w.writerow((name, k + 1, led.uploads[k], led.bits_up[k], led.bits_down[k], led.bits_flags[k], seed))
