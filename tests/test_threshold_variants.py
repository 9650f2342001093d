"""The lazy threshold's two variants for matching the authors' published numbers:
``--window-sum {D-1,D}`` (how many recent server steps thr_k sums) and ``--threshold-lr-lag
EPOCHS`` (the lr thr_k divides by lags the schedule). Defaults change nothing, bit for bit."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sasg import ConfigError, RunConfig, Simulator
from sasg.cli.main import build_parser, config_from_args, main
from sasg.core import AlgorithmSettings, Layout, lazy_threshold, make_algorithm
from sasg.core.triggers import PS, WK1, WK2
from sasg.engine import InProcessTransport, RoundEngine
from sasg.engine.round import Round
from sasg.optim import SASG
from sasg.schedule import lagged, step_decay

from conftest import small_config

RULES = (WK2, WK1, PS)
STEPS = torch.tensor([2.0, 1.0, 4.0, 0.5], dtype=torch.float64)  # oldest first


def fake_round(step_sq: torch.Tensor, lr: float, threshold_lr: float | None = None, M: int = 5):
    """What LazyRule.threshold reads of a round."""
    return SimpleNamespace(server=SimpleNamespace(step_sq=step_sq), num_workers=M,
                           lr=lr, threshold_lr=lr if threshold_lr is None else threshold_lr)


# ----- the threshold itself ----------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_default_threshold_sums_d_minus_1_steps_over_the_rounds_lr(rule):
    r = rule(4, 2.0)
    assert (r.window_sum, r.history) == ("D-1", 3)
    assert r.history == rule(4, 2.0, "D-1").history == rule(4, 2.0, window_sum="d - 1").history
    # the last D-1 = 3 steps: (1 + 4 + 0.5) / (c M lr) = 5.5 / (2 * 5 * 0.1)
    thr = r.threshold(fake_round(STEPS[1:], lr=0.1))
    assert thr == lazy_threshold(STEPS[1:], 2.0, 5, 0.1) == pytest.approx(5.5, rel=1e-15)
    assert r.describe()["window_sum"] == "D-1"


@pytest.mark.parametrize("rule", RULES)
def test_window_sum_d_sums_the_last_d_steps(rule):
    r = rule(4, 2.0, "D")
    assert (r.window_sum, r.history) == ("D", 4)
    # all D = 4 steps: (2 + 1 + 4 + 0.5) / (2 * 5 * 0.1) = 7.5
    assert r.threshold(fake_round(STEPS, lr=0.1)) == pytest.approx(7.5, rel=1e-15)


def test_server_keeps_d_or_d_minus_1_steps():
    layout = Layout([("w", (3,))])
    for window_sum, kept in (("D-1", [3.0, 4.0, 5.0]), ("D", [2.0, 3.0, 4.0, 5.0])):
        engine = RoundEngine(make_algorithm("lasg", layout, window=4, c=2.0, window_sum=window_sum),
                             InProcessTransport(5))
        for s in (1.0, 2.0, 3.0, 4.0, 5.0):
            engine.server.push_step(s)
        assert engine.server.step_sq.tolist() == kept
        rnd = fake_round(engine.server.step_sq, lr=0.1)
        assert engine.algorithm.trigger.threshold(rnd) == pytest.approx(sum(kept) / (2.0 * 5 * 0.1), rel=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_threshold_divides_by_the_threshold_lr_not_the_round_lr(rule):
    r = rule(4, 2.0)
    assert r.threshold(fake_round(STEPS[1:], lr=0.01, threshold_lr=0.1)) == pytest.approx(5.5, rel=1e-15)


def test_round_threshold_lr_defaults_to_its_lr():
    args = (7, 0.3, 5, [0], None, None, None, (), None, None, None)
    assert Round(*args).threshold_lr == 0.3
    assert Round(*args, threshold_lr=0.03).threshold_lr == 0.03


def test_lagged_schedule():
    lr_at = step_decay(1.0, (1,), 0.1, rounds_per_epoch=10)
    assert lagged(lr_at, 0, 10) is lr_at
    late = lagged(lr_at, 1, 10)
    assert [late(k) for k in (0, 9, 10, 19, 20, 21)] == [1.0, 1.0, 1.0, 1.0, lr_at(10), lr_at(11)]
    assert [lagged(lr_at, 0.4, 10)(k) for k in (13, 14)] == [1.0, lr_at(10)]  # 0.4 epoch = 4 rounds


# ----- in a run: the simulator (and so sasg launch, whose ranks are simulators) --------------------
def record_rounds(sim: Simulator) -> list[tuple]:
    """Every round the trigger sees: (k, lr, threshold_lr, the rule's thr_k, squared steps kept)."""
    seen: list[tuple] = []
    trigger = sim.algorithm.trigger
    decide = trigger.decide

    def recorded(rnd):
        seen.append((rnd.iteration, rnd.lr, rnd.threshold_lr, trigger.threshold(rnd), rnd.server.step_sq.clone()))
        return decide(rnd)

    trigger.decide = recorded
    return seen


DECAY = dict(lr=0.2, lr_decay_epochs=(1,), lr_decay_factor=0.1, epochs=3)  # 12 rounds an epoch


@pytest.mark.parametrize("algo,lag,seen_at", [
    ("sasg", 0, 12), ("sasg", 1, 24), ("sasg", 0.5, 18), ("wk1+topk", 1, 24), ("ps+identity", 1, 24),
])
def test_lag_makes_the_threshold_use_the_lr_of_lag_epochs_earlier(synth, algo, lag, seen_at):
    cfg = small_config(**DECAY, threshold_lr_lag=lag)
    sim = Simulator(cfg, algo, synth)
    assert sim.sampler.rounds_per_epoch == 12  # 240 samples / (4 workers x batch 5)
    seen = record_rounds(sim)
    for _ in range(seen_at + 2):
        sim.step()
    M, c = cfg.workers, cfg.threshold_scale
    for k, lr, thr_lr, thr, step_sq in seen:
        assert lr == (0.2 if k < 12 else pytest.approx(0.02, rel=1e-12))  # the update's lr never lags
        assert thr_lr == (0.2 if k < seen_at else pytest.approx(0.02, rel=1e-12)), k
        assert step_sq.numel() == cfg.window - 1
        assert thr == float(step_sq.sum()) / (c * M * thr_lr)
    by_k = {k: thr_lr for k, _, thr_lr, _, _ in seen}
    assert by_k[seen_at - 1] == 0.2 and by_k[seen_at] == pytest.approx(0.02)  # around the (lagged) decay


def test_window_sum_d_in_a_run(synth):
    cfg = small_config(window_sum="D")
    sim = Simulator(cfg, "sasg", synth)
    seen = record_rounds(sim)
    for _ in range(8):
        sim.step()
    assert sim.server.step_sq.numel() == cfg.window
    for k, lr, _, thr, step_sq in seen:
        assert step_sq.numel() == cfg.window
        assert thr == float(step_sq.sum()) / (cfg.threshold_scale * cfg.workers * lr)


def final(cfg, algo, synth, rounds=20):
    sim = Simulator(cfg, algo, synth)
    for _ in range(rounds):
        sim.step()
    return sim.theta.clone(), list(sim.ledger.uploads)


@pytest.mark.parametrize("algo", ["sasg", "ps+identity"])
def test_defaults_given_explicitly_are_bit_identical(synth, algo):
    plain = final(small_config(**DECAY), algo, synth, 16)  # the decay at round 12 included
    explicit = final(small_config(**DECAY, window_sum="D-1", threshold_lr_lag=0), algo, synth, 16)
    assert torch.equal(plain[0], explicit[0]) and plain[1] == explicit[1]
    if algo == "sasg":  # without a schedule a lag changes nothing either
        assert torch.equal(final(small_config(threshold_lr_lag=1), algo, synth, 14)[0],
                           final(small_config(), algo, synth, 14)[0])


def test_a_lag_changes_a_run_with_a_decay(synth):
    # ps at this c skips on the fixture; after the decay the un-lagged threshold (steps and lr
    # both 10x smaller) lets it keep skipping, the lagged one (lr still 0.2) is 10x lower.
    plain = final(small_config(**DECAY, threshold_scale=0.02), "ps+identity", synth, 24)
    lag = final(small_config(**DECAY, threshold_scale=0.02, threshold_lr_lag=1), "ps+identity", synth, 24)
    assert plain[1][:12] == lag[1][:12] and sum(lag[1][12:]) > sum(plain[1][12:])


def test_per_algorithm_values_reach_each_algorithm(synth):
    cfg = small_config(algorithms=("sasg", "lasg"), **DECAY,
                       per_algorithm={"sasg": {"threshold_lr_lag": 1, "window_sum": "d"}})
    assert cfg.per_algorithm == {"sasg": {"threshold_lr_lag": 1.0, "window_sum": "D"}}  # as config.json keeps them
    sasg, lasg = Simulator(cfg, "sasg", synth), Simulator(cfg, "lasg", synth)
    assert sasg.server.step_sq.numel() == cfg.window and lasg.server.step_sq.numel() == cfg.window - 1
    assert sasg.threshold_lr_at(23) == 0.2 and lasg.threshold_lr_at(23) == pytest.approx(0.02)


# ----- the command line ---------------------------------------------------------------------------
def parsed(*argv) -> RunConfig:
    return config_from_args(build_parser().parse_args(list(argv))).validate()


def test_flags_parse_shared_and_per_algorithm():
    cfg = parsed("compare", "--algos", "sgd,sasg,lasg", "--window-sum", "sasg=d,D-1",
                 "--threshold-lr-lag", "0.4,lasg=1")
    assert (cfg.window_sum, cfg.threshold_lr_lag) == ("D-1", 0.4)
    assert cfg.per_algorithm == {"sasg": {"window_sum": "D"}, "lasg": {"threshold_lr_lag": 1.0}}
    assert (cfg.settings_for("sasg").window_sum, cfg.settings_for("sasg").threshold_lr_lag) == ("D", 0.4)
    assert (cfg.settings_for("lasg").window_sum, cfg.settings_for("lasg").threshold_lr_lag) == ("D-1", 1.0)
    run = parsed("run", "--algo", "ps+topk", "--window-sum", "D", "--threshold-lr-lag", "1")
    assert (run.window_sum, run.threshold_lr_lag) == ("D", 1.0)
    assert (parsed("run", "--algo", "sasg").window_sum, parsed("run", "--algo", "sasg").threshold_lr_lag) == ("D-1", 0)


@pytest.mark.parametrize("command", [["run", "--algo", "sasg"], ["launch", "--algo", "sasg", "--nproc-per-node", "2"]])
def test_resolved_config_records_them(capsys, command):
    assert main([*command, "--window-sum", "D", "--threshold-lr-lag", "0.4", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["window_sum"], out["threshold_lr_lag"]) == ("D", 0.4)
    assert main(["run", "--algo", "sasg", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["window_sum"], out["threshold_lr_lag"]) == ("D-1", 0.0)


@pytest.mark.parametrize("flags,says", [
    (["--window-sum", "D+1"], "argument --window-sum: 'D+1' is neither D-1 nor D"),
    (["--window-sum", "sasg=2"], "argument --window-sum: '2' is neither D-1 nor D"),
    (["--threshold-lr-lag", "one"], "argument --threshold-lr-lag: must be a number, got 'one'"),
    (["--threshold-lr-lag", "-1"], "threshold lr lag must be a finite number of epochs >= 0, got -1.0; e.g. --threshold-lr-lag 1"),
    (["--threshold-lr-lag", "nan"], "threshold lr lag must be a finite number of epochs >= 0, got nan"),
    (["--threshold-lr-lag", "inf"], "threshold lr lag must be a finite number of epochs >= 0, got inf"),
    (["--threshold-lr-lag", "sasg=-0.5"], "threshold lr lag must be a finite number of epochs >= 0, got -0.5"),
    (["--threshold-lr-lag", "1e9"], "threshold lr lag must be at most 1e+08 epochs, got 1e+09; e.g. --threshold-lr-lag 1"),
    (["--threshold-lr-lag", "lasg=1"], "--threshold-lr-lag lasg=1.0: 'lasg' is not among the algorithms of this run"),
])
def test_bad_values_are_one_line_errors(capsys, flags, says):
    try:  # argparse exits; a setting out of range is a ConfigError that main turns into exit code 2
        code = main(["compare", "--algos", "sgd,sasg", *flags, "--dry-run"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


@pytest.mark.parametrize("values,says", [
    (dict(window_sum="D-2"), "window sum must be 'D-1' or 'D'"),
    (dict(window_sum=1), "window sum must be 'D-1' or 'D'"),
    (dict(threshold_lr_lag=True), "threshold lr lag must be a finite number"),
    (dict(threshold_lr_lag="1"), "threshold lr lag must be a finite number"),
    (dict(per_algorithm={"sasg": {"window_sum": "DD"}}), "window sum must be 'D-1' or 'D'"),
])
def test_bad_values_in_a_config(values, says):
    with pytest.raises(ConfigError, match=says) as e:
        RunConfig(algorithms=("sasg",), **values).validate()
    assert "\n" not in str(e.value)
    if "per_algorithm" not in values:  # the same check where the optimizer and the spec take them
        with pytest.raises(ValueError, match=says):
            AlgorithmSettings(**values).validate()


# ----- the optimizer: a lag in steps ---------------------------------------------------------------
def tiny():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    with torch.random.fork_rng():  # the model's init draws from the global RNG: keep it private
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return model, closure


def optimizer_rounds(opt, closure, lrs) -> list[float]:
    seen = []
    decide = opt.algorithm.trigger.decide

    def recorded(rnd):
        seen.append(rnd.threshold_lr)
        return decide(rnd)

    opt.algorithm.trigger.decide = recorded
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.step(closure)
    return seen


def test_optimizer_lag_counts_steps_and_survives_a_checkpoint():
    lrs = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.02, 0.02, 0.02]
    model, closure = tiny()
    opt = SASG(model.parameters(), lr=0.1, window=2, threshold_lr_lag=2)
    # the lr of step max(0, k - 2)
    assert optimizer_rounds(opt, closure, lrs) == [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.02]
    model, closure = tiny()
    first = SASG(model.parameters(), lr=0.1, window=2, threshold_lr_lag=2)
    optimizer_rounds(first, closure, lrs[:4])
    saved = first.state_dict()
    assert saved["sasg"]["settings"]["threshold_lr_lag"] == 2 and saved["sasg"]["threshold_lrs"]
    model2, closure2 = tiny()
    model2.load_state_dict(model.state_dict())
    second = SASG(model2.parameters(), lr=0.1, window=2, threshold_lr_lag=2)
    second.load_state_dict(saved)
    assert optimizer_rounds(second, closure2, lrs[4:]) == [0.1, 0.05, 0.05, 0.05, 0.02]
    other = SASG(tiny()[0].parameters(), lr=0.1, window=2, threshold_lr_lag=3)
    with pytest.raises(ValueError, match="saved with other settings: threshold_lr_lag 2 \\(saved\\) vs 3"):
        other.load_state_dict(saved)


def test_optimizer_defaults_are_bit_identical_and_window_sum_d():
    model_a, closure_a = tiny()
    model_b, closure_b = tiny()
    a = SASG(model_a.parameters(), lr=0.1, window=2, c=0.5)
    b = SASG(model_b.parameters(), lr=0.1, window=2, c=0.5, window_sum="D-1", threshold_lr_lag=0)
    for lr in (0.1, 0.1, 0.05, 0.05, 0.05, 0.05):
        for opt, closure in ((a, closure_a), (b, closure_b)):
            opt.param_groups[0]["lr"] = lr
            opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    assert a.ledger.uploads == b.ledger.uploads
    state = a.state_dict()
    assert "threshold_lrs" not in state["sasg"]
    assert state["sasg"]["settings"] == {"density": 0.01, "window": 2, "c": 0.5, "window_sum": "D-1",
                                         "threshold_lr_lag": 0, "tensor_policy": "all", "warmup": 0,
                                         "momentum_correction": False, "aggregate": "last"}
    for key in ("window_sum", "threshold_lr_lag", "tensor_policy", "warmup", "momentum_correction"):  # saved before they existed
        del state["sasg"]["settings"][key]
    b.load_state_dict(state)
    d = SASG(tiny()[0].parameters(), lr=0.1, window=2, c=0.5, window_sum="D")
    assert d.engine.server.step_sq.numel() == 2
    with pytest.raises(ValueError, match="saved with other settings: window_sum D-1 \\(saved\\) vs D"):
        d.load_state_dict(a.state_dict())


@pytest.mark.parametrize("kw,says", [
    (dict(threshold_lr_lag=-1), r"threshold_lr_lag must be an integer number of optimizer steps from 0 to 100000000, got -1; e\.g\. threshold_lr_lag=len\(loader\)"),
    (dict(threshold_lr_lag=1.5), "threshold_lr_lag must be an integer number of optimizer steps from 0 to 100000000, got 1.5"),
    (dict(threshold_lr_lag=True), "threshold_lr_lag must be an integer number of optimizer steps from 0 to 100000000, got True"),
    (dict(window_sum="D+1"), "window sum must be 'D-1' or 'D'"),
])
def test_optimizer_refuses_bad_values(kw, says):
    with pytest.raises(ValueError, match=says):
        SASG(tiny()[0].parameters(), lr=0.1, **kw)
