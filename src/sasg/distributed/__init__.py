"""Real distributed training on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

- :class:`RankStep` — one rank's round: its own worker + a replica of the server, composed from
  the algorithm core (the same calls as the simulator) and a transport;
- :class:`TorchTransport` / :class:`LocalTransport` — the flag ``all_gather`` and the payload
  ``all_to_all`` with uneven splits (skippers send no payload), with byte counters;
- :class:`DistributedRun` — the simulator's setting run by one rank (``sasg launch``);
- ``python -m sasg.distributed.worker`` — the torchrun entry point; ``sasg launch`` starts it.

See ``docs/distributed.md``.
"""

from .rank import RankStep
from .transport import (
    LocalTransport,
    PeerFailure,
    TorchTransport,
    TransportCounters,
    init_process_group_from_env,
)
from .wire import WireFormat


def __getattr__(name):  # the runner pulls in the simulator: import it on first use
    if name == "DistributedRun":
        from .runner import DistributedRun

        return DistributedRun
    raise AttributeError(name)


__all__ = [
    "DistributedRun",
    "LocalTransport",
    "PeerFailure",
    "RankStep",
    "TorchTransport",
    "TransportCounters",
    "WireFormat",
    "init_process_group_from_env",
]
