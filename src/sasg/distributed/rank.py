"""One rank of a distributed run, from its process group to rank 0's run folder.

``python -m sasg.cli.worker`` (what ``sasg launch`` starts under torchrun) parses its flags and
runs a :class:`Rank`: :meth:`~Rank.start` joins the process group, starts the heartbeat and makes
every rank agree on whether one found a problem before training; :meth:`~Rank.train` runs the
seeds through the one run loop (:class:`RankLoop`, a :class:`sasg.run_loop.RunLoop` with this
rank's checkpoints and collectives); rank 0 writes the run folder
(:meth:`~Rank.write_run_folder`: the same files as ``sasg run``, plus ``distributed.json`` with
each seed's counted and predicted bytes); :meth:`~Rank.finish` leaves the process group.

Every rank trains; rank 0 alone evaluates (:class:`~sasg.distributed.DistributedRun`) and writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..data import DataSplit
from ..engine import TransportCounters
from ..lifecycle.checkpoint import load_resume_state
from ..run_loop import Checkpoints, RunLoop
from ..sim import RunResult
from .runner import DistributedRun

LOOPBACK_STATS = "/sys/class/net/lo/statistics/tx_bytes"


class Reported(ConfigError):
    """A problem this rank found before training; this rank is the one that reports it."""


class PeerStopped(Exception):
    """Another rank found a problem before training and reports it; this rank just stops."""


def agree(transport, problem: ConfigError | None) -> None:
    """Stop every rank if any found a problem (a collective): the first such rank reports it."""
    failed = transport.all_gather_int(0 if problem is None else 1)
    if any(failed):
        if problem is not None and transport.rank == failed.index(1):
            raise Reported(str(problem))
        raise PeerStopped()


class RankLoop(RunLoop):
    """The run loop on one rank: ``algorithm`` over ``configs`` (one per seed) with this rank's
    worker. Its checkpoints are this rank's (``seed<S>-rank<R>-iter<K>.pt``), resumed at the
    newest iteration every rank holds (a collective); a failure is not contained (it stops every
    rank); each seed's run is fenced by barriers, and leaves a record of its counted and
    predicted bytes in :attr:`records` (for ``distributed.json``)."""

    contained = ()

    def __init__(self, configs: list[RunConfig], algorithm: str, data: DataSplit, transport,
                 checkpoints: Checkpoints | None = None, watchers=(), bar: bool = False):
        super().__init__(configs, (algorithm,), data, checkpoints, watchers)
        self.transport, self.rank, self.bar = transport, transport.rank, bar
        self.records: list[dict] = []

    def who(self, name: str):
        return self.rank

    def build(self, cfg: RunConfig, name: str) -> DistributedRun:
        self.transport.counters = TransportCounters()  # bytes of this seed's run only
        return DistributedRun(cfg, name, self.data, self.transport)

    def finished(self, cfg, name, setting) -> None:
        return None  # a rank keeps no finished result: its run folder is the result

    def resume_state(self, cfg: RunConfig, name: str) -> dict:
        return load_resume_state(self.checkpoints.folder, cfg.seed, self.rank, self.transport)[1]  # an error if none

    def keep(self, cfg, name, setting, result) -> None:
        pass

    def train(self, run: DistributedRun, after_round) -> RunResult:
        bar = _progress(run.total_iterations - run.iteration) if self.bar else None
        self.transport.barrier()
        lo_before = loopback_tx_bytes() if self.rank == 0 else None
        try:
            result = run.run(progress=bar.update if bar is not None else None, after_round=after_round)
        finally:
            if bar is not None:
                bar.close()
        self.transport.barrier()
        lo_after = loopback_tx_bytes() if self.rank == 0 else None
        loopback = None if lo_before is None or lo_after is None else lo_after - lo_before
        self.records.append(self.record(run, result, loopback))
        return result

    def record(self, run: DistributedRun, result: RunResult, loopback: int | None) -> dict:
        """One seed's entry of ``distributed.json`` (collectives: every rank makes it)."""
        from ..accounting import flag_bytes, replica_payload_bytes

        world = self.transport.world_size
        counters = run.transport_totals()
        totals = result.ledger.totals()
        return {
            "seed": run.config.seed,
            "algorithm": self.algorithms[0],
            "iterations": totals["iterations"],
            "uploads": totals["uploads"],
            "bits_up": totals["bits_up"],
            "bits_flags": totals["bits_flags"],
            "bytes_counted": counters,
            "bytes_predicted": {
                "payload": replica_payload_bytes(totals["bits_up"], world),
                "flags": flag_bytes(counters["flag_rounds"] // world, world, run.flag_entry_bytes()),
            },
            "loopback_tx_bytes": loopback,
            "train_seconds": round(result.train_seconds, 3),
            # Each rank's peak resident memory so far (VmHWM), in rank order: a rank holds its own
            # worker and a server replica, so this should barely grow with the number of workers.
            "peak_rss_bytes": self.transport.all_gather_int(_peak_rss_bytes()),
        }


class Rank:
    """This process's rank of ``config.workers``: ``config.algorithms[0]`` over ``seeds``."""

    def __init__(self, config: RunConfig, seeds: list[int], checkpoints: Checkpoints | None = None,
                 watchers=(), quiet: bool = False):
        self.config, self.seeds, self.checkpoints = config, list(seeds), checkpoints
        self.watchers, self.quiet = list(watchers), quiet
        self.transport = self.heartbeat = self.data = None
        self.records: list[dict] = []

    @property
    def rank(self) -> int:
        return self.transport.rank

    def start(self, backend: str, timeout: float, heartbeat_timeout: float, problem: ConfigError | None) -> None:
        """Join the process group; stop every rank if any found ``problem`` before training (a
        collective: :class:`Reported` on the rank that reports it, :class:`PeerStopped` on the
        others); load the data."""
        from ..experiment import check_fits, load_data
        from .heartbeat import start_heartbeat
        from .torch_transport import init_process_group_from_env

        self.transport = init_process_group_from_env(backend, timeout, self.config.device)
        # A hung rank (alive, not answering) stops every rank in --heartbeat-timeout s, not --timeout.
        self.heartbeat = start_heartbeat(heartbeat_timeout, self.rank, self.transport.world_size)
        agree(self.transport, problem)
        self.data = load_data(self.config)
        check_fits(self.config, self.data)

    def train(self) -> dict[int, dict[str, RunResult]]:
        """``{seed: {algorithm: RunResult}}``; rank 0 shows a progress bar unless quiet."""
        from dataclasses import replace

        configs = [replace(self.config, seed=s) for s in self.seeds]
        loop = RankLoop(configs, self.config.algorithms[0], self.data, self.transport, self.checkpoints,
                        self.watchers, bar=self.rank == 0 and not self.quiet)
        runs = loop.run()
        self.records = loop.records
        return runs

    def write_run_folder(self, runs, out: Path, overwrite: bool, settings: dict) -> tuple[Path, dict]:
        """Rank 0: the run folder, staged and moved into place whole (beside ``out`` if another
        run filled it meanwhile): where it went, and the summary."""
        import torch.distributed as dist

        from ..experiment import partition_report
        from ..lifecycle.rundir import staged_run_dir
        from ..report import write_run_folder

        settings = {**settings, "partition_detail": partition_report(self.config, self.data)}
        info = {
            "world_size": self.transport.world_size,
            "backend": dist.get_backend(),
            "device": str(self.transport.device),
            "design": "server replica on every rank; uploaders send to the M-1 other ranks; flags by all_to_all",
            "runs": self.records,
        }
        folder = staged_run_dir(out, overwrite, if_busy="beside")  # results in hand: never refused now
        with folder as stage:
            summary = write_run_folder(stage, runs, self.config, extra=settings)
            (stage / "distributed.json").write_text(json.dumps(info, indent=2) + "\n")
        return folder.path, summary

    def finish(self) -> None:
        """Leave together: a barrier, the heartbeat marked finished, the process group destroyed."""
        import torch.distributed as dist

        self.transport.barrier()
        if self.heartbeat is not None:
            self.heartbeat.stop()  # marks this rank finished: ranks that leave later never report it
        dist.destroy_process_group()


def loopback_tx_bytes() -> int | None:
    """Bytes sent on ``lo`` so far, when ``SASG_MEASURE_LOOPBACK=1`` (meaningful only inside a
    private network namespace, where this run is all the traffic; see benchmarks/bandwidth.py)."""
    if os.environ.get("SASG_MEASURE_LOOPBACK") != "1":
        return None
    try:
        return int(Path(LOOPBACK_STATS).read_text())
    except OSError:
        return None


def _progress(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="it", dynamic_ncols=True, disable=None, leave=False)


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
