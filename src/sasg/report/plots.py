"""Paper-style curves: test accuracy and train loss against iterations, uploads and bits.

With several seeds, each algorithm is drawn as the mean over seeds with a shaded ±1 std band
(x positions are the mean over seeds too: uploads and bits differ between seeds).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    "sgd": dict(color="tab:blue", linestyle="-"),
    "sparse": dict(color="tab:orange", linestyle="--"),
    "lasg": dict(color="tab:green", linestyle="-."),
    "sasg": dict(color="tab:red", linestyle="-"),
}
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


def _panel(ax, histories: dict[str, list[list[dict]]], xkey: str, ykey: str, log_x: bool, log_y: bool) -> bool:
    """Draw one panel; False when there was nothing finite to draw.

    A log y axis (train loss) falls back to linear when no finite positive value is left, as
    after a divergence: matplotlib cannot log-scale nothing and would fail the whole run.
    """
    curves = {name: _curve(runs, xkey, ykey) for name, runs in histories.items()}
    if log_y and not any(_drawable(xs, mean, log_x, True).any() for xs, mean, _ in curves.values()):
        log_y = False
    drawn = False
    for name, (xs, mean, std) in curves.items():
        keep = _drawable(xs, mean, log_x, log_y)
        if not keep.any():
            continue
        drawn = True
        style = STYLE.get(name, {})
        ax.plot(xs[keep], mean[keep], label=name, marker="o" if keep.sum() == 1 else None, **style)
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
    written = []
    for ykey, (label, filename) in y_axes.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
        for ax, (xkey, xlabel, log) in zip(axes, X_AXES):
            drawn = _panel(ax, histories, xkey, ykey, log, ykey == "train_loss")
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
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)
        written.append(filename)
    return written
