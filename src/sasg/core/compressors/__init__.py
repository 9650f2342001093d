"""Compressors: what an upload keeps (see :mod:`.protocol`)."""

from .identity import Identity
from .protocol import Compressor
from .topk import TopK, kept_per_segment

__all__ = ["Compressor", "Identity", "TopK", "kept_per_segment"]
