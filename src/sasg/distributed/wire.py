"""The bytes one message occupies on the wire, and back.

A message is packed into one flat ``uint8`` buffer of a size every rank knows in advance (it
depends only on the compressor), so a receiver needs no header:

* dense  (:class:`~sasg.core.payload.DensePayload`):  the ``d`` values, as stored (float32: 4 B);
* sparse (:class:`~sasg.core.payload.SparsePayload`): the ``K`` indices as int32 (int64 when
  ``d >= 2**31``), then the ``K`` values.

For float32 parameters under the ``paper32`` convention (32 bits per value, 32 per index) this is
*exactly* the bit count of the accounting: ``8 * message_bytes == uplink_bits_per_upload``; other
dtypes send their own width per value. Packing is a pure
reinterpretation of bits, so ``decode(encode(q))`` is ``q`` bit for bit on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.payload import DensePayload, Payload, SparsePayload


def _as_bytes(t: Tensor) -> Tensor:
    """(N, n) tensor -> (N, n * itemsize) uint8 view/copy of the same bits."""
    return t.contiguous().view(torch.uint8)


def _from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, n * itemsize) uint8 -> (N, n) of ``dtype``, the same bits.

    A view where the bytes are aligned for ``dtype``, else a copy: a part of a received buffer
    starts wherever the message before it ended (e.g. the values after K int32 indices, or a
    rank's message inside the concatenated receive buffer), and a view of a wider type needs an
    aligned start and row stride."""
    size = torch.empty((), dtype=dtype).element_size()
    aligned = b.storage_offset() % size == 0 and all(s % size == 0 for s in b.stride()[:-1])
    if not (aligned and b.is_contiguous()):
        b = b.clone(memory_format=torch.contiguous_format)  # fresh storage: aligned
    return b.view(dtype)


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
            indices = _from_bytes(buf[:, :split], self.index_dtype).to(torch.long)
            values = _from_bytes(buf[:, split:], self.dtype)
            return SparsePayload(indices, values, self.numel)
        return DensePayload(_from_bytes(buf, self.dtype))
