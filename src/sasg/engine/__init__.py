"""The round engine (written once) and the transport protocol it runs over."""

from .round import Round, RoundEngine, RoundResult
from .transport import InProcessTransport, Transport, TransportCounters

__all__ = ["InProcessTransport", "Round", "RoundEngine", "RoundResult", "Transport", "TransportCounters"]
