"""What a rank's round costs when ranks share cores: its own compute, and each collective call.

    .venv/bin/python benchmarks/round_cost.py                   # SASG on 1 rank; 2 and 4 ranks, 1 ms of work
    .venv/bin/python benchmarks/round_cost.py --worlds 4 --work-ms 3 --turns 10

Two measurements, both with gloo on the CPU and one intra-op thread per process:

1. **Compute.** One process runs the paper's MNIST setting (FC 784-512-10, batch 10, lr 0.05,
   density 1 %, D = 10, c = 2) with ``--algo`` and ``--codec`` as a one-rank :class:`~sasg.distributed.DistributedRun`:
   the round's gradients, trigger, compressor and aggregation with nothing to exchange. CPU ms per
   round (``time.process_time``) and wall ms per round.
2. **A collective call.** ``W`` processes (each of ``--worlds``) repeat: ``--work-ms`` of busy work,
   then one call. The candidates take turns (``--turns`` turns of ``--rounds`` rounds each): no
   call (the baseline), ``all_to_all_single`` of one byte per pair (what a lazy round's flags
   use), ``all_gather`` of one byte, ``all_reduce`` of one int64, ``barrier``. Median wall and CPU
   ms per round over the turns, on rank 0.

With more processes than cores, a call costs more than its own CPU: every rank waits for the
others to be scheduled. The last line is JSON with, per world, each call's extra wall and CPU ms
per round over the baseline (``extra_wall_ms``, ``extra_cpu_ms``).
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from rank_round import SETTING, free_port, join, timed_turns  # the paper's MNIST setting, a port, a gloo group, timing

CALLS = ("none", "all_to_all", "all_gather", "all_reduce", "barrier")


def _compute(rank: int, port: int, args: dict, out_path: str) -> None:
    import torch.distributed as dist

    from sasg import RunConfig
    from sasg.data import load_dataset
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    join(rank, 1, port)
    try:
        total = args["warmup"] + args["compute_rounds"]
        config = RunConfig(algorithms=(args["algo"],), iterations=total, codec=args["codec"], eval_every=10**9,
                           seed=0, device="cpu", workers=1, **SETTING).validate()
        run = DistributedRun(config, args["algo"], load_dataset(SETTING["dataset"]), TorchTransport(nodes=None))
        for _ in range(args["warmup"]):
            run.step()
        c, t = time.process_time(), time.perf_counter()
        for _ in range(args["compute_rounds"]):
            run.step()
        n = args["compute_rounds"]
        with open(out_path, "w") as f:
            json.dump({"cpu_ms": 1000 * (time.process_time() - c) / n, "wall_ms": 1000 * (time.perf_counter() - t) / n}, f)
    finally:
        dist.destroy_process_group()


def _calls(rank: int, world: int, port: int, args: dict, out_path: str) -> None:
    import torch.distributed as dist

    join(rank, world, port)
    try:
        flags, got = torch.zeros(world, dtype=torch.uint8), torch.empty(world, dtype=torch.uint8)
        one, total = torch.zeros(1, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)
        do = {"none": lambda: None,
              "all_to_all": lambda: dist.all_to_all_single(got, flags),
              "all_gather": lambda: dist.all_gather_into_tensor(got, one),
              "all_reduce": lambda: dist.all_reduce(total),
              "barrier": dist.barrier}
        work = args["work_ms"] / 1000

        def rounds(call, n):
            for _ in range(n):
                end = time.perf_counter() + work
                while time.perf_counter() < end:  # busy work: what a round's compute does to a core
                    pass
                call()

        for name in CALLS:
            rounds(do[name], args["warmup"])
        orders = [CALLS if turn % 2 == 0 else CALLS[::-1] for turn in range(args["turns"])]
        timed_turns(orders, lambda name: rounds(do[name], args["rounds"]), args["rounds"], out_path,
                    end_barrier=False)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", default="sasg", help="the algorithm whose compute is timed on one rank (sasg)")
    p.add_argument("--codec", default="paper32", help="its codec (paper32, as the time-to-accuracy runner row)")
    p.add_argument("--compute-rounds", type=int, default=300, help="timed rounds of the one-rank run (300)")
    p.add_argument("--worlds", default="2,4", help="process counts for the collective calls (2,4)")
    p.add_argument("--work-ms", type=float, default=1.0, help="busy work per round before the call (1.0)")
    p.add_argument("--turns", type=int, default=6, help="turns per call (6)")
    p.add_argument("--rounds", type=int, default=100, help="rounds per turn (100)")
    p.add_argument("--warmup", type=int, default=20, help="untimed rounds first (20)")
    args = p.parse_args(argv)
    try:
        worlds = [int(w) for w in args.worlds.split(",")]
    except ValueError:
        p.error(f"--worlds takes comma-separated process counts, e.g. 2,4; got {args.worlds!r}")
    if any(w < 2 for w in worlds):
        p.error(f"--worlds: each process count must be at least 2, got {args.worlds!r}")
    for name in ("compute_rounds", "turns", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or not args.work_ms >= 0:
        p.error("--warmup and --work-ms must be at least 0")

    import torch.multiprocessing as tmp

    settings = vars(args)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "compute.json")
        tmp.start_processes(_compute, args=(free_port(), settings, path), nprocs=1, start_method="spawn")
        with open(path) as f:
            compute = json.load(f)
        calls = {}
        for w in worlds:
            path = os.path.join(folder, f"calls{w}.json")
            tmp.start_processes(_calls, args=(w, free_port(), settings, path), nprocs=w, start_method="spawn")
            with open(path) as f:
                calls[w] = json.load(f)

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.algo} / {args.codec} on one rank (paper MNIST setting, nothing exchanged): "
          f"{compute['cpu_ms']:.2f} ms CPU, {compute['wall_ms']:.2f} ms wall per round")
    print(f"\n{'processes':>9} {'call':<11} {'wall ms':>8} {'cpu ms':>7} {'+wall':>7} {'+cpu':>6}   "
          f"(per round, {args.work_ms:g} ms of work + the call; medians of {args.turns} turns)")
    summary = {}
    for w in worlds:
        med = {k: {n: statistics.median(v) for n, v in calls[w][k].items()} for k in ("wall", "cpu")}
        extra = {n: {"extra_wall_ms": round(med["wall"][n] - med["wall"]["none"], 3),
                     "extra_cpu_ms": round(med["cpu"][n] - med["cpu"]["none"], 3)} for n in CALLS if n != "none"}
        for n in CALLS:
            e = extra.get(n, {"extra_wall_ms": 0.0, "extra_cpu_ms": 0.0})
            print(f"{w:>9} {n:<11} {med['wall'][n]:8.2f} {med['cpu'][n]:7.2f} {e['extra_wall_ms']:7.2f} "
                  f"{e['extra_cpu_ms']:6.2f}")
        summary[str(w)] = {"baseline_wall_ms": round(med["wall"]["none"], 3),
                           "baseline_cpu_ms": round(med["cpu"]["none"], 3), "calls": extra}
    print(json.dumps({"benchmark": "round_cost", "algo": args.algo, "codec": args.codec, "work_ms": args.work_ms,
                      "compute_cpu_ms": round(compute["cpu_ms"], 3), "compute_wall_ms": round(compute["wall_ms"], 3),
                      "worlds": summary, "cores": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
