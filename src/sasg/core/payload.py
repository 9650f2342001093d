"""Batches of messages as they cross the network: what a worker sends and the server sums.

A payload holds ``N`` messages (one per uploading worker) for a flat buffer of length ``d``.
The server state keeps the last payload of every worker, so a skipper's last message is reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class DensePayload:
    """``N`` dense messages, ``values`` of shape ``(N, d)``.

    ``owned``: nothing else refers to ``values`` (a buffer made for this payload alone). When
    every worker sends, the server's store of last messages may then take the buffer itself
    instead of copying it (a full ``(M, d)`` copy per round saved for dense algorithms)."""

    values: Tensor
    owned: bool = field(default=False, compare=False)

    @property
    def num_messages(self) -> int:
        return self.values.shape[0]

    @property
    def nnz_per_message(self) -> int:
        return self.values.shape[1]

    def to_dense(self) -> Tensor:
        return self.values

    def sum(self, out: Tensor) -> Tensor:
        """Write the sum of all messages into ``out`` (shape ``(d,)``) and return it."""
        return torch.sum(self.values, dim=0, out=out)

    def assign(self, rows: Tensor, other: "DensePayload") -> None:
        if _all_rows(rows, self.values.shape[0]):
            mine, theirs = self.values, other.values
            same = (theirs.shape, theirs.dtype, theirs.device) == (mine.shape, mine.dtype, mine.device)
            if other.owned and same:
                # Everyone sent and nobody else holds the buffer: keep it, the old one is dead.
                self.values, other.owned = other.values, False
            else:
                self.values.copy_(other.values)  # everyone sent: a plain copy, no scatter
        else:
            self.values[rows] = other.values

    def select(self, rows: Tensor) -> "DensePayload":
        return DensePayload(self.values[rows])

    def state_dict(self) -> dict:
        return {"kind": "dense", "values": self.values.clone()}


@dataclass
class SparsePayload:
    """``N`` sparse messages with the same number of kept entries each.

    ``indices`` (int64) and ``values`` have shape ``(N, K)``; ``numel`` is ``d``.
    """

    indices: Tensor
    values: Tensor
    numel: int

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
        if _all_rows(rows, self.values.shape[0]):
            self.indices.copy_(other.indices)
            self.values.copy_(other.values)
        else:
            self.indices[rows] = other.indices
            self.values[rows] = other.values

    def select(self, rows: Tensor) -> "SparsePayload":
        return SparsePayload(self.indices[rows], self.values[rows], self.numel)

    def state_dict(self) -> dict:
        return {
            "kind": "sparse",
            "indices": self.indices.clone(),
            "values": self.values.clone(),
            "numel": self.numel,
        }


Payload = DensePayload | SparsePayload


def _all_rows(rows: Tensor, n: int) -> bool:
    """``rows`` is exactly ``0, 1, ..., n-1`` (then assigning them is a plain copy)."""
    if not isinstance(rows, Tensor):
        return False
    if rows.dtype == torch.bool:
        return rows.numel() == n and bool(rows.all())
    if rows.numel() != n or n == 0:
        return False
    return torch.equal(rows.cpu(), torch.arange(n))


def payload_from_state(state: dict) -> Payload:
    if state["kind"] == "dense":
        return DensePayload(state["values"].clone())
    if state["kind"] == "sparse":
        return SparsePayload(state["indices"].clone(), state["values"].clone(), int(state["numel"]))
    raise ValueError(f"unknown payload kind {state['kind']!r}")
