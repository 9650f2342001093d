"""Triggers: who uploads this round (see :mod:`.protocol`)."""

from .always import Always
from .protocol import Trigger, needs_stale_grads
from .ps import PS
from .wk1 import WK1
from .lazy import forced_uploads, lazy_threshold
from .wk2 import WK2

__all__ = ["Always", "PS", "Trigger", "WK1", "WK2", "forced_uploads", "lazy_threshold", "needs_stale_grads"]
