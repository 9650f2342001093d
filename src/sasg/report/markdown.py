"""``report.md``: the setting, the table, the savings against SGD and the plots."""

from __future__ import annotations

from .table import METRIC_NAMES, markdown_table, ratio_lines, table_notes


def render_report(summary: dict, plots: list[str]) -> str:
    cfg = summary["config"]
    lines = [
        "# sasg comparison",
        "",
        f"Data `{cfg['dataset']}`, model `{cfg['model']}`, {cfg['workers']} workers × batch "
        f"{cfg['batch_size']}, lr {cfg['lr']} on the mean gradient (paper α = {cfg['paper_alpha']:g}), "
        f"density {cfg['density']}, window D = {cfg['window']}, c = {cfg['threshold_scale']}, "
        f"{_length(cfg)}, {_seeds(summary)}. Partition: {_partition(cfg)}. Augmentation: {cfg.get('augment', 'none')}. "
        f"Learning rate: {_schedule(cfg)}. Bits up are 8 × the bytes each algorithm's codec produced "
        "(codec column; `paper32`: 32 bits per value + 32 per index, the paper's count); bits down are "
        "the parameter-server convention, a dense fp32 broadcast of θ to every worker each round.",
        "",
        _target_line(summary),
        "",
        markdown_table(summary["records"]),
        "",
    ]
    notes = table_notes(summary["records"])
    if notes:
        lines += [f"**{'Biased' if ' is biased' in n else 'Diverged'}.** {n}" for n in notes] + [""]
    ratios = ratio_lines(summary.get("vs_sgd", {}))
    if ratios:
        lines += ["## Against SGD", ""] + [f"- {r}" for r in ratios] + [""]
    lines += ["## Curves", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)


def _target_line(summary: dict) -> str:
    cfg, target = summary["config"], summary["target_acc"]
    metric = METRIC_NAMES.get(summary.get("target_metric", "top1"), "top-1")
    line = f"Target test {metric} accuracy: {'none' if target is None else f'{target:.2f} %'}"
    if cfg.get("target_acc") is not None or "sgd" not in cfg.get("algorithms", ["sgd"]):
        return line
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


def _length(cfg: dict) -> str:
    if cfg.get("iterations") is not None:
        return f"{cfg['iterations']} iterations"
    return f"{cfg['epochs']:g} epochs"
