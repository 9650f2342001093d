r"""The Payload protocol: a batch of messages as they cross the network.

A payload holds ``N`` messages (one per uploading worker) for a flat buffer of length ``d``; all
messages of one payload have the same shape. The server keeps the last payload of every worker,
so a skipper's last message :math:`q_m` is reused in

.. math:: \theta^{k+1} = \theta^k - \sum_m q_m .

A payload knows its own kind: it sums itself, subtracts itself from rows (error feedback keeps
:math:`v - q`), sizes and encodes itself through a :class:`~sasg.core.codecs.Codec`, and decodes
a buffer into a payload of its own shape (a one-message ``empty`` payload serves as the template
a receiver decodes with). Nothing outside a payload class looks at its concrete type.
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

    def message_bits(self, codec) -> int:
        """Bits of ONE message of this shape under ``codec`` (the ledger's price)."""

    def message_bytes(self, codec) -> int:
        """Bytes of ONE message as ``codec`` puts it on the wire."""

    def encode(self, codec) -> Tensor:
        """``(N, message_bytes)`` uint8: one row per message."""

    def decode(self, codec, buf: Tensor) -> "Payload":
        """Messages of this payload's shape from ``buf`` (``(N, message_bytes)`` or flat)."""

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        """Copy saved messages into this payload's buffers (its dtype and device); a saved payload
        of another kind or shape is a ``ValueError``."""
