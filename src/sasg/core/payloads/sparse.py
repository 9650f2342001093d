"""Sparse messages: ``K`` (index, value) pairs per worker, the same ``K`` for all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .helpers import all_rows, check_state


@dataclass
class SparsePayload:
    """``N`` sparse messages: ``indices`` (int64) and ``values`` of shape ``(N, K)`` into a
    buffer of ``numel`` = ``d`` entries. Within a message no index repeats."""

    indices: Tensor
    values: Tensor
    numel: int

    @classmethod
    def zeros(cls, n: int, nnz: int, numel: int, device=None, dtype=torch.float32) -> "SparsePayload":
        """``n`` messages of ``nnz`` entries that add nothing: index 0 with value 0 (a valid index
        keeps ``index_add_`` in bounds)."""
        return cls(torch.zeros(n, nnz, dtype=torch.long, device=device),
                   torch.zeros(n, nnz, dtype=dtype, device=device), numel)

    @property
    def num_messages(self) -> int:
        return self.values.shape[0]

    @property
    def nnz_per_message(self) -> int:
        return self.values.shape[1]

    def to_dense(self) -> Tensor:
        out = self.values.new_zeros(self.values.shape[0], self.numel)
        return out.scatter_(1, self.indices, self.values)

    def sum(self, out: Tensor) -> Tensor:
        # index_add_ on a flat view sums worker by worker in order: deterministic, and it touches
        # only N*K entries instead of N*d.
        out.zero_()
        return out.index_add_(0, self.indices.reshape(-1), self.values.reshape(-1))

    def assign(self, rows: Tensor, other: "SparsePayload") -> None:
        if all_rows(rows, self.values.shape[0]):
            self.indices.copy_(other.indices)
            self.values.copy_(other.values)
        else:
            self.indices[rows] = other.indices
            self.values[rows] = other.values

    def subtract_from_(self, target: Tensor, rows: Sequence[int]) -> None:
        # Only the K sent entries of each row change. Where a value was sent as it is, v - v is
        # exactly 0: the row keeps what was not sent, bit for bit.
        if len(rows) == target.shape[0] and list(rows) == list(range(len(rows))):
            target.scatter_add_(1, self.indices, -self.values)
            return
        for i, r in enumerate(rows):
            target[r].index_add_(0, self.indices[i], self.values[i], alpha=-1)

    def codec_name(self, codec) -> str:
        return codec.name

    def fixed_size(self, codec) -> bool:
        return codec.fixed_size

    def encode(self, codec) -> tuple[Tensor, list[int]]:
        return codec.encode_sparse(self.indices, self.values)

    def encode_sent(self, codec) -> tuple[Tensor, list[int], "SparsePayload"]:
        """:meth:`encode`, plus the messages the receivers will decode from the bytes; a codec
        that can tell them without parsing its own bytes (``encode_sparse_sent``: a lossless
        index code) saves the sender that decode."""
        fast = getattr(codec, "encode_sparse_sent", None)
        if fast is None:
            data, sizes = self.encode(codec)
            return data, sizes, self.decode(codec, data, sizes)
        data, sizes, values = fast(self.indices, self.values, self.values.dtype)
        # The indices decode to themselves: shared with this payload, as a lossless codec's
        # transmit shares all of it (a copy was a tenth of FC's rice+sign transmit).
        indices = self.indices if self.indices.dtype is torch.long else self.indices.to(torch.long)
        return data, sizes, SparsePayload(indices, values, self.numel)

    def decode(self, codec, data: Tensor, sizes: Sequence[int], own=None) -> "SparsePayload":
        """The messages of ``data``. ``own``: ``(n, sent)``, message ``n`` is the caller's own,
        ``sent`` its :class:`~.encoded.Encoded` (the bytes and what they decode to): a codec with
        ``decodes_own`` may take that instead of parsing the bytes again (see
        :meth:`sasg.core.codecs.composite.SparseCodec.decode_sparse`)."""
        if own is not None and getattr(codec, "decodes_own", False):
            n, sent = own
            indices, values = codec.decode_sparse(data, sizes, self.nnz_per_message, self.values.dtype,
                                                  own=(n, sent.data, sent.payload.indices, sent.payload.values))
        else:
            indices, values = codec.decode_sparse(data, sizes, self.nnz_per_message, self.values.dtype)
        device = self.values.device
        if indices.device == device and values.device == device:  # (a no-op .to still costs ~1 us)
            return SparsePayload(indices, values, self.numel)
        return SparsePayload(indices.to(device), values.to(device), self.numel)

    def state_dict(self) -> dict:
        return {"kind": "sparse", "indices": self.indices.clone(), "values": self.values.clone(), "numel": self.numel}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, "sparse", {"indices": self.indices, "values": self.values})
        self.indices.copy_(state["indices"])
        self.values.copy_(state["values"])
