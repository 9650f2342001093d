"""``sasg.optim.SASG``: the optimizer API gives the simulator's numbers, alone and under M ranks."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasg import Simulator
from sasg.data import make_synthetic
from sasg.optim import SASG

from conftest import small_config

ALGOS = ("sgd", "sparse", "lasg", "sasg")


def synth():
    return make_synthetic(n_train=240, n_test=120, num_features=12, num_classes=3, seed=1)


def train_like_worker(sim: Simulator, worker: int, algo: str, rounds: int, opt_kw=None, model=None):
    """Train a copy of the simulator's model with SASG on worker ``worker``'s minibatches."""
    cfg = sim.config
    model = copy.deepcopy(sim.model) if model is None else model
    sampler = copy.deepcopy(sim.sampler)
    opt = SASG(model.parameters(), lr=cfg.lr, density=cfg.density, window=cfg.window,
               c=cfg.threshold_scale, algorithm=algo, **(opt_kw or {}))
    for _ in range(rounds):
        idx = sampler.next()[worker]
        x, y = sim.data.train.x[idx], sim.data.train.y[idx]

        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return model, opt


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("algo", ALGOS)
def test_single_process_optimizer_is_the_simulator_with_one_worker(algo):
    sim = Simulator(small_config(workers=1), algo, synth())
    model, opt = train_like_worker(sim, 0, algo, 30)
    for _ in range(30):
        sim.step()
    torch.testing.assert_close(flat(model), sim.theta)
    assert opt.ledger.uploads == sim.ledger.uploads
    assert opt.ledger.bits_up == sim.ledger.bits_up
    if algo in ("lasg", "sasg"):
        assert sum(opt.ledger.uploads) < 30  # it really skipped


def test_state_dict_resume_gives_the_same_parameters():
    sim = Simulator(small_config(workers=1), "sasg", synth())
    full, _ = train_like_worker(sim, 0, "sasg", 25)
    # stop after 10 rounds, save, rebuild everything, load, run the remaining 15 on the same batches
    model, opt = train_like_worker(sim, 0, "sasg", 10)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["sasg"]["workers"]["anchor"].shape == (1, sim.layout.numel)
    fresh = copy.deepcopy(sim.model)
    fresh.load_state_dict(saved_model)
    opt2 = SASG(fresh.parameters(), lr=sim.config.lr, density=sim.config.density, window=sim.config.window,
                c=sim.config.threshold_scale)
    opt2.load_state_dict(saved_opt)
    sampler = copy.deepcopy(sim.sampler)
    for _ in range(10):
        sampler.next()
    for _ in range(15):
        idx = sampler.next()[0]
        x, y = sim.data.train.x[idx], sim.data.train.y[idx]
        opt2.step(lambda: F.cross_entropy(fresh(x), y).backward())
    torch.testing.assert_close(flat(fresh), flat(full))
    assert opt2.iteration == 25


def test_step_needs_a_closure_and_one_param_group():
    with torch.random.fork_rng():
        model = nn.Linear(3, 2)
    opt = SASG(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    with pytest.raises(ValueError, match="one parameter group"):
        SASG([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)


def test_anchor_evaluation_replays_dropout_and_keeps_batchnorm_stats():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    with torch.random.fork_rng():  # the model's dropout draws from the global RNG; keep it private
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 3))
        masks = []
        model[2].register_forward_hook(lambda mod, inp, out: masks.append(out == 0))
        opt = SASG(model.parameters(), lr=0.1, window=1, c=1e-9, algorithm="lasg",
                   restore_buffers=list(model.buffers()))

        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)  # warm-up round: uploads, one evaluation
        for _ in range(3):
            start = torch.get_rng_state()
            n = len(masks)
            opt.step(closure)
            after_step = torch.get_rng_state()
            assert len(masks) == n + 2  # fresh + anchor evaluation (c tiny: the rule is checked)
            assert torch.equal(masks[-1], masks[-2])  # the anchor saw the same dropout mask
            # ... and the RNG moved as for ONE evaluation
            torch.set_rng_state(start)
            copy.deepcopy(model)(x)
            assert torch.equal(torch.get_rng_state(), after_step)
            masks.pop()
        # BatchNorm's running statistics only saw the fresh passes
        assert int(model[1].num_batches_tracked) == 4


# ----- under torch.distributed: M ranks, one optimizer each ---------------------------------------------


def _optimizer_rank(rank, world, folder, algo, rounds):
    sim = Simulator(small_config(workers=world), algo, synth())
    model = copy.deepcopy(sim.model)
    if rank == 1:  # a different init on rank 1: broadcast_initial gives it rank 0's parameters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    model, opt = train_like_worker(sim, rank, algo, rounds, model=model)
    torch.save({"theta": flat(model), "uploads": opt.ledger.uploads, "bits_flags": opt.ledger.bits_flags,
                "counters": opt.transport.counters.to_dict()}, os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.parametrize("algo", ["sasg", "sgd"])
def test_optimizer_under_two_ranks_follows_the_simulator(tmp_path, algo):
    from test_distributed import spawn

    world, rounds = 2, 20
    spawn(_optimizer_rank, world, str(tmp_path), algo, rounds)
    sim = Simulator(small_config(workers=world), algo, synth())
    for _ in range(rounds):
        sim.step()
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        torch.testing.assert_close(out["theta"], sim.theta)
        assert out["uploads"] == sim.ledger.uploads
        assert out["bits_flags"] == [world if algo == "sasg" else 0] * rounds
