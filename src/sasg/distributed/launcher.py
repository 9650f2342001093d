"""Starting a distributed run: the checks made before any worker starts, and torchrun itself.

``sasg launch`` (:mod:`sasg.cli.launch`) parses its flags and then calls :func:`run_workers`,
which starts the worker module on every process through torchrun's own launcher
(``torch.distributed.run``): ``--standalone`` on one node, static rendezvous
(``--master-addr/--master-port/--node-rank``) across nodes. When a worker dies, torchrun stops
the others and :func:`run_workers` raises :class:`LaunchFailed` with the line to report. When the
launcher itself dies (even by ``kill -9``), every worker gets SIGTERM from the kernel (Linux's
parent-death signal, asked for by the worker) and stops.

The checks (:func:`check_backend`, :func:`check_run_folder`, :func:`check_checkpoint_dir`) run
in the launcher and again in every rank (:mod:`sasg.distributed.rank`), for runs started with
torchrun directly.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..config import ConfigError
from ..safe_files import os_reason
from ..safe_files import probe_folder as _probe_folder

# Set for the workers to the pid of `sasg launch`, their parent (torchrun's agent runs in it), so
# that a worker started after its launcher died notices and stops (see cli.worker.die_with_parent).
LAUNCHER_PID_ENV = "SASG_LAUNCHER_PID"

# Seconds a worker gets between SIGTERM and SIGKILL when the run stops (a stopped or hung one
# ignores SIGTERM).
SHUTDOWN_GRACE_S = 5

# Seconds node 0's agent waits, after torchrun's exit barrier, for the other nodes' agents to leave it.
EXIT_BARRIER_GRACE_S = 10.0
_CHECKED_OUT_KEY = "sasg/launch/checked-out"


class LaunchFailed(Exception):
    """The distributed run did not finish: ``str(e)`` is the line to report, ``code`` the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


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


def check_checkpoint_dir(folder: Path | None, every: int, tidy: bool = True) -> None:
    """``--checkpoint-dir`` is a folder (or can be one) that checkpoints can be written to (the
    writing probed only when checkpoints are written, ``every`` > 0)."""
    if folder is None:
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--checkpoint-dir {folder} is a file, not a folder; choose another --checkpoint-dir")
    if every:
        try:
            _probe_folder(folder.resolve(), tidy)
        except OSError as e:
            raise ConfigError(
                f"cannot write checkpoints to {folder}: {os_reason(e)}; choose another --checkpoint-dir"
            ) from None


# ----- torchrun ---------------------------------------------------------------------------------
def torchrun_args(module: str, worker_args: list[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                  master_addr: str | None = None, master_port: int = 29500) -> list[str]:
    """torchrun's command line for ``python -m module worker_args`` on every process of this node."""
    # Stop the other workers within 0.1 s of a failure; SIGKILL what ignores SIGTERM after 5 s.
    targs = ["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes), "--monitor-interval", "0.1",
             "--shutdown-timeout", str(SHUTDOWN_GRACE_S)]
    if nnodes == 1 and not master_addr:
        targs += ["--standalone"]
    else:
        targs += ["--rdzv-backend", "static", "--master-addr", master_addr or "127.0.0.1",
                  "--master-port", str(master_port), "--node-rank", str(node_rank)]
    return [*targs, "-m", module, *worker_args]


def run_workers(targs: list[str], threads: int, nnodes: int = 1) -> None:
    """Run torchrun with ``targs`` (:func:`torchrun_args`) in this process, each worker on
    ``threads`` intra-op threads; :class:`LaunchFailed` if the run did not finish."""
    # One intra-op thread per worker by default, as torchrun would choose: ranks share the cores,
    # and it is also what makes a rank's gradients bit-identical to the simulator's (see
    # docs/distributed.md). --threads, $SASG_THREADS or $OMP_NUM_THREADS override it (sasg.threads).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _quiet_torchrun_logs()

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The workers' parent: each asks for SIGTERM when it dies and checks it is still there (see
    # cli.worker.die_with_parent). Set for the run only, so it never reaches other processes.
    before = os.environ.get(LAUNCHER_PID_ENV)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    try:
        with _grace_before_sigkill(SHUTDOWN_GRACE_S), \
                (_store_outlives_exit_barrier() if nnodes > 1 else nullcontext()):
            run(parse_args(targs))
    except ChildFailedError as e:
        raise LaunchFailed(_failure_line(e), 1) from None
    except SignalException as e:
        sig = getattr(e, "sigval", None)
        name = getattr(sig, "name", "a signal")
        raise LaunchFailed(f"stopped by {name}; the workers were stopped; no run folder written",
                           130 if name == "SIGINT" else 1) from None
    finally:
        if before is None:
            os.environ.pop(LAUNCHER_PID_ENV, None)
        else:
            os.environ[LAUNCHER_PID_ENV] = before


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


@contextmanager
def _store_outlives_exit_barrier(seconds: float = EXIT_BARRIER_GRACE_S):
    """Multi-node: when its workers succeed, each node's agent waits in torchrun's exit barrier,
    on the store that node 0's agent hosts. The last agent to arrive sets the barrier's key and
    then waits on it; node 0 may see the key, return and close the store first, and that agent
    then logs "Error waiting on exit barrier" with a traceback (and a C++ stack from the store)
    although the run succeeded (pytorch/pytorch#69520; seen across two network namespaces). For
    this run only: after the barrier every agent checks out, and node 0's waits until all have
    (at most ``seconds``) before it leaves and takes the store with it."""
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
