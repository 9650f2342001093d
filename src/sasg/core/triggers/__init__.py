"""Triggers: who uploads this round (see :mod:`.protocol`)."""

from .always import Always
from .protocol import Trigger, needs_stale_grads
from .ps import PS, PSPlain
from .wk1 import WK1, WK1Plain
from .lazy import forced_uploads, lazy_threshold
from .wk2 import WK2

__all__ = ["Always", "PS", "PSPlain", "Trigger", "WK1", "WK1Plain", "WK2", "forced_uploads", "lazy_threshold", "needs_stale_grads"]
