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
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError
from ..distributed.torch_transport import PeerFailure
from ..engine import TransportCounters
from ..lifecycle.checkpoint import CheckpointWriteError, check_same_setting, load_resume_state, save_checkpoint
from .launch import (LAUNCHER_PID_ENV, add_worker_flags, check_backend, check_checkpoint_dir,
                     check_checkpoint_flags, check_run_folder, default_out, hide_workers_flag)

LOOPBACK_STATS = "/sys/class/net/lo/statistics/tx_bytes"


class Stopped(BaseException):
    """A termination signal (torchrun stops every worker when one fails)."""


class Reported(ConfigError):
    """A problem this rank found before training; this rank is the one that reports it."""


class PeerStopped(Exception):
    """Another rank found a problem before training and reports it; this rank just stops."""


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
    from .main import ALGO_HELP, OneLineParser, add_training_flags

    p = OneLineParser(prog="sasg-worker", description="One rank of a distributed sasg run (started by torchrun); "
                      "the number of workers is the number of processes.", allow_abbrev=False)
    p.add_argument("--algo", required=True, type=str.lower, help=ALGO_HELP)
    add_training_flags(p)
    hide_workers_flag(p)
    add_worker_flags(p)
    return p


def loopback_tx_bytes() -> int | None:
    """Bytes sent on ``lo`` so far, when ``SASG_MEASURE_LOOPBACK=1`` (meaningful only inside a
    private network namespace, where this run is all the traffic; see benchmarks/bandwidth.py)."""
    if os.environ.get("SASG_MEASURE_LOOPBACK") != "1":
        return None
    try:
        return int(Path(LOOPBACK_STATS).read_text())
    except OSError:
        return None


def local_problem(args, out: Path, rank: int) -> ConfigError | None:
    """This rank's share of the checks that depend on the machine: rank 0's run folder, the
    checkpoint folder (on every node; created, never removed, as ranks probe it at once)."""
    try:
        if rank == 0:
            from ..lifecycle.destination import check_separate_folders

            check_separate_folders(out, checkpoint_dir=args.checkpoint_dir, tensorboard=args.tensorboard)
            check_run_folder(out, args.overwrite)
        check_checkpoint_dir(args, tidy=False)
    except ConfigError as e:
        return e
    return None


def agree(transport, problem: ConfigError | None) -> None:
    """Stop every rank if any found a problem (a collective): the first such rank reports it."""
    failed = transport.all_gather_int(0 if problem is None else 1)
    if any(failed):
        if problem is not None and transport.rank == failed.index(1):
            raise Reported(str(problem))
        raise PeerStopped()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="it", dynamic_ncols=True, disable=None, leave=False)


def train(args) -> int:
    import torch.distributed as dist

    from ..accounting import flag_bytes, replica_payload_bytes
    from ..distributed.heartbeat import start_heartbeat
    from ..distributed.runner import DistributedRun
    from ..distributed.torch_transport import init_process_group_from_env
    from ..experiment import check_fits, load_data
    from ..lifecycle.rundir import staged_run_dir
    from ..report import write_run_folder
    from .config_args import check_seeds, config_from_args, resolved
    from .main import announce, make_watchers

    from ..plugins import load_plugins
    from ..sim import retain_freed_memory

    from ..threads import use_threads

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
    algo = config.algorithms[0]
    # Fail before training, not after it: rank 0's run folder, every rank's checkpoint folder.
    problem = local_problem(args, out, int(os.environ.get("RANK", "0")))
    watchers = []  # rank 0's progress lines and TensorBoard log (it alone evaluates)
    if problem is None and os.environ.get("RANK", "0") == "0":
        try:
            watchers = make_watchers(args)
        except ConfigError as e:
            problem = e

    transport = init_process_group_from_env(args.dist_backend, args.timeout, config.device)
    rank = transport.rank
    # A hung rank (alive, not answering) stops every rank in --heartbeat-timeout s, not --timeout.
    heartbeat = start_heartbeat(args.heartbeat_timeout, rank, transport.world_size)
    agree(transport, problem)
    data = load_data(config)
    check_fits(config, data)

    runs, records = {}, []
    for seed in seeds:
        cfg = replace(config, seed=seed)
        transport.counters = TransportCounters()  # bytes of this seed's run only
        run = DistributedRun(cfg, algo, data, transport)
        if args.resume:
            _, state = load_resume_state(args.checkpoint_dir, seed, rank, transport)  # an error if none
            check_same_setting(state["config"], cfg.to_dict())
            run.load_state_dict(state["run"])

        def checkpoint(r: DistributedRun, seed=seed, cfg=cfg) -> None:
            k = r.iteration
            if args.checkpoint_every and k % args.checkpoint_every == 0 and k < r.total_iterations:
                save_checkpoint(args.checkpoint_dir, seed, rank, k, {"config": cfg.to_dict(), "run": r.state_dict()})
            for w in watchers:
                w(r, f"seed {seed} {algo}" if len(seeds) > 1 else algo)

        bar = _progress(run.total_iterations - run.iteration, rank == 0 and not args.quiet)
        transport.barrier()
        lo_before = loopback_tx_bytes() if rank == 0 else None
        try:
            result = run.run(progress=bar.update if bar is not None else None, after_round=checkpoint)
        finally:
            if bar is not None:
                bar.close()
            for w in watchers:
                w.close()
        transport.barrier()
        lo_after = loopback_tx_bytes() if rank == 0 else None
        counters = run.transport_totals()
        totals = result.ledger.totals()
        runs[seed] = {algo: result}
        records.append({
            "seed": seed,
            "algorithm": algo,
            "iterations": totals["iterations"],
            "uploads": totals["uploads"],
            "bits_up": totals["bits_up"],
            "bits_flags": totals["bits_flags"],
            "bytes_counted": counters,
            "bytes_predicted": {
                "payload": replica_payload_bytes(totals["bits_up"], world),
                "flags": flag_bytes(counters["flag_rounds"] // world, world, 1 if run.engine.template.fixed_size(run.algorithm.codec) else 4),
            },
            "loopback_tx_bytes": None if lo_before is None or lo_after is None else lo_after - lo_before,
            "train_seconds": round(result.train_seconds, 3),
            # Each rank's peak resident memory so far (VmHWM), in rank order: a rank holds its own
            # worker and a server replica, so this should barely grow with the number of workers.
            "peak_rss_bytes": transport.all_gather_int(_peak_rss_bytes()),
        })

    if rank == 0:
        settings = {**resolved(config, seeds), **threads}
        if plugins:
            settings["plugins"] = plugins
        from ..experiment import partition_report

        settings["partition_detail"] = partition_report(config, data)
        info = {
            "world_size": world,
            "backend": dist.get_backend(),
            "device": str(transport.device),
            "design": "server replica on every rank; uploaders send to the M-1 other ranks; flags by all_to_all",
            "runs": records,
        }
        folder = staged_run_dir(out, args.overwrite, if_busy="beside")  # results in hand: never refused now
        with folder as stage:
            summary = write_run_folder(stage, runs, config, extra=settings)
            (stage / "distributed.json").write_text(json.dumps(info, indent=2) + "\n")
        announce(out, folder.path, summary, args.quiet)
    transport.barrier()
    if heartbeat is not None:
        heartbeat.stop()  # marks this rank finished: ranks that leave later never report it
    dist.destroy_process_group()
    return 0


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


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
