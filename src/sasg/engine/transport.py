"""The Transport protocol: how a round's flags and messages reach the server (replica).

A round engine holds ``N`` of the ``M`` workers (``local_workers``: their global ids, ascending)
and the server's state. Each round it hands its transport this holder's answer and messages,
``exchange(upload, sent, template, codec, lazy) -> (flags, payload, sizes)``:

* ``upload``: ``(N,)`` bool, who of the held workers uploads; ``sent``: their
  :class:`~sasg.core.payloads.Encoded` messages (bytes, sizes and the decoded payload);
* returns the ``(M,)`` flags (who sent), every sender's message in worker order (decoded by
  ``template``'s kind with ``codec``) and every sender's message size in bytes.

A real transport makes symmetric collectives (every holder the same calls in the same order,
decided only from data all of them hold): first who sends — and, when the codec's messages vary
in size, how many bytes — then the messages. Skippers send no message bytes.
``flag_bits_per_round(lazy, fixed_size)`` is what the first exchange costs on the ledger's flag
line. Optional: ``announce(upload, template, codec)``, the round's decision handed over before the
messages are made, so that a transport may start moving the flags while the holder compresses
(:meth:`sasg.distributed.TorchTransport.announce`); its ``exchange`` then takes them from there.

:class:`InProcessTransport` holds all ``M`` workers in one process (the simulator; with M = 1 the
optimizer outside ``torchrun``): nothing crosses anything. The ``torch.distributed`` transport is
:class:`sasg.distributed.TorchTransport` (one worker per rank).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..core.payloads import Encoded, Payload
from ..core.round_state import at_least, check_like


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
    # What fixed slots added to the messages and sizes (sasg.distributed.slots): the padding.
    padding_bytes_sent: int = 0
    padding_bytes_recv: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def load(self, state: dict, where: str = "transport") -> None:
        """Take saved counters: all of them, or (anything missing or not a count) none. The
        padding counters came later: a state saved without them had none."""
        if isinstance(state, Mapping):
            state = {"padding_bytes_sent": 0, "padding_bytes_recv": 0, **state}
        check_like(state, {k: at_least(0) for k in self.to_dict()}, where)
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

    def flag_bits_per_round(self, lazy: bool, fixed_size: bool) -> int:
        ...

    def exchange(self, upload: Tensor, sent: Encoded, template: Payload, codec, lazy: bool, *,
                 part=None, opens_round: bool = True) -> tuple[Tensor, Payload, list[int]]:
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

    def flag_bits_per_round(self, lazy: bool, fixed_size: bool) -> int:
        return 0  # the workers share a process: no flag travels

    def exchange(self, upload: Tensor, sent: Encoded, template: Payload, codec, lazy: bool, *,
                 part=None, opens_round: bool = True) -> tuple[Tensor, Payload, list[int]]:
        self.counters.rounds += int(opens_round)
        if lazy:
            self.counters.flag_rounds += 1
        return upload, sent.payload, sent.sizes

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        return tensor
