"""``sasg.optim.SASG`` parameter groups: unknown keys refused, momentum and weight decay on the
aggregated step (checked against hand-written references), the defaults bit for bit as before,
momentum buffers in checkpoints, the CUDA generator of the parameters' own device, and the
documented autocast and gradient-accumulation recipes."""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasg.engine import InProcessTransport, RoundEngine
from sasg.optim import SASG
from sasg.optim.sasg import cuda_rng_device

ALGOS = ("sgd", "sparse", "lasg", "sasg")
KW = dict(lr=0.1, window=2, density=0.3, c=0.5)  # small D and c: the lazy rules skip often


def _data(seed=0, n=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def _model(seed=0, dtype=torch.float32, dropout=False):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers = [nn.Linear(6, 8), nn.ReLU(), *([nn.Dropout(0.3)] if dropout else []), nn.Linear(8, 3)]
        return nn.Sequential(*layers).to(dtype)


def _closure(model, x, y):
    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _run(rounds=8, algo="sasg", **kw):
    """SASG on the tiny model, ``rounds`` steps on one fixed batch; returns (model, optimizer)."""
    model = _model()
    x, y = _data()
    opt = SASG(model.parameters(), **{**KW, "algorithm": algo, **kw})
    for _ in range(rounds):
        opt.step(_closure(model, x, y))
    return model, opt


def _engine_reference(rounds, algo, update=None):
    """The round engine driven by hand, as the optimizer did before momentum existed; ``update``
    (theta, s, lr) -> theta^{k+1}, hand-written, replaces theta^k - s when given. Returns the
    parameters after every round and the uploads."""
    model = _model()
    x, y = _data()
    params = list(model.parameters())
    algorithm = SASG(_model().parameters(), **{**KW, "algorithm": algo}).algorithm  # same layout, same members
    engine = RoundEngine(algorithm, InProcessTransport(1, device=torch.device("cpu")), seed=0)

    def grad_at(theta):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta, params)
        for p in params:
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()
    trajectory = []
    for _ in range(rounds):
        start = theta.clone()
        g = grad_at(theta)
        result = engine.step(theta, g.reshape(1, -1), lambda rows: grad_at(engine.workers.anchor[0]).reshape(1, -1),
                             KW["lr"])
        if update is not None:
            theta = update(start, result.step.clone(), KW["lr"])
        else:
            theta -= result.step
        trajectory.append(theta.clone())
    return trajectory, engine.ledger.uploads


# ----- parameter groups -----------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, why", [
    ("betas", (0.9, 0.999), "adaptive per-coordinate scaling"),
    ("eps", 1e-8, "adaptive per-coordinate scaling"),
    ("maximize", False, "return -f from the closure"),
    ("foreach", None, "no per-tensor kernel"),
    ("fused", True, "no per-tensor kernel"),
    ("differentiable", False, "cannot be differentiated through"),
    ("capturable", False, "CUDA graph"),
    ("momentun", 0.9, "does not know it"),
])
def test_an_unknown_group_key_is_a_value_error_naming_it_and_what_is_supported(key, value, why):
    model = _model()
    with pytest.raises(ValueError, match=f"do not take {key!r}: .*{why}") as err:
        SASG([{"params": model.parameters(), key: value}], lr=0.1)
    supported = "a group takes params, lr, momentum, dampening, weight_decay, nesterov, decoupled_weight_decay"
    assert supported in str(err.value)


def test_group_values_win_over_the_constructor_and_bookkeeping_keys_pass():
    model = _model()
    opt = SASG([{"params": model.parameters(), "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
                 "initial_lr": 0.2}], lr=0.1, momentum=0.5)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"], group["dampening"]) == \
        (0.2, 0.9, True, 1e-3, 0.0)
    named = SASG(_model().named_parameters(), lr=0.1)  # torch.optim adds "param_names"
    assert named.param_groups[0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("kw, match", [
    (dict(momentum=-0.1), r"momentum must be a number in \[0, 1\), got -0.1; e.g. momentum=0.9"),
    (dict(momentum=1.0), r"momentum must be a number in \[0, 1\), got 1.0"),
    (dict(momentum="0.9"), "momentum must be"),
    (dict(momentum=True), "momentum must be"),
    (dict(dampening=1.5), r"dampening must be a number in \[0, 1\], got 1.5"),
    (dict(weight_decay=-1e-4), "weight_decay must be a finite number >= 0"),
    (dict(weight_decay=float("nan")), "weight_decay must be"),
    (dict(weight_decay=float("inf")), "weight_decay must be"),
    (dict(nesterov=1), "nesterov must be True or False"),
    (dict(decoupled_weight_decay="yes"), "decoupled_weight_decay must be True or False"),
    (dict(nesterov=True), "nesterov needs momentum > 0 and dampening 0"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov needs momentum > 0 and dampening 0"),
])
def test_bad_momentum_and_weight_decay_are_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SASG(_model().parameters(), lr=0.1, **kw)
    with pytest.raises(ValueError, match=match):  # the same in a group
        SASG([{"params": _model().parameters(), **kw}], lr=0.1)


def test_a_bad_value_set_between_steps_stops_the_step_before_anything_moves():
    model, opt = _run(2, momentum=0.9)
    before, buf = flat(model).clone(), opt._buffers[0].clone()
    opt.param_groups[0]["momentum"] = 1.5
    with pytest.raises(ValueError, match="momentum must be"):
        opt.step(_closure(model, *_data()))
    assert torch.equal(flat(model), before) and torch.equal(opt._buffers[0], buf) and opt.iteration == 2


# ----- the defaults: every number as before ---------------------------------------------------------
@pytest.mark.parametrize("algo", ALGOS)
def test_the_defaults_are_bit_identical_to_the_plain_engine_update(algo):
    rounds = 10
    model, opt = _run(rounds, algo)
    explicit, opt2 = _run(rounds, algo, momentum=0.0, dampening=0.5, weight_decay=0.0, nesterov=False,
                          decoupled_weight_decay=False)  # dampening acts only through momentum
    reference, uploads = _engine_reference(rounds, algo)
    assert torch.equal(flat(model), reference[-1])
    assert torch.equal(flat(explicit), reference[-1])
    assert opt.ledger.uploads == opt2.ledger.uploads == uploads
    assert opt.ledger.bits_up == opt2.ledger.bits_up
    assert opt._buffers[0] is None and not opt.state  # no buffer without momentum
    if algo in ("lasg", "sasg"):
        assert 0 < sum(uploads) < rounds  # both uploads and skips


# ----- momentum and weight decay: the maths ----------------------------------------------------------
def _textbook(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, decoupled=False):
    """The class docstring's update, written out per formula (buffer in step units)."""
    state = {}

    def update(theta, s, lr):
        u = s if decoupled else s + lr * weight_decay * theta
        if momentum:
            b = state["b"] = u.clone() if "b" not in state else momentum * state["b"] + (1 - dampening) * u
            u = u + momentum * b if nesterov else b
        return (1 - lr * weight_decay) * theta - u if decoupled else theta - u

    return update


CONFIGS = [
    dict(momentum=0.9),
    dict(momentum=0.8, dampening=0.3),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=0.05),
    dict(weight_decay=0.05, decoupled_weight_decay=True),
    dict(momentum=0.9, nesterov=True, weight_decay=0.05),
    dict(momentum=0.7, dampening=0.2, weight_decay=0.05, decoupled_weight_decay=True),
]


@pytest.mark.parametrize("algo", ["sgd", "sasg"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_momentum_and_weight_decay_follow_the_documented_update(algo, cfg):
    # Tolerance: float32 assert_close (rtol 1.3e-6, atol 1e-5); the reference forms a + l*b as two
    # roundings where the optimizer uses one fused add. The lazy decisions must agree exactly.
    rounds = 8
    model, opt = _run(rounds, algo, **cfg)
    textbook = {**cfg}
    textbook["decoupled"] = textbook.pop("decoupled_weight_decay", False)
    reference, uploads = _engine_reference(rounds, algo, _textbook(**textbook))
    torch.testing.assert_close(flat(model), reference[-1])
    assert opt.ledger.uploads == uploads
    if algo == "sasg":
        assert 0 < sum(uploads) < rounds  # weight decay also acts in rounds where everyone skipped
    assert not torch.equal(flat(model), flat(_run(rounds, algo)[0]))  # and it changed something


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_one_worker_dense_sgd_is_torch_sgd_or_sgdw(cfg):
    # algorithm "sgd", M = 1, constant lr: s = lr * g, so the update is torch.optim.SGD's
    # (decoupled: SGDW, SGD without weight decay after theta *= 1 - lr * wd); rtol 1e-5 after 10 steps.
    cfg = dict(cfg)
    decoupled = cfg.pop("decoupled_weight_decay", False)
    x, y = _data()
    ours, theirs = _model(), _model()
    opt = SASG(ours.parameters(), lr=0.1, algorithm="sgd", decoupled_weight_decay=decoupled, **cfg)
    wd = cfg.pop("weight_decay", 0.0)
    ref = torch.optim.SGD(theirs.parameters(), lr=0.1, weight_decay=0.0 if decoupled else wd, **cfg)
    for _ in range(10):
        opt.step(_closure(ours, x, y))
        ref.zero_grad()
        _closure(theirs, x, y)()
        if decoupled:
            with torch.no_grad():
                for p in theirs.parameters():
                    p.mul_(1 - 0.1 * wd)
        ref.step()
    torch.testing.assert_close(flat(ours), flat(theirs), rtol=1e-5, atol=1e-6)
    if cfg.get("momentum"):  # the buffers too, up to the lr that ours keeps inside
        for p, q in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], 0.1 * ref.state[q]["momentum_buffer"],
                                       rtol=1e-5, atol=1e-7)


def test_momentum_buffers_are_views_of_one_flat_buffer():
    model, opt = _run(3, momentum=0.9)
    params = list(model.parameters())
    assert set(opt.state) == set(params)
    views = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in params])
    assert torch.equal(views, opt._buffers[0])
    opt._buffers[0].mul_(2)  # writing the flat buffer is writing what state[p] shows
    assert torch.equal(opt.state[params[0]]["momentum_buffer"].reshape(-1), opt._buffers[0][: params[0].numel()])


# ----- checkpoints --------------------------------------------------------------------------------
def _saved(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_carries_the_momentum_buffers_and_continues_exactly():
    cfg = dict(momentum=0.9, nesterov=True, weight_decay=0.01)
    x, y = _data()
    with torch.random.fork_rng():
        torch.manual_seed(7)
        frozen = nn.Linear(3, 3).requires_grad_(False)
    model = _model()
    params = [*frozen.parameters(), *model.parameters()]  # indices 0, 1 frozen: never in "state"
    opt = SASG(params, **KW, **cfg)
    for _ in range(5):
        opt.step(_closure(model, x, y))
    saved = _saved(opt)
    assert sorted(saved["state"]) == [2, 3, 4, 5]
    assert all(set(v) == {"momentum_buffer"} for v in saved["state"].values())
    assert saved["param_groups"][0]["momentum"] == 0.9 and saved["param_groups"][0]["nesterov"] is True

    model2 = _model(seed=3)
    model2.load_state_dict(model.state_dict())
    opt2 = SASG([*frozen.parameters(), *model2.parameters()], **KW)  # momentum comes from the state
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["momentum"] == 0.9 and torch.equal(opt2._buffers[0], opt._buffers[0])
    for _ in range(5):
        opt.step(_closure(model, x, y))
        opt2.step(_closure(model2, x, y))
        assert torch.equal(flat(model), flat(model2))
    assert torch.equal(opt2._buffers[0], opt._buffers[0])
    assert opt2.state[next(iter(model2.parameters()))]["momentum_buffer"].data_ptr() == opt2._buffers[0].data_ptr()


def _without(state, index):
    state = copy.deepcopy(state)
    del state["state"][index]
    return state


@pytest.mark.parametrize("change, match", [
    (lambda s: _without(s, 1), r"'state\[1\]' is missing: the momentum buffer is saved for some"),
    (lambda s: {**s, "state": {**s["state"], 9: s["state"][0]}}, r"'state\[9\]' is not the state of a parameter"),
    (lambda s: {**s, "state": {**s["state"], 0: {"momentum_buffer": s["state"][0]["momentum_buffer"][:1]}}},
     r"'state\[0\].momentum_buffer' has shape"),
    (lambda s: {**s, "state": {**s["state"], 0: {**s["state"][0], "step": 3}}}, r"'state\[0\].step' is not part"),
    (lambda s: {**s, "param_groups": [{**s["param_groups"][0], "momentum": 1.5}]},
     r"'param_groups\[0\].momentum': momentum must be"),
    (lambda s: {**s, "param_groups": [{**s["param_groups"][0], "nesterov": True, "dampening": 0.5}]},
     r"'param_groups\[0\].nesterov': nesterov needs"),
    (lambda s: {**s, "param_groups": [{**s["param_groups"][0], "betas": (0.9, 0.99)}]},
     r"'param_groups\[0\].betas': SASG parameter groups do not take 'betas'"),
])
def test_a_wrong_momentum_state_is_refused_and_changes_nothing(change, match):
    model, opt = _run(3, momentum=0.9)
    saved = _saved(opt)
    model2, opt2 = _run(2, momentum=0.5)
    before = (flat(model2).clone(), opt2._buffers[0].clone(), copy.deepcopy(opt2.param_groups[0]["momentum"]),
              copy.deepcopy(opt2.engine.state_dict()))
    with pytest.raises(ValueError, match=match):
        opt2.load_state_dict(change(saved))
    assert torch.equal(flat(model2), before[0]) and torch.equal(opt2._buffers[0], before[1])
    assert opt2.param_groups[0]["momentum"] == before[2] and opt2.iteration == 2
    anchor = lambda st: st["workers"]["buffers"]["anchor"]  # noqa: E731
    assert torch.equal(anchor(opt2.engine.state_dict()), anchor(before[3]))


def test_states_without_buffers_or_without_the_new_keys_load():
    _, plain = _run(3)
    saved = _saved(plain)
    model, opt = _run(2, momentum=0.9)
    opt.load_state_dict(saved)  # saved with momentum 0: no buffer, and the saved momentum 0 wins
    assert opt._buffers[0] is None and not opt.state and opt.param_groups[0]["momentum"] == 0.0
    old = copy.deepcopy(saved)  # as saved before these keys existed: this optimizer's values stay
    for k in ("momentum", "dampening", "weight_decay", "nesterov", "decoupled_weight_decay"):
        del old["param_groups"][0][k]
    model3, opt3 = _run(1, momentum=0.9, weight_decay=1e-3)
    opt3.load_state_dict(old)
    assert opt3.param_groups[0]["momentum"] == 0.9 and opt3.param_groups[0]["weight_decay"] == 1e-3
    opt3.step(_closure(model3, *_data()))
    assert opt3._buffers[0] is not None  # the first step with momentum starts the buffer


def test_a_float32_buffer_loads_into_float64_and_scheduler_keys_survive():
    model, opt = _run(0, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=10)  # cycles momentum too
    x, y = _data()
    for _ in range(4):
        opt.step(_closure(model, x, y))
        sched.step()
    assert opt.param_groups[0]["momentum"] != 0.9  # the scheduler moved it
    saved = _saved(opt)
    assert "max_momentum" in saved["param_groups"][0]
    model64 = _model(dtype=torch.float64)
    opt64 = SASG(model64.parameters(), **KW)
    opt64.load_state_dict(saved)
    assert opt64._buffers[0].dtype == torch.float64
    assert opt64.state[next(iter(model64.parameters()))]["momentum_buffer"].dtype == torch.float64
    opt64.step(_closure(model64, *_data(dtype=torch.float64)))


# ----- the CUDA generator of the parameters' device -------------------------------------------------
def test_cuda_rng_device_is_the_parameters_device():
    assert cuda_rng_device(torch.device("cpu")) is None
    assert cuda_rng_device(torch.device("cuda", 2)) == torch.device("cuda", 2)
    assert cuda_rng_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_step_saves_and_replays_the_generator_of_the_parameters_device(monkeypatch):
    # No GPU here: pretend the parameters live on cuda:3 and record what step asks of torch.cuda.
    calls = []

    def get_rng_state(device="cuda"):
        calls.append(("get", torch.device(device)))
        return torch.zeros(8, dtype=torch.uint8)

    def set_rng_state(state, device="cuda"):
        calls.append(("set", torch.device(device)))

    def current_device():
        raise AssertionError("step must not use the current CUDA device")

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "current_device", current_device)
    model = _model()
    x, y = _data()
    opt = SASG(model.parameters(), lr=0.1, window=1, c=1e-9, algorithm="lasg")  # checks every round
    opt._cuda_rng = torch.device("cuda", 3)
    opt.step(_closure(model, x, y))  # warm-up: uploads, one evaluation
    assert calls == [("get", torch.device("cuda", 3))] * 2
    calls.clear()
    opt.step(_closure(model, x, y))  # the anchor evaluation: replay, then restore
    assert [c[0] for c in calls] == ["get", "get", "set", "set"]
    assert {c[1] for c in calls} == {torch.device("cuda", 3)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dropout_is_replayed_on_the_parameters_gpu_not_the_current_one():
    dev = torch.device("cuda", torch.cuda.device_count() - 1)  # the last GPU; the current one is 0
    with torch.random.fork_rng(devices=sorted({0, dev.index})):
        torch.cuda.set_device(0)
        torch.manual_seed(1)
        model = _model(dropout=True).to(dev)
        x, y = (t.to(dev) for t in _data())
        masks = []
        model[2].register_forward_hook(lambda mod, inp, out: masks.append(out == 0))
        opt = SASG(model.parameters(), lr=0.1, window=1, c=1e-9, algorithm="lasg")
        assert opt._cuda_rng == dev
        closure = _closure(model, x, y)
        opt.step(closure)
        for _ in range(3):
            start = torch.cuda.get_rng_state(dev)
            opt.step(closure)
            after = torch.cuda.get_rng_state(dev)
            assert len(masks) % 2 == 1 and torch.equal(masks[-1], masks[-2])  # fresh and anchor: same mask
            torch.cuda.set_rng_state(start, dev)  # the stream moved as for one evaluation
            copy.deepcopy(model)(x)
            assert torch.equal(torch.cuda.get_rng_state(dev), after)
            masks.pop()


# ----- the recipes ---------------------------------------------------------------------------------
def test_recipe_bf16_autocast_inside_the_closure():
    x, y = _data(n=64)

    def train(bf16: bool):
        model = _model()
        opt = SASG(model.parameters(), lr=0.2, window=2, density=0.3, c=0.5, momentum=0.9)

        def closure():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses = [float(opt.step(closure).detach()) for _ in range(30)]
        return model, opt, losses

    model, opt, losses = train(bf16=True)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert opt.engine.workers.error.dtype == torch.float32 and opt._buffers[0].dtype == torch.float32
    assert sum(opt.ledger.uploads) < 30  # the lazy rule re-evaluated the autocast closure and skipped
    _, _, fp32 = train(bf16=False)
    assert losses[-1] < 0.9 * losses[0] and abs(losses[-1] - fp32[-1]) < 0.05  # trains as fp32 does


@pytest.mark.parametrize("algo", ["sgd", "sasg"])
def test_recipe_gradient_accumulation_inside_the_closure(algo):
    x, y = _data(n=32)
    full, accumulated = _model(), _model()
    k, forwards = 4, []
    opt_full = SASG(full.parameters(), **{**KW, "algorithm": algo})
    opt_acc = SASG(accumulated.parameters(), **{**KW, "algorithm": algo})

    def closure():
        total = 0.0
        for xb, yb in zip(x.chunk(k), y.chunk(k)):
            forwards.append(len(xb))
            loss = F.cross_entropy(accumulated(xb), yb) / k
            loss.backward()
            total += loss.detach()
        return total

    for _ in range(6):
        l_full = opt_full.step(_closure(full, x, y))
        l_acc = opt_acc.step(closure)
        torch.testing.assert_close(l_acc, l_full.detach())
    # the mean over micro-batches is the full batch's mean, to float rounding (rtol 1e-5)
    torch.testing.assert_close(flat(accumulated), flat(full), rtol=1e-5, atol=1e-6)
    assert opt_acc.ledger.uploads == opt_full.ledger.uploads
    if algo == "sasg":  # the anchor evaluation ran the whole closure again, micro-batches and all
        assert len(forwards) > 6 * k and len(forwards) % k == 0


# ----- under torch.distributed: every rank applies the same update ---------------------------------
def _momentum_rank(rank, world, folder):
    x, y = _data(seed=rank)  # each rank its own minibatch
    model = _model()
    opt = SASG(model.parameters(), **KW, momentum=0.9, weight_decay=0.01, nesterov=True)
    for _ in range(8):
        opt.step(_closure(model, x, y))
    torch.save({"theta": flat(model), "buf": opt._buffers[0], "uploads": opt.ledger.uploads},
               os.path.join(folder, f"rank{rank}.pt"))


def test_two_ranks_hold_the_same_parameters_and_buffers_with_momentum(tmp_path):
    from test_distributed import spawn

    spawn(_momentum_rank, 2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["theta"], r1["theta"]) and torch.equal(r0["buf"], r1["buf"])
    assert r0["uploads"] == r1["uploads"]


# ----- several parameter groups -----------------------------------------------------------------------
def _two_groups(model, **second):
    """Weights in group 0, biases in group 1 (the usual "no weight decay on biases" split)."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, **second}]


def test_two_groups_with_their_own_lrs_are_two_torch_sgd_groups_exactly():
    # M = 1, algorithm "sgd": each part moves by its own lr times its gradient. At power-of-two lrs
    # every product is exact, so the parameters are torch.optim.SGD's bit for bit.
    x, y = _data()
    ours, theirs = _model(), _model()
    opt = SASG(_two_groups(ours, lr=0.03125), lr=0.125, algorithm="sgd")
    ref = torch.optim.SGD(_two_groups(theirs, lr=0.03125), lr=0.125)
    for _ in range(10):
        opt.step(_closure(ours, x, y))
        ref.zero_grad()
        _closure(theirs, x, y)()
        ref.step()
        assert torch.equal(flat(ours), flat(theirs))
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.03125]


def test_two_groups_with_their_own_weight_decay_and_momentum_follow_torch_sgd():
    x, y = _data()
    ours, theirs = _model(), _model()
    cfg = dict(momentum=0.9, weight_decay=1e-2)
    opt = SASG(_two_groups(ours, weight_decay=0.0, momentum=0.5), lr=0.1, algorithm="sgd", **cfg)
    ref = torch.optim.SGD(_two_groups(theirs, weight_decay=0.0, momentum=0.5), lr=0.1, **cfg)
    for _ in range(10):
        opt.step(_closure(ours, x, y))
        ref.zero_grad()
        _closure(theirs, x, y)()
        ref.step()
    torch.testing.assert_close(flat(ours), flat(theirs), rtol=1e-5, atol=1e-6)
    for p, q in zip(ours.parameters(), theirs.parameters()):  # each group's buffer, lr inside ours
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], 0.1 * ref.state[q]["momentum_buffer"],
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("algo", ["sasg", "sparse"])
def test_groups_sharing_one_lr_and_one_set_of_values_are_the_one_group_run_bit_for_bit(algo):
    cfg = dict(momentum=0.9, weight_decay=1e-3)
    one, opt1 = _run(6, algo, **cfg)
    model = _model()
    opt2 = SASG(_two_groups(model), **{**KW, "algorithm": algo, **cfg})
    x, y = _data()
    for _ in range(6):
        opt2.step(_closure(model, x, y))
    # group order differs from model order (weights first), so compare per tensor
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), model.parameters()))
    assert opt2.ledger.uploads == opt1.ledger.uploads


def test_sasg_with_no_weight_decay_on_biases_trains_and_checkpoints():
    x, y = _data()
    model = _model()
    opt = SASG(_two_groups(model, weight_decay=0.0, momentum=0.0), **KW, momentum=0.9, weight_decay=1e-2)
    for _ in range(4):
        opt.step(_closure(model, x, y))
    saved = _saved(opt)
    assert sorted(saved["state"]) == [0, 1]  # only the weights' group has momentum buffers
    assert len(saved["param_groups"]) == 2 and saved["param_groups"][1]["weight_decay"] == 0.0
    model2 = _model()
    model2.load_state_dict(model.state_dict())
    opt2 = SASG(_two_groups(model2, weight_decay=0.0, momentum=0.0), **KW, momentum=0.9, weight_decay=1e-2)
    opt2.load_state_dict(saved)
    for _ in range(3):
        opt.step(_closure(model, x, y))
        opt2.step(_closure(model2, x, y))
    assert torch.equal(flat(model), flat(model2))
    with pytest.raises(ValueError, match=r"'param_groups' has 1 entries, expected 2"):
        opt2.load_state_dict({**saved, "param_groups": saved["param_groups"][:1]})


def test_lrs_split_between_steps_stop_a_lazy_rules_step_and_say_why():
    x, y = _data()
    model = _model()
    opt = SASG(_two_groups(model), **KW)  # sasg: wk2 reads the lr
    opt.step(_closure(model, x, y))
    opt.param_groups[1]["lr"] = 0.05  # as a scheduler with a factor per group would
    before = flat(model).clone()
    with pytest.raises(ValueError, match=r"one lr .* lrs 0.1, 0.05; give every group the same lr"):
        opt.step(_closure(model, x, y))
    assert torch.equal(flat(model), before) and opt.iteration == 1


def test_a_bad_value_in_the_second_group_names_the_group_and_is_a_plain_value_error():
    model = _model()
    with pytest.raises(ValueError, match=r"parameter group 1: momentum must be a number in \[0, 1\), got 1.5") as e:
        SASG(_two_groups(model, momentum=1.5), **KW)
    assert type(e.value) is ValueError
    with pytest.raises(ValueError) as e:
        SASG(_model().parameters(), **KW, momentum=-1)
    assert type(e.value) is ValueError  # no private class in the user's traceback
