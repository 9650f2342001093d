"""What the distributed runner really puts on the wire, predicted from the ledger.

The runner keeps a replica of the server on every rank (see ``docs/distributed.md``): an upload
of ``bits`` bits (the ledger's ``bits_up``, one message to "the server") is delivered to each of
the other ``M - 1`` ranks, and no dense parameter broadcast happens (the ledger's ``bits_down``
is the parameter-server convention, kept so the numbers compare with the simulator). Under
``paper32`` with float32 parameters the packed message is exactly ``bits / 8`` bytes.

The per-round "who sends" flag (the ledger's ``bits_flags``, 1 bit per worker) travels as one
byte per rank and peer: ``M * (M - 1)`` bytes a round, lazy triggers only.
"""

from __future__ import annotations

# The per-round "who sends" flag of a real runner: one bit per worker per round on the ledger,
# counted on its own line (``bits_flags``) and never folded into ``bits_up``.
FLAG_BITS_PER_WORKER = 1
# With a codec whose messages vary in size, each rank's message size travels instead (an int32;
# 0 means "I skip"), so receivers can split the payload exchange.
SIZE_BITS_PER_WORKER = 32


def replica_payload_bytes(bits_up: int, num_workers: int) -> int:
    """Payload bytes on the wire for ``bits_up`` bits of uploads fanned out to M-1 replicas."""
    if bits_up % 8:
        raise ValueError(f"bits_up={bits_up} is not a whole number of bytes")
    return (int(bits_up) // 8) * max(0, int(num_workers) - 1)


def flag_bytes(flag_rounds: int, num_workers: int, width: int = 1) -> int:
    """Bytes of the per-round flag exchange: ``width`` bytes (1: a flag; 4: a message size) from
    every rank to every other rank."""
    return int(flag_rounds) * int(num_workers) * max(0, int(num_workers) - 1) * int(width)
