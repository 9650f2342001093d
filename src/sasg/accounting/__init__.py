"""Exact accounting of what crosses the network: the per-round ledger and the wire predictions.

The price of a message comes from its codec (:mod:`sasg.core.codecs`); the round engine records
it (:class:`sasg.engine.RoundEngine`).
"""

from .ledger import Ledger
from .wire import FLAG_BITS_PER_WORKER, SIZE_BITS_PER_WORKER, flag_bytes, replica_payload_bytes

__all__ = ["FLAG_BITS_PER_WORKER", "Ledger", "SIZE_BITS_PER_WORKER", "flag_bytes", "replica_payload_bytes"]
