"""Paper-style curves: test accuracy and train loss against iterations, uploads and bits."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from ..sim import RunResult  # noqa: E402

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
Y_AXES = {"test_acc": ("test accuracy (%)", "test_acc.png"), "train_loss": ("train loss", "train_loss.png")}


def plot_curves(results: dict[str, RunResult], folder: Path, target: float | None = None) -> list[str]:
    """Write one PNG per metric (three panels each) into ``folder``; return the file names."""
    written = []
    for metric, (label, filename) in Y_AXES.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
        for ax, (xkey, xlabel, log) in zip(axes, X_AXES):
            for name, result in results.items():
                pts = [p for p in result.history if not (log and p[xkey] <= 0)]
                ax.plot([p[xkey] for p in pts], [p[metric] for p in pts], label=name, **STYLE.get(name, {}))
            if log:
                ax.set_xscale("log")
            if metric == "train_loss":
                ax.set_yscale("log")
            if metric == "test_acc" and target is not None:
                ax.axhline(target, color="gray", linewidth=0.8, linestyle=":", label=f"target {target:.2f}%")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        axes[0].legend()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)
        written.append(filename)
    return written
