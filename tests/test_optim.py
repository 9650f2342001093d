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
    assert opt.ledger.bits_flags == [0] * 30  # one process: no flag has anyone to go to
    if algo in ("lasg", "sasg"):
        assert sum(opt.ledger.uploads) < 30  # it really skipped


def test_state_dict_resume_gives_the_same_parameters():
    sim = Simulator(small_config(workers=1), "sasg", synth())
    full, _ = train_like_worker(sim, 0, "sasg", 25)
    # stop after 10 rounds, save, rebuild everything, load, run the remaining 15 on the same batches
    model, opt = train_like_worker(sim, 0, "sasg", 10)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["sasg"]["workers"]["buffers"]["anchor"].shape == (1, sim.layout.numel)
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


def test_step_needs_a_closure_and_a_lazy_rule_one_lr():
    with torch.random.fork_rng():
        model = nn.Linear(3, 2)
    opt = SASG(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    with pytest.raises(ValueError, match=r"lazy rule \(wk2\) divides its threshold by one lr.*lrs 0.1, 0.01"):
        SASG([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}], lr=0.1)
    SASG([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.1)  # one lr: fine


def _tiny(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g, dtype=dtype), torch.randint(0, 3, (16,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return model, closure


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=-0.1), "lr must be a finite number >= 0"),
        (dict(lr=float("nan")), "lr must be"),
        (dict(lr=float("inf")), "lr must be"),
        (dict(lr=True), "lr must be"),
        (dict(lr=0.1, density="0.1"), "density must be a number"),
        (dict(lr=0.1, density=1.5), "density must be in"),
        (dict(lr=0.1, density=1.5, algorithm="sgd"), "density must be in"),  # checked even if unused
        (dict(lr=0.1, window=float("nan")), "window D must be an integer"),
        (dict(lr=0.1, window=0, algorithm="sparse"), "window D must be an integer"),
        (dict(lr=0.1, c=0.0), "threshold scale c"),
        (dict(lr=0.1, codec="nope"), "unknown codec 'nope'"),
        (dict(lr=0.1, algorithm="adam"), "unknown algorithm 'adam'"),
    ],
)
def test_bad_arguments_are_clear_value_errors(kw, match):
    model, _ = _tiny()
    with pytest.raises(ValueError, match=match):
        SASG(model.parameters(), **kw)


def test_closure_without_backward_and_sparse_gradients_stop_before_anything_is_sent():
    model, closure = _tiny()
    opt = SASG(model.parameters(), lr=0.1)
    before = flat(model).clone()
    loss = closure()  # backward outside the closure: step clears .grad first, so it is lost
    with pytest.raises(RuntimeError, match="left no gradients"):
        opt.step(lambda: loss)
    assert torch.equal(flat(model), before) and opt.iteration == 0 and opt.ledger.iterations == 0
    with torch.random.fork_rng():
        emb = nn.Embedding(10, 4, sparse=True)
    opt = SASG(emb.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step(lambda: emb(torch.tensor([1, 2])).sum().backward())
    with pytest.raises(ValueError, match="cannot add a parameter group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})


def test_frozen_and_empty_tensors_are_neither_sent_nor_touched():
    model, closure = _tiny()
    with torch.random.fork_rng():
        frozen = nn.Linear(50, 50)
    frozen.requires_grad_(False)
    empty = nn.Parameter(torch.zeros(0))
    params = [*frozen.parameters(), *model.parameters(), empty]
    for algo in ("sgd", "sasg"):
        with_frozen = SASG(params, lr=0.1, algorithm=algo, density=0.25)
        alone = SASG(model.parameters(), lr=0.1, algorithm=algo, density=0.25)
        assert with_frozen.layout.numel == alone.layout.numel == sum(p.numel() for p in model.parameters())
        size = lambda opt: opt.engine.template.encode(opt.algorithm.codec)[1]  # noqa: E731  (one message)
        assert size(with_frozen) == size(alone)
    w = frozen.weight.clone()
    with_frozen.step(closure)
    alone.step(closure)
    assert with_frozen.ledger.bits_up == alone.ledger.bits_up  # the frozen tensor costs no bits
    assert torch.equal(frozen.weight, w) and frozen.weight.grad is None
    with pytest.raises(ValueError, match="no trainable parameters"):
        SASG(frozen.parameters(), lr=0.1)


@pytest.mark.parametrize("algo", ["lasg", "sasg"])
def test_lr_scheduled_down_to_zero(algo):
    # Schedulers end at exactly 0 (CosineAnnealingLR at T_max, LinearLR to 0): the lazy threshold
    # sum / (c M lr) takes its limit, infinity, so a checked worker skips instead of dividing by 0.
    model, closure = _tiny()
    opt = SASG(model.parameters(), lr=0.1, window=2, algorithm=algo)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=6)
    for _ in range(10):
        opt.step(closure)
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    assert torch.isfinite(flat(model)).all()
    # After lr reached 0, only forced uploads (staleness > D) happen: at most one in D + 1 rounds.
    assert sum(opt.ledger.uploads[-3:]) <= 1
    if algo == "lasg":  # no error memory: with lr 0 nothing moves at all
        before = flat(model).clone()
        opt.step(closure)
        assert torch.equal(flat(model), before)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.step(closure)


def test_state_loads_into_another_dtype_and_refuses_other_settings():
    model, closure = _tiny()
    opt = SASG(model.parameters(), lr=0.1, window=2, density=0.3)
    for _ in range(4):
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    model64, closure64 = _tiny(dtype=torch.float64)
    opt64 = SASG(model64.parameters(), lr=0.1, window=2, density=0.3)
    opt64.load_state_dict(saved)  # float32 state into a float64 optimizer: cast, as torch.optim does
    assert opt64.engine.server.last.values.dtype == torch.float64
    opt64.step(closure64)  # used to fail in index_add_ (Double vs Float)
    assert opt64.iteration == 5
    for name in ("c", "window"):
        other = SASG(model.parameters(), lr=0.1, window=3 if name == "window" else 2, density=0.3,
                     c=1.0 if name == "c" else 2.0)
        with pytest.raises(ValueError, match=f"saved with other settings: {name}"):
            other.load_state_dict(saved)


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
