"""Non-IID splits: always a partition of the samples, with the promised label skew."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sasg.data.splits import describe_partition, dirichlet_shards, is_partition, label_shards


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BALANCED = torch.arange(1000) % 10  # 10 classes x 100 samples


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 7), min_size=1, max_size=300),
    workers=st.integers(1, 12),
    beta=st.sampled_from([0.05, 0.3, 1.0, 100.0]),
    seed=st.integers(0, 2**31),
)
def test_dirichlet_is_a_partition(labels, workers, beta, seed):
    y = torch.tensor(labels)
    if workers > len(labels):
        with pytest.raises(ValueError, match="fewer --workers"):
            dirichlet_shards(y, workers, beta, gen(seed))
        return
    try:
        shards = dirichlet_shards(y, workers, beta, gen(seed), max_tries=200)
    except ValueError as exc:  # tiny data with very small beta can leave a worker empty every time
        assert "raise --beta" in str(exc)
        return
    assert len(shards) == workers and is_partition(shards, len(labels))
    assert all(s.dtype == torch.int64 and s.numel() >= 1 for s in shards)


def test_dirichlet_is_deterministic_in_the_generator():
    a = dirichlet_shards(BALANCED, 10, 0.5, gen(3))
    b = dirichlet_shards(BALANCED, 10, 0.5, gen(3))
    c = dirichlet_shards(BALANCED, 10, 0.5, gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_small_beta_gives_few_labels_large_beta_nearly_all():
    skewed = describe_partition(dirichlet_shards(BALANCED, 10, 0.05, gen(0)), BALANCED)
    even = describe_partition(dirichlet_shards(BALANCED, 10, 100.0, gen(0)), BALANCED)
    assert sum(r["num_labels"] for r in skewed) / 10 < 5
    assert all(r["num_labels"] >= 9 for r in even)
    assert max(r["size"] for r in even) < 1.5 * min(r["size"] for r in even)


def test_dirichlet_min_size_and_bad_arguments():
    shards = dirichlet_shards(BALANCED, 20, 0.1, gen(1), min_size=10)
    assert min(s.numel() for s in shards) >= 10 and is_partition(shards, 1000)
    with pytest.raises(ValueError, match="raise --beta"):
        dirichlet_shards(torch.zeros(20, dtype=torch.long), 10, 0.01, gen(0), min_size=2, max_tries=5)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dirichlet_shards(BALANCED, 10, 0.0, gen(0))
    with pytest.raises(ValueError, match="workers must be >= 1"):
        dirichlet_shards(BALANCED, 0, 1.0, gen(0))


@pytest.mark.parametrize("workers,per", [(10, 2), (7, 3), (1, 1), (100, 2)])
def test_label_shards_partition_and_skew(workers, per):
    shards = label_shards(BALANCED, workers, per, gen(2))
    assert len(shards) == workers and is_partition(shards, 1000)
    sizes = [s.numel() for s in shards]
    assert max(sizes) - min(sizes) <= per  # pieces differ by at most one sample
    if 1000 % (workers * per) == 0 and (100 % (1000 // (workers * per)) == 0):
        assert all(r["num_labels"] <= per for r in describe_partition(shards, BALANCED))


def test_label_shards_deterministic_and_errors():
    a = label_shards(BALANCED, 10, 2, gen(5))
    assert all(torch.equal(x, y) for x, y in zip(a, label_shards(BALANCED, 10, 2, gen(5))))
    with pytest.raises(ValueError, match="fewer --workers"):
        label_shards(torch.arange(10), 6, 2, gen(0))
    with pytest.raises(ValueError, match="shards per worker"):
        label_shards(BALANCED, 10, 0, gen(0))


def test_describe_partition():
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    report = describe_partition([torch.tensor([0, 3]), torch.tensor([1, 2, 4, 5])], y)
    assert report == [
        {"worker": 0, "size": 2, "num_labels": 2, "label_counts": {0: 1, 2: 1}},
        {"worker": 1, "size": 4, "num_labels": 3, "label_counts": {0: 1, 1: 1, 2: 2}},
    ]
    assert not is_partition([torch.tensor([0, 1]), torch.tensor([1])], 3)


def test_dirichlet_redraws_until_every_worker_holds_a_batch():
    # A very non-IID split gives some worker a handful of samples on the first draws; a run needs
    # a whole batch per worker, so the simulator asks for min_size = batch size.
    from sasg.data import make_partition

    y = torch.arange(400) % 10
    shards = make_partition("dirichlet", y, 10, torch.Generator().manual_seed(0), beta=0.05, min_size=10)
    assert min(len(s) for s in shards) >= 10
    assert sorted(torch.cat(shards).tolist()) == list(range(400))
    loose = make_partition("dirichlet", y, 10, torch.Generator().manual_seed(0), beta=0.05)
    assert min(len(s) for s in loose) < 10  # without it, this draw would not fit batch 10
