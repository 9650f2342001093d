"""The hook under ``find_unused_parameters=True``, with parameters that no rank uses in a step.

DDP leaves such a parameter's ``.grad`` alone, so the hook's aggregate for it never reaches the
step; what error feedback sent of it must go back to the memory (sasg.ddp.unused). A 2-rank gloo
job trains an MLP with two heads used in turn (head ``b`` on even steps, ``c`` on odd ones, on
both ranks) under plain SGD and checks error feedback's ledger exactly:

    (theta_0 - theta_T) / lr + sum_m e_m = sum_t sum_m g_{m,t} / M

(what the steps applied plus what the memories still hold is every gradient the ranks computed,
each rank's own gradient taken on a copy of the model; the unused head's is zero). Before the
memory got the dropped part back, the unused head lost it: the two sides parted by the residuals
sent in the heads' idle steps. Under every optimizer (plain and momentum SGD, AdamW) the idle
head does not move in its idle steps, as under plain DDP.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from conftest import error_of, seeded_module
from test_distributed import spawn

WORLD, STEPS, LR = 2, 14, 0.1


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 64)
        self.b = nn.Linear(64, 8)  # (512 weights: compressed; the hook sends tensors of <= 256 whole)
        self.c = nn.Linear(64, 8)
        self.step = 0

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.step += 1
        return self.b(h) if self.step % 2 else self.c(h)


def _net() -> _TwoHeads:
    return seeded_module(_TwoHeads, 0.5)


def _batch(step: int, rank: int):
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 6, generator=g), torch.randint(0, 8, (8,), generator=g)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _job(rank, world, folder):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    out = {}
    for kind in ("sgd", "momentum", "adamw"):
        net = _net()
        ddp = DistributedDataParallel(net, find_unused_parameters=True)
        opt = (torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9 if kind == "momentum" else 0.0)
               if kind != "adamw" else torch.optim.AdamW(ddp.parameters(), lr=0.01))
        state = sasg.ddp.register(ddp, optimizer=opt, density=0.1, warmup=2)
        theta0 = _flat(net.parameters())
        computed = torch.zeros_like(theta0)  # this rank's own gradients, summed over the steps
        moved = 0.0  # the most an entry of the idle head moved in a step
        for step in range(STEPS):
            x, y = _batch(step, rank)
            own = _net()
            own.load_state_dict(net.state_dict())
            own.step = net.step
            F.cross_entropy(own(x), y).backward()
            computed += _flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in own.parameters())
            opt.zero_grad()
            idle = net.c if net.step % 2 == 0 else net.b  # (the forward pass below uses the other head)
            before = _flat(idle.parameters())
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            moved = max(moved, float((_flat(idle.parameters()) - before).abs().max()))
        held = state.error.double()
        dist.all_reduce(computed)
        dist.all_reduce(held)
        out[kind] = {"theta0": theta0, "theta": _flat(net.parameters()), "held": held, "computed": computed / world,
                     "dropped": state.dropped_by_ddp, "idle_moved": moved, "finite": bool(torch.isfinite(_flat(net.parameters())).all())}
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


def _by_hand(rank, world, folder):
    """The plain-SGD job of _job with the hook installed by hand and attached, and with register;
    attach's refusals."""
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    out = {}
    for how in ("register", "by hand"):
        net = _net()
        ddp = DistributedDataParallel(net, find_unused_parameters=True)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        if how == "register":
            state = sasg.ddp.register(ddp, optimizer=opt, density=0.1, warmup=2)
        else:  # (as under Lightning: the state from the module, the hook given to DDP, then attach)
            state = sasg.ddp.HookState(net, optimizer=opt, density=0.1, warmup=2)
            ddp.register_comm_hook(state, sasg.ddp.comm_hook)
            sasg.ddp.attach(state, ddp)
        for step in range(STEPS):
            x, y = _batch(step, rank)
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
        out[how] = {"theta": _flat(net.parameters()), "error": state.error.clone(), "dropped": state.dropped_by_ddp}
    # A frozen layer (fine-tuning): register, and a state attached by hand, follow the trained rest.
    frozen = _net()
    frozen.a.weight.requires_grad_(False)
    fddp = DistributedDataParallel(frozen, find_unused_parameters=True)
    fopt = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=LR)
    fstate = sasg.ddp.register(fddp, optimizer=fopt, density=0.1, warmup=2)
    sasg.ddp.attach(sasg.ddp.HookState(frozen, optimizer=fopt, density=0.1, warmup=2), fddp)
    w0 = frozen.a.weight.detach().clone()
    for step in range(3):
        x, y = _batch(step, rank)
        fopt.zero_grad()
        F.cross_entropy(fddp(x), y).backward()
        fopt.step()
    out["frozen"] = {"followed": len(fstate.index.params), "kept": torch.equal(frozen.a.weight, w0),
                     "trained": _flat(p for p in frozen.parameters() if p.requires_grad)}
    other = DistributedDataParallel(_net(), find_unused_parameters=True)
    out["other model"] = error_of(lambda: sasg.ddp.attach(state, other), ValueError)
    out["not ddp"] = error_of(lambda: sasg.ddp.attach(state, net), TypeError)
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


def test_a_hook_installed_by_hand_and_attached_trains_as_register_s(tmp_path):
    spawn(_by_hand, WORLD, str(tmp_path), timeout=120.0)
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert out["by hand"]["dropped"] == out["register"]["dropped"] == 2 * STEPS
        assert torch.equal(out["by hand"]["theta"], out["register"]["theta"])
        assert torch.equal(out["by hand"]["error"], out["register"]["error"])
        assert out["frozen"]["followed"] == 5 and out["frozen"]["kept"]  # (a's bias, b and c: 5 tensors)
        assert torch.equal(out["frozen"]["trained"], torch.load(tmp_path / "rank0.pt", weights_only=True)["frozen"]["trained"])
        assert "sasg.ddp.attach" in out["other model"] and "HookState(ddp_model.module" in out["other model"]
        assert "sasg.ddp.attach needs a torch.nn.parallel.DistributedDataParallel" in out["not ddp"]


def test_what_ddp_leaves_out_of_a_step_goes_back_to_the_error_memory(tmp_path):
    spawn(_job, WORLD, str(tmp_path), timeout=120.0)
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        sgd = out["sgd"]
        # head b sits out 7 steps and head c 7, each 2 tensors; the 2 warm-up rounds count too
        assert sgd["dropped"] == 2 * STEPS
        applied = (sgd["theta0"] - sgd["theta"]) / LR
        torch.testing.assert_close(applied + sgd["held"], sgd["computed"], atol=1e-5, rtol=1e-5)
        for kind in ("sgd", "momentum", "adamw"):
            assert out[kind]["dropped"] == 2 * STEPS and out[kind]["finite"], kind
            # no rank used it, DDP left its .grad None and the optimizer skips it: nothing moves it
            # (the hook's Adam correction used to redo a step Adam had not taken)
            assert out[kind]["idle_moved"] == 0.0, kind
