"""Non-IID splits of a training set over workers, and a summary of any split for reports.

Lazy aggregation is most interesting when workers' data differ, so besides the paper's IID split
(``partition.iid_shards``) two standard non-IID schemes are offered:

- ``dirichlet_shards``: for every class, the share of that class each worker gets is drawn from
  Dirichlet(beta, ..., beta). Small beta (0.05) gives each worker a few dominant classes; large
  beta (100) approaches an IID split with unequal sizes.
- ``label_shards``: sort the samples by label, cut them into ``M * s`` contiguous shards and give
  each worker ``s`` shards at random, so each worker sees about ``s`` classes.

Both return one index tensor per worker; together they cover every sample exactly once (unlike
``iid_shards``, nothing is dropped), and the workers' shard sizes may differ.

Reproducibility: ``torch.distributions.Dirichlet`` and ``torch._standard_gamma`` take no
generator, so they would draw from (and disturb) the global RNG. Instead one 63-bit seed is
drawn from the caller's ``torch.Generator`` and every further random number comes from a numpy
``Generator(PCG64(seed))``, whose ``gamma`` sampler normalised per class gives the Dirichlet
draw. The split is thus a pure function of the torch generator's state.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device).item())
    return np.random.Generator(np.random.PCG64(seed))


def _labels_array(labels: Tensor | np.ndarray) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    return y.astype(np.int64, copy=False)


def _check_workers(num_workers: int, num_samples: int, per_worker: int = 1, what: str = "") -> None:
    """``what``: what each worker needs ``per_worker`` of, and the flag that sets it."""
    if num_workers < 1:
        raise ValueError(f"workers must be >= 1, got {num_workers}")
    if num_workers * per_worker > num_samples:
        fix = f"use fewer --workers or a smaller {what}" if what else "use fewer --workers"
        raise ValueError(
            f"{num_workers} workers x {per_worker} need at least {num_workers * per_worker} training samples, "
            f"only {num_samples} available; {fix}"
        )


def dirichlet_shards(
    labels: Tensor | np.ndarray,
    num_workers: int,
    beta: float,
    generator: torch.Generator,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[Tensor]:
    """Split sample indices over ``num_workers`` with per-class Dirichlet(``beta``) proportions.

    For each class c, its samples (in random order) are cut at the cumulative proportions
    ``p_c ~ Dir(beta * 1_M)``. The whole draw is repeated until every worker holds at least
    ``min_size`` samples (a worker with nothing would have no gradient to compute); after
    ``max_tries`` draws that all leave some worker short, a ValueError says what to change.
    Each returned tensor is sorted (int64).
    """
    if not beta > 0:
        raise ValueError(f"Dirichlet beta must be > 0, got {beta}; small (0.1) = very non-IID, large (100) = near IID")
    y = _labels_array(labels)
    _check_workers(num_workers, y.size, max(min_size, 1))
    rng = _numpy_rng(generator)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
        for idx in by_class:
            idx = rng.permutation(idx)
            gamma = rng.gamma(beta, size=num_workers)
            total = gamma.sum()
            if total > 0:
                props = gamma / total
            else:  # every draw underflowed to 0 (tiny beta): the class goes to one worker
                props = np.zeros(num_workers)
                props[rng.integers(num_workers)] = 1.0
            cuts = np.round(np.cumsum(props)[:-1] * idx.size).astype(np.int64)
            for m, chunk in enumerate(np.split(idx, cuts)):
                parts[m].append(chunk)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(s.size for s in shards) >= min_size:
            return [torch.from_numpy(s.astype(np.int64)) for s in shards]
    raise ValueError(
        f"no Dirichlet(beta={beta}) split in {max_tries} tries gave all {num_workers} workers at least "
        f"{min_size} samples of {y.size}; raise --beta, use fewer --workers or a smaller --batch-size"
    )


def label_shards(
    labels: Tensor | np.ndarray, num_workers: int, shards_per_worker: int, generator: torch.Generator
) -> list[Tensor]:
    """Sort by label, cut into ``num_workers * shards_per_worker`` contiguous shards (sizes differ by
    at most one) and hand each worker ``shards_per_worker`` of them at random.

    With 10 classes, 100 workers and 2 shards each this is the classic "2 classes per worker"
    pathological non-IID split. Ties in the sort are broken by sample index, so the split
    depends only on the labels and the generator. Each returned tensor is sorted (int64).
    """
    if shards_per_worker < 1:
        raise ValueError(f"shards per worker must be >= 1, got {shards_per_worker}")
    y = _labels_array(labels)
    _check_workers(num_workers, y.size, shards_per_worker, "--shards-per-worker")
    order = torch.from_numpy(np.argsort(y, kind="stable"))
    pieces = torch.tensor_split(order, num_workers * shards_per_worker)
    owners = torch.randperm(len(pieces), generator=generator, device=generator.device).cpu()
    shards = []
    for m in range(num_workers):
        mine = owners[m * shards_per_worker : (m + 1) * shards_per_worker]
        shards.append(torch.sort(torch.cat([pieces[int(i)] for i in mine])).values)
    return shards


def is_partition(shards: list[Tensor], num_samples: int) -> bool:
    """True if the shards together hold every index ``0..num_samples-1`` exactly once."""
    if not shards:
        return num_samples == 0
    everything = torch.cat([s.reshape(-1).long().cpu() for s in shards])
    return everything.numel() == num_samples and torch.equal(torch.sort(everything).values, torch.arange(num_samples))


def describe_partition(shards: list[Tensor], labels: Tensor | np.ndarray) -> list[dict]:
    """One JSON-friendly record per worker: ``worker``, ``size``, ``num_labels`` (distinct classes)
    and ``label_counts`` ({class: count}, classes ascending) — what a report shows to make the
    degree of non-IID-ness visible."""
    y = torch.as_tensor(_labels_array(labels))
    out = []
    for m, shard in enumerate(shards):
        classes, counts = torch.unique(y[shard.long().cpu()], return_counts=True)
        out.append(
            {
                "worker": m,
                "size": int(shard.numel()),
                "num_labels": int(classes.numel()),
                "label_counts": {int(c): int(k) for c, k in zip(classes, counts)},
            }
        )
    return out


__all__ = ["describe_partition", "dirichlet_shards", "is_partition", "label_shards"]
