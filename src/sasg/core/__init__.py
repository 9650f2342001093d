"""The algorithm core: members behind protocols, a registry, and the algorithm spec.

Folders name the member kinds: :mod:`.triggers` (who uploads), :mod:`.compressors` (what an
upload keeps), :mod:`.memories` (what a worker keeps of what it did not send), :mod:`.payloads`
(messages) and :mod:`.codecs` (their bytes and price). The round that uses them is written once,
in :mod:`sasg.engine`. Nothing here knows about models, data or processes.
"""

from . import members as _members  # noqa: F401  (registers the built-in members)
from .algorithm import Algorithm
from .compressors import Compressor, Identity, TopK, kept_per_segment
from .layout import Layout, Segment
from .payloads import DensePayload, Payload, SparsePayload
from .registry import ALIASES, REGISTRIES, listing, register, register_alias
from .spec import KNOBS, AlgorithmSettings, AlgorithmSpec, make_algorithm
from .round_state import ServerState, WorkerState
from .selection import topk_indices
from .triggers import WK2, Always, Trigger, forced_uploads, lazy_threshold
from .workspace import Workspace

ALGORITHMS = ("sgd", "sparse", "lasg", "sasg")  # the paper's four, the default of `sasg compare`

__all__ = [
    "ALGORITHMS", "ALIASES", "Algorithm", "AlgorithmSettings", "AlgorithmSpec", "Always", "Compressor",
    "DensePayload", "Identity", "KNOBS", "Layout", "Payload", "REGISTRIES", "Segment", "ServerState",
    "SparsePayload", "TopK", "Trigger", "WK2", "WorkerState", "Workspace", "forced_uploads",
    "kept_per_segment", "lazy_threshold", "listing", "make_algorithm", "register", "register_alias",
    "topk_indices",
]
