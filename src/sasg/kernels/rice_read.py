r"""Compiled decode of the sectioned index codes ``rice`` and ``auto`` (the bytes of
:mod:`.rice`, whose module docstring gives the layout, the errors and the caller's buffers).

How: each message's two streams are read as 64-bit words (:mod:`.words`). The unary stream's
words hold its bits least significant first, so the code ends (its zero bits) come out in order,
one ``cttz`` and one ``x & (x - 1)`` each; then every entry's remainder lies at a known bit
(``t b_s`` into its tensor's) and its quotient is the difference of two code ends, so the loop
over entries has no chain of dependent reads and no branch (its checks are folded into one test
after it). What that buys (FC 784-512-10, two messages of 4,071 entries, one core, the
kernel alone): 33 -> 25 us; the loops index slices from 0, as in :mod:`.rice`.

:func:`decode_row` also puts back the indices of tensors a tensor policy sends whole (``skip``,
see :mod:`sasg.core.codecs.implied`): such a tensor's count in the header must be 0, and its
``d_s`` indices take its place in the row, which is what merging them in afterwards gives.
"""

from __future__ import annotations

import numpy as np

from . import jit, on_warm
from .bits import any_bit_set, bit_is_set, read_int
from .rice import BAD_HEADER, BAD_SECTION, CHOOSE, OK, TRUNCATED, WARM_TABLES, _section_lengths, sections_encode
from .words import load_words, load_words_lsb, trailing_zeros, u8, window


@jit(inline="always")
def _header(data, a, size, tail, nnz, numels, bmax, W, tags_on, counts_row, b, tag, lens):
    """Read and check one message's header (at ``data[a:]``, ``size`` bytes); fill its counts,
    parameters, tags and section lengths as :func:`.rice.plan_row` does. An error code."""
    S = numels.shape[0]
    H = (S + 1) * W + S * (2 if tags_on else 1)
    if size < H + tail:
        return TRUNCATED
    total = np.int64(0)
    for s in range(S):
        c = read_int(data, a + s * W, W)
        bs = np.int64(data[a + (S + 1) * W + s])
        tg = np.int64(data[a + (S + 1) * W + S + s]) if tags_on else np.int64(1)
        if c < 0 or c > numels[s] or tg > 2 or bs > bmax[s] or (tg != 1 and bs != 0):
            return BAD_HEADER
        counts_row[s] = c
        b[s] = bs
        tag[s] = tg
        total += c
    U = read_int(data, a + S * W, W)
    if total != nnz or U < 0 or U > size:
        return BAD_HEADER
    _section_lengths(counts_row, b, tag, numels, W, lens)
    lens[3] = U
    if H + lens[0] + lens[1] + lens[2] + U + tail > size:
        return TRUNCATED
    return OK


@jit(inline="always")
def _idx32_section(data, p, W, c, lo, d_s, out):
    """Read one tensor's ``c`` idx32 indices at ``data[p:]`` into ``out``; False unless they
    ascend and lie in its range ``lo .. lo + d_s - 1``."""
    prev = np.int64(-1)
    for t in range(c):
        x = read_int(data, p + t * W, W)
        if x < lo or x >= lo + d_s or (t > 0 and x <= prev):
            return False
        out[t] = x
        prev = x
    return True


@jit(inline="always")
def _bitmap_section(data, region, d_s, c, lo, out):
    """Read one tensor's bitmap (its ``d_s`` bits from stream bit ``region``) into ``out``;
    False unless exactly ``c`` bits are set. Zero bytes are skipped whole (sparse bitmaps)."""
    found = 0
    pos = region
    hi = region + d_s
    while pos < hi:
        if (pos & 7) == 0 and pos + 8 <= hi and data[pos >> 3] == 0:
            pos += 8
            continue
        if bit_is_set(data, pos):
            if found == c:
                return False
            out[found] = lo + pos - region
            found += 1
        pos += 1
    return found == c


@jit(inline="always")
def _code_ends(uw, ubits, codes, zeros):
    """Where each code of the unary stream ends (its zero bit), into ``zeros`` (room for
    ``codes + 64``); ``uw``: the stream's ``ubits`` bits as words, least significant bit first
    (:func:`.words.load_words_lsb`), so that a word's zeros come out in order by ``cttz`` of its
    complement, each cleared by ``x & (x - 1)`` (one cycle a code). False unless the stream holds
    exactly ``codes`` codes, ends in the byte of its last one and is padded with ones."""
    c = 0
    for k in range((ubits + u8(63)) >> u8(6)):
        x = ~uw[k]  # (the words past the stream read as ones: no zero there)
        base = u8(64) * k
        while x:
            zeros[c] = base + u8(trailing_zeros(x))
            c += 1
            x &= x - u8(1)
        if c > codes:
            return False
    if c != codes:
        return False
    return (((zeros[codes - 1] + u8(1)) if codes else u8(0)) + u8(7)) >> u8(3) == ubits >> u8(3)


@jit(inline="always")
def _rice_section(rw, rpos, zeros, end, bs, d_s, lo, out):
    """Decode one tensor's ``len(out)`` entries: remainders from bit ``rpos`` of the remainder
    words, quotients from where the codes end (``zeros``; the previous code ended at ``end``).
    Each entry's remainder lies at a known bit (``rpos + t bs``) and its quotient is a
    difference of two code ends, and the checks are folded into one test after the loop: no
    chain of dependent reads and no branch from one entry to the next. False when a gap passes
    the tensor (the local index only grows, so its last value tells)."""
    ubs = u8(bs)
    qmax = u8((d_s - 1) >> bs)  # a larger quotient puts the gap past the tensor
    loc = np.int64(0)  # entries so far plus their gaps: the next local index
    bad = u8(0)
    for t in range(out.shape[0]):
        r = (window(rw, rpos + u8(t) * ubs) >> u8(1)) >> (u8(63) - ubs)  # (bs = 0: r = 0)
        q = zeros[t] - end - u8(1)
        end = zeros[t]
        bad |= u8(q > qmax)
        loc += np.int64((q << ubs) + r) + 1
        out[t] = lo + loc - 1
    return bad == 0 and loc <= d_s


@jit(inline="always")
def _padding_ok(rw, rpos, rbits):
    """The remainder stream's padding after bit ``rpos`` (of ``rbits``) is zeros."""
    pad = rbits - rpos
    return pad < 8 and (pad == 0 or (window(rw, rpos) >> (u8(64) - pad)) == 0)


@jit(inline="always")
def decode_row(data, a, size, tail, nnz, offsets, numels, bmax, W, tags_on, skip, out, counts_row, b, tag,
               lens, rw, uw, zeros):
    """Message ``data[a : a + size]`` (ending in ``tail`` value bytes; ``nnz`` written entries)
    -> its indices into ``out`` (with every ``skip`` tensor's), its counts into ``counts_row``;
    ``(error code, index bytes used)``. Scratch: ``rw``, ``uw``, words for its two streams
    (``size // 8 + 2``); ``zeros``, room for ``nnz + 64`` code ends."""
    err = _header(data, a, size, tail, nnz, numels, bmax, W, tags_on, counts_row, b, tag, lens)
    if err != OK:
        return err, 0
    S = offsets.shape[0]
    p0 = a + (S + 1) * W + S * (2 if tags_on else 1)
    p2 = p0 + lens[0]
    pr = p2 + lens[1]
    pu = pr + lens[2]
    pe = pu + lens[3]
    load_words(data, pr, pu, 0, rw)
    load_words_lsb(data, pu, pe, uw)
    codes = 0
    for s in range(S):
        codes += counts_row[s] if tag[s] == 1 else 0
    if not _code_ends(uw, u8(8 * lens[3]), codes, zeros):
        return BAD_SECTION, 0
    rpos = u8(0)
    code = 0
    end = ~u8(0)  # where the previous code ended: "bit -1"
    region = 8 * p2
    j = 0
    for s in range(S):
        c = counts_row[s]
        lo = offsets[s]
        d_s = numels[s]
        if skip[s]:  # a tensor sent whole: nothing written, all of its indices in the row
            if c != 0:
                return BAD_SECTION, 0
            whole = out[j : j + d_s]
            for t in range(d_s):
                whole[t] = lo + t
            j += d_s
            continue
        if tag[s] == 0:
            if not _idx32_section(data, p0, W, c, lo, d_s, out[j : j + c]):
                return BAD_SECTION, 0
            p0 += c * W
        elif tag[s] == 2:
            if not _bitmap_section(data, region, d_s, c, lo, out[j : j + c]):
                return BAD_SECTION, 0
            region += d_s
        elif c > 0:
            if not _rice_section(rw, rpos, zeros[code : code + c], end, b[s], d_s, lo, out[j : j + c]):
                return BAD_SECTION, 0
            rpos += u8(c * b[s])
            code += c
            end = zeros[code - 1]
        j += c
    if not _padding_ok(rw, rpos, u8(8 * lens[2])) or any_bit_set(data, region, 8 * pr):
        return BAD_SECTION, 0
    return OK, pe - a


@jit
def sections_decode(data, starts, sizes, tail, nnz, offsets, numels, bmax, W, tags_on, out):
    """The messages at ``starts`` (``sizes`` bytes, each ending in ``tail`` value bytes) ->
    indices into ``out`` ``(N, nnz)``; returns (``(N, S)`` counts, index bytes used per message,
    error code)."""
    N = starts.shape[0]
    S = offsets.shape[0]
    counts = np.zeros((N, S), np.int64)
    used = np.zeros(N, np.int64)
    b = np.zeros(S, np.int64)
    tag = np.zeros(S, np.int64)
    lens = np.zeros(4, np.int64)
    skip = np.zeros(S, np.bool_)
    rw = np.empty(sizes.max() // 8 + 2 if N else 0, np.uint64)
    uw = np.empty_like(rw)
    zeros = np.empty(nnz + 64, np.uint64)
    for n in range(N):
        err, u = decode_row(data, starts[n], sizes[n], tail, nnz, offsets, numels, bmax, W, tags_on, skip,
                            out[n], counts[n], b, tag, lens, rw, uw, zeros)
        used[n] = u
        if err != OK:
            return counts, used, err
    return counts, used, OK


@on_warm
def _warm() -> None:
    idx = np.array([[1, 4, 7, 15]], np.int64)
    for tags_on in (0, 1):
        data, sizes, _, _ = sections_encode(idx, *WARM_TABLES, 16, 4, tags_on, CHOOSE)
        sections_decode(data, np.zeros(1, np.int64), sizes, 0, 4, *WARM_TABLES, 4, tags_on, np.empty((1, 4), np.int64))


__all__ = ["decode_row", "sections_decode"]
