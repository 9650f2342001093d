r"""Byte and bit helpers the codec kernels share (compiled; called from other kernels only).

The wire conventions are :mod:`sasg.core.codecs.bitstream`'s: multi-byte numbers little-endian
two's complement, bit streams big-endian within a byte (bit ``j`` of a stream is bit
``7 - j % 8`` of byte ``j // 8``), fields most significant bit first.

Every reader here is given an explicit end and never looks past it: the callers check lengths
first and these helpers only ever see the bytes of one checked section.
"""

from __future__ import annotations

import numpy as np

from . import jit


@jit
def read_int(data, p, width):
    """The signed little-endian integer of ``width`` (4 or 8) bytes at ``data[p:]``."""
    x = np.int64(0)
    for t in range(width):
        x |= np.int64(data[p + t]) << np.int64(8 * t)
    if width == 4 and x >= 2**31:
        x -= np.int64(2**32)
    return x


@jit
def write_int(out, p, x, width):
    """Write ``x`` as a little-endian integer of ``width`` bytes at ``out[p:]`` (two's complement)."""
    for t in range(width):
        out[p + t] = np.uint8((x >> np.int64(8 * t)) & 0xFF)


@jit
def bit_length(x):
    """Bits needed to write ``x >= 0``: 0 for 0, 1 for 1, 3 for 4..7."""
    n = 0
    while x > 0:
        x >>= 1
        n += 1
    return n


@jit
def set_bit(out, pos):
    """Set bit ``pos`` of the big-endian stream ``out``."""
    out[pos >> 3] |= np.uint8(128 >> (pos & 7))


@jit
def clear_bit(out, pos):
    """Clear bit ``pos`` of the big-endian stream ``out``."""
    out[pos >> 3] &= np.uint8(~(128 >> (pos & 7)) & 0xFF)


@jit
def bit_is_set(data, pos):
    return (data[pos >> 3] >> (7 - (pos & 7))) & 1


@jit
def any_bit_set(data, lo, hi):
    """Whether any bit of ``data``'s stream in ``lo .. hi - 1`` is set (``lo <= hi``)."""
    pos = lo
    while pos < hi:
        if (pos & 7) == 0 and pos + 8 <= hi:
            if data[pos >> 3] != 0:
                return True
            pos += 8
        else:
            if bit_is_set(data, pos):
                return True
            pos += 1
    return False


__all__ = ["any_bit_set", "bit_is_set", "bit_length", "clear_bit", "read_int", "set_bit", "write_int"]
