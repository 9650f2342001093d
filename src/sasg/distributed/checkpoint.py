"""Per-rank checkpoints of a distributed run, and picking the point to resume from.

Each rank writes its own file ``seed<S>-rank<R>-iter<K>.pt`` (its worker state — error memory,
anchor, staleness — the server replica with every worker's last message and the trigger window,
theta, its sampler streams, the ledger and, on rank 0, the evaluation history), atomically
(temporary file + rename), every ``--checkpoint-every`` rounds, and keeps the last two.

Ranks save between the same two collectives, so when a run dies their latest checkpoints differ
by at most one interval; :func:`resume_point` picks the newest iteration every rank still holds.
``--resume`` with nothing to resume from is an error (:func:`check_resumable` before the workers
start, :func:`resume_point` in them), never a silent fresh start.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from pathlib import Path

import torch

from ..config import ConfigError

KEEP = 2
_NAME = re.compile(r"seed(\d+)-rank(\d+)-iter(\d+)\.pt$")


def checkpoint_path(folder: Path, seed: int, rank: int, iteration: int) -> Path:
    return Path(folder) / f"seed{seed}-rank{rank}-iter{iteration}.pt"


def saved_iterations(folder: Path, seed: int, rank: int) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    its = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and int(m.group(1)) == seed and int(m.group(2)) == rank:
            its.append(int(m.group(3)))
    return sorted(its)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the folder was checked before training: disk full, or
    the folder changed under the run)."""


def save_checkpoint(folder: Path, seed: int, rank: int, iteration: int, state: dict) -> Path:
    folder = Path(folder)
    path = checkpoint_path(folder, seed, rank, iteration)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"cannot write the checkpoint {path}: {e.strerror or e}; free space or choose another "
            "--checkpoint-dir, then --resume"
        ) from None
    for it in saved_iterations(folder, seed, rank)[:-KEEP]:
        checkpoint_path(folder, seed, rank, it).unlink(missing_ok=True)
    return path


def load_checkpoint(folder: Path, seed: int, rank: int, iteration: int) -> dict:
    return torch.load(checkpoint_path(folder, seed, rank, iteration), map_location="cpu", weights_only=False)


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


def resume_point(folder: Path, seed: int, rank: int, transport) -> int:
    """The newest iteration that every rank has a checkpoint for (a collective; every rank gets the
    same answer or the same error)."""
    mine = saved_iterations(folder, seed, rank)
    latest = transport.all_gather_int(mine[-1] if mine else 0)
    if not any(latest):
        raise _nothing_to_resume(folder, seed)
    point = min(latest)
    if not point:
        raise _no_common(folder, 0, [r for r, v in enumerate(latest) if not v])
    have = transport.all_gather_int(1 if point in mine else 0)
    if not all(have):
        raise _no_common(folder, point, [r for r, h in enumerate(have) if not h])
    return point
