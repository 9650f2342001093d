"""Watching a run while it goes: progress lines for logs, and an optional TensorBoard log.

Both are *watchers*: called as ``watcher(sim, label)`` after every round of a run (``sim`` a
:class:`~sasg.sim.Simulator`, ``label`` e.g. ``"seed 0 sasg"``), and ``watcher.close()`` at the end.
They only read the run (its iteration, ledger and evaluation history), so they change no number.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ..config import ConfigError


class ProgressLines:
    """One line on ``stream`` every ``every_s`` seconds, and one when a run ends.

    For output that is not a terminal (a batch scheduler's log, ``nohup``, CI), where a progress
    bar shows nothing until the run ends. A line gives the iteration, the uploads and bits so far,
    the latest evaluated test accuracy and the speed::

        sasg: [seed 0 sasg] iteration 1200/4000 (30 %), uploads 5321, bits up 1.23e+08, test acc 91.30 % (it. 1200), 48.1 it/s
    """

    def __init__(self, every_s: float = 60.0, stream=None, clock=time.monotonic):
        self.every_s = float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._last = clock()  # the first line comes every_s after the watch starts

    def __call__(self, sim, label: str) -> None:
        now = self.clock()
        done = sim.iteration >= sim.total_iterations
        if done or now - self._last >= self.every_s:
            self._last = now
            print(f"sasg: [{label}] {progress_line(sim)}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def progress_line(sim) -> str:
    totals = sim.ledger.totals()
    k, total = totals["iterations"], sim.total_iterations
    last = sim.history[-1] if sim.history else None
    acc = "—" if last is None or not _finite(last["test_acc"]) else f"{last['test_acc']:.2f} % (it. {last['iteration']})"
    speed = f"{k / sim.train_seconds:.1f} it/s" if sim.train_seconds > 0 else "— it/s"
    return (f"iteration {k}/{total} ({100 * k / max(total, 1):.0f} %), uploads {totals['uploads']}, "
            f"bits up {totals['bits_up']:.3g}, test acc {acc}, {speed}")


class TensorBoardLog:
    """Accuracy, loss, uploads and bits against the iteration, one TensorBoard run per algorithm
    and seed (``FOLDER/<algorithm>/seed<S>``), written at every evaluation.

    Needs the optional ``tensorboard`` package (``pip install 'sasg[tensorboard]'``). A resumed run
    rewrites its history from the start (older events of that run are purged), so the log shows
    one curve, not two overlapping ones."""

    TAGS = {"test_acc": "test/top1_acc", "test_top5": "test/top5_acc", "train_loss": "train/loss",
            "uploads": "comm/uploads", "bits_up": "comm/bits_up"}

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writers: dict[tuple[str, int], object] = {}
        self._written: dict[tuple[str, int], int] = {}
        self._writer_class = tensorboard_writer()

    def __call__(self, sim, label: str) -> None:
        key = (sim.algorithm.name, sim.config.seed)
        if key not in self._writers:
            path = self.folder / key[0] / f"seed{key[1]}"
            self._writers[key] = self._writer_class(log_dir=str(path), purge_step=0)
            self._written[key] = 0
        writer, start = self._writers[key], self._written[key]
        for point in sim.history[start:]:
            for field, tag in self.TAGS.items():
                value = point[field]
                if _finite(value):  # a diverged run's NaN would break TensorBoard's axes
                    writer.add_scalar(tag, float(value), global_step=int(point["iteration"]))
        if len(sim.history) > start:
            self._written[key] = len(sim.history)
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def tensorboard_writer():
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line error saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package; install it with pip install 'sasg[tensorboard]' "
            "(or pip install tensorboard), or drop --tensorboard"
        ) from None
    return SummaryWriter


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
