"""The algorithm core: pure tensor functions and small objects on flat per-segment buffers.

Shared by the simulator (leading worker dimension M) and the distributed runner (one worker per
rank). Nothing here knows about models, data or processes.
"""

from .algorithms import ALGORITHMS, Algorithm, make_algorithm
from .compressors import Identity, TopK, kept_per_segment
from .layout import Layout, Segment
from .payload import DensePayload, SparsePayload
from .state import ServerState, WorkerState
from .topk import topk_indices
from .triggers import AlwaysTrigger, LazyTrigger, forced_uploads, lazy_fires, lazy_threshold

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlwaysTrigger",
    "DensePayload",
    "Identity",
    "Layout",
    "LazyTrigger",
    "Segment",
    "ServerState",
    "SparsePayload",
    "TopK",
    "WorkerState",
    "forced_uploads",
    "kept_per_segment",
    "lazy_fires",
    "lazy_threshold",
    "make_algorithm",
    "topk_indices",
]
