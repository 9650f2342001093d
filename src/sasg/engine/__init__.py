"""The round engine (written once) and the transport protocol it runs over."""

from .round import Round, RoundEngine
from .transport import InProcessTransport, Transport, TransportCounters

__all__ = ["InProcessTransport", "Round", "RoundEngine", "Transport", "TransportCounters"]
