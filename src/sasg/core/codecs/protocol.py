r"""The Codec protocol: how a message becomes bytes, and what it costs.

A codec turns a payload's messages into one ``uint8`` row each (``encode_*``), back
(``decode_*``), and states the price of one message in bits for the ledger (``*_bits``). It is
deterministic and the same on every rank and device: ``decode(encode(q)) == q`` bit for bit for
a lossless codec. Payloads call the method of their own kind (``encode_sparse`` for a sparse
payload), so a codec never inspects a payload's type.

Every message of one payload kind and shape has one size here, so a receiver knows in advance
how many bytes each sender's message takes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Codec(Protocol):
    name: str

    def dense_bits(self, numel: int) -> int:
        """Price of one dense message of ``numel`` values."""

    def sparse_bits(self, nnz: int, numel: int) -> int:
        """Price of one message of ``nnz`` (index, value) pairs into ``numel`` entries."""

    def dense_bytes(self, numel: int, dtype: torch.dtype) -> int:
        ...

    def sparse_bytes(self, nnz: int, numel: int, dtype: torch.dtype) -> int:
        ...

    def encode_dense(self, values: Tensor) -> Tensor:
        """``(N, numel)`` values -> ``(N, dense_bytes)`` uint8."""

    def decode_dense(self, buf: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
        ...

    def encode_sparse(self, indices: Tensor, values: Tensor, numel: int) -> Tensor:
        """``(N, K)`` indices and values -> ``(N, sparse_bytes)`` uint8."""

    def decode_sparse(self, buf: Tensor, nnz: int, numel: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        ...

    def describe(self) -> dict:
        ...
