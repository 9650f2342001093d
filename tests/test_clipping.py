"""Gradient clipping with the hook: ``clip_grad_norm=`` scales every rank's gradient by the factor
clip_grad_norm_ gives the mean gradient, its norm estimated from a sketch; a clipping call of the
job's own on the hook's aggregate gets a warning (sasg.ddp.clipping).

- the estimator alone: unbiased in the squared norm, within a few percent of the norm, whether
  the ranks' gradients agree or are mostly noise, and exact for a tensor that fits one row;
- on one rank the hook hands the optimizer exactly what clip_grad_norm_ leaves (density 1,
  lossless codec), bit for bit;
- on 2 gloo ranks it hands back DDP's clipped mean gradient: the same direction, the norm within
  the estimate's error, on different minibatches and on the same one;
- a threshold never reached changes nothing, bit for bit (plain SGD, momentum SGD, AdamW: clipping
  also turns the overlap off, which must not change the training either); ``sasg`` (wk2), whose
  second gradient is scaled too, trains with it;
- the job's own ``clip_grad_norm_`` after ``backward()`` is caught at the step and named once,
  also behind a GradScaler's ``unscale_`` (the AMP recipe for clipping); a job that leaves the
  gradients alone, with or without a scaler, gets no warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import error_of, rank_batch, results_of_ranks, save_rank_results, seeded_module

WORLD, STEPS, TAU = 2, 8, 0.05


def _net() -> nn.Module:
    return seeded_module(lambda: nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 8)), 0.5)


def _optimizer(kind: str, params):
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=0.01)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9 if kind == "momentum" else 0.0)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _local_gradient(x, y) -> torch.Tensor:
    local = _net()
    F.cross_entropy(local(x), y).backward()
    return _flat(p.grad for p in local.parameters())


def _aggregate(rank: int, world: int, same_batch: bool = False) -> dict:
    """What the hook hands the optimizer in its first round (every entry sent, lossless), and
    clip_grad_norm_ of the mean gradient as DDP would clip it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = _net()
    ddp = DistributedDataParallel(net)
    opt = _optimizer("sgd", ddp.parameters())
    state = sasg.ddp.register(ddp, density=1.0, warmup=0, tensor_policy="all", optimizer=opt, clip_grad_norm=TAU)
    x, y = rank_batch(0, 0 if same_batch else rank)
    F.cross_entropy(ddp(x), y).backward()
    mine = _local_gradient(x, y)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    reference = _net()  # the mean gradient in .grad, clipped by clip_grad_norm_ itself
    mean = sum(every) / world if world > 1 else mine
    for p, g in zip(reference.parameters(), mean.split([p.numel() for p in reference.parameters()])):
        p.grad = g.view(p.shape).clone()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), TAU)
    mean = _flat(p.grad for p in reference.parameters())
    return {"hook": _flat(p.grad for p in net.parameters()), "ddp": mean, "ddp_norm": norm,
            "hook_norm": state.grad_norm.clone()}


def _train(rank: int, kind: str, algo: str, **options) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = _net()
    ddp = DistributedDataParallel(net)
    opt = _optimizer(kind, ddp.parameters())
    state = sasg.ddp.register(ddp, algo, optimizer=opt, density=0.1, warmup=2, lr=opt, **options)
    for step in range(STEPS):
        x, y = rank_batch(step, rank)
        opt.zero_grad()
        state.second_gradient(lambda m: F.cross_entropy(m(x), y))  # (wk2 only)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
    return {"theta": _flat(net.parameters()), "clipped": state.clipped_rounds, "rounds": state.rounds}


class _Heads(nn.Module):
    """A body and two heads, used in turn (``find_unused_parameters=True``: one sits out each step)."""

    def __init__(self):
        super().__init__()
        self.body, self.heads = nn.Linear(6, 48), nn.ModuleList([nn.Linear(48, 8), nn.Linear(48, 8)])

    def forward(self, x, head: int):
        return self.heads[head](torch.relu(self.body(x)))


def _warnings(rank: int, kind: str, *, clip: bool, scaled: bool, heads: bool = False) -> list[str]:
    """Warnings of 20 steps of a job that clips (or not) the gradients it gets from the hook
    (``heads``: the two-head net, under find_unused_parameters, .grad zeroed rather than None)."""
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = seeded_module(_Heads, 0.5) if heads else _net()
    ddp = DistributedDataParallel(net, find_unused_parameters=heads)
    opt = _optimizer(kind, ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaled else None
    sasg.ddp.register(ddp, optimizer=opt, density=0.1, warmup=2, scaler=scaler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(20):
            x, y = rank_batch(step, rank)
            opt.zero_grad(set_to_none=not heads)
            loss = F.cross_entropy(ddp(x, step % 2) if heads else ddp(x), y)
            (scaler.scale(loss) if scaled else loss).backward()
            if scaled:
                scaler.unscale_(opt)
            if clip:
                torch.nn.utils.clip_grad_norm_(ddp.parameters(), TAU)
            if scaled:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
    return [str(w.message) for w in caught]


def _job(rank, world, folder):
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    out: dict = {"different": _aggregate(rank, world), "same": _aggregate(rank, world, same_batch=True)}
    for kind, algo in (("sgd", "always+topk"), ("momentum", "always+topk"), ("adamw", "always+topk")):
        out[f"{kind} {algo}"] = {"never": _train(rank, kind, algo, clip_grad_norm=1e9),
                                 "off": _train(rank, kind, algo)}
    out["sasg"] = _train(rank, "momentum", "sasg", clip_grad_norm=TAU)
    for kind in ("sgd", "momentum", "adamw"):
        out[f"warn {kind}"] = _warnings(rank, kind, clip=True, scaled=False)
        out[f"quiet {kind}"] = _warnings(rank, kind, clip=False, scaled=False)
    out["warn scaled"] = _warnings(rank, "momentum", clip=True, scaled=True)
    out["quiet scaled"] = _warnings(rank, "momentum", clip=False, scaled=True)
    out["warn heads"] = _warnings(rank, "sgd", clip=True, scaled=False, heads=True)
    out["quiet heads"] = _warnings(rank, "sgd", clip=False, scaled=False, heads=True)
    ddp = DistributedDataParallel(_net())
    out["overlap"] = error_of(lambda: sasg.ddp.register(ddp, overlap=True, clip_grad_norm=1.0), ValueError)
    # Checkpoints: the count of clipped rounds goes on across a resume, a hook without clipping
    # loads the state, a hostile count is refused
    made = []
    for clip in (TAU, TAU, None):
        ddp = DistributedDataParallel(_net())
        made.append((ddp, sasg.ddp.register(ddp, optimizer=_optimizer("sgd", ddp.parameters()), clip_grad_norm=clip)))
    (ddp, first), (_, again), (_, unclipped) = made
    for step in range(2):
        x, y = rank_batch(step, rank)
        F.cross_entropy(ddp(x), y).backward()
    saved = first.state_dict()
    again.load_state_dict(saved)
    out["resumed"] = [first.clipped_rounds, again.clipped_rounds, saved["optimizer_link"]["clipped_rounds"]]
    out["unclipped load"] = error_of(lambda: unclipped.load_state_dict(saved))
    link = saved["optimizer_link"]
    hostile = [{**saved, "optimizer_link": {**link, "clipped_rounds": bad}} for bad in (-1, True, "3")]
    out["hostile"] = [error_of(lambda: again.load_state_dict(state), ValueError) for state in hostile]
    save_rank_results(out, folder, rank)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return results_of_ranks(_job, tmp_path_factory.mktemp("clip"), WORLD, timeout=180.0)


def test_on_two_ranks_the_hook_hands_back_ddps_clipped_mean_gradient(ranks):
    for out in ranks:
        for case in ("different", "same"):
            hook, ddp = out[case]["hook"], out[case]["ddp"]
            assert float(out[case]["ddp_norm"]) > 2 * TAU  # (the clipping acts)
            cosine = float(hook @ ddp / (hook.norm() * ddp.norm()))
            assert cosine > 1 - 1e-6, (case, cosine)
            assert abs(float(hook.norm() / ddp.norm()) - 1) < 0.1, case
            assert abs(float(out[case]["hook_norm"] / out[case]["ddp_norm"]) - 1) < 0.1, case
    assert torch.equal(ranks[0]["different"]["hook_norm"], ranks[1]["different"]["hook_norm"])


def _one_rank(rank, world, folder):
    save_rank_results(_aggregate(rank, world), folder, rank)


def test_on_one_rank_the_hook_clips_as_clip_grad_norm_does(tmp_path):
    (out,) = results_of_ranks(_one_rank, tmp_path, 1, timeout=120.0)
    assert float(out["ddp_norm"]) > 2 * TAU
    assert torch.equal(out["hook"], out["ddp"]) and torch.equal(out["hook_norm"], out["ddp_norm"])


def test_a_threshold_never_reached_changes_nothing(ranks):
    for rank, out in enumerate(ranks):
        for case in ("sgd always+topk", "momentum always+topk", "adamw always+topk"):
            assert torch.equal(out[case]["never"]["theta"], out[case]["off"]["theta"]), (rank, case)
            assert out[case]["never"]["clipped"] == 0 and out[case]["off"]["clipped"] is None, (rank, case)
        assert torch.isfinite(out["sasg"]["theta"]).all()
    assert torch.equal(ranks[0]["sasg"]["theta"], ranks[1]["sasg"]["theta"])


def test_the_hook_counts_the_rounds_it_clipped(ranks):
    """TAU is far below these gradients' norm: every round clips (wk2's too), on every rank alike."""
    for out in ranks:
        assert out["sasg"]["clipped"] == out["sasg"]["rounds"] == STEPS
    assert ranks[0]["sasg"]["clipped"] == ranks[1]["sasg"]["clipped"]


def test_a_clipping_call_of_the_job_is_named_once(ranks):
    for out in ranks:
        for case in ("warn sgd", "warn momentum", "warn adamw", "warn scaled", "warn heads"):
            assert len(out[case]) == 1, (case, out[case])
            message = out[case][0]
            assert "clip_grad_norm=" in message and "scaled by" in message and "clip_grad_norm_" in message, message
        for case in ("quiet sgd", "quiet momentum", "quiet adamw", "quiet scaled", "quiet heads"):
            assert out[case] == [], (case, out[case])


def test_the_count_of_clipped_rounds_is_saved_and_checked(ranks):
    for out in ranks:
        assert out["resumed"] == [2, 2, 2]
        assert out["unclipped load"] == "no error"
        assert all("clipped_rounds" in message and "count of rounds" in message for message in out["hostile"])


def test_clipping_needs_the_whole_gradient(ranks):
    for out in ranks:
        assert "clip_grad_norm" in out["overlap"] and "overlap=None" in out["overlap"], out["overlap"]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1.0", True])
def test_a_bad_threshold_is_refused(bad):
    from sasg.ddp import HookState

    with pytest.raises(ValueError, match="clip_grad_norm"):
        HookState(_net(), clip_grad_norm=bad)


SHAPES = [(300,), (1000,), (7,), (50, 40), (512, 20)]  # rows of 256 with and without a partial last one


def _packets(grads, seed: int) -> torch.Tensor:
    from sasg.ddp.buckets import ParameterIndex
    from sasg.ddp.clipping import sketch, sketch_signs

    index = ParameterIndex([(f"p{i}", nn.Parameter(torch.zeros(s))) for i, s in enumerate(SHAPES)])
    signs = sketch_signs(index, seed)
    return sum(sketch([t.reshape(1, -1) for t in g], signs, torch.nn.utils.get_total_norm(g).square()) for g in grads)


@pytest.mark.parametrize("world,noise", [(2, 0.0), (2, 3.0), (8, 0.0), (8, 3.0)])
def test_the_sketch_estimates_the_mean_norm_without_bias(world, noise):
    """300 draws of the signs: the mean of the squared estimates within 1 % of the true squared
    norm, each estimate within 15 % of the norm and their RMS error under 5 % (about 1/sqrt(SKETCH)
    of the cross terms; measured 2-4 %), whether the ranks agree (noise 0) or mostly differ."""
    from sasg.ddp.clipping import mean_norm

    g = torch.Generator().manual_seed(world)
    base = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[b + noise * torch.randn(b.shape, generator=g) for b in base] for _ in range(world)]
    true = float(torch.sqrt(sum(sum(r[t] for r in grads).square().sum() for t in range(len(SHAPES))))) / world
    est = torch.tensor([float(mean_norm(_packets(grads, seed), world)) for seed in range(300)], dtype=torch.float64)
    assert abs(float(est.square().mean()) / true**2 - 1) < 0.01
    assert float((est / true - 1).abs().max()) < 0.15
    assert float((est / true - 1).square().mean().sqrt()) < 0.05


def test_the_sketch_is_exact_for_one_row():
    """One tensor of at most SKETCH entries: one row, no two entries share a bucket."""
    from sasg.ddp.buckets import ParameterIndex
    from sasg.ddp.clipping import mean_norm, sketch, sketch_signs

    index = ParameterIndex([("w", nn.Parameter(torch.zeros(200)))])
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(1, 200, generator=g, dtype=torch.float32) for _ in range(3)]
    signs = sketch_signs(index, 0)
    total = sum(sketch([x], signs, x.square().sum()) for x in grads)
    true = (sum(grads) / 3).norm()
    assert torch.allclose(mean_norm(total, 3), true, rtol=1e-5, atol=0)


def test_plain_all_reduce_rounds_are_not_clipped_so_they_are_refused():
    from sasg.ddp import HookState

    with pytest.raises(ValueError, match="start_iter=0"):
        HookState(_net(), clip_grad_norm=1.0, start_iter=3)
