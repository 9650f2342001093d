"""Where sasg pays: ms per step of the gradient exchange alone, DDP vs PowerSGD vs the sasg hook,
for three model sizes at three link rates, over two network-namespace nodes. Root needed.

    sudo .venv/bin/python benchmarks/crossover.py                  # 3 models x 3 links, 5 turns: ~8-10 min
    sudo .venv/bin/python benchmarks/crossover.py --quick          # 3 turns of ~1 s: ~5-7 min
    sudo .venv/bin/python benchmarks/crossover.py --models 11M --links 1gbit --out /tmp/c.json
    .venv/bin/python benchmarks/crossover.py --loopback --models 0.4M   # no namespaces, no root: CPU cost only

Two ranks, one per "node" (network namespaces joined by a veth pair, benchmarks/netns.py), gloo,
one intra-op thread each. ``tc tbf`` caps each direction of the link at the rate (100 Mbit/s,
1 Gbit/s, 10 Gbit/s; the measured throughput of one TCP stream is printed beside it: at 10 Gbit/s
the CPU, not tc, may set the pace). No delay is added.

Exchange only: no data, no model compute. Each rank holds a module whose parameters have the
shapes of a real model, and a fixed synthetic gradient per parameter (i.i.d. normal, scale 1e-3,
seeded by rank, drawn once). The module's forward returns 0 and its backward hands out copies of
those gradients (one memory pass), so a step -- ``zero_grad``, ``forward``, ``backward`` -- is
DDP's bucket copies, the communication hook (or DDP's own all-reduce) and the copy back; no
optimizer step (the parameters stay as they are). The layouts:

  0.4M  FC 784-512-10 (sasg.models "fc" on MNIST), 407,050 parameters in 4 tensors
  11M   ResNet-18, CIFAR variant (sasg.models "resnet18", 10 classes, built on the meta device
        for its shapes), 11,173,962 parameters in 62 tensors
  25M   ResNet-50, ImageNet variant (torchvision's layout, 1000 classes: written out here, torchvision
        is not a dependency), 25,557,032 parameters in 161 tensors

The rows (every one DDP-wrapped with its defaults, 25 MB buckets):

  ddp          DDP's own all-reduce: 4 bytes per parameter, ring all-reduce
  powersgd-r2  PyTorch's PowerSGD hook, rank 2 (error feedback, warm start, start_powerSGD_iter=2),
               each bucket on its own gloo group (benchmarks/powersgd_rows.py says why: with all
               buckets ready at once, as here, one group fails or hangs)
  sasg         sasg.ddp.register(model): its defaults, always+topk (top-k 1 % per tensor, error
               feedback), rice+fp32 codec (Golomb-Rice gaps, fp32 values)
  sasg-sign    the same with codec="rice+sign" (one sign bit per kept value, a magnitude per tensor)
  compute      no exchange at all (a hook that hands the bucket back): the step's own cost, the floor

The sasg rows pass ``warmup=0``: the hook's dense first rounds are start-up (as PowerSGD's dense
ones are), this table is the steady state. Timing: every row first takes ``--warmup`` untimed
steps (past PowerSGD's dense start and DDP's bucket rebuild). The steps per turn are then chosen
so that the slowest row's turn lasts about ``--turn-seconds`` (its last warm-up step sets the
pace; at least 1, at most 50). The rows take turns (``--turns`` turns, the order rotated every
turn; a barrier before and after each row's steps, so a turn ends when both ranks are done), and
the figure is the median over the turns of ms per step. ``MB/step``: what rank 0 sent on its veth
per step. The ratios ``sasg / ddp`` and ``sasg / powersgd`` are medians of per-turn ratios (the
rows of one turn ran under the same load).

The last line is JSON: ``crossover_ms[model][link][row]``, ``mb_per_step[model][link][row]``,
``winner[model][link]`` (the fastest row but ``compute``), ``ratios[model][link][sasg_row]``
(``over_ddp``, ``over_powersgd``: < 1 means sasg is faster), the links as measured, the layouts,
the CPU and the load. The namespaces are removed at the end, also on failure, Ctrl-C, SIGTERM or
SIGHUP (a run killed with SIGKILL leaves them to the next run, which removes them first).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Unavailable, check_link_flags, communicate_all, exit_on_signals, measure_link, two_nodes  # noqa: E402

LINKS = ("100mbit", "1gbit", "10gbit")
# row -> (algo, codec) of sasg.ddp.register; None: not a sasg hook
ROWS = {"ddp": None, "powersgd-r2": None, "sasg": ("always+topk", "rice+fp32"),
        "sasg-sign": ("always+topk", "rice+sign"), "compute": None}
SASG_ROWS = ("sasg", "sasg-sign")
RIVALS = ("ddp", "powersgd-r2")
PORTS = itertools.count(29711)
GRAD_SCALE = 1e-3


# ----------------------------------------------------------------------------------------------------
# layouts: (name, shape) of every parameter, in model.parameters() order
# ----------------------------------------------------------------------------------------------------


def _registry_shapes(name: str, sample_shape: tuple[int, ...], classes: int) -> list[tuple[str, tuple[int, ...]]]:
    import torch

    from sasg.models import MODELS

    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        model = MODELS[name](sample_shape, classes)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def resnet50_shapes(classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """ResNet-50 (ImageNet: 7x7 stem, bottleneck blocks 3-4-6-3, expansion 4), BatchNorm affine."""

    def bn(p: str, c: int) -> list:
        return [(p + ".weight", (c,)), (p + ".bias", (c,))]

    shapes = [("conv1.weight", (64, 3, 7, 7)), *bn("bn1", 64)]
    cin = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}."
            shapes += [(p + "conv1.weight", (width, cin, 1, 1)), *bn(p + "bn1", width),
                       (p + "conv2.weight", (width, width, 3, 3)), *bn(p + "bn2", width),
                       (p + "conv3.weight", (4 * width, width, 1, 1)), *bn(p + "bn3", 4 * width)]
            if b == 0:
                shapes += [(p + "downsample.0.weight", (4 * width, cin, 1, 1)), *bn(p + "downsample.1", 4 * width)]
            cin = 4 * width
    return shapes + [("fc.weight", (classes, 2048)), ("fc.bias", (classes,))]


# model key -> (what it is, its shapes)
LAYOUTS = {
    "0.4M": ("FC 784-512-10 (sasg.models fc)", lambda: _registry_shapes("fc", (1, 28, 28), 10)),
    "11M": ("ResNet-18 CIFAR (sasg.models resnet18)", lambda: _registry_shapes("resnet18", (3, 32, 32), 10)),
    "25M": ("ResNet-50 ImageNet shapes", resnet50_shapes),
}


# ----------------------------------------------------------------------------------------------------
# worker: one rank, started in its node's namespace
# ----------------------------------------------------------------------------------------------------


def _exchange_module(shapes, grads):
    """A module with parameters of ``shapes`` whose backward yields copies of ``grads``."""
    import torch
    from torch import nn

    class FixedGradients(torch.autograd.Function):
        @staticmethod
        def forward(ctx, holder, *params):
            ctx.holder = holder
            return params[0].new_zeros(())

        @staticmethod
        def backward(ctx, _):
            return (None, *(g.clone() for g in ctx.holder.grads))

    class Exchange(nn.Module):
        def __init__(self):
            super().__init__()
            self.params = nn.ParameterList([nn.Parameter(torch.zeros(s)) for _, s in shapes])
            self.grads = grads

        def forward(self):
            return FixedGradients.apply(self, *self.params)

    return Exchange()


def _build_row(row: str, shapes, grads, seed: int):
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_exchange_module(shapes, grads), init_sync=False)  # zeros on every rank: nothing to broadcast
    if row == "powersgd-r2":
        from powersgd_rows import register_powersgd  # PyTorch's hook, a gloo group per bucket

        register_powersgd(model, rank=2, seed=seed)
    elif row == "compute":
        def hand_back(_, bucket):
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        model.register_comm_hook(None, hand_back)
    elif ROWS[row] is not None:
        import sasg.ddp

        algo, codec = ROWS[row]
        sasg.ddp.register(model, algo=algo, codec=codec, seed=seed, warmup=0)
    return model


def _tx_bytes() -> int | None:
    dev = os.environ.get("GLOO_SOCKET_IFNAME")  # set by netns.py: this node's veth
    return int(Path(f"/sys/class/net/{dev}/statistics/tx_bytes").read_text()) if dev else None


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    from datetime import timedelta

    from rank_round import timed_turns  # a barrier, the steps, a barrier; rank 0 writes ms per step

    torch.set_num_threads(1)
    os.environ.update(RANK=str(args.rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    rank = dist.get_rank()
    shapes = LAYOUTS[args.model][1]()
    gen = torch.Generator().manual_seed(1000 * args.seed + rank)  # each rank its own gradients
    grads = [GRAD_SCALE * torch.randn(s, generator=gen) for _, s in shapes]
    models = {row: _build_row(row, shapes, grads, args.seed) for row in args.rows}

    def step(row: str) -> None:
        model = models[row]
        model.zero_grad(set_to_none=True)
        model().backward()  # DDP's all-reduce / the hook runs here

    slowest = 0.0
    for row in args.rows:
        for _ in range(args.warmup):
            dist.barrier()
            t = time.perf_counter()
            step(row)
            dist.barrier()
        slowest = max(slowest, time.perf_counter() - t)  # the last warm-up step
    n = torch.tensor([min(50, max(1, round(args.turn_seconds / max(slowest, 1e-6))))])
    dist.broadcast(n, 0)  # both ranks take the same number of steps
    steps = int(n.item())
    sent: dict[str, int] = dict.fromkeys(args.rows, 0)

    def turn(row: str) -> None:
        before = _tx_bytes()
        for _ in range(steps):
            step(row)
        if before is not None:
            sent[row] += _tx_bytes() - before

    orders = [args.rows[t % len(args.rows):] + args.rows[:t % len(args.rows)] for t in range(args.turns)]
    timed_turns(orders, turn, steps, args.result)
    dist.barrier()
    if rank == 0:
        got = json.loads(Path(args.result).read_text())
        got.update(steps_per_turn=steps, slowest_warmup_ms=round(1e3 * slowest, 2),
                   tx_bytes_per_step={r: (sent[r] / (steps * args.turns) if _tx_bytes() is not None else None)
                                      for r in args.rows},
                   parameters=sum(g.numel() for g in grads), tensors=len(grads))
        Path(args.result).write_text(json.dumps(got))
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# orchestrator
# ----------------------------------------------------------------------------------------------------


def run_pair(net, model: str, args, tmp: Path, tag: str) -> dict:
    """The two ranks of one (model, link): node n holds rank n (``net`` None: both on loopback)."""
    result = tmp / f"{tag}.json"
    port = next(PORTS)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR", MASTER_PORT=str(port),
               MASTER_ADDR=net.address(0) if net else "127.0.0.1", PYTHONUNBUFFERED="1")

    def argv(rank: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--worker", "--rank", str(rank), "--model", model,
                "--rows", ",".join(args.rows), "--turns", str(args.turns), "--warmup", str(args.warmup),
                "--turn-seconds", str(args.turn_seconds), "--seed", str(args.seed), "--timeout", str(args.timeout),
                "--result", str(result)]

    load = os.getloadavg()[0]
    if net is not None:
        done = net.run_both(argv, env=env, timeout=args.timeout)
    else:
        procs = [subprocess.Popen(argv(r), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True) for r in (0, 1)]
        done = communicate_all(procs, args.timeout)
    for rank, r in enumerate(done):
        if r.returncode != 0:
            raise RuntimeError(f"{model} {tag}: rank {rank} exited {r.returncode}:\n{r.stderr.strip()[-2000:]}")
    got = json.loads(result.read_text())
    got["load_1min"] = round(load, 2)
    return got


def summarize(got: dict, rows: list[str]) -> dict:
    wall = got["wall"]
    out = {"ms": {r: round(statistics.median(wall[r]), 3) for r in rows},
           "mb_per_step": {r: (None if got["tx_bytes_per_step"][r] is None
                               else round(got["tx_bytes_per_step"][r] / 1e6, 4)) for r in rows},
           "steps_per_turn": got["steps_per_turn"], "load_1min": got["load_1min"]}
    candidates = [r for r in rows if r != "compute"]
    out["winner"] = min(candidates, key=lambda r: out["ms"][r]) if candidates else None
    out["ratios"] = {s: {f"over_{'ddp' if rival == 'ddp' else 'powersgd'}":
                         round(statistics.median(a / b for a, b in zip(wall[s], wall[rival])), 3)
                         for rival in RIVALS if rival in rows}
                     for s in SASG_ROWS if s in rows}
    return out


def fmt_table(model: str, layout: dict, links: dict, per_link: dict, rows: list[str]) -> str:
    head = (f"{model}: {layout['what']}, {layout['parameters']:,} parameters in {layout['tensors']} tensors; "
            "ms per step (MB sent per step by rank 0)")
    lines = [head, f"{'link':<22}" + "".join(f"{r:>19}" for r in rows) + f"  {'winner':<12} sasg/ddp  sasg/psgd"]
    for link, s in per_link.items():
        m = links[link]
        label = link if m is None else f"{link} ({m['mbit_per_s']:.0f} Mbit/s)"
        cells = "".join((f"{s['ms'][r]:.1f}" + ("" if s["mb_per_step"][r] is None else f" ({s['mb_per_step'][r]:.2f})"))
                        .rjust(19) for r in rows)
        best = min((x for x in SASG_ROWS if x in s["ratios"]), key=lambda x: s["ms"][x], default=None)
        ratio = s["ratios"].get(best, {})
        lines.append(f"{label:<22}{cells}  {s['winner'] or '—':<12} "
                     f"{ratio.get('over_ddp', float('nan')):>8.2f}  {ratio.get('over_powersgd', float('nan')):>9.2f}")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def orchestrate(args) -> int:
    exit_on_signals()
    started = time.monotonic()
    layouts = {}
    for m in args.models:
        shapes = LAYOUTS[m][1]()
        layouts[m] = {"what": LAYOUTS[m][0], "parameters": sum(_numel(s) for _, s in shapes), "tensors": len(shapes)}
    links = ["loopback"] if args.loopback else args.links
    result = {"benchmark": "crossover", "command": " ".join(["benchmarks/crossover.py", *sys.argv[1:]]), "ranks": 2, "rows": args.rows, "turns": args.turns, "warmup": args.warmup,
              "turn_seconds": args.turn_seconds, "quick": args.quick, "cpu": _cpu(), "nproc": os.cpu_count(),
              "load_before": [round(x, 2) for x in os.getloadavg()], "layouts": layouts, "links": {},
              "crossover_ms": {m: {} for m in args.models}, "mb_per_step": {m: {} for m in args.models},
              "winner": {m: {} for m in args.models}, "ratios": {m: {} for m in args.models},
              "steps_per_turn": {m: {} for m in args.models}, "load_1min": {m: {} for m in args.models}}
    per = {m: {} for m in args.models}

    def one_link(net, link: str, tmp: Path) -> None:
        for m in args.models:
            s = summarize(run_pair(net, m, args, tmp, f"{link}-{m}"), args.rows)
            per[m][link] = s
            for key, value in (("crossover_ms", s["ms"]), ("mb_per_step", s["mb_per_step"]), ("winner", s["winner"]),
                               ("ratios", s["ratios"]), ("steps_per_turn", s["steps_per_turn"]),
                               ("load_1min", s["load_1min"])):
                result[key][m][link] = value
            print(f"  [{time.monotonic() - started:5.0f} s] {link:>8} {m:>5}: "
                  + ", ".join(f"{r} {s['ms'][r]:.1f}" for r in args.rows) + f" ms (load {s['load_1min']})",
                  file=sys.stderr, flush=True)

    try:
        with tempfile.TemporaryDirectory(prefix="sasg-crossover-") as tmp:
            if args.loopback:
                result["links"]["loopback"] = None
                one_link(None, "loopback", Path(tmp))
            else:
                with two_nodes() as net:
                    for link in links:
                        net.shape(link)
                        result["links"][link] = {"rate": link, **measure_link(net, megabytes=args.probe_mb)}
                        one_link(net, link, Path(tmp))
    except Unavailable as e:
        print(f"crossover.py: {e} (--loopback runs without namespaces)", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"crossover.py: {e}", file=sys.stderr)
        return 1
    print()
    for m in args.models:
        print(fmt_table(m, layouts[m], result["links"], per[m], args.rows) + "\n")
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["benchmark_seconds"] = round(time.monotonic() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="ms per step of the gradient exchange alone: DDP, PowerSGD and the "
                                "sasg hook, per model size and link rate, over two network-namespace nodes.")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(LAYOUTS), help=",".join(LAYOUTS))
    p.add_argument("--links", type=lambda s: s.split(","), default=list(LINKS), help=",".join(LINKS))
    p.add_argument("--rows", type=lambda s: s.split(","), default=list(ROWS), help=",".join(ROWS))
    p.add_argument("--turns", type=int, default=None, help="turns per row, the order rotated (5; --quick: 3)")
    p.add_argument("--turn-seconds", type=float, default=None,
                   help="about how long the slowest row's turn lasts (3; --quick: 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row first (3)")
    p.add_argument("--quick", action="store_true", help="3 turns of about 1 s: a few minutes")
    p.add_argument("--loopback", action="store_true",
                   help="no namespaces, no shaping: both ranks on 127.0.0.1 (no root needed; the CPU cost only)")
    p.add_argument("--probe-mb", type=int, default=16, help="MiB of the link's throughput probe (16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900, help="seconds per (model, link) (900)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.turns is None:
        args.turns = 3 if args.quick else 5
    if args.turn_seconds is None:
        args.turn_seconds = 1.0 if args.quick else 3.0
    if args.worker:
        worker(args)
        return 0
    bad = [m for m in args.models if m not in LAYOUTS] + [r for r in args.rows if r not in ROWS]
    if bad or len(set(args.rows)) != len(args.rows):
        p.error(f"--models from {','.join(LAYOUTS)}, distinct --rows from {','.join(ROWS)}; got {bad or args.rows}")
    if not args.loopback:
        check_link_flags(p, args.links, None)
    if args.turns < 1 or args.warmup < 1 or args.turn_seconds <= 0:
        p.error("--turns and --warmup must be >= 1, --turn-seconds > 0")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
