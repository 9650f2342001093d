r"""The Codec protocol: how messages become bytes, and back.

A codec turns the ``N`` messages of a payload into bytes — one ``uint8`` tensor holding the
messages back to back, and each message's size — and back again. The ledger counts
``8 x bytes`` of what it produced (:class:`sasg.engine.RoundEngine`), in every runner: the codec
is the one source of truth for bits.

* Sparse messages (``(N, K)`` indices, ascending within each tensor of the layout, and values)
  go through ``encode_sparse``/``decode_sparse``; dense ones (``(N, d)`` values) through
  ``encode_dense``/``decode_dense``. Payloads call the method of their own kind, so a codec never
  inspects a payload's type.
* ``lossless``: ``decode(encode(q)) == q`` bit for bit. A lossy codec (bf16, int8, sign values)
  decodes to the same values on every call and every rank; the server applies the *decoded*
  message and error feedback keeps ``v - decoded(q)``, so what rounding drops is sent later.
* ``fixed_size`` (sparse messages) and ``dense_fixed_size``: every message of one payload shape
  has one size (``paper32``; a dense message under any value format), so a receiver knows it in
  advance and no sizes need to travel.
* Bytes that do not decode (corrupted, truncated) raise :class:`CodecError`, never a silent wrong
  message or an error from deep inside torch.

A codec is built for a model's :class:`~sasg.core.layout.Layout` (some codes work per tensor).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


class CodecError(ValueError):
    """Bytes that are not a message of this codec (corrupted or truncated)."""


def check_messages(name: str, data: Tensor, sizes: Sequence[int]) -> list[int]:
    """``sizes`` as ints, once ``data`` is a 1-D uint8 tensor they exactly cover (else a
    :class:`CodecError` naming codec ``name``): what every decoder checks first."""
    if not isinstance(data, Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
        raise CodecError(f"{name}: expected the messages as a 1-D uint8 tensor, got "
                         f"{type(data).__name__} {getattr(data, 'dtype', '')} {tuple(getattr(data, 'shape', ()))}")
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes):
        raise CodecError(f"{name}: negative message size in {sizes[:8]}")
    if sum(sizes) != data.numel():
        raise CodecError(f"{name}: the sizes of {len(sizes)} message(s) sum to {sum(sizes)} bytes, "
                         f"the data holds {data.numel()}")
    return sizes


@runtime_checkable
class Codec(Protocol):
    name: str
    dense_name: str  # what it is called for dense messages (the value format alone)
    lossless: bool
    fixed_size: bool
    dense_fixed_size: bool

    def encode_sparse(self, indices: Tensor, values: Tensor) -> tuple[Tensor, list[int]]:
        """``(N, K)`` int64 indices and values -> (uint8 1-D: the N messages back to back, sizes)."""

    def decode_sparse(self, data: Tensor, sizes: Sequence[int], nnz: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """-> ``(N, nnz)`` int64 indices and ``(N, nnz)`` values of ``dtype``."""

    def encode_dense(self, values: Tensor) -> tuple[Tensor, list[int]]:
        """``(N, d)`` values -> (uint8 1-D, sizes)."""

    def decode_dense(self, data: Tensor, sizes: Sequence[int], dtype: torch.dtype) -> Tensor:
        """-> ``(N, d)`` values of ``dtype``."""

    def describe(self) -> dict:
        ...
