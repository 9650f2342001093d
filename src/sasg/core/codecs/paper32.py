"""``paper32``: the SASG paper's count, as real bytes.

A sparse message is its ``K`` indices as int32 (int64 when ``d >= 2**31``), then its ``K`` values;
a dense message is its ``d`` values. Values travel in the parameters' dtype: for float32
parameters that is exactly the paper's 32 bits per value plus 32 per index (64 bits per kept
entry, 32 per dense entry); a float64 model's optimizer sends 8 bytes per value, and the ledger
counts them. Every message of one shape has one size (no header), and packing is a pure
reinterpretation of bits, so ``decode(encode(q))`` is ``q`` bit for bit on every rank.

Built with a tensor policy that sends some tensors whole, it writes no index for their entries
(:mod:`.implied`): ``K - count`` indices, then all ``K`` values.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .implied import ImpliedIndices
from .protocol import CodecError, check_messages


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
    name = dense_name = "paper32"
    lossless = True
    fixed_size = True
    dense_fixed_size = True

    def __init__(self, numel: int, implied: ImpliedIndices | None = None):
        self.numel = int(numel)
        self.implied = implied
        self._implied = implied.count if implied is not None else 0

    def _rows(self, data: Tensor, sizes: Sequence[int], size: int) -> Tensor:
        sizes = check_messages(self.name, data, sizes)  # 1-D uint8 bytes, exactly covered by sizes
        n = len(sizes)
        if any(s != size for s in sizes) or data.numel() != n * size:
            raise CodecError(
                f"paper32: {n} message(s) of {data.numel()} bytes in all (sizes {list(sizes)[:4]}...), "
                f"expected {size} bytes each"
            )
        return data.reshape(n, size)

    def encode_sparse(self, indices: Tensor, values: Tensor) -> tuple[Tensor, list[int]]:
        if self.implied is not None:
            indices = self.implied.split(indices.to(torch.long), self.name)
        rows = torch.cat([_as_bytes(indices.to(_index_dtype(self.numel))), _as_bytes(values)], dim=1)
        return rows.reshape(-1), [rows.shape[1]] * rows.shape[0]

    def decode_sparse(self, data: Tensor, sizes: Sequence[int], nnz: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        index_dtype = _index_dtype(self.numel)
        if nnz < self._implied:
            raise ValueError(f"paper32: nnz {nnz} is below the {self._implied} entries of the tensors sent whole")
        split = (nnz - self._implied) * _itemsize(index_dtype)
        rows = self._rows(data, sizes, split + nnz * _itemsize(dtype))
        indices = _from_bytes(rows[:, :split], index_dtype).to(torch.long)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.numel):
            raise CodecError(f"paper32: an index is outside 0..{self.numel - 1}: corrupted message")
        if self.implied is not None:
            indices = self.implied.merge(indices)
        return indices, _from_bytes(rows[:, split:], dtype)

    def sparse_nnz(self, data: Tensor, sizes: Sequence[int], dtype: torch.dtype) -> list[int]:
        """How many entries each sparse message holds, from its size alone (for messages of
        varying length: every entry costs one index and one value, nothing else travels)."""
        per = _itemsize(_index_dtype(self.numel)) + _itemsize(dtype)
        # entries whose index is implied carry only their value: add back the index bytes they save
        saved = self._implied * _itemsize(_index_dtype(self.numel))
        sizes = check_messages(self.name, data, sizes)
        for i, s in enumerate(sizes):
            if int(s) < 0 or (int(s) + saved) % per or (int(s) + saved) // per < self._implied:
                raise CodecError(f"paper32: message {i} has {int(s)} bytes, not a whole number of {per}-byte entries")
        return [(int(s) + saved) // per for s in sizes]

    def encode_dense(self, values: Tensor) -> tuple[Tensor, list[int]]:
        rows = _as_bytes(values)
        return rows.reshape(-1), [rows.shape[1]] * rows.shape[0]

    def decode_dense(self, data: Tensor, sizes: Sequence[int], dtype: torch.dtype) -> Tensor:
        return _from_bytes(self._rows(data, sizes, self.numel * _itemsize(dtype)), dtype)

    def describe(self) -> dict:
        return {"codec": self.name}
