"""The per-algorithm records of ``summary.json`` and the 'to target' figures.

Accuracies are in percent. The target defaults to SGD's final test accuracy minus 0.5 points
(null when SGD was not run and no ``--target-acc`` was given). "To target" figures come from the
first evaluation point whose test accuracy reaches the target; uploads and bits are cumulative
uplink counts at that point.
"""

from __future__ import annotations

from ..sim import RunResult

TARGET_MARGIN = 0.5


def default_target(results: dict[str, RunResult], explicit: float | None) -> float | None:
    if explicit is not None:
        return float(explicit)
    if "sgd" in results:
        return round(results["sgd"].history[-1]["test_acc"] - TARGET_MARGIN, 6)
    return None


def first_reaching(history: list[dict], target: float | None) -> dict | None:
    if target is None:
        return None
    for point in history:
        if point["test_acc"] >= target:
            return point
    return None


def record(result: RunResult, target: float | None) -> dict:
    totals = result.ledger.totals()
    last = result.history[-1]
    hit = first_reaching(result.history, target)
    return {
        "algorithm": result.algorithm,
        "iterations": totals["iterations"],
        "uploads": totals["uploads"],
        "skipped": totals["skipped"],
        "bits_up": totals["bits_up"],
        "bits_down": totals["bits_down"],
        "bits_flags": totals["bits_flags"],
        "final_test_acc": last["test_acc"],
        "best_test_acc": max(p["test_acc"] for p in result.history),
        "final_train_loss": last["train_loss"],
        "target_acc": target,
        "iters_to_target": None if hit is None else hit["iteration"],
        "uploads_to_target": None if hit is None else hit["uploads"],
        "bits_to_target": None if hit is None else hit["bits_up"],
        "num_parameters": result.num_parameters,
        "backend": result.backend,
        "wall_seconds": round(result.wall_seconds, 3),
        "train_seconds": round(result.train_seconds, 3),
        "iters_per_second": round(result.iters_per_second, 2),
    }


def ratios_vs(records: list[dict], baseline: str = "sgd") -> dict[str, dict]:
    """Each algorithm's uploads and bits as a fraction of the baseline's (None if undefined)."""
    base = next((r for r in records if r["algorithm"] == baseline), None)
    if base is None:
        return {}

    def frac(a, b):
        return None if a is None or b in (None, 0) else a / b

    return {
        r["algorithm"]: {
            "uploads": frac(r["uploads"], base["uploads"]),
            "bits_up": frac(r["bits_up"], base["bits_up"]),
            "uploads_to_target": frac(r["uploads_to_target"], base["uploads_to_target"]),
            "bits_to_target": frac(r["bits_to_target"], base["bits_to_target"]),
            "final_test_acc_delta": r["final_test_acc"] - base["final_test_acc"],
        }
        for r in records
    }


def build_summary(results: dict[str, RunResult], config) -> dict:
    target = default_target(results, config.target_acc)
    records = [record(r, target) for r in results.values()]
    return {
        "sasg_version": _version(),
        "config": config.to_dict(),
        "bit_convention": config.convention,
        "accuracy_unit": "percent",
        "target_acc": target,
        "records": records,
        "vs_sgd": ratios_vs(records),
    }


def _version() -> str:
    from .. import __version__

    return __version__
