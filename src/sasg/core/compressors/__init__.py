"""Compressors: what an upload keeps (see :mod:`.protocol`)."""

from .dgc import DGC
from .globaltopk import GlobalTopK
from .identity import Identity
from .protocol import Compressor
from .qsgd import QSGD
from .randomk import RandomK
from .sign import ScaledSign
from .terngrad import TernGrad
from .topk import TopK, kept_per_segment

__all__ = ["Compressor", "DGC", "GlobalTopK", "Identity", "QSGD", "RandomK", "ScaledSign", "TernGrad", "TopK",
           "kept_per_segment"]
