"""``sasg launch``: the same run as ``sasg run --workers N``, as N real processes under torchrun.

The launcher validates the flags and the data first (one-line errors, nothing started), then
starts ``python -m sasg.distributed.worker <the same flags>`` through torchrun's own launcher
(``torch.distributed.run``): ``--standalone`` on one node, static rendezvous
(``--master-addr/--master-port/--node-rank``) across nodes. Rank 0 writes the run folder,
atomically, once training has finished. When a worker dies, torchrun stops the others; the
launcher reports it in one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..config import ConfigError

# Flags only the launcher reads; everything else on the command line goes to the workers.
LAUNCHER_ONLY = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return v


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the worker processes (``sasg launch`` passes them through)."""
    g = p.add_argument_group("distributed")
    g.add_argument("--dist-backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="torch.distributed backend (auto: nccl for --device cuda, gloo otherwise)")
    g.add_argument("--timeout", type=_seconds, default=120.0,
                   help="seconds a collective may wait for a peer before the run fails (120); "
                        "a peer that dies is noticed at once")
    g.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="write per-rank checkpoints here (seed<S>-rank<R>-iter<K>.pt, last two kept)")
    g.add_argument("--checkpoint-every", type=_nonneg_int, default=0,
                   help="checkpoint every N iterations (0: never; needs --checkpoint-dir)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint all ranks hold in --checkpoint-dir")


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launcher (torchrun)")
    g.add_argument("--nproc-per-node", type=_positive_int, required=True, help="worker processes on this node")
    g.add_argument("--nnodes", type=_positive_int, default=1, help="number of nodes (1)")
    g.add_argument("--node-rank", type=_nonneg_int, default=0, help="this node's rank, 0..nnodes-1 (0)")
    g.add_argument("--master-addr", default=None, help="address of node 0 (multi-node; static rendezvous)")
    g.add_argument("--master-port", type=_positive_int, default=29500, help="port on node 0 (29500; multi-node)")


def add_launch_subparser(sub, add_training_flags, algorithms) -> argparse.ArgumentParser:
    launch = sub.add_parser(
        "launch", help="train with N real worker processes (torchrun)",
        description="Start the same run as `sasg run --workers N` as N real worker processes under "
                    "torchrun (gloo on CPU, NCCL on GPU); rank 0 writes the same run folder.",
    )
    launch.add_argument("--algo", required=True, type=str.lower, help=f"one of {', '.join(algorithms)}")
    add_training_flags(launch)
    add_worker_flags(launch)
    add_launcher_flags(launch)
    return launch


def worker_argv(argv: list[str]) -> list[str]:
    """The command line after ``launch`` minus the launcher-only flags."""
    tokens = list(argv)
    if "launch" in tokens:
        tokens = tokens[tokens.index("launch") + 1 :]
    strip = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in LAUNCHER_ONLY:
        strip.add_argument(flag)
    _, rest = strip.parse_known_args(tokens)
    return rest


def _failure_line(err) -> str:
    parts = []
    failures = getattr(err, "failures", {}) or {}
    for rank in sorted(failures):
        f = failures[rank]
        how = f"signal {f.signal_name()}" if f.exitcode is not None and f.exitcode < 0 else f"exit code {f.exitcode}"
        parts.append(f"rank {rank}: {how}")
    detail = "; ".join(parts) if parts else str(err).strip().splitlines()[0]
    return f"the distributed run failed ({detail}); see the workers' messages above; no run folder written"


def _quiet_torchrun_logs() -> None:
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def launch_main(args: argparse.Namespace, argv: list[str]) -> int:
    """``sasg launch``: validate, then run the workers under torchrun. Returns the exit code."""
    from ..cli.main import config_from_args, resolved
    from ..experiment import check_fits, load_data
    from ..report import check_destination

    world = args.nproc_per_node * args.nnodes
    if args.node_rank >= args.nnodes:
        raise ConfigError(f"--node-rank {args.node_rank} but --nnodes {args.nnodes}; node ranks are 0..{args.nnodes - 1}")
    if args.nnodes > 1 and not args.master_addr:
        raise ConfigError("--nnodes > 1 needs --master-addr (the address of node 0) and the same --master-port on every node")
    if args.workers is not None and args.workers != world:
        raise ConfigError(
            f"--workers {args.workers} but {world} processes (--nproc-per-node {args.nproc_per_node} x "
            f"--nnodes {args.nnodes}); drop --workers: one worker per process"
        )
    if args.checkpoint_every and args.checkpoint_dir is None:
        raise ConfigError("--checkpoint-every needs --checkpoint-dir FOLDER")
    if args.resume and args.checkpoint_dir is None:
        raise ConfigError("--resume needs --checkpoint-dir FOLDER (where the checkpoints are)")
    if getattr(args, "seeds", None) and len(args.seeds) > 1 and args.checkpoint_dir is not None:
        raise ConfigError("checkpoints work with one seed; drop --seeds or --checkpoint-dir")
    args.workers = world
    config = config_from_args(args).validate()
    seeds = list(args.seeds) if getattr(args, "seeds", None) else [config.seed]
    if args.dry_run:
        print(json.dumps({**resolved(config, seeds), "launch": {"nproc_per_node": args.nproc_per_node, "nnodes": args.nnodes}}, indent=2))
        return 0
    out = args.out or Path("runs") / f"launch-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.node_rank == 0:
        check_destination(out, args.overwrite)
    data = load_data(config)
    check_fits(config, data)
    del data

    forwarded = worker_argv(argv) + ["--out", str(out), "--workers", str(world)]
    # Stop the other workers within 0.1 s of a failure; SIGKILL what ignores SIGTERM after 5 s.
    targs = ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes), "--monitor-interval", "0.1",
             "--shutdown-timeout", "5"]
    if args.nnodes == 1 and not args.master_addr:
        targs += ["--standalone"]
    else:
        targs += ["--rdzv-backend", "static", "--master-addr", args.master_addr or "127.0.0.1",
                  "--master-port", str(args.master_port), "--node-rank", str(args.node_rank)]
    targs += ["-m", "sasg.distributed.worker", *forwarded]
    # One intra-op thread per worker, as torchrun would choose: it is also what makes a rank's
    # gradients bit-identical to the simulator's (see docs/distributed.md). Set it to override.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _quiet_torchrun_logs()

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(targs))
    except ChildFailedError as e:
        print(f"sasg: error: {_failure_line(e)}", file=sys.stderr)
        return 1
    except SignalException as e:
        sig = getattr(e, "sigval", None)
        name = getattr(sig, "name", "a signal")
        print(f"sasg: error: stopped by {name}; the workers were stopped; no run folder written", file=sys.stderr)
        return 130 if name == "SIGINT" else 1
    return 0
