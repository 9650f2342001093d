"""``ef21`` (the memory) and ``clag`` (the lazy rule paired with it): EF21 with the identity is SGD,
the worker's and the server's estimates stay equal bit for bit, a skipper's stays, CLAG decides by
its inequality without a second gradient, and a real gloo run gives the simulator's numbers."""

from __future__ import annotations

import os

import pytest
import torch

from sasg import Simulator
from sasg.core import Layout, WorkerState, make_algorithm
from sasg.core.memories.ef21 import ESTIMATE
from sasg.engine import InProcessTransport, RoundEngine

from conftest import small_config
from test_distributed import spawn, synth

LAYOUT = Layout([("w", (6, 5)), ("b", (6,))])
LAZY = dict(window=3, threshold_scale=0.5)


def run(algo, rounds, **kw):
    sim = Simulator(small_config(**kw), algo, synth())
    flags = [sim.step().clone() for _ in range(rounds)]
    return sim, torch.stack(flags)


def test_always_identity_ef21_equals_sgd():
    """Round 0 bit for bit (h = 0, so h + (s g - h) = s g exactly); after that each h_m is s g_m
    within one float32 rounding of s g - h and one of h + (s g - h), and the parameters stay
    within 1e-6 of sgd's (|theta| <= 0.31; measured: ~3e-8) after 30 rounds. Same uploads, same
    bits (dense messages of 32 d bits)."""
    data, cfg = synth(), small_config()
    sgd, ef21 = Simulator(cfg, "sgd", data), Simulator(cfg, "always+identity+ef21", data)
    sgd.step(), ef21.step()
    assert torch.equal(ef21.theta, sgd.theta)
    a, b = sgd.run(iterations=30), ef21.run(iterations=30)
    torch.testing.assert_close(b.theta, a.theta, rtol=0, atol=1e-6)
    assert b.ledger.uploads == a.ledger.uploads and b.ledger.bits_up == a.ledger.bits_up


def test_the_memory_sends_the_compressed_change_and_adds_what_was_decoded():
    """c = C(s g - h), h += decoded(c): with top-k exactly the kept entries of s g - h move h; a
    lossy codec (int8) adds the decoded values, which the next difference corrects."""
    g = torch.randn(3, LAYOUT.numel, generator=torch.Generator().manual_seed(1))
    for codec in ("paper32", "int8"):
        alg = make_algorithm("always+topk+ef21", LAYOUT, density=0.2, codec=codec)
        workers = WorkerState.create(3, LAYOUT.numel, alg.worker_buffers, None, torch.float32)
        h0 = torch.randn(3, LAYOUT.numel, generator=torch.Generator().manual_seed(2))
        workers.buffer(ESTIMATE).copy_(h0)
        sent = alg.memory.upload(workers, [0, 2], LAYOUT.as_columns(g), 0.5, alg.compressor, None, alg.codec)
        v = 0.5 * g[[0, 2]] - h0[[0, 2]]
        q = alg.compressor.compress(v)
        assert torch.equal(sent.payload.indices, q.indices)
        if codec == "paper32":
            assert torch.equal(sent.payload.values, q.values)
        h = workers.buffer(ESTIMATE)
        assert torch.equal(h[[0, 2]], h0[[0, 2]] + sent.payload.to_dense())
        assert torch.equal(h[1], h0[1])  # not an uploader: untouched


@pytest.mark.parametrize("algo", ["wk2+topk+ef21", "clag+topk"])
def test_worker_and_server_estimates_stay_equal_and_a_skippers_stays(algo):
    cfg = small_config(**{**LAZY, "threshold_scale": 0.5 if algo.startswith("wk2") else 0.2})
    sim = Simulator(cfg, algo, synth())
    assert sim.algorithm.memory.name == "ef21"
    skipped = 0
    for _ in range(16):
        before = sim.workers.buffer(ESTIMATE).clone()
        theta = sim.theta.clone()
        flags = sim.step()
        h = sim.workers.buffer(ESTIMATE)
        assert torch.equal(h, sim.server.last.values)  # the server's copy, bit for bit
        assert torch.equal(h[~flags], before[~flags])  # a skipper sends nothing, its h_m stays
        assert bool((h[flags] != before[flags]).any(dim=1).all())  # an uploader's moved
        # step = sum_m h_m (up to the rounding of theta - step)
        torch.testing.assert_close(theta - sim.theta, h.sum(0), rtol=0, atol=1e-7)
        skipped += int((~flags).sum())
    assert skipped > 0


def count_stale_calls(sim):
    calls, step = [], sim.engine.step

    def counted(theta, grads, stale, lr, *args, **kw):
        def wrapped(rows):
            calls.append(int(rows.numel()))
            return stale(rows)

        return step(theta, grads, wrapped, lr, *args, **kw)

    sim.engine.step = counted
    return calls


def test_clag_never_asks_for_a_second_gradient_and_skips():
    sim = Simulator(small_config(**{**LAZY, "threshold_scale": 0.2}), "clag+topk", synth())
    calls = count_stale_calls(sim)
    res = sim.run(iterations=30)
    assert calls == []
    assert 4 < sum(res.ledger.uploads) < 30 * 4
    assert res.ledger.uploads[0] == 4  # round 0: everyone (no previous gradient)


def test_clag_decides_by_its_inequality():
    """Upload iff ||s g - h||^2 > (1/c) ||s g - s g_prev||^2, recomputed by hand every round on
    gradients that drift slowly (so that both answers occur)."""
    M, lr, c = 4, 0.4, 0.05
    alg = make_algorithm("clag+topk", LAYOUT, density=0.2, c=c)
    engine = RoundEngine(alg, InProcessTransport(M), seed=0)
    theta = torch.zeros(LAYOUT.numel)
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(M, LAYOUT.numel, generator=gen)
    seen, s = set(), lr / M
    for k in range(25):
        g = base + 0.02 * k * torch.randn(M, LAYOUT.numel, generator=gen)
        h = engine.workers.buffer(ESTIMATE).double().clone()
        prev = engine.workers.buffer("prev_grad").double().clone()
        gap = ((s * g.double() - h) ** 2).sum(1)
        change = ((s * g.double() - s * prev) ** 2).sum(1)
        expected = gap > change / c if k else torch.ones(M, dtype=torch.bool)
        result = engine.step(theta, g, None, lr)
        theta -= result.step
        flags = result.flags
        # the engine sums in float32: compare where the two sides are not within rounding
        clear = (gap - change / c).abs() > 1e-5 * (gap + change / c) if k else expected
        assert torch.equal(flags[clear], expected[clear]), k
        assert torch.equal(engine.workers.buffer("prev_grad"), g)
        seen.update(flags.tolist())
    assert seen == {True, False}


def test_clag_with_a_vanishing_zeta_is_always_upload():
    """c -> inf is zeta -> 0: everyone uploads and clag+topk is always+topk+ef21, bit for bit."""
    a, fa = run("clag+topk", 20, threshold_scale=1e30)
    b, fb = run("always+topk+ef21", 20)
    assert bool(fa.all()) and torch.equal(a.theta, b.theta)
    assert torch.equal(a.workers.buffer(ESTIMATE), b.workers.buffer(ESTIMATE))


def test_clag_needs_the_ef21_memory():
    assert make_algorithm("clag+topk", LAYOUT).memory.name == "ef21"  # its default, over topk's ef
    assert make_algorithm("clag+identity", LAYOUT).memory.name == "ef21"
    for memory in ("ef", "none"):
        with pytest.raises(ValueError, match=r"clag\+topk\+ef21"):
            make_algorithm(f"clag+topk+{memory}", LAYOUT)


@pytest.mark.parametrize("algo", ["always+identity+ef21", "wk2+topk+ef21", "clag+topk", "clag+powersgd"])
def test_new_state_is_saved_and_restored_exactly(algo):
    cfg = small_config(**LAZY)
    sim = Simulator(cfg, algo, synth())
    sim.check_state_dict(sim.state_dict())
    sim.run(iterations=6)
    state = sim.state_dict()
    sim.check_state_dict(state)
    fresh = Simulator(cfg, algo, synth())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.server.last.values, sim.server.last.values)  # the server's estimates
    for _ in range(4):
        assert torch.equal(fresh.step(), sim.step())
        assert torch.equal(fresh.theta, sim.theta)
    for name, buf in sim.workers.buffers.items():
        assert torch.equal(fresh.workers.buffer(name), buf), name


# ----- simulator == torch.distributed ------------------------------------------------------------
ALGOS = ("wk2+topk+ef21", "clag+topk")


def _rank(rank, world, folder, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    for algo in ALGOS:
        run = DistributedRun(small_config(workers=world, **LAZY), algo, synth(), TorchTransport())
        result = run.run(iterations=rounds)
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(), "server": run.server.last.values,
                    "workers": run.workers.state_dict()["buffers"]}, os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_distributed_run_equals_the_simulator(tmp_path, one_thread):
    world, rounds = 3, 16
    spawn(_rank, world, str(tmp_path), rounds)
    for algo in ALGOS:
        sim = Simulator(small_config(workers=world, **LAZY), algo, synth())
        ref = sim.run(iterations=rounds)
        assert sum(ref.ledger.uploads) < world * rounds, algo  # skips happened
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            assert torch.equal(out["theta"], ref.theta), (algo, r)
            assert torch.equal(out["server"], sim.server.last.values), (algo, r)
            for name, buf in out["workers"].items():
                assert torch.equal(buf[0], sim.workers.buffer(name)[r]), (algo, name)
            for key in ("uploads", "bits_up", "bits_down"):
                assert out["ledger"][key] == ref.ledger.state_dict()[key], (algo, key)
