"""``paper32``: the SASG paper's count, and the fixed-size bytes behind it.

Price (the ledger): 32 bits per value of a dense message; 32 bits per value plus 32 per index of
a sparse one.

Bytes (what a real runner sends): a sparse message is its ``K`` indices as int32 (int64 when
``d >= 2**31``), then its ``K`` values in the parameters' dtype; a dense message is its ``d``
values. For float32 parameters ``8 * bytes == bits`` exactly; other dtypes send their own width
per value (the price stays the paper's). Packing is a pure reinterpretation of bits, so
``decode(encode(q))`` is ``q`` bit for bit on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

VALUE_BITS = 32
INDEX_BITS = 32


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def _as_bytes(t: Tensor) -> Tensor:
    """(N, n) tensor -> (N, n * itemsize) uint8 view/copy of the same bits."""
    return t.contiguous().view(torch.uint8)


def _from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, n * itemsize) uint8 -> (N, n) of ``dtype``, the same bits.

    A view where the bytes are aligned for ``dtype``, else a copy: a part of a received buffer
    starts wherever the message before it ended (e.g. the values after K int32 indices, or a
    rank's message inside the concatenated receive buffer), and a view of a wider type needs an
    aligned start and row stride."""
    size = _itemsize(dtype)
    aligned = b.storage_offset() % size == 0 and all(s % size == 0 for s in b.stride()[:-1])
    if not (aligned and b.is_contiguous()):
        b = b.clone(memory_format=torch.contiguous_format)  # fresh storage: aligned
    return b.view(dtype)


class Paper32:
    name = "paper32"

    def dense_bits(self, numel: int) -> int:
        return VALUE_BITS * int(numel)

    def sparse_bits(self, nnz: int, numel: int) -> int:
        return (VALUE_BITS + INDEX_BITS) * int(nnz)

    def dense_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return int(numel) * _itemsize(dtype)

    def sparse_bytes(self, nnz: int, numel: int, dtype: torch.dtype) -> int:
        return int(nnz) * (_itemsize(_index_dtype(numel)) + _itemsize(dtype))

    def encode_dense(self, values: Tensor) -> Tensor:
        return _as_bytes(values)

    def decode_dense(self, buf: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
        return _from_bytes(buf.reshape(-1, self.dense_bytes(numel, dtype)), dtype)

    def encode_sparse(self, indices: Tensor, values: Tensor, numel: int) -> Tensor:
        return torch.cat([_as_bytes(indices.to(_index_dtype(numel))), _as_bytes(values)], dim=1)

    def decode_sparse(self, buf: Tensor, nnz: int, numel: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        buf = buf.reshape(-1, self.sparse_bytes(nnz, numel, dtype))
        index_dtype = _index_dtype(numel)
        split = nnz * _itemsize(index_dtype)
        return _from_bytes(buf[:, :split], index_dtype).to(torch.long), _from_bytes(buf[:, split:], dtype)

    def describe(self) -> dict:
        return {"codec": self.name}
