"""The single-process simulator of M workers."""

from .evaluate import evaluate
from .gradients import LoopGradients, VmapGradients, make_gradients
from .allocator import retain_freed_memory
from .result import RunResult
from .simulator import Simulator

__all__ = ["LoopGradients", "RunResult", "Simulator", "VmapGradients", "evaluate", "make_gradients",
           "retain_freed_memory"]
