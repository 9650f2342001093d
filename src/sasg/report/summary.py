"""The per-algorithm records of ``summary.json`` and the 'to target' figures.

Accuracies are in percent. The target defaults to SGD's final test accuracy minus 0.5 points
(null when SGD was not run and no ``--target-acc`` was given). "To target" figures come from the
first evaluation point whose test accuracy reaches the target; uploads and bits are cumulative
uplink counts at that point.
"""

from __future__ import annotations

import statistics

from ..sim import RunResult

TARGET_MARGIN = 0.5


METRIC_KEYS = {"top1": "test_acc", "top5": "test_top5"}


def default_target(results: dict[str, RunResult], explicit: float | None, metric: str = "top1") -> float | None:
    if explicit is not None:
        return float(explicit)
    if "sgd" in results:
        return round(results["sgd"].history[-1][METRIC_KEYS[metric]] - TARGET_MARGIN, 6)
    return None


def first_reaching(history: list[dict], target: float | None, metric: str = "top1") -> dict | None:
    if target is None:
        return None
    key = METRIC_KEYS[metric]
    for point in history:
        if point[key] >= target:
            return point
    return None


def record(result: RunResult, target: float | None, metric: str = "top1") -> dict:
    totals = result.ledger.totals()
    last = result.history[-1]
    hit = first_reaching(result.history, target, metric)
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
        "final_test_top5": last["test_top5"],
        "best_test_top5": max(p["test_top5"] for p in result.history),
        "final_train_loss": last["train_loss"],
        "target_acc": target,
        "target_metric": metric,
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


AGGREGATED = (
    "iterations", "uploads", "skipped", "bits_up", "bits_down", "bits_flags", "final_test_acc",
    "best_test_acc", "final_test_top5", "best_test_top5", "final_train_loss", "target_acc",
    "iters_to_target", "uploads_to_target", "bits_to_target", "wall_seconds", "train_seconds",
    "iters_per_second",
)


def aggregate_records(per_seed: list[list[dict]]) -> list[dict]:
    """Mean and sample std over seeds of every numeric field, per algorithm.

    The required fields hold the mean; ``<field>_std`` the std. A 'to target' mean is over the
    seeds that reached the target (``reached_target`` says how many); null if none did.
    """
    out = []
    for i, first in enumerate(per_seed[0]):
        rows = [seed_records[i] for seed_records in per_seed]
        agg = {"algorithm": first["algorithm"], "seeds": len(rows), "target_metric": first["target_metric"],
               "num_parameters": first["num_parameters"], "backend": first["backend"]}
        for key in AGGREGATED:
            values = [r[key] for r in rows if r[key] is not None]
            agg[key] = statistics.fmean(values) if values else None
            agg[key + "_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        agg["reached_target"] = sum(r["iters_to_target"] is not None for r in rows)
        out.append(agg)
    return out


def build_summary(runs: dict[int, dict[str, RunResult]], config) -> dict:
    """``runs[seed][algorithm]``. With one seed the records are that seed's; with several they
    are mean ± std over seeds and ``per_seed`` keeps every seed's records (each seed's default
    target is its own SGD's final accuracy − 0.5)."""
    per_seed, targets = {}, {}
    for seed, results in runs.items():
        targets[seed] = default_target(results, config.target_acc, config.target_metric)
        per_seed[seed] = [record(r, targets[seed], config.target_metric) for r in results.values()]
    seeds = list(runs)
    if len(seeds) == 1:
        records = per_seed[seeds[0]]
        target = targets[seeds[0]]
    else:
        records = aggregate_records(list(per_seed.values()))
        known = [t for t in targets.values() if t is not None]
        target = statistics.fmean(known) if known else None
    summary = {
        "sasg_version": _version(),
        "config": config.to_dict(),
        "seeds": seeds,
        "bit_convention": config.convention,
        "accuracy_unit": "percent",
        "target_acc": target,
        "target_metric": config.target_metric,
        "records": records,
        "vs_sgd": ratios_vs(records),
    }
    if len(seeds) > 1:
        summary["per_seed"] = {str(s): recs for s, recs in per_seed.items()}
        summary["targets_per_seed"] = {str(s): t for s, t in targets.items()}
    return summary


def _version() -> str:
    from .. import __version__

    return __version__
