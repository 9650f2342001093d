"""The hook under fp16's loss scaling: ``sasg.ddp.register(..., scaler=torch.amp.GradScaler(...))``.

A 2-rank gloo job checks it exactly. Multiplying the loss by a power of two multiplies every
gradient by it without rounding, so a job whose scaler grows its scale and skips two overflowed
steps must end with the parameters, error memory and ledger rounds of the same job run without a
scaler on the same minibatches minus the two bad ones, bit for bit: the hook works on the unscaled
gradient, and a round in which any rank's gradient is not finite does not happen (on every rank,
whichever rank overflowed). Under SGD, momentum SGD (DGC's correction), AdamW (the frozen second
moment), a lazy rule and SASG's own (wk2, with its second gradient), and fused AdamW and momentum
SGD, which the scaler steps even on an overflow, handing them its found-inf flag. Without the
scaler, the hook's aggregate goes non-finite and it stops the job with an error naming the fix,
instead of letting the scaler skip every later step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import error_of, rank_batch, results_of_ranks, save_rank_results, seeded_module

WORLD, STEPS = 2, 12
BAD = {1: 0, 6: 1}  # step -> the rank whose loss overflows (a warm-up round, then a compressed one)
CASES = (("sgd", "always+topk"), ("momentum", "always+topk"), ("adamw", "always+topk"), ("momentum", "wk1+topk"),
         ("sgd", "sasg"), ("adamw-fused", "always+topk"), ("momentum-fused", "always+topk"),
         ("momentum-view", "always+topk"),  # -view: DDP(gradient_as_bucket_view=True), .grad views the buckets
         ("momentum-clip", "always+topk"), ("adamw-clip", "always+topk"))  # -clip: clip_grad_norm (its packet
# carries the scaler's flag: one all-reduce for both)
CLIP_PACKET = 1032  # bytes a rank sends a backward pass for clip_grad_norm (sasg.ddp.clipping)


def _net() -> nn.Module:
    return seeded_module(lambda: nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 8)), 0.5)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _optimizer(kind, params):
    if kind.startswith("adamw"):
        # fused: the scaler hands the step its scale and found-inf flag instead of unscaling .grad
        return torch.optim.AdamW(params, lr=0.01, fused=kind == "adamw-fused")
    return torch.optim.SGD(params, lr=0.1, momentum=0.9 if kind.startswith("momentum") else 0.0,
                           fused=kind.endswith("fused"))


def _train(rank, kind, algo, scaled: bool) -> dict:
    """``scaled``: with a GradScaler, and the steps in BAD overflowing on their rank; else without
    one, on the same minibatches less the bad steps'."""
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = _net()
    ddp = DistributedDataParallel(net, gradient_as_bucket_view=kind.endswith("view"))
    opt = _optimizer(kind, ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2) if scaled else None
    state = sasg.ddp.register(ddp, algo, optimizer=opt, density=0.1, warmup=2, scaler=scaler,
                              clip_grad_norm=0.5 if kind.endswith("clip") else None)
    scales = []
    for step in range(STEPS):
        if not scaled and step in BAD:
            continue
        x, y = rank_batch(step, rank)
        opt.zero_grad()
        state.second_gradient(lambda m: F.cross_entropy(m(x), y))  # (wk2 only; the others return at once)
        loss = F.cross_entropy(ddp(x), y)
        if not scaled:
            loss.backward()
            opt.step()
            continue
        if BAD.get(step) == rank:
            loss = loss * float("inf")  # an overflow on this rank only
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return {"theta": _flat(net.parameters()), "error": state.error.clone(), "rounds": state.engine.iteration,
            "skipped": 0 if state._scaling is None else state._scaling.skipped, "scales": scales,
            "bits_by_rank": state.bits_by_rank, "bits_up": state.ledger.totals()["bits_up"],
            "saved": sorted(state.state_dict()["optimizer_link"])}


def _job(rank, world, folder):
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    out: dict = {}
    for kind, algo in CASES:
        out[f"{kind} {algo}"] = {"scaled": _train(rank, kind, algo, True), "plain": _train(rank, kind, algo, False)}
    # overlap=True cannot be had under a scaler: refused, saying why
    ddp = DistributedDataParallel(_net())
    out["overlap"] = error_of(lambda: sasg.ddp.register(ddp, overlap=True, scaler=torch.amp.GradScaler("cpu")),
                              ValueError)
    # Without the scaler an overflow reaches the hook's state: an error on every rank, at once.
    ddp = DistributedDataParallel(_net())
    opt = _optimizer("sgd", ddp.parameters())
    sasg.ddp.register(ddp, optimizer=opt, warmup=0)
    scaler = torch.amp.GradScaler("cpu")
    x, y = rank_batch(0, rank)
    loss = F.cross_entropy(ddp(x), y) * (float("inf") if rank == 1 else 1.0)
    out["unpassed"] = error_of(lambda: scaler.scale(loss).backward(), RuntimeError)
    # Checkpoints: the checks of rounds skipped before any round is on the ledger are saved too; a
    # state saved with a scaler loads into a hook without one; a hostile count is refused.
    made = []
    for scaled in (True, True, False):
        ddp = DistributedDataParallel(_net())
        made.append((ddp, sasg.ddp.register(ddp, optimizer=_optimizer("sgd", ddp.parameters()),
                                            scaler=torch.amp.GradScaler("cpu") if scaled else None)))
    (ddp, first), (_, again), (_, unscaled) = made
    scaler = first._scaling.scaler
    scaler.scale(F.cross_entropy(ddp(x), y) * float("inf")).backward()  # every rank overflows at once
    saved = first.state_dict()
    out["pending"] = saved["optimizer_link"]["loss_scale_bits"]
    again.load_state_dict(saved)
    out["restored"] = again._scaling.pending_bits
    out["unscaled load"] = error_of(lambda: unscaled.load_state_dict(saved))
    hostile = {**saved, "optimizer_link": {**saved["optimizer_link"], "loss_scale_bits": -8}}
    out["hostile"] = error_of(lambda: again.load_state_dict(hostile), ValueError)
    save_rank_results(out, folder, rank)


def test_a_scaled_job_is_the_unscaled_one_less_its_overflowed_steps(tmp_path):
    ranks = results_of_ranks(_job, tmp_path, WORLD, timeout=150.0)
    for rank, out in enumerate(ranks):
        for case in (f"{k} {a}" for k, a in CASES):
            scaled, plain = out[case]["scaled"], out[case]["plain"]
            assert scaled["skipped"] == len(BAD), case
            assert scaled["rounds"] == plain["rounds"] == STEPS - len(BAD), case
            # the scale grew and backed off (so the state really met several scales) ...
            assert len(set(scaled["scales"])) >= 3 and min(scaled["scales"]) < 2.0**10, case
            # ... and the training is the unscaled job's, bit for bit
            assert torch.equal(scaled["theta"], plain["theta"]), case
            assert torch.equal(scaled["error"], plain["error"]), case
            assert bool(torch.isfinite(scaled["error"]).all()), case
            # the check's 4 bytes a rank a backward pass, on the ledger and per rank (and the clipping's
            # packet of the skipped ones)
            check = 32 * STEPS + (8 * CLIP_PACKET * len(BAD) if case.startswith(("momentum-clip", "adamw-clip")) else 0)
            assert scaled["bits_by_rank"] == [b + check for b in plain["bits_by_rank"]], case
            assert scaled["bits_up"] == plain["bits_up"] + WORLD * check, case
            assert "loss_scale_bits" in scaled["saved"] and "loss_scale_bits" not in plain["saved"], case
        assert "GradScaler" in out["overlap"] and "overlap=None" in out["overlap"]
        assert "scaler=scaler" in out["unpassed"], f"rank {rank}: {out['unpassed']}"
        assert out["pending"] == out["restored"] == 32 * WORLD  # one skipped round's checks, no ledger row yet
        assert out["unscaled load"] == "no error"
        assert "loss_scale_bits" in out["hostile"]
    lazy = [out["momentum wk1+topk"]["scaled"]["theta"] for out in ranks]
    assert torch.equal(lazy[0], lazy[1])


def test_the_scaler_is_checked_when_the_hook_is_made():
    from sasg.ddp import HookState

    with pytest.raises(ValueError, match="torch.amp.GradScaler"):
        HookState(_net(), scaler="fp16")
    # a disabled scaler scales nothing: nothing to do
    assert HookState(_net(), scaler=torch.amp.GradScaler("cpu", enabled=False))._scaling is None
