import torch

from sasg.data import iid_shards, load_mnist5k
from sasg.data.sampler import WorkerSampler
from sasg.models import build_model, num_parameters


def test_embedded_mnist5k_split():
    data = load_mnist5k()
    assert data.train.x.shape == (4000, 1, 28, 28) and data.test.x.shape == (1000, 1, 28, 28)
    assert torch.bincount(data.train.y).tolist() == [400] * 10
    assert torch.bincount(data.test.y).tolist() == [100] * 10
    assert abs(float(data.train.x.mean())) < 0.1  # normalised


def test_iid_shards_are_disjoint_and_equal():
    shards = iid_shards(103, 10, torch.Generator().manual_seed(0))
    assert all(s.numel() == 10 for s in shards)
    allidx = torch.cat(shards)
    assert allidx.unique().numel() == 100


def test_sampler_walks_each_shard_once_per_epoch():
    shards = iid_shards(40, 2, torch.Generator().manual_seed(0))
    s = WorkerSampler(shards, 5, seed=1)
    seen = torch.cat([s.next() for _ in range(s.rounds_per_epoch)], dim=1)
    for m in range(2):
        assert sorted(seen[m].tolist()) == sorted(shards[m].tolist())


def test_fc_has_the_papers_parameter_count():
    assert num_parameters(build_model("fc", (1, 28, 28), 10, seed=0)) == 407_050
    assert num_parameters(build_model("logreg", (1, 28, 28), 10, seed=0)) == 7_850


def test_model_init_is_deterministic_in_seed():
    a = build_model("fc", (12,), 3, seed=5)
    b = build_model("fc", (12,), 3, seed=5)
    c = build_model("fc", (12,), 3, seed=6)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
