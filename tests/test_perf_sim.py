"""Simulator hot path: reused gradient buffers, the stale path without copies, the allocator knob."""

import pytest
import torch

from sasg import Simulator
from sasg.sim import allocator
from sasg.sim.gradients import LoopGradients, VmapGradients

from conftest import small_config


def test_gradients_into_a_buffer_equal_fresh_ones(synth):
    sim = Simulator(small_config(), "sgd", synth)
    idx = sim.sampler.next()
    x, y = synth.train.x[idx], synth.train.y[idx]
    for cls in (VmapGradients, LoopGradients):
        grads = cls(sim.model, sim.layout)
        fresh = grads(sim.theta, x, y)
        out = torch.full_like(fresh, float("nan"))
        assert grads(sim.theta, x, y, out=out) is out
        assert torch.equal(out, fresh)
        rows = torch.tensor([2, 0])
        anchors = torch.randn(2, sim.layout.numel, generator=torch.Generator().manual_seed(0))
        part = grads(anchors, x[rows], y[rows], workers=rows, out=out[:2])
        assert torch.equal(part, cls(sim.model, sim.layout)(anchors, x[rows], y[rows], workers=rows))


def test_stale_gradients_for_all_or_some_workers_match_a_plain_recomputation(synth):
    """Drive sasg with a lazy rule that checks everybody or somebody, and recompute the stale
    gradients the simulator handed to the trigger from scratch."""
    sim = Simulator(small_config(window=2, threshold_scale=0.3), "sasg", synth)
    seen = []
    decide = sim.algorithm.trigger.decide

    def spy(rnd):
        stale_grads = rnd.stale_grads

        def checked(rows):
            got = stale_grads(rows)
            flat = got if isinstance(got, torch.Tensor) else torch.cat(got, dim=1)
            seen.append((rows.clone(), rnd.workers.anchor[rows].clone(), flat.clone()))
            return got

        rnd.stale_grads = checked
        return decide(rnd)

    sim.algorithm.trigger.decide = spy
    plain = VmapGradients(sim.model, sim.layout)
    for _ in range(25):
        n_before = len(seen)
        idx = sim.sampler.state_dict()  # replay the round's batch for the plain recomputation
        sim.step()
        if len(seen) > n_before:
            rows, anchors, got = seen[-1]
            sampler = type(sim.sampler)([s for s in sim.shards], sim.config.batch_size, sim.config.seed)
            sampler.load_state_dict(idx)
            batch = sampler.next()
            x, y = synth.train.x[batch][rows], synth.train.y[batch][rows]
            assert torch.equal(got, plain(anchors, x, y))
    sizes = {len(r) for r, _, _ in seen}
    assert sim.num_workers in sizes and any(s < sim.num_workers for s in sizes)


def test_retain_freed_memory_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("SASG_RETAIN_FREED_MEMORY", "0")
    assert allocator.retain_freed_memory() is False
    assert allocator._applied is None  # not applied, and a later call may still apply it


@pytest.mark.parametrize("model", ["fc", "logreg", "lenet5"])
def test_spelled_out_cross_entropy_has_the_same_gradient_bits(model):
    """The backends' loss (log_softmax + gather + mean) must give F.cross_entropy's gradient bit
    for bit, per worker under vmap and plainly."""
    from torch.func import functional_call, grad, vmap

    from sasg.core import Layout
    from sasg.models import build_model
    from sasg.sim.gradients import _loss_fn

    shape = (1, 28, 28) if model == "lenet5" else (20,)
    net = build_model(model, shape, 10, seed=0)
    layout = Layout.from_module(net)
    gen = torch.Generator().manual_seed(1)
    params = layout.views(torch.randn(3, layout.numel, generator=gen) * 0.1)
    x, y = torch.randn(3, 6, *shape, generator=gen), torch.randint(0, 10, (3, 6), generator=gen)

    def reference(p, b, xx, yy):
        return torch.nn.functional.cross_entropy(functional_call(net, (p, b), (xx,)), yy)

    got = vmap(grad(_loss_fn(net)), in_dims=(0, None, 0, 0))(params, {}, x, y)
    want = vmap(grad(reference), in_dims=(0, None, 0, 0))(params, {}, x, y)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    one = {n: t[0] for n, t in params.items()}
    a, b = grad(_loss_fn(net))(one, {}, x[0], y[0]), grad(reference)(one, {}, x[0], y[0])
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fresh_and_stale_from_one_call_equal_two_calls_bit_for_bit(synth, dtype, one_thread):
    """One call over [theta; anchor] gives what two calls give a rank (one intra-op thread, the
    anchor a tensor of its own): every worker's rows bit for bit, and again with the buffer reused."""
    sim = Simulator(small_config(), "sasg", synth)
    grads = VmapGradients(sim.model, sim.layout)
    idx = sim.sampler.next()
    x, y = synth.train.x[idx].to(dtype), synth.train.y[idx]
    theta = sim.theta.to(dtype)
    noise = torch.randn(x.shape[0], theta.numel(), generator=torch.Generator().manual_seed(2), dtype=dtype)
    for _ in range(2):
        for m in range(x.shape[0]):
            anchor = (theta + 0.05 * noise[m])[None].clone()  # a rank's own (1, d) anchor buffer
            fresh, stale = grads.fresh_and_stale(theta, anchor, x[m : m + 1], y[m : m + 1])
            two = grads.blocks(theta, x[m : m + 1], y[m : m + 1]) + grads.blocks(anchor, x[m : m + 1], y[m : m + 1])
            for got, want in zip(fresh + stale, two, strict=True):
                assert got.shape == want.shape and torch.equal(got, want)
    with pytest.raises(ValueError, match="one worker"):
        grads.fresh_and_stale(theta, noise[:2], x[:2], y[:2])


def test_one_held_worker_takes_both_gradients_in_one_call_and_keeps_its_trajectory(synth):
    """A one-worker engine (a rank) whose rule checks it this round computes the fresh and the
    stale gradient together; the rounds come out as with two calls (up to rounding)."""
    runs = [Simulator(small_config(workers=1, window=2, threshold_scale=0.3), "sasg", synth) for _ in range(2)]
    assert runs[0]._pair_gradients
    runs[1]._pair_gradients = False  # the two-call path, for reference
    calls = []
    pair = runs[0].gradients.fresh_and_stale
    runs[0].gradients.fresh_and_stale = lambda *a: calls.append(1) or pair(*a)
    for _ in range(20):
        for run in runs:
            run.step()
    torch.testing.assert_close(runs[0].theta, runs[1].theta)
    assert runs[0].ledger.uploads == runs[1].ledger.uploads and runs[0].ledger.bits_up == runs[1].ledger.bits_up
    assert 0 < len(calls) < 20  # not in the warm-up (forced uploads), in the checked rounds
    assert not Simulator(small_config(), "sasg", synth)._pair_gradients  # four workers: separate calls
    assert not Simulator(small_config(workers=1), "wk1+topk", synth)._pair_gradients  # no stale gradient
