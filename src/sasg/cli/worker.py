"""One rank of a distributed run: ``python -m sasg.cli.worker --algo ... <sasg run flags>``.

``sasg launch`` starts it under torchrun; it can also be started by hand::

    torchrun --standalone --nproc_per_node 4 -m sasg.cli.worker --algo sasg --out runs/x

Every rank trains; rank 0 evaluates and, once training has finished, writes the run folder
atomically (the same files as ``sasg run``, plus ``distributed.json``; by default
``runs/launch-<time>``, named as ``sasg run`` names its own). A lost peer, a hung one (silent for
``--heartbeat-timeout``, see :mod:`sasg.distributed.heartbeat`) or a collective timeout ends every
rank with one line on stderr and a non-zero exit code.

Before training, the checks of ``sasg launch`` run here too (for runs started with torchrun
directly): the backend, rank 0's run folder, every rank's checkpoint folder. A problem any rank
finds stops every rank; the rank that found it reports it in one line.

Here: the flags, those checks, and what the process says and its exit code; the rank's run
itself (process group, the run loop, rank 0's run folder) is :mod:`sasg.distributed.rank`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from ..config import ConfigError
from ..distributed.launcher import LAUNCHER_PID_ENV, check_backend, check_checkpoint_dir, check_run_folder
from ..distributed.rank import PeerStopped, Reported
from ..distributed.torch_transport import PeerFailure
from ..lifecycle.checkpoint import CheckpointWriteError
from .launch import add_worker_flags, check_checkpoint_flags, default_out, hide_workers_flag


class Stopped(BaseException):
    """A termination signal (torchrun stops every worker when one fails)."""


_signalled: str | None = None  # the name of the termination signal that came, if one did


def _on_signal(signum, frame):
    global _signalled
    _signalled = signal.Signals(signum).name
    raise Stopped(_signalled)


def _leaving() -> None:
    """This worker is on its way out with its own message: a SIGTERM now (torchrun stopping the
    others once one rank failed) must not cut that message short with a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# prctl(2) option: the signal this process gets when its parent dies (Linux only).
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Make this worker get SIGTERM when its parent (torchrun's agent, i.e. ``sasg launch``) dies,
    even by SIGKILL, which gives the agent no chance to stop its workers; then leave at once if the
    parent is gone already (it died before the request was made: the worker has been handed to
    init or a subreaper). Linux only; elsewhere, or if prctl is unavailable, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    expected = os.environ.get(LAUNCHER_PID_ENV, "")
    parent = os.getppid()
    if parent == 1 or (expected.isdigit() and parent != int(expected)):
        print("sasg: error: the launcher is gone (killed?); this worker stops", file=sys.stderr)
        _hard_exit(1)


def build_parser():
    from .main import ALGO_HELP, add_training_flags
    from .parsing import OneLineParser

    p = OneLineParser(prog="sasg-worker", description="One rank of a distributed sasg run (started by torchrun); "
                      "the number of workers is the number of processes.", allow_abbrev=False)
    p.add_argument("--algo", required=True, type=str.lower, help=ALGO_HELP)
    add_training_flags(p)
    hide_workers_flag(p)
    add_worker_flags(p)
    return p


def local_problem(args, out: Path, rank: int) -> ConfigError | None:
    """This rank's share of the checks that depend on the machine: rank 0's run folder, the
    checkpoint folder (on every node; created, never removed, as ranks probe it at once)."""
    try:
        if rank == 0:
            from ..lifecycle.destination import check_separate_folders

            check_separate_folders(out, checkpoint_dir=args.checkpoint_dir, tensorboard=args.tensorboard)
            check_run_folder(out, args.overwrite)
        check_checkpoint_dir(args.checkpoint_dir, args.checkpoint_every, tidy=False)
    except ConfigError as e:
        return e
    return None


def train(args) -> int:
    """This rank's run (:class:`sasg.distributed.rank.Rank`) from the parsed flags; rank 0 prints
    the table and where the run folder went."""
    from ..distributed.rank import Rank
    from ..plugins import load_plugins
    from ..run_loop import Checkpoints
    from ..sim import retain_freed_memory
    from ..threads import use_threads
    from .config_args import check_seeds, config_from_args, resolved
    from .main import announce, make_watchers

    retain_freed_memory()  # process-wide: the worker process is a command-line entry point
    threads = use_threads(getattr(args, "threads", None))  # also process-wide, for the same reason
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args.command = "launch"
    plugins = load_plugins(args.plugin)
    if args.workers is None:
        args.workers = world
    if getattr(args, "seeds", None):
        check_seeds(args.seeds)
    config = config_from_args(args).validate()
    if config.workers != world:
        raise ConfigError(f"--workers {config.workers} but {world} processes; drop --workers: one worker per process")
    seeds = list(args.seeds) if getattr(args, "seeds", None) else [config.seed]
    check_checkpoint_flags(args, seeds)
    check_backend(args.dist_backend, config.device, int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    out = args.out or default_out(args.command)  # used by rank 0 only
    # Fail before training, not after it: rank 0's run folder, every rank's checkpoint folder.
    problem = local_problem(args, out, int(os.environ.get("RANK", "0")))
    watchers = []  # rank 0's progress lines and TensorBoard log (it alone evaluates)
    if problem is None and os.environ.get("RANK", "0") == "0":
        try:
            watchers = make_watchers(args)
        except ConfigError as e:
            problem = e
    checkpoints = None if args.checkpoint_dir is None else Checkpoints(
        Path(args.checkpoint_dir), args.checkpoint_every, args.resume)

    rank = Rank(config, seeds, checkpoints, watchers, quiet=args.quiet)
    rank.start(args.dist_backend, args.timeout, args.heartbeat_timeout, problem)
    runs = rank.train()
    if rank.rank == 0:
        settings = {**resolved(config, seeds), **threads}
        if plugins:
            settings["plugins"] = plugins
        written, summary = rank.write_run_folder(runs, out, args.overwrite, settings)
        announce(out, written, summary, args.quiet)
    rank.finish()
    return 0


def _hard_exit(code: int) -> None:
    """Leave without running the process group's destructors (they can abort or wait on a dead peer)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # first: a worker must never outlive its launcher (kill -9 on sasg launch)
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        try:
            code = train(args)
            # Leave at once: C++ destructors of the (already destroyed) process group's threads
            # can abort an otherwise finished worker at interpreter exit ("terminate called ...").
            _hard_exit(code)
        except PeerFailure as e:
            _leaving()
            print(f"sasg: error: {e}", file=sys.stderr)
            _hard_exit(1)
        except CheckpointWriteError as e:
            _leaving()
            print(f"sasg: error: rank {rank}: {e}", file=sys.stderr)
            _hard_exit(1)
        except PeerStopped:
            _hard_exit(2)  # the rank that found the problem says what it is
        except (ConfigError, FileNotFoundError, ValueError) as e:
            _leaving()
            # The same on every rank (flags, data): said once per node; Reported: by its own rank.
            if local_rank == 0 or isinstance(e, Reported):
                print(f"sasg: error: {e}", file=sys.stderr)
            _hard_exit(2)
        except KeyboardInterrupt:
            _leaving()
            print(f"sasg: rank {rank}: interrupted; no run folder written", file=sys.stderr)
            _hard_exit(130)
        except Exception:  # a bug: show it, then leave without the process group's destructors
            if _signalled is not None:  # torch turned the signal's exit into an error of its own
                raise Stopped(_signalled) from None
            _leaving()
            import traceback

            traceback.print_exc()
            print(f"sasg: error: rank {rank}: unexpected error (traceback above); no run folder written",
                  file=sys.stderr)
            _hard_exit(1)
    except Stopped as e:  # also one that lands while another error is being reported
        _leaving()
        print(f"sasg: error: rank {rank}: stopped by {e} (torchrun stops every worker when one fails); "
              "no run folder written", file=sys.stderr)
        _hard_exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
