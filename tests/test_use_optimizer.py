"""A hook state made before its optimizer (Lightning's ``configure_optimizers`` runs after the
``DDPStrategy`` holding the state is made): ``HookState.use_optimizer(opt)`` links it later.

Checked exactly on 2 gloo ranks: a state made without the optimizer, installed by hand and given
it with ``use_optimizer`` before the first backward pass, trains as ``sasg.ddp.register(ddp,
optimizer=opt)`` does, bit for bit. Cases: momentum SGD (DGC's correction), AdamW (the frozen
second moment) and ``wk1+topk`` under AdamW, whose default aggregate differs under Adam (so the
algorithm itself is rebuilt). Before, such a state ran without either correction. Too late (after
the first backward pass) or not an optimizer is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from conftest import error_of, results_of_ranks, save_rank_results, seeded_module, train_steps

WORLD, STEPS = 2, 10
CASES = (("momentum", "always+topk"), ("adamw", "always+topk"), ("adamw", "wk1+topk"))


def _net() -> nn.Module:
    return seeded_module(lambda: nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 8)), 0.5)


def _train(rank: int, kind: str, algo: str, late: bool) -> torch.Tensor:
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = _net()
    ddp = DistributedDataParallel(net)
    opt = (torch.optim.AdamW(ddp.parameters(), lr=0.01) if kind == "adamw"
           else torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9))
    if late:
        state = sasg.ddp.HookState(net, algo, density=0.1, warmup=2)
        ddp.register_comm_hook(state, sasg.ddp.comm_hook)
        state.use_optimizer(opt)
    else:
        state = sasg.ddp.register(ddp, algo, optimizer=opt, density=0.1, warmup=2)
    assert (state.momentum is not None) == (kind == "momentum") and (state.variance is not None) == (kind == "adamw")
    train_steps(ddp, opt, rank, STEPS)
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _job(rank, world, folder):
    import sasg.ddp

    out: dict = {f"{k} {a}": {"late": _train(rank, k, a, True), "given": _train(rank, k, a, False)} for k, a in CASES}
    from torch.nn.parallel import DistributedDataParallel

    net = _net()
    ddp = DistributedDataParallel(net)
    state = sasg.ddp.register(ddp)
    out["not an optimizer"] = error_of(lambda: sasg.ddp.HookState(_net()).use_optimizer("sgd"), ValueError)
    out["too late"] = error_of(lambda: state.use_optimizer(torch.optim.SGD(net.parameters(), lr=0.1)), RuntimeError)
    save_rank_results(out, folder, rank)


def test_an_optimizer_linked_late_trains_as_one_given_at_once(tmp_path):
    for rank, out in enumerate(results_of_ranks(_job, tmp_path, WORLD, timeout=120.0)):
        differ = [case for case in (f"{k} {a}" for k, a in CASES)
                  if not torch.equal(out[case]["late"], out[case]["given"])]
        assert not differ, (rank, differ)
        assert "torch.optim.Optimizer" in out["not an optimizer"]
        assert "before the first backward pass" in out["too late"]
