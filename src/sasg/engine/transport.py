"""The Transport protocol: how a round's flags and messages reach the server (replica).

A round engine holds ``N`` of the ``M`` workers (``local_workers``: their global ids, ascending)
and the server's state. Each round it asks its transport for two exchanges, both symmetric (every
holder makes the same calls in the same order, decided only from data all of them hold):

1. ``gather_flags(mine) -> (M,) bool``: who uploads, from every holder's ``(N,)`` answer (lazy
   triggers only: with an always-upload trigger everyone knows);
2. ``exchange(flags, mine, template, codec) -> payload``: the senders' messages in worker order,
   given this holder's uploaders' payload; ``template`` (one empty message) and ``codec`` say how
   a message looks in bytes. Skippers send nothing.

``flag_bits_per_round()`` is what the flag exchange costs on the ledger's flag line.

:class:`InProcessTransport` holds all ``M`` workers in one process (the simulator; with M = 1 the
optimizer outside ``torchrun``): nothing crosses anything. The ``torch.distributed`` transport is
:class:`sasg.distributed.TorchTransport` (one worker per rank).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..core.payloads import Payload


@dataclass
class TransportCounters:
    """Bytes this holder sent to / received from other ranks, and the rounds that used each line."""

    flag_bytes_sent: int = 0
    flag_bytes_recv: int = 0
    payload_bytes_sent: int = 0
    payload_bytes_recv: int = 0
    flag_rounds: int = 0
    payload_rounds: int = 0  # rounds in which the payload collective ran (someone uploaded)
    rounds: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def load(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, int(v))


@runtime_checkable
class Transport(Protocol):
    world_size: int
    rank: int
    device: torch.device
    counters: TransportCounters

    @property
    def local_workers(self) -> Sequence[int]:
        ...

    def flag_bits_per_round(self) -> int:
        ...

    def gather_flags(self, mine: Tensor) -> Tensor:
        ...

    def exchange(self, flags: Tensor, mine: Payload, template: Payload, codec) -> Payload:
        ...

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        ...


class InProcessTransport:
    """All ``num_workers`` workers in this process: the flags are the uploads, the payload is the
    message batch itself (no copy, no bytes)."""

    rank = 0

    def __init__(self, num_workers: int = 1, device=None):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.world_size = int(num_workers)
        self.device = torch.device("cpu" if device is None else device)
        self.counters = TransportCounters()

    @property
    def local_workers(self) -> range:
        return range(self.world_size)

    def flag_bits_per_round(self) -> int:
        return 0  # the workers share a process: no flag travels

    def gather_flags(self, mine: Tensor) -> Tensor:
        self.counters.flag_rounds += 1
        return mine

    def exchange(self, flags: Tensor, mine: Payload, template: Payload, codec) -> Payload:
        self.counters.rounds += 1
        return mine

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        return tensor
