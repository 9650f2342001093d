"""``sasg launch``: the same run as ``sasg run --workers N``, as N real processes under torchrun.

The launcher validates the flags, the backend, the run and checkpoint folders and the data first
(one-line errors, nothing started, nothing written), then
starts ``python -m sasg.cli.worker <the same flags>`` through torchrun's own launcher
(``torch.distributed.run``): ``--standalone`` on one node, static rendezvous
(``--master-addr/--master-port/--node-rank``) across nodes. Rank 0 writes the run folder,
atomically, once training has finished. When a worker dies, torchrun stops the others; the
launcher reports it in one line and exits non-zero. When the launcher itself dies (even by
``kill -9``), every worker gets SIGTERM from the kernel (Linux's parent-death signal) and stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..config import MAX_ROUNDS, MAX_WORKERS, ConfigError
from ..safe_files import os_reason
from ..safe_files import probe_folder as _probe_folder
from .config_args import check_seeds, config_from_args, resolved

# The torchrun entry point the launcher starts on every process.
WORKER_MODULE = "sasg.cli.worker"

# Set for the workers to the pid of `sasg launch`, their parent (torchrun's agent runs in it), so
# that a worker started after its launcher died notices and stops (see worker.die_with_parent).
LAUNCHER_PID_ENV = "SASG_LAUNCHER_PID"

# Seconds a worker gets between SIGTERM and SIGKILL when the run stops (a stopped or hung one
# ignores SIGTERM).
SHUTDOWN_GRACE_S = 5

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


# ----- checks made before anything starts -------------------------------------------------------
def resolve_backend(backend: str, device: str) -> str:
    return ("nccl" if str(device).startswith("cuda") else "gloo") if backend == "auto" else backend


def check_backend(backend: str, device: str, local_processes: int) -> None:
    """NCCL needs CUDA, a PyTorch built with NCCL, a CUDA device and one GPU per process."""
    import torch
    import torch.distributed as dist

    backend = resolve_backend(backend, device)
    on_gpu = str(device).startswith("cuda")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("--dist-backend nccl needs a CUDA GPU, and this machine has none; use --dist-backend gloo")
        if not dist.is_nccl_available():
            raise ConfigError("--dist-backend nccl: this PyTorch is built without NCCL; use --dist-backend gloo")
        if not on_gpu:
            raise ConfigError("--dist-backend nccl works on GPU tensors only; add --device cuda, or use --dist-backend gloo")
    if on_gpu and torch.cuda.is_available() and local_processes > torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(
            f"{local_processes} processes on this node but {n} CUDA device(s): one GPU per process; "
            f"use --nproc-per-node {n} or fewer, or --device cpu"
        )


def check_run_folder(out: Path, overwrite: bool) -> None:
    """What the finished run needs: ``check_destination``, and a parent folder the run folder
    can be staged in (found out here, not after training; what this creates is removed)."""
    from ..lifecycle.destination import check_destination

    out = Path(out)
    check_destination(out, overwrite)
    try:
        _probe_folder(out.parent.resolve())
    except OSError as e:
        raise ConfigError(f"cannot write the run folder {out}: {os_reason(e)}; choose another --out") from None


def check_checkpoint_flags(args: argparse.Namespace, seeds: list[int]) -> None:
    """The checkpoint flags on their own (no file system)."""
    if args.checkpoint_every and args.checkpoint_dir is None:
        raise ConfigError("--checkpoint-every needs --checkpoint-dir FOLDER")
    if args.resume and args.checkpoint_dir is None:
        raise ConfigError("--resume needs --checkpoint-dir FOLDER (where the checkpoints are)")
    if args.checkpoint_dir is not None and len(seeds) > 1:
        raise ConfigError("checkpoints work with one seed; drop --seeds or --checkpoint-dir")


def check_checkpoint_dir(args: argparse.Namespace, tidy: bool = True) -> None:
    """``--checkpoint-dir`` is a folder (or can be one) that checkpoints can be written to."""
    folder = args.checkpoint_dir
    if folder is None:
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--checkpoint-dir {folder} is a file, not a folder; choose another --checkpoint-dir")
    if args.checkpoint_every:
        try:
            _probe_folder(folder.resolve(), tidy)
        except OSError as e:
            raise ConfigError(
                f"cannot write checkpoints to {folder}: {os_reason(e)}; choose another --checkpoint-dir"
            ) from None


def default_out(command: str = "launch") -> Path:
    """``runs/<command>-<time>``, as ``sasg run`` and ``sasg compare`` name theirs."""
    from ..lifecycle.destination import default_run_dir

    return default_run_dir(command)


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


@contextmanager
def _grace_before_sigkill(seconds: int):
    """torchrun's ``--shutdown-timeout`` covers only a launcher stopped by a signal: when a worker
    fails, torch 2.13 gives the others a fixed 30 s between SIGTERM and SIGKILL
    (``PContext.close()`` called with its default; pytorch/pytorch#119856, PR #192815), so a hung
    worker (SIGSTOP) would hold the launcher 30 s after a peer reported it. For this run only,
    cap that grace at ``seconds``."""
    from torch.distributed.elastic.multiprocessing.api import PContext

    original = PContext.close

    def close(self, death_sig=None, timeout: int = seconds):
        return original(self, death_sig, min(timeout, seconds))

    PContext.close = close
    try:
        yield
    finally:
        PContext.close = original


# Seconds node 0's agent waits, after torchrun's exit barrier, for the other nodes' agents to leave it.
EXIT_BARRIER_GRACE_S = 10.0
_CHECKED_OUT_KEY = "sasg/launch/checked-out"


@contextmanager
def _store_outlives_exit_barrier(seconds: float = EXIT_BARRIER_GRACE_S):
    """Multi-node: when its workers succeed, each node's agent waits in torchrun's exit barrier,
    on the store that node 0's agent hosts. The last agent to arrive sets the barrier's key and
    then waits on it; node 0 may see the key, return and close the store first, and that agent
    then logs "Error waiting on exit barrier" with a traceback (and a C++ stack from the store)
    although the run succeeded (pytorch/pytorch#69520; seen across two network namespaces). For
    this run only: after the barrier every agent checks out, and node 0's waits until all have
    (at most ``seconds``) before it leaves and takes the store with it."""
    import time

    from torch.distributed.elastic.agent.server.api import SimpleElasticAgent
    from torch.distributed.elastic.multiprocessing.api import SignalException

    original = SimpleElasticAgent._exit_barrier

    def exit_barrier(self):
        original(self)
        group = self._worker_group
        try:
            left = self._store.add(_CHECKED_OUT_KEY, 1)
            deadline = time.monotonic() + seconds
            while group.group_rank == 0 and left < group.group_world_size and time.monotonic() < deadline:
                time.sleep(0.02)
                left = self._store.add(_CHECKED_OUT_KEY, 0)
        except SignalException:
            raise
        except Exception:  # the store is gone: nobody is left to wait for
            pass

    SimpleElasticAgent._exit_barrier = exit_barrier
    try:
        yield
    finally:
        SimpleElasticAgent._exit_barrier = original


def launch_main(args: argparse.Namespace, argv: list[str]) -> int:
    """``sasg launch``: validate, then run the workers under torchrun. Returns the exit code."""
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
    if args.node_rank == 0:
        from ..lifecycle.destination import check_separate_folders

        check_separate_folders(out, checkpoint_dir=args.checkpoint_dir, tensorboard=args.tensorboard)
        check_run_folder(out, args.overwrite)
    check_checkpoint_dir(args)
    if args.resume:
        from ..lifecycle.checkpoint import check_resumable

        first = args.node_rank * args.nproc_per_node
        check_resumable(args.checkpoint_dir, seeds[0], range(first, first + args.nproc_per_node))
    check_data(config, args)

    forwarded = worker_argv(argv) + ["--out", str(out), "--workers", str(world)]
    # Stop the other workers within 0.1 s of a failure; SIGKILL what ignores SIGTERM after 5 s.
    targs = ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes), "--monitor-interval", "0.1",
             "--shutdown-timeout", str(SHUTDOWN_GRACE_S)]
    if args.nnodes == 1 and not args.master_addr:
        targs += ["--standalone"]
    else:
        targs += ["--rdzv-backend", "static", "--master-addr", args.master_addr or "127.0.0.1",
                  "--master-port", str(args.master_port), "--node-rank", str(args.node_rank)]
    targs += ["-m", WORKER_MODULE, *forwarded]
    # One intra-op thread per worker by default, as torchrun would choose: ranks share the cores,
    # and it is also what makes a rank's gradients bit-identical to the simulator's (see
    # docs/distributed.md). --threads, $SASG_THREADS or $OMP_NUM_THREADS override it (sasg.threads).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _quiet_torchrun_logs()

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The workers' parent: each asks for SIGTERM when it dies and checks it is still there (see
    # worker.die_with_parent). Set for the run only, so it never reaches other processes.
    before = os.environ.get(LAUNCHER_PID_ENV)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    try:
        with _grace_before_sigkill(SHUTDOWN_GRACE_S), \
                (_store_outlives_exit_barrier() if args.nnodes > 1 else nullcontext()):
            run(parse_args(targs))
    except ChildFailedError as e:
        print(f"sasg: error: {_failure_line(e)}", file=sys.stderr)
        return 1
    except SignalException as e:
        sig = getattr(e, "sigval", None)
        name = getattr(sig, "name", "a signal")
        print(f"sasg: error: stopped by {name}; the workers were stopped; no run folder written", file=sys.stderr)
        return 130 if name == "SIGINT" else 1
    finally:
        if before is None:
            os.environ.pop(LAUNCHER_PID_ENV, None)
        else:
            os.environ[LAUNCHER_PID_ENV] = before
    return 0
