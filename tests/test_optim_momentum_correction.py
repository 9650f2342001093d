"""``sasg.optim.SASG(momentum_correction=True)``: DGC's momentum correction in the optimizer,
against a hand-written reference, with a tensor policy and a dense warm-up (one process, M = 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasg.optim import SASG

LR, MU, WD, DENSITY, WARMUP, STEPS = 0.1, 0.9, 0.01, 0.2, 2, 8


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):  # no draw from the global RNG
        model = nn.Linear(5, 4)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 5, generator=g))
        model.bias.copy_(torch.randn(4, generator=g))
    return model


def _batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(6, 5, generator=g), torch.randint(0, 4, (6,), generator=g)


def _topk(v: torch.Tensor) -> torch.Tensor:
    k = max(1, int(DENSITY * v.numel()))
    flat, keep = v.reshape(-1), torch.zeros(v.numel())
    idx = flat.abs().topk(k).indices
    keep[idx] = flat[idx]
    return keep.view_as(v)


def test_momentum_correction_equals_dgc_by_hand():
    model = _model()
    opt = SASG(model.parameters(), lr=LR, algorithm="sparse", density=DENSITY, momentum=MU, weight_decay=WD,
               momentum_correction=True, tensor_policy="vectors", warmup=WARMUP)
    theta = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    u = {k: torch.zeros_like(v) for k, v in theta.items()}
    e = {k: torch.zeros_like(v) for k, v in theta.items()}
    for step in range(STEPS):
        x, y = _batch(step)

        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        w, b = theta["weight"].clone().requires_grad_(), theta["bias"].clone().requires_grad_()
        F.cross_entropy(x @ w.t() + b, y).backward()
        g = {"weight": w.grad, "bias": b.grad}
        u = {k: MU * u[k] + g[k] + WD * theta[k] for k in theta}
        v = {k: e[k] + LR * u[k] for k in theta}
        q = {"weight": v["weight"] if step < WARMUP else _topk(v["weight"]), "bias": v["bias"]}  # bias whole
        e = {k: v[k] - q[k] for k in theta}
        if step >= WARMUP:  # factor masking on the compressed weight
            u["weight"] = torch.where(q["weight"] != 0, 0.0, u["weight"])
        theta = {k: theta[k] - q[k] for k in theta}
        for k, p in model.state_dict().items():
            torch.testing.assert_close(p, theta[k], rtol=1e-5, atol=1e-6)
    assert opt.ledger.bits_up[:WARMUP] == [32 * 24] * WARMUP  # dense warm-up rounds
    assert opt.ledger.bits_up[WARMUP] == 32 * (4 + 4) + 32 * 4  # 4 weights (index + value), 4 biases (value)


def test_momentum_correction_state_round_trips_and_is_refused_with_nesterov():
    model = _model()
    kw = dict(lr=LR, algorithm="sparse", density=DENSITY, momentum=MU, momentum_correction=True)
    opt = SASG(model.parameters(), **kw)
    x, y = _batch(0)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state_dict()
    assert torch.count_nonzero(state["sasg"]["velocity"]) > 0
    again = SASG(_model().parameters(), **kw)
    again.load_state_dict(state)
    assert torch.equal(again._velocity, opt._velocity)
    with pytest.raises(ValueError, match="optimizer state was saved with other settings"):
        SASG(_model().parameters(), lr=LR, algorithm="sparse", density=DENSITY, momentum=MU).load_state_dict(state)
    with pytest.raises(ValueError, match="nesterov, dampening and decoupled_weight_decay must be off"):
        SASG(_model().parameters(), lr=LR, momentum=MU, nesterov=True, momentum_correction=True)
