"""The baselines are the same machine with parts switched off: check the identities."""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from sasg import Simulator
from sasg.data import WorkerSampler, iid_shards

from conftest import small_config


def run_steps(cfg, algo, data, n):
    sim = Simulator(cfg, algo, data)
    for _ in range(n):
        sim.step()
    return sim


def test_sgd_equals_one_model_sgd_on_union_of_minibatches(synth):
    cfg = small_config(workers=4, batch_size=5, lr=0.3)
    sim = Simulator(cfg, "sgd", synth)
    # Replay the same minibatches in a single model trained with plain SGD on their union.
    shards = iid_shards(len(synth.train), cfg.workers, torch.Generator().manual_seed(cfg.seed))
    sampler = WorkerSampler(shards, cfg.batch_size, cfg.seed)
    model = sim.model
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(15):
        idx = sampler.next().reshape(-1)  # the union of the M minibatches
        p = {n: t.requires_grad_(True) for n, t in params.items()}
        loss = F.cross_entropy(functional_call(model, p, (synth.train.x[idx],)), synth.train.y[idx])
        grads = torch.autograd.grad(loss, list(p.values()))
        params = {n: (t - cfg.lr * g).detach() for (n, t), g in zip(p.items(), grads)}
        sim.step()
    torch.testing.assert_close(sim.theta, sim.layout.flatten(params), rtol=1e-5, atol=1e-6)


def test_sparse_with_full_density_equals_sgd(synth):
    cfg = small_config(density=1.0)
    a = run_steps(cfg, "sgd", synth, 20)
    b = run_steps(cfg, "sparse", synth, 20)
    torch.testing.assert_close(a.theta, b.theta)
    assert a.ledger.uploads == b.ledger.uploads
    assert b.workers.error.abs().max() == 0  # nothing left behind


def test_lazy_rule_that_never_skips_equals_always_upload(synth):
    """c huge => threshold ~ 0 => the lazy rule always says 'upload': sasg == sparse, lasg == sgd."""
    cfg = small_config(threshold_scale=1e30, window=2)
    for lazy, eager in (("sasg", "sparse"), ("lasg", "sgd")):
        a = run_steps(cfg, lazy, synth, 25)
        b = run_steps(cfg, eager, synth, 25)
        assert sum(a.ledger.uploads) == 25 * cfg.workers
        assert torch.equal(a.theta, b.theta)
        if b.workers.error is not None:
            assert torch.equal(a.workers.error, b.workers.error)


def test_vectorized_path_equals_loop_path(synth):
    for algo in ("sgd", "sparse", "lasg", "sasg"):
        a = run_steps(small_config(backend="vmap"), algo, synth, 30)
        b = run_steps(small_config(backend="loop"), algo, synth, 30)
        assert a.gradients.backend == "vmap" and b.gradients.backend == "loop"
        assert a.ledger.uploads == b.ledger.uploads, algo
        torch.testing.assert_close(a.theta, b.theta, rtol=1e-5, atol=1e-6)


def test_lazy_algorithms_really_skip(synth):
    cfg = small_config(threshold_scale=0.05, window=4)
    sim = run_steps(cfg, "sasg", synth, 40)
    assert sum(sim.ledger.uploads) < 40 * cfg.workers
    # a skipper's last message stays on the server and keeps being applied
    assert sim.server.last.values.abs().sum() > 0
