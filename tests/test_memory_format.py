"""The hook on a model whose parameters are not C-contiguous (a conv net in ``channels_last``).

DDP lays out a dense parameter's gradient in its bucket as the parameter is laid out, while
``GradBucket.gradients()`` views every gradient C-contiguously; read through those views a
``channels_last`` kernel's gradient is permuted. Plain SGD with top-k does not notice (every
entry keeps its own place, permuted), but momentum correction pairs the gradient with SGD's
momentum buffer and Adam's frozen second moment with Adam's own: before the fix, a conv net in
``channels_last`` under momentum SGD reached NaN within 30 steps where the same net laid out
contiguously trained.

A 2-rank gloo job checks, on a small conv net in both layouts:

* exactly: a comm hook that reads the buckets with :class:`~sasg.ddp.buckets.ParameterIndex`
  reads each rank's own gradient in layout order, and the numbers 0, 1, 2, ... it writes in
  layout order reach ``.grad`` in that order (the old contiguous views passed a read-then-write
  round trip, permuting both ways);
* the sasg hook with momentum SGD and with AdamW trains the ``channels_last`` copy as it trains
  the contiguous one (same minibatches; the two layouts' convolutions round differently, so
  within a small tolerance).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from conftest import seeded_module
from test_distributed import spawn

WORLD, STEPS = 2, 12


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def _net(channels_last: bool) -> nn.Module:
    net = seeded_module(_Net, 0.3)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _batch(step: int, rank: int, channels_last: bool):
    g = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randn(8, 3, 10, 10, generator=g)
    return (x.to(memory_format=torch.channels_last) if channels_last else x), torch.randint(0, 5, (8,), generator=g)


def _probe_hook(index, read: list):
    def hook(_, bucket):
        read.append(index.gather([bucket], torch.zeros(index.numel)))  # (one bucket holds this model)
        index.scatter(torch.arange(index.numel, dtype=torch.float32), [bucket])
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    return hook


def _job(rank, world, folder):
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp
    from sasg.ddp.buckets import ParameterIndex

    out = {}
    for cl in (False, True):
        net = _net(cl)
        assert any(not p.is_contiguous() for p in net.parameters()) == cl
        ddp = DistributedDataParallel(net)
        read = []
        ddp.register_comm_hook(None, _probe_hook(ParameterIndex(net.named_parameters()), read))
        x, y = _batch(0, rank, cl)
        F.cross_entropy(ddp(x), y).backward()
        own = _net(cl)
        F.cross_entropy(own(x), y).backward()
        out[f"read {cl}"] = (read[0], torch.cat([q.grad.reshape(-1) for q in own.parameters()]))
        out[f"written {cl}"] = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        for kind in ("momentum", "adamw"):
            net = _net(cl)
            ddp = DistributedDataParallel(net)
            opt = (torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9) if kind == "momentum"
                   else torch.optim.AdamW(ddp.parameters(), lr=0.01))
            sasg.ddp.register(ddp, optimizer=opt, warmup=2, density=0.1)
            for step in range(STEPS):
                x, y = _batch(step + 1, rank, cl)
                opt.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                opt.step()
            out[f"{kind} {cl}"] = [p.detach().contiguous().clone() for p in net.parameters()]
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


def test_channels_last_gradients_are_read_and_trained_as_laid_out(tmp_path):
    spawn(_job, WORLD, str(tmp_path), timeout=120.0)
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for cl in (False, True):
            got, want = out[f"read {cl}"]
            assert torch.equal(got, want), f"rank {rank}, channels_last={cl}: the gradient was read permuted"
            written = out[f"written {cl}"]
            assert torch.equal(written, torch.arange(written.numel(), dtype=torch.float32)), \
                f"rank {rank}, channels_last={cl}: the hook's numbers reached .grad permuted"
        for kind in ("momentum", "adamw"):
            for flat, last in zip(out[f"{kind} False"], out[f"{kind} True"]):
                assert torch.isfinite(last).all(), kind
                torch.testing.assert_close(last, flat, atol=1e-4, rtol=1e-4, msg=f"{kind}, rank {rank}")
