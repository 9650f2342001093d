"""The hook on models the way users write them, against plain DDP: does it train, and as well?

    .venv/bin/python benchmarks/user_models.py                    # every case, seeds 0, 1, 2 (~1-2 min)
    .venv/bin/python benchmarks/user_models.py --cases conv-cl-momentum,heads-sgd --seeds 0

Each case is a small model with one trait the paper's FC 784-512-10 lacks, trained for
``--steps`` steps on 2 local ranks (gloo, one thread each) on a synthetic task, once with plain
DDP and once with ``sasg.ddp.register(ddp, optimizer=opt)`` at its defaults, from the same
initial parameters on the same minibatches:

* ``tied-adamw``, ``tied-adamw-bf16``: an embedding tied to the output layer, LayerNorm, GELU;
  AdamW (and bf16 autocast);
* ``conv-momentum``, ``conv-cl-momentum``, ``conv-cl-adamw``: a conv net with BatchNorm, laid out
  contiguously or ``channels_last``;
* ``frozen-sgd``: a layer with ``requires_grad=False``;
* ``heads-sgd``, ``heads-momentum``, ``heads-adamw``: two heads used in turn, under
  ``find_unused_parameters=True`` (no rank uses one head in a step);
* ``fp64-sgd``: float64 parameters;
* ``static-momentum``: ``DDP(static_graph=True)``;
* ``view-adamw``: ``DDP(gradient_as_bucket_view=True)``;
* ``accum-momentum``: two micro-batches a step under ``no_sync``;
* ``fp16-momentum``, ``fp16-adamw``: the conv net and the tied model under fp16 autocast, the loss
  scaled by a ``torch.amp.GradScaler`` at its defaults (DDP and the hook alike), which the hook is
  given (``scaler=``; ``--unscaled``: not given, as before the hook took one);
* ``zero-momentum``, ``zero-adamw``: the conv net and the tied model with their optimizer inside
  a ``torch.distributed.optim.ZeroRedundancyOptimizer`` (each rank holds its shard's state);
* ``compiled-momentum``, ``compiled-adamw-bf16``: the conv net and the tied model (under bf16
  autocast) run through ``torch.compile(ddp)`` after the hook is registered (inductor, the
  default backend).

Table: the mean over the seeds of the loss on a fixed evaluation set after training (rank 0),
DDP's and the hook's, their gap, and whether every run stayed finite with both ranks holding the
same parameters (and, for the fp16 cases, the steps the scaler skipped, mean over the seeds; a
hook that stopped the job with an error counts as not finite). The last line is JSON: per case
``ddp_loss``, ``hook_loss``, ``gap``, ``finite``, ``ranks_equal``, ``ddp_skipped``,
``hook_skipped``, ``stopped`` (the hook's error, if it stopped the job); and ``worst_gap`` (case
and value) and ``all_ok``. These are
sanity figures for a few dozen steps of tiny models, not accuracy results
(``benchmarks/ddp_accuracy.py`` measures those).
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from rank_round import free_port, join  # a port, a gloo group of local processes

WORLD = 2


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.ln = nn.LayerNorm(32)
        self.mid = nn.Linear(32, 32)
        self.out = nn.Linear(32, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(F.gelu(self.mid(self.ln(self.emb(x).mean(1)))))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.bn(self.c1(x))))).mean((2, 3)))


class Mlp(nn.Module):
    def __init__(self, frozen: bool = False, heads: bool = False):
        super().__init__()
        self.a = nn.Linear(20, 64)
        self.b = nn.Linear(64, 8)  # (512 weights: compressed; the hook sends tensors of <= 256 whole)
        self.c = nn.Linear(64, 8) if heads else None
        self.a.weight.requires_grad_(not frozen)
        self.calls = 0

    def forward(self, x):
        h = F.relu(self.a(x))
        if self.c is None:
            return self.b(h)
        self.calls += 1  # the same head on every rank: used in turn, so none is used in some steps
        return self.b(h) if self.calls % 2 or not self.training else self.c(h)


# case -> (task, model, optimizer, DDP and loop options)
CASES = {
    "tied-adamw": ("tokens", Tied, "adamw", {}),
    "tied-adamw-bf16": ("tokens", Tied, "adamw", {"bf16": True}),
    "conv-momentum": ("images", Conv, "momentum", {}),
    "conv-cl-momentum": ("images", Conv, "momentum", {"channels_last": True}),
    "conv-cl-adamw": ("images", Conv, "adamw", {"channels_last": True}),
    "frozen-sgd": ("vectors", lambda: Mlp(frozen=True), "sgd", {}),
    "heads-sgd": ("vectors", lambda: Mlp(heads=True), "sgd", {"unused": True}),
    "heads-momentum": ("vectors", lambda: Mlp(heads=True), "momentum", {"unused": True}),
    "heads-adamw": ("vectors", lambda: Mlp(heads=True), "adamw", {"unused": True}),
    "fp64-sgd": ("vectors", Mlp, "sgd", {"fp64": True}),
    "static-momentum": ("images", Conv, "momentum", {"static_graph": True}),
    "view-adamw": ("images", Conv, "adamw", {"bucket_view": True}),
    "accum-momentum": ("images", Conv, "momentum", {"accumulate": 2}),
    "fp16-momentum": ("images", Conv, "momentum", {"fp16": True}),
    "fp16-adamw": ("tokens", Tied, "adamw", {"fp16": True}),
    "zero-momentum": ("images", Conv, "momentum", {"zero": True}),
    "zero-adamw": ("tokens", Tied, "adamw", {"zero": True}),
    "compiled-momentum": ("images", Conv, "momentum", {"compiled": True}),
    "compiled-adamw-bf16": ("tokens", Tied, "adamw", {"compiled": True, "bf16": True}),
}


def _task(task: str, gen: torch.Generator, n: int):
    """``n`` examples of a learnable synthetic task."""
    if task == "tokens":  # predict the first token of the sequence
        x = torch.randint(0, 50, (n, 6), generator=gen)
        return x, x[:, 0]
    if task == "images":  # which quadrant is brightest
        x = torch.randn(n, 3, 12, 12, generator=gen) * 0.5
        y = torch.randint(0, 4, (n,), generator=gen)
        for i, q in enumerate(y.tolist()):
            x[i, :, 6 * (q // 2):6 * (q // 2) + 6, 6 * (q % 2):6 * (q % 2) + 6] += 1.0
        return x, y
    x = torch.randn(n, 20, generator=gen)  # which of the first four features is largest
    return x, x[:, :4].argmax(1)


def _model(make, seed: int, options: dict) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # (the layers' own initialisation would draw from the global RNG)
        model = make()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.05))
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.reset_parameters()
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
    if options.get("fp64"):
        model = model.double()
    if options.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def _train(case: str, hook: bool, seed: int, steps: int, rank: int, unscaled: bool = False) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sasg.ddp

    task, make, optimizer, o = CASES[case]
    model = _model(make, seed, o)
    ddp = DDP(model, find_unused_parameters=o.get("unused", False), static_graph=o.get("static_graph", False),
              gradient_as_bucket_view=o.get("bucket_view", False))
    params = [p for p in ddp.parameters() if p.requires_grad]
    cls, knobs = ((torch.optim.AdamW, {"lr": 3e-3}) if optimizer == "adamw"
                  else (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9 if optimizer == "momentum" else 0.0}))
    if o.get("zero"):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        opt = ZeroRedundancyOptimizer(params, optimizer_class=cls, **knobs)
    else:
        opt = cls(params, **knobs)
    half = o.get("fp16", False)
    scaler = torch.amp.GradScaler("cpu", enabled=half)  # (disabled: scale() and step() change nothing)
    if hook:
        sasg.ddp.register(ddp, optimizer=opt, **({"scaler": scaler} if half and not unscaled else {}))
    forward = torch.compile(ddp) if o.get("compiled") else ddp  # (after register: the hook is DDP's)
    gen = torch.Generator().manual_seed(1000 * seed + rank)

    def prepared(x):
        x = x.double() if o.get("fp64") and x.is_floating_point() else x
        return x.to(memory_format=torch.channels_last) if o.get("channels_last") else x

    micro = o.get("accumulate", 1)
    skipped, stopped = 0, None
    for _ in range(steps):
        opt.zero_grad()
        try:
            for m in range(micro):
                x, y = _task(task, gen, 16)
                with ddp.no_sync() if m < micro - 1 else torch.enable_grad():
                    with torch.autocast("cpu", dtype=torch.float16 if half else torch.bfloat16,
                                        enabled=half or o.get("bf16", False)):
                        loss = F.cross_entropy(forward(prepared(x)).float(), y) / micro
                    scaler.scale(loss).backward()
        except RuntimeError as e:  # the hook stopped the job (every rank alike): sasg.ddp.loss_scale
            stopped = str(e)[:120]
            break
        scale = scaler.get_scale() if half else 1.0
        scaler.step(opt)
        scaler.update()
        skipped += int(half and scaler.get_scale() < scale)
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    every = [torch.zeros_like(flat) for _ in range(WORLD)]
    dist.all_gather(every, flat)
    model.eval()
    with torch.no_grad():
        x, y = _task(task, torch.Generator().manual_seed(99), 512)
        loss = float(F.cross_entropy(model(prepared(x)).float(), y))
    return {"loss": loss, "finite": bool(torch.isfinite(flat).all()) and loss == loss and stopped is None,
            "ranks_equal": all(torch.equal(every[0], e) for e in every[1:]), "skipped": skipped, "stopped": stopped}


def _rank_main(rank: int, world: int, port: int, cases: list, seeds: list, steps: int, out_path: str,
               unscaled: bool = False) -> None:
    import torch.distributed as dist

    join(rank, world, port)
    results = {}
    for seed in seeds:
        for case in cases:
            for hook in (False, True):
                results[f"{case}|{int(hook)}|{seed}"] = _train(case, hook, seed, steps, rank, unscaled)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> int:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="(every case)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--unscaled", action="store_true",
                        help="fp16 cases: do not give the hook the GradScaler (as before it took one)")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; the cases: {', '.join(CASES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.start_processes(_rank_main, args=(WORLD, free_port(), cases, seeds, args.steps, out.name, args.unscaled),
                           nprocs=WORLD, start_method="spawn")
        raw = json.load(open(out.name))
    print(f"{WORLD} ranks (gloo, one thread each), {args.steps} steps, seeds {args.seeds}: evaluation loss, "
          "mean over the seeds")
    print(f"{'case':<18} {'DDP':>7} {'hook':>7} {'gap':>7}  {'finite':>6} {'ranks equal':>11}")
    rows = {}
    for case in cases:
        ddp = [raw[f"{case}|0|{s}"] for s in seeds]
        hook = [raw[f"{case}|1|{s}"] for s in seeds]
        row = {"ddp_loss": round(sum(r["loss"] for r in ddp) / len(seeds), 4),
               "hook_loss": round(sum(r["loss"] for r in hook) / len(seeds), 4),
               "finite": all(r["finite"] for r in ddp + hook),
               "ranks_equal": all(r["ranks_equal"] for r in ddp + hook),
               "ddp_skipped": sum(r["skipped"] for r in ddp) / len(seeds),
               "hook_skipped": sum(r["skipped"] for r in hook) / len(seeds),
               "stopped": next((r["stopped"] for r in hook if r["stopped"]), None)}
        row["gap"] = round(row["hook_loss"] - row["ddp_loss"], 4)
        rows[case] = row
        print(f"{case:<18} {row['ddp_loss']:>7.3f} {row['hook_loss']:>7.3f} {row['gap']:>+7.3f}  "
              f"{str(row['finite']):>6} {str(row['ranks_equal']):>11}"
              + (f"  skipped steps: DDP {row['ddp_skipped']:g}, hook {row['hook_skipped']:g}"
                 if CASES[case][3].get("fp16") else "")
              + (f"  stopped: {row['stopped']}" if row["stopped"] else ""))
    worst = max(rows, key=lambda c: rows[c]["gap"] if rows[c]["finite"] else float("inf"))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    print(json.dumps({"steps": args.steps, "seeds": seeds, "cases": rows,
                      "worst_gap": {"case": worst, "gap": rows[worst]["gap"]},
                      "all_ok": all(r["finite"] and r["ranks_equal"] for r in rows.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
