r"""Compiled encode and decode of the sectioned index codes ``rice`` and ``auto``.

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
0.27.

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
from .bits import any_bit_set, bit_is_set, bit_length, bit_positions, clear_bit, read_int, set_bit, write_int

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


@jit
def _plan(idx, offsets, numels, bmax, d, W, tags_on, forced, counts, b, tag, lens):
    """Pass 1 and 2 of the encoder: check the rows, count each tensor's entries, choose ``b_s``
    (``floor(log2(mean gap))`` capped by ``bmax``) and the tag (``forced[n, s]`` when ``forced``
    has rows: tests reach every section that way), and the section lengths
    ``lens[n] = (n0 W, bitmap bytes, remainder bytes, unary bytes)``. False on bad indices."""
    N, K = idx.shape
    S = offsets.shape[0]
    for n in range(N):
        prev = np.int64(-1)
        s = 0
        for j in range(K):
            x = idx[n, j]
            if x <= prev or x >= d:
                return False
            while x >= offsets[s] + numels[s]:
                s += 1
            counts[n, s] += 1
            prev = x
        j = 0
        ubits = np.int64(0)
        for s in range(S):
            c = counts[n, s]
            bs = np.int64(0)
            sumq = np.int64(0)
            if c > 0:
                sum_gap = idx[n, j + c - 1] - offsets[s] + 1 - c
                bs = max(bit_length(sum_gap // c) - 1, 0)
                bs = min(bs, bmax[s])
                prev = offsets[s] - 1
                for t in range(j, j + c):
                    sumq += (idx[n, t] - prev - 1) >> bs
                    prev = idx[n, t]
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
            b[n, s] = bs
            tag[n, s] = tg
            if tg == 1:
                ubits += sumq + c
            j += c
        _section_lengths(counts[n], b[n], tag[n], numels, W, lens[n])
        lens[n, 3] = (ubits + 7) // 8
    return True


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
    if not _plan(idx, offsets, numels, bmax, d, W, tags_on, forced, counts, b, tag, lens):
        return np.zeros(0, np.uint8), sizes, counts, BAD_INDICES
    total = 0
    for n in range(N):
        sizes[n] = H + lens[n, 0] + lens[n, 1] + lens[n, 2] + lens[n, 3]
        total += sizes[n]
    out = np.zeros(total, np.uint8)
    p = 0
    for n in range(N):
        for s in range(S):
            write_int(out, p + s * W, counts[n, s], W)
            out[p + (S + 1) * W + s] = b[n, s]
            if tags_on:
                out[p + (S + 1) * W + S + s] = tag[n, s]
        write_int(out, p + S * W, lens[n, 3], W)
        p0 = p + H  # idx32 section, then bitmap, remainders, unary
        p2 = p0 + lens[n, 0]
        pr = p2 + lens[n, 1]
        pu = pr + lens[n, 2]
        end = pu + lens[n, 3]
        out[pu:end] = 0xFF
        acc = np.int64(0)  # remainder bits not yet written (nacc < 8 of them)
        nacc = 0
        ubit = 8 * pu
        region = 8 * p2
        j = 0
        for s in range(S):
            c = counts[n, s]
            tg = tag[n, s]
            if tg == 0:
                for t in range(j, j + c):
                    write_int(out, p0, idx[n, t], W)
                    p0 += W
            elif tg == 2:
                for t in range(j, j + c):
                    set_bit(out, region + idx[n, t] - offsets[s])
                region += numels[s]
            else:
                bs = b[n, s]
                prev = offsets[s] - 1
                for t in range(j, j + c):
                    g = idx[n, t] - prev - 1
                    prev = idx[n, t]
                    q = g >> bs
                    if bs > 0:
                        acc = (acc << bs) | (g - (q << bs))
                        nacc += bs
                        while nacc >= 8:
                            nacc -= 8
                            out[pr] = (acc >> nacc) & 0xFF
                            pr += 1
                        acc &= (np.int64(1) << nacc) - 1
                    ubit += q
                    clear_bit(out, ubit)
                    ubit += 1
            j += c
        if nacc > 0:
            out[pr] = (acc << (8 - nacc)) & 0xFF
        p = end
    return out, sizes, counts, OK


@jit
def _header(data, a, size, tail, nnz, numels, bmax, W, tags_on, counts_row, b, tag, lens):
    """Read and check one message's header (at ``data[a:]``, ``size`` bytes); fill its counts,
    parameters, tags and section lengths as in :func:`_plan`. An error code."""
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
def _unary_ends(data, pu, pe, counts_row, tag, zeros):
    """Where each code of the unary stream ``data[pu:pe]`` ends (its zero), into ``zeros``; False
    unless the stream holds exactly one code (``1^q 0``) per rice-coded entry, ends in the byte of
    its last code and is padded with ones."""
    codes = 0
    for s in range(tag.shape[0]):
        codes += counts_row[s] if tag[s] == 1 else 0
    if bit_positions(data, pu, pe, 255, codes, zeros) != codes:
        return False
    return ((zeros[codes - 1] + 1 if codes else 0) + 7) // 8 == pe - pu


@jit(inline="always")
def _idx32_section(data, p, W, c, lo, d_s, out, n, j):
    """Read one tensor's ``c`` idx32 indices at ``data[p:]`` into ``out[n, j:]``; False unless
    they ascend and lie in its range ``lo .. lo + d_s - 1``."""
    prev = np.int64(-1)
    for t in range(c):
        x = read_int(data, p + t * W, W)
        if x < lo or x >= lo + d_s or (t > 0 and x <= prev):
            return False
        out[n, j + t] = x
        prev = x
    return True


@jit(inline="always")
def _bitmap_section(data, region, d_s, c, lo, out, n, j):
    """Read one tensor's bitmap (its ``d_s`` bits from stream bit ``region``) into ``out[n, j:]``;
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
            out[n, j + found] = lo + pos - region
            found += 1
        pos += 1
    return found == c


@jit
def sections_decode(data, starts, sizes, tail, nnz, offsets, numels, bmax, W, tags_on, out):
    """The messages at ``starts`` (``sizes`` bytes, each ending in ``tail`` value bytes) ->
    indices into ``out`` ``(N, nnz)``; returns (``(N, S)`` counts, index bytes used per message,
    error code)."""
    N = starts.shape[0]
    S = offsets.shape[0]
    H = (S + 1) * W + S * (2 if tags_on else 1)
    counts = np.zeros((N, S), np.int64)
    used = np.zeros(N, np.int64)
    b = np.zeros(S, np.int64)
    tag = np.zeros(S, np.int64)
    lens = np.zeros(4, np.int64)
    zeros = np.empty(nnz + 8, np.int64)  # where each unary code ends, from the stream's first bit
    for n in range(N):
        a = starts[n]
        err = _header(data, a, sizes[n], tail, nnz, numels, bmax, W, tags_on, counts[n], b, tag, lens)
        if err != OK:
            return counts, used, err
        p0 = a + H
        p2 = p0 + lens[0]
        pr = p2 + lens[1]
        pu = pr + lens[2]
        pe = pu + lens[3]
        used[n] = pe - a
        if not _unary_ends(data, pu, pe, counts[n], tag, zeros):
            return counts, used, BAD_SECTION
        code = 0
        end = np.int64(-1)  # where the previous code ended
        racc = np.int64(0)  # remainder bits read but not yet used (rn < 8 of them between entries)
        rn = 0
        region = 8 * p2
        j = 0
        for s in range(S):
            c = counts[n, s]
            lo = offsets[s]
            d_s = numels[s]
            if tag[s] == 0:
                if not _idx32_section(data, p0, W, c, lo, d_s, out, n, j):
                    return counts, used, BAD_SECTION
                p0 += c * W
                j += c
            elif tag[s] == 2:
                if not _bitmap_section(data, region, d_s, c, lo, out, n, j):
                    return counts, used, BAD_SECTION
                j += c
                region += d_s
            else:
                bs = b[s]
                mask = (np.int64(1) << bs) - 1
                qmax = (d_s - 1) >> bs  # a larger quotient puts the gap past the tensor
                loc = np.int64(0)  # entries so far plus their gaps: the next local index
                for t in range(c):
                    r = np.int64(0)
                    if bs > 0:
                        while rn < bs:
                            racc = (racc << 8) | np.int64(data[pr])
                            pr += 1
                            rn += 8
                        rn -= bs
                        r = (racc >> rn) & mask
                        racc &= (np.int64(1) << rn) - 1
                    q = zeros[code] - end - 1
                    end = zeros[code]
                    code += 1
                    if q > qmax:
                        return counts, used, BAD_SECTION
                    loc += (q << bs) + r + 1
                    if loc > d_s:
                        return counts, used, BAD_SECTION
                    out[n, j] = lo + loc - 1
                    j += 1
        if racc != 0 or any_bit_set(data, region, 8 * (p2 + lens[1])):
            return counts, used, BAD_SECTION
    return counts, used, OK


@on_warm
def _warm() -> None:
    offsets = np.array([0, 6], np.int64)
    numels = np.array([6, 10], np.int64)
    bmax = np.array([2, 3], np.int64)
    idx = np.array([[1, 4, 7, 15]], np.int64)
    for tags_on in (0, 1):
        data, sizes, _, _ = sections_encode(idx, offsets, numels, bmax, 16, 4, tags_on, CHOOSE)
        sections_decode(data, np.zeros(1, np.int64), sizes, 0, 4, offsets, numels, bmax, 4, tags_on,
                        np.empty((1, 4), np.int64))


__all__ = ["CHOOSE", "sections_decode", "sections_encode"]
