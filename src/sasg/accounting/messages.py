"""Size of what crosses the network, per direction.

Uplink: each uploading worker sends its compressed message ``q_m`` to the server.
Downlink: the server broadcasts the dense parameters ``theta`` to every worker each round
(32 bits per parameter per worker under ``paper32``), whatever the algorithm.
"""

from __future__ import annotations

from ..core.payload import DensePayload, SparsePayload
from .conventions import PAPER32, BitConvention


def message_bits(payload: DensePayload | SparsePayload, convention: BitConvention = PAPER32) -> int:
    """Bits of ONE message of this payload's shape (all messages of a payload have one size)."""
    if isinstance(payload, SparsePayload):
        return convention.sparse(payload.nnz_per_message)
    if isinstance(payload, DensePayload):
        return convention.dense(payload.nnz_per_message)
    raise TypeError(f"not a payload: {type(payload).__name__}")


def uplink_bits_per_upload(compressor, convention: BitConvention = PAPER32) -> int:
    """Bits one upload costs with this compressor (dense: 32*d, top-k: 64*sum(k_s))."""
    return message_bits(compressor.empty(1), convention)


def downlink_bits_per_round(numel: int, num_workers: int, convention: BitConvention = PAPER32) -> int:
    """Dense broadcast of the d parameters to each of the M workers."""
    return convention.dense(numel) * int(num_workers)
