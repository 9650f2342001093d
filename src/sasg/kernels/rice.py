r"""Compiled encode of the sectioned index codes ``rice`` and ``auto`` (decode: :mod:`.rice_read`).

The bytes are :mod:`sasg.core.codecs.index.rice`'s and :mod:`~sasg.core.codecs.index.auto`'s
(that module's vectorized torch code is the reference): per message a header (``S`` counts
``c_s`` and the unary length ``U`` as ``W``-byte little-endian integers, ``S`` Rice parameters
``b_s``, for ``auto`` ``S`` tags), then the idx32 section, the bitmap section, the remainders
(``b_s`` bits per entry, zero-padded) and the unary stream (``1^q 0`` per entry, padded with
ones). ``rice`` is ``auto`` with every tag 1 and no tag bytes (``tags_on = 0``).

What it buys (FC 784-512-10, one message of 4,071 entries, median ms on 2 loaded cores,
torch -> kernel; the torch time is nearly all the fixed cost of some 150 small ops): ``rice``
encode 0.64-1.9 -> 0.026-0.049, decode 1.0-1.3 -> 0.023-0.040; ``auto`` encode 0.8-1.6 ->
0.04, decode 1.7 -> 0.023-0.035. Ten messages a batch: rice decode 10.0 -> 0.27, encode 2.9 ->
0.27. Then (issue #24) the streams are written a 64-bit word at a time (:mod:`.words`) and the
loops over entries index slices from 0 (numba adds a negative-index fix-up to ``row[t]`` for a
``t`` it cannot prove non-negative, which also kept the checks from vectorizing): the rice
encode of that message 0.022 -> 0.010 ms on a quiet core. :func:`plan_row` and
:func:`write_row` also serve whole batches in :mod:`.messages`.

Errors: a kernel stops at the first thing that is wrong and returns a nonzero code. Encode
rejects only what the reference rejects (indices not ascending or outside ``0..d-1``); decode
rejects exactly the messages the reference decoder rejects (every length, count, parameter,
tag, padding bit and index range it checks). The member then reruns the reference, which raises
the existing error naming the message. Every read is bounds-checked against the message's own
size before it happens, so hostile bytes never make a kernel read past its input.

Outputs whose size the caller knows (decoded indices here, value rows and decoded values in
:mod:`.values`, bitmaps in :mod:`.bitmap`) are allocated by the caller with numpy and filled in
place: an array allocated inside a kernel measured up to ~2x slower to fill once it passes a few
hundred kB (10 FC messages: 0.48 ms against 0.18 ms for the decode), page faults on fresh memory.
"""

from __future__ import annotations

import numpy as np

from . import jit, on_warm
from .bits import bit_length, set_bit, write_int
from .words import ONES, finish, put_bits, store_bytes, u8

OK = 0
BAD_INDICES = 1  # encode: not ascending or outside 0..d-1
TRUNCATED = 2  # decode: a message shorter than its header, sections and tail
BAD_HEADER = 3  # a count, tag, parameter or unary length out of range
BAD_SECTION = 4  # an idx32 index, bitmap bit, padding bit or unary code that no encoder writes


CHOOSE = np.zeros((0, 0), np.int64)  # sections_encode's `forced`: let the costs choose the tags


@jit(inline="always")
def _section_lengths(counts, b, tag, numels, W, lens):
    """``lens[:3]``: one message's idx32 section (``W`` bytes an entry of its tag-0 tensors),
    bitmap section (``d_s`` bits each of its tag-2 tensors) and remainders (``b_s`` bits an
    entry of its rice tensors), in bytes, from its counts, parameters and tags."""
    n0 = np.int64(0)
    r2 = np.int64(0)
    rbits = np.int64(0)
    for s in range(numels.shape[0]):
        if tag[s] == 0:
            n0 += counts[s]
        elif tag[s] == 2:
            r2 += numels[s]
        else:
            rbits += counts[s] * b[s]
    lens[0] = n0 * W
    lens[1] = (r2 + 7) // 8
    lens[2] = (rbits + 7) // 8


@jit(inline="always")
def plan_row(row, n, offsets, numels, bmax, W, tags_on, forced, skip, full, counts, b, tag, lens):
    """Plan message ``n`` (its ascending indices ``row``): each tensor's entries in the row
    (``full[n, s]``) and written (``counts[n, s]``: none of a tensor ``skip[s]`` names, whose
    indices are implied), its ``b_s`` (``floor(log2(mean gap))`` capped by ``bmax``) and tag
    (``forced[n, s]`` when ``forced`` has rows: tests reach every section that way), and the
    section lengths ``lens[n] = (n0 W, bitmap bytes, remainder bytes, unary bytes)``. False on
    bad indices (not ascending, outside ``0..d-1``) or a skipped tensor not held whole.

    The checks are one pass without an early exit and the tensors' bounds binary searches, so
    that the loops over entries vectorize (the ascending check and every tensor's sum of
    quotients)."""
    K = row.shape[0]
    S = offsets.shape[0]
    if K:
        unordered = 0
        for t in range(1, K):
            unordered += row[t] <= row[t - 1]
        if unordered or row[0] < 0 or row[K - 1] >= offsets[S - 1] + numels[S - 1]:
            return False
    ubits = np.int64(0)
    first = 0
    for s in range(S):
        lo = offsets[s]
        end = first + np.searchsorted(row[first:], lo + numels[s])
        c = end - first
        full[n, s] = c
        if skip[s]:
            if c != numels[s]:
                return False
            c = 0
        bs = np.int64(0)
        sumq = np.int64(0)
        if c > 0:
            sum_gap = row[end - 1] - lo + 1 - c
            bs = min(max(bit_length(sum_gap // c) - 1, 0), bmax[s])
            seg = row[first:end]  # (a slice from 0: no negative-index fix-up, so the loop vectorizes)
            sumq = (seg[0] - lo) >> bs
            for t in range(1, c):
                sumq += (seg[t] - seg[t - 1] - 1) >> bs
        tg = 1
        if tags_on:  # the cheapest code, the first of idx32, rice, bitmap on ties
            best = c * 8 * W
            tg = 0
            if c * (bs + 1) + sumq < best:
                best = c * (bs + 1) + sumq
                tg = 1
            if numels[s] < best:
                tg = 2
            if forced.shape[0]:
                tg = forced[n, s]
            if tg != 1:
                bs = 0
        counts[n, s] = c
        b[n, s] = bs
        tag[n, s] = tg
        if tg == 1:
            ubits += sumq + c
        first = end
    _section_lengths(counts[n], b[n], tag[n], numels, W, lens[n])
    lens[n, 3] = (ubits + 7) // 8
    return True


@jit(inline="always")
def _codes(row, first, c, lo, bs, rw, ri, rcur, rf, uw, z, k, cur):
    """Append one tensor's ``c`` gaps (entries ``row[first:]``, tensor start ``lo``) to both
    streams: their ``bs``-bit remainders to the remainder stream (writer state ``ri, rcur, rf``,
    see :mod:`.words`; none when ``bs`` is 0), and their unary codes (``1^q 0``, ``q = gap >>
    bs``) to ``uw`` (filled with ones), by clearing each code's zero bit, stream bit ``z`` on;
    ``cur`` is word ``k`` as far as it is written. One register per word, not a
    read-modify-write per code: consecutive codes share a word.

    One pass over the entries for both streams: the unary codes' chain (a bit position and a
    word) and the remainder writer's are independent, so the core runs them side by side (FC's
    4,067 gaps, the two streams alone: 7.3 -> 5.9-6.4 us against a pass for each; a whole
    rice+fp32 message, 12.6 -> 11.4). The unary step is written out twice below: as an inlined
    helper it made the pass three times slower."""
    seg = row[first : first + c]
    prev = lo - 1
    ubs = u8(bs)
    mask = (u8(1) << ubs) - u8(1)
    top = u8(0x8000000000000000)
    done = 0
    if 0 < bs <= 7:
        # Eight remainders (at most 56 bits) put together with independent shifts, then one
        # append: one writer step per eight gaps instead of a chain of eight (h = 1 % gives
        # bs = 6; FC's 4,065 gaps: 2.5 -> 1.7 us).
        s1, s2, s3, s4, s5, s6 = u8(7) * ubs, u8(6) * ubs, u8(5) * ubs, u8(4) * ubs, u8(3) * ubs, u8(2) * ubs
        done = c - c % 8
        for g in range(done // 8):
            e = seg[8 * g : 8 * g + 8]
            g0, g1, g2, g3 = u8(e[0] - prev - 1), u8(e[1] - e[0] - 1), u8(e[2] - e[1] - 1), u8(e[3] - e[2] - 1)
            g4, g5, g6, g7 = u8(e[4] - e[3] - 1), u8(e[5] - e[4] - 1), u8(e[6] - e[5] - 1), u8(e[7] - e[6] - 1)
            prev = e[7]
            x = (((g0 & mask) << s1) | ((g1 & mask) << s2) | ((g2 & mask) << s3) | ((g3 & mask) << s4)
                 | ((g4 & mask) << s5) | ((g5 & mask) << s6) | ((g6 & mask) << ubs) | (g7 & mask))
            ri, rcur, rf = put_bits(rw, ri, rcur, rf, x, u8(8) * ubs)
            for gap in (g0, g1, g2, g3, g4, g5, g6, g7):
                z += gap >> ubs
                if (z >> u8(6)) != k:
                    uw[k] = cur
                    k = z >> u8(6)
                    cur = ONES
                cur &= ~(top >> (z & u8(63)))
                z += u8(1)
    rest = seg[done:]  # (a slice from 0: no negative-index fix-up)
    for t in range(rest.shape[0]):
        gap = u8(rest[t] - prev - 1)
        prev = rest[t]
        if bs > 0:  # (put_bits needs 1..63 bits)
            ri, rcur, rf = put_bits(rw, ri, rcur, rf, gap & mask, ubs)
        z += gap >> ubs
        if (z >> u8(6)) != k:
            uw[k] = cur
            k = z >> u8(6)
            cur = ONES
        cur &= ~(top >> (z & u8(63)))
        z += u8(1)
    return ri, rcur, rf, z, k, cur


@jit(inline="always")
def write_row(out, p, row, n, offsets, numels, W, tags_on, full, counts, b, tag, lens, rw, uw):
    """Write message ``n`` (planned by :func:`plan_row`) at ``out[p:]`` (zeroed); its end."""
    S = offsets.shape[0]
    H = (S + 1) * W + S * (2 if tags_on else 1)
    for s in range(S):
        write_int(out, p + s * W, counts[n, s], W)
        out[p + (S + 1) * W + s] = b[n, s]
        if tags_on:
            out[p + (S + 1) * W + S + s] = tag[n, s]
    write_int(out, p + S * W, lens[n, 3], W)
    p0 = p + H  # idx32 section, then bitmap, remainders, unary
    region = 8 * (p0 + lens[n, 0])
    pr = p0 + lens[n, 0] + lens[n, 1]
    pu = pr + lens[n, 2]
    ri, rcur, rf = u8(0), u8(0), u8(64)
    uw[: lens[n, 3] // 8 + 1] = ONES
    z, k, cur = u8(0), u8(0), ONES
    j = 0
    for s in range(S):
        c = counts[n, s]  # (0 for a skipped tensor: its full[n, s] entries are passed over)
        tg = tag[n, s]
        if tg == 0:
            for t in range(j, j + c):
                write_int(out, p0, row[t], W)
                p0 += W
        elif tg == 2:
            for t in range(j, j + c):
                set_bit(out, region + row[t] - offsets[s])
            region += numels[s]
        elif c > 0:
            ri, rcur, rf, z, k, cur = _codes(row, j, c, offsets[s], b[n, s], rw, ri, rcur, rf, uw, z, k, cur)
        j += full[n, s]
    finish(rw, ri, rcur, rf, u8(0))
    uw[k] = cur
    store_bytes(rw, lens[n, 2], out, pr)
    store_bytes(uw, lens[n, 3], out, pu)
    return pu + lens[n, 3]


@jit(inline="always")
def stream_words(lens):
    """Room for the largest message's remainder and unary streams, as words."""
    rw = np.empty(max(lens[:, 2].max(), lens[:, 3].max()) // 8 + 2, np.uint64)
    return rw, np.empty_like(rw)


@jit
def sections_encode(idx, offsets, numels, bmax, d, W, tags_on, forced):
    """``(N, K)`` int64 indices -> (index parts back to back (uint8), each part's size, the
    ``(N, S)`` counts, error code). ``forced``: ``(0, 0)``, or ``(N, S)`` tags to use."""
    N, K = idx.shape
    S = offsets.shape[0]
    H = (S + 1) * W + S * (2 if tags_on else 1)
    counts = np.zeros((N, S), np.int64)
    b = np.zeros((N, S), np.int64)
    tag = np.zeros((N, S), np.int64)
    lens = np.zeros((N, 4), np.int64)
    sizes = np.zeros(N, np.int64)
    full = np.zeros((N, S), np.int64)
    skip = np.zeros(S, np.bool_)
    for n in range(N):
        if not plan_row(idx[n], n, offsets, numels, bmax, W, tags_on, forced, skip, full, counts, b, tag, lens):
            return np.zeros(0, np.uint8), sizes, counts, BAD_INDICES
    total = 0
    for n in range(N):
        sizes[n] = H + lens[n, 0] + lens[n, 1] + lens[n, 2] + lens[n, 3]
        total += sizes[n]
    out = np.zeros(total, np.uint8)
    rw, uw = stream_words(lens)
    p = 0
    for n in range(N):
        p = write_row(out, p, idx[n], n, offsets, numels, W, tags_on, full, counts, b, tag, lens, rw, uw)
    return out, sizes, counts, OK


@on_warm
def _warm() -> None:
    idx = np.array([[1, 4, 7, 15]], np.int64)
    for tags_on in (0, 1):
        sections_encode(idx, *WARM_TABLES, 16, 4, tags_on, CHOOSE)


# A small layout for the warm-up calls (here and in :mod:`.rice_read`): offsets, numels, bmax.
WARM_TABLES = (np.array([0, 6], np.int64), np.array([6, 10], np.int64), np.array([2, 3], np.int64))

__all__ = ["CHOOSE", "plan_row", "sections_encode", "stream_words", "write_row"]
