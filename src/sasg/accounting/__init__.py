"""Exact accounting of what crosses the network."""

from .conventions import CONVENTIONS, FLAG_BITS_PER_WORKER, PAPER32, BitConvention
from .ledger import Ledger
from .messages import downlink_bits_per_round, message_bits, uplink_bits_per_upload
from .wire import flag_bytes, replica_payload_bytes

__all__ = [
    "BitConvention",
    "CONVENTIONS",
    "FLAG_BITS_PER_WORKER",
    "Ledger",
    "PAPER32",
    "downlink_bits_per_round",
    "flag_bytes",
    "message_bits",
    "replica_payload_bytes",
    "uplink_bits_per_upload",
]
