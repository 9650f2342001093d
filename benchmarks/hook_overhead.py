"""What the DDP hook costs per training step, against plain DDP, on ranks that take turns.

    .venv/bin/python benchmarks/hook_overhead.py                 # 1 and 2 ranks, 6 turns of 50 steps
    .venv/bin/python benchmarks/hook_overhead.py --worlds 2 --turns 10 --rows ddp,rice+sign

For each world size in ``--worlds``, that many local processes (gloo over loopback, one intra-op
thread each, as under ``torchrun``) train FC 784-512-10 on the embedded MNIST-5k with plain SGD
(lr 0.05, batch 10 per rank: the paper's MNIST setting) once per row, each row with its own copy
of the model from the same initial parameters and the same minibatches:

* ``ddp``: DDP's own all-reduce (the baseline);
* ``powersgd``: PyTorch's PowerSGD hook, rank 2 (its dense warm-up rounds fall in the warm-up);
* ``paper32``, ``rice+sign``, ``rice+bf16``: ``sasg.ddp.register(model, "always+topk", codec)``,
  top-k h = 1 % with error feedback;
* ``wk1``: the lazy rule ``wk1+topk`` (D = 10, c = 2) under ``rice+sign``;
* ``ddp+scaler``, ``rice+sign+scaler`` (not run by default): ``ddp`` and ``rice+sign`` with the
  loss scaled by a ``torch.amp.GradScaler`` (fp32 model, so nothing overflows), which the hook is
  given: what the scaler's unscaling, the hook's check and its extra all-reduce cost a step;
* ``ddp+clip``, ``rice+sign+clip`` (not run by default): gradient clipping to norm 1, by
  ``torch.nn.utils.clip_grad_norm_`` after ``backward()`` under DDP and by the hook's
  ``clip_grad_norm=1.0`` (its sketch of the mean norm and that all-reduce; no overlap).

A step is zero_grad, forward, backward (the hook runs inside it) and ``opt.step()``. The rows take
turns (``--turns`` turns of ``--steps`` steps each, after ``--warmup`` untimed steps per row, the
order rotated every turn), so a change in the machine's load hits every row. On the loopback the
link costs next to nothing: what is left is the CPU a row adds to a step (top-k, coding, the
collective calls), which is what the hook costs on any link. Table: median ms per step over the
turns, rank 0's CPU ms per step, and the ratio to ``ddp`` of the same world size. The last line is
JSON: per world size, per row, ``ms_per_step``, ``cpu_ms_per_step`` and ``over_ddp``; with one rank
and the rows ``ddp``, ``powersgd`` and ``rice+sign``, also what each hook adds to DDP's step
(``sasg_added_ms``, ``powersgd_added_ms``) and their ratio ``sasg_over_powersgd_overhead``.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

from rank_round import free_port, join, timed_turns  # a port, a gloo group of local processes, timing

# row -> (algo, codec) for sasg.ddp.register; None: not a sasg hook
ROWS = {
    "ddp": None,
    "powersgd": None,
    "paper32": ("always+topk", "paper32"),
    "rice+sign": ("always+topk", "rice+sign"),
    "rice+bf16": ("always+topk", "rice+bf16"),
    "wk1": ("wk1+topk", "rice+sign"),
}
# rows with a GradScaler or gradient clipping -> the row they add it to (--rows ...,ddp+scaler,rice+sign+clip)
SCALED = {"ddp+scaler": "ddp", "rice+sign+scaler": "rice+sign"}
CLIPPED = {"ddp+clip": "ddp", "rice+sign+clip": "rice+sign"}
LR, BATCH, DENSITY, CLIP = 0.05, 10, 0.01, 1.0


def _row(name: str, seed: int):
    """(DDP model, optimizer, GradScaler or None, the loop's clipping norm or None) of one row, from
    the seed's initial parameters."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sasg.ddp
    from sasg.models import build_model

    model = DDP(build_model("fc", (1, 28, 28), 10, seed))  # every row the same initial parameters
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu") if name in SCALED else None
    clip = CLIP if name in CLIPPED else None
    name = SCALED.get(name, CLIPPED.get(name, name))
    if name == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

        state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=2, start_powerSGD_iter=2,
                                       random_seed=seed)
        model.register_comm_hook(state, powersgd.powerSGD_hook)
    elif ROWS[name] is not None:
        algo, codec = ROWS[name]
        sasg.ddp.register(model, algo=algo, codec=codec, density=DENSITY, lr=opt, seed=seed, scaler=scaler,
                          clip_grad_norm=clip)
        clip = None  # (the hook clips)
    return model, opt, scaler, clip


def _rank_main(rank: int, world: int, port: int, args: dict, out_path: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from sasg.data import load_mnist5k

    join(rank, world, port)
    try:
        data = load_mnist5k()
        x_all, y_all = data.train.x, data.train.y
        names = args["rows"]
        rows = {name: _row(name, args["seed"]) for name in names}
        total = args["warmup"] + args["turns"] * args["steps"]
        gen = torch.Generator().manual_seed(1000 * args["seed"] + rank)  # this rank's minibatches
        batches = torch.randint(0, len(y_all), (total, BATCH), generator=gen)
        done = dict.fromkeys(names, 0)  # steps each row has taken: row i's step t uses batches[t]

        def steps(name: str, n: int) -> None:
            model, opt, scaler, clip = rows[name]
            for _ in range(n):
                idx = batches[done[name]]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
                if scaler is None:
                    loss.backward()
                    if clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                done[name] += 1

        for name in names:
            steps(name, args["warmup"])
        orders = [names[t % len(names):] + names[:t % len(names)] for t in range(args["turns"])]
        timed_turns(orders, lambda name: steps(name, args["steps"]), args["steps"], out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", default="1,2", help="process counts (1,2)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows, ddp first ({','.join([*ROWS, *SCALED, *CLIPPED])})")
    p.add_argument("--turns", type=int, default=6, help="turns per row (6)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per turn (50)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per row first (20)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    names = [r.strip() for r in a.rows.split(",") if r.strip()]
    unknown = [r for r in names if r not in ROWS and r not in SCALED and r not in CLIPPED]
    if unknown or not names or names[0] != "ddp" or len(set(names)) != len(names):
        p.error(f"--rows: distinct rows from {', '.join([*ROWS, *SCALED, *CLIPPED])}, ddp first (the baseline); "
                f"got {a.rows!r}")
    try:
        worlds = [int(w) for w in a.worlds.split(",")]
    except ValueError:
        worlds = []
    if not worlds or min(worlds) < 1:
        p.error(f"--worlds: comma-separated process counts >= 1, got {a.worlds!r}")
    if min(a.turns, a.steps) < 1 or a.warmup < 0:
        p.error("--turns and --steps must be >= 1, --warmup >= 0")

    import torch.multiprocessing as mp

    args = {"rows": names, "turns": a.turns, "steps": a.steps, "warmup": a.warmup, "seed": a.seed}
    result = {}
    started = time.perf_counter()
    for world in worlds:
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/rank0.json"
            mp.spawn(_rank_main, args=(world, free_port(), args, out), nprocs=world)
            with open(out) as f:
                got = json.load(f)
        med = {n: statistics.median(got["wall"][n]) for n in names}
        cpu = {n: statistics.median(got["cpu"][n]) for n in names}
        result[str(world)] = {n: {"ms_per_step": round(med[n], 3), "cpu_ms_per_step": round(cpu[n], 3),
                                  "over_ddp": round(med[n] / med["ddp"], 3)} for n in names}
        print(f"\n{world} rank{'s' if world > 1 else ''} (gloo, loopback), {a.turns} turns of {a.steps} steps, "
              "FC 784-512-10, batch 10 per rank, SGD lr 0.05")
        print(f"{'row':<16} {'ms/step':>8} {'cpu ms':>8} {'/ ddp':>7}")
        for n in names:
            r = result[str(world)][n]
            print(f"{n:<16} {r['ms_per_step']:>8.2f} {r['cpu_ms_per_step']:>8.2f} {r['over_ddp']:>7.2f}")
    one = result.get("1", {})
    if all(n in one for n in ("ddp", "powersgd", "rice+sign")):
        # What each hook adds to DDP's step on one rank (its CPU, no link): the figure.
        added = {n: one[n]["ms_per_step"] - one["ddp"]["ms_per_step"] for n in ("powersgd", "rice+sign")}
        result["sasg_added_ms"] = round(added["rice+sign"], 3)
        result["powersgd_added_ms"] = round(added["powersgd"], 3)
        result["sasg_over_powersgd_overhead"] = round(added["rice+sign"] / max(added["powersgd"], 1e-9), 3)
        print(f"added to DDP's step, 1 rank: sasg rice+sign {added['rice+sign']:.2f} ms, PowerSGD rank 2 "
              f"{added['powersgd']:.2f} ms: sasg_over_powersgd_overhead {result['sasg_over_powersgd_overhead']:.2f}")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
