"""What the bucket-by-bucket round hides: training steps with the hook's exchange overlapped with the
backward pass, against the same hook waiting for the whole gradient. Two nodes, root needed.

    sudo .venv/bin/python benchmarks/overlap.py                        # 2 models x 2 links, 5 turns: ~6 min
    sudo .venv/bin/python benchmarks/overlap.py --quick                # 3 turns, fewer steps: ~3 min
    sudo .venv/bin/python benchmarks/overlap.py --models resnet18 --links 100mbit --codec rice+sign

Two ranks, one per "node" (network namespaces joined by a veth pair, benchmarks/netns.py; one core
and one torch thread each; ``--per-node 2``: four ranks, two a node, sharing the 2 cores), gloo,
``tc tbf`` capping each direction at the rate. Each rank trains on a fixed synthetic batch (its
own, seeded by rank: time per step, not accuracy, is measured), plain SGD, every row from the same
initial parameters. The models:

  resnet18  ResNet-18, CIFAR variant (sasg.models), 11.2M parameters, batch 16 of 3x32x32: a conv
            net whose backward pass is most of its step
  mlp-11m   MLP 784-4096-2048-10 (time_to_accuracy.py's comm-heavy model), 11.6M parameters,
            batch 10: the same size at a small part of the compute

The rows (each a DDP model with DDP's defaults: 25 MB buckets, the first at most 1 MB):

  compute   no exchange (a hook that hands the bucket back): the step's own cost, the floor
  ddp       DDP's own all-reduce
  whole     sasg.ddp.register(model, overlap=False): the round waits for the last bucket, then
            compresses, exchanges and decodes the whole gradient
  parted    sasg.ddp.register(model, overlap=True): each part of the model (cut as DDP cuts its
            buckets) is compressed when its last gradient arrives and its exchange runs on its own
            thread while the backward pass goes on (sasg.engine.parts)

Both sasg rows run ``always+topk`` with ``--codec`` (default ``rice+fp32``, the hook's) and
``warmup=0`` (the dense first rounds are start-up; this table is the steady state); their
parameters stay equal, bit for bit (the JSON's ``same_parameters``, checked after the run). Every
row first takes ``--warmup`` untimed steps (past DDP's bucket rebuild); then the rows take turns
(``--turns``, order rotated, ``--steps`` steps each, a barrier before and after), and each figure
is the median over turns of ms per step.

What overlap can hide, from the floors: the whole round's exchange costs ``whole - compute`` ms a
step (CPU to compress and decode, plus the wait on the link); overlapping hides at most the part
of it that can run while the backward pass still computes. ``hidden_ms = whole - parted`` and
``hidden_share = hidden_ms / (whole - compute)`` say how much of it did; ``link_ms`` is rank 0's
bytes on the veth per step at the link rate (the wire's floor for the exchange).

The last line is JSON: ``ms[model][link][row]``, ``parted_over_whole[model][link]`` (median of
per-turn ratios; < 1: overlap is faster), ``hidden_ms``, ``hidden_share``, ``link_ms``,
``same_parameters``, the links as measured, the CPU and the load.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crossover import _cpu, _tx_bytes  # noqa: E402  (the CPU's name; this node's veth's bytes sent)
from netns import Unavailable, communicate_all, exit_on_signals, measure_link, two_nodes  # noqa: E402

ROWS = ("compute", "ddp", "whole", "parted")
MODELS = {"resnet18": ("ResNet-18 (CIFAR), batch 16", (3, 32, 32), 16),
          "mlp-11m": ("MLP 784-4096-2048-10, batch 10", (1, 28, 28), 10)}
RATES = {"100mbit": 100e6, "1gbit": 1e9}
PORTS = itertools.count(29811)


def _model(name: str):
    import torch

    if name == "mlp-11m":
        from time_to_accuracy import mlp_11m

        with torch.random.fork_rng():
            torch.manual_seed(0)
            return mlp_11m(MODELS[name][1], 10)
    from sasg.models import build_model

    return build_model(name, MODELS[name][1], 10, seed=0)


def _hand_back(_, bucket):
    import torch

    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sasg.ddp
    from rank_round import timed_turns  # a barrier, the steps, a barrier; rank 0 writes ms per step

    torch.set_num_threads(1)
    os.environ.update(RANK=str(args.rank), WORLD_SIZE=str(2 * args.per_node))
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    rank = dist.get_rank()
    _, shape, batch = MODELS[args.model]
    gen = torch.Generator().manual_seed(1000 + rank)
    x, y = torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    models, opts = {}, {}
    for row in ROWS:
        model = DDP(_model(args.model))
        if row == "compute":
            model.register_comm_hook(None, _hand_back)
        elif row in ("whole", "parted"):
            state = sasg.ddp.register(model, "always+topk", args.codec, warmup=0, overlap=row == "parted")
            assert state.overlapping == (row == "parted")
        models[row], opts[row] = model, torch.optim.SGD(model.parameters(), lr=0.01)

    def step(row: str) -> None:
        opts[row].zero_grad(set_to_none=True)
        F.cross_entropy(models[row](x), y).backward()
        opts[row].step()

    for row in ROWS:
        for _ in range(args.warmup):
            step(row)
    sent = dict.fromkeys(ROWS, 0)

    def turn(row: str) -> None:
        before = _tx_bytes()
        for _ in range(args.steps):
            step(row)
        if before is not None:
            sent[row] += _tx_bytes() - before

    rows = list(ROWS)
    orders = [rows[t % len(rows):] + rows[:t % len(rows)] for t in range(args.turns)]
    timed_turns(orders, turn, args.steps, args.result)
    same = all(torch.equal(a, b) for a, b in zip(models["whole"].parameters(), models["parted"].parameters()))
    dist.barrier()
    if rank == 0:
        got = json.loads(Path(args.result).read_text())
        steps = args.steps * args.turns
        got.update(same_parameters=same, parameters=sum(p.numel() for p in models["ddp"].parameters()),
                   tx_bytes_per_step={r: (sent[r] / steps if _tx_bytes() is not None else None) for r in ROWS})
        Path(args.result).write_text(json.dumps(got))
    dist.destroy_process_group()


def run_pair(net, model: str, args, tmp: Path, tag: str) -> dict:
    result = tmp / f"{tag}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR", MASTER_PORT=str(next(PORTS)),
               MASTER_ADDR=net.address(0), PYTHONUNBUFFERED="1")

    def argv(rank: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--worker", "--rank", str(rank), "--model", model,
                "--codec", args.codec, "--per-node", str(args.per_node), "--turns", str(args.turns),
                "--steps", str(args.steps),
                "--warmup", str(args.warmup), "--timeout", str(args.timeout), "--result", str(result)]

    load = os.getloadavg()[0]
    # ranks 0..n-1 on node 0, n..2n-1 on node 1 (the relay sends each message across once)
    procs = [net.popen(rank // args.per_node, argv(rank), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True) for rank in range(2 * args.per_node)]
    done = communicate_all(procs, args.timeout)
    for rank, r in enumerate(done):
        if r.returncode != 0:
            raise RuntimeError(f"{model} {tag}: rank {rank} exited {r.returncode}:\n{r.stderr.strip()[-2000:]}")
    got = json.loads(result.read_text())
    got["load_1min"] = round(load, 2)
    return got


def summarize(got: dict, rate: float) -> dict:
    wall = got["wall"]
    ms = {r: round(statistics.median(wall[r]), 2) for r in ROWS}
    exchange = ms["whole"] - ms["compute"]
    hidden = ms["whole"] - ms["parted"]
    tx = got["tx_bytes_per_step"]["parted"]
    ratio = statistics.median(p / w for p, w in zip(wall["parted"], wall["whole"]))
    return {"ms": ms, "parted_over_whole": round(ratio, 3),
            "hidden_ms": round(hidden, 2), "hidden_share": round(hidden / exchange, 3) if exchange > 0 else None,
            "link_ms": None if tx is None else round(1e3 * 8 * tx / rate, 2),
            "same_parameters": got["same_parameters"], "load_1min": got["load_1min"]}


def fmt_table(model: str, per_link: dict) -> str:
    lines = [f"{model}: {MODELS[model][0]}; ms per step (median of turns)",
             f"{'link':<10}" + "".join(f"{r:>10}" for r in ROWS)
             + f"{'parted/whole':>14}{'hidden ms':>11}{'of whole-compute':>18}{'link ms':>9}"]
    for link, s in per_link.items():
        share = "—" if s["hidden_share"] is None else f"{100 * s['hidden_share']:.0f} %"
        lines.append(f"{link:<10}" + "".join(f"{s['ms'][r]:>10.1f}" for r in ROWS)
                     + f"{s['parted_over_whole']:>14.3f}{s['hidden_ms']:>11.1f}{share:>18}"
                     + f"{'—' if s['link_ms'] is None else format(s['link_ms'], '.1f'):>9}")
    return "\n".join(lines)


def orchestrate(args) -> int:
    exit_on_signals()
    started = time.monotonic()
    result = {"benchmark": "overlap", "command": " ".join(["benchmarks/overlap.py", *sys.argv[1:]]),
              "ranks": 2 * args.per_node,
              "codec": args.codec, "turns": args.turns, "steps": args.steps, "warmup": args.warmup,
              "cpu": _cpu(), "nproc": os.cpu_count(), "load_before": [round(v, 2) for v in os.getloadavg()],
              "links": {}, "ms": {}, "parted_over_whole": {}, "hidden_ms": {}, "hidden_share": {}, "link_ms": {},
              "same_parameters": {}}
    per = {m: {} for m in args.models}
    try:
        with tempfile.TemporaryDirectory(prefix="sasg-overlap-") as tmp, two_nodes() as net:
            for link in args.links:
                net.shape(link)
                result["links"][link] = {"rate": link, **measure_link(net, megabytes=16)}
                for m in args.models:
                    s = per[m][link] = summarize(run_pair(net, m, args, Path(tmp), f"{link}-{m}"), RATES[link])
                    for key in ("ms", "parted_over_whole", "hidden_ms", "hidden_share", "link_ms", "same_parameters"):
                        result[key].setdefault(m, {})[link] = s[key]
                    print(f"  [{time.monotonic() - started:5.0f} s] {link:>8} {m:>9}: "
                          + ", ".join(f"{r} {s['ms'][r]:.1f}" for r in ROWS) + f" ms (load {s['load_1min']})",
                          file=sys.stderr, flush=True)
    except Unavailable as e:
        print(f"overlap.py: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"overlap.py: {e}", file=sys.stderr)
        return 1
    print()
    for m in args.models:
        print(fmt_table(m, per[m]) + "\n")
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    result["benchmark_seconds"] = round(time.monotonic() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mlp-11m", help=f"comma-separated, from {','.join(MODELS)}")
    p.add_argument("--links", default="100mbit,1gbit", help=f"comma-separated, from {','.join(RATES)}")
    p.add_argument("--codec", default="rice+fp32", help="the sasg rows' codec (default: the hook's, rice+fp32)")
    p.add_argument("--turns", type=int, default=None, help="turns of every row (5; --quick: 3)")
    p.add_argument("--steps", type=int, default=None, help="steps per row and turn (4; --quick: 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row first (2)")
    p.add_argument("--per-node", type=int, default=1,
                   help="ranks per node (1: a core each on a 2-core machine; 2: four ranks sharing 2 cores)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per model and link")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    args.turns = args.turns or (3 if args.quick else 5)
    args.steps = args.steps or (2 if args.quick else 4)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.links = [r.strip() for r in args.links.split(",") if r.strip()]
    for name, got, known in (("--models", args.models, MODELS), ("--links", args.links, RATES)):
        unknown = [v for v in got if v not in known]
        if unknown:
            p.error(f"{name}: unknown {unknown}; choose from {', '.join(known)}")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
