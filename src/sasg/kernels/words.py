r"""Bit streams a 64-bit word at a time (compiled; called from other kernels only).

The streams are :mod:`sasg.core.codecs.bitstream`'s (big-endian within a byte, fields most
significant bit first). Read as big-endian 64-bit words, stream bit ``j`` is bit ``63 - j % 64``
of word ``j // 64``: a writer appends a field with one shift and one OR into the current word,
where a byte at a time costs a loop (and a mispredicted exit) per field. What that buys: a rice
message of FC 784-512-10 (4,071 entries) encoded in 10 us instead of 22 (:mod:`.rice`). The
decoder (:mod:`.rice_read`) reads the unary stream as words least significant bit first
(:func:`load_words_lsb`) and each remainder from its own bytes.

Writer state: ``(i, w, f)``: ``words[:i]`` are done, ``w`` is the current word with its ``f``
(1..64) low bits still free. Every shift amount stays in 0..63 (a shift by 64 is undefined in
LLVM, hence the split shifts below).
"""

from __future__ import annotations

import numpy as np

from . import jit

try:
    from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM's cttz
except ImportError:  # pragma: no cover - no numba: the kernels are off (see sasg.kernels)
    trailing_zeros = None

u8 = np.uint64
ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@jit(inline="always")
def put_bits(words, i, w, f, x, n):
    """Append the ``n`` (1..63) low bits of ``x`` (``x < 2**n``)."""
    if n < f:
        return i, w | (x << (f - n)), f - n
    m = n - f  # bits that go to the next word
    words[i] = w | (x >> m)
    return i + u8(1), (x << u8(1)) << (u8(63) - m), u8(64) - m


@jit(inline="always")
def finish(words, i, w, f, pad):
    """Close the stream, its last word's free bits set to ``pad``'s (``0`` or ``ONES``); the
    number of words written."""
    if f < 64:
        words[i] = w | (pad >> (u8(64) - f))
        i += u8(1)
    return i


@jit(inline="always")
def _put_be64(out, p, w):
    """``w`` as 8 big-endian bytes at ``out[p:]``: one byte-swapped store, once LLVM has merged
    the eight."""
    dst = out[p : p + 8]  # (indices from 0: numba adds no negative-index fix-up, see copy)
    for j in range(8):
        dst[j] = np.uint8((w >> u8(56 - 8 * j)) & u8(0xFF))


@jit(inline="always")
def store_bytes(words, nbytes, out, p):
    """The stream's first ``nbytes`` bytes into ``out[p:]``: whole words 8 bytes at a time
    (a byte at a time, a shift and a store each, took 0.9 us for FC's 4.2 kB; this, 0.15)."""
    full = nbytes // 8
    for k in range(full):
        _put_be64(out, p + 8 * k, words[k])
    dst = out[p + 8 * full : p + nbytes]
    w = words[full] if nbytes % 8 else u8(0)
    for t in range(nbytes % 8):
        dst[t] = np.uint8((w >> u8(56 - 8 * t)) & u8(0xFF))


@jit(inline="always")
def copy(dst, src):
    """``dst[:] = src`` for 1-D arrays of one length. A loop over two slices indexed from 0: numba's
    slice assignment guards against overlap with a temporary copy, and an index like ``p + t``
    gets a negative-index fix-up on every access; either costs 10-40x on an 18 kB value part."""
    for t in range(src.shape[0]):
        dst[t] = src[t]


def _reversed_bytes() -> np.ndarray:
    """For every byte value: its bits in the opposite order."""
    return np.array([int(f"{v:08b}"[::-1], 2) for v in range(256)], np.uint8)


_REVERSED = _reversed_bytes()


@jit(inline="always")
def load_words_lsb(data, lo, hi, words):
    """``data[lo:hi]`` as words whose bit ``j % 64`` (least significant first) is stream bit ``j``
    (room for ``(hi - lo) // 8 + 2`` words; bytes past ``hi`` read as ones): a stream's bits in
    order by ``cttz``, one cycle apart (:func:`.rice_read._code_ends`)."""
    src = data[lo:hi]
    nb = src.shape[0]
    for k in range(nb // 8 + 2):
        x = u8(0)
        for t in range(8):
            byte = u8(_REVERSED[src[8 * k + t]]) if 8 * k + t < nb else u8(0xFF)
            x |= byte << u8(8 * t)
        words[k] = x


__all__ = ["copy", "finish", "load_words_lsb", "trailing_zeros", "put_bits", "store_bytes"]
