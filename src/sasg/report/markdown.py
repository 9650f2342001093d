"""``report.md``: the setting, the table, the savings against SGD and the plots."""

from __future__ import annotations

from .family_grid import grid_lines
from .table import METRIC_NAMES, NO_SGD_NOTE, markdown_table, ratio_lines, table_notes


def render_report(summary: dict, plots: list[str], settings: dict | None = None) -> str:
    """The report's Markdown; ``settings`` (``config.json``'s content) adds how it ran (threads)."""
    cfg = summary["config"]
    lines = [
        "# sasg comparison",
        "",
        f"Data `{cfg['dataset']}`, model `{cfg['model']}`, {cfg['workers']} workers × batch "
        f"{cfg['batch_size']}, lr {cfg['lr']} on the mean gradient (paper α = {cfg['paper_alpha']:g}), "
        f"density {_per(cfg, 'density')}, window D = {_per(cfg, 'window')}, "
        f"c = {_per(cfg, 'threshold_scale')}{_variants(cfg)}, "
        f"{_length(cfg)}, {_seeds(summary)}. Partition: {_partition(cfg)}. Augmentation: {cfg.get('augment', 'none')}. "
        f"Learning rate: {_schedule(cfg)}. Bits up are 8 × the bytes each algorithm's codec produced "
        "(codec column; `paper32`: 32 bits per value + 32 per index, the paper's count); bits down are "
        "the parameter-server convention, a dense fp32 broadcast of θ to every worker each round."
        + _threads(settings),
        "",
        _target_line(summary),
        "",
        markdown_table(summary["records"]),
        "",
    ]
    notes = table_notes(summary["records"])
    if notes:
        lines += [f"**{_kind(n)}.** {n}" for n in notes] + [""]
    ratios = ratio_lines(summary.get("vs_sgd", {}))
    if ratios:
        lines += ["## Against SGD", ""] + [f"- {r}" for r in ratios] + [""]
    grid = grid_lines(summary["records"])
    if grid:
        lines += ["## By trigger and compressor", "",
                  "Bits up to the target and final test accuracy of each pair that ran (mean over seeds "
                  "with several).", ""] + grid + [""]
    lines += ["## Curves", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)


def _kind(note: str) -> str:
    return "Biased" if " is biased" in note else "Failed" if " failed " in note else "Diverged"


def _target_line(summary: dict) -> str:
    cfg, target = summary["config"], summary["target_acc"]
    metric = METRIC_NAMES.get(summary.get("target_metric", "top1"), "top-1")
    line = f"Target test {metric} accuracy: {'none' if target is None else f'{target:.2f} %'}"
    if cfg.get("target_acc") is not None:
        return line + " (--target-acc)"
    if "sgd" not in cfg.get("algorithms", ["sgd"]):
        return line + f". {NO_SGD_NOTE}"
    if target is None:
        return line + " (SGD diverged or failed, so there is no default target; pass --target-acc)"
    return line + f" (SGD's final {metric} accuracy − 0.5 points)"


def _seeds(summary: dict) -> str:
    seeds = summary.get("seeds") or [summary["config"]["seed"]]
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {', '.join(map(str, seeds))} (table: mean ± std over seeds; plots: mean with ±1 std bands)"


def _partition(cfg: dict) -> str:
    kind = cfg.get("partition", "iid")
    if kind == "dirichlet":
        return f"non-IID, Dirichlet(β = {cfg['beta']}) over labels"
    if kind == "shards":
        return f"non-IID, {cfg['shards_per_worker']} sorted label shards per worker"
    return "IID (disjoint equal shards, as in the paper)"


def _schedule(cfg: dict) -> str:
    decay = cfg.get("lr_decay_epochs") or []
    if not decay:
        return "constant"
    return f"× {cfg['lr_decay_factor']} at epoch {', '.join(f'{e:g}' for e in decay)}"


def _variants(cfg: dict) -> str:
    """The lazy threshold's variants where any is set (shared, then per algorithm); else nothing."""

    default = {"window_sum": "D-1", "threshold_lr_lag": 0.0, "aggregate": "last"}
    shared = {k: cfg.get(k, v) for k, v in default.items()}

    def words(knobs: dict, base: dict) -> list[str]:  # what differs from base
        out = []
        if knobs.get("window_sum", base["window_sum"]) != base["window_sum"]:
            out.append(f"thr_k over the last {knobs['window_sum']} steps")
        if knobs.get("threshold_lr_lag", base["threshold_lr_lag"]) != base["threshold_lr_lag"]:
            out.append(f"threshold lr {knobs['threshold_lr_lag']:g} epoch(s) late")
        if knobs.get("aggregate", base["aggregate"]) != base["aggregate"]:
            out.append(f"steps by the {knobs['aggregate']!r} aggregate")
        return out

    parts = words(shared, default) + [
        f"{name}: {', '.join(words(knobs, shared))}"
        for name, knobs in (cfg.get("per_algorithm") or {}).items() if words(knobs, shared)
    ]
    return f" ({'; '.join(parts)})" if parts else ""


def _per(cfg: dict, knob: str) -> str:
    """A knob's shared value and, where a run gave some algorithms their own, those as used:
    ``2 (sasg: 0.8, lasg: 0.2)``. An override naming the shared value is left out."""
    shared = cfg[knob]
    own = [f"{name}: {knobs[knob]:g}" for name, knobs in (cfg.get("per_algorithm") or {}).items()
           if knob in knobs and knobs[knob] != shared]
    return f"{shared:g}" + (f" ({', '.join(own)})" if own else "")


def _threads(settings: dict | None) -> str:
    if not settings or settings.get("threads") is None:
        return ""
    source = settings.get("threads_from")
    return f" Torch threads per process: {settings['threads']}" + (f" ({source})." if source else ".")


def _length(cfg: dict) -> str:
    if cfg.get("iterations") is not None:
        return f"{cfg['iterations']} iterations"
    return f"{cfg['epochs']:g} epochs"
