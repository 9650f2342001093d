"""Your own training loop, SASG instead of DDP: FC 784-512-10 on the embedded MNIST-5k.

    torchrun --standalone --nproc_per_node 4 examples/torchrun_mnist.py --epochs 2
    python examples/torchrun_mnist.py --epochs 1          # one process works too (M = 1)

Each rank trains on its own share of the data (1/M of it) with ``sasg.optim.SASG``; the optimizer decides
every step whether this worker's gradient is worth sending, sends a top-k sparse message if so
(nothing otherwise), and applies everybody's latest messages, so all ranks keep identical
parameters without broadcasting them. Rank 0 prints test accuracy and what went over the wire.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sasg.data import load_mnist5k
from sasg.optim import SASG
from sasg.threads import use_threads


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default="sasg", choices=("sgd", "sparse", "lasg", "sasg"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=10, help="per worker")
    p.add_argument("--lr", type=float, default=0.05, help="on the mean of the workers' gradients")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--c", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item() * 100
    model.train()
    return acc


def main() -> None:
    args = parse_args()
    use_threads()  # one torch thread per process: ranks share the cores ($SASG_THREADS overrides)
    distributed = "RANK" in os.environ  # started by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=120))
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")

    data = load_mnist5k()
    # Every rank gets an equal share (all ranks must take the same number of steps).
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.seed))
    per = len(perm) // world
    mine = perm[rank * per : (rank + 1) * per]
    loader = DataLoader(
        TensorDataset(data.train.x[mine], data.train.y[mine]), batch_size=args.batch_size, shuffle=True,
        drop_last=True, generator=torch.Generator().manual_seed(args.seed * 1000 + rank),
    )

    torch.manual_seed(args.seed)  # SASG also copies rank 0's initial parameters to every rank
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
    opt = SASG(model.parameters(), lr=args.lr, density=args.density, window=args.window, c=args.c,
               algorithm=args.algo)

    for epoch in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)

            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)  # evaluates closure at theta and, if the lazy rule asks, at the anchor
        if rank == 0:
            acc = accuracy(model, data.test.x.to(device), data.test.y.to(device))
            t = opt.ledger.totals()
            print(f"epoch {epoch + 1}: test acc {acc:.2f} %  uploads {t['uploads']}/{t['iterations'] * world}  "
                  f"bits up {t['bits_up']:.3e}", flush=True)

    t = opt.ledger.totals()
    c = opt.transport.counters
    sent = torch.tensor([c.payload_bytes_sent, c.flag_bytes_sent], dtype=torch.int64)
    if distributed:
        sent = sent.to(device) if backend == "nccl" else sent
        dist.all_reduce(sent)
        sent = sent.cpu()
    if rank == 0:
        print(f"{args.algo} on {world} worker(s): {t['iterations']} steps, {t['uploads']} uploads, "
              f"{t['skipped']} skipped; payload bytes sent by all ranks {int(sent[0]):,}, "
              f"flag bytes {int(sent[1]):,}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
