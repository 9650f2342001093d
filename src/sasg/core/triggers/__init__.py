"""Triggers: who uploads this round (see :mod:`.protocol`)."""

from .always import Always
from .protocol import Trigger
from .wk2 import WK2, forced_uploads, lazy_threshold

__all__ = ["Always", "Trigger", "WK2", "forced_uploads", "lazy_threshold"]
