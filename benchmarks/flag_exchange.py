"""How a lazy round's flags travel: gloo's ring ``all_gather`` against one ``all_to_all`` step.

    .venv/bin/python benchmarks/flag_exchange.py                        # 4 ranks, sasg, 6 turns of 50 rounds
    .venv/bin/python benchmarks/flag_exchange.py --world 4 --algo wk1+topk --codec rice+sign

Before its payload, a lazy round tells every rank who sends (one byte per rank; a 32-bit size
when message sizes vary). ``TorchTransport`` sends that value to every rank with one
``all_to_all_single``; the baseline here is the ``all_gather`` it used before, which gloo runs as a
ring: ``M - 1`` steps one after the other, each waiting for the next rank to be scheduled. Both
send the same bytes and give the same values.

``--world`` ranks (gloo on the CPU, one intra-op thread each) run two copies of the paper's MNIST
setting (FC 784-512-10, batch 10 per worker, lr 0.05, density 1 %, D = 10, c = 2) with
``--algo``/``--codec``, one per candidate, from the same start: same seeds, same trajectory. The
candidates take turns (``--turns`` turns of ``--rounds`` rounds each, after a warm-up), so a
change in the machine's load hits both. The table gives each candidate's median ms per round
over the turns; the last line is JSON with ``ratio_all_to_all_vs_all_gather`` (< 1: faster). The
trajectories are compared at the end (``same_trajectory``: the parameters are equal bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch

CANDIDATES = ("all_gather", "all_to_all")
SETTING = {"dataset": "mnist5k", "model": "fc", "batch_size": 10, "lr": 0.05, "density": 0.01, "window": 10,
           "threshold_scale": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ring_transport():
    """``TorchTransport`` with the flag exchange as it was: one ``all_gather`` (the baseline)."""
    import torch.distributed as dist

    from sasg.distributed.transport import TorchTransport

    class RingFlags(TorchTransport):
        def _gather(self, what: str, value: int, dtype: torch.dtype) -> list[int]:
            M = self.world_size
            out = torch.empty(M, dtype=dtype, device=self.device)
            self._call(what, self._all_gather, out, torch.tensor([value], dtype=dtype), group=self.group)
            self.counters.flag_rounds += 1
            self.counters.flag_bytes_sent += (M - 1) * out.element_size()
            self.counters.flag_bytes_recv += (M - 1) * out.element_size()
            return [int(v) for v in out.tolist()]

    return RingFlags(nodes=None)


def _rank_main(rank: int, world: int, port: int, args: dict, out_path: str) -> None:
    import torch.distributed as dist

    from sasg import RunConfig
    from sasg.data import load_dataset
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.transport import TorchTransport

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # one intra-op thread per rank, as torchrun sets OMP_NUM_THREADS=1
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        data = load_dataset(SETTING["dataset"])
        total = args["warmup"] + args["turns"] * args["rounds"]
        config = RunConfig(algorithms=(args["algo"],), iterations=total, codec=args["codec"], eval_every=10**9,
                           seed=0, device="cpu", workers=world, **SETTING).validate()
        runs = {"all_gather": DistributedRun(config, args["algo"], data, _ring_transport()),
                "all_to_all": DistributedRun(config, args["algo"], data, TorchTransport(nodes=None))}
        for run in runs.values():
            for _ in range(args["warmup"]):
                run.step()
        times = {name: [] for name in CANDIDATES}
        for turn in range(args["turns"]):
            order = CANDIDATES if turn % 2 == 0 else CANDIDATES[::-1]
            for name in order:
                dist.barrier()
                t = time.perf_counter()
                for _ in range(args["rounds"]):
                    runs[name].step()
                dist.barrier()
                times[name].append(1000 * (time.perf_counter() - t) / args["rounds"])
        same = torch.equal(runs["all_gather"].theta, runs["all_to_all"].theta)
        flags = [runs[n].transport.counters.flag_bytes_sent for n in CANDIDATES]
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump({"times": times, "same_trajectory": same, "flag_bytes_sent": flags}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=int, default=4, help="ranks (4)")
    p.add_argument("--algo", default="sasg", help="a lazy algorithm (sasg)")
    p.add_argument("--codec", default="paper32", help="paper32 (fixed sizes: flags) or e.g. rice+sign (sizes)")
    p.add_argument("--turns", type=int, default=6, help="turns per candidate (6)")
    p.add_argument("--rounds", type=int, default=50, help="rounds per turn (50)")
    p.add_argument("--warmup", type=int, default=20, help="rounds before timing, per candidate (20)")
    args = p.parse_args(argv)
    for name in ("world", "turns", "rounds"):
        if getattr(args, name) < (2 if name == "world" else 1):
            p.error(f"--{name} must be at least {2 if name == 'world' else 1}, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")

    import torch.multiprocessing as tmp

    with tempfile.TemporaryDirectory() as folder:
        out_path = os.path.join(folder, "result.json")
        tmp.start_processes(_rank_main, args=(args.world, free_port(), vars(args), out_path), nprocs=args.world,
                            start_method="spawn")
        with open(out_path) as f:
            result = json.load(f)

    med = {n: statistics.median(result["times"][n]) for n in CANDIDATES}
    print(f"{args.world} ranks, {args.algo} / {args.codec}, {args.turns} turns x {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{'flag exchange':<14} {'ms/round':>9} {'min':>7} {'max':>7}")
    for n in CANDIDATES:
        ts = result["times"][n]
        print(f"{n:<14} {med[n]:9.2f} {min(ts):7.2f} {max(ts):7.2f}")
    ratio = med["all_to_all"] / med["all_gather"]
    print(f"all_to_all / all_gather: {ratio:.3f}; same trajectory: {result['same_trajectory']}; "
          f"flag bytes sent by rank 0: {result['flag_bytes_sent']}")
    print(json.dumps({"world": args.world, "algo": args.algo, "codec": args.codec,
                      "ms_per_round": {n: round(med[n], 3) for n in CANDIDATES},
                      "ratio_all_to_all_vs_all_gather": round(ratio, 3),
                      "same_trajectory": result["same_trajectory"]}))
    return 0 if result["same_trajectory"] else 1


if __name__ == "__main__":
    sys.exit(main())
