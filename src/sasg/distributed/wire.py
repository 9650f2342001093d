"""The bytes one message occupies on the wire, and back.

A message is packed into one flat ``uint8`` buffer of a size every rank knows in advance (it
depends only on the compressor), so a receiver needs no header:

* dense  (:class:`~sasg.core.payload.DensePayload`):  the ``d`` values, as stored (float32: 4 B);
* sparse (:class:`~sasg.core.payload.SparsePayload`): the ``K`` indices as int32 (int64 when
  ``d >= 2**31``), then the ``K`` values.

Under the ``paper32`` convention (32 bits per value, 32 per index) this is *exactly* the bit count
of the accounting: ``8 * message_bytes == uplink_bits_per_upload``. Packing is a pure
reinterpretation of bits, so ``decode(encode(q))`` is ``q`` bit for bit on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.payload import DensePayload, Payload, SparsePayload


def _as_bytes(t: Tensor) -> Tensor:
    """(N, n) tensor -> (N, n * itemsize) uint8 view/copy of the same bits."""
    return t.contiguous().view(torch.uint8)


class WireFormat:
    """Fixed-size byte layout of one message of a given compressor's payload shape."""

    def __init__(self, template: Payload):
        self.kind = "sparse" if isinstance(template, SparsePayload) else "dense"
        self.dtype = template.values.dtype
        self.value_bytes = torch.empty((), dtype=self.dtype).element_size()
        if self.kind == "sparse":
            self.numel = template.numel
            self.nnz = template.nnz_per_message
            self.index_dtype = torch.int32 if self.numel < 2**31 else torch.int64
            self.index_bytes = torch.empty((), dtype=self.index_dtype).element_size()
            self.message_bytes = self.nnz * (self.index_bytes + self.value_bytes)
        else:
            self.numel = template.nnz_per_message
            self.nnz = self.numel
            self.message_bytes = self.numel * self.value_bytes

    @classmethod
    def for_compressor(cls, compressor, device=None, dtype=torch.float32) -> "WireFormat":
        return cls(compressor.empty(1, device=device, dtype=dtype))

    def encode(self, payload: Payload) -> Tensor:
        """``(N, message_bytes)`` uint8: the N messages of ``payload``, one row each."""
        if self.kind == "sparse":
            idx = _as_bytes(payload.indices.to(self.index_dtype))
            return torch.cat([idx, _as_bytes(payload.values)], dim=1)
        return _as_bytes(payload.values)

    def decode(self, buf: Tensor) -> Payload:
        """Inverse of :meth:`encode`; ``buf`` is ``(N, message_bytes)`` (or flat, N*message_bytes)."""
        buf = buf.reshape(-1, self.message_bytes)
        if self.kind == "sparse":
            split = self.nnz * self.index_bytes
            indices = buf[:, :split].contiguous().view(self.index_dtype).to(torch.long)
            values = buf[:, split:].contiguous().view(self.dtype)
            return SparsePayload(indices, values, self.numel)
        return DensePayload(buf.contiguous().view(self.dtype))
