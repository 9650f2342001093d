"""A payload as it is sent: the bytes a codec produced and the messages they decode to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .protocol import Payload


@dataclass
class Encoded:
    """``payload``: the messages the server applies, i.e. ``decoded(q)`` (``q`` itself when the
    codec is lossless); ``data``: the messages' bytes back to back; ``sizes``: each one's length."""

    payload: Payload
    data: Tensor
    sizes: list[int]

    @property
    def bits(self) -> int:
        return 8 * sum(self.sizes)


def transmit(q: Payload, codec) -> Encoded:
    """Encode ``q`` with ``codec``; a lossy codec's (or a non-float32 value's) messages are
    decoded again, so that the sender applies, and error feedback subtracts, exactly what every
    receiver will decode."""
    if codec.lossless and q.values.dtype is torch.float32:
        data, sizes = q.encode(codec)
        return Encoded(q, data, sizes if type(sizes) is list else list(sizes))
    sent_as = getattr(q, "encode_sent", None)  # a payload that knows its decoded form more cheaply
    if sent_as is not None:
        data, sizes, decoded = sent_as(codec)
    else:
        data, sizes = q.encode(codec)
        decoded = q.decode(codec, data, sizes)
    return Encoded(decoded, data, sizes if type(sizes) is list else list(sizes))
