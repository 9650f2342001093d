"""Gradient clipping with the hook: ``clip_grad_norm=`` clips each rank's gradient before the round,
and a clipping call of the job's own on the hook's aggregate gets a warning (sasg.ddp.clipping).

On 2 gloo ranks:

- with every entry sent (density 1, a lossless codec) the hook hands the optimizer exactly the
  mean of the ranks' gradients each clipped by ``torch.nn.utils.clip_grad_norm_``, bit for bit;
- a threshold no gradient reaches changes nothing, bit for bit (plain SGD, momentum SGD, AdamW:
  clipping also turns the overlap off, which must not change the training either);
- ``sasg`` (wk2), whose second gradient is clipped too, trains with it;
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


def _mean_of_clipped(rank: int, x, y) -> torch.Tensor:
    """The ranks' gradients at the initial parameters, each clipped as clip_grad_norm_ clips, averaged."""
    import torch.distributed as dist

    local = _net()
    F.cross_entropy(local(x), y).backward()
    torch.nn.utils.clip_grad_norm_(local.parameters(), TAU)
    mine = _flat(p.grad for p in local.parameters())
    every = [torch.empty_like(mine) for _ in range(WORLD)]
    dist.all_gather(every, mine)
    return every[0] * (1 / WORLD) + every[1] * (1 / WORLD)


def _aggregate(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = _net()
    ddp = DistributedDataParallel(net)
    opt = _optimizer("sgd", ddp.parameters())
    sasg.ddp.register(ddp, density=1.0, warmup=0, tensor_policy="all", optimizer=opt, clip_grad_norm=TAU)
    x, y = rank_batch(0, rank)
    F.cross_entropy(ddp(x), y).backward()
    return {"hook": _flat(p.grad for p in net.parameters()), "reference": _mean_of_clipped(rank, x, y)}


def _train(rank: int, kind: str, algo: str, **options) -> torch.Tensor:
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
    return _flat(net.parameters())


def _warnings(rank: int, kind: str, *, clip: bool, scaled: bool) -> list[str]:
    """Warnings of 20 steps of a job that clips (or not) the gradients it gets from the hook."""
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = _net()
    ddp = DistributedDataParallel(net)
    opt = _optimizer(kind, ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaled else None
    sasg.ddp.register(ddp, optimizer=opt, density=0.1, warmup=2, scaler=scaler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(20):
            x, y = rank_batch(step, rank)
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
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

    out: dict = {"aggregate": _aggregate(rank)}
    for kind, algo in (("sgd", "always+topk"), ("momentum", "always+topk"), ("adamw", "always+topk")):
        out[f"{kind} {algo}"] = {"never": _train(rank, kind, algo, clip_grad_norm=1e9),
                                 "off": _train(rank, kind, algo)}
    out["sasg"] = _train(rank, "momentum", "sasg", clip_grad_norm=TAU)
    for kind in ("sgd", "momentum", "adamw"):
        out[f"warn {kind}"] = _warnings(rank, kind, clip=True, scaled=False)
        out[f"quiet {kind}"] = _warnings(rank, kind, clip=False, scaled=False)
    out["warn scaled"] = _warnings(rank, "momentum", clip=True, scaled=True)
    out["quiet scaled"] = _warnings(rank, "momentum", clip=False, scaled=True)
    ddp = DistributedDataParallel(_net())
    out["overlap"] = error_of(lambda: sasg.ddp.register(ddp, overlap=True, clip_grad_norm=1.0), ValueError)
    save_rank_results(out, folder, rank)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return results_of_ranks(_job, tmp_path_factory.mktemp("clip"), WORLD, timeout=180.0)


def test_the_aggregate_is_the_mean_of_the_clipped_gradients(ranks):
    for out in ranks:
        hook, reference = out["aggregate"]["hook"], out["aggregate"]["reference"]
        assert torch.equal(hook, reference), float((hook - reference).abs().max())
        assert float(reference.norm()) <= TAU  # (the clipping did act: the initial gradients are larger)


def test_a_threshold_never_reached_changes_nothing(ranks):
    for rank, out in enumerate(ranks):
        for case in ("sgd always+topk", "momentum always+topk", "adamw always+topk"):
            assert torch.equal(out[case]["never"], out[case]["off"]), (rank, case)
        assert torch.isfinite(out["sasg"]).all()
    assert torch.equal(ranks[0]["sasg"], ranks[1]["sasg"])


def test_a_clipping_call_of_the_job_is_named_once(ranks):
    for out in ranks:
        for case in ("warn sgd", "warn momentum", "warn adamw", "warn scaled"):
            assert len(out[case]) == 1, (case, out[case])
            message = out[case][0]
            assert "clip_grad_norm=" in message and "scaled by" in message and "clip_grad_norm_" in message, message
        for case in ("quiet sgd", "quiet momentum", "quiet adamw", "quiet scaled"):
            assert out[case] == [], (case, out[case])


def test_clipping_needs_the_whole_gradient(ranks):
    for out in ranks:
        assert "clip_grad_norm" in out["overlap"] and "overlap=None" in out["overlap"], out["overlap"]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1.0", True])
def test_a_bad_threshold_is_refused(bad):
    from sasg.ddp import HookState

    with pytest.raises(ValueError, match="clip_grad_norm"):
        HookState(_net(), clip_grad_norm=bad)
