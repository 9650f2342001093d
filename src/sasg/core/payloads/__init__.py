"""Payloads: batches of messages (see :mod:`.protocol`)."""

from .dense import DensePayload
from .protocol import Payload
from .sparse import SparsePayload

__all__ = ["DensePayload", "Payload", "SparsePayload"]
