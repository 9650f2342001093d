"""Payloads: batches of messages (see :mod:`.protocol`)."""

from .dense import DensePayload
from .encoded import Encoded, transmit
from .lowrank import LowRankPayload
from .protocol import Payload
from .sparse import SparsePayload
from .varsparse import VarSparsePayload

__all__ = ["DensePayload", "Encoded", "LowRankPayload", "Payload", "SparsePayload", "VarSparsePayload", "transmit"]
