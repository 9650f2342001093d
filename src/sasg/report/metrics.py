"""``metrics.csv`` (one row per algorithm, seed and evaluation point) and ``rounds.csv``
(the per-round ledger).

A diverged run's non-finite values are written as ``nan``, ``inf`` and ``-inf`` whatever type
they arrive as (Python, NumPy or torch scalars): the spellings ``float()``, NumPy and pandas read
back. (``summary.json`` writes them as null instead: JSON has no such numbers.)
"""

from __future__ import annotations

import csv
import math
import numbers
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
                    w.writerow([name] + [_value(p[c]) for c in COLUMNS[1:]] + [seed])


def _value(x):
    """Counts as ints; other numbers as Python floats (shortest round-trip text), with the
    non-finite ones spelled ``nan``, ``inf`` or ``-inf``."""
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, str) or x is None:
        return x
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def write_ledger(runs: dict[int, dict[str, RunResult]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("algorithm", "iteration", "uploads", "bits_up", "bits_down", "bits_flags", "seed"))
        for seed, results in runs.items():
            for name, result in results.items():
                led = result.ledger
                for k in range(led.iterations):
                    w.writerow((name, k + 1, led.uploads[k], led.bits_up[k], led.bits_down[k], led.bits_flags[k], seed))
