"""A standard DDP training script plus one line: sasg's communication hook.

    torchrun --standalone --nproc-per-node 2 examples/ddp_hook.py
    torchrun --standalone --nproc-per-node 2 examples/ddp_hook.py --optimizer adamw --lr 1e-3
    torchrun --standalone --nproc-per-node 2 examples/ddp_hook.py --algo wk1+topk --threshold-scale 0.2
    torchrun --standalone --nproc-per-node 2 examples/ddp_hook.py --algo sasg   # SASG's own rule (wk2)
    torchrun --standalone --nproc-per-node 2 examples/ddp_hook.py --checkpoint-dir ck   # run again to resume
    torchrun --standalone --nproc-per-node 2 examples/ddp_hook.py --fp16   # fp16 autocast + GradScaler

FC 784-512-10 on the embedded MNIST-5k, CPU (gloo) or one GPU per rank (NCCL). Everything is
plain PyTorch — DistributedSampler, DistributedDataParallel, your optimizer (SGD, momentum,
AdamW), autocast, gradient accumulation with no_sync — except the line marked below: with it,
each rank sends a top-k sparse, error-compensated message coded with Golomb-Rice gaps and one
sign bit per entry instead of all-reducing the dense gradient.

With ``--checkpoint-dir`` every rank saves its model, optimizer and hook state there every
``--checkpoint-every`` steps and at the end (written to a temporary file, then renamed: a kill
never leaves half a checkpoint), and a run started with the same arguments continues from the
newest one, mid-epoch too, with the numbers of a run that was never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import sasg.ddp
from sasg.data import load_mnist5k
from sasg.threads import use_threads


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", default="always+topk", help="always+topk, wk1+topk, ps+topk, sasg (wk2+topk), always+randomk, ...")
    p.add_argument("--codec", default="rice+sign", help="paper32, rice+fp16, rice+sign, bitmap+bf16, ...")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--window", type=int, default=10, help="lazy rules: window D (10)")
    p.add_argument("--threshold-scale", type=float, default=2.0,
                   help="lazy rules: c (2); a smaller c raises the threshold, so ranks skip more often")
    p.add_argument("--aggregate", default=None, choices=("last", "senders", "rotating"),
                   help="lazy rules: what a round steps by where ranks skip (default rotating: the senders, rank "
                        "k mod M sending in round k; senders under AdamW; last: the paper's)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "momentum", "adamw"))
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="per rank and optimizer step")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (no_sync on all but the last)")
    p.add_argument("--bf16", action="store_true", help="forward pass under bf16 autocast")
    p.add_argument("--fp16", action="store_true",
                   help="forward pass under fp16 autocast, the loss scaled by a GradScaler (given to the hook)")
    p.add_argument("--clip", type=float, default=None, metavar="MAX_NORM",
                   help="clip the mean gradient to this 2-norm (with the hook: clip_grad_norm=, same factor as DDP's)")
    p.add_argument("--no-hook", action="store_true", help="plain DDP all-reduce, for comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="save each rank's state here, and resume from it when it holds a checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (50)")
    args = p.parse_args()
    if args.checkpoint_every < 1:
        p.error(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
    if args.bf16 and args.fp16:
        p.error("--bf16 and --fp16 exclude each other: pick one autocast dtype")
    return args


def stop(message: str):
    """End this rank with ``message``, leaving the process group first (an exit that leaves it
    live makes the backend abort the process)."""
    dist.destroy_process_group()
    raise SystemExit(message)


def save_checkpoint(folder: Path, rank: int, state: dict) -> None:
    """This rank's state, atomically: a preemption mid-write leaves the previous checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"rank{rank}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / f"rank{rank}.pt")


def load_checkpoint(folder: Path | None, rank: int, device) -> dict | None:
    """This rank's checkpoint, or None; every rank must hold one of the same step."""
    path = folder / f"rank{rank}.pt" if folder is not None else None
    state = torch.load(path, map_location=device, weights_only=True) if path and path.exists() else None
    step = torch.tensor([state["step"] if state else -1], device=device)
    lo, hi = step.clone(), step.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        stop(f"rank {rank}: the ranks' checkpoints in {folder} are of different steps "
             f"({lo.item()} to {hi.item()}; -1: none): remove the folder to start afresh")
    return state


def step_loss(module, micro, half: torch.dtype | None) -> torch.Tensor:
    """The loss of one optimizer step over its micro-batches (what the backward passes add up to),
    the forward pass under autocast to ``half`` where given."""
    with torch.autocast(micro[0][0].device.type, dtype=half or torch.bfloat16, enabled=half is not None):
        return sum(F.cross_entropy(module(x), y) for x, y in micro) / len(micro)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item() * 100
    model.train()
    return acc


def main() -> None:
    args = parse_args()
    use_threads()  # one torch thread per process: ranks share the cores ($SASG_THREADS overrides)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    data = load_mnist5k()
    train = TensorDataset(data.train.x, data.train.y)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    micro = args.batch_size // args.accumulate
    loader = DataLoader(train, batch_size=micro, sampler=sampler, drop_last=True)

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
    model = DistributedDataParallel(model)
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9 if args.optimizer == "momentum" else 0.0)

    half = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None
    # fp16 needs its loss scaled (bf16 does not): disabled, scale() and step() change nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=args.fp16)

    hook = None
    if not args.no_hook:
        # The one line. optimizer= lets the hook work with it: DGC's momentum correction for
        # momentum SGD, a frozen second moment for AdamW; the lazy rules wk1/ps read its lr.
        # scaler=: it works on the unscaled gradient and lets an overflowed step's round not happen.
        # clip_grad_norm=: the clipping, in place of a clip_grad_norm_ call after backward(), which
        # would clip the hook's aggregate instead of the gradient (sasg.ddp.clipping).
        hook = sasg.ddp.register(model, algo=args.algo, codec=args.codec, density=args.density, optimizer=opt,
                                 window=args.window, threshold_scale=args.threshold_scale, aggregate=args.aggregate,
                                 scaler=scaler if args.fp16 else None, clip_grad_norm=args.clip)

    def state_of(step: int) -> dict:  # plain tensors and numbers: torch.load(weights_only=True) reads it
        return {"step": step, "model": model.module.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(), "hook": hook.state_dict() if hook is not None else None}

    steps_per_epoch = len(loader) // args.accumulate  # a last, incomplete accumulation is dropped
    if steps_per_epoch == 0:
        stop(f"--batch-size {args.batch_size} leaves no full step in an epoch of {len(train) // world} "
             "examples per rank: use a smaller batch")
    step = 0
    state = load_checkpoint(args.checkpoint_dir, rank, device)
    if state is not None:
        if (state["hook"] is None) != (hook is None):
            stop(f"rank {rank}: the checkpoint in {args.checkpoint_dir} was saved "
                 f"{'without' if hook is not None else 'with'} the sasg hook: resume it the same way")
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if hook is not None:
            hook.load_state_dict(state["hook"])
        step = state["step"]
        if rank == 0:
            print(f"resumed from step {step}", flush=True)
    for epoch in range(step // steps_per_epoch, args.epochs):
        sampler.set_epoch(epoch)
        # On resume, the micro-batches of this epoch's steps already taken are skipped.
        skip = (step - epoch * steps_per_epoch) * args.accumulate
        for i, (x, y) in enumerate(itertools.islice(loader, skip, steps_per_epoch * args.accumulate), start=skip):
            x, y = x.to(device), y.to(device)
            last_micro = (i + 1) % args.accumulate == 0
            micro = [] if i % args.accumulate == 0 else micro
            micro.append((x, y))
            if last_micro and hook is not None:
                # SASG's rule (wk2, `--algo sasg`) compares with this rank's gradient at its last upload
                # point on the same minibatch: the whole step's loss, computed on the module it is given
                # (other rules need nothing and return at once).
                hook.second_gradient(lambda m: step_loss(m, micro, half))
            # Gradient accumulation: DDP (and so the hook) communicates only on the last micro-batch.
            with contextlib.nullcontext() if last_micro else model.no_sync():
                with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=half is not None):
                    loss = F.cross_entropy(model(x), y) / args.accumulate
                scaler.scale(loss).backward()
            if not last_micro:
                continue
            if args.clip is not None and hook is None:  # plain DDP clips the mean gradient, unscaled
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            scaler.step(opt)  # (skips the step if a gradient overflowed; the hook then skipped its round)
            scaler.update()
            opt.zero_grad()
            step += 1
            if args.checkpoint_dir is not None and step % args.checkpoint_every == 0:
                save_checkpoint(args.checkpoint_dir, rank, state_of(step))
            if args.max_steps is not None and step >= args.max_steps:
                break
        if rank == 0:
            acc = accuracy(model.module, data.test.x.to(device), data.test.y.to(device))
            line = f"epoch {epoch + 1}: step {step}, test acc {acc:.2f} %"
            if hook is not None:
                t = hook.ledger.totals()
                line += f", uploads {t['uploads']}/{t['iterations'] * world}, bits up {t['bits_up']:.3e}"
            print(line, flush=True)
        if args.max_steps is not None and step >= args.max_steps:
            break

    if args.checkpoint_dir is not None and step % args.checkpoint_every != 0:
        save_checkpoint(args.checkpoint_dir, rank, state_of(step))  # the end of the run
    if hook is not None and rank == 0:
        dense = 32 * sum(p.numel() for p in model.parameters()) * world * hook.ledger.iterations
        bits = hook.bits_by_rank
        print(f"{args.algo} / {args.codec}: {step} steps, bits sent per rank {bits} "
              f"({sum(bits) / dense:.4f} of dense fp32 gradients)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
