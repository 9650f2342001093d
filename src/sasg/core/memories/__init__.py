"""Memories: what a worker keeps of what it did not send (see :mod:`.protocol`)."""

from .ef import ErrorFeedback
from .none import NoMemory
from .protocol import Memory

__all__ = ["ErrorFeedback", "Memory", "NoMemory"]
