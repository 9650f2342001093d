"""``powersgd``: one round is the paper's compress+aggregate (P summed over the uploaders and
orthonormalized, then Q), full rank is dense SGD, the bits are the bytes of both exchanges, the
warm start survives a checkpoint, and a real gloo run gives the simulator's numbers."""

from __future__ import annotations

import os

import pytest
import torch

from sasg import Simulator
from sasg.core import Algorithm, Layout, make_algorithm
from sasg.core.compressors.powersgd import WARM_START, PowerSGD, orthonormal, ranks_for
from sasg.core.memories import ErrorFeedback, NoMemory
from sasg.core.spec import build_codec
from sasg.core.triggers import Always
from sasg.engine import InProcessTransport, RoundEngine

from conftest import small_config
from test_distributed import spawn, synth

# A conv kernel (read as 4 x 12), a matrix, a bias, a (1, 7) "matrix" that is a vector.
LAYOUT = Layout([("conv", (4, 3, 2, 2)), ("w", (6, 5)), ("b", (6,)), ("row", (1, 7))])


def grads(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, LAYOUT.numel, generator=torch.Generator().manual_seed(seed))


def test_what_is_factored_and_at_which_rank():
    assert ranks_for(LAYOUT, 2) == [2, 2, 0, 0]
    assert ranks_for(LAYOUT, 100) == [4, 5, 0, 0]  # min(r, n, m)
    g = PowerSGD(LAYOUT).geometry
    assert (g.basis_width, g.coef_width) == (4 * 2 + 6 * 2, 12 * 2 + 5 * 2 + 6 + 7)
    with pytest.raises(ValueError, match="rank"):
        PowerSGD(LAYOUT, rank=0)


def test_one_round_is_the_papers_compress_aggregate_with_error_feedback():
    """Three workers upload: P_m = M_m orth(Q0), P^ = orth(sum P_m), Q_m = M_m^T P^, the step is
    P^ (sum Q_m)^T (vectors: the sum itself), e_m = v_m - P^ Q_m^T, the warm start is sum Q_m,
    and the ledger holds the bytes of both exchanges."""
    M, lr = 3, 0.3
    alg = make_algorithm("always+powersgd", LAYOUT)
    engine = RoundEngine(alg, InProcessTransport(M), seed=5)
    q0 = engine.server.buffers[WARM_START].clone()
    g = grads(M, 0)
    theta = torch.zeros(LAYOUT.numel)
    theta -= engine.step(theta, g, None, lr).step
    v = g * (lr / M)  # ef: e = 0 before the first round
    step = torch.zeros(LAYOUT.numel)
    warm, q_off = [], 0
    for seg, r in zip(LAYOUT.segments, ranks_for(LAYOUT, 2)):
        block = v[:, seg.offset : seg.end]
        if not r:
            step[seg.offset : seg.end] = block.sum(0)
            continue
        mats = block.reshape(M, seg.shape[0], -1)
        m = mats.shape[2]
        q = orthonormal(q0[q_off : q_off + m * r].view(m, r))
        q_off += m * r
        p_hat = orthonormal(sum(mats[i] @ q for i in range(M)))
        torch.testing.assert_close(p_hat.T @ p_hat, torch.eye(r), rtol=0, atol=1e-6)
        qs = [mats[i].T @ p_hat for i in range(M)]
        step[seg.offset : seg.end] = (p_hat @ sum(qs).T).reshape(-1)
        warm.append(sum(qs).reshape(-1))
        for i in range(M):  # the worker's own residual
            e = engine.workers.error[i, seg.offset : seg.end].view(seg.shape[0], m)
            torch.testing.assert_close(e, mats[i] - p_hat @ qs[i].T, rtol=0, atol=1e-6)
    torch.testing.assert_close(-theta, step, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(engine.server.buffers[WARM_START], torch.cat(warm), rtol=1e-5, atol=1e-7)
    # vectors are sent as they are: nothing left behind
    for name in ("b", "row"):
        seg = next(s for s in LAYOUT.segments if s.name == name)
        assert torch.equal(engine.workers.error[:, seg.offset : seg.end], torch.zeros(M, seg.numel))
    # paper32: 32 bits per value of P (first exchange) and of Q and the vectors (second)
    geo = alg.compressor.geometry
    assert engine.ledger.bits_up == [M * 32 * (geo.basis_width + geo.coef_width)]
    assert engine.ledger.uploads == [M]


def full_rank(memory):
    return lambda layout: Algorithm("powersgd-full", Always(), PowerSGD(layout, rank=512), memory,
                                    build_codec("paper32", layout))


def test_full_rank_equals_dense_sgd_within_float_tolerance():
    """r >= min(n, m) for every matrix: the aggregate P^ P^T sum_m M_m is sum_m M_m up to float
    rounding, so the parameters follow dense SGD's. Tolerance: 1e-6 absolute on parameters of
    magnitude <= 0.31 after 30 rounds (a few float32 ulps; measured ~6e-8). The fc model's first
    layer is 512 x 12 (r = 12 < n): each worker's own P^ P^T M_m is not M_m, so its memory is not
    0, but the memories sum to ~0 over the workers."""
    data, cfg = synth(), small_config()
    sgd = Simulator(cfg, "sgd", data)
    sgd.run(iterations=30)
    for memory in (ErrorFeedback(), NoMemory()):
        sim = Simulator(cfg, full_rank(memory), data)
        sim.run(iterations=30)
        torch.testing.assert_close(sim.theta, sgd.theta, rtol=0, atol=1e-6)
        if memory.name == "ef":
            assert float(sim.workers.error.abs().max()) > 1e-6
            assert float(sim.workers.error.sum(0).abs().max()) < 1e-7


def test_warm_start_and_every_new_state_survive_a_checkpoint_exactly():
    cfg = small_config(window=3, threshold_scale=0.5)
    sim = Simulator(cfg, "wk2+powersgd", synth())
    q0 = sim.server.buffers[WARM_START].clone()
    sim.check_state_dict(sim.state_dict())
    sim.run(iterations=7)
    assert 0 < sum(sim.ledger.uploads) < 7 * cfg.workers  # some skipped: their last messages stand
    assert not torch.equal(sim.server.buffers[WARM_START], q0)
    state = sim.state_dict()
    sim.check_state_dict(state)
    assert state["engine"]["server"]["last"]["kind"] == "lowrank"
    assert set(state["engine"]["server"]["buffers"]) == {WARM_START}
    fresh = Simulator(cfg, "wk2+powersgd", synth())
    fresh.load_state_dict(state)
    for _ in range(5):
        assert torch.equal(fresh.step(), sim.step())
        assert torch.equal(fresh.theta, sim.theta)
    assert torch.equal(fresh.server.buffers[WARM_START], sim.server.buffers[WARM_START])
    bad = {**state["engine"]["server"], "buffers": {}}
    with pytest.raises(ValueError, match="powersgd_q"):
        fresh.engine.server.check_state_dict(bad)


CODECS = ("paper32", "bf16", "rice+int8")


@pytest.mark.parametrize("algo", ["always+powersgd", "wk1+powersgd+none", "ps+powersgd", "clag+powersgd"])
def test_every_trigger_and_memory_and_codec_prices_both_exchanges(algo):
    for codec in CODECS:
        sim = Simulator(small_config(codec=codec, eval_every=10, window=2, threshold_scale=0.05), algo, synth())
        res = sim.run(iterations=10)
        uploads = sum(res.ledger.uploads)
        assert bool(torch.isfinite(res.theta).all()) and 0 < uploads <= 40
        geo, alg = sim.algorithm.compressor.geometry, sim.algorithm
        per = sum(geo.codec(alg.codec, part).encode_dense(torch.zeros(1, width))[1][0]
                  for part, width in (("basis", geo.basis_width), ("coef", geo.coef_width)))
        assert sum(res.ledger.bits_up) == uploads * 8 * per
        if codec == "paper32":
            assert per == 4 * (geo.basis_width + geo.coef_width)
        elif codec == "bf16":
            assert per == 2 * (geo.basis_width + geo.coef_width)


def test_the_optimizer_takes_it():
    from sasg.optim import SASG

    model = torch.nn.utils.skip_init(torch.nn.Linear, 6, 3)
    with torch.no_grad():
        model.weight.copy_(torch.arange(18.0).view(3, 6) / 18)
        model.bias.zero_()
    opt = SASG(model.parameters(), lr=0.1, algorithm="always+powersgd", seed=1)
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = model.weight.detach().clone()

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
        opt.zero_grad()
    assert opt.ledger.totals()["uploads"] == 3 and not torch.equal(model.weight, before)


# ----- simulator == torch.distributed ------------------------------------------------------------


def _rank(rank, world, folder, algos, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    for algo in algos:
        run = DistributedRun(small_config(workers=world, window=2, threshold_scale=0.5), algo, synth(),
                             TorchTransport())
        result = run.run(iterations=rounds)
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(),
                    "server": run.server.state_dict(), "workers": run.workers.state_dict()},
                   os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_distributed_run_equals_the_simulator(tmp_path, one_thread):
    """Both exchanges over gloo: the same parameters, server store, warm start, memories and bits."""
    world, rounds, algos = 3, 12, ("always+powersgd", "wk2+powersgd")
    spawn(_rank, world, str(tmp_path), algos, rounds)
    for algo in algos:
        sim = Simulator(small_config(workers=world, window=2, threshold_scale=0.5), algo, synth())
        ref = sim.run(iterations=rounds)
        if algo.startswith("wk2"):
            assert sum(ref.ledger.uploads) < world * rounds  # skips happened
        server = sim.server.state_dict()
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            assert torch.equal(out["theta"], ref.theta), (algo, r)
            for key in ("bases", "coefficients"):
                assert torch.equal(out["server"]["last"][key], server["last"][key]), (algo, key)
            assert torch.equal(out["server"]["buffers"][WARM_START], server["buffers"][WARM_START])
            assert torch.equal(out["workers"]["buffers"]["error"][0], sim.workers.error[r])
            for key in ("uploads", "bits_up", "bits_down"):
                assert out["ledger"][key] == ref.ledger.state_dict()[key], (algo, key)
            # a lazy trigger's flags travel once per exchange: 2 x M bits a round (fixed sizes)
            assert out["ledger"]["bits_flags"] == [2 * world if algo.startswith("wk2") else 0] * rounds
