"""Accuracy of the sasg DDP hook against plain DDP, with the user's own optimizer.

    .venv/bin/python benchmarks/ddp_accuracy.py                       # 2 ranks, 20 epochs, seed 0
    .venv/bin/python benchmarks/ddp_accuracy.py --epochs 5 --world 4 --seeds 0,1,2
    .venv/bin/python benchmarks/ddp_accuracy.py --hooks always+topk/paper32,always+topk/rice+sign

The default setting: FC 784-512-10 on the embedded MNIST-5k (4,000 train / 1,000 test images),
batch 10 per worker, one worker per rank (gloo on the CPU, one intra-op thread per rank), 20
epochs, every worker's minibatches drawn exactly as the simulator draws them (iid split, per
worker sampler streams from the seed). Each optimizer is trained twice from the same
initialisation on the same minibatches: once with DDP's own all-reduce and once with the sasg
hook installed (``sasg.ddp.register``). The optimizers:

* ``momentum``: SGD, momentum 0.9, lr 0.02: the best of a sweep on plain DDP (2 ranks, 20
  epochs, seed 0; ``--hooks none --optimizers momentum --lr-momentum LR``): lr 0.002 / 0.005 /
  0.01 / 0.02 / 0.05 / 0.1 gave 93.2 / 93.8 / 94.5 / 95.1 / 90.4 / 45.5 % test accuracy;
* ``adamw``: AdamW, lr 1e-3, PyTorch's other defaults (weight decay 0.01);
* ``bf16``: the ``momentum`` optimizer with the forward pass under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the error memory stays fp32);
* ``fp16``, ``fp16-adamw`` (not run by default): the ``momentum`` and ``adamw`` optimizers with
  the forward pass under ``torch.autocast("cpu", dtype=torch.float16)`` and the loss scaled by a
  ``torch.amp.GradScaler`` at its defaults, which DDP and the hooks run alike; the sasg hook is
  told of it (``scaler=``). Each run also reports the steps the scaler skipped.

``--clip MAX_NORM``: every job clips the gradients its optimizer gets with
``torch.nn.utils.clip_grad_norm_`` after ``backward()`` (DDP, PowerSGD, and the sasg hook as a
user would first try it), except a sasg hook given ``clip_grad_norm`` (``--hooks
defaults:clip_grad_norm=1.0``), which clips the gradients itself (sasg.ddp.clipping); the
JSON rows count the steps the job's own call clipped (``ddp_clipped_steps``, ``hook_clipped_steps``;
for a hook given ``clip_grad_norm``, the rounds it clipped, ``hook.clipped_rounds``).

Hooks (``--hooks``, ``ALGO/CODEC``): by default ``always+topk/rice+sign`` — top-k per tensor at
h = 1 %, error feedback, every round, Golomb-Rice index gaps and one sign bit per kept entry
(plus each tensor's mean magnitude). The table gives each pair's final test accuracy, the
difference hook - DDP in points, the bits the hook sent over the run as a fraction of DDP's dense
fp32 gradients (32 bits x parameters x ranks x rounds), and the training time of a run (mean over
the seeds; it depends on what else the machine runs). With several seeds, the accuracies are
means and the difference is the mean of the paired differences, each seed's in brackets. The
differences are counted in test images (1,000 of them: 0.1 point each), so -0.5 is exactly -0.5.
The last line is JSON (``within_half_point``: every pair within 0.5 points;
``never_half_point_below``: the hook never more than 0.5 points below DDP;
``mean_within_half_point``: every optimizer's mean difference within 0.5 points).

Measured with ``--seeds 0,1,2`` (2 ranks, 20 epochs): see docs/ddp-hook.md, "Accuracy with your optimizer and your model".

The workers are the ranks: the paper's setting has M = 10, here 2 by default to keep it cheap
on a small CPU box (each rank is one process on one core).
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

OPTIMIZERS = ("momentum", "adamw", "bf16")
HALF = ("fp16", "fp16-adamw")  # fp16 autocast with a GradScaler (--optimizers fp16,fp16-adamw)
MODELS = ("fc", "lenet5", "mlp", "cnn")
# "ALGO/CODEC" runs the sasg hook at its defaults otherwise; "defaults" is sasg.ddp.register(ddp,
# optimizer=opt) with nothing else; "powersgd" is PyTorch's PowerSGD hook at rank 2.
DEFAULT_HOOKS = ("defaults", "powersgd")
DEFAULT_LR = {"momentum": 0.02, "adamw": 1e-3, "bf16": 0.02, "fp16": 0.02, "fp16-adamw": 1e-3}
POWERSGD_RANK = 2


def build(name: str, data, seed: int):
    """The benchmark's models: the project's FC 784-512-10 and LeNet-5, an MLP 784-256-10 and a
    small CNN of a user's own (two 3x3 convolutions, two linear layers, 26,698 parameters)."""
    from torch import nn

    from sasg.models import build_model
    from sasg.models.init import init_parameters

    if name in ("fc", "lenet5"):
        return build_model(name, data.sample_shape, data.num_classes, seed)
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, data.num_classes))
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, data.num_classes))
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return init_parameters(model, torch.Generator().manual_seed(int(seed)))


def powersgd_bits_per_round(model, rank: int = POWERSGD_RANK, min_compression_rate: float = 2.0) -> int:
    """What PyTorch's PowerSGD hook sends per rank and compressed round, in bits: 1-D tensors and
    matrices it does not compress (its own rule: (n + m) r x min_compression_rate >= n m) as they
    are, every other tensor as its P (n x r) and Q (m x r) factors, fp32."""
    floats = 0
    for p in model.parameters():
        if p.dim() <= 1:
            floats += p.numel()
            continue
        n, m = p.shape[0], p.numel() // p.shape[0]
        r = min(n, m, rank)
        floats += (n + m) * r if (n + m) * r * min_compression_rate < n * m else n * m
    return 32 * floats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(data, world: int, rank: int, batch_size: int, seed: int):
    """This rank's minibatch indices, round after round: simulated worker ``rank``'s (the
    simulator's iid split and per-worker sampler streams for ``seed``), the same for every run."""
    from sasg.data import WorkerSampler, make_partition

    shards = make_partition("iid", data.train.y, world, torch.Generator().manual_seed(seed), min_size=batch_size)
    sampler = WorkerSampler(shards, batch_size, seed)
    return sampler.rounds_per_epoch, lambda: sampler.next()[rank]


@torch.no_grad()
def _test_correct(model, data) -> int:
    """Test images classified correctly (the model in eval mode, fp32, no autocast)."""
    model.eval()
    correct = int((model(data.test.x).argmax(1) == data.test.y).sum().item())
    model.train()
    return correct


def _optimizer(name: str, params, lr: float):
    if name in ("adamw", "fp16-adamw"):
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def train_once(rank: int, world: int, data, *, optimizer: str, lr: float, hook: str | None, epochs: int,
               batch_size: int, density: float | None, seed: int, max_rounds: int | None = None,
               model: str = "fc", clip: float | None = None) -> dict:
    """One training run in this rank (call on every rank of the group). ``hook``: ``ALGO/CODEC``
    (the sasg hook, its defaults otherwise), ``defaults`` (``sasg.ddp.register(ddp,
    optimizer=opt)``), ``powersgd`` (PyTorch's PowerSGD hook, rank 2, error feedback and warm
    start, compressing from its second round as early as it allows) or None for DDP's own
    all-reduce. ``clip``: every step clips the gradients the optimizer gets with
    ``torch.nn.utils.clip_grad_norm_`` (after ``scaler.unscale_``), except under a sasg hook given
    ``clip_grad_norm``, which clips the gradients itself. Returns the test accuracy after every
    epoch (the last one: after ``max_rounds`` rounds when given), the bits sent and whether the
    ranks ended equal."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    net = build(model, data, seed)
    ddp = DistributedDataParallel(net)
    opt = _optimizer(optimizer, ddp.parameters(), lr)
    state = None
    if hook == "powersgd":
        ps = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=POWERSGD_RANK,
                                         start_powerSGD_iter=2, random_seed=seed)
        ddp.register_comm_hook(ps, powerSGD_hook.powerSGD_hook)
    elif hook is not None:
        knobs = {} if density is None else {"density": density}
        name, _, options = hook.partition(":")  # e.g. defaults:warmup=10;tensor_policy=all
        for option in filter(None, options.split(";")):
            key, _, value = option.partition("=")
            knobs[key] = value if key in ("tensor_policy", "codec", "algo") else (
                value == "True" if value in ("True", "False") else float(value) if "." in value else int(value))
        if name != "defaults":
            algo, codec = name.split("/")
            knobs.update(algo=algo, codec=codec)
    half = optimizer in HALF
    scaler = torch.amp.GradScaler("cpu", enabled=half)  # (disabled: scale() and step() as without it)
    # the job clips what its optimizer gets, unless the sasg hook clips the gradients itself
    own_clip = clip is not None and not (hook not in (None, "powersgd") and "clip_grad_norm" in knobs)
    if hook is not None and hook != "powersgd":
        state = sasg.ddp.register(ddp, optimizer=opt, seed=seed, scaler=scaler if half else None, **knobs)
    per_epoch, next_idx = _batches(data, world, rank, batch_size, seed)
    total = per_epoch * epochs if max_rounds is None else min(max_rounds, per_epoch * epochs)
    autocast = optimizer == "bf16" or half
    skipped, clipped, curve = 0, 0, []
    start = time.perf_counter()
    for r in range(total):
        idx = next_idx()
        x, y = data.train.x[idx], data.train.y[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16 if half else torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(ddp(x), y)
        scale = scaler.get_scale() if half else 1.0
        scaler.scale(loss).backward()
        if own_clip:
            scaler.unscale_(opt)  # (disabled: does nothing)
            clipped += int(torch.nn.utils.clip_grad_norm_(ddp.parameters(), clip) > clip)
        scaler.step(opt)
        scaler.update()
        skipped += int(half and scaler.get_scale() < scale)
        if (r + 1) % per_epoch == 0 or r + 1 == total:
            curve.append(_test_correct(net, data))
    seconds = time.perf_counter() - start
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    top, bottom = flat.clone(), flat.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    dist.all_reduce(bottom, op=dist.ReduceOp.MIN)
    dense_bits = 32 * flat.numel() * world * total
    n_test = len(data.test.y)
    out = {"model": model, "optimizer": optimizer, "lr": lr, "hook": hook, "seed": seed, "rounds": total,
           "n_test": n_test,
           "correct": curve[-1], "accuracy": 100.0 * curve[-1] / n_test,
           "curve": [100.0 * c / n_test for c in curve], "seconds": seconds,
           "ranks_equal": bool(torch.equal(top, bottom)), "dense_bits": dense_bits, "bits": dense_bits,
           "error_dtype": None, "skipped_steps": skipped,
           "clip": clip, "clipped_steps": clipped if own_clip else None}
    if state is not None and state.clipped_rounds is not None:  # the hook clipped: its own count
        out["clipped_steps"] = state.clipped_rounds
    if hook == "powersgd":  # its first round is a plain all-reduce (start_powerSGD_iter=2)
        out["bits"] = world * (32 * flat.numel() + (total - 1) * powersgd_bits_per_round(net))
    if state is not None:
        out["bits"] = int(sum(state.bits_by_rank))
        out["uploads"] = int(state.ledger.totals()["uploads"])
        out["error_dtype"] = str(state.error.dtype)
    return out


def _rank_main(rank: int, world: int, port: int, runs: list[dict], out_path: str) -> None:
    import torch.distributed as dist

    from sasg.data import load_mnist5k

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # one core per rank, as under torchrun with OMP_NUM_THREADS=1
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        data = load_mnist5k()
        results = []
        for i, run in enumerate(runs):
            if rank == 0:  # progress on stderr: the table and the JSON line stay on stdout
                print(f"[{i + 1}/{len(runs)}] {run['model']} {run['optimizer']} {run['hook'] or 'ddp'} seed "
                      f"{run['seed']}", file=sys.stderr, flush=True)
            results.append(train_once(rank, world, data, **run))
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(results, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(runs: list[dict], world: int = 2, timeout: float | None = None) -> list[dict]:
    """Run ``runs`` (keyword sets for :func:`train_once`) one after the other in a fresh
    ``world``-rank gloo job; returns rank 0's results in order."""
    import torch.multiprocessing as tmp

    with tempfile.TemporaryDirectory() as folder:
        out_path = os.path.join(folder, "results.json")
        ctx = tmp.start_processes(_rank_main, args=(world, _free_port(), runs, out_path), nprocs=world,
                                  join=False, start_method="spawn")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if deadline is not None and time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                raise TimeoutError(f"the {world}-rank job did not finish in {timeout:.0f} s")
        with open(out_path) as f:
            return json.load(f)


def plan(optimizers, hooks, seeds, lrs: dict, models=("fc",), **common) -> list[dict]:
    """Every (model, seed, optimizer): plain DDP first, then each hook, same settings otherwise.
    PowerSGD's hook is left out under autocast (bf16, fp16): on the CPU with torch 2.13 it aborts
    the gloo job under a bf16- or fp16-autocast forward ("Received data size doesn't match
    expected size: 1044 vs 512"; FC under both, and the small CNN under fp16 with AdamW), also
    with autocast switched off around the hook."""
    return [dict(model=m, optimizer=o, lr=lrs[o], hook=h, seed=s, **common)
            for m in models for s in seeds for o in optimizers for h in (None, *hooks)
            if not (h == "powersgd" and o in ("bf16", *HALF))]


def summarize(results: list[dict], hooks) -> list[dict]:
    """One row per (model, optimizer, hook): accuracies, paired differences in points, bit fraction."""
    rows = []
    models = list(dict.fromkeys(r.get("model", "fc") for r in results))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
    seeds = sorted({r["seed"] for r in results})
    by = {(r.get("model", "fc"), r["optimizer"], r["hook"], r["seed"]): r for r in results}
    for model in models:
        for o in optimizers:
            for h in hooks:
                if (model, o, h, seeds[0]) not in by:
                    continue  # not run (PowerSGD under autocast, see plan)
                base = [by[model, o, None, s] for s in seeds]
                mine = [by[model, o, h, s] for s in seeds]
                # in points, from the counts of correct test images (exact: -0.5 is -0.5, not -0.50000001)
                diffs = [100.0 * (m["correct"] - b["correct"]) / b["n_test"] for m, b in zip(mine, base)]
                rows.append({
                    "model": model, "optimizer": o, "lr": base[0]["lr"], "hook": h, "seeds": seeds,
                    "ddp_accuracy": sum(b["accuracy"] for b in base) / len(seeds),
                    "hook_accuracy": sum(m["accuracy"] for m in mine) / len(seeds),
                    "diff_points": sum(diffs) / len(diffs), "diffs": diffs,
                    "max_abs_diff_points": max(abs(d) for d in diffs),
                    "bits_fraction": sum(m["bits"] for m in mine) / sum(m["dense_bits"] for m in mine),
                    "ddp_seconds": sum(b["seconds"] for b in base) / len(seeds),
                    "hook_seconds": sum(m["seconds"] for m in mine) / len(seeds),
                    "ranks_equal": all(r["ranks_equal"] for r in base + mine),
                    "error_dtype": mine[0]["error_dtype"],
                    # steps a GradScaler skipped (fp16 rows), mean over the seeds
                    "ddp_skipped_steps": sum(b.get("skipped_steps", 0) for b in base) / len(seeds),
                    "hook_skipped_steps": sum(m.get("skipped_steps", 0) for m in mine) / len(seeds),
                    # steps clipped (--clip): by the job's own clip_grad_norm_, or the hook's clipped_rounds
                    "ddp_clipped_steps": _mean_of(b.get("clipped_steps") for b in base),
                    "hook_clipped_steps": _mean_of(m.get("clipped_steps") for m in mine),
                })
    return rows


def _mean_of(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values) / len(values)


def verdict(rows: list[dict], sasg: str = "defaults", powersgd: str = "powersgd") -> dict:
    """The figures issue 23 asks of the sasg hook at its defaults (row ``sasg``), against DDP and
    PowerSGD rank 2 (row ``powersgd``), over every model x optimizer pair (means over the seeds):
    the worst mean gap below DDP, the worst gap below PowerSGD, the largest bit fraction on FC and
    LeNet-5, and the hook's bits over PowerSGD's on the small CNN."""
    mine = [r for r in rows if r["hook"] == sasg]
    theirs = {(r["model"], r["optimizer"]): r for r in rows if r["hook"] == powersgd}
    out = {"worst_gap_vs_ddp": max(-r["diff_points"] for r in mine) if mine else None}
    paired = [r for r in mine if (r["model"], r["optimizer"]) in theirs]
    if paired:
        out["worst_gap_vs_powersgd"] = max(theirs[r["model"], r["optimizer"]]["hook_accuracy"] - r["hook_accuracy"]
                                           for r in paired)
    fractions = [r["bits_fraction"] for r in mine if r["model"] in ("fc", "lenet5")]
    out["worst_bits_fraction"] = max(fractions) if fractions else None
    cnn = [(r["bits_fraction"], theirs[r["model"], r["optimizer"]]["bits_fraction"])
           for r in mine if r["model"] == "cnn" and (r["model"], r["optimizer"]) in theirs]
    out["bits_over_powersgd_small_cnn"] = max(a / b for a, b in cnn) if cnn else None
    out["pass"] = bool(mine) and out["worst_gap_vs_ddp"] <= 0.5 and out.get("worst_gap_vs_powersgd", 0) <= 0.3 \
        and (out["worst_bits_fraction"] is None or out["worst_bits_fraction"] <= 0.03) \
        and (out["bits_over_powersgd_small_cnn"] is None or out["bits_over_powersgd_small_cnn"] <= 1)
    return out


def _table(rows) -> str:
    multi = len(rows[0]["seeds"]) > 1
    diff_head, width = ("diff pts (per seed)", 28) if multi else ("diff pts", 8)
    head = (f"{'model':<6} {'optimizer':<9} {'lr':>6} {'hook':<21} {'DDP acc %':>9} {'hook acc %':>10}  "
            f"{diff_head:<{width}} {'bits vs DDP':>11} {'DDP s':>6} {'hook s':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        diff = f"{r['diff_points']:+.2f}"
        if multi:
            diff += " (" + " ".join(f"{d:+.1f}" for d in r["diffs"]) + ")"
        lines.append(f"{r['model']:<6} {r['optimizer']:<9} {r['lr']:>6g} {r['hook']:<21} {r['ddp_accuracy']:>9.2f} "
                     f"{r['hook_accuracy']:>10.2f}  {diff:<{width}} {r['bits_fraction']:>11.4%} "
                     f"{r['ddp_seconds']:>6.0f} {r['hook_seconds']:>6.0f}")
    return "\n".join(lines)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2, help="ranks = workers (default 2)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--density", type=float, default=None, help="the sasg hook's density (default: its own)")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--hooks", default=",".join(DEFAULT_HOOKS),
                   help="defaults, powersgd, ALGO/CODEC,... ; 'none': plain DDP only")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--clip", type=float, default=None, metavar="MAX_NORM",
                   help="every job clips its gradients to this 2-norm with clip_grad_norm_ after backward(), "
                        "except sasg hooks given clip_grad_norm (e.g. --hooks defaults:clip_grad_norm=1.0)")
    for o in OPTIMIZERS + HALF:
        p.add_argument(f"--lr-{o}", type=float, default=DEFAULT_LR[o])
    args = p.parse_args(argv)

    optimizers, models = _split(args.optimizers), _split(args.models)
    for given, known, what in ((optimizers, OPTIMIZERS + HALF, "optimizer"), (models, MODELS, "model")):
        unknown = set(given) - set(known)
        if unknown:
            p.error(f"unknown {what}(s) {sorted(unknown)}; choose from {', '.join(known)}")
    hooks = [] if args.hooks.strip() == "none" else _split(args.hooks)
    for h in hooks:
        if h.partition(":")[0] not in ("defaults", "powersgd") and h.partition(":")[0].count("/") != 1:
            p.error(f"--hooks entries are defaults, powersgd or ALGO/CODEC, got {h!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = {o: getattr(args, f"lr_{o}".replace("-", "_")) for o in OPTIMIZERS + HALF}

    runs = plan(optimizers, hooks, seeds, lrs, models=models, epochs=args.epochs, batch_size=args.batch_size,
                density=args.density, clip=args.clip)
    print(f"{len(runs)} runs, {args.world} ranks (gloo, CPU), models {models}, {args.epochs} epochs, batch "
          f"{args.batch_size} per worker, seeds {seeds}", flush=True)
    t = time.monotonic()
    results = run(runs, world=args.world)
    wall = time.monotonic() - t
    if not hooks:
        for r in results:
            print(f"{r['model']:<6} {r['optimizer']:<10} lr {r['lr']:<8g} seed {r['seed']}: {r['accuracy']:.2f} %  "
                  f"(per epoch: {' '.join(f'{a:.1f}' for a in r['curve'])})")
        print(json.dumps({"world": args.world, "epochs": args.epochs, "results": results, "wall_seconds": wall}))
        return
    rows = summarize(results, hooks)
    print(_table(rows))
    print(f"total wall time {wall:.0f} s")
    worst = max(r["max_abs_diff_points"] for r in rows)
    lowest = min(min(r["diffs"]) for r in rows)
    worst_mean = max(abs(r["diff_points"]) for r in rows)
    summary = {
        "world": args.world, "models": models, "epochs": args.epochs, "batch_size": args.batch_size,
        "density": args.density, "clip": args.clip, "seeds": seeds, "rows": rows,
        **(verdict(rows) if "defaults" in hooks else {}),
        # every pair: |hook - DDP| <= 0.5 points; the hook never more than 0.5 points below DDP; per
        # optimizer, |mean over the seeds of hook - DDP| <= 0.5 points
        "max_abs_diff_points": worst, "within_half_point": worst <= 0.5,
        "min_diff_points": lowest, "never_half_point_below": lowest >= -0.5,
        "max_abs_mean_diff_points": worst_mean, "mean_within_half_point": worst_mean <= 0.5,
        "curves": {f"{r['model']}|{r['optimizer']}|{r['hook'] or 'ddp'}|{r['seed']}": r["curve"] for r in results},
        "wall_seconds": wall,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
