r"""The Payload protocol: a batch of messages as they cross the network.

A payload holds ``N`` messages (one per uploading worker) for a flat buffer of length ``d``; all
messages of one payload have the same shape. The server keeps the last payload of every worker,
so a skipper's last message :math:`q_m` is reused in

.. math:: \theta^{k+1} = \theta^k - \sum_m q_m .

A payload knows its own kind: it sums itself, subtracts itself from rows (error feedback keeps
:math:`v - q`), encodes itself through a :class:`~sasg.core.codecs.Codec`, and decodes bytes
into a payload of its own kind and shape (any payload of that shape, e.g. a compressor's one-row
``empty``, serves as the template a receiver decodes with). Nothing outside a payload class
looks at its concrete type.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor


@runtime_checkable
class Payload(Protocol):
    @property
    def num_messages(self) -> int:
        """N, the number of messages."""

    @property
    def values(self) -> Tensor:
        """The ``(N, ...)`` values it carries (their dtype and device are the payload's)."""

    def to_dense(self) -> Tensor:
        """``(N, d)``: every message as a dense row."""

    def sum(self, out: Tensor) -> Tensor:
        """Write :math:`\\sum_i q_i` into ``out`` (shape ``(d,)``) and return it."""

    def assign(self, rows: Tensor, other: "Payload") -> None:
        """Store ``other``'s messages (one per entry of ``rows``) as the messages of ``rows``."""

    def subtract_from_(self, target: Tensor, rows: Sequence[int]) -> None:
        """``target[rows[i]] -= q_i`` in place (``target`` is ``(n, d)``)."""

    def codec_name(self, codec) -> str:
        """What ``codec`` is called for messages of this kind (a sparse codec ``rice+sign`` sends a
        dense message's values as ``sign``)."""

    def fixed_size(self, codec) -> bool:
        """Every message of this kind and shape has one size under ``codec`` (no sizes travel)."""

    def encode(self, codec) -> tuple[Tensor, list[int]]:
        """The N messages as bytes: (uint8 1-D, back to back; each message's size in bytes)."""

    def decode(self, codec, data: Tensor, sizes: Sequence[int]) -> "Payload":
        """Messages of this payload's kind and shape (K per message, dtype) from ``data``."""

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        """Copy saved messages into this payload's buffers (its dtype and device); a saved payload
        of another kind or shape is a ``ValueError``."""
