"""The noise-aware lazy rules ``wk1`` and ``ps`` against their plain forms ``wk1-plain`` and
``ps-plain``: they skip where two minibatches' noise keeps the plain rules uploading, their
allowance and estimates follow the formulas of :mod:`sasg.core.triggers.noise` and
:mod:`sasg.core.triggers.ps`, and their new worker buffers are saved, restored and checked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sasg import Simulator
from sasg.core import Layout, make_algorithm
from sasg.core.round_state import WorkerState
from sasg.core.triggers import WK1, WK1Plain
from sasg.core.triggers.noise import NOISE_DECAY
from sasg.core.triggers.ps import curvature_sq, fold_secants
from sasg.core.workspace import Workspace
from sasg.engine import InProcessTransport, RoundEngine

from conftest import small_config
from test_distributed import synth

M, D, LR = 4, 5, 0.1


def noisy_quadratic(algo: str, rounds: int = 80, d: int = 200, sigma: float = 1.0, a: float = 0.05):
    """f(x) = a ||x||^2 / 2 + 0.3 sum(x), far from its minimum (a slowly turning gradient), on M
    workers whose gradients carry N(0, sigma^2 I) noise, at the default c = 2: the steps (and
    thr_k) are far below the 2 d sigma^2 that two minibatches differ by."""
    layout = Layout([("w", (d,))])
    engine = RoundEngine(make_algorithm(algo, layout, window=D, c=2.0), InProcessTransport(M))
    gen = torch.Generator().manual_seed(0)
    theta = torch.ones(d)
    flags = []
    for _ in range(rounds):
        grads = (a * theta + 0.3).expand(M, d) + sigma * torch.randn(M, d, generator=gen)
        result = engine.step(theta, grads, None, LR)
        theta -= result.step
        flags.append(result.flags.clone())
    return engine, torch.stack(flags)


@pytest.mark.parametrize("rule,skipped", [("wk1", 0.4), ("ps", 0.25)])
def test_skips_on_a_noisy_problem_where_the_plain_rule_never_does(rule, skipped):
    _, plain = noisy_quadratic(f"{rule}-plain+identity")
    engine, aware = noisy_quadratic(f"{rule}+identity")
    assert plain[D:].all()  # the plain rule: never a skip after the warm-up
    checked = aware[D:]
    assert aware[:D].all() and (~checked).float().mean() > skipped  # the noise-aware one skips
    for m in range(M):  # within the staleness bound
        run = 0
        for sent in aware[:, m].tolist():
            run = 0 if sent else run + 1
            assert run <= D


def test_the_noise_estimate_finds_the_minibatch_variance():
    """E ||g_k - g_{k-1}||^2 / 2 = d sigma^2 (plus half a step's drift): the estimate is within 15 %."""
    engine, _ = noisy_quadratic("wk1+identity", d=200, sigma=1.0)
    noise = engine.workers.buffer("noise")[:, 0]
    assert noise.shape == (M,)
    assert torch.all((noise - 200).abs() < 0.15 * 200), noise


def test_noise_estimate_is_the_running_average_of_half_the_consecutive_change():
    layout = Layout([("w", (3,))])
    engine = RoundEngine(make_algorithm("wk1+identity", layout, window=2, c=1.0), InProcessTransport(2))
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(2, 3, generator=gen, dtype=torch.float64).float() for _ in range(4)]
    theta = torch.zeros(3)
    expected = torch.zeros(2, dtype=torch.float64)
    for k, g in enumerate(grads):
        theta -= engine.step(theta, g, None, 0.1).step
        if k >= 1:
            half = 0.5 * (g.double() - grads[k - 1].double()).square().sum(1)
            expected = half if k == 1 else NOISE_DECAY * expected + (1 - NOISE_DECAY) * half
        torch.testing.assert_close(engine.workers.buffer("noise")[:, 0].double(), expected, rtol=1e-5, atol=0)
        assert torch.equal(engine.workers.buffer("prev_grad"), g)  # every worker's, every round


def _round(trigger, grads, last, noise, step_sq, lr=0.1, iteration=10):
    """A round in which every worker is checked (past the warm-up, staleness 1)."""
    n, d = grads.shape
    workers = WorkerState.create(n, d, trigger.worker_buffers)
    workers.buffer("last_grad").copy_(last)
    if "noise" in workers.buffers:
        workers.buffer("noise")[:, 0] = noise
    return SimpleNamespace(iteration=iteration, lr=lr, threshold_lr=lr, num_workers=n, workers=workers,
                           grads=[grads], layout=Layout([("w", (d,))]), workspace=Workspace(),
                           server=SimpleNamespace(step_sq=step_sq), theta=torch.zeros(d))


def test_wk1_uploads_when_the_difference_beyond_twice_the_noise_exceeds_thr():
    step_sq = torch.tensor([0.5, 0.3], dtype=torch.float64)  # D = 3: the last D - 1 = 2 steps
    c, lr, n = 2.0, 0.1, 2
    thr = float(step_sq.sum()) / (c * n * lr)  # 2.0
    noise = torch.tensor([10.0, 10.0])
    # ||g - last||^2 = 22.5 and 21.5: 2.5 and 1.5 beyond 2 * 10
    grads = torch.tensor([[22.5 ** 0.5, 0.0], [21.5 ** 0.5, 0.0]])
    last = torch.zeros(2, 2)
    aware = WK1(3, c)
    upload = aware.decide(_round(aware, grads, last, noise, step_sq, lr))
    assert upload.tolist() == [True, False]
    assert aware.threshold(_round(aware, grads, last, noise, step_sq, lr)) == pytest.approx(thr)
    plain = WK1Plain(3, c)  # no allowance: both differences are far above thr
    assert plain.decide(_round(plain, grads, last, noise, step_sq, lr)).tolist() == [True, True]


def test_ps_curvature_is_the_least_squares_slope_of_the_debiased_change_on_the_drift():
    secant = torch.zeros(3, 2, dtype=torch.float64)
    assert curvature_sq(secant).tolist() == [0.0, 0.0, 0.0]  # no pair yet: L = 0
    pairs = [(4.0, 2.0), (-1.0, 0.5), (9.0, 3.0), (5.0, 0.0)]  # (a, b); b = 0 says nothing
    ab = bb = None
    for a, b in pairs:
        fold_secants(secant, torch.tensor([0]), torch.tensor([a]), torch.tensor([b]))
        if b > 0:
            ab = a * b if ab is None else NOISE_DECAY * ab + (1 - NOISE_DECAY) * a * b
            bb = b * b if bb is None else NOISE_DECAY * bb + (1 - NOISE_DECAY) * b * b
    assert curvature_sq(secant)[0] == pytest.approx(max(ab, 0) / bb)
    fold_secants(secant, torch.tensor([1]), torch.tensor([-3.0]), torch.tensor([1.0]))
    assert curvature_sq(secant)[1] == 0  # a negative slope estimate: no curvature, L = 0
    assert secant[2].tolist() == [0.0, 0.0]  # rows that did not upload keep theirs


def test_ps_estimate_on_a_noise_free_quadratic():
    """f(x) = a/2 ||x||^2 without noise, a threshold that lets every worker skip up to the bound:
    the drift since the anchor grows by one step a round (the server reapplies the last message),
    so a pair tau steps apart has b = tau^2 s^2 and, the noise estimate being half a step's change,
    a = a^2 (tau^2 - 1) s^2. The slope over tau = 1..D+1, weighted by b^2, is a^2 within 2 %."""
    a, window = 3.0, 8
    layout = Layout([("w", (5,))])
    engine = RoundEngine(make_algorithm("ps+identity", layout, window=window, c=1e-9), InProcessTransport(1))
    theta = torch.arange(1.0, 6.0)
    flags = []
    for _ in range(window + 3 * (window + 1)):
        result = engine.step(theta, (a * theta).reshape(1, -1), None, 0.001)
        theta -= result.step
        flags.append(bool(result.flags[0]))
    assert flags[window:] == ([False] * window + [True]) * 3  # skips to the bound, then a forced upload
    assert float(curvature_sq(engine.workers.buffer("secant"))[0]) == pytest.approx(a * a, rel=0.03)


# ----- state: saved, restored, checked -----------------------------------------------------------

LAZY = dict(window=3, threshold_scale=0.02)
BUFFERS = {"wk1": ("last_grad", "prev_grad", "noise"), "ps": ("anchor", "last_grad", "prev_grad", "noise", "secant")}


@pytest.mark.parametrize("rule", ["wk1", "ps"])
def test_resume_gives_the_uninterrupted_run(rule):
    algo = f"{rule}+topk"
    straight = Simulator(small_config(**LAZY), algo, synth())
    for _ in range(30):
        straight.step()
    first = Simulator(small_config(**LAZY), algo, synth())
    for _ in range(18):
        first.step()
    second = Simulator(small_config(**LAZY), algo, synth())
    second.load_state_dict(first.state_dict())
    for _ in range(12):
        second.step()
    assert torch.equal(second.theta, straight.theta)
    assert second.ledger.uploads == straight.ledger.uploads
    assert sum(straight.ledger.uploads) < 30 * straight.num_workers  # it skipped
    for name in BUFFERS[rule]:
        assert torch.equal(second.workers.buffer(name), straight.workers.buffer(name)), name
    assert float(straight.workers.buffer("noise").abs().sum()) > 0


@pytest.mark.parametrize("rule", ["wk1", "ps"])
def test_a_state_without_the_noise_buffers_is_refused(rule):
    """A checkpoint of the rule as it was before the allowance (the plain rule's buffers under the
    same algorithm name) does not load silently: the missing buffer is named, nothing changes."""
    plain = Simulator(small_config(**LAZY), f"{rule}-plain+topk", synth())
    plain.step()
    state = _renamed(plain.state_dict(), f"{rule}-plain", rule)
    aware = Simulator(small_config(**LAZY), f"{rule}+topk", synth())
    before = aware.theta.clone()
    with pytest.raises(ValueError, match="noise|prev_grad|secant"):
        aware.load_state_dict(state)
    assert torch.equal(aware.theta, before)
    with pytest.raises(ValueError, match="checkpoint is for"):  # and under its own name, by name
        aware.load_state_dict(plain.state_dict())


def _renamed(state, old: str, new: str):
    """``state`` with every string naming ``old`` renamed to ``new``."""
    if isinstance(state, dict):
        return {k: _renamed(v, old, new) for k, v in state.items()}
    if isinstance(state, list):
        return [_renamed(v, old, new) for v in state]
    if isinstance(state, str):
        return state.replace(f"{old}+", f"{new}+").replace(f"'{old}'", f"'{new}'") if state.startswith(old) or old in state else state
    return state


def test_a_secant_of_the_wrong_width_is_refused():
    sim = Simulator(small_config(**LAZY), "ps+topk", synth())
    sim.step()
    state = sim.state_dict()
    workers = _find(state, "secant")
    workers["secant"] = workers["secant"][:, :1].clone()
    with pytest.raises(ValueError, match="secant"):
        Simulator(small_config(**LAZY), "ps+topk", synth()).load_state_dict(state)


def _find(state, name):
    """The dict in a nested state that holds ``name``."""
    if isinstance(state, dict):
        if name in state:
            return state
        for v in state.values():
            found = _find(v, name)
            if found is not None:
                return found
    return None
