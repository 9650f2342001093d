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


def plot_curves(
    histories: dict[str, list[list[dict]]], folder: Path, target: float | None = None, metric: str = "test_acc"
) -> list[str]:
    """One PNG per metric (three panels each) in ``folder``; ``histories[name]`` holds one
    evaluation history per seed. Returns the file names."""
    y_axes = dict(Y_AXES)
    if metric == "test_top5":
        y_axes = {"test_top5": ("test top-5 accuracy (%)", "test_top5.png"), **Y_AXES}
    written = []
    for ykey, (label, filename) in y_axes.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
        for ax, (xkey, xlabel, log) in zip(axes, X_AXES):
            for name, runs in histories.items():
                xs, ys = _series(runs, xkey).mean(0), _series(runs, ykey)
                mean, std = ys.mean(0), ys.std(0)
                keep = xs > 0 if log else np.ones_like(xs, dtype=bool)
                style = STYLE.get(name, {})
                ax.plot(xs[keep], mean[keep], label=name, **style)
                if len(runs) > 1:
                    ax.fill_between(xs[keep], (mean - std)[keep], (mean + std)[keep], alpha=0.2,
                                    color=style.get("color"))
            if log:
                ax.set_xscale("log")
            if ykey == "train_loss":
                ax.set_yscale("log")
            if ykey == metric:
                # Zoom on the part that separates the algorithms, not the first few iterations.
                finals = [_series(runs, ykey).mean(0)[-1] for runs in histories.values()]
                ax.set_ylim(bottom=max(0.0, min(finals) - 15.0), top=min(100.0, max(finals) + 3.0))
            if ykey == metric and target is not None:
                ax.axhline(target, color="gray", linewidth=0.8, linestyle=":", label=f"target {target:.2f}%")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        axes[0].legend()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)
        written.append(filename)
    return written
