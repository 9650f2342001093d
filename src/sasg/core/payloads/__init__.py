"""Payloads: batches of messages (see :mod:`.protocol`)."""

from .dense import DensePayload
from .encoded import Encoded, transmit
from .protocol import Payload
from .sparse import SparsePayload

__all__ = ["DensePayload", "Encoded", "Payload", "SparsePayload", "transmit"]
