"""Real distributed training on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

- :class:`TorchTransport` — the flag (or size) exchange and the payload ``all_to_all`` with
  uneven splits (skippers send no payload; relayed across nodes), with byte counters: the transport the round engine
  (:class:`sasg.engine.RoundEngine`) runs over on a rank, holding its own worker and a replica
  of the server;
- :class:`DistributedRun` — the simulator's setting run by one rank;
- :mod:`sasg.distributed.rank` — a rank's whole run: process group, heartbeat, the run loop
  (:mod:`sasg.run_loop`) over seeds with this rank's checkpoints, rank 0's run folder;
- :mod:`sasg.distributed.launcher` — the checks made before any worker starts, and torchrun.

A rank's checkpoints are written and read by :mod:`sasg.lifecycle.checkpoint` (which ``sasg run``
and ``sasg compare`` use too).

The command line on top of this library lives in :mod:`sasg.cli`: ``sasg launch``
(:mod:`sasg.cli.launch`) has the launcher start ``python -m sasg.cli.worker``
(:mod:`sasg.cli.worker`, the torchrun entry point) on every process. This package never imports
:mod:`sasg.cli`.

See ``docs/distributed.md``.
"""

from .torch_transport import PeerFailure, TorchTransport, init_process_group_from_env


def __getattr__(name):  # the runner pulls in the simulator: import it on first use
    if name == "DistributedRun":
        from .runner import DistributedRun

        return DistributedRun
    raise AttributeError(name)


__all__ = ["DistributedRun", "PeerFailure", "TorchTransport", "init_process_group_from_env"]
