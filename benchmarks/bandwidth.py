"""Seconds per iteration and bytes on the wire over a rate-limited link: DDP vs sasg.

    sudo .venv/bin/python benchmarks/bandwidth.py --iterations 30          # or benchmarks/bandwidth.sh

Inside a private network namespace it creates itself (``ip netns add``; only ``lo`` exists there,
so no byte can go anywhere but loopback), with ``tc qdisc ... tbf rate R`` on ``lo``, it runs, for
each rate R (default 100 Mbit/s and 1 Gbit/s), 4 worker processes (torchrun, gloo) of:

  ddp     plain PyTorch DistributedDataParallel + torch.optim.SGD: one gradient all-reduce a step
  sgd     sasg's runner, dense uploads every round
  sparse  sasg's runner, top-k (1 %) + error feedback every round
  sasg    sasg's runner, lazy rule + top-k + error feedback
  sparse:rice+sign, sasg:rice+sign   the same with the rice+sign codec (Golomb-Rice index gaps,
          one sign bit per value + one magnitude per tensor): variable-size messages, whose sizes
          travel with the flags

on the paper's MNIST setting (FC 784-512-10, batch 10 per worker, lr 0.05 on the mean gradient,
embedded MNIST-5k, D = 10, c = 2). After ``--warmup`` untimed rounds it times ``--iterations``
rounds and reads ``/sys/class/net/lo/statistics/tx_bytes`` before and after (barriers on both
sides). It prints seconds per iteration, the bytes measured on ``lo``, the bytes the accounting
predicts (sasg: uploads x message x (M-1) + flags; ddp: the ring all-reduce volume
2 (M-1) x 4d), and each method's speed-up over DDP in the same run. ``lo`` is ONE shared link:
R caps the traffic of all workers together. The namespace is removed at the end, also on failure
or Ctrl-C (try/finally + signal handlers; ``bandwidth.sh`` adds a shell ``trap``). The namespace
and ``tc`` code is benchmarks/netns.py's, shared with benchmarks/two_nodes.py and the tests.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Unavailable, exit_on_signals, parse_rate, private_namespace, shape_device, sh  # noqa: E402  (benchmarks/netns.py)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("ddp", "sgd", "sparse", "sasg", "sparse:rice+sign", "sasg:rice+sign")
LO_TX = "/sys/class/net/lo/statistics/tx_bytes"


# ----------------------------------------------------------------------------------------------------
# worker side (runs under torchrun inside the namespace)
# ----------------------------------------------------------------------------------------------------


def _config(workers: int, iterations: int, algo: str, codec: str = "paper32"):
    from sasg import RunConfig

    return RunConfig(algorithms=(algo,), dataset="mnist5k", model="fc", workers=workers, batch_size=10, lr=0.05,
                     density=0.01, window=10, threshold_scale=2.0, iterations=iterations, codec=codec,
                     eval_every=10**9, seed=0, device="cpu").validate()  # gloo over loopback: CPU tensors


def _lo() -> int:
    return int(Path(LO_TX).read_text())


def worker(method: str, warmup: int, iterations: int, result: str) -> None:
    import torch
    import torch.distributed as dist

    from sasg.data import load_dataset
    from sasg.distributed.torch_transport import init_process_group_from_env

    transport = init_process_group_from_env("gloo", timeout_s=600)
    rank, M = transport.rank, transport.world_size
    data = load_dataset("mnist5k")
    algo, _, codec = method.partition(":")
    cfg = _config(M, warmup + iterations, "sgd" if method == "ddp" else algo, codec or "paper32")

    if method == "ddp":
        import torch.nn.functional as F
        from torch.nn.parallel import DistributedDataParallel as DDP

        from sasg import Simulator

        sim = Simulator(cfg, "sgd", data)  # the same init, split and minibatch streams
        model = DDP(sim.model)  # broadcasts rank 0's parameters once (not timed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)

        def step() -> None:
            idx = sim.sampler.next()[rank]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.train.x[idx]), data.train.y[idx]).backward()  # all-reduce
            opt.step()

        d = sim.layout.numel
        predicted = lambda: iterations * 2 * (M - 1) * 4 * d  # ring all-reduce volume
        extra = {}
    else:
        from sasg.accounting import flag_bytes, replica_payload_bytes
        from sasg.distributed.runner import DistributedRun

        run = DistributedRun(cfg, algo, data, transport)
        step = run.step

        def predicted() -> int:
            up = sum(run.ledger.bits_up[warmup:])
            fixed = run.engine.template.fixed_size(run.algorithm.codec)  # else sizes travel (4 B each)
            flags = iterations if (run.algorithm.lazy or not fixed) else 0
            return replica_payload_bytes(up, M) + flag_bytes(flags, M, 1 if fixed else 4)

        extra = {"uploads": lambda: sum(run.ledger.uploads[warmup:])}

    for _ in range(warmup):
        step()
    dist.barrier()
    lo0, t0 = _lo(), time.perf_counter()
    for _ in range(iterations):
        step()
    dist.barrier()
    t1, lo1 = time.perf_counter(), _lo()
    if rank == 0:
        out = {"method": method, "workers": M, "iterations": iterations, "seconds": t1 - t0,
               "lo_bytes": lo1 - lo0, "predicted_bytes": predicted()}
        out.update({k: f() for k, f in extra.items()})
        Path(result).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


# ----------------------------------------------------------------------------------------------------
# orchestrator (root, on the host): namespace, qdisc, one torchrun per method and rate
# ----------------------------------------------------------------------------------------------------


def ensure_iproute2() -> None:
    if shutil.which("ip") and shutil.which("tc"):
        return
    print("ip/tc missing: installing iproute2 (apt-get update; apt-get install -y iproute2)", flush=True)
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "iproute2"], check=True)


def run_method(ns: str, method: str, args, result: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONUNBUFFERED": "1"}
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(args.workers), str(Path(__file__).resolve()), "--worker", method,
           "--warmup", str(args.warmup), "--iterations", str(args.iterations), "--result", str(result)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0 or not result.exists():
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{method} failed (exit {p.returncode}):\n{tail}")
    return json.loads(result.read_text())


def fmt_table(rate: str, rows: list[dict]) -> str:
    ddp = next((r for r in rows if r["method"] == "ddp"), None)
    lines = [f"rate {rate}  ({rows[0]['workers']} workers, {rows[0]['iterations']} timed iterations)",
             f"{'method':<16} {'s/iter':>8} {'MB on lo':>10} {'MB predicted':>13} {'lo/pred':>8} "
             f"{'uploads':>8} {'speed-up vs ddp':>16}"]
    for r in rows:
        spi = r["seconds"] / r["iterations"]
        speed = (ddp["seconds"] / r["seconds"]) if ddp else float("nan")
        up = str(r.get("uploads", "—"))
        lines.append(f"{r['method']:<16} {spi:8.4f} {r['lo_bytes'] / 1e6:10.2f} {r['predicted_bytes'] / 1e6:13.2f} "
                     f"{r['lo_bytes'] / max(1, r['predicted_bytes']):8.3f} {up:>8} {speed:15.2f}x")
    return "\n".join(lines)


def orchestrate(args) -> int:
    if os.geteuid() != 0:
        print("bandwidth.py: needs root (ip netns add, tc); run it with sudo", file=sys.stderr)
        return 2
    try:
        for rate_text in args.rates:
            parse_rate(rate_text)
    except ValueError as e:
        print(f"bandwidth.py: --rates: {e}", file=sys.stderr)
        return 2
    ensure_iproute2()
    ns = args.netns or f"sasg-bw-{os.getpid()}"

    exit_on_signals()
    try:
        with private_namespace(ns), tempfile.TemporaryDirectory() as tmp:
            links = sh("ip", "netns", "exec", ns, "ip", "-o", "link", "show").stdout.strip().splitlines()
            assert len(links) == 1 and ": lo:" in links[0], f"namespace has more than loopback: {links}"
            for rate_text in args.rates:
                rate, _ = parse_rate(rate_text)
                shape_device(ns, "lo", rate)
                rows = []
                for method in args.methods:
                    res = Path(tmp) / f"{rate}-{method}.json"
                    t = time.time()
                    rows.append(run_method(ns, method, args, res))
                    print(f"  {rate:>8} {method:<7} done in {time.time() - t:5.1f} s", file=sys.stderr, flush=True)
                print(fmt_table(rate, rows), flush=True)
                print(flush=True)
    except Unavailable as e:
        print(f"bandwidth.py: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="DDP vs sasg over a rate-limited loopback in a private netns.")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per method (30)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (2)")
    p.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    p.add_argument("--rates", type=lambda s: s.split(","), default=["100mbit", "1gbit"], help="100mbit,1gbit")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS),
                   help="ddp,sgd,sparse,sasg,sparse:rice+sign,sasg:rice+sign (ALGO:CODEC)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per method and rate (600)")
    p.add_argument("--netns", default=None, help="namespace name (default sasg-bw-<pid>)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.warmup, args.iterations, args.result)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
