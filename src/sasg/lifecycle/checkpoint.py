"""Checkpoints of a run, and picking the point to resume from.

``sasg run`` and ``sasg compare`` keep one file per algorithm, ``seed<S>-<algorithm>-iter<K>.pt``
(and ``seed<S>-<algorithm>-done.pt``, the finished run's result, which a resumed compare skips).
In a distributed run each rank writes its own file ``seed<S>-rank<R>-iter<K>.pt`` (its worker
state — error memory, anchor, staleness — the server replica with every worker's last message and
the trigger window, theta, its sampler streams, the ledger and, on rank 0, the evaluation
history). Either is written atomically (temporary file, fsync, rename: a crash leaves the old
file or the new one, never half of one), every ``--checkpoint-every`` rounds, and the last two
are kept. The temporary file has an
unpredictable name and is created with ``O_EXCL | O_NOFOLLOW`` (:mod:`sasg.safe_files`), so a
symlink planted in the folder can never make a checkpoint write land elsewhere; an algorithm's
name is encoded (:func:`~sasg.safe_files.file_tag`) so no name can leave the folder. Any failure
of the write (disk full included) is one :class:`CheckpointWriteError` naming the file, and no
temporary file is left.

Checkpoints are read, once known to be regular files (a FIFO is refused, never waited on), with
``torch.load(weights_only=True)``: tensors and plain containers only, so a planted file cannot
run code. Ranks save between the same two collectives, so when a run
dies their latest checkpoints differ by at most one interval; :func:`load_resume_state` picks the
newest iteration every rank holds intact (a damaged newest file is reported and the previous one
used). ``--resume`` with nothing to resume from is an error (:func:`check_resumable` before the
workers start, :func:`load_resume_state` in them), never a silent fresh start.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import suppress
from pathlib import Path

import torch

from ..config import ConfigError
from ..safe_files import NotARegularFile, create_temporary, file_tag, is_regular_file, open_regular

KEEP = 2
_NAME = re.compile(r"seed(\d+)-(.+)-iter(\d+)\.pt$")


def _tag(who) -> str:
    """Whose checkpoint: a rank (``rank<R>``, a distributed run) or an algorithm's name (one of the
    runs of ``sasg run``/``sasg compare``)."""
    return f"rank{who}" if isinstance(who, int) else file_tag(str(who))


def checkpoint_path(folder: Path, seed: int, who, iteration: int) -> Path:
    return Path(folder) / f"seed{seed}-{_tag(who)}-iter{iteration}.pt"


def result_path(folder: Path, seed: int, who) -> Path:
    """Where a finished run's result is kept (``sasg compare --resume`` skips it)."""
    return Path(folder) / f"seed{seed}-{_tag(who)}-done.pt"


def saved_iterations(folder: Path, seed: int, who) -> list[int]:
    folder, tag = Path(folder), _tag(who)
    if not folder.is_dir():
        return []
    its = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and int(m.group(1)) == seed and m.group(2) == tag:
            its.append(int(m.group(3)))
    return sorted(its)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the folder was checked before training: disk full, or
    the folder changed under the run)."""


class CheckpointReadError(ConfigError):
    """A checkpoint file that does not load: damaged (truncated), or not a sasg checkpoint."""


def save_checkpoint(folder: Path, seed: int, who, iteration: int, state: dict) -> Path:
    """Write ``state`` as the checkpoint of ``who`` (a rank or an algorithm) at ``iteration``,
    atomically; keep the last :data:`KEEP`."""
    path = write_atomically(checkpoint_path(folder, seed, who, iteration), state)
    for it in saved_iterations(folder, seed, who)[:-KEEP]:
        remove_checkpoint(checkpoint_path(folder, seed, who, it))
    return path


def remove_checkpoint(path: Path) -> None:
    """Remove an older checkpoint: a regular file, as :func:`write_atomically` leaves one. Anything
    else at its name (a FIFO, a symlink someone put there) sasg did not make, and keeps."""
    if is_regular_file(path):
        with suppress(FileNotFoundError):
            path.unlink()


def write_atomically(path: Path, state: dict) -> Path:
    """``torch.save`` into a temporary file, fsync, rename: ``path`` holds the old bytes or the
    new ones, never half of them. Any failure is one :class:`CheckpointWriteError`."""
    folder = path.parent
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temporary(path)  # a new file of this process, under a name nobody guessed
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        _fsync_folder(folder)
    except BaseException as e:  # disk full may surface as RuntimeError from torch.save; Ctrl-C too
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        text = str(e).strip()
        reason = getattr(e, "strerror", None) or (text.splitlines()[0][:160] if text else type(e).__name__)
        raise CheckpointWriteError(
            f"cannot write the checkpoint {path}: {reason}; free space or choose another --checkpoint-dir, then --resume"
        ) from None
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(folder: Path, seed: int, who, iteration: int) -> dict:
    """The state saved by :func:`save_checkpoint`."""
    return read_state(checkpoint_path(folder, seed, who, iteration))


def read_state(path: Path) -> dict:
    """A file written by :func:`write_atomically`. Read with ``weights_only=True``: a file holding
    anything but tensors and plain containers is refused, never executed."""
    try:
        with open_regular(path) as f:  # a FIFO planted here is refused, not waited on
            state = torch.load(f, map_location="cpu", weights_only=True)
    except NotARegularFile as e:
        raise CheckpointReadError(f"the checkpoint {path} {e.strerror}: not a sasg checkpoint") from None
    except Exception as e:  # truncated zip, foreign pickle, unreadable file
        text = str(e).strip()
        first = text.splitlines()[0][:160] if text else type(e).__name__
        raise CheckpointReadError(
            f"the checkpoint {path} cannot be read ({first}): it is damaged or not a sasg checkpoint"
        ) from None
    if not isinstance(state, dict) or "run" not in state or "config" not in state:
        raise CheckpointReadError(f"the checkpoint {path} is not a sasg checkpoint (no run state in it)")
    return state


def _nothing_to_resume(folder: Path, seed: int) -> ConfigError:
    where = "no such folder" if not Path(folder).is_dir() else f"none for seed {seed}"
    return ConfigError(
        f"no checkpoint found in {folder} ({where}); drop --resume to start afresh, "
        "or pass the --checkpoint-dir (and --seed) of the run to continue"
    )


def _no_common(folder: Path, point: int, missing: list[int]) -> ConfigError:
    what = f"at iteration {point}" if point else "at all"
    return ConfigError(
        f"cannot resume: rank(s) {', '.join(map(str, missing))} have no checkpoint {what} in {folder}; "
        "start again without --resume"
    )


def check_resumable(folder: Path, seed: int, ranks) -> int:
    """Before the workers start: the newest iteration the given ranks (this node's) all hold."""
    saved = {r: saved_iterations(folder, seed, r) for r in ranks}
    if not any(saved.values()):
        raise _nothing_to_resume(folder, seed)
    point = min(its[-1] if its else 0 for its in saved.values())
    missing = [r for r, its in saved.items() if (point not in its if point else not its)]
    if missing:
        raise _no_common(folder, point, missing)
    return point


def _loader(folder: Path, seed: int, who, label: str):
    """``intact(iteration) -> bool`` that loads (once) and keeps each checkpoint of ``who`` in
    ``loaded``; a damaged one is reported on stderr and counts as absent."""
    loaded: dict[int, dict | None] = {}

    def intact(it: int) -> bool:
        if it not in loaded:
            try:
                loaded[it] = load_checkpoint(folder, seed, who, it)
            except CheckpointReadError as e:
                print(f"sasg: note: {label}: {e}; trying the previous checkpoint", file=sys.stderr, flush=True)
                loaded[it] = None
        return loaded[it] is not None

    return intact, loaded


def newest_intact(folder: Path, seed: int, who) -> tuple[int, dict] | None:
    """The newest intact checkpoint of ``who`` (falling back past damaged ones), or None."""
    intact, loaded = _loader(folder, seed, who, _tag(who))
    it = next((it for it in saved_iterations(folder, seed, who)[::-1] if intact(it)), None)
    return None if it is None else (it, loaded[it])


# Config fields whose flag is not --<field with dashes>.
_FLAGS = {"algorithms": "--algos", "per_algorithm": "the per-algorithm values (e.g. --density sasg=0.05)",
          "paper_alpha": "--lr / --workers", "target_acc": "--target-acc"}


def check_same_setting(saved: dict, now: dict) -> None:
    """A checkpoint resumes only the run that made it: name the first setting that differs and the
    flag that sets it."""
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
            raise ConfigError(
                f"the checkpoint was made with {key}={saved.get(key)!r}, this run has {key}={now.get(key)!r}; "
                f"resume with the same {flag} as that run, or start again without --resume"
            )


def load_resume_state(folder: Path, seed: int, rank: int, transport) -> tuple[int, dict]:
    """The newest iteration that every rank holds an intact checkpoint of, and this rank's state
    there (a collective; every rank gets the same iteration or the same error). A damaged newest
    checkpoint is reported on stderr and the previous one is used."""
    mine = saved_iterations(folder, seed, rank)[::-1]  # newest first
    intact, loaded = _loader(folder, seed, rank, f"rank {rank}")
    best = next((it for it in mine if intact(it)), 0)
    latest = transport.all_gather_int(best)
    if not any(latest):
        raise _nothing_to_resume(folder, seed)
    point = min(latest)
    if not point:
        raise _no_common(folder, 0, [r for r, v in enumerate(latest) if not v])
    have = transport.all_gather_int(1 if point in mine and intact(point) else 0)
    if not all(have):
        raise _no_common(folder, point, [r for r, h in enumerate(have) if not h])
    return point, loaded[point]
