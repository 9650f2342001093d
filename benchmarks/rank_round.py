"""A real run's round, one way against another, on ranks that take turns.

    .venv/bin/python benchmarks/rank_round.py                            # flags: 4 ranks, sasg, 6 turns of 50 rounds
    .venv/bin/python benchmarks/rank_round.py --compare gradients --turns 10
    .venv/bin/python benchmarks/rank_round.py --world 4 --algo wk1+topk --codec rice+sign
    .venv/bin/python benchmarks/rank_round.py --compare slots --world 4   # sparse, rice+sign: slots vs sizes first
    .venv/bin/python benchmarks/rank_round.py --compare decision          # sasg, paper32: flags sent at the decision

``--world`` ranks (gloo on the CPU, one intra-op thread each) run two copies of the paper's MNIST
setting (FC 784-512-10, or ``--model mlp-11m``; batch 10 per worker, lr 0.05, density 1 %, D = 10,
c = 2) with
``--algo``/``--codec``, one per candidate, from the same start: same seeds, same trajectory. The
candidates take turns (``--turns`` turns of ``--rounds`` rounds each, after a warm-up), so a
change in the machine's load hits both. ``--compare`` picks the pair:

* ``flags`` (default): how a lazy round tells every rank who sends (one byte per rank; a 32-bit
  size when message sizes vary). ``TorchTransport`` sends that value to every rank with one
  ``all_to_all_single``; the baseline is the ``all_gather`` it used before, which gloo runs as a
  ring: ``M - 1`` steps one after the other, each waiting for the next rank to be scheduled.
* ``gradients``: a rank whose ``wk2`` rule will check it computes its fresh and stale gradients in
  one vmap call (``VmapGradients.fresh_and_stale``); the baseline makes two calls.
* ``slots``: a rule that always sends with messages of varying size (default ``sparse``,
  ``rice+sign``): each message and its size in a fixed slot, one call a round
  (:mod:`sasg.distributed.slots`); the baseline exchanges the sizes first (``SASG_SLOTS=0``).
* ``decision``: a lazy rule with fixed-size messages (default ``sasg``, ``paper32``) hands its
  decision to the transport as soon as it is made, and the flags' call runs while the rank
  compresses (``TorchTransport.announce``); the baseline sends them with the exchange, after the
  compression (``SASG_ANNOUNCE=0``).

Both candidates of a pair send the same bytes and give the same values. The table gives each
candidate's median ms per round over the turns; the last line is JSON with ``ratio`` (the
candidate's ms over the baseline's; < 1: faster). The trajectories are compared at the end
(``same_trajectory``: the parameters are equal bit for bit); the exit status is 1 if they differ.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

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

# --compare -> (baseline, candidate)
PAIRS = {"flags": ("all_gather", "all_to_all"), "gradients": ("separate", "paired"),
         "slots": ("sizes_first", "slots"), "decision": ("after_compress", "decision_first")}
# --compare -> the (algorithm, codec) it runs when --algo / --codec are left out
DEFAULT_RUN = {"flags": ("sasg", "paper32"), "gradients": ("sasg", "paper32"), "slots": ("sparse", "rice+sign"),
               "decision": ("sasg", "paper32")}
SETTING = {"dataset": "mnist5k", "model": "fc", "batch_size": 10, "lr": 0.05, "density": 0.01, "window": 10,
           "threshold_scale": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_turns(orders, run, per_turn: int, out_path: str | None, end_barrier: bool = True) -> None:
    """Every candidate of every turn's order runs ``run(name)`` (``per_turn`` steps) after a
    barrier; rank 0 writes ``{"wall": {name: [ms per step, one per turn]}, "cpu": {...}}`` to
    ``out_path`` (its wall and CPU time; ``end_barrier``: the wall time runs to a barrier after
    the steps, so that it includes the wait for the slowest rank)."""
    import torch.distributed as dist

    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for order in orders:
        for name in order:
            dist.barrier()
            c, t = time.process_time(), time.perf_counter()
            run(name)
            if end_barrier:
                dist.barrier()
            wall.setdefault(name, []).append(1000 * (time.perf_counter() - t) / per_turn)
            cpu.setdefault(name, []).append(1000 * (time.process_time() - c) / per_turn)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"wall": wall, "cpu": cpu}, f)


def _ring_transport():
    """``TorchTransport`` with the flag exchange as it was: one ``all_gather`` (the baseline)."""
    import torch.distributed as dist

    from sasg.distributed.torch_transport import TorchTransport

    class RingFlags(TorchTransport):
        def _gather(self, what: str, value: int, dtype: torch.dtype) -> list[int]:
            M = self.world_size
            out = torch.empty(M, dtype=dtype, device=self.device)
            self._call(what, self._all_gather, out, torch.tensor([value], dtype=dtype), group=self.group)
            self.counters.flag_rounds += 1
            self.counters.flag_bytes_sent += (M - 1) * out.element_size()
            self.counters.flag_bytes_recv += (M - 1) * out.element_size()
            return [int(v) for v in out.tolist()]

    transport = RingFlags(nodes=None)
    transport._announces = False  # the flags through _gather, after the compression, as then
    return transport


def join(rank: int, world: int, port: int) -> None:
    """Join a gloo group of ``world`` local processes, one intra-op thread each (as torchrun's
    OMP_NUM_THREADS=1)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))


def _build(name: str, config, algo: str, data):
    """One copy of the run for the candidate ``name``."""
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    transport = _ring_transport() if name == "all_gather" else TorchTransport(nodes=None)
    if name == "sizes_first":
        transport._slots = None  # what SASG_SLOTS=0 gives: the sizes' own call every round
    if name == "after_compress":
        transport._announces = False  # what SASG_ANNOUNCE=0 gives: the flags leave with the exchange
    run = DistributedRun(config, algo, data, transport)
    if name == "separate":
        run._pair_gradients = False  # the fresh and the stale gradient in two calls, as before
    return run


def _rank_main(rank: int, world: int, port: int, args: dict, out_path: str) -> None:
    import torch.distributed as dist

    from sasg import RunConfig
    from sasg.data import load_dataset

    join(rank, world, port)
    try:
        if args["model"] == "mlp-11m":  # the comm-heavy setting's model, registered by its benchmark
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from time_to_accuracy import add_models

            add_models()
        data = load_dataset(SETTING["dataset"])
        total = args["warmup"] + args["turns"] * args["rounds"]
        setting = dict(SETTING, model=args["model"])
        config = RunConfig(algorithms=(args["algo"],), iterations=total, codec=args["codec"], eval_every=10**9,
                           seed=0, device="cpu", workers=world, **setting).validate()
        pair = PAIRS[args["compare"]]
        runs = {name: _build(name, config, args["algo"], data) for name in pair}
        if args["compare"] == "gradients" and not runs["paired"]._pair_gradients:
            if rank == 0:  # nothing to compare: both copies would make the same calls
                with open(out_path, "w") as f:
                    json.dump({"error": f"--compare gradients needs a rule that checks workers against their "
                                        f"anchors (wk2: sasg, lasg, wk2+...); {args['algo']!r} never pairs"}, f)
            return
        if args["compare"] == "slots" and (runs["slots"].algorithm.lazy
                                           or runs["slots"].engine.template.fixed_size(runs["slots"].algorithm.codec)):
            if rank == 0:  # nothing to compare: the slots serve varying sizes that everyone sends
                with open(out_path, "w") as f:
                    json.dump({"error": f"--compare slots needs a rule that always sends and a codec whose "
                                        f"sizes vary (e.g. --algo sparse --codec rice+sign); got "
                                        f"{args['algo']!r} with {args['codec']!r}"}, f)
            return
        if args["compare"] == "decision" and not (runs["decision_first"].algorithm.lazy and runs["decision_first"]
                                                  .engine.template.fixed_size(runs["decision_first"].algorithm.codec)):
            if rank == 0:  # nothing to compare: only a lazy rule's fixed-size flags leave early
                with open(out_path, "w") as f:
                    json.dump({"error": f"--compare decision needs a lazy rule and a fixed-size codec (e.g. --algo "
                                        f"sasg --codec paper32); got {args['algo']!r} with {args['codec']!r}"}, f)
            return
        for run in runs.values():
            for _ in range(args["warmup"]):
                run.step()
        times = {name: [] for name in pair}
        for turn in range(args["turns"]):
            for name in pair if turn % 2 == 0 else pair[::-1]:
                dist.barrier()
                t = time.perf_counter()
                for _ in range(args["rounds"]):
                    runs[name].step()
                dist.barrier()
                times[name].append(1000 * (time.perf_counter() - t) / args["rounds"])
        same = torch.equal(*(runs[n].theta for n in pair))
        flags = [runs[n].transport.counters.flag_bytes_sent for n in pair]
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump({"times": times, "same_trajectory": same, "flag_bytes_sent": flags}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", choices=sorted(PAIRS), default="flags",
                   help="flags: all_to_all vs ring all_gather; gradients: one vmap call vs two; slots: one "
                   "call a round vs sizes first; decision: the flags sent at the decision vs after the "
                   "compression (flags)")
    p.add_argument("--world", type=int, default=4, help="ranks (4)")
    p.add_argument("--algo", default=None, help="a lazy algorithm (sasg; --compare slots: sparse)")
    p.add_argument("--codec", default=None, help="paper32 (fixed sizes: flags) or e.g. rice+sign (sizes; "
                   "--compare slots: rice+sign)")
    p.add_argument("--model", default="fc", choices=("fc", "mlp-11m"), help="fc (784-512-10, the paper's) or "
                   "mlp-11m (784-4096-2048-10, the time-to-accuracy benchmark's comm-heavy model)")
    p.add_argument("--turns", type=int, default=6, help="turns per candidate (6)")
    p.add_argument("--rounds", type=int, default=50, help="rounds per turn (50)")
    p.add_argument("--warmup", type=int, default=20, help="rounds before timing, per candidate (20)")
    args = p.parse_args(argv)
    algo, codec = DEFAULT_RUN[args.compare]
    args.algo = args.algo or algo
    args.codec = args.codec or codec
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
    if "error" in result:
        p.error(result["error"])

    base, cand = PAIRS[args.compare]
    med = {n: statistics.median(result["times"][n]) for n in (base, cand)}
    print(f"{args.world} ranks, {args.algo} / {args.codec}, {args.turns} turns x {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{args.compare:<14} {'ms/round':>9} {'min':>7} {'max':>7}")
    for n in (base, cand):
        ts = result["times"][n]
        print(f"{n:<14} {med[n]:9.2f} {min(ts):7.2f} {max(ts):7.2f}")
    ratio = med[cand] / med[base]
    print(f"{cand} / {base}: {ratio:.3f}; same trajectory: {result['same_trajectory']}; "
          f"flag bytes sent by rank 0: {result['flag_bytes_sent']}")
    print(json.dumps({"benchmark": "rank_round", "compare": args.compare, "world": args.world, "algo": args.algo,
                      "codec": args.codec, "baseline": base, "candidate": cand,
                      "ms_per_round": {n: round(med[n], 3) for n in (base, cand)}, "ratio": round(ratio, 3),
                      "same_trajectory": result["same_trajectory"]}))
    return 0 if result["same_trajectory"] else 1


if __name__ == "__main__":
    sys.exit(main())
