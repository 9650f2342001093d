"""One worker's side of a round plus a replica of the server: the core, composed on one rank.

Every rank runs, each round, exactly what the simulator runs for its row of workers::

    upload_m = algorithm.decide(...)            # trigger, on this rank's own gradient
    flags    = transport.gather_flags(upload_m) # (M,) who sends — lazy triggers only
    q_m      = algorithm.upload(...)            # error memory, compression, anchor, staleness
    q        = transport.exchange(flags, q_m)   # the senders' messages, in rank order
    algorithm.aggregate(server, senders, q)     # the same replica update on every rank
    theta   -= step

so theta stays identical on all ranks without ever broadcasting it. Nothing here re-states the
maths: it only calls :class:`~sasg.core.algorithms.Algorithm` and a transport.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..accounting import CONVENTIONS, FLAG_BITS_PER_WORKER, Ledger, downlink_bits_per_round, uplink_bits_per_upload
from ..core.algorithms import Algorithm
from .wire import WireFormat


class RankStep:
    """State and round of one rank: its own worker (N = 1) and a replica of the server (M)."""

    def __init__(
        self,
        algorithm: Algorithm,
        transport,
        convention: str = "paper32",
        device=None,
        dtype=torch.float32,
    ):
        self.algorithm = algorithm
        self.transport = transport
        self.num_workers = M = transport.world_size
        self.rank = transport.rank
        d = algorithm.compressor.layout.numel
        self.workers = algorithm.init_worker_state(1, device=device, dtype=dtype)
        self.server = algorithm.init_server_state(M, device=device, dtype=dtype)
        self.wire = WireFormat.for_compressor(algorithm.compressor, device=device, dtype=dtype)
        conv = CONVENTIONS[convention]
        self.bits_per_upload = uplink_bits_per_upload(algorithm.compressor, conv)
        self.bits_down_per_round = downlink_bits_per_round(d, M, conv)
        # The flag only travels when the trigger is lazy (with "always upload" everyone knows)
        # and there is someone to tell (a single process sends nothing).
        self.bits_flags_per_round = FLAG_BITS_PER_WORKER * M if algorithm.lazy and M > 1 else 0
        self.ledger = Ledger(num_workers=M)
        self._step = torch.zeros(d, device=device, dtype=dtype)
        self._me = torch.tensor([self.rank])

    @property
    def iteration(self) -> int:
        return self.server.iteration

    def step(self, theta: Tensor, grad: Tensor, stale: Callable[[Tensor], Tensor], lr: float) -> Tensor:
        """One round. ``theta`` (d,) is updated in place; ``grad`` (d,) is this rank's gradient at
        ``theta``; ``stale(anchor)`` returns the gradient at ``anchor`` (d,) on the *same* minibatch
        (called only when the lazy rule needs it). Returns the (M,) bool flags: who sent."""
        alg, M = self.algorithm, self.num_workers
        k = self.iteration
        g = grad.reshape(1, -1)

        def stale_rows(rows: Tensor) -> Tensor:
            return stale(self.workers.anchor[0]).reshape(1, -1)

        mine = alg.decide(k, self.workers, self.server, M, lr, g, stale_rows)
        flags = self.transport.gather_flags(bool(mine[0])) if alg.lazy else torch.ones(M, dtype=torch.bool)
        q = alg.upload(self.workers, mine, g, theta, lr / M)
        senders = flags.nonzero().squeeze(1).to(self._step.device)
        payload = self.transport.exchange(flags, q, self.wire)
        alg.aggregate(self.server, senders, payload, self._step)
        theta.sub_(self._step)
        n_up = int(flags.sum())
        self.ledger.record(n_up, n_up * self.bits_per_upload, self.bits_down_per_round, self.bits_flags_per_round)
        return flags

    def state_dict(self) -> dict:
        return {
            "rank": self.rank,
            "world_size": self.num_workers,
            "algorithm": self.algorithm.name,
            "workers": self.workers.state_dict(),
            "server": self.server.state_dict(),
            "ledger": self.ledger.state_dict(),
            "transport": self.transport.counters.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.algorithm.name:
            raise ValueError(f"state is for {state['algorithm']!r}, not {self.algorithm.name!r}")
        if (state["rank"], state["world_size"]) != (self.rank, self.num_workers):
            raise ValueError(
                f"state was saved by rank {state['rank']} of {state['world_size']}, "
                f"this is rank {self.rank} of {self.num_workers}"
            )
        self.workers.load_state_dict(state["workers"])
        self.server.load_state_dict(state["server"])
        self.ledger.load_state_dict(state["ledger"])
        self.transport.counters.load(state["transport"])
