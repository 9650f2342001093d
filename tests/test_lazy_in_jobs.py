"""Lazy rules in a practitioner's job: the "senders" aggregate and the real steps in the threshold.

* ``aggregate="senders"``: a round steps by its senders' messages scaled to M workers; a rule
  that never skips gives the "last" aggregate's round bit for bit; the skippers' slots are empty.
* The threshold sums the parameters' real steps: in the DDP hook (momentum, AdamW in Adam's
  metric or Euclidean) and in ``sasg.optim.SASG`` with momentum; with the defaults it is the
  engine's own step, as before.
* ``aggregate="rotating"``: "senders", and worker k mod M uploads in round k, so no round is
  empty; resumes exactly; refused for rules that cannot take turns.
* The hook's defaults: "rotating" for lazy rules whose server keeps messages ("senders" under
  Adam/AdamW, which coasts through an empty round), "last" otherwise.
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
import torch.nn.functional as F

from sasg import Simulator
from sasg.config import ConfigError
from sasg.core.aggregate import check_aggregate
from sasg.ddp.rules import hook_algorithm

from conftest import small_config
from test_ddp_optimizers import _batch, _model
from test_distributed import spawn, synth

WORLD = 2
STEPS = 8
COAST_STEPS = 14


# ----- the "senders" aggregate ----------------------------------------------------------------------


def _run(cfg, algo, steps=12):
    sim = Simulator(cfg, algo, synth())
    for _ in range(steps):
        sim.step()
    return sim


def test_with_a_rule_that_never_skips_senders_is_last_bit_for_bit():
    last = _run(small_config(aggregate="last"), "sparse")
    senders = _run(small_config(aggregate="senders"), "sparse")
    assert torch.equal(last.theta, senders.theta)
    assert last.ledger.uploads == senders.ledger.uploads
    assert last.ledger.bits_up == senders.ledger.bits_up


def test_senders_steps_by_the_round_messages_scaled_to_m_workers():
    cfg = small_config(aggregate="senders", threshold_scale=0.5)
    sim = Simulator(cfg, "wk1+topk", synth())
    M, partial, nobody = cfg.workers, 0, 0
    prev_step, prev_last = None, None
    for _ in range(20):
        before = sim.theta.clone()
        flags = sim.step()
        n = int(flags.sum())
        step = sim.engine.last_step
        last = sim.server.last.to_dense()
        if n == 0:  # nothing changes on the server; the latest senders' mean is stepped by again
            assert torch.equal(last, prev_last) and torch.equal(step, prev_step)
            nobody += 1
        else:
            for m in range(M):
                if not flags[m]:
                    assert not last[m].any(), "a skipper's slot is emptied"
            torch.testing.assert_close(step, last.sum(0) * (M / n), rtol=1e-6, atol=1e-7)
            partial += n < M
        assert torch.equal(sim.theta, before - step)
        prev_step, prev_last = step.clone(), last
    assert partial > 0 and nobody > 0, "rounds with some senders and with none"
    # ... and the paper's aggregate, on the same rule, is another trajectory
    assert not torch.equal(_run(small_config(threshold_scale=0.5), "wk1+topk", 20).theta, sim.theta)


def test_senders_resumes_exactly_after_a_round_nobody_sent_in():
    cfg = small_config(aggregate="senders", threshold_scale=0.5)
    whole = _run(cfg, "wk1+topk", 20)
    first = _run(cfg, "wk1+topk", 4)  # round 3: nobody sent (see the test above)
    assert first.ledger.uploads[-1] == 0
    second = Simulator(cfg, "wk1+topk", synth())
    second.load_state_dict(first.state_dict())
    for _ in range(16):
        second.step()
    assert torch.equal(second.theta, whole.theta)


def test_rotating_has_a_sender_every_round_and_is_senders_otherwise():
    """Worker k mod M uploads in round k (past the window's warm-up every worker sends anyway);
    the others follow the rule; the step is the senders' mean scaled to M, as under "senders"."""
    cfg = small_config(aggregate="rotating", threshold_scale=0.5)
    sim = Simulator(cfg, "wk1+topk", synth())
    M, partial = cfg.workers, 0
    for k in range(20):
        before = sim.theta.clone()
        flags = sim.step()
        n = int(flags.sum())
        assert flags[k % M], (k, flags)
        last = sim.server.last.to_dense()
        torch.testing.assert_close(sim.engine.last_step, last.sum(0) * (M / n), rtol=1e-6, atol=1e-7)
        assert torch.equal(sim.theta, before - sim.engine.last_step)
        partial += n < M
    assert partial > 0, "the others still skip"
    # under "senders" the same rule had rounds nobody sent in (test_senders_steps_by_...)
    assert 0 in _run(small_config(aggregate="senders", threshold_scale=0.5), "wk1+topk", 20).ledger.uploads


@pytest.mark.parametrize("algo", ["wk1+topk", "ps+topk", "sasg", "wk1-plain+topk"])
def test_rotating_resumes_exactly(algo):
    cfg = small_config(aggregate="rotating", threshold_scale=0.5)
    whole = _run(cfg, algo, 16)
    first = _run(cfg, algo, 7)
    second = Simulator(cfg, algo, synth())
    second.load_state_dict(first.state_dict())
    for _ in range(9):
        second.step()
    assert torch.equal(second.theta, whole.theta)
    assert second.ledger.uploads == whole.ledger.uploads


def test_rotating_needs_a_rule_that_takes_turns():
    with pytest.raises(ConfigError, match="ef21.*use aggregate 'last'"):
        small_config(algorithms=("clag+topk",), aggregate="rotating")
    assert small_config(algorithms=("sparse",), aggregate="rotating").aggregate == "rotating"  # never skips anyway


def test_aggregate_is_checked_and_named_in_errors():
    assert check_aggregate(" Senders ") == "senders"
    with pytest.raises(ValueError, match="aggregate must be 'last'.*or 'senders'.*or 'rotating'"):
        check_aggregate("mean")
    with pytest.raises(ConfigError, match="aggregate must be .*e.g. --aggregate senders"):
        small_config(aggregate="mean")
    with pytest.raises(ConfigError, match="ef21.*use aggregate 'last'"):
        small_config(algorithms=("clag+topk",), aggregate="senders")
    assert small_config(aggregate="SENDERS").aggregate == "senders"


def test_the_cli_takes_aggregate_shared_and_per_algorithm():
    from sasg.cli.main import add_training_flags, config_from_args

    p = argparse.ArgumentParser()
    p.add_argument("--algos", nargs="+", default=["sasg", "sparse"])
    add_training_flags(p)
    args = p.parse_args(["--aggregate", "last,sasg=senders", "--dataset", "synthetic"])
    args.command, args.algo = "compare", None
    cfg = config_from_args(args).validate()
    assert cfg.settings_for("sasg").aggregate == "senders"
    assert cfg.settings_for("sparse").aggregate == "last"
    with pytest.raises(SystemExit):
        p.parse_args(["--aggregate", "mean"])


def test_the_hook_defaults_to_rotating_for_lazy_rules_that_keep_messages():
    assert hook_algorithm("wk1+topk").settings.aggregate == "rotating"
    assert hook_algorithm("sasg").settings.aggregate == "rotating"
    assert hook_algorithm("ps+topk").settings.aggregate == "rotating"
    assert hook_algorithm("wk1+topk", adam=True).settings.aggregate == "senders"  # Adam coasts instead
    assert hook_algorithm("always+topk").settings.aggregate == "last"
    assert hook_algorithm("clag+topk").settings.aggregate == "last"  # ef21's server keeps estimates
    assert hook_algorithm("wk1+topk", aggregate="last").settings.aggregate == "last"


# ----- the real steps in the threshold ----------------------------------------------------------------


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _adam_metric(opt, model) -> torch.Tensor:
    """sqrt(v_hat) + eps of every entry, from the optimizer's state now."""
    g = opt.param_groups[0]
    out = []
    for p in model.parameters():
        s = opt.state[p]
        out.append(((s["exp_avg_sq"] / (1 - g["betas"][1] ** float(s["step"]))).sqrt() + g["eps"]).reshape(-1))
    return torch.cat(out)


def _hook_job(rank, world, folder):
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    out = {}
    cases = {"momentum": dict(), "momentum-plain": dict(momentum_correction=False), "adamw": dict(),
             "adamw-euclidean": dict(step_metric="euclidean")}
    for name, extra in cases.items():
        model = _model()
        ddp = DistributedDataParallel(model)
        if name.startswith("momentum"):
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        else:
            opt = torch.optim.AdamW(ddp.parameters(), lr=0.01)
        state = sasg.ddp.register(ddp, "wk1+topk", codec="paper32", density=0.3, optimizer=opt, warmup=2,
                                  **extra)
        thetas, sqs, metrics = [_flat(model)], [], []
        for step in range(STEPS):
            x, y = _batch(step, rank)
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            if step >= 1:  # this round put the real step of the round before in the window
                sqs.append(float(state.engine.server.step_sq[-2]))
            opt.step()
            thetas.append(_flat(model))
            metrics.append(_adam_metric(opt, model) if name == "adamw" else None)
        out[name] = {"thetas": thetas, "sqs": sqs, "metrics": metrics}
    # Rounds nobody sends in: a short window and a high threshold (small c) make both ranks skip.
    # (aggregate "senders": the hook's default under AdamW; given for SGD, whose default takes turns.)
    saved = None
    for name in ("repeat-momentum", "coast-adamw", "repeat-sgd", "rotating-momentum"):
        model = _model()
        ddp = DistributedDataParallel(model)
        opt = (torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9) if name.endswith("momentum")
               else torch.optim.AdamW(ddp.parameters(), lr=0.01) if name == "coast-adamw"
               else torch.optim.SGD(ddp.parameters(), lr=0.1))
        extra = {"aggregate": "senders"} if name.startswith("repeat") else {}
        state = sasg.ddp.register(ddp, "wk1+topk", codec="paper32", density=0.3, optimizer=opt, warmup=0,
                                  window=2, threshold_scale=1e-4, **extra)
        grads, uploads, sent = [], [], []
        for step in range(COAST_STEPS):
            x, y = _batch(step, rank)
            opt.zero_grad()
            before = state.bits_by_rank[rank] if state.engine is not None else 0
            F.cross_entropy(ddp(x), y).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
            uploads.append(int(state.engine.ledger.uploads[-1]))
            sent.append(state.bits_by_rank[rank] > before)
            opt.step()
        out[name] = {"grads": grads, "uploads": uploads, "sent": sent,
                     "aggregate": state.spec.settings.aggregate}
        saved = state.state_dict() if name == "repeat-momentum" else saved
    # A state saved under "senders" (an earlier default) loads only into a hook registered so.
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh = sasg.ddp.register(DistributedDataParallel(model), "wk1+topk", codec="paper32", density=0.3,
                              optimizer=opt, warmup=0, window=2, threshold_scale=1e-4)
    try:
        fresh.load_state_dict(saved)
        out["resume_error"] = None
    except ValueError as e:
        out["resume_error"] = str(e)
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def hook_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy_in_jobs")
    spawn(_hook_job, WORLD, str(folder), timeout=120.0)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["momentum", "momentum-plain", "adamw", "adamw-euclidean"])
def test_the_hook_threshold_sums_the_parameters_real_steps(hook_ranks, name):
    """Round k's window entry, once round k+1 has started, is ||theta^{k+1} - theta^k||^2 as the
    optimizer made it (momentum with weight decay; AdamW): plain under DGC's correction (wk1
    compares velocities), in Adam's metric under Adam, times 1 - mu for momentum without DGC."""
    for out in hook_ranks:
        got = out[name]
        thetas = got["thetas"]
        assert len(got["sqs"]) == STEPS - 1
        for k, sq in enumerate(got["sqs"], start=1):  # measured at round k's start: theta^k - theta^(k-1)
            diff = thetas[k].double() - thetas[k - 1].double()
            if name == "adamw":  # Adam's metric after the step that made theta^k
                diff = diff * got["metrics"][k - 1].double()
            if name == "momentum-plain":  # velocity steps against a rule comparing gradients: x (1 - mu)
                diff = diff * (1 - 0.9)
            assert sq == pytest.approx(float(diff @ diff), rel=1e-12), (name, k)
    # Adam's metric is another number than the Euclidean step (it is in gradient units)
    auto, euclid = hook_ranks[0]["adamw"], hook_ranks[0]["adamw-euclidean"]
    diff = auto["thetas"][1].double() - auto["thetas"][0].double()
    assert auto["sqs"][0] != pytest.approx(float(diff @ diff), rel=1e-2)


@pytest.mark.parametrize("name", ["repeat-momentum", "coast-adamw", "repeat-sgd"])
def test_a_round_nobody_sends_in_lets_adam_coast(hook_ranks, name):
    """AdamW gets a zero gradient in a round no rank sent in (it coasts on its moments); plain SGD
    gets the latest senders' aggregate again (the engine's "senders" repeat), and momentum SGD
    under DGC's correction the gradient that makes its step that aggregate again (not zero)."""
    for out in hook_ranks:
        got = out[name]
        empty = [k for k, n in enumerate(got["uploads"]) if n == 0]
        assert empty and len(empty) < len(got["uploads"]), got["uploads"]  # the case happened, not always
        for k, g in enumerate(got["grads"]):
            if k in empty and name == "coast-adamw":
                assert not g.any(), (name, k)
            elif k in empty and name == "repeat-sgd":  # the aggregate of the latest round anyone sent in
                before = max(j for j in range(k) if j not in empty)
                assert torch.equal(g, got["grads"][before]), (name, k)
            else:
                assert g.any(), (name, k)


def test_by_default_the_hook_ranks_take_turns_under_momentum_sgd(hook_ranks):
    """The hook's default for a lazy rule under momentum SGD: rank k mod M sends in round k, so no
    round is empty (the same rule and threshold as "repeat-momentum", which has empty rounds), and
    the other rank still skips."""
    for rank, out in enumerate(hook_ranks):
        got = out["rotating-momentum"]
        assert got["aggregate"] == "rotating" and out["coast-adamw"]["aggregate"] == "senders"
        assert all(n > 0 for n in got["uploads"]), got["uploads"]
        assert all(sent for k, sent in enumerate(got["sent"]) if k % WORLD == rank)
        assert not all(got["sent"]), "the rank skips out of its turn"
        assert 0 in out["repeat-momentum"]["uploads"]
        assert "saved with other settings: aggregate 'senders' (saved) vs 'rotating'" in out["resume_error"]
        assert "register the hook as it was saved (aggregate='senders')" in out["resume_error"]


def test_the_optimizer_threshold_sums_its_real_steps_with_momentum():
    from sasg.optim import SASG

    for kw, real in ((dict(momentum=0.9, weight_decay=0.01), True), (dict(), False)):
        model = _model()
        opt = SASG(model.parameters(), lr=0.1, density=0.3, window=3, algorithm="wk1+topk", **kw)
        for step in range(6):
            x, y = _batch(step, 0)
            before = _flat(model)

            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            diff = (_flat(model).double() - before.double())
            last = float(opt.engine.server.step_sq[-1])
            s = opt.engine.last_step
            if real:  # momentum and decay moved theta by something else than the aggregate
                assert last == pytest.approx(float(diff @ diff), rel=1e-12)
            else:  # the defaults: the engine's own step, bit for bit as before
                assert last == float(torch.dot(s, s).item())
