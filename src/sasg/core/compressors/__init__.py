"""Compressors: what an upload keeps (see :mod:`.protocol`)."""

from .globaltopk import GlobalTopK
from .identity import Identity
from .protocol import Compressor
from .randomk import RandomK
from .sign import ScaledSign
from .terngrad import TernGrad
from .topk import TopK, kept_per_segment

__all__ = ["Compressor", "GlobalTopK", "Identity", "RandomK", "ScaledSign", "TernGrad", "TopK", "kept_per_segment"]
