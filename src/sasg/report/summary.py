"""The per-algorithm records of ``summary.json`` and the 'to target' figures.

Accuracies are in percent. The target defaults to SGD's final test accuracy minus 0.5 points
(null when SGD was not run, or diverged, and no ``--target-acc`` was given). "To target" figures
come from the first evaluation point whose test accuracy reaches the target; uploads and bits are
cumulative uplink counts at that point.

A run whose train loss became non-finite (NaN or ±inf) is *diverged*: an ordinary outcome of a
learning-rate sweep, recorded as such (``diverged``), never an error. ``summary.json`` is strict
JSON, so every non-finite number in it is written as null (see :func:`json_ready`).
"""

from __future__ import annotations

import math
import statistics

from ..sim import RunResult

TARGET_MARGIN = 0.5

METRIC_KEYS = {"top1": "test_acc", "top5": "test_top5"}

# Significant digits kept in derived figures (means, stds, ratios): enough for any count or
# accuracy, few enough to drop float noise such as 79.45000000000002.
DERIVED_DIGITS = 10
# Accuracy differences are in percentage points of a finite test set: 4 decimals is exact.
DELTA_DECIMALS = 4


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def diverged_at(history: list[dict]) -> int | None:
    """The first evaluated iteration whose train loss is not finite; None if training stayed finite."""
    for point in history:
        if not is_finite(point["train_loss"]):
            return point["iteration"]
    return None


def default_target(results: dict[str, RunResult], explicit: float | None, metric: str = "top1") -> float | None:
    if explicit is not None:
        return float(explicit)
    sgd = results.get("sgd")
    if sgd is None or diverged_at(sgd.history) is not None or getattr(sgd, "failed", None):
        # A diverged SGD's final accuracy is chance level, a failed one's is where it stopped: a
        # target below either would be meaningless.
        return None
    final = sgd.history[-1][METRIC_KEYS[metric]]
    return round(final - TARGET_MARGIN, 6) if is_finite(final) else None


def first_reaching(history: list[dict], target: float | None, metric: str = "top1") -> dict | None:
    if target is None:
        return None
    key = METRIC_KEYS[metric]
    for point in history:
        if point[key] >= target:  # NaN never reaches
            return point
    return None


def _best(history: list[dict], key: str) -> float | None:
    """Best finite value (None if there is none): ``max`` with a NaN in the list depends on order."""
    finite = [p[key] for p in history if is_finite(p[key])]
    return max(finite) if finite else None


def record(result: RunResult, target: float | None, metric: str = "top1") -> dict:
    totals = result.ledger.totals()
    last = result.history[-1]
    hit = first_reaching(result.history, target, metric)
    at = diverged_at(result.history)
    return {
        "algorithm": result.algorithm,
        "iterations": totals["iterations"],
        "uploads": totals["uploads"],
        "skipped": totals["skipped"],
        "bits_up": totals["bits_up"],
        "bits_down": totals["bits_down"],
        "bits_flags": totals["bits_flags"],
        "final_test_acc": last["test_acc"],
        "best_test_acc": _best(result.history, "test_acc"),
        "final_test_top5": last["test_top5"],
        "best_test_top5": _best(result.history, "test_top5"),
        "final_train_loss": last["train_loss"],
        "diverged": at is not None,
        "diverged_at_iteration": at,
        "failed": getattr(result, "failed", None),  # why the run stopped early (an error), or null
        "failed_at_iteration": totals["iterations"] if getattr(result, "failed", None) else None,
        "target_acc": target,
        "target_metric": metric,
        "iters_to_target": None if hit is None else hit["iteration"],
        "uploads_to_target": None if hit is None else hit["uploads"],
        "bits_to_target": None if hit is None else hit["bits_up"],
        "num_parameters": result.num_parameters,
        "backend": result.backend,
        "codec": result.codec,
        "biased": result.biased,
        "wall_seconds": round(result.wall_seconds, 3),
        "train_seconds": round(result.train_seconds, 3),
        "iters_per_second": round(result.iters_per_second, 2),
    }


def reached(r: dict) -> tuple[int, int]:
    """(seeds that reached the target, seeds) of a single-seed or an aggregated record."""
    if "seeds" in r:
        return r["reached_target"], r["seeds"]
    return int(r["iters_to_target"] is not None), 1


TO_TARGET = ("iters_to_target", "uploads_to_target", "bits_to_target")

DOWNLINK = (
    "bits_down is the parameter-server convention: a dense fp32 theta to every worker each round "
    "(32 x d x M bits); the replica runner of sasg launch never sends theta (see distributed.json)"
)


def ratios_vs(records: list[dict], baseline: str = "sgd") -> dict[str, dict]:
    """Each algorithm's figures as a fraction of the baseline's (None if undefined).

    A 'to target' ratio is given only when every seed of both algorithms reached the target:
    a mean over the seeds that happened to reach it is biased towards the lucky ones, and two
    such means over different seeds are not comparable. ``reached_target`` /
    ``baseline_reached_target`` (out of ``seeds``) say why a ratio is missing.
    """
    base = next((r for r in records if r["algorithm"] == baseline), None)
    if base is None:
        return {}

    def frac(a, b):
        return None if not is_finite(a) or not is_finite(b) or b == 0 else _tidy(a / b)

    def delta(a, b):
        return round(a - b, DELTA_DECIMALS) if is_finite(a) and is_finite(b) else None

    base_hits, seeds = reached(base)
    out = {}
    for r in records:
        hits, _ = reached(r)
        complete = hits == seeds and base_hits == seeds
        entry = {
            "uploads": frac(r["uploads"], base["uploads"]),
            "bits_up": frac(r["bits_up"], base["bits_up"]),
        }
        for key in TO_TARGET:
            entry[key] = frac(r[key], base[key]) if complete else None
        entry.update({
            "final_test_acc_delta": delta(r["final_test_acc"], base["final_test_acc"]),
            "final_test_top5_delta": delta(r["final_test_top5"], base["final_test_top5"]),
            "target_metric": r["target_metric"],
            "has_target": r["target_acc"] is not None,
            "reached_target": hits,
            "baseline_reached_target": base_hits,
            "seeds": seeds,
            "diverged": r["diverged"],
            "baseline_diverged": base["diverged"],
        })
        out[r["algorithm"]] = entry
    return out


AGGREGATED = (
    "iterations", "uploads", "skipped", "bits_up", "bits_down", "bits_flags", "final_test_acc",
    "best_test_acc", "final_test_top5", "best_test_top5", "final_train_loss", "target_acc",
    "iters_to_target", "uploads_to_target", "bits_to_target", "wall_seconds", "train_seconds",
    "iters_per_second",
)
# Counts: their mean is written as an int when every seed has the same count (it is that count).
COUNTS = {
    "iterations", "uploads", "skipped", "bits_up", "bits_down", "bits_flags",
    "iters_to_target", "uploads_to_target", "bits_to_target",
}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std of the non-None values; NaN when any is not finite (a diverged
    seed's loss has no mean); std None with fewer than two values (one value has no spread)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    if not all(is_finite(v) for v in values):
        return math.nan, math.nan if len(values) > 1 else None
    std = _tidy(statistics.stdev(values)) if len(values) > 1 else None
    return _tidy(statistics.fmean(values)), std


def aggregate_records(per_seed: list[list[dict]], seeds: list[int] | None = None) -> list[dict]:
    """Mean and sample std over seeds of every numeric field, per algorithm.

    The required fields hold the mean; ``<field>_std`` the std (null with fewer than two values).
    A 'to target' mean is over the seeds that reached the target (``reached_target`` says how
    many); null if none did. A count is an int when every seed has the same value, else the
    float mean. ``diverged_seeds`` counts the seeds whose train loss became non-finite,
    ``failed_seeds`` those that stopped on an error (``failed``: the first one's, with its seed).
    """
    out = []
    for i, first in enumerate(per_seed[0]):
        rows = [seed_records[i] for seed_records in per_seed]
        agg = {"algorithm": first["algorithm"], "seeds": len(rows), "target_metric": first["target_metric"],
               "num_parameters": first["num_parameters"], "backend": first["backend"],
               "codec": first.get("codec", "paper32"), "biased": first.get("biased", False)}
        for key in AGGREGATED:
            values = [r[key] for r in rows]
            agg[key], agg[key + "_std"] = _mean_std(values)
            present = [v for v in values if v is not None]
            if key in COUNTS and present and len(set(present)) == 1 and float(present[0]).is_integer():
                agg[key] = int(present[0])
        agg["reached_target"] = sum(r["iters_to_target"] is not None for r in rows)
        agg["diverged_seeds"] = sum(r["diverged"] for r in rows)
        agg["diverged"] = agg["diverged_seeds"] > 0
        agg["failed_seeds"] = sum(r.get("failed") is not None for r in rows)
        agg["failed"] = next((f"seed {s}: {r['failed']}" for s, r in zip(seeds or range(len(rows)), rows)
                              if r.get("failed")), None)
        out.append(agg)
    return out


def build_summary(runs: dict[int, dict[str, RunResult]], config) -> dict:
    """``runs[seed][algorithm]``. With one seed the records are that seed's; with several they
    are mean ± std over seeds and ``per_seed`` keeps every seed's records (each seed's default
    target is its own SGD's final accuracy − 0.5). The result is JSON-ready (non-finite numbers
    are None), so what the caller prints is what ``summary.json`` holds."""
    per_seed, targets = {}, {}
    for seed, results in runs.items():
        targets[seed] = default_target(results, config.target_acc, config.target_metric)
        per_seed[seed] = [record(r, targets[seed], config.target_metric) for r in results.values()]
    seeds = list(runs)
    if len(seeds) == 1:
        records = per_seed[seeds[0]]
        target = targets[seeds[0]]
    else:
        records = aggregate_records(list(per_seed.values()), seeds)
        known = [t for t in targets.values() if t is not None]
        target = _tidy(statistics.fmean(known)) if known else None
    summary = {
        "sasg_version": _version(),
        "config": config.to_dict(),
        "seeds": seeds,
        "codec": config.codec,  # the default; each record names its own (what made its bits)
        "downlink": DOWNLINK,
        "accuracy_unit": "percent",
        "target_acc": target,
        "target_metric": config.target_metric,
        "records": records,
        "vs_sgd": ratios_vs(records),
    }
    if len(seeds) > 1:
        summary["per_seed"] = {str(s): recs for s, recs in per_seed.items()}
        summary["targets_per_seed"] = {str(s): t for s, t in targets.items()}
    return json_ready(summary)


def json_ready(value):
    """A copy of ``value`` that strict JSON can hold: NaN and ±inf become None (JSON has no
    such numbers; Python's ``json`` would write the non-standard ``NaN``), tuples become lists."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tidy(x: float) -> float:
    """``x`` without float noise (a derived figure: mean, std or ratio)."""
    return float(f"{x:.{DERIVED_DIGITS}g}") if is_finite(x) else x


def _version() -> str:
    from .. import __version__

    return __version__
