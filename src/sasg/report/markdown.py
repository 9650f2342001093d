"""``report.md``: the setting, the table, the savings against SGD and the plots."""

from __future__ import annotations

from .table import markdown_table, ratio_lines


def render_report(summary: dict, plots: list[str]) -> str:
    cfg = summary["config"]
    target = summary["target_acc"]
    lines = [
        "# sasg comparison",
        "",
        f"Data `{cfg['dataset']}`, model `{cfg['model']}`, {cfg['workers']} workers × batch "
        f"{cfg['batch_size']}, lr {cfg['lr']} on the mean gradient (paper α = {cfg['paper_alpha']:g}), "
        f"density {cfg['density']}, window D = {cfg['window']}, c = {cfg['threshold_scale']}, "
        f"{cfg['epochs']} epochs, seed {cfg['seed']}. IID split. Bits under the `{summary['bit_convention']}` "
        "convention (dense upload 32·d bits; sparse 32 bits per value + 32 per index); downlink is a "
        "dense broadcast of θ to every worker each round.",
        "",
        f"Target test accuracy: {'none' if target is None else f'{target:.2f} %'}"
        + (" (SGD's final accuracy − 0.5 points)" if cfg.get("target_acc") is None and target is not None else ""),
        "",
        markdown_table(summary["records"]),
        "",
    ]
    ratios = ratio_lines(summary.get("vs_sgd", {}))
    if ratios:
        lines += ["## Against SGD", ""] + [f"- {r}" for r in ratios] + [""]
    lines += ["## Curves", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)
