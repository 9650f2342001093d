"""The DDP communication hook (sasg.ddp) in real 2-process gloo jobs on the CPU.

One spawned job runs every scenario (one process-group start-up for all of them) and leaves
each rank's results in files; the tests below read them:

* the hook with top-k + error feedback and plain SGD follows the simulator for 20 steps (also
  with the lazy rules wk1 and ps: same skips, so their threshold has the simulator's scale) at
  lr 0.2, to float32 rounding; at a power-of-two lr every member that runs in a hook (top-k,
  random-k, global top-k, DGC, QSGD, sign, TernGrad, PowerSGD, EF21, CLAG, wk1, ps), each under a
  codec of its kind, gives the simulator's numbers bit for bit;
* checkpoint -> fresh model, optimizer and hook -> continue equals an uninterrupted run;
* ``sasg`` (wk2) follows the simulator too, its second gradient given by the loop
  (``state.second_gradient``); a loop that does not give it gets a message saying how;
* a lossy codec (rice+sign) trains and the bits on the ledger are 8 x the bytes handed over;
* under bf16 autocast (and with bf16 parameters) the error memory stays fp32 and the loss falls;
* gradient accumulation with ``no_sync`` gives the step of the whole batch;
* ``start_iter`` rounds are DDP's plain all-reduce, then the compressed rounds begin.

The examples (examples/ddp_hook.py under torchrun; examples/lightning_ddp.py when Lightning
is installed) run briefly at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sasg import Simulator
from sasg.core.layout import Layout
from sasg.ddp import HookState, register

from conftest import small_config
from test_distributed import spawn, synth

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
STEPS = 20
ALGO = "always+topk"  # the alias `sparse`: top-k per tensor + error feedback, every round
LAZY = ("wk1+topk", "ps+topk")  # lazy rules without a second gradient: their threshold needs the lr
SECOND = "sasg"  # wk2+topk: the loop hands the hook the second gradient (HookState.second_gradient)
# Every member that runs in a hook, each with a codec of its kind (qsgd's natural
# elias, the sign and ternary value formats, Golomb-Rice indices), at an lr that is a power of two:
# the hook's messages are the simulator's divided by the lr, which is then exact in floating point.
FAMILY = {"always+randomk": "paper32", "always+globaltopk": "paper32", "always+dgc": "paper32",
          "always+qsgd": "elias", "always+sign": "sign", "always+terngrad": "ternary",
          "always+powersgd": "paper32", "always+identity+ef21": "paper32", "always+topk+ef21": "rice+sign",
          "clag+topk": "rice+sign", "wk1+topk": "rice+int8", "always+topk": "paper32", "ps+topk": "paper32",
          "wk2+topk": "rice+fp32"}


def _family_config(algo: str, world: int):
    # clag skips in this setting with c = 0.5 (at the default 2 it never does)
    return small_config(workers=world, codec=FAMILY[algo], lr=0.25,
                        threshold_scale=0.5 if algo.startswith("clag") else 2.0)


def _batches(cfg, data, rank):
    """Rank ``rank``'s minibatches: exactly simulated worker ``rank``'s (same partition generator,
    same per-worker sampler stream)."""
    from sasg.data import WorkerSampler, make_partition

    shards = make_partition(cfg.partition, data.train.y, WORLD, torch.Generator().manual_seed(cfg.seed),
                            beta=cfg.beta, shards_per_worker=cfg.shards_per_worker, min_size=cfg.batch_size)
    sampler = WorkerSampler(shards, cfg.batch_size, cfg.seed)
    return sampler, lambda: sampler.next()[rank]


def _ddp_model(cfg, data, seed=None, dtype=torch.float32):
    from torch.nn.parallel import DistributedDataParallel

    from sasg.models import build_model

    model = build_model(cfg.model, data.sample_shape, data.num_classes, cfg.seed if seed is None else seed)
    model.to(dtype)  # before DDP wraps it: DDP sizes its buckets for the parameters' dtype
    return model, DistributedDataParallel(model)


def _flat(model) -> torch.Tensor:
    return Layout.from_module(model).flatten(dict(model.named_parameters())).detach().clone()


def _train(ddp, opt, next_idx, data, steps, autocast=None, state=None):
    """``steps`` steps; with the hook's ``state``, the loop also offers it the second gradient (a
    rule that needs none ignores it)."""
    for _ in range(steps):
        idx = next_idx()
        x, y = data.train.x[idx], data.train.y[idx]
        opt.zero_grad()
        if state is not None:
            state.second_gradient(lambda m: F.cross_entropy(m(x), y))
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()


def _full_loss(model, data) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(data.train.x.to(next(model.parameters()).dtype)).float(), data.train.y))


# ----- the scenarios, run in each rank ------------------------------------------------------------


def _hook_run(rank, cfg, data, algo):
    """``STEPS`` steps of plain SGD with the hook for ``algo`` under ``cfg``: what the tests compare."""
    model, ddp = _ddp_model(cfg, data)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    # cfg's tensor policy, warm-up and aggregate, as the simulator runs them (the paper's: all, 0, last)
    state = register(ddp, algo, codec=cfg.codec, density=cfg.density, window=cfg.window,
                     threshold_scale=cfg.threshold_scale, seed=cfg.seed, lr=opt, tensor_policy=cfg.tensor_policy,
                     warmup=cfg.warmup, aggregate=cfg.aggregate)
    _train(ddp, opt, _batches(cfg, data, rank)[1], data, STEPS, state=state)
    error = state.error
    return {"theta": _flat(model), "error": None if error is None else error.clone(),
            "ledger": state.ledger.state_dict(), "bits_by_rank": state.bits_by_rank}


def _follows_simulator(rank, cfg, data):
    runs = {algo: _hook_run(rank, cfg, data, algo) for algo in (ALGO, *LAZY, SECOND)}
    for algo in (ALGO, LAZY[0]):  # the hook's practical settings, which the simulator has too
        runs[f"{algo}|practical"] = _hook_run(rank, _practical(cfg), data, algo)
    for algo in (LAZY[0], SECOND):  # ranks taking turns (the hook's default for lazy rules)
        runs[f"{algo}|rotating"] = _hook_run(rank, _rotating(cfg), data, algo)
    return runs


def _practical(cfg):
    """``cfg`` with whole 1-D tensors and 3 dense warm-up rounds (the hook's kind of defaults)."""
    return small_config(workers=cfg.workers, tensor_policy="vectors", warmup=3)


def _rotating(cfg):
    """``cfg`` with the round's senders scaled to M and worker k mod M uploading in round k."""
    return small_config(workers=cfg.workers, aggregate="rotating")


VARIANTS = {"practical": _practical, "rotating": _rotating}


def _family(rank, world):
    return {algo: _hook_run(rank, _family_config(algo, world), synth(), algo) for algo in FAMILY}


def _checkpoint_resume(rank, cfg, data, folder, adam=False):
    # A lazy rule that skips (so the server's last messages and the rule's buffers must come back)
    # and varying-size messages (rice gaps), under momentum SGD (its buffers are the optimizer's).
    # With the optimizer given: DGC's velocity is part of the hook's state; 4 dense rounds first.
    algo = dict(algo="wk1+topk", codec="rice+sign", density=cfg.density, window=3, seed=cfg.seed, warmup=4)

    def fresh(seed=None):
        model, ddp = _ddp_model(cfg, data, seed)
        opt = (torch.optim.AdamW(ddp.parameters(), lr=0.01) if adam  # the frozen second moment's state too
               else torch.optim.SGD(ddp.parameters(), lr=cfg.lr, momentum=0.9))
        return model, ddp, opt, register(ddp, optimizer=opt, **algo)

    model, ddp, opt, state = fresh()
    _train(ddp, opt, _batches(cfg, data, rank)[1], data, 16)
    straight = {"theta": _flat(model), "uploads": state.ledger.uploads}

    model, ddp, opt, state = fresh()
    sampler, next_idx = _batches(cfg, data, rank)
    _train(ddp, opt, next_idx, data, 8)
    path = os.path.join(folder, f"ckpt-{'adam' if adam else 'sgd'}-rank{rank}.pt")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict(),
                "sampler": sampler.state_dict()}, path)
    del model, ddp, opt, state

    ckpt = torch.load(path, weights_only=True)  # plain tensors, ints, strings and lists only
    model, ddp, opt, state = fresh(seed=cfg.seed + 1)  # another init: everything comes from the file
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    state.load_state_dict(ckpt["hook"])
    sampler, next_idx = _batches(cfg, data, rank)
    sampler.load_state_dict(ckpt["sampler"])
    _train(ddp, opt, next_idx, data, 8)
    return {"straight": straight, "resumed": {"theta": _flat(model), "uploads": state.ledger.uploads}}


def _lossy_codec(rank, cfg, data):
    model, ddp = _ddp_model(cfg, data)
    state = register(ddp, ALGO, codec="rice+sign", density=cfg.density, seed=cfg.seed)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    before = _full_loss(model, data)
    _train(ddp, opt, _batches(cfg, data, rank)[1], data, 30)
    counters = state.transport.counters
    return {"theta": _flat(model), "loss": (before, _full_loss(model, data)), "bits_by_rank": state.bits_by_rank,
            "ledger": state.ledger.state_dict(), "payload_bytes_sent": counters.payload_bytes_sent}


def _bf16(rank, cfg, data):
    out = {}
    model, ddp = _ddp_model(cfg, data)
    state = register(ddp, ALGO, density=cfg.density, seed=cfg.seed)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    before = _full_loss(model, data)
    _train(ddp, opt, _batches(cfg, data, rank)[1], data, 30, autocast=torch.bfloat16)
    out["autocast"] = {"loss": (before, _full_loss(model, data)), "error_dtype": str(state.error.dtype),
                       "theta": _flat(model)}
    # bf16 parameters: bf16 buckets, cast to fp32 for the round and back for the result
    model, ddp = _ddp_model(cfg, data, dtype=torch.bfloat16)
    state = register(ddp, ALGO, density=cfg.density, seed=cfg.seed)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    before = _full_loss(model, data)
    data16 = type(data)(type(data.train)(data.train.x.bfloat16(), data.train.y, data.num_classes, "bf16"), data.test)
    _train(ddp, opt, _batches(cfg, data, rank)[1], data16, 30)
    out["bf16_params"] = {"loss": (before, _full_loss(model, data)), "error_dtype": str(state.error.dtype),
                          "param_dtype": str(next(model.parameters()).dtype), "theta": _flat(model).float()}
    return out


def _no_sync(rank, cfg, data):
    """Two half-batches with no_sync on the first (loss halved) against the whole batch at once."""
    out = {}
    for accumulate in (False, True):
        model, ddp = _ddp_model(cfg, data)
        register(ddp, ALGO, density=cfg.density, seed=cfg.seed)
        opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
        next_idx = _batches(cfg, data, rank)[1]
        for _ in range(4):
            idx = torch.cat([next_idx(), next_idx()])
            x, y = data.train.x[idx], data.train.y[idx]
            opt.zero_grad()
            if accumulate:
                half = len(idx) // 2
                with ddp.no_sync():  # no hook: the gradient only accumulates in .grad
                    (F.cross_entropy(ddp(x[:half]), y[:half]) / 2).backward()
                (F.cross_entropy(ddp(x[half:]), y[half:]) / 2).backward()  # the hook runs here
            else:
                F.cross_entropy(ddp(x), y).backward()
            opt.step()
        out["accumulated" if accumulate else "whole"] = _flat(model)
    return out


def _start_iter(rank, cfg, data):
    """Two rounds of plain all-reduce, then the compressed ones."""
    model, ddp = _ddp_model(cfg, data)
    state = register(ddp, ALGO, density=cfg.density, seed=cfg.seed, start_iter=2, warmup=0)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    next_idx = _batches(cfg, data, rank)[1]
    _train(ddp, opt, next_idx, data, 2)
    after_dense = {"theta": _flat(model), "rounds": state.rounds, "compressed": state.ledger.iterations,
                   "bits_by_rank": state.bits_by_rank}
    _train(ddp, opt, next_idx, data, 3)
    plain_model, plain = _ddp_model(cfg, data)  # DDP's own all-reduce on the same two batches
    plain_opt = torch.optim.SGD(plain.parameters(), lr=cfg.lr)
    _train(plain, plain_opt, _batches(cfg, data, rank)[1], data, 2)
    return {"after_dense": after_dense, "plain": _flat(plain_model), "rounds": state.rounds,
            "compressed": state.ledger.iterations, "uploads": state.ledger.uploads}


def _second_gradient_missing(rank, cfg, data):
    """``sasg`` registered, a step taken without ``second_gradient``: the message, from backward."""
    _, ddp = _ddp_model(cfg, data)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg.lr)
    register(ddp, SECOND, lr=opt)
    idx = _batches(cfg, data, rank)[1]()
    try:
        F.cross_entropy(ddp(data.train.x[idx]), data.train.y[idx]).backward()
    except RuntimeError as e:
        return str(e)
    return None


def _job(rank, world, folder):
    torch.manual_seed(1234 + rank)  # DDP itself draws nothing; any stray use would show as a mismatch
    cfg, data = small_config(workers=world), synth()
    results = {
        "simulator": _follows_simulator(rank, cfg, data),
        "family": _family(rank, world),
        "checkpoint": _checkpoint_resume(rank, cfg, data, folder),
        "checkpoint_adam": _checkpoint_resume(rank, cfg, data, folder, adam=True),
        "lossy": _lossy_codec(rank, cfg, data),
        "bf16": _bf16(rank, cfg, data),
        "no_sync": _no_sync(rank, cfg, data),
        "start_iter": _start_iter(rank, cfg, data),
        "second_missing": _second_gradient_missing(rank, cfg, data),  # last: this DDP model is left mid-step
    }
    torch.save(results, os.path.join(folder, f"results-rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_hook")
    spawn(_job, WORLD, str(folder), timeout=150.0)
    return [torch.load(folder / f"results-rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ----- the tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", [ALGO, *LAZY, SECOND, f"{ALGO}|practical", f"{LAZY[0]}|practical",
                                  f"{LAZY[0]}|rotating", f"{SECOND}|rotating"])
def test_hook_follows_the_simulator_with_topk_error_feedback_and_sgd(ranks, algo):
    key = algo
    algo, _, variant = algo.partition("|")
    practical = variant == "practical"
    cfg, data = small_config(workers=WORLD), synth()
    if variant:  # whole 1-D tensors and a dense warm-up, or ranks taking turns: the same in both runners
        cfg = VARIANTS[variant](cfg)
    sim = Simulator(cfg, algo, data)
    flags = [sim.step() for _ in range(STEPS)]
    if variant == "rotating":  # worker k mod M sent in round k: no round without a sender
        assert all(f[k % WORLD] for k, f in enumerate(flags))
    if practical:
        assert sim.ledger.bits_up[0] == 32 * WORLD * sim.algorithm.layout.numel  # a dense warm-up round
        assert sim.ledger.uploads[:cfg.warmup + cfg.window] == [WORLD] * (cfg.warmup + cfg.window)
    for r, out in enumerate(ranks):
        got = out["simulator"][key]
        # Tolerance: the simulator forms v = (lr/M) g + e and steps by sum q; the hook forms
        # v = g/M + e (gradient units) and SGD steps by lr * sum q, and DDP's autograd gradient
        # may differ from the simulator's functional one in the last bit. The same entries are
        # picked and the same ranks skip, so the parameters differ by float32 rounding only
        # (about 3e-8 observed for |theta| ~ 0.1): asserted within 1e-6 absolute + 1e-5 relative.
        torch.testing.assert_close(got["theta"], sim.theta, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cfg.lr * got["error"], sim.workers.error[r], rtol=1e-5, atol=1e-6)
        assert got["ledger"]["uploads"] == sim.ledger.uploads
        assert got["ledger"]["bits_up"] == sim.ledger.bits_up  # paper32: the same messages, the same bits
        lazy_flags = [0] * cfg.warmup + [WORLD] * (STEPS - cfg.warmup)  # one byte a rank, not in warm-up
        assert got["ledger"]["bits_flags"] == (sim.ledger.bits_flags if algo == ALGO else lazy_flags)
        assert sum(got["bits_by_rank"]) == sum(sim.ledger.bits_up)
        assert got["error"].dtype == torch.float32
    if algo == ALGO:
        assert sim.ledger.uploads == [WORLD] * STEPS
    else:  # the lazy rule skipped, at the simulator's rounds: its threshold has the simulator's scale
        assert sum(sim.ledger.uploads) < WORLD * STEPS
    assert torch.equal(ranks[0]["simulator"][key]["theta"], ranks[1]["simulator"][key]["theta"])


@pytest.mark.parametrize("algo", list(FAMILY))
def test_every_member_that_runs_in_a_hook_gives_the_simulators_numbers(ranks, algo):
    """Bit for bit, at a power-of-two lr. Randomized members draw from the rank's generator, seeded
    as simulated worker ``rank``'s; PowerSGD's own exchange, EF21's estimates and the lazy rules
    run in the hook as in the simulator. (At another lr the two differ by float32 rounding, which
    near-ties can amplify: ``always+topk+ef21`` under ``rice+sign`` at lr 0.2 picks other entries
    after a few rounds; the top-k test above runs at such an lr, with a tolerance.)"""
    cfg, data = _family_config(algo, WORLD), synth()
    sim = Simulator(cfg, algo, data)
    for _ in range(STEPS):
        sim.step()
    for out in ranks:
        got = out["family"][algo]
        assert torch.equal(got["theta"], sim.theta)
        assert got["ledger"]["uploads"] == sim.ledger.uploads
        assert got["ledger"]["bits_up"] == sim.ledger.bits_up  # the same messages, the same bytes
    if algo in ("clag+topk", "wk1+topk", "ps+topk", "wk2+topk"):
        assert sum(sim.ledger.uploads) < WORLD * STEPS  # the rule skipped, at the simulator's rounds


@pytest.mark.parametrize("key", ["checkpoint", "checkpoint_adam"])
def test_checkpoint_restart_continue_equals_an_uninterrupted_run(ranks, key):
    """Momentum SGD (DGC's velocity in the hook's state) and AdamW (the averaged second moment)."""
    for out in ranks:
        straight, resumed = out[key]["straight"], out[key]["resumed"]
        assert torch.equal(resumed["theta"], straight["theta"])
        assert resumed["uploads"] == straight["uploads"]
        assert len(straight["uploads"]) == 16
        if key == "checkpoint":
            assert sum(straight["uploads"][8:]) < 8 * WORLD  # ranks skipped after the restart too
    assert torch.equal(ranks[0][key]["resumed"]["theta"], ranks[1][key]["resumed"]["theta"])


def test_a_rule_that_needs_a_second_gradient_says_how_to_give_it(ranks):
    for out in ranks:
        message = out["second_missing"]
        assert message is not None and "state.second_gradient(" in message and "before loss.backward()" in message
    # (when the hook starts, at register or at the first bucket: use_optimizer may bring it before)
    with pytest.raises(ValueError, match="needs the learning rate"):
        HookState(_linear(), algo="wk1+topk").start()
    with pytest.raises(ValueError, match="needs the learning rate"):
        HookState(_linear(), algo=SECOND).start()
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        register(_linear(), algo="always+topk")


def test_an_embedding_with_sparse_gradients_is_refused_by_name():
    def model(frozen: bool):
        with torch.device("meta"):  # (nn.Embedding's initialisation would draw from the global RNG)
            m = torch.nn.Sequential(torch.nn.Embedding(50, 8, sparse=True), torch.nn.Linear(8, 3))
        m = m.to_empty(device="cpu")
        m[0].weight.requires_grad_(not frozen)
        return m

    with pytest.raises(ValueError, match=r"Embedding '0': it has sparse=True.*sparse=False"):
        HookState(model(frozen=False))
    assert HookState(model(frozen=True)).index.names == ["1.weight", "1.bias"]


def _bucket(params):
    """What the hook reads of a ``dist.GradBucket``: parameters and their gradients, in order."""
    return SimpleNamespace(parameters=lambda: params, gradients=lambda: [p.grad for p in params], index=lambda: 0)


def test_the_round_reads_fp32_gradients_where_ddp_keeps_them_and_casts_the_rest():
    """``ParameterIndex.blocks``: an fp32 gradient is handed to the engine as a view of DDP's own
    tensor (no copy: HookState's default round reads it in place); a bf16 one is cast into its
    place in the flat fp32 buffer; both give the values a gather would; a tensor twice or one
    missing is refused."""
    from sasg.ddp.buckets import ParameterIndex

    a, b, c = (torch.nn.Parameter(torch.zeros(s)) for s in ((3, 4), (5,), (2, 2)))
    b.data = b.data.bfloat16()
    g = torch.Generator().manual_seed(0)
    for p in (a, b, c):
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
    index = ParameterIndex([("a", a), ("b", b), ("c", c)])
    buckets = [_bucket([c, b]), _bucket([a])]  # DDP's order: last tensors first
    views = index.round_gradients(buckets)
    out = torch.zeros(index.numel)
    blocks = index.blocks(views, out)
    assert [tuple(x.shape) for x in blocks] == [(1, 12), (1, 5), (1, 4)]
    assert blocks[0].data_ptr() == a.grad.data_ptr() and blocks[2].data_ptr() == c.grad.data_ptr()
    assert blocks[1].dtype == torch.float32 and blocks[1].data_ptr() == out[12:].data_ptr()
    assert torch.equal(torch.cat(blocks, 1)[0], index.gather(buckets, torch.zeros(index.numel)))
    assert [x.data_ptr() for x in index.blocks(views, out, [1, 2])] == [out[12:].data_ptr(), c.grad.data_ptr()]
    with pytest.raises(RuntimeError, match="came twice"):
        index.round_gradients(buckets + buckets[1:])
    with pytest.raises(RuntimeError, match="reached no DDP bucket"):
        index.check_complete({0, 2})


def test_the_real_step_is_summed_as_in_float64_bit_for_bit():
    """``ParameterIndex.step_sq_from`` (the lazy rules' real step in the hook) in its kept float64
    buffer: the very sums of each operand converted with ``.double()``, with and without a metric,
    for fp32 and bf16 parameters, and on a second call (the buffer reused)."""
    from sasg.ddp.buckets import ParameterIndex

    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((40, 30), (7,), (3, 5))]
    params[1].data = params[1].data.bfloat16()
    index = ParameterIndex([(f"p{i}", p) for i, p in enumerate(params)])
    previous = torch.randn(index.numel, generator=g)
    metric = [torch.rand(p.shape, generator=g) for p in params]
    metric[2] = None

    def reference(metric):
        total = 0.0
        for i, (p, seg) in enumerate(zip(params, index.layout.segments)):
            diff = p.detach().reshape(-1).double() - previous[seg.offset : seg.end].double()
            if metric is not None and metric[i] is not None:
                diff.mul_(metric[i].reshape(-1).double())
            total += float(torch.dot(diff, diff))
        return total

    for _ in range(2):
        assert index.step_sq_from(previous) == reference(None)
        assert index.step_sq_from(previous, metric) == reference(metric)


def test_register_checks_its_options_before_the_model():
    # an unknown keyword names itself and the valid ones; a bad knob is refused with HookState's
    # own defaults filled in; neither looks at the model (a plain module would be a TypeError)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) densty;.*density.*step_metric"):
        register(_linear(), algo="always+topk", densty=0.1)
    with pytest.raises(ValueError, match="density"):
        register(_linear(), algo="always+topk", density=2.0)
    with pytest.raises(TypeError, match="module"):
        register(_linear(), module=_linear())  # register sets it from the DDP model


def _linear():
    return torch.nn.Linear(3, 2, device="meta")  # shapes only: no draw from the global RNG


def test_lossy_codec_trains_and_its_bits_are_8x_the_bytes_sent(ranks):
    for r, out in enumerate(ranks):
        got = out["lossy"]
        before, after = got["loss"]
        assert after < 0.7 * before
        bits = got["bits_by_rank"]
        # what this rank handed to the collective: each message once to each of the M-1 others
        assert 8 * got["payload_bytes_sent"] == bits[r] * (WORLD - 1)
        assert sum(bits) == sum(got["ledger"]["bits_up"]) > 0
        # rice gaps + one sign bit per kept entry: far below paper32's 64 bits per kept entry
        assert sum(bits) < 0.5 * 64 * _kept() * 30 * WORLD
    assert ranks[0]["lossy"]["bits_by_rank"] == ranks[1]["lossy"]["bits_by_rank"]
    assert torch.equal(ranks[0]["lossy"]["theta"], ranks[1]["lossy"]["theta"])


def _kept() -> int:
    """Entries top-k keeps per message for the test model."""
    from sasg.core import kept_per_segment
    from sasg.models import build_model

    cfg, data = small_config(workers=WORLD), synth()
    model = build_model(cfg.model, data.sample_shape, data.num_classes, cfg.seed)
    return sum(kept_per_segment(Layout.from_module(model), cfg.density))


def test_bf16_keeps_the_error_memory_in_fp32_and_trains(ranks):
    for out in ranks:
        for case in ("autocast", "bf16_params"):
            got = out["bf16"][case]
            assert got["error_dtype"] == "torch.float32", case
            before, after = got["loss"]
            assert after < 0.7 * before, case
        assert out["bf16"]["bf16_params"]["param_dtype"] == "torch.bfloat16"
    for case in ("autocast", "bf16_params"):
        assert torch.equal(ranks[0]["bf16"][case]["theta"], ranks[1]["bf16"][case]["theta"])


def test_gradient_accumulation_with_no_sync_gives_the_whole_batch_step(ranks):
    for out in ranks:
        torch.testing.assert_close(out["no_sync"]["accumulated"], out["no_sync"]["whole"], rtol=1e-5, atol=1e-6)


def test_start_iter_rounds_are_plain_all_reduce(ranks):
    for out in ranks:
        got = out["start_iter"]
        dense = got["after_dense"]
        torch.testing.assert_close(dense["theta"], got["plain"], rtol=1e-6, atol=1e-7)  # DDP's own mean
        assert (dense["rounds"], dense["compressed"]) == (2, 0)
        d = dense["theta"].numel()
        assert dense["bits_by_rank"] == [2 * 32 * d] * WORLD  # each rank's fp32 gradient, twice
        assert (got["rounds"], got["compressed"], got["uploads"]) == (5, 3, [WORLD] * 3)


# ----- the examples -------------------------------------------------------------------------------------


def _run_example(args: list[str], timeout: float = 150.0, stderr: bool = False) -> str:
    """The example's stdout (and its stderr after it, with ``stderr``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout + done.stderr if stderr else done.stdout


@pytest.mark.parametrize("precision", [["--bf16"], ["--fp16", "--clip", "0.5"]], ids=["bf16", "fp16-clip"])
def test_example_ddp_hook_runs_under_torchrun_and_resumes_bit_exactly(tmp_path, precision):
    """The example with accumulation, bf16 (or fp16, its GradScaler and the hook's gradient
    clipping) and checkpoints (3 steps an epoch at this batch size, one micro-batch of each epoch
    dropped): stopped at step 5, mid-epoch, and started again with the same arguments, it ends
    with the uninterrupted run's state, bit for bit."""
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "examples/ddp_hook.py",
           "--batch-size", "512", "--accumulate", "2", *precision, "--epochs", "4", "--checkpoint-every", "5",
           "--max-steps"]
    whole = _run_example([*run, "12", "--checkpoint-dir", str(tmp_path / "whole")])
    assert "epoch 4: step 12, test acc" in whole
    assert "always+topk / rice+sign: 12 steps" in whole
    _run_example([*run, "5", "--checkpoint-dir", str(tmp_path / "cut")])
    resumed = _run_example([*run, "12", "--checkpoint-dir", str(tmp_path / "cut")])
    assert "resumed from step 5" in resumed
    assert resumed.splitlines()[-1] == whole.splitlines()[-1]  # steps and bits sent per rank
    for rank in range(2):
        a, b = (torch.load(tmp_path / d / f"rank{rank}.pt", weights_only=True) for d in ("whole", "cut"))
        assert a["step"] == b["step"] == 12
        assert _same(a, b)  # model, optimizer and hook state, bit for bit


def _same(a, b) -> bool:
    """Nested dicts/lists of tensors and plain values, equal exactly (tensors: dtype, shape, bits)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("extra", [[], ["--clip", "1.0"]], ids=["plain", "clip"])
def test_example_with_lightning_when_installed(extra):
    import importlib.util

    if importlib.util.find_spec("lightning") is None:
        pytest.skip("Lightning is not installed (optional: pip install 'sasg[lightning]')")
    out = _run_example(["examples/lightning_ddp.py", "--max-steps", "8", *extra], timeout=240.0, stderr=True)
    assert "sasg hook: 8 rounds, 16 uploads" in out
    assert "gradients changed between the hook" not in out  # (the hook clips; Lightning does not)
