"""Time to accuracy over a shaped link between two nodes: DDP, PowerSGD, sasg's hook and runner.

    sudo .venv/bin/python benchmarks/time_to_accuracy.py                  # 6 rows, target 90 %, 3 repeats: ~10 min
    sudo .venv/bin/python benchmarks/time_to_accuracy.py --quick          # 5 rows, target 88 %, 1 repeat: ~3 min
    sudo .venv/bin/python benchmarks/time_to_accuracy.py --rates 100mbit --rows ddp,sasg-runner --target 88
    sudo .venv/bin/python benchmarks/time_to_accuracy.py --setting comm-heavy --quick   # 11.6M MLP, 1 Gbit/s

Two "nodes" (network namespaces joined by a veth pair, benchmarks/netns.py) with 2 worker
processes each: 4 workers, gloo, CPU (``--per-node 1``: 2 workers, a core each on a 2-core
machine). ``tc tbf`` caps each direction of the link at the rate (100 Mbit/s, 1 Gbit/s); the
processes of a node talk over the node's loopback, unshaped, as on a real machine. No delay is
added: this kernel has no ``netem`` qdisc (the script says so when ``--delay`` is asked for and
cannot be had).

Every row trains the paper's MNIST setting from the same initial parameters on the same per-worker
minibatch streams (the simulator's: embedded MNIST-5k, FC 784-512-10, batch 10 per worker, lr 0.05
on the mean of the 4 gradients, seed 0):

  ddp               DistributedDataParallel + torch.optim.SGD: one dense all-reduce per step
  powersgd-r2/-r4   the same with PyTorch's PowerSGD hook, rank 2 / 4 (error feedback and warm
                    start on; start_powerSGD_iter=2, the smallest DDP allows with them), each DDP
                    bucket on its own gloo group (benchmarks/powersgd_rows.py: with one group,
                    the comm-heavy MLP's 3 buckets hung)
  sasg-hook         the same with sasg.ddp.register(algo="always+topk", codec="rice+sign"):
                    top-k 1 % per tensor + error feedback, Golomb-Rice gaps + sign bits
  sasg-hook-whole   a control, run only when named: the same hook with overlap=False (the whole
                    gradient first, then one exchange; sasg-hook makes its round part by part,
                    each part's exchange during the backward pass: sasg.engine.parts)
  sasg-runner       sasg's runner (sasg.distributed.DistributedRun, what every `sasg launch`
                    worker runs): SASG, h = 1 %, D = 10, c = 2, paper32 codec
  sasg-runner-rice  the same with the rice+sign codec
  floor-local       not a method: a hook that hands every rank its own gradient back, 100
                    iterations: what the ranks' forward, backward and step cost on this machine
  floor-one-call    the same plus one empty all_to_all a round: the least any method that talks
                    every round pays (``bound_speedup_vs_ddp_<rate>`` in the JSON: DDP's seconds
                    over this floor's seconds per iteration times DDP's iterations)

``--setting comm-heavy``: a model where the link, not the CPU, sets DDP's pace. The same data,
batch, lr and rows, but the model is an MLP 784-4096-2048-10 with ReLU, 11,626,506 parameters:
ResNet-18's count (11.2M) at a small part of its compute (forward and backward of a batch of 10:
about 0.7 GFLOP, against about 17 for ResNet-18 on 32x32 images), while gloo's ring sends about
70 MB each way across the link per iteration (4 workers, 2 nodes): 0.56 s at 1 Gbit/s, as a
ResNet-18 on GPUs would wait. It trains on the embedded MNIST-5k as it is (28x28, no download).
Its defaults: target 85 % (every row reaches it), at most 200 iterations, 1800 s per row,
evaluation every 5, rates 1gbit,100mbit, one repeat (DDP alone needs about 5 s an iteration at
100 Mbit/s: the full run takes about 20 minutes); ``--quick``: 1gbit only, rows ddp, powersgd-r2,
powersgd-r4, sasg-hook (about 5 minutes). The model is added to ``sasg.models.MODELS`` as
``mlp-11m`` inside this benchmark's processes only, so that the runner rows can build it too. Its
JSON keys carry the prefix ``comm_heavy_`` (``comm_heavy_speedup_vs_ddp_1gbit``, ...).

The clock. All ranks train ``--eval-every`` iterations between two barriers; rank 0 times that
segment (from leaving the first barrier to leaving the second, so a segment ends when every rank
has finished its steps). Then, off the clock, rank 0 evaluates the test accuracy (1000 images) and
broadcasts whether to stop. **Seconds to target** = the sum of the timed segments up to the first
evaluation at or above ``--target``; evaluation, start-up (imports, rendezvous, DDP's initial
broadcast) and shut-down are excluded, and reported apart (``eval_s``, ``run_s``). A row that never
reaches the target within ``--max-iterations`` has no time to target and no speed-up.

Bytes on the link: each node's first process reads its veth's ``tx_bytes`` around every timed
segment (``MB train``: both directions, training segments only); the orchestrator reads them
around the whole run (``MB run``: start-up and evaluation broadcasts included).

Rows take turns: for each repeat, for each rate, every row once (the order rotated per repeat);
the figures are the median over repeats. The load average is read before every row. The last line
is JSON: ``speedup_vs_ddp_<rate>`` (DDP's seconds to target over the best sasg row's),
``speedup_vs_powersgd_<rate>`` (the faster PowerSGD row's over the best sasg row's; both keys for
100mbit and 1gbit always, null where that rate was not run or no row reached the target), the rows;
``comm_heavy_`` before each of these keys under ``--setting comm-heavy``.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Unavailable, check_link_flags, exit_on_signals, measure_link, parse_delay, two_nodes  # noqa: E402  (benchmarks/netns.py)

# row id -> (kind, algorithm, codec, label)
ROWS = {
    "ddp": ("ddp", None, None, "DDP all-reduce (SGD)"),
    "powersgd-r2": ("powersgd", 2, None, "PowerSGD hook, rank 2"),
    "powersgd-r4": ("powersgd", 4, None, "PowerSGD hook, rank 4"),
    "sasg-hook": ("hook", "always+topk", "rice+sign", "sasg hook always+topk, rice+sign"),
    # A control, not in the default rows: the hook with overlap=False (the whole gradient first,
    # then one exchange), against sasg-hook's round part by part during the backward pass.
    "sasg-hook-whole": ("hook-whole", "always+topk", "rice+sign", "sasg hook, overlap off"),
    "sasg-runner": ("runner", "sasg", "paper32", "sasg runner SASG, paper32"),
    "sasg-runner-rice": ("runner", "sasg", "rice+sign", "sasg runner SASG, rice+sign"),
    # Floors, not methods: a hook that hands each rank its own gradient back (no averaging, so no
    # accuracy to speak of), with no collective call or one empty one a round. They run
    # FLOOR_ITERATIONS iterations for their seconds per iteration: what this machine's ranks cost
    # before any bytes move, and what one latency-bound call a round adds.
    "floor-local": ("floor", 0, None, "floor: no exchange"),
    "floor-one-call": ("floor", 1, None, "floor: one empty all_to_all a round"),
}
SASG_ROWS = ("sasg-hook", "sasg-runner", "sasg-runner-rice")
FLOOR_ROWS = ("floor-local", "floor-one-call")
FLOOR_ITERATIONS = 100
POWERSGD_ROWS = ("powersgd-r2", "powersgd-r4")
DEFAULT_ROWS = tuple(r for r in ROWS if r != "sasg-hook-whole")
QUICK_ROWS = ("ddp", "powersgd-r2", "powersgd-r4", "sasg-hook", "sasg-runner")
NODES, PER_NODE = 2, 2  # PER_NODE: the default of --per-node
# The workers are 2 x --per-node (the world size), not part of a setting.
SETTINGS = {
    "paper": {"dataset": "mnist5k", "model": "fc", "batch_size": 10, "lr": 0.05,
              "density": 0.01, "window": 10, "threshold_scale": 2.0},
    "comm-heavy": {"dataset": "mnist5k", "model": "mlp-11m", "batch_size": 10, "lr": 0.05,
                   "density": 0.01, "window": 10, "threshold_scale": 2.0},
}
# setting -> the defaults of the flags left out (quick_*: under --quick)
DEFAULTS = {
    "paper": {"target": 90.0, "quick_target": 88.0, "max_iterations": 1000, "timeout": 600.0, "repeats": 3,
              "rates": ("100mbit", "1gbit"), "quick_rates": ("100mbit", "1gbit"), "quick_rows": QUICK_ROWS},
    "comm-heavy": {"target": 85.0, "quick_target": 85.0, "max_iterations": 200, "timeout": 1800.0, "repeats": 1,
                   "rates": ("1gbit", "100mbit"), "quick_rates": ("1gbit",),
                   "quick_rows": ("ddp", "powersgd-r2", "powersgd-r4", "sasg-hook")},
}
KEY_PREFIX = {"paper": "", "comm-heavy": "comm_heavy_"}
KEY_RATES = ("100mbit", "1gbit")  # the speed-up keys always present (null where not run)
PORTS = itertools.count(29611)


# ----------------------------------------------------------------------------------------------------
# worker: one of the 2 x --per-node processes, started in its node's namespace with RANK, WORLD_SIZE, ...
# ----------------------------------------------------------------------------------------------------


def mlp_11m(sample_shape: tuple[int, ...], num_classes: int):
    """MLP 784-4096-2048-10 with ReLU: 11,626,506 parameters on MNIST (the comm-heavy setting)."""
    import math

    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(sample_shape), 4096), nn.ReLU(),
                         nn.Linear(4096, 2048), nn.ReLU(), nn.Linear(2048, num_classes))


def add_models() -> None:
    """The comm-heavy setting's model, by name, in this process's model registry."""
    from sasg.models import MODELS

    MODELS.setdefault("mlp-11m", mlp_11m)


def _config(setting: dict, algo: str, codec: str, iterations: int, seed: int, workers: int):
    from sasg import RunConfig

    return RunConfig(algorithms=(algo,), iterations=iterations, codec=codec, eval_every=10**9, seed=seed,
                     device="cpu", workers=workers, **setting).validate()


def _tx_bytes() -> int:
    """This node's bytes sent on the link so far (its veth: GLOO_SOCKET_IFNAME, set by netns.py)."""
    dev = os.environ["GLOO_SOCKET_IFNAME"]
    return int(Path(f"/sys/class/net/{dev}/statistics/tx_bytes").read_text())


def build_row(row: str, setting: dict, max_iterations: int, seed: int, transport, data):
    """``(step, flat_parameters, model, layout, extra)`` for ``row`` on this rank."""
    import torch
    import torch.nn.functional as F

    kind, algo, codec, _ = ROWS[row]
    rank, workers = transport.rank, transport.world_size
    if kind == "runner":
        from sasg.distributed.runner import DistributedRun

        run = DistributedRun(_config(setting, algo, codec, max_iterations, seed, workers), algo, data, transport)
        return run.step, (lambda: run.theta), run.model, run.layout, {"ledger": lambda: run.ledger}

    from torch.nn.parallel import DistributedDataParallel as DDP

    from sasg import Simulator

    # The simulator's initial parameters and worker m's minibatch stream, as the runner rows have.
    sim = Simulator(_config(setting, "sgd", "paper32", max_iterations, seed, workers), "sgd", data)
    model = DDP(sim.model)  # broadcasts rank 0's parameters (start-up, off the clock)
    extra = {}
    if kind == "powersgd":
        from powersgd_rows import register_powersgd  # PyTorch's hook, a gloo group per bucket

        register_powersgd(model, rank=algo, seed=seed)
    elif kind == "floor":
        model.register_comm_hook(None, floor_hook(algo))
    elif kind in ("hook", "hook-whole"):
        import sasg.ddp

        hook = sasg.ddp.register(model, algo=algo, codec=codec, density=setting["density"],
                                 window=setting["window"], threshold_scale=setting["threshold_scale"], seed=seed,
                                 overlap=None if kind == "hook" else False)
        extra["ledger"] = lambda: hook.ledger
    opt = torch.optim.SGD(model.parameters(), lr=setting["lr"])
    x_all, y_all = data.train.x, data.train.y

    def step() -> None:
        idx = sim.sampler.next()[rank]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()  # the hook / all-reduce runs here
        opt.step()

    def flat() -> torch.Tensor:
        with torch.no_grad():
            return sim.layout.flatten(dict(model.module.named_parameters())).detach()

    return step, flat, model.module, sim.layout, extra


def floor_hook(calls: int):
    """A DDP communication hook that returns the bucket as it is (each rank's own gradient); with
    ``calls`` = 1 it first makes one all_to_all of an int32 per rank, once a round (at the last
    bucket): the least any method that talks every round pays."""
    import torch
    import torch.distributed as dist

    def hook(state, bucket):
        if calls and bucket.is_last():
            world = dist.get_world_size()
            dist.all_to_all_single(torch.empty(world, dtype=torch.int32), torch.zeros(world, dtype=torch.int32))
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    return hook


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from sasg.data import load_dataset
    from sasg.distributed.torch_transport import init_process_group_from_env
    from sasg.sim.evaluate import evaluate

    started = time.perf_counter()
    transport = init_process_group_from_env("gloo", timeout_s=args.timeout)
    rank = transport.rank
    counts_link = int(os.environ.get("LOCAL_RANK", "0")) == 0  # one reader per node
    add_models()
    setting = SETTINGS[args.setting]
    data = load_dataset(setting["dataset"])
    step, flat, model, layout, extra = build_row(args.worker, setting, args.max_iterations, args.seed, transport, data)

    floor = ROWS[args.worker][0] == "floor"  # no target: a fixed number of iterations
    limit = min(args.max_iterations, FLOOR_ITERATIONS) if floor else args.max_iterations
    history, train_s, eval_s, link, it = [], 0.0, 0.0, 0, 0
    reached = None  # (iteration, seconds, link bytes) at the first evaluation >= target
    stop = torch.zeros(1, dtype=torch.int32)
    while True:
        dist.barrier()
        tx0 = _tx_bytes() if counts_link else 0
        t0 = time.perf_counter()
        for _ in range(min(args.eval_every, limit - it)):
            step()
            it += 1
        dist.barrier()
        t1 = time.perf_counter()
        link += (_tx_bytes() - tx0) if counts_link else 0
        train_s += t1 - t0
        if rank == 0:
            acc = evaluate(model, layout, flat(), data.test)["acc"]
            history.append([it, round(acc, 2), round(train_s, 4)])
            if reached is None and acc >= args.target and not floor:
                reached = it
            stop[0] = int(reached is not None or it >= limit)
        dist.broadcast(stop, 0)
        eval_s += time.perf_counter() - t1
        if stop.item():
            break
    total = torch.tensor([link], dtype=torch.int64)
    dist.all_reduce(total)  # both nodes' link bytes (training segments)
    if rank == 0:
        ledger = extra["ledger"]().totals() if "ledger" in extra else None
        out = {"row": args.worker, "reached": reached is not None, "iterations": it,
               "iterations_to_target": reached, "seconds_to_target": round(train_s, 3) if reached else None,
               "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
               "seconds_per_iteration": round(train_s / max(1, it), 5), "final_acc": history[-1][1],
               "link_bytes_train": int(total.item()), "uploads": ledger["uploads"] if ledger else None,
               "rounds": ledger["iterations"] if ledger else None,
               "setup_seconds": round(time.perf_counter() - started - train_s - eval_s, 2),
               "history": history}
        Path(args.result).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


# ----------------------------------------------------------------------------------------------------
# orchestrator (root): the two nodes, the shaping, 2 x --per-node processes per row
# ----------------------------------------------------------------------------------------------------


def _kill_all(procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


def run_row(net, row: str, args, tmp: Path, tag: str) -> dict:
    """The processes of one row (node n holds ranks n P .. n P + P - 1, P = --per-node); rank 0's
    result plus the link bytes."""
    port = next(PORTS)
    result = tmp / f"{tag}.json"
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SASG_LAUNCHER_PID")}
    base.update(OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR", MASTER_ADDR=net.address(0),
                MASTER_PORT=str(port), WORLD_SIZE=str(NODES * args.per_node), LOCAL_WORLD_SIZE=str(args.per_node))
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", row, "--setting", args.setting,
            "--target", str(args.target),
            "--max-iterations", str(args.max_iterations), "--eval-every", str(args.eval_every),
            "--seed", str(args.seed), "--timeout", str(args.timeout), "--result", str(result)]
    load = os.getloadavg()
    before = net.tx_bytes(0) + net.tx_bytes(1)
    procs, logs = [], []
    t = time.monotonic()
    try:
        for node in range(NODES):
            for local in range(args.per_node):
                rank = node * args.per_node + local
                log = open(tmp / f"{tag}-rank{rank}.log", "w+")
                logs.append(log)
                env = {**base, "RANK": str(rank), "LOCAL_RANK": str(local), "GROUP_RANK": str(node)}
                procs.append(net.popen(node, argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = t + args.timeout
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                _kill_all(procs)
                i = failed[0] if failed else 0
                logs[i].seek(0)
                tail = "\n".join(logs[i].read().strip().splitlines()[-15:])
                why = f"rank {i} exited {procs[i].returncode}" if failed else f"timed out after {args.timeout:.0f} s"
                raise RuntimeError(f"{row}: {why}:\n{tail}")
            time.sleep(0.1)
    finally:
        _kill_all([p for p in procs if p.poll() is None])
        for log in logs:
            log.close()
    wall = time.monotonic() - t
    if not result.exists():
        raise RuntimeError(f"{row}: no result written (see {tmp})")
    rec = json.loads(result.read_text())
    rec.update(label=ROWS[row][3], run_seconds=round(wall, 2),
               link_bytes_run=net.tx_bytes(0) + net.tx_bytes(1) - before, load_1min=round(load[0], 2))
    return rec


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows: list[dict]) -> dict:
    """Median over the repeats of one (rate, row)."""
    first = rows[0]
    reached = [r for r in rows if r["reached"]]
    majority = len(reached) * 2 > len(rows)  # a time to target only when most repeats reached it
    out = {"row": first["row"], "label": first["label"], "repeats": len(rows), "reached": f"{len(reached)}/{len(rows)}",
           "seconds_to_target": _median([r["seconds_to_target"] for r in rows]) if majority else None,
           "iterations_to_target": _median([r["iterations_to_target"] for r in reached]),
           "seconds_per_iteration": _median([r["seconds_per_iteration"] for r in rows]),
           "link_bytes_train": _median([r["link_bytes_train"] for r in rows]),
           "link_bytes_run": _median([r["link_bytes_run"] for r in rows]),
           "uploads": _median([r["uploads"] for r in rows]), "rounds": _median([r["rounds"] for r in rows]),
           "eval_seconds": _median([r["eval_seconds"] for r in rows]),
           "run_seconds": _median([r["run_seconds"] for r in rows]),
           "load_1min": [r["load_1min"] for r in rows]}
    return out


def speedups(summary: list[dict]) -> dict:
    by = {r["row"]: r for r in summary}
    best = min((by[k] for k in SASG_ROWS if k in by and by[k]["seconds_to_target"]),
               key=lambda r: r["seconds_to_target"], default=None)
    psgd = min((by[k] for k in POWERSGD_ROWS if k in by and by[k]["seconds_to_target"]),
               key=lambda r: r["seconds_to_target"], default=None)
    ddp = by.get("ddp")
    for r in summary:
        r["speedup_vs_ddp"] = (round(ddp["seconds_to_target"] / r["seconds_to_target"], 2)
                               if ddp and ddp["seconds_to_target"] and r["seconds_to_target"] else None)
    floors = {k: by[k]["seconds_per_iteration"] for k in FLOOR_ROWS if k in by}
    # The most any method making one call a round could gain on DDP here, if it needed DDP's
    # iterations: DDP's seconds over (the one-call floor's seconds per iteration x those iterations).
    bound = (round(ddp["seconds_to_target"] / (floors["floor-one-call"] * ddp["iterations_to_target"]), 2)
             if ddp and ddp["seconds_to_target"] and floors.get("floor-one-call") else None)
    return {"floor_seconds_per_iteration": floors or None, "bound_vs_ddp": bound,
            "best_sasg_row": best["row"] if best else None,
            "vs_ddp": round(ddp["seconds_to_target"] / best["seconds_to_target"], 2)
            if best and ddp and ddp["seconds_to_target"] else None,
            "best_powersgd_row": psgd["row"] if psgd else None,
            "vs_powersgd": round(psgd["seconds_to_target"] / best["seconds_to_target"], 2) if best and psgd else None}


def fmt_table(rate: str, link: dict, summary: list[dict], target: float, per_node: int = PER_NODE) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"rate {rate} (measured {link['mbit_per_s']} Mbit/s, RTT {link['rtt_ms']} ms, no delay); "
             f"target {target:g} %; {NODES} nodes x {per_node} process{'es' if per_node > 1 else ''}",
             f"{'row':<17} {'iters':>6} {'s to target':>12} {'s/iter':>8} {'MB train':>9} {'MB run':>8} "
             f"{'uploads':>8} {'vs DDP':>7} {'load':>6}"]
    for r in summary:
        up = "—" if r["uploads"] is None else f"{r['uploads']:.0f}"
        sp = "—" if r.get("speedup_vs_ddp") is None else f"{r['speedup_vs_ddp']:.2f}x"
        lines.append(f"{r['row']:<17} {f(r['iterations_to_target'], '.0f'):>6} {f(r['seconds_to_target'], '.2f'):>12} "
                     f"{f(r['seconds_per_iteration'], '.4f'):>8} {r['link_bytes_train'] / 1e6:9.2f} "
                     f"{r['link_bytes_run'] / 1e6:8.2f} {up:>8} {sp:>7} {statistics.mean(r['load_1min']):6.2f}")
    return "\n".join(lines)


def orchestrate(args) -> int:
    exit_on_signals()
    started = time.monotonic()
    setting = {**SETTINGS[args.setting], "workers": NODES * args.per_node, "nodes": NODES, "nproc_per_node": args.per_node,
               "seed": args.seed}
    result = {"benchmark": "time_to_accuracy", "setting_name": args.setting, "setting": setting, "target_acc": args.target,
              "max_iterations": args.max_iterations,
              "eval_every": args.eval_every, "repeats": args.repeats, "quick": args.quick, "rows_run": args.rows,
              "load_before": [round(x, 2) for x in os.getloadavg()], "rates": {}}
    raw = {rate: {row: [] for row in args.rows} for rate in args.rates}
    links = {}
    try:
        with two_nodes() as net, tempfile.TemporaryDirectory(prefix="sasg-tta-") as tmp:
            delay = parse_delay(args.delay) and args.delay
            if delay and not net.can_delay:
                print("note: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): no delay added, "
                      "only the rate is shaped", file=sys.stderr)
                delay = None
            result["delay"] = delay
            for rep in range(args.repeats):
                for rate in args.rates:
                    net.shape(rate, delay)
                    if rate not in links:
                        links[rate] = {"delay": net.delay, **measure_link(net, megabytes=8)}
                    k = rep % len(args.rows)
                    for row in args.rows[k:] + args.rows[:k]:  # rows take turns; the order rotates
                        rec = run_row(net, row, args, Path(tmp), f"{rate}-{row}-{rep}")
                        raw[rate][row].append(rec)
                        print(f"  [{time.monotonic() - started:6.0f} s] {rate:>7} {row:<17} "
                              f"{'reached' if rec['reached'] else 'NOT reached'} at {rec['iterations']} it, "
                              f"{rec['train_seconds']:.2f} s train, {rec['run_seconds']:.1f} s run, load "
                              f"{rec['load_1min']}", file=sys.stderr, flush=True)
    except Unavailable as e:
        print(f"time_to_accuracy.py: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"time_to_accuracy.py: {e}", file=sys.stderr)
        return 1
    prefix = KEY_PREFIX[args.setting]
    for rate in KEY_RATES:
        result[f"{prefix}speedup_vs_ddp_{rate}"] = result[f"{prefix}speedup_vs_powersgd_{rate}"] = None
    for rate in args.rates:
        summary = [summarize(raw[rate][row]) for row in args.rows]
        sp = speedups(summary)
        print(fmt_table(rate, links[rate], summary, args.target, args.per_node) + "\n", flush=True)
        result["rates"][rate] = {"link": links[rate], **sp, "rows": summary}
        result[f"{prefix}speedup_vs_ddp_{rate}"] = sp["vs_ddp"]
        result[f"{prefix}speedup_vs_powersgd_{rate}"] = sp["vs_powersgd"]
        if sp["bound_vs_ddp"] is not None:
            result[f"{prefix}bound_speedup_vs_ddp_{rate}"] = sp["bound_vs_ddp"]
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["benchmark_seconds"] = round(time.monotonic() - started, 1)
    if args.out:
        full = {**result, "raw": raw}
        Path(args.out).write_text(json.dumps(full, indent=1) + "\n")
    for rate in args.rates:  # the last line stays readable: no per-evaluation history
        for r in result["rates"][rate]["rows"]:
            r.pop("label", None)
    print(json.dumps(result))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Time to a target test accuracy over a shaped two-node link.")
    p.add_argument("--setting", choices=list(SETTINGS), default="paper",
                   help="paper: FC 784-512-10 (0.4M); comm-heavy: MLP 784-4096-2048-10 (11.6M), where the link "
                   "sets DDP's pace (paper)")
    p.add_argument("--rates", type=lambda s: s.split(","), default=None,
                   help="100mbit,1gbit (comm-heavy: 1gbit,100mbit, with --quick 1gbit)")
    p.add_argument("--rows", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated, from {','.join(ROWS)} (default: all but sasg-hook-whole; --quick: {','.join(QUICK_ROWS)}; "
                   f"comm-heavy --quick: {','.join(DEFAULTS['comm-heavy']['quick_rows'])})")
    p.add_argument("--target", type=float, default=None,
                   help="test accuracy in percent (90; --quick: 88; comm-heavy: 85)")
    p.add_argument("--max-iterations", type=int, default=None, help="budget per row (1000; comm-heavy: 200)")
    p.add_argument("--eval-every", type=int, default=5, help="iterations between evaluations (5)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs of every (rate, row), taking turns; the median is reported (3; --quick and "
                   "comm-heavy: 1)")
    p.add_argument("--quick", action="store_true",
                   help="one repeat; paper: target 88 %%, 5 rows (no sasg-runner-rice), about 3 minutes instead "
                   "of 10; comm-heavy: 1gbit only, rows ddp,powersgd-r2,powersgd-r4,sasg-hook")
    p.add_argument("--delay", default="0", help="one-way delay (needs netem; this kernel has none) (0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-node", type=int, default=PER_NODE,
                   help=f"worker processes per node ({PER_NODE}: the issue's 4 workers; 1: a core each on 2 cores)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per row (600; comm-heavy: 1800)")
    p.add_argument("--out", default=None, help="also write the full results (every evaluation) to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    d = DEFAULTS[args.setting]
    if args.target is None:
        args.target = d["quick_target" if args.quick else "target"]
    if args.max_iterations is None:
        args.max_iterations = d["max_iterations"]
    if args.timeout is None:
        args.timeout = d["timeout"]
    if args.rates is None:
        args.rates = list(d["quick_rates" if args.quick else "rates"])
    if args.repeats is None:
        args.repeats = 1 if args.quick else d["repeats"]
    if args.worker:
        worker(args)
        return 0
    if args.rows is None:
        args.rows = list(d["quick_rows"] if args.quick else DEFAULT_ROWS)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    check_link_flags(p, args.rates, args.delay)
    if args.eval_every < 1 or args.max_iterations < 1 or args.repeats < 1 or args.per_node < 1:
        p.error("--eval-every, --max-iterations, --repeats and --per-node must be >= 1")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
