"""Watching a run while it goes: progress lines for logs, and an optional TensorBoard log.

Both are *watchers*: called as ``watcher(sim, label)`` after every round of a run (``sim`` a
:class:`~sasg.sim.Simulator`, ``label`` e.g. ``"seed 0 sasg"``), and ``watcher.close()`` at the end.
They only read the run (its iteration, ledger and evaluation history), so they change no number.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

from ..config import ConfigError
from ..safe_files import file_tag, os_reason, probe_folder


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
    one curve, not two overlapping ones.

    The folder is checked when the log is made, before training (a file, an unwritable folder:
    a :class:`ConfigError`). A failure while logging (disk full) is one line naming the folder;
    logging stops there, the run goes on and its results are written, and ``failed`` says so."""

    TAGS = {"test_acc": "test/top1_acc", "test_top5": "test/top5_acc", "train_loss": "train/loss",
            "uploads": "comm/uploads", "bits_up": "comm/bits_up"}

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writers: dict[tuple[str, int], object] = {}
        self._written: dict[tuple[str, int], int] = {}
        self._writer_class = tensorboard_writer()
        self.failed: str | None = None  # why logging stopped, if it did
        check_log_folder(self.folder)
        _writer_thread_tracebacks(hidden=True)  # until close(): its failures are said in one line
        self._open = True

    def __call__(self, sim, label: str) -> None:
        if self.failed is None:
            try:
                self._log(sim)
            except Exception as e:  # the log's own disk or folder: say so once, keep training
                self._fail(e)

    def _fail(self, e: Exception) -> None:
        reason = os_reason(e) if isinstance(e, OSError) else (str(e).strip().splitlines() or [type(e).__name__])[0]
        self.failed = f"cannot write the TensorBoard log in {self.folder}: {reason}"
        print(f"sasg: error: {self.failed}; TensorBoard logging stopped, the run goes on and its results "
              "are written", file=sys.stderr, flush=True)
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:
                pass
        self._writers.clear()

    def _log(self, sim) -> None:
        key = (sim.algorithm.name, sim.config.seed)
        if key not in self._writers:
            path = self.folder / file_tag(key[0]) / f"seed{key[1]}"
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
        try:
            for writer in self._writers.values():
                writer.close()
        except Exception as e:
            if self.failed is None:
                self._fail(e)
        self._writers.clear()
        if self._open:
            self._open = False
            _writer_thread_tracebacks(hidden=False)


def check_log_folder(folder: Path) -> None:
    """``--tensorboard``'s folder can take the log: checked before training (what the check
    creates is removed again)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--tensorboard {folder} is a file, not a folder; choose another --tensorboard")
    try:
        probe_folder(folder.resolve())
    except OSError as e:
        raise ConfigError(
            f"cannot write the TensorBoard log in {folder}: {os_reason(e)}; choose another --tensorboard"
        ) from None


_hiding = {"logs": 0, "before": None}


def _writer_thread_tracebacks(hidden: bool) -> None:
    """While a :class:`TensorBoardLog` is open: a failure in TensorBoard's own writer thread (disk
    full) is raised again by the writer's next call, which the log reports in one line; the
    thread's traceback (``threading.excepthook``) is dropped, for those threads only. The hook
    before is put back when the last open log closes."""
    if hidden:
        if _hiding["logs"] == 0:
            before = _hiding["before"] = threading.excepthook

            def hook(args, before=before):
                if type(args.thread).__name__ != "_AsyncWriterThread":
                    before(args)

            threading.excepthook = hook
        _hiding["logs"] += 1
    elif _hiding["logs"] > 0:
        _hiding["logs"] -= 1
        if _hiding["logs"] == 0:
            threading.excepthook = _hiding["before"]


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
