"""Named conventions for the size of a message in bits.

``paper32`` is the SASG paper's convention and the default for every comparison: a dense upload
costs 32 bits per value; a sparse upload costs 32 bits per kept value plus 32 bits per index.
A cheaper encoding must be another named convention whose count comes from the bytes it really
produces (as ``sasg.distributed.wire`` packs a message), never from a formula alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BitConvention:
    name: str
    value_bits: int
    index_bits: int

    def dense(self, numel: int) -> int:
        return self.value_bits * int(numel)

    def sparse(self, nnz: int) -> int:
        return (self.value_bits + self.index_bits) * int(nnz)


PAPER32 = BitConvention("paper32", value_bits=32, index_bits=32)
CONVENTIONS = {PAPER32.name: PAPER32}

# The per-round "who sends" flag of a real runner: one bit per worker per round, counted on its
# own line (``bits_flags``) and never folded into ``bits_up``.
FLAG_BITS_PER_WORKER = 1
