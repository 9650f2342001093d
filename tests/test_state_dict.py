"""The Python API's guards: a Simulator checks its config before anything runs, and every
``load_state_dict`` (Simulator, RoundEngine, the SASG optimizer) is all or nothing."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasg import RunConfig, Simulator
from sasg.accounting import Ledger
from sasg.config import ConfigError
from sasg.engine.transport import TransportCounters
from sasg.optim import SASG

from conftest import small_config

SETTINGS = dict(window=3, threshold_scale=0.5)  # a lazy rule that really skips within a few rounds


# ----- helpers -------------------------------------------------------------------------------------
def assert_same(a, b, where="state"):
    """Two states equal exactly: same structure, tensors torch.equal (and of one dtype)."""
    assert type(a) is type(b) or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))), where
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN history entries (none here) compare equal


def _parent(state, path):
    for key in path[:-1]:
        state = state[key]
    return state


def without(state, path):
    out = copy.deepcopy(state)
    del _parent(out, path)[path[-1]]
    return out


def with_value(state, path, value):
    out = copy.deepcopy(state)
    _parent(out, path)[path[-1]] = value(_parent(out, path)[path[-1]]) if callable(value) else value
    return out


def name_of(path) -> str:
    out = ""
    for key in path:
        out = f"{out}[{key}]" if isinstance(key, int) else (f"{out}.{key}" if out else key)
    return out


def stepped(algo="sasg", rounds=0, **kw):
    sim = Simulator(small_config(**{**SETTINGS, **kw}), algo, _synth())
    for _ in range(rounds):
        sim.step()
    return sim


_DATA = {}


def _synth():
    if "d" not in _DATA:
        from sasg.data import make_synthetic

        _DATA["d"] = make_synthetic(n_train=240, n_test=120, num_features=12, num_classes=3, seed=1)
    return _DATA["d"]


@pytest.fixture(scope="module")
def saved_sim_state():
    """A sasg simulator's state after 7 rounds (skips, anchors, step window, history all in use)."""
    sim = stepped()
    sim.run(iterations=7)
    st = sim.state_dict()
    assert len(st["history"]) == 3
    assert 0 < sum(st["engine"]["ledger"]["uploads"]) < 7 * 4  # the lazy rule has both uploaded and skipped
    return st


# ----- 1. the config is checked at construction ---------------------------------------------------
@pytest.mark.parametrize("bad, setting", [
    (dict(lr=-1.0), "lr"), (dict(workers=0), "workers"), (dict(density=2.0), "density"),
    (dict(lr=float("nan")), "lr"), (dict(window=0), "window"), (dict(batch_size=0), "batch size"),
    (dict(device="tpu"), "device"),
])
def test_simulator_refuses_an_invalid_config_before_building_anything(bad, setting, monkeypatch):
    import sasg.sim.simulator as simulator

    def no_model(*a, **k):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(simulator, "build_model", no_model)
    cfg = RunConfig(**{**dict(dataset="synthetic", workers=4, batch_size=5, device="cpu", epochs=1), **bad})
    with pytest.raises(ConfigError, match=setting) as err:
        Simulator(cfg, "sasg", _synth())
    assert "\n" not in str(err.value)


def test_simulator_refuses_an_unknown_algorithm_as_a_config_error():
    with pytest.raises(ConfigError, match="unknown algorithm"):
        Simulator(small_config(), "nope", _synth())


def test_simulator_validates_a_copy_and_validation_is_idempotent():
    cfg = small_config()  # validated already
    before = cfg.to_dict()
    sim = Simulator(cfg, "sasg", _synth())
    assert sim.config.to_dict() == before and cfg.to_dict() == before
    assert RunConfig(**{k: getattr(cfg, k) for k in RunConfig.field_names()}).validate().validate() == cfg
    # An unvalidated config: normalized for the simulator, the caller's object left as written.
    raw = RunConfig(dataset="synthetic", workers=4, batch_size=5, device=" CPU ", algorithms="SGD, sasg",
                    lr_decay_epochs=1, epochs=1)
    sim = Simulator(raw, "sasg", _synth())
    assert (sim.config.device, sim.config.algorithms, sim.config.lr_decay_epochs) == ("cpu", ("sgd", "sasg"), (1.0,))
    assert (raw.device, raw.algorithms, raw.lr_decay_epochs) == (" CPU ", "SGD, sasg", 1)


# ----- 2. Simulator.load_state_dict: all or nothing -----------------------------------------------
MISSING = [
    ("engine", "server", "step_sq"),  # the lazy rule's step window
    ("engine", "workers", "buffers", "anchor"),  # the lazy rule's anchors
    ("engine", "workers", "staleness"),
    ("engine", "workers", "buffers", "error"),
    ("engine", "server", "last", "values"),
    ("engine", "server", "iteration"),
    ("engine", "ledger"),
    ("engine", "ledger", "bits_flags"),
    ("engine", "generators"),
    ("engine", "transport", "rounds"),
    ("engine", "local_workers"),
    ("sampler", "order"),
    ("sampler", "generators"),
    ("theta",),
    ("history",),
    ("eval_seconds",),  # the last part checked: a part-by-part load would have changed everything else
]


@pytest.mark.parametrize("path", MISSING, ids=name_of)
def test_simulator_refuses_a_state_with_a_part_missing_and_changes_nothing(saved_sim_state, path):
    sim = stepped(rounds=2)  # a state of its own, unlike the saved one in every part
    before = sim.state_dict()
    with pytest.raises(ValueError, match=re.escape(repr(name_of(path)))):
        sim.load_state_dict(without(saved_sim_state, path))
    assert_same(sim.state_dict(), before)


WRONG = [
    (("theta",), lambda t: t[:-1], "shape"),
    (("engine", "workers", "buffers", "anchor"), lambda t: t[:, :-1], "shape"),
    (("engine", "workers", "buffers", "error"), lambda t: t[:3], "shape"),
    (("engine", "workers", "staleness"), lambda t: t.float(), "dtype"),
    (("engine", "workers", "staleness"), lambda t: t * 0, "< 1"),
    (("engine", "server", "step_sq"), lambda t: torch.zeros(5, dtype=torch.float64), "window"),
    (("engine", "server", "last", "indices"), lambda t: t.float(), "dtype"),
    (("engine", "server", "last", "kind"), "dense", "'sparse'"),
    (("engine", "generators", 3), lambda t: torch.full_like(t, 255), "generator state"),
    (("engine", "generators"), lambda gens: gens[:3], "entries"),
    (("engine", "ledger", "uploads"), lambda u: u[:-1], "different numbers of rounds"),
    (("engine", "ledger", "uploads", 0), -1, ">= 0"),
    (("engine", "num_workers"), 5, "another number of workers"),
    (("engine", "local_workers"), [1, 2, 3, 4], "expected \\[0, 1, 2, 3\\]"),
    (("sampler", "order", 0), lambda t: t[:-1], "shape"),
    (("sampler", "generators", 0), "nope", "generator state"),
    (("augment_generators",), [], "None"),
    (("history", 0), 3, "expected a dict"),
    (("train_seconds",), "1.0", "expected a number"),
]


@pytest.mark.parametrize("path, value, why", WRONG, ids=[f"{name_of(p)}-{w}" for p, _, w in WRONG])
def test_simulator_refuses_a_wrong_part_and_changes_nothing(saved_sim_state, path, value, why):
    sim = stepped(rounds=2)
    before = sim.state_dict()
    with pytest.raises(ValueError, match=re.escape(repr(name_of(path)))) as err:
        sim.load_state_dict(with_value(saved_sim_state, path, value))
    assert re.search(why, str(err.value)), str(err.value)
    assert_same(sim.state_dict(), before)


def test_simulator_refuses_extra_parts_and_other_algorithms(saved_sim_state):
    sim = stepped(rounds=2)
    before = sim.state_dict()
    extra = with_value(saved_sim_state, ("engine", "workers", "buffers", "momentum"), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=re.escape("'engine.workers.buffers.momentum' is not kept")):
        sim.load_state_dict(extra)
    with pytest.raises(ValueError, match=re.escape("'engine.extra' is not part")):
        sim.load_state_dict(with_value(saved_sim_state, ("engine", "extra"), 1))
    with pytest.raises(ValueError, match="checkpoint is for 'lasg', not 'sasg'"):
        sim.load_state_dict(with_value(saved_sim_state, ("algorithm",), "lasg"))
    with pytest.raises(ValueError, match="the state is for 'lasg'"):
        sim.load_state_dict(with_value(saved_sim_state, ("engine", "algorithm"), "lasg"))
    with pytest.raises(ValueError, match="expected a dict"):
        sim.load_state_dict([1, 2])
    assert_same(sim.state_dict(), before)
    other = stepped("lasg", rounds=1)  # no error memory: sasg's state is refused by its algorithm name
    with pytest.raises(ValueError, match="sasg"):
        other.load_state_dict(saved_sim_state)


@pytest.mark.parametrize("algo", ["sgd", "sparse", "lasg", "sasg", "wk2+topk+none"])
def test_every_algorithms_own_state_passes_its_check(algo):
    """The check covers exactly what state_dict() writes (a key added to one needs the other)."""
    sim = stepped(algo)
    sim.check_state_dict(sim.state_dict())  # before the first round: orders None, empty ledger
    sim.step()
    sim.check_state_dict(sim.state_dict())


def test_simulator_round_trip_continues_exactly(saved_sim_state):
    original = stepped(rounds=7)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    buf.seek(0)
    fresh = stepped(rounds=0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert_same(fresh.state_dict(), original.state_dict())
    for _ in range(5):
        assert torch.equal(fresh.step(), original.step())
        assert torch.equal(fresh.theta, original.theta)
    assert_same(fresh.state_dict(), original.state_dict())


def test_a_loaded_float64_state_is_cast_into_this_run():
    original = stepped(rounds=4)
    state = original.state_dict()
    state["theta"] = state["theta"].double()
    state["engine"]["workers"]["buffers"]["anchor"] = state["engine"]["workers"]["buffers"]["anchor"].double()
    fresh = stepped(rounds=0)
    fresh.load_state_dict(state)
    assert fresh.theta.dtype == torch.float32
    assert_same(fresh.state_dict(), original.state_dict())


def test_batchnorm_running_statistics_are_checked_too(monkeypatch):
    from sasg.models import MODELS

    def tiny_bn(shape, classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0], 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, classes))

    monkeypatch.setitem(MODELS, "tiny_bn", tiny_bn)
    saved = stepped(rounds=3, model="tiny_bn", workers=2).state_dict()
    sim = stepped(rounds=1, model="tiny_bn", workers=2)
    before = sim.state_dict()
    for path, value in (((("gradients", "worker_buffers", 1, "2.running_mean"), lambda t: t[:-1])),
                        (("gradients", "worker_buffers", 0, "2.num_batches_tracked"), lambda t: t.float())):
        with pytest.raises(ValueError, match=re.escape(repr(name_of(path)))):
            sim.load_state_dict(with_value(saved, path, value))
    path = ("gradients", "worker_buffers", 1, "2.running_var")
    with pytest.raises(ValueError, match=re.escape(repr(name_of(path)) + " is missing")):
        sim.load_state_dict(without(saved, path))
    assert_same(sim.state_dict(), before)
    sim.load_state_dict(saved)
    assert_same(sim.state_dict(), saved)


# ----- the round engine alone ----------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    ("server", "step_sq"), ("workers", "buffers", "anchor"), ("workers", "staleness"), ("ledger",),
    ("ledger", "num_workers"), ("generators",), ("transport",), ("transport", "payload_rounds"),
], ids=name_of)
def test_round_engine_refuses_a_part_missing_and_changes_nothing(saved_sim_state, path):
    engine = stepped(rounds=2).engine
    before = engine.state_dict()
    with pytest.raises(ValueError, match=re.escape(repr(name_of(path)))):
        engine.load_state_dict(without(saved_sim_state["engine"], path))
    assert_same(engine.state_dict(), before)


def test_round_engine_refuses_an_inconsistent_state_and_round_trips(saved_sim_state):
    engine = stepped(rounds=2).engine
    before = engine.state_dict()
    bad = with_value(saved_sim_state["engine"], ("server", "iteration"), 6)
    with pytest.raises(ValueError, match=r"'ledger' records 7 rounds but 'server.iteration' is 6"):
        engine.load_state_dict(bad)
    bad = with_value(saved_sim_state["engine"], ("ledger", "num_workers"), 2)
    with pytest.raises(ValueError, match=re.escape("'ledger.num_workers' is 2, expected 4")):
        engine.load_state_dict(bad)
    assert_same(engine.state_dict(), before)
    engine.load_state_dict(saved_sim_state["engine"])
    assert_same(engine.state_dict(), saved_sim_state["engine"])


def test_ledger_and_counters_load_whole_or_not_at_all():
    ledger = Ledger(num_workers=2)
    ledger.record(1, 64, 32, 0)
    before = ledger.state_dict()
    for bad in (without(before, ("bits_up",)), with_value(before, ("uploads",), [1, 2]),
                with_value(before, ("bits_down", 0), 1.5)):
        with pytest.raises(ValueError, match="state part 'ledger"):
            ledger.load_state_dict(bad)
        assert ledger.state_dict() == before
    counters = TransportCounters(rounds=3, flag_rounds=3)
    saved = counters.to_dict()
    with pytest.raises(ValueError, match="'transport.payload_rounds' is missing"):
        counters.load(without({**saved, "rounds": 9}, ("payload_rounds",)))
    with pytest.raises(ValueError, match="'transport.bogus' is not part"):
        counters.load({**saved, "rounds": 9, "bogus": 1})
    assert counters.to_dict() == saved
    # a state saved before the slots' padding counters existed loads, with none; a bad one does not
    older = without({**saved, "rounds": 9}, ("padding_bytes_sent",))
    older = without(older, ("padding_bytes_recv",))
    with pytest.raises(ValueError, match="padding_bytes_sent"):
        counters.load({**saved, "rounds": 9, "padding_bytes_sent": -1})
    assert counters.to_dict() == saved
    counters.load(older)
    assert counters.to_dict() == {**saved, "rounds": 9, "padding_bytes_sent": 0, "padding_bytes_recv": 0}


# ----- the SASG optimizer ---------------------------------------------------------------------------
def _tiny(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return model, closure


def _opt(model, **kw):
    return SASG(model.parameters(), **{**dict(lr=0.1, window=2, density=0.3, c=0.5), **kw})


def _trained(rounds):
    model, closure = _tiny()
    opt = _opt(model)
    for _ in range(rounds):
        opt.step(closure)
    return model, opt, closure


@pytest.fixture(scope="module")
def saved_opt_state():
    _, opt, _ = _trained(6)
    st = opt.state_dict()
    assert 0 < sum(st["sasg"]["ledger"]["uploads"]) < 6  # both uploads and skips
    return st


def _snapshot(model, opt):
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}


@pytest.mark.parametrize("path", [
    ("sasg",), ("sasg", "settings"), ("sasg", "server", "step_sq"), ("sasg", "workers", "buffers", "anchor"),
    ("sasg", "workers", "buffers", "error"), ("sasg", "workers", "staleness"), ("sasg", "server", "last"),
    ("sasg", "ledger"), ("sasg", "generators"), ("sasg", "transport"), ("param_groups",), ("state",),
], ids=name_of)
def test_optimizer_refuses_a_state_with_a_part_missing_and_changes_nothing(saved_opt_state, path):
    model, opt, _ = _trained(2)
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=re.escape(repr(name_of(path)))):
        opt.load_state_dict(without(saved_opt_state, path))
    assert_same(_snapshot(model, opt), before)


@pytest.mark.parametrize("path, value, why", [
    (("sasg", "workers", "buffers", "anchor"), lambda t: t[:, :-1], "shape"),
    (("sasg", "workers", "buffers", "error"), lambda t: torch.zeros(2, t.shape[1]), "shape"),
    (("sasg", "server", "step_sq"), lambda t: t[:0], "window"),
    (("sasg", "server", "last", "values"), lambda t: t[:, :-1], "shape"),
    (("sasg", "generators", 0), lambda t: torch.full_like(t, 255), "generator state"),
    (("sasg", "local_workers"), [1], "another rank"),
    (("sasg", "settings", "window"), 3, "other settings: window"),
    (("param_groups", 0, "lr"), -1.0, "lr must be a finite number"),
    (("param_groups", 0, "params"), [0, 1, 2], "entries"),
    (("param_groups",), lambda g: g * 2, "entries"),
], ids=lambda v: name_of(v) if isinstance(v, tuple) else None)
def test_optimizer_refuses_a_wrong_part_and_changes_nothing(saved_opt_state, path, value, why):
    model, opt, _ = _trained(2)
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=why) as err:
        opt.load_state_dict(with_value(saved_opt_state, path, value))
    if path != ("sasg", "settings", "window"):  # that one names the setting, as it always did
        assert repr(name_of(path)) in str(err.value)
    assert_same(_snapshot(model, opt), before)


def test_optimizer_round_trip_continues_exactly():
    model, opt, closure = _trained(6)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, _ = _tiny(seed=5)  # other initial weights, overwritten by the load
    model2.load_state_dict(saved["model"])
    opt2 = _opt(model2)
    opt2.load_state_dict(saved["opt"])
    assert_same(opt2.state_dict(), opt.state_dict())
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)  # _tiny()'s batch

    def on(m):
        def closure():
            loss = F.cross_entropy(m(xs), ys)
            loss.backward()
            return loss
        return closure

    for _ in range(5):
        assert torch.equal(opt.step(on(model)), opt2.step(on(model2)))
        for p, q in zip(model.parameters(), model2.parameters()):
            assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    assert_same(opt2.state_dict(), opt.state_dict())
    assert opt2.iteration == 11


def test_optimizer_checks_its_arguments():
    model, _ = _tiny()
    for kw, match in ((dict(seed=-1), "seed"), (dict(seed=2**32), "seed"), (dict(seed=1.5), "seed"),
                      (dict(broadcast_initial="no"), "broadcast_initial"), (dict(restore_buffers=[1]), "restore_buffers")):
        with pytest.raises(ValueError, match=match):
            _opt(model, **kw)
