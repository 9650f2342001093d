"""Two nodes over a shaped link: ``sasg launch --nnodes 2`` (or any command) across two network
namespaces joined by a veth pair (benchmarks/netns.py). Root needed.

    sudo .venv/bin/python benchmarks/two_nodes.py                      # sgd vs sasg at 100 Mbit/s and 1 Gbit/s
    sudo .venv/bin/python benchmarks/two_nodes.py --relay on,off       # also without the relay (SASG_RELAY=0)
    sudo .venv/bin/python benchmarks/two_nodes.py --rates 100mbit --delay 2ms --algos sgd,sasg --iterations 40
    sudo .venv/bin/python benchmarks/two_nodes.py --rates 1gbit -- \\
        python -m sasg launch --nnodes 2 --node-rank {node} --nproc-per-node 2 \\
            --master-addr {master_addr} --master-port {port} --algo sasg --iterations 50 --out /tmp/x

For each rate it shapes both directions of the link (``tc tbf``; ``--delay``: a one-way ``netem``
delay, where the kernel has it) and measures what the link does (TCP round-trip time, one stream's
throughput). Without a command it runs, for each ``--algos`` entry, ``sasg launch --nnodes 2
--nproc-per-node 2`` (4 workers) on the paper's MNIST setting (FC 784-512-10, embedded MNIST-5k,
batch 10 per worker, lr 0.05, density 1 %, D = 10, c = 2) for ``--iterations`` rounds, and prints
the wall time of the launch (start-up included), the training time (rank 0's ``train_seconds``),
the bytes both nodes sent on the link and each algorithm's speed-up over ``sgd`` in training time.
``--relay on,off`` runs every algorithm twice, relayed (the default: each message crosses the
link once, see sasg/distributed/relay.py) and direct (``SASG_RELAY=0``: once per rank on the
other node), rows ``ALGO`` and ``ALGO-direct``; the JSON adds ``link_saved_by_relay_<rate>``
(1 - relayed / direct link bytes, sasg).
With a command (after ``--``), it runs it on both nodes at once, the placeholders {node},
{addr} (this node's address), {master_addr}, {master_name}, {port} and {ifname} filled in, and
prints each node's exit code and the wall time. The last line is JSON. The namespaces are removed
at the end, also on failure, Ctrl-C, SIGTERM or SIGHUP; a run killed with SIGKILL leaves them to
the next run, which removes them first.
"""

from __future__ import annotations

import checkout  # noqa: F401  (first: this checkout's sasg, see benchmarks/checkout.py)

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Unavailable, check_link_flags, exit_on_signals, measure_link, parse_delay, two_nodes  # noqa: E402

PAPER_MNIST = ["--dataset", "mnist5k", "--model", "fc", "--batch-size", "10", "--lr", "0.05", "--density", "0.01",
               "--window", "10", "--threshold-scale", "2", "--eval-every", "1000000", "--device", "cpu", "--quiet"]
PORTS = itertools.count(29500)


def launch_algo(net, algo: str, iterations: int, out: Path, timeout: float, relay: bool = True) -> dict:
    port = next(PORTS)

    def argv(node: int) -> list[str]:
        return [sys.executable, "-m", "sasg", "launch", "--nnodes", "2", "--node-rank", str(node),
                "--nproc-per-node", "2", "--master-addr", net.address(0), "--master-port", str(port),
                *PAPER_MNIST, "--algo", algo, "--iterations", str(iterations), "--out", str(out)]

    before = net.tx_bytes(0) + net.tx_bytes(1)
    t = time.monotonic()
    done = net.run_both(argv, env={**_env(), "OMP_NUM_THREADS": "1", "SASG_RELAY": "1" if relay else "0"},
                        timeout=timeout)
    wall = time.monotonic() - t
    link = net.tx_bytes(0) + net.tx_bytes(1) - before
    for node, r in enumerate(done):
        if r.returncode != 0:
            raise RuntimeError(f"{algo}: node {node} exited {r.returncode}:\n{r.stderr.strip()[-2000:]}")
    rec = json.loads((out / "distributed.json").read_text())["runs"][0]
    return {"algo": algo if relay else f"{algo}-direct", "iterations": iterations, "wall_seconds": round(wall, 2),
            "train_seconds": rec["train_seconds"], "link_bytes": link, "uploads": rec["uploads"],
            "payload_bytes": rec["bytes_counted"]["payload_bytes_sent"]}


def _env() -> dict:
    env = dict(os.environ)
    env.pop("SASG_LAUNCHER_PID", None)
    return env


def run_command(net, command: list[str], port: int, timeout: float) -> dict:
    def argv(node: int) -> list[str]:
        fill = {"node": node, "addr": net.address(node), "master_addr": net.address(0),
                "master_name": net.hostname(0), "port": port, "ifname": net.ifname(node)}
        return [token.format_map(fill) for token in command]

    t = time.monotonic()
    done = net.run_both(argv, env=_env(), timeout=timeout)
    wall = time.monotonic() - t
    for node, r in enumerate(done):
        print(f"--- node {node}: exit {r.returncode}\n{r.stdout}{r.stderr}", file=sys.stderr)
    return {"wall_seconds": round(wall, 2), "exit_codes": [r.returncode for r in done]}


def table(rate: str, link: dict, rows: list[dict]) -> str:
    sgd = next((r for r in rows if r["algo"] == "sgd"), None)
    lines = [f"rate {rate}, delay {link['delay'] or 'none'}: measured {link['mbit_per_s']} Mbit/s, "
             f"RTT {link['rtt_ms']} ms  (2 nodes x 2 processes, {rows[0]['iterations']} iterations)",
             f"{'algo':<12} {'wall s':>8} {'train s':>8} {'s/iter':>8} {'MB on link':>11} {'uploads':>8} "
             f"{'vs sgd':>8}"]
    for r in rows:
        speed = f"{sgd['train_seconds'] / r['train_seconds']:.2f}x" if sgd else "—"
        lines.append(f"{r['algo']:<12} {r['wall_seconds']:8.1f} {r['train_seconds']:8.2f} "
                     f"{r['train_seconds'] / r['iterations']:8.4f} {r['link_bytes'] / 1e6:11.2f} {r['uploads']:>8} "
                     f"{speed:>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description="sasg launch (or a command) on two nodes over a shaped link.")
    p.add_argument("--rates", type=lambda s: s.split(","), default=["100mbit", "1gbit"], help="100mbit,1gbit")
    p.add_argument("--delay", default="2ms", help="one-way delay (netem); 0 for none; "
                   "without netem in the kernel: none, with a note (2ms)")
    p.add_argument("--algos", type=lambda s: s.split(","), default=["sgd", "sasg"], help="sgd,sasg")
    p.add_argument("--iterations", type=int, default=40, help="rounds per run (40)")
    p.add_argument("--relay", type=lambda s: s.split(","), default=["on"],
                   help="on (each message crosses the link once), off (SASG_RELAY=0), or on,off (on)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run (600)")
    args = p.parse_args(argv)
    check_link_flags(p, args.rates, args.delay)
    if not args.relay or any(r not in ("on", "off") for r in args.relay):
        p.error(f"--relay: on, off or on,off, got {','.join(args.relay)}")

    exit_on_signals()
    result = {"nodes": 2, **({} if command else {"nproc_per_node": 2}), "rates": {}}
    try:
        with two_nodes() as net, tempfile.TemporaryDirectory() as tmp:
            delay = parse_delay(args.delay) and args.delay
            if delay and not net.can_delay:
                print("note: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): no delay added, "
                      "only the rate is shaped", file=sys.stderr)
                delay = None
            for rate in args.rates:
                net.shape(rate, delay)
                link = {"delay": net.delay, **measure_link(net)}
                entry = {"link": link}
                if command:
                    entry.update(run_command(net, command, next(PORTS), args.timeout))
                    print(f"rate {rate}: exit codes {entry['exit_codes']}, {entry['wall_seconds']} s, link {link}")
                else:
                    rows = []
                    for algo in args.algos:
                        for relay in args.relay:
                            rows.append(launch_algo(net, algo, args.iterations, Path(tmp) / f"{rate}-{algo}-{relay}",
                                                    args.timeout, relay=relay == "on"))
                            print(f"  {rate} {rows[-1]['algo']}: {rows[-1]['wall_seconds']} s", file=sys.stderr,
                                  flush=True)
                    entry["runs"] = rows
                    print(table(rate, link, rows) + "\n", flush=True)
                    by = {r["algo"]: r for r in rows}
                    if "sgd" in by and "sasg" in by:
                        result[f"speedup_sasg_vs_sgd_{rate}"] = round(by["sgd"]["train_seconds"] / by["sasg"]["train_seconds"], 2)
                    if "sasg" in by and "sasg-direct" in by:
                        result[f"link_saved_by_relay_{rate}"] = round(
                            1 - by["sasg"]["link_bytes"] / by["sasg-direct"]["link_bytes"], 3)
                result["rates"][rate] = entry
    except Unavailable as e:
        print(f"two_nodes.py: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"two_nodes.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0 if not command or all(c == 0 for e in result["rates"].values() for c in e["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
