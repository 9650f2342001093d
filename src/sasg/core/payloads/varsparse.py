r"""Sparse messages of varying length: at most ``K`` (index, value) pairs per worker.

A compressor whose messages hold a number of entries that depends on the data (``dgc``: as many
as pass a sampled threshold, at most ``K``) cannot use :class:`~.sparse.SparsePayload`, whose
``K`` entries are all sent and all priced. :class:`VarSparsePayload` stores the ``N`` messages in
``(N, K)`` buffers and says how many entries of each row are real:

* ``counts[i]`` (``n_i <= K``): message ``i`` is the pairs ``0 .. n_i - 1`` of row ``i`` (indices
  strictly ascending, never repeated: the message as every codec expects it);
* the pairs ``n_i .. K - 1`` are **padding**, index 0 and value +0.0. Padding is never encoded,
  never priced and never read: ``sum``, ``to_dense`` and ``subtract_from_`` use the real pairs
  only (so a real entry at index 0 and the padding's index 0 never meet).

On the wire a message is exactly what the codec writes for its ``n_i`` real pairs, nothing else:
no count travels in it. The receiver learns ``n_i`` from the bytes themselves through the codec's
``sparse_nnz(data, sizes, dtype)`` (``paper32`` and ``idx32``: from the message's size; ``rice``
and ``auto``: the per-tensor counts of their header; ``bitmap``: the bits set), then decodes the
message with that ``n_i``. Sizes vary from message to message under every codec, so this kind is
never ``fixed_size``: a real transport sends each sender's size (32 bits, on the flag line), and
the ledger's payload bits are ``8 x`` the bytes of the real entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..codecs.protocol import CodecError
from .helpers import all_rows, check_state


def _nnz_reader(codec):
    read = getattr(codec, "sparse_nnz", None)
    if read is None:
        raise ValueError(f"codec {getattr(codec, 'name', codec)!r} cannot carry messages of varying length: "
                         "it has no sparse_nnz(data, sizes, dtype) to tell a receiver how many entries a message "
                         "holds (dgc needs one; paper32 and every INDEX+VALUE codec have it)")
    return read


def _runs(counts: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive rows with one count: ``(first row, end row, count)`` in row order (so a batch
    of equal counts goes to the codec in one call)."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(counts) + 1):
        if i == len(counts) or counts[i] != counts[start]:
            out.append((start, i, counts[start]))
            start = i
    return out


@dataclass
class VarSparsePayload:
    """``N`` sparse messages of ``counts[i] <= K`` entries each: ``indices`` (int64) and ``values``
    of shape ``(N, K)`` into a buffer of ``numel`` = ``d`` entries, ``counts`` (int64, ``(N,)``, on
    the CPU). The first ``counts[i]`` pairs of row ``i`` are its message (indices strictly
    ascending); the rest are padding (index 0, value 0) and take part in nothing."""

    indices: Tensor
    values: Tensor
    counts: Tensor
    numel: int

    @classmethod
    def zeros(cls, n: int, capacity: int, numel: int, device=None, dtype=torch.float32) -> "VarSparsePayload":
        """``n`` empty messages (no entry) of room ``capacity``: the server's last messages before
        anyone sent, and a receiver's template."""
        return cls(torch.zeros(n, capacity, dtype=torch.long, device=device),
                   torch.zeros(n, capacity, dtype=dtype, device=device),
                   torch.zeros(n, dtype=torch.long), numel)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Tensor, Tensor]], capacity: int, numel: int, device=None,
                  dtype=torch.float32) -> "VarSparsePayload":
        """Messages from one ``(indices, values)`` pair of 1-D tensors per row (at most
        ``capacity`` entries each), padded."""
        out = cls.zeros(len(rows), capacity, numel, device, dtype)
        for i, (idx, val) in enumerate(rows):
            n = idx.numel()
            if n > capacity:
                raise ValueError(f"a message of {n} entries does not fit a payload of {capacity} per message")
            out.indices[i, :n] = idx
            out.values[i, :n] = val
            out.counts[i] = n
        return out

    @property
    def num_messages(self) -> int:
        return self.values.shape[0]

    @property
    def capacity(self) -> int:
        """``K``: the most entries a message may hold."""
        return self.values.shape[1]

    def valid(self) -> Tensor:
        """``(N, K)`` bool: which pairs are real (the first ``counts[i]`` of row ``i``)."""
        k = torch.arange(self.capacity, device=self.values.device)
        return k.unsqueeze(0) < self.counts.to(self.values.device).unsqueeze(1)

    def message(self, i: int) -> tuple[Tensor, Tensor]:
        """Message ``i``'s real ``(indices, values)``, views of the buffers."""
        n = int(self.counts[i])
        return self.indices[i, :n], self.values[i, :n]

    def to_dense(self) -> Tensor:
        out = self.values.new_zeros(self.num_messages, self.numel)
        mask = self.valid()
        rows = torch.arange(self.num_messages, device=out.device).unsqueeze(1).expand_as(mask)
        out[rows[mask], self.indices[mask]] = self.values[mask]
        return out

    def sum(self, out: Tensor) -> Tensor:
        # The real pairs only, message after message (a boolean mask keeps row-major order):
        # deterministic, N * K entries touched at most.
        out.zero_()
        mask = self.valid()
        return out.index_add_(0, self.indices[mask], self.values[mask])

    def assign(self, rows: Tensor, other: "VarSparsePayload") -> None:
        if other.capacity != self.capacity:
            raise ValueError(f"messages of room {other.capacity} assigned to a payload of room {self.capacity}")
        if all_rows(rows, self.num_messages):
            self.indices.copy_(other.indices)
            self.values.copy_(other.values)
            self.counts.copy_(other.counts)
        else:
            self.indices[rows] = other.indices
            self.values[rows] = other.values
            self.counts[rows.cpu()] = other.counts

    def subtract_from_(self, target: Tensor, rows: Sequence[int]) -> None:
        # Only the sent entries of each row change; a value sent as it is leaves exactly 0.
        for i, r in enumerate(rows):
            idx, val = self.message(i)
            target[r].index_add_(0, idx, val, alpha=-1)

    def codec_name(self, codec) -> str:
        return codec.name

    def fixed_size(self, codec) -> bool:
        return False  # the size follows the number of entries, under every codec

    def encode(self, codec) -> tuple[Tensor, list[int]]:
        _nnz_reader(codec)  # fail at the sender, not at every receiver
        counts = [int(c) for c in self.counts.tolist()]
        if not counts:
            return torch.zeros(0, dtype=torch.uint8, device=self.values.device), []
        pieces: list[Tensor] = []
        sizes: list[int] = []
        for a, b, n in _runs(counts):
            data, sz = codec.encode_sparse(self.indices[a:b, :n], self.values[a:b, :n])
            pieces.append(data)
            sizes += list(sz)
        return torch.cat([p.to(pieces[0].device) for p in pieces]), sizes

    def decode(self, codec, data: Tensor, sizes: Sequence[int]) -> "VarSparsePayload":
        sizes = [int(s) for s in sizes]
        K, dtype, device = self.capacity, self.values.dtype, self.values.device
        counts = [int(n) for n in _nnz_reader(codec)(data, sizes, dtype)]
        for i, n in enumerate(counts):
            if not 0 <= n <= K:
                raise CodecError(f"{codec.name}: message {i} holds {n} entries, a message holds 0..{K}: corrupted")
        out = VarSparsePayload.zeros(len(sizes), K, self.numel, device, dtype)
        start = 0
        for a, b, n in _runs(counts):
            length = sum(sizes[a:b])
            idx, val = codec.decode_sparse(data[start : start + length], sizes[a:b], n, dtype)
            out.indices[a:b, :n] = idx.to(device)
            out.values[a:b, :n] = val.to(device)
            start += length
        out.counts.copy_(torch.tensor(counts, dtype=torch.long))
        return out

    def state_dict(self) -> dict:
        return {"kind": "varsparse", "indices": self.indices.clone(), "values": self.values.clone(),
                "counts": self.counts.clone(), "numel": self.numel}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, "varsparse", {"indices": self.indices, "values": self.values, "counts": self.counts})
        counts = state["counts"]
        if bool(((counts < 0) | (counts > self.capacity)).any()):
            raise ValueError(f"server state 'last': a message count outside 0..{self.capacity}")
        self.indices.copy_(state["indices"])
        self.values.copy_(state["values"])
        self.counts.copy_(counts)
