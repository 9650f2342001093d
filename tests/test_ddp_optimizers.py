"""The hook with the user's optimizer (sasg.ddp.optimizers), against hand-written references.

A 2-rank gloo job trains a small linear model for a few steps with the hook under

* momentum SGD with weight decay: DGC's momentum correction and factor masking, the 1-D bias
  sent whole (no masking there), 2 dense warm-up rounds;
* AdamW: the ranks' local second moments averaged at rounds 2 and 4 (bf16 on the wire) and
  frozen, each step on a compressed round redone with the frozen estimate;

and each test recomputes the same steps by hand from the same minibatches (both ranks' gradients
at the reference parameters, top-k per tensor, error feedback) and compares the parameters.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_distributed import spawn

WORLD, STEPS, WARMUP, DENSITY = 2, 7, 2, 0.25
FEATURES, CLASSES, BATCH = 6, 5, 8
MOMENTUM, WD, LR_SGD, LR_ADAM = 0.9, 0.05, 0.1, 0.02


def _model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # nn.Linear's own initialisation would draw from the global RNG
        model = nn.Linear(FEATURES, CLASSES)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        model.weight.copy_(torch.randn(CLASSES, FEATURES, generator=g) * 0.3)
        model.bias.copy_(torch.randn(CLASSES, generator=g) * 0.1)
    return model


def _batch(step: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(BATCH, FEATURES, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)


def _optimizer(kind: str, params):
    if kind == "momentum":
        return torch.optim.SGD(params, lr=LR_SGD, momentum=MOMENTUM, weight_decay=WD)
    return torch.optim.AdamW(params, lr=LR_ADAM, weight_decay=WD)


def _job(rank, world, folder):
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    out = {}
    for kind in ("momentum", "adamw"):
        model = _model()
        ddp = DistributedDataParallel(model)
        opt = _optimizer(kind, ddp.parameters())
        state = sasg.ddp.register(ddp, optimizer=opt, codec="paper32", density=DENSITY, warmup=WARMUP,
                                  tensor_policy="vectors")
        for step in range(STEPS):
            x, y = _batch(step, rank)
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
        out[kind] = {"weight": model.weight.detach().clone(), "bias": model.bias.detach().clone(),
                     "momentum": state.momentum is not None, "variance": state.variance is not None,
                     "bits_by_rank": state.bits_by_rank, "ledger_bits": state.ledger.totals()["bits_up"]}
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_optimizers")
    spawn(_job, WORLD, str(folder), timeout=120.0)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _grads(theta: dict, step: int) -> list[dict]:
    """Every rank's own gradient at ``theta`` on its minibatch of ``step``."""
    out = []
    for rank in range(WORLD):
        w, b = theta["weight"].clone().requires_grad_(), theta["bias"].clone().requires_grad_()
        x, y = _batch(step, rank)
        F.cross_entropy(x @ w.t() + b, y).backward()
        out.append({"weight": w.grad, "bias": b.grad})
    return out


def _topk(v: torch.Tensor) -> torch.Tensor:
    """Top-k of one tensor at DENSITY (k = max(1, floor(h n))), as a dense tensor with the rest 0."""
    flat = v.reshape(-1)
    k = max(1, int(DENSITY * flat.numel()))
    keep = torch.zeros_like(flat)
    idx = flat.abs().topk(k).indices
    keep[idx] = flat[idx]
    return keep.view_as(v)


def _aggregate(msgs: list[dict], step: int, errors: list[dict]) -> tuple[dict, list[dict]]:
    """One round of the hook's engine on ``msgs`` (each rank's quantity, already / M): the sum of
    the messages, and each rank's sent mask of the weight (the bias is sent whole)."""
    total = {"weight": torch.zeros(CLASSES, FEATURES), "bias": torch.zeros(CLASSES)}
    sent = []
    for m, msg in enumerate(msgs):
        v = {k: errors[m][k] + msg[k] for k in msg}
        q = {"weight": v["weight"] if step < WARMUP else _topk(v["weight"]), "bias": v["bias"]}
        errors[m] = {k: v[k] - q[k] for k in v}
        sent.append(q["weight"] != 0)
        for k in total:
            total[k] += q[k]
    return total, sent


def _reference_momentum() -> dict:
    theta = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    u = [{k: torch.zeros_like(v) for k, v in theta.items()} for _ in range(WORLD)]
    e = [{k: torch.zeros_like(v) for k, v in theta.items()} for _ in range(WORLD)]
    for step in range(STEPS):
        for m, g in enumerate(_grads(theta, step)):
            u[m] = {k: MOMENTUM * u[m][k] + g[k] + WD * theta[k] for k in theta}
        delta, sent = _aggregate([{k: u[m][k] / WORLD for k in theta} for m in range(WORLD)], step, e)
        if step >= WARMUP:  # factor masking where a compressed tensor was sent
            for m in range(WORLD):
                u[m]["weight"] = torch.where(sent[m], 0.0, u[m]["weight"])
        theta = {k: theta[k] - LR_SGD * delta[k] for k in theta}
    return theta


def _reference_adamw() -> dict:
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    theta = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    e = [{k: torch.zeros_like(v) for k, v in theta.items()} for _ in range(WORLD)]
    local = [{k: torch.zeros_like(v) for k, v in theta.items()} for _ in range(WORLD)]
    m1 = {k: torch.zeros_like(v) for k, v in theta.items()}
    v2 = {k: torch.zeros_like(v) for k, v in theta.items()}
    agg = torch.zeros(CLASSES, FEATURES)  # Adam's estimate on the weight's aggregate (the guard's)
    kept = 7 / (CLASSES * FEATURES)  # the weight's k_s / d_s; the bias is sent whole: left to Adam
    frozen = None
    for step in range(STEPS):
        t = step + 1
        grads = _grads(theta, step)
        for m, g in enumerate(grads):
            local[m] = {k: beta2 * local[m][k] + (1 - beta2) * g[k] ** 2 for k in theta}
        if t in (WARMUP, 2 * WARMUP, 4 * WARMUP):  # the ranks average their estimates (bf16 on the wire)
            frozen = {k: sum((local[m][k] / (1 - beta2 ** t)).bfloat16() for m in range(WORLD)).float() / WORLD
                      for k in theta}
        total, _ = _aggregate([{k: g[k] / WORLD for k in theta} for g in grads], step, e)
        m1 = {k: beta1 * m1[k] + (1 - beta1) * total[k] for k in theta}
        v2 = {k: beta2 * v2[k] + (1 - beta2) * total[k] ** 2 for k in theta}
        agg = beta2 * agg + (1 - beta2) * total["weight"] ** 2
        bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
        if step >= WARMUP:  # the weight's frozen estimate, with its floor
            v2["weight"] = torch.maximum(frozen["weight"], agg * (0.1 * kept / bc2)) * bc2
        theta = {k: theta[k] * (1 - LR_ADAM * WD) - LR_ADAM * (m1[k] / bc1) / ((v2[k] / bc2).sqrt() + eps)
                 for k in theta}
    return theta


@pytest.mark.parametrize("kind", ["momentum", "adamw"])
def test_the_hook_with_the_users_optimizer_equals_the_hand_written_reference(ranks, kind):
    ref = _reference_momentum() if kind == "momentum" else _reference_adamw()
    for out in ranks:
        got = out[kind]
        assert got["momentum"] == (kind == "momentum") and got["variance"] == (kind == "adamw")
        for k in ("weight", "bias"):
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    for k in ("weight", "bias"):
        assert torch.equal(ranks[0][kind][k], ranks[1][kind][k])  # every rank makes the same correction


def test_without_the_correction_the_trajectory_differs(ranks):
    """The references are not what plain top-k + error feedback under the optimizer would give:
    the comparison above can fail."""
    plain = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    e = [{k: torch.zeros_like(v) for k, v in plain.items()} for _ in range(WORLD)]
    buf = None
    for step in range(STEPS):
        agg, _ = _aggregate([{k: g[k] / WORLD for k in plain} for g in _grads(plain, step)], step, e)
        d = {k: agg[k] + WD * plain[k] for k in plain}
        buf = d if buf is None else {k: MOMENTUM * buf[k] + d[k] for k in plain}
        plain = {k: plain[k] - LR_SGD * buf[k] for k in plain}
    assert not torch.allclose(plain["weight"], ranks[0]["momentum"]["weight"], rtol=1e-3, atol=1e-4)


def test_adam_variance_averages_are_counted_in_the_bits(ranks):
    d = CLASSES * FEATURES + CLASSES
    for kind, extra in (("momentum", 0), ("adamw", 2 * 16 * d)):  # averages at rounds 2 and 4: d bf16 each
        bits = ranks[0][kind]["bits_by_rank"]
        # 2 dense warm-up rounds (32 d), then K = 7 weights (int32 index + fp32 value) + 5 biases (value)
        per_rank = 2 * 32 * d + (STEPS - WARMUP) * (64 * 7 + 32 * CLASSES) + extra
        assert bits == [per_rank] * WORLD
        assert ranks[0][kind]["ledger_bits"] == WORLD * per_rank  # the ledger counts the same bits


def test_wk2s_stale_velocity_is_the_velocity_at_the_anchor():
    """Under DGC the hook's wk2 compares velocities: the stale one must be what the velocity would
    be had this round's gradient been taken at the anchor (per-group weight decay included)."""
    from sasg.ddp.buckets import ParameterIndex
    from sasg.ddp.optimizers import MomentumCorrection

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the layers' initialisation draws from the global generator
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "weight_decay": 0.1},
                           {"params": model[1].parameters()}], lr=0.1, momentum=0.9)
    index = ParameterIndex(model.named_parameters())
    d = index.numel
    compressed = torch.ones(d, dtype=torch.bool)
    fresh, at_anchor = MomentumCorrection(opt, index, compressed), MomentumCorrection(opt, index, compressed)
    before = torch.randn(d, generator=gen)
    fresh.velocity.copy_(before)
    at_anchor.velocity.copy_(before)
    g, g_hat = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    theta, anchor = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    fresh.accumulate(g, theta)
    want = at_anchor.accumulate(g_hat, anchor)
    torch.testing.assert_close(fresh.stale_velocity(g, g_hat, theta, anchor), want)
    assert not torch.allclose(fresh.velocity - g + g_hat, want)  # the weight decay term matters here
