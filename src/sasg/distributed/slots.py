"""Fixed slots: one collective call a round for messages whose size varies, where everyone sends.

With a rule that always sends (``always``), every rank knows who sends but not how many bytes: a
Golomb–Rice message's size depends on its indices. The plain exchange asks first (an int32 from
every rank to every rank), then moves the messages: two latency-bound calls a round. Where ranks
share cores a call costs more in waiting than in bytes (4 ranks on 2 cores: 2–3 ms a call for a
few kB; docs/distributed.md).

So every rank sends a *slot* of ``S`` bytes that all ranks know in advance: its message's size
(an int32 — the 4 bytes the size exchange would carry) and as much of the message as fits, zero
padded. ``S`` is the largest message of the latest round of that kind plus a margin (1/32, at least
64 bytes; messages of one run vary by a few per cent), so a slot seldom overflows. When one does,
every rank reads it in the slots' sizes and one more call moves the rest (the tails), with splits
every rank computes alike. The first round of a kind of message (and the first after a restart)
has no latest round: it exchanges sizes, as before, and learns ``S``.

The messages decoded are the plain exchange's, byte for byte; the ledger is unchanged (it counts
messages and sizes, which still travel); what the slots add is counted apart
(``TransportCounters.padding_bytes_sent``). A lazy rule keeps the size exchange: a skipper sends
nothing at all, not an empty slot.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.codecs import CodecError

PREFIX = 4  # the message's size, int32 little-endian, at the head of its slot
MIN_MARGIN = 64  # bytes of room over the latest round's largest message ...
MARGIN_SHARE = 32  # ... or 1/32 of it, whichever is more
ALIGN = 64


def slot_for(largest: int) -> int:
    """The slot that holds a message of ``largest`` bytes, its size and the margin."""
    room = largest + PREFIX + max(MIN_MARGIN, largest // MARGIN_SHARE)
    return -(-room // ALIGN) * ALIGN


class SlotBook:
    """The slot of every kind of message seen so far (``key``: anything every rank derives alike
    from the message's template and codec)."""

    def __init__(self):
        self._slots: dict[Hashable, int] = {}

    def get(self, key: Hashable) -> int | None:
        return self._slots.get(key)

    def learn(self, key: Hashable, sizes: Sequence[int]) -> None:
        """After a round of ``key``: the next round's slot, from its messages' sizes (the same on
        every rank)."""
        self._slots[key] = slot_for(max(sizes))


def pack(message: Tensor, slot: int) -> tuple[Tensor, Tensor]:
    """``message`` (uint8) as its slot (size, then as much as fits, zero padded) and its tail."""
    size = message.numel()
    fits = min(size, slot - PREFIX)
    # Through numpy: a slot is a few kB, where the fixed cost of each torch call would be most of
    # the work (a message on a GPU makes the trip to host memory and back: a few kB, once a round).
    out = np.zeros(slot, np.uint8)
    out[:PREFIX] = np.array([size], dtype="<i4").view(np.uint8)
    out[PREFIX:PREFIX + fits] = message[:fits].cpu().numpy()
    return torch.from_numpy(out).to(message.device), message[fits:]


def read_sizes(slots: Tensor, count: int, slot: int, ranks: Sequence[int]) -> list[int]:
    """The sizes at the head of ``count`` slots back to back; a negative one (a corrupted slot)
    is a :class:`CodecError` naming the rank it came from."""
    heads = slots.view(count, slot)[:, :PREFIX].cpu().numpy()
    sizes = np.ascontiguousarray(heads).view("<i4").reshape(-1).tolist()
    for rank, size in zip(ranks, sizes):
        if size < 0:
            raise CodecError(f"the slot of rank {rank} claims a message of {size} bytes")
    return sizes


def unpack(slots: Tensor, sizes: Sequence[int], slot: int, tails: Tensor) -> Tensor:
    """Every message back to back: the part in its slot, then its tail (``tails``: the tails of
    the messages that overflowed, back to back, in the same order)."""
    parts, at = [], 0
    for i, size in enumerate(sizes):
        fits = min(size, slot - PREFIX)
        parts.append(slots[i * slot + PREFIX: i * slot + PREFIX + fits])
        if size > fits:
            parts.append(tails[at: at + size - fits])
            at += size - fits
    if not parts:
        return slots.new_empty(0)
    if slots.device.type == "cpu":
        return torch.from_numpy(np.concatenate([t.numpy() for t in parts]))
    return torch.cat(parts)


def tails_of(sizes: Sequence[int], slot: int) -> list[int]:
    """Per message, the bytes that did not fit in its slot."""
    return [max(0, n - (slot - PREFIX)) for n in sizes]


def padding_of(size: int, slot: int) -> int:
    """The bytes of padding in the slot of a message of ``size`` bytes."""
    return max(0, slot - PREFIX - size)


__all__ = ["PREFIX", "SlotBook", "pack", "padding_of", "read_sizes", "slot_for", "tails_of", "unpack"]
