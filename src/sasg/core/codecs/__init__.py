"""Codecs: messages as bytes and their price in bits (see :mod:`.protocol`)."""

from .paper32 import Paper32
from .protocol import Codec, CodecError

__all__ = ["Codec", "CodecError", "Paper32"]
