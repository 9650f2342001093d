"""Paper-style curves: test accuracy and train loss against iterations, uploads and bits.

With several seeds, each algorithm is drawn as the mean over seeds with a shaded ±1 std band
(x positions are the mean over seeds too: uploads and bits differ between seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Colours: matplotlib's tab10, then the lighter tab20 shades of the same hues.
_TAB20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
    "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)
_DARK, _LIGHT = _TAB20[0::2], _TAB20[1::2]  # _DARK is tab10, in order
# Line styles: the four named ones, then dash patterns distinct from them (and each other).
LINESTYLES = (
    "-", "--", "-.", ":",
    (0, (8, 2.5)),                    # long dash
    (0, (5, 1.5, 1, 1.5, 1, 1.5)),    # dash-dot-dot
    (0, (1, 3)),                      # loose dots
    (0, (8, 2, 2, 2)),                # long dash, short dash
)
# Line style of each tab10 colour in the first round; the first four are the historical
# sgd / sparse / lasg / sasg styles (blue solid, orange dashed, green dash-dot, red solid).
_FIRST_STYLE = (0, 1, 2, 0, 3, 1, 2, 3, 4, 5)
MARKERS = (None, "o", "s", "^", "D", "v", "P", "X")
_ROUND = len(_DARK) * len(LINESTYLES)  # 80 unique (colour, line style) pairs per colour set
_BLOCK = 2 * _ROUND                     # dark then light colours: 160 unique pairs


def style_for(index: int) -> dict:
    """The plot style of the ``index``-th algorithm: ``dict(color=, linestyle=, marker=)``.

    Deterministic. Colour ``index % 10`` of tab10; each pass through the ten colours moves every
    colour on to its next line style, so the (colour, line style) pairs of indices 0..79 are all
    different; 80..159 repeat that with tab20's lighter shades, and from 160 on a marker is added,
    so (colour, line style, marker) stays unique for 160 * len(MARKERS) algorithms.
    Indices 0..3 give today's sgd / sparse / lasg / sasg styles.
    """
    if index < 0:
        raise ValueError(f"style index must be >= 0, got {index}")
    block, rest = divmod(index, _BLOCK)
    light, rest = divmod(rest, _ROUND)
    rnd, slot = divmod(rest, len(_DARK))
    colours = _LIGHT if light else _DARK
    linestyle = LINESTYLES[(_FIRST_STYLE[slot] + rnd) % len(LINESTYLES)]
    return dict(color=colours[slot], linestyle=linestyle, marker=MARKERS[block % len(MARKERS)])


# The built-in algorithms keep their styles whatever else is plotted with them.
STYLE = {name: style_for(i) for i, name in enumerate(("sgd", "sparse", "lasg", "sasg"))}


def styles_for(names) -> dict[str, dict]:
    """One style per algorithm, all different, for every plot of one run: the built-in names
    keep their own (``STYLE``), the others take the lowest-index unused ``style_for`` style, in
    the order they are listed."""
    names = list(dict.fromkeys(names))
    styles = {name: dict(STYLE[name]) for name in names if name in STYLE}
    taken = {_key(st) for st in styles.values()}
    index = 0
    for name in names:
        if name in styles:
            continue
        while _key(style_for(index)) in taken:
            index += 1
        styles[name] = style_for(index)
        taken.add(_key(styles[name]))
    return {name: styles[name] for name in names}


def _key(style: dict):
    return style["color"], str(style["linestyle"]), style["marker"]


# Up to this many entries the legend sits in the first panel; more go below the panels in columns.
LEGEND_INSIDE_MAX = 8
LEGEND_COLUMNS = 5

X_AXES = (
    ("iteration", "iterations", False),
    ("uploads", "communication rounds (uploads)", False),
    ("bits_up", "uplink bits", True),
)
Y_AXES = {
    "test_acc": ("test accuracy (%)", "test_acc.png"),
    "train_loss": ("train loss", "train_loss.png"),
}


def _series(histories: list[list[dict]], key: str) -> np.ndarray:
    """(seeds, points) array; runs of one setting share their evaluation iterations."""
    n = min(len(h) for h in histories)
    return np.array([[p[key] for p in h[:n]] for h in histories], dtype=float)


def _curve(runs: list[list[dict]], xkey: str, ykey: str):
    """x, mean and std over seeds (std NaN with one seed). A point where some seed's value is
    not finite (a diverged run) is NaN and is left out when drawn."""
    xs, ys = _series(runs, xkey).mean(0), _series(runs, ykey)
    with np.errstate(invalid="ignore"):
        std = ys.std(0) if len(runs) > 1 else np.full(ys.shape[1], np.nan)
    return xs, ys.mean(0), std


def _drawable(xs: np.ndarray, ys: np.ndarray, log_x: bool, log_y: bool) -> np.ndarray:
    """Points that can be drawn: finite, and positive on a log axis."""
    keep = np.isfinite(xs) & np.isfinite(ys)
    if log_x:
        keep &= xs > 0
    if log_y:
        keep &= ys > 0
    return keep


def _panel(ax, histories: dict[str, list[list[dict]]], xkey: str, ykey: str, log_x: bool, log_y: bool,
           styles: dict[str, dict] | None = None) -> bool:
    """Draw one panel; False when there was nothing finite to draw.

    A log y axis (train loss) falls back to linear when no finite positive value is left, as
    after a divergence: matplotlib cannot log-scale nothing and would fail the whole run.
    """
    styles = styles_for(histories) if styles is None else styles
    curves = {name: _curve(runs, xkey, ykey) for name, runs in histories.items()}
    if log_y and not any(_drawable(xs, mean, log_x, True).any() for xs, mean, _ in curves.values()):
        log_y = False
    drawn = False
    for name, (xs, mean, std) in curves.items():
        keep = _drawable(xs, mean, log_x, log_y)
        if not keep.any():
            continue
        drawn = True
        style = dict(styles[name])
        if keep.sum() == 1 and style["marker"] is None:
            style["marker"] = "o"  # a lone point has no line to show
        ax.plot(xs[keep], mean[keep], label=name, **style)
        band = keep & np.isfinite(std)
        if band.any():
            ax.fill_between(xs[band], (mean - std)[band], (mean + std)[band], alpha=0.2, color=style.get("color"))
    if log_x and drawn:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    if not drawn:
        ax.text(0.5, 0.5, "no finite values to plot\n(the run diverged)", transform=ax.transAxes,
                ha="center", va="center", color="gray")
    return drawn


def plot_curves(
    histories: dict[str, list[list[dict]]], folder: Path, target: float | None = None, metric: str = "test_acc"
) -> list[str]:
    """One PNG per metric (three panels each) in ``folder``; ``histories[name]`` holds one
    evaluation history per seed. Returns the file names. Non-finite values (a diverged run) are
    skipped, so every file is written whatever the run did."""
    y_axes = dict(Y_AXES)
    if metric == "test_top5":
        y_axes = {"test_top5": ("test top-5 accuracy (%)", "test_top5.png"), **Y_AXES}
    styles = styles_for(histories)  # one mapping for every file of the run
    written = []
    for ykey in y_axes:
        fig = _figure(histories, ykey, y_axes, target, metric, styles)
        filename = y_axes[ykey][1]
        fig.savefig(folder / filename, dpi=110)
        written.append(filename)
    return written


def _figure(histories: dict[str, list[list[dict]]], ykey: str, y_axes: dict | None = None,
            target: float | None = None, metric: str = "test_acc", styles: dict[str, dict] | None = None):
    """The three-panel Figure of one metric (``plot_curves`` saves and closes it). Every panel
    uses the same algorithm -> style mapping, ``styles_for(histories)`` unless given."""
    label = (y_axes or Y_AXES).get(ykey, (ykey,))[0]
    styles = styles_for(histories) if styles is None else styles
    entries = len(histories) + (ykey == metric and target is not None)
    many = entries > LEGEND_INSIDE_MAX
    # Many algorithms: the legend goes below the panels, in columns, and the figure grows to hold
    # it; inside a panel it would hide that panel's curves. The constrained layout places it.
    columns = min(LEGEND_COLUMNS, max(1, entries))
    height = 4.2 + (0.24 * -(-entries // columns) + 0.3 if many else 0.0)
    # A Figure with its own Agg canvas (files only, no display), not pyplot's: no backend is chosen
    # for the process (a user's stays as it is) and no figure is left open in pyplot's list.
    fig = Figure(figsize=(15, height), layout="constrained" if many else None)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (xkey, xlabel, log) in zip(axes, X_AXES):
        drawn = _panel(ax, histories, xkey, ykey, log, ykey == "train_loss", styles)
        if ykey == metric and drawn:
            # Zoom on the part that separates the algorithms, not the first few iterations.
            finals = [_curve(runs, xkey, ykey)[1][-1] for runs in histories.values()]
            finals = [f for f in finals if np.isfinite(f)]
            if finals:
                ax.set_ylim(bottom=max(0.0, min(finals) - 15.0), top=min(100.0, max(finals) + 3.0))
        if ykey == metric and target is not None:
            ax.axhline(target, color="gray", linewidth=0.8, linestyle=":", label=f"target {target:.2f}%")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if many:
        fig.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize="small")
    else:
        if handles:
            axes[0].legend()
        # Fixed margins, sized for the widest tick labels these axes get (percentages, 10^k): the
        # constrained layout measures every label first, half of a run folder's plotting time.
        fig.subplots_adjust(left=0.045, right=0.99, bottom=0.125, top=0.975, wspace=0.21)
    return fig
