"""``sasg launch``: the same run as ``sasg run --workers N``, as N real processes under torchrun.

Here: the launcher's flags, and the checks of them (the flags, the backend, the run and
checkpoint folders and the data: one-line errors, nothing started, nothing written). Then
:mod:`sasg.distributed.launcher` starts ``python -m sasg.cli.worker <the same flags>`` on every
process through torchrun; rank 0 writes the run folder, atomically, once training has finished
(:mod:`sasg.distributed.rank`). When a worker dies, torchrun stops the others; the launcher reports
it in one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..config import MAX_ROUNDS, MAX_WORKERS, ConfigError
from ..distributed.launcher import (LaunchFailed, check_backend, check_checkpoint_dir, check_run_folder, run_workers,
                                    torchrun_args)
from .config_args import check_seeds, config_from_args, resolved

# The torchrun entry point the launcher starts on every process.
WORKER_MODULE = "sasg.cli.worker"

# Flags only the launcher reads (each takes one value); everything else goes to the workers.
LAUNCHER_ONLY = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


# A collective may wait at most a day for a peer: longer is no timeout at all (a hung peer would
# hold every rank for days), and torch turns the seconds into a timedelta, which ``inf`` or 1e300
# overflow (OverflowError in every worker).
MAX_TIMEOUT_S = 86400.0


def _flag_type(parse: str, **bounds):
    """An argparse type from :mod:`sasg.validation` (``parse``: "integer" or "number")."""
    from .. import validation

    return validation.argument(getattr(validation, f"parse_{parse}"), **bounds)


_nonneg_int = _flag_type("integer", ge=0)
# A checkpoint interval past the longest run (config.MAX_ROUNDS) would never write one.
_checkpoint_interval = _flag_type("integer", ge=0, limit=MAX_ROUNDS, why="a run is at most 1e8 rounds",
                                  fix="e.g. --checkpoint-every 1000")
# Processes: the run's workers (config.MAX_WORKERS bounds --nproc-per-node x --nnodes too).
_processes = _flag_type("integer", ge=1, limit=MAX_WORKERS, why="the most workers a run may have",
                        fix="e.g. --nproc-per-node 4")
_nodes = _flag_type("integer", ge=1, limit=MAX_WORKERS, why="the most workers a run may have", fix="e.g. --nnodes 2")
_port = _flag_type("integer", ge=1, le=65535, fix="a TCP port, e.g. --master-port 29500")
_seconds = _flag_type("number", gt=0, limit=MAX_TIMEOUT_S, unit="seconds", why="one day", fix="e.g. --timeout 120")
# --heartbeat-timeout: 0 (off) or a finite number of seconds up to a day.
_heartbeat_seconds = _flag_type("number", ge=0, le=MAX_TIMEOUT_S, unit="seconds",
                                fix="0 (off) or e.g. --heartbeat-timeout 60")


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the worker processes (``sasg launch`` passes them through)."""
    g = p.add_argument_group("distributed")
    g.add_argument("--dist-backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="torch.distributed backend (auto: nccl for --device cuda, gloo otherwise)")
    g.add_argument("--timeout", type=_seconds, default=120.0,
                   help="seconds a collective may wait for a peer before the run fails (120); "
                        "a peer that dies is noticed at once")
    g.add_argument("--heartbeat-timeout", type=_heartbeat_seconds, default=60.0,
                   help="stop the run when a rank has not answered for this many seconds, i.e. it is "
                        "hung or stopped (60; 0: off; see sasg.distributed.heartbeat)")
    g.add_argument("--checkpoint-dir", type=Path, default=None,
                   help="write per-rank checkpoints here (seed<S>-rank<R>-iter<K>.pt, last two kept)")
    g.add_argument("--checkpoint-every", type=_checkpoint_interval, default=0,
                   help="checkpoint every N iterations (0: never; needs --checkpoint-dir)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint all ranks hold in --checkpoint-dir")


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launcher (torchrun)")
    g.add_argument("--nproc-per-node", type=_processes, required=True, help="worker processes on this node")
    g.add_argument("--nnodes", type=_nodes, default=1, help="number of nodes (1)")
    g.add_argument("--node-rank", type=_nonneg_int, default=0, help="this node's rank, 0..nnodes-1 (0)")
    g.add_argument("--master-addr", default=None, help="address of node 0 (multi-node; static rendezvous)")
    g.add_argument("--master-port", type=_port, default=29500, help="port on node 0, 1..65535 (29500; multi-node)")


def hide_workers_flag(p: argparse.ArgumentParser) -> None:
    """``--workers`` is the number of processes here (set for you); keep it out of the help."""
    for action in p._actions:
        if "--workers" in action.option_strings:
            action.help = argparse.SUPPRESS


def add_launch_subparser(sub, add_training_flags, algo_help: str) -> argparse.ArgumentParser:
    launch = sub.add_parser(
        "launch", help="train with N real worker processes (torchrun)",
        description="Start the same run as `sasg run --workers N` as N real worker processes under "
                    "torchrun (gloo on CPU, NCCL on GPU); rank 0 writes the same run folder. "
                    "The number of workers is --nproc-per-node x --nnodes.",
        allow_abbrev=False,  # a prefix such as --nproc must not pass (nor reach torchrun or the workers)
    )
    launch.add_argument("--algo", required=True, type=str.lower, help=algo_help)
    add_training_flags(launch)
    hide_workers_flag(launch)
    add_worker_flags(launch)
    add_launcher_flags(launch)
    return launch


def worker_argv(argv: list[str]) -> list[str]:
    """The command line after ``launch`` minus the launcher-only flags.

    Only the exact flags of :data:`LAUNCHER_ONLY` are removed (``--flag VALUE`` or ``--flag=VALUE``);
    every other token goes to the workers unchanged. The launch parser takes no abbreviations, so a
    line it accepted spells these flags out in full, and a value never looks like one of them.
    """
    tokens = list(argv)
    if "launch" in tokens:
        tokens = tokens[tokens.index("launch") + 1 :]
    rest, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            rest += tokens[i:]
            break
        if token in LAUNCHER_ONLY:
            i += 2  # the flag and its value
            continue
        if token.split("=", 1)[0] in LAUNCHER_ONLY and "=" in token:
            i += 1
            continue
        rest.append(token)
        i += 1
    return rest


def default_out(command: str = "launch") -> Path:
    """``runs/<command>-<time>``, as ``sasg run`` and ``sasg compare`` name theirs."""
    from ..lifecycle.destination import default_run_dir

    return default_run_dir(command)


# ----- checks made before anything starts -------------------------------------------------------
def _as_launch_advice(message: str, args: argparse.Namespace) -> str:
    """Data-size errors advise ``--workers``, which launch sets from the process count: name
    ``--nproc-per-node`` (per node) instead."""
    def per_node(m: re.Match) -> str:
        return f"--nproc-per-node {max(1, int(m.group(1)) // args.nnodes)} or fewer"

    message = re.sub(r"--workers (\d+) or fewer", per_node, message)
    return re.sub(r"fewer (--)?workers", "fewer processes (--nproc-per-node)", message)


def check_data(config, args: argparse.Namespace) -> None:
    """The data set loads, fits the processes, and splits over them (partition errors here)."""
    from ..experiment import check_fits, load_data, partition_report

    try:
        data = load_data(config)
        check_fits(config, data)
        partition_report(config, data)
    except (ConfigError, ValueError) as e:
        raise ConfigError(_as_launch_advice(str(e), args)) from None


def check_checkpoint_flags(args: argparse.Namespace, seeds: list[int]) -> None:
    """The checkpoint flags on their own (no file system)."""
    if args.checkpoint_every and args.checkpoint_dir is None:
        raise ConfigError("--checkpoint-every needs --checkpoint-dir FOLDER")
    if args.resume and args.checkpoint_dir is None:
        raise ConfigError("--resume needs --checkpoint-dir FOLDER (where the checkpoints are)")
    if args.checkpoint_dir is not None and len(seeds) > 1:
        raise ConfigError("checkpoints work with one seed; drop --seeds or --checkpoint-dir")


def check_processes(args: argparse.Namespace) -> int:
    """The process flags agree with each other (and with --workers, if given): the world size."""
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
    return world


def check_destinations(args: argparse.Namespace, out: Path, seeds: list[int]) -> None:
    """Node 0's run folder, this node's checkpoint folder, and (``--resume``) this node's ranks'
    checkpoints: found wrong here, before any worker starts."""
    if args.node_rank == 0:
        from ..lifecycle.destination import check_separate_folders

        check_separate_folders(out, checkpoint_dir=args.checkpoint_dir, tensorboard=args.tensorboard)
        check_run_folder(out, args.overwrite)
    check_checkpoint_dir(args.checkpoint_dir, args.checkpoint_every)
    if args.resume:
        from ..lifecycle.checkpoint import check_resumable

        first = args.node_rank * args.nproc_per_node
        check_resumable(args.checkpoint_dir, seeds[0], range(first, first + args.nproc_per_node))


def launch_main(args: argparse.Namespace, argv: list[str]) -> int:
    """``sasg launch``: validate, then run the workers under torchrun. Returns the exit code."""
    world = check_processes(args)
    if getattr(args, "seeds", None):
        check_seeds(args.seeds)
    args.workers = world
    from ..plugins import load_plugins

    load_plugins(args.plugin)  # the workers import them again: the flag is forwarded to them
    config = config_from_args(args).validate()
    from ..threads import choose_threads

    threads = choose_threads(getattr(args, "threads", None))[0]  # a bad count stops here, before any worker
    seeds = list(args.seeds) if getattr(args, "seeds", None) else [config.seed]
    check_checkpoint_flags(args, seeds)
    if args.dry_run:
        print(json.dumps({**resolved(config, seeds), "launch": {"nproc_per_node": args.nproc_per_node, "nnodes": args.nnodes}}, indent=2))
        return 0
    check_backend(args.dist_backend, config.device, args.nproc_per_node)
    out = args.out or default_out()
    check_destinations(args, out, seeds)
    check_data(config, args)

    forwarded = worker_argv(argv) + ["--out", str(out), "--workers", str(world)]
    targs = torchrun_args(WORKER_MODULE, forwarded, args.nproc_per_node, args.nnodes, args.node_rank,
                          args.master_addr, args.master_port)
    try:
        run_workers(targs, threads, args.nnodes)
    except LaunchFailed as e:
        print(f"sasg: error: {e}", file=sys.stderr)
        return e.code
    return 0
