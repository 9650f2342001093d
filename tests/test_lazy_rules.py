"""The lazy rules without a second gradient, ``wk1`` (LASG-WK1) and ``ps`` (LASG-PS), noise-aware,
and their plain forms ``wk1-plain`` and ``ps-plain``: they never ask for the stale gradient, skip
within the staleness bound, the plain ones reduce to ``always`` when the threshold vanishes, and
all give the same numbers in every runner (the noise allowance itself: test_noise_aware_rules)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasg import Simulator
from sasg.cli.main import main
from sasg.core import Layout, make_algorithm
from sasg.engine import InProcessTransport, RoundEngine
from sasg.optim import SASG

from conftest import small_config
from test_distributed import spawn, synth

RULES = ("wk1", "ps", "wk1-plain", "ps-plain")
PLAIN = ("wk1-plain", "ps-plain")
ROUNDS = 50
D = 3
# A threshold scale at which all the rules skip on the fixture data (ps's estimate of L_m is large
# there: it needs a small c to skip at all).
LAZY = dict(window=D, threshold_scale=0.02)


def count_stale_calls(sim: Simulator) -> list[int]:
    """Wrap the stale-gradient function the simulator hands the engine; returns the list that
    records the number of rows of every call."""
    calls: list[int] = []
    step = sim.engine.step

    def counted(theta, grads, stale, lr, *args):
        def wrapped(rows):
            calls.append(int(rows.numel()))
            return stale(rows)

        return step(theta, grads, wrapped, lr, *args)

    sim.engine.step = counted
    return calls


def run(algo: str, rounds: int = ROUNDS, **kw):
    sim = Simulator(small_config(**{**LAZY, **kw}), algo, synth())
    calls = count_stale_calls(sim)
    flags, staleness = [], []
    for _ in range(rounds):
        flags.append(sim.step().clone())
        staleness.append(sim.workers.staleness.clone())
    return sim, torch.stack(flags), torch.stack(staleness), calls


@pytest.fixture(scope="module")
def runs():
    return {trigger: run(f"{trigger}+topk") for trigger in ("wk2", *RULES)}


def test_no_second_gradient_is_ever_computed(runs):
    *_, calls = runs["wk2"]
    assert len(calls) > 0 and sum(calls) > 0  # the same setting makes wk2 pay for it
    for rule in RULES:
        assert runs[rule][3] == [], rule


@pytest.mark.parametrize("rule", RULES)
def test_skips_within_the_staleness_bound(runs, rule):
    sim, flags, staleness, _ = runs[rule]
    M = sim.num_workers
    assert flags[:D].all()  # warm-up: k < D
    assert int(flags.sum()) < ROUNDS * M  # it skipped
    assert int(flags.sum()) == sum(sim.ledger.uploads)
    assert int(staleness.max()) <= D + 1  # tau never exceeds D + 1 ...
    for m in range(M):  # ... so at most D skips in a row, then a forced upload
        run_length = 0
        for sent in flags[:, m].tolist():
            run_length = 0 if sent else run_length + 1
            assert run_length <= D
    # a skipper's last message keeps being applied
    assert sim.server.last.values.abs().sum() > 0


@pytest.mark.parametrize("rule", RULES)
def test_at_most_d_skips_when_nothing_changes(rule):
    """Gradient and parameters never change: the rule never fires, only the bound does (as wk2)."""
    layout = Layout([("w", (4,))])
    engine = RoundEngine(make_algorithm(f"{rule}+identity", layout, window=D, c=1.0), InProcessTransport(2))

    def stale(rows):
        raise AssertionError("the stale gradient was asked for")

    theta = torch.zeros(4)
    pattern = []
    for _ in range(12):
        result = engine.step(theta, torch.zeros(2, 4), stale, 0.1)
        theta -= result.step
        pattern.append(int(result.flags[0]))
    assert pattern == [1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]


def test_ps_secant_estimate_on_a_quadratic():
    """On f(x) = a/2 ||x||^2 (no noise) ps-plain's secant between uploads is exactly a."""
    a = 3.0
    layout = Layout([("w", (5,))])
    engine = RoundEngine(make_algorithm("ps-plain+identity", layout, window=2, c=1.0), InProcessTransport(1))
    theta = torch.arange(1.0, 6.0)
    theta -= engine.step(theta, (a * theta).reshape(1, -1), None, 0.1).step
    assert float(engine.workers.buffer("lipschitz")[0, 0]) == 0  # round 0: no earlier upload yet
    for _ in range(6):
        theta -= engine.step(theta, (a * theta).reshape(1, -1), None, 0.1).step
        assert float(engine.workers.buffer("lipschitz")[0, 0]) == pytest.approx(a, rel=1e-5)
    assert engine.workers.buffer("lipschitz").shape == (1, 1)  # one number per worker


@pytest.mark.parametrize("rule", PLAIN)
def test_huge_threshold_scale_is_always(rule):
    """c = 1e30: the threshold is ~0, every worker uploads every round: exactly always+topk (the
    noise-aware rules still skip the rounds whose change is within the noise)."""
    cfg = small_config(threshold_scale=1e30, window=2)
    a, b = Simulator(cfg, f"{rule}+topk", synth()), Simulator(cfg, "always+topk", synth())
    for _ in range(25):
        a.step()
        b.step()
    assert sum(a.ledger.uploads) == 25 * cfg.workers
    assert torch.equal(a.theta, b.theta)
    assert torch.equal(a.workers.error, b.workers.error)


@pytest.mark.parametrize("rule", RULES)
def test_same_seed_same_run(runs, rule):
    sim, flags, _, _ = runs[rule]
    again, flags2, _, _ = run(f"{rule}+topk")
    assert torch.equal(flags, flags2)
    assert torch.equal(sim.theta, again.theta)
    assert torch.equal(sim.workers.buffer("last_grad"), again.workers.buffer("last_grad"))


def test_ps_resumes_from_its_state():
    """ps-plain's per-worker estimate L_m is worker state: saved and restored with the rest (ps's
    own buffers: test_noise_aware_rules)."""
    straight, flags, *_ = run("ps-plain+topk", rounds=30)
    first = Simulator(small_config(**LAZY), "ps-plain+topk", synth())
    for _ in range(18):
        first.step()
    second = Simulator(small_config(**LAZY), "ps-plain+topk", synth())
    second.load_state_dict(first.state_dict())
    for _ in range(12):
        second.step()
    assert torch.equal(second.theta, straight.theta)
    assert torch.equal(second.workers.buffer("lipschitz"), straight.workers.buffer("lipschitz"))


@pytest.mark.parametrize("rule", RULES)
def test_optimizer_evaluates_the_closure_once_per_step(rule):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = SASG(model.parameters(), lr=0.1, window=2, c=0.01, algorithm=f"{rule}+topk", density=0.3)
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(12):
        opt.step(closure)
    assert evaluations == 12


# ----- simulator == distributed runner (real gloo processes) ----------------------------------------------

DIST_ROUNDS = 24


def _run_ranks(rank, world, folder, algos, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    for algo in algos:
        run = DistributedRun(small_config(workers=world, **LAZY), algo, synth(), TorchTransport())
        result = run.run(iterations=rounds)
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(), "workers": run.workers.state_dict()},
                   os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_runner_follows_the_simulator(tmp_path, one_thread):
    world, algos = 3, ("wk1+topk", "ps+topk")
    spawn(_run_ranks, world, str(tmp_path), algos, DIST_ROUNDS)
    for algo in algos:
        sim = Simulator(small_config(workers=world, **LAZY), algo, synth())
        ref = sim.run(iterations=DIST_ROUNDS)
        assert sum(ref.ledger.uploads) < DIST_ROUNDS * world, algo  # it skipped
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            torch.testing.assert_close(out["theta"], ref.theta)
            assert out["ledger"]["uploads"] == ref.ledger.uploads, algo
            assert out["ledger"]["bits_up"] == ref.ledger.bits_up, algo
            torch.testing.assert_close(out["workers"]["staleness"], sim.workers.staleness[r : r + 1])
            for name, buf in out["workers"]["buffers"].items():  # last_grad, error, anchor, noise, ...
                torch.testing.assert_close(buf, sim.workers.buffer(name)[r : r + 1], msg=f"{algo} {name}")


def test_compare_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert main(["compare", "--algos", "wk1+topk,ps+topk", "--dataset", "synthetic", "--iterations", "30",
                 "--workers", "2", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    records = json.loads((out / "summary.json").read_text())["records"]
    assert [r["algorithm"] for r in records] == ["wk1+topk", "ps+topk"]
    assert all(r["iterations"] == 30 and r["uploads"] + r["skipped"] == 60 for r in records)
