"""Simulator throughput: iterations per second of the four algorithms, vmap vs per-worker loop,
cost per iteration as the number of workers grows, and the peak memory of a ResNet-18 run.

    .venv/bin/python benchmarks/simulator.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/simulator.py --quick    # about a minute

Sections (each prints a table):

1. The paper's MNIST setting (FC 784-512-10, embedded mnist5k, M = 10, batch 10, lr 0.05,
   h = 1 %, D = 10, c = 2): ``sgd``, ``sparse``, ``lasg``, ``sasg`` on the vectorized (vmap)
   backend and on the per-worker loop, in the same run. Each simulator first runs ``--warmup``
   rounds (past the trigger's warm-up, so the lazy rule really skips), then ``--repeats`` windows
   of ``--iters`` rounds are timed (training rounds only, no evaluation); the figure is the
   median window. Also the gradient call alone (fresh gradients of 10 workers), vmap vs loop,
   and where a ``sgd`` and a ``sasg`` round go, phase by phase (vmap).
2. Cost per iteration at M = 10, 30, 100 (``sgd`` and ``sasg``, vmap). The data is mnist5k's
   4,000 training images replicated 10 times (40,000), so every worker's shard has 400 images
   at M = 100 and batch 10 is always available; the model and every other setting are as in 1.
3. Peak resident memory (VmHWM) of a ResNet-18 (CIFAR layout, 11,173,962 parameters) ``sasg``
   simulation with M = 10, batch 10, on random CIFAR-shaped inputs, measured in a fresh process
   (``--no-resnet`` skips it). Window D = 1 so that the second round already computes the stale
   gradients of all workers: every buffer of the run is alive by then.

The last line is one JSON object with the headline figures:
``vectorized_over_loop`` (sasg iterations/s, vmap over loop), ``sasg_over_sgd_cost`` (time per
iteration, vmap), ``m100_over_m10_cost`` (sasg time per iteration, M = 100 over M = 10), and
``gradient_vectorized_over_loop`` (the gradient call alone: the bound on the first, since the
rest of a round is the same code on both backends), and ``cheap_lazy_over_sgd_cost``: time per
iteration of the cheapest lazy rule that needs no second gradient (``wk1+topk``, ``ps+topk``
at c = 0.002 as in the zoo table of docs/results.md, vmap, timed in turn with the others in section 1)
over sgd's.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch

from sasg.config import RunConfig
from sasg.data.dataset import ArrayDataset, DataSplit
from sasg.experiment import load_data
from sasg.sim import Simulator, retain_freed_memory

ALGOS = ("sgd", "sparse", "lasg", "sasg")
# Lazy rules that need no second gradient (vmap only): the cheapest sets cheap_lazy_over_sgd_cost.
CHEAP_LAZY = ("wk1+topk", "ps+topk")
CHEAP_LAZY_C = 0.002


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def time_interleaved(sims: dict, warmup: int, iters: int, repeats: int) -> dict:
    """Warm every simulator up, then time ``repeats`` windows of ``iters`` rounds of each, taking
    turns (so a burst of load from elsewhere hits all of them alike); median window per key."""
    for sim in sims.values():
        for _ in range(warmup):
            sim.step()
    windows = {key: [] for key in sims}
    uploads = dict.fromkeys(sims, 0)
    for _ in range(repeats):
        for key, sim in sims.items():
            before = sum(sim.ledger.uploads)
            t0 = time.perf_counter()
            for _ in range(iters):
                sim.step()
            windows[key].append((time.perf_counter() - t0) / iters)
            uploads[key] += sum(sim.ledger.uploads) - before
    out = {}
    for key, sim in sims.items():
        sec = statistics.median(windows[key])
        out[key] = {
            "ms_per_iter": 1e3 * sec,
            "iters_per_s": 1.0 / sec,
            "upload_rate": uploads[key] / (repeats * iters * sim.num_workers),
            "windows_ms": [round(1e3 * w, 2) for w in windows[key]],
        }
    return out


def time_gradients(sim: Simulator, reps: int) -> float:
    """Median ms of one fresh-gradient call for all workers (the backend's own cost)."""
    idx = sim.sampler.next()
    x, y = sim.data.train.x[idx], sim.data.train.y[idx]
    sim.gradients.blocks(sim.theta, x, y)  # what the simulator calls
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sim.gradients.blocks(sim.theta, x, y)
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def phase_breakdown(sim: Simulator, warmup: int, rounds: int) -> dict:
    """Milliseconds per round spent in each phase of ``sim.step`` (wall clock, by wrapping the
    calls the simulator makes; the wrappers add a few microseconds each)."""
    spent = dict.fromkeys(("fresh gradients", "stale gradients", "trigger norm", "compress", "upload (rest)", "aggregate"), 0.0)
    grads, comp, engine = sim.gradients, sim.algorithm.compressor, sim.engine
    trigger, memory = sim.algorithm.trigger, sim.algorithm.memory
    originals = {"blocks": grads.blocks, "decide": trigger.decide, "upload": memory.upload, "compress": comp.compress,
                 "_aggregate": engine._aggregate}

    def timed(key, fn):
        def call(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
        return call

    def blocks(*a, **kw):
        return timed("stale gradients" if "update_stats" in kw else "fresh gradients", originals["blocks"])(*a, **kw)

    grads.blocks = blocks
    trigger.decide = timed("trigger norm", originals["decide"])
    memory.upload = timed("upload (rest)", originals["upload"])
    comp.compress = timed("compress", originals["compress"])
    engine._aggregate = timed("aggregate", originals["_aggregate"])
    try:
        for _ in range(warmup):
            sim.step()
        for key in spent:
            spent[key] = 0.0
        t0 = time.perf_counter()
        for _ in range(rounds):
            sim.step()
        total = time.perf_counter() - t0
    finally:
        for name, obj in (("blocks", grads), ("decide", trigger), ("upload", memory), ("compress", comp),
                          ("_aggregate", engine)):
            delattr(obj, name)  # back to the class's methods
    # Nested calls: decide contains the stale gradients, upload contains compress.
    spent["trigger norm"] -= spent["stale gradients"]
    spent["upload (rest)"] -= spent["compress"]
    out = {key: 1e3 * v / rounds for key, v in spent.items()}
    out["other"] = 1e3 * total / rounds - sum(out.values())
    out["round"] = 1e3 * total / rounds
    return out


def replicate(data: DataSplit, times: int) -> DataSplit:
    tr = data.train
    big = ArrayDataset(tr.x.repeat(times, *([1] * (tr.x.dim() - 1))), tr.y.repeat(times), tr.num_classes, tr.name)
    return DataSplit(big, data.test)


def section_backends(args, base: RunConfig, data: DataSplit) -> dict:
    print(f"\n== 1. paper MNIST setting: M={base.workers}, fc, mnist5k, batch {base.batch_size} ==")
    print(f"   warm-up {args.warmup} rounds, then {args.repeats} x {args.iters} timed rounds per simulator, taking turns (median window)")
    sims = {
        (algo, backend): Simulator(replace(base, backend=backend), algo, data)
        for algo in ALGOS
        for backend in ("vmap", "loop")
    }
    # At the default c = 2 these rules never skip on this data (their two gradients are on different
    # minibatches: a noise floor); they run at docs/results.md's zoo c = 0.002, where wk1 skips.
    lazy_c = {algo: {"threshold_scale": CHEAP_LAZY_C} for algo in CHEAP_LAZY}
    sims.update({(algo, "vmap"): Simulator(replace(base, backend="vmap", per_algorithm=lazy_c), algo, data)
                 for algo in CHEAP_LAZY})
    rows = time_interleaved(sims, args.warmup, args.iters, args.repeats)
    del sims
    hdr = f"{'algorithm':<9} {'vmap it/s':>10} {'vmap ms/it':>11} {'loop it/s':>10} {'loop ms/it':>11} {'vmap/loop':>10} {'uploads':>8}"
    print(hdr)
    print("-" * len(hdr))
    for algo in ALGOS:
        v, lp = rows[(algo, "vmap")], rows[(algo, "loop")]
        print(
            f"{algo:<9} {v['iters_per_s']:>10.1f} {v['ms_per_iter']:>11.2f} {lp['iters_per_s']:>10.1f} "
            f"{lp['ms_per_iter']:>11.2f} {v['iters_per_s'] / lp['iters_per_s']:>9.2f}x {v['upload_rate']:>7.0%}"
        )
    for algo in CHEAP_LAZY:
        v = rows[(algo, "vmap")]
        print(f"{algo:<9} {v['iters_per_s']:>10.1f} {v['ms_per_iter']:>11.2f} {'—':>10} {'—':>11} {'—':>10} "
              f"{v['upload_rate']:>7.0%}")
    gv = time_gradients(Simulator(replace(base, backend="vmap"), "sgd", data), args.grad_reps)
    gl = time_gradients(Simulator(replace(base, backend="loop"), "sgd", data), args.grad_reps)
    print(f"gradient call alone (M={base.workers} workers): vmap {gv:.2f} ms, loop {gl:.2f} ms, loop/vmap {gl / gv:.2f}x")
    phases = {a: phase_breakdown(Simulator(replace(base, backend="vmap"), a, data), args.warmup, args.iters) for a in ("sgd", "sasg")}
    print(f"where a round goes (vmap, ms per round, {args.iters} rounds after {args.warmup} of warm-up):")
    keys = list(phases["sasg"])
    print(f"{'phase':<17} {'sgd':>7} {'sasg':>7}")
    for key in keys:
        print(f"{key:<17} {phases['sgd'][key]:>7.2f} {phases['sasg'][key]:>7.2f}")
    return {"rows": rows, "grad_ms": {"vmap": gv, "loop": gl}, "phases": phases}


def section_scaling(args, base: RunConfig, data: DataSplit) -> dict:
    big = replicate(data, 10)
    print(f"\n== 2. cost per iteration vs M (vmap, fc, mnist5k x10 = {len(big.train)} train images, batch {base.batch_size}) ==")
    res = {}
    hdr = f"{'M':>4} {'sgd ms/it':>10} {'sasg ms/it':>11} {'sasg/sgd':>9} {'sasg uploads':>13}"
    print(hdr)
    print("-" * len(hdr))
    for m in args.workers:
        cfg = replace(base, workers=m, backend="vmap")
        sims = {a: Simulator(cfg, a, big) for a in ("sgd", "sasg")}
        r = time_interleaved(sims, args.warmup, args.iters_scaling, args.repeats)
        del sims
        res[m] = r
        print(
            f"{m:>4} {r['sgd']['ms_per_iter']:>10.2f} {r['sasg']['ms_per_iter']:>11.2f} "
            f"{r['sasg']['ms_per_iter'] / r['sgd']['ms_per_iter']:>8.2f}x {r['sasg']['upload_rate']:>12.0%}"
        )
    return res


# ----- section 3: ResNet-18 peak RSS, in a child process -------------------------------------
def rss_child(iters: int) -> None:
    def status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    base_rss = status("VmRSS")
    gen = torch.Generator().manual_seed(0)
    n_train, n_test = 400, 100
    data = DataSplit(
        ArrayDataset(torch.randn(n_train, 3, 32, 32, generator=gen), torch.randint(0, 10, (n_train,), generator=gen), 10, "cifar-shaped"),
        ArrayDataset(torch.randn(n_test, 3, 32, 32, generator=gen), torch.randint(0, 10, (n_test,), generator=gen), 10, "cifar-shaped"),
    )
    cfg = RunConfig(dataset="synthetic", model="resnet18", workers=10, batch_size=10, window=1, iterations=iters,
                    device="cpu").validate()  # host memory is what VmHWM measures
    sim = Simulator(cfg, "sasg", data)
    d = sim.layout.numel
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sim.step()
        times.append(time.perf_counter() - t0)
    state = {
        "theta": sim.theta.numel() * 4,
        "error": sim.workers.error.numel() * 4,
        "anchor": sim.workers.anchor.numel() * 4,
        "last": sim.server.last.values.numel() * 4 + sim.server.last.indices.numel() * 8,
    }
    # workspace buffers (sasg.core.workspace); gradients are fresh per call (freed each round)
    for owner in (sim, sim.engine, sim.algorithm.compressor):
        for key, buf in owner.workspace._buffers.items():
            state[f"workspace:{type(owner).__name__}:{key}"] = buf.numel() * buf.element_size()
    print(json.dumps({
        "num_parameters": d, "backend": sim.gradients.backend, "base_rss": base_rss,
        "peak_rss": status("VmHWM"), "state_bytes": state, "step_seconds": times,
        "uploads": list(sim.ledger.uploads),
    }))


def section_resnet(args) -> dict | None:
    print("\n== 3. peak memory of a ResNet-18 sasg simulation (M=10, batch 10, CIFAR-shaped random data) ==")
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", str(args.resnet_iters)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print("   failed:", proc.stderr.strip().splitlines()[-1:] or proc.returncode)
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1 / 2**20
    s = r["state_bytes"]
    print(f"   parameters {r['num_parameters']:,} ({r['backend']} backend), {args.resnet_iters} rounds in "
          f"{time.perf_counter() - t0:.0f} s (round times {', '.join(f'{t:.1f}' for t in r['step_seconds'])} s)")
    print(f"   peak RSS {r['peak_rss'] * mb:,.0f} MiB (python + torch at start: {r['base_rss'] * mb:,.0f} MiB)")
    print("   flat state buffers: " + ", ".join(f"{k} {v * mb:,.0f} MiB" for k, v in s.items())
          + f"; total {sum(s.values()) * mb:,.0f} MiB")
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, M = 10 and 100 only, 2 ResNet rounds")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 30)")
    p.add_argument("--iters", type=int, default=None, help="rounds per timed window, section 1 (default 60)")
    p.add_argument("--iters-scaling", type=int, default=None, help="rounds per timed window, section 2 (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed windows per measurement (median)")
    p.add_argument("--workers", type=str, default=None, help="M values for section 2 (default 10,30,100)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 memory measurement")
    p.add_argument("--resnet-iters", type=int, default=2)
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    # As the sasg command line does (a process-wide allocator setting no library object applies).
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return
    args.warmup = args.warmup if args.warmup is not None else (15 if args.quick else 30)
    args.iters = args.iters or (20 if args.quick else 60)
    args.iters_scaling = args.iters_scaling or (8 if args.quick else 20)
    args.grad_reps = 10 if args.quick else 30
    args.workers = [int(m) for m in (args.workers or ("10,100" if args.quick else "10,30,100")).split(",")]
    if args.warmup < 11:
        print("note: fewer than D+1 = 11 warm-up rounds: the lazy rule is still in its own warm-up")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, load average {loadavg()}")
    t_start = time.perf_counter()
    base = RunConfig(device="cpu").validate()  # the paper's MNIST setting, on the CPU (not auto)
    data = load_data(base)
    s1 = section_backends(args, base, data)
    s2 = section_scaling(args, base, data)
    s3 = None if args.no_resnet else section_resnet(args)
    rows = s1["rows"]
    m_lo, m_hi = min(args.workers), max(args.workers)
    headline = {
        "vectorized_over_loop": round(rows[("sasg", "vmap")]["iters_per_s"] / rows[("sasg", "loop")]["iters_per_s"], 3),
        "sasg_over_sgd_cost": round(rows[("sasg", "vmap")]["ms_per_iter"] / rows[("sgd", "vmap")]["ms_per_iter"], 3),
        f"m{m_hi}_over_m{m_lo}_cost": round(s2[m_hi]["sasg"]["ms_per_iter"] / s2[m_lo]["sasg"]["ms_per_iter"], 3),
        # The cheapest lazy rule without a second gradient, per round against sgd (target <= 1.5).
        "cheap_lazy_over_sgd_cost": round(min(rows[(a, "vmap")]["ms_per_iter"] for a in CHEAP_LAZY)
                                          / rows[("sgd", "vmap")]["ms_per_iter"], 3),
        "cheap_lazy_rule": min(CHEAP_LAZY, key=lambda a: rows[(a, "vmap")]["ms_per_iter"]),
        "iters_per_s_vmap": {a: round(rows[(a, "vmap")]["iters_per_s"], 2) for a in (*ALGOS, *CHEAP_LAZY)},
        "iters_per_s_loop": {a: round(rows[(a, "loop")]["iters_per_s"], 2) for a in ALGOS},
        "gradient_vectorized_over_loop": round(s1["grad_ms"]["loop"] / s1["grad_ms"]["vmap"], 3),
        "grad_call_ms": {k: round(v, 2) for k, v in s1["grad_ms"].items()},
        "phases_ms": {a: {k: round(v, 2) for k, v in ph.items()} for a, ph in s1["phases"].items()},
        "sasg_ms_per_iter_by_M": {m: round(s2[m]["sasg"]["ms_per_iter"], 2) for m in args.workers},
        "sgd_ms_per_iter_by_M": {m: round(s2[m]["sgd"]["ms_per_iter"], 2) for m in args.workers},
        "resnet18_m10_peak_rss_mib": None if s3 is None else round(s3["peak_rss"] / 2**20),
        "threads": torch.get_num_threads(),
        "load_average_end": loadavg(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(f"\ntotal {headline['seconds']} s, load average {loadavg()}")
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
