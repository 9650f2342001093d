"""Per-rank checkpoints of a distributed run, and picking the point to resume from.

Each rank writes its own file ``seed<S>-rank<R>-iter<K>.pt`` (its worker state — error memory,
anchor, staleness — the server replica with every worker's last message and the trigger window,
theta, its sampler streams, the ledger and, on rank 0, the evaluation history), atomically
(temporary file + rename), every ``--checkpoint-every`` rounds, and keeps the last two.

Ranks save between the same two collectives, so when a run dies their latest checkpoints differ
by at most one interval; :func:`resume_point` picks the newest iteration every rank still holds.
"""

from __future__ import annotations

import os
import re
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


def save_checkpoint(folder: Path, seed: int, rank: int, iteration: int, state: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, seed, rank, iteration)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for it in saved_iterations(folder, seed, rank)[:-KEEP]:
        checkpoint_path(folder, seed, rank, it).unlink(missing_ok=True)
    return path


def load_checkpoint(folder: Path, seed: int, rank: int, iteration: int) -> dict:
    return torch.load(checkpoint_path(folder, seed, rank, iteration), map_location="cpu", weights_only=False)


def resume_point(folder: Path, seed: int, rank: int, transport) -> int:
    """The newest iteration that every rank has a checkpoint for (a collective); 0 = none."""
    mine = saved_iterations(folder, seed, rank)
    latest = transport.all_gather_int(mine[-1] if mine else 0)
    point = min(latest)
    have = transport.all_gather_int(1 if point == 0 or point in mine else 0)
    if point and not all(have):
        missing = [r for r, h in enumerate(have) if not h]
        raise ConfigError(
            f"cannot resume: no common checkpoint at iteration {point} (missing for rank(s) "
            f"{', '.join(map(str, missing))} in {folder}); start again without --resume"
        )
    return point
