r"""Compiled decode of the sectioned index codes ``rice`` and ``auto`` (the bytes of
:mod:`.rice`, whose module docstring gives the layout, the errors and the caller's buffers).

How: the unary stream is read as 64-bit words holding its bits least significant first
(:mod:`.words`), so the code ends (its zero bits) come out in order, one ``cttz`` and one
``x & (x - 1)`` each; then every entry's index is a sum of three terms that need no chain of
dependent reads and no branch (:func:`_rice_section`; its checks are folded into one test after
its loops). What that buys (FC 784-512-10, two messages of 4,071 entries, one core, the kernel
alone): 33 -> 25 us with both streams as words and a quotient per entry, then 25 -> ~17 us with
the quotients' sums and each remainder read from its bytes; the loops index slices from 0, as in
:mod:`.rice`.

:func:`decode_row` also puts back the indices of tensors a tensor policy sends whole (``skip``,
see :mod:`sasg.core.codecs.implied`): such a tensor's count in the header must be 0, and its
``d_s`` indices take its place in the row, which is what merging them in afterwards gives.
"""

from __future__ import annotations

import numpy as np

from . import jit, on_warm
from .bits import any_bit_set, bit_is_set, read_int
from .rice import BAD_HEADER, BAD_SECTION, CHOOSE, OK, TRUNCATED, WARM_TABLES, _section_lengths, sections_encode
from .words import copy, load_words_lsb, trailing_zeros, u8


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
def _be64(b, k):
    """The 8 bytes ``b[k : k + 8]`` as one big-endian word (one load and a byte swap, once LLVM
    has combined the byte loads)."""
    return ((u8(b[k]) << u8(56)) | (u8(b[k + 1]) << u8(48)) | (u8(b[k + 2]) << u8(40)) | (u8(b[k + 3]) << u8(32))
            | (u8(b[k + 4]) << u8(24)) | (u8(b[k + 5]) << u8(16)) | (u8(b[k + 6]) << u8(8)) | u8(b[k + 7]))


@jit(inline="always")
def _rice_section(rb, rpos, zeros, first, bs, d_s, lo, out):
    """Decode one tensor's ``c = len(out)`` entries: remainders from bit ``rpos`` of the
    remainder stream ``rb`` (its bytes, then 8 zero bytes), quotients from where the codes end
    (``zeros``; this tensor's first code starts at stream bit ``first``). False when the
    entries pass the tensor.

    No loop carries more than one add: entry ``t``'s index is
    ``lo + t + R_t + (Q_t << bs)``, with ``Q_t = q_0 + ... + q_t = zeros[t] - first - t`` (each
    code is ``q`` ones and a zero) and ``R_t`` the sum of the first ``t + 1`` remainders (shifting
    is linear: the quotients' sum, shifted, is the sum of the shifted quotients). So the first
    loop (quotients) vectorizes, and the second (remainders) reads each from its byte with one
    word load (``bs <= 48``: its ``bs`` bits and the 7 before lie in 8 bytes) and adds. The
    indices only grow, so the last entry's range check covers all of them (the quotients' sum
    checked first keeps the shift from overflowing). What it buys against a quotient and
    remainder per entry through a funnel shift of two stream words (FC 784-512-10, one message of
    4,065 rice entries, the index decode): 11.0 -> 6.5 us."""
    c = out.shape[0]
    ubs = u8(bs)
    base = u8(lo)
    for t in range(c):
        out[t] = np.int64(base + ((zeros[t] - first - u8(t)) << ubs) + u8(t))
    if bs > 0:
        keep = u8(64) - ubs
        R = u8(0)
        for t in range(c):
            pos = rpos + u8(t) * ubs
            R += (_be64(rb, pos >> u8(3)) << (pos & u8(7))) >> keep
            out[t] += np.int64(R)
    if zeros[c - 1] - first - u8(c - 1) > u8((d_s - 1) >> bs):
        return False
    return out[c - 1] < lo + d_s


@jit(inline="always")
def _padding_ok(rb, rpos, rbits):
    """The remainder stream's padding after bit ``rpos`` (of ``rbits``, whole bytes) is zeros:
    the low ``rbits - rpos`` bits of its last byte."""
    pad = rbits - rpos
    return pad < 8 and (pad == 0 or (np.int64(rb[(rbits >> u8(3)) - u8(1)]) & ((1 << np.int64(pad)) - 1)) == 0)


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
    rb = rw.view(np.uint8)  # the remainder bytes, 8 zero bytes after them (see _rice_section)
    copy(rb[: pu - pr], data[pr:pu])
    rb[pu - pr : pu - pr + 8] = 0
    load_words_lsb(data, pu, pe, uw)
    codes = 0
    for s in range(S):
        codes += counts_row[s] if tag[s] == 1 else 0
    if not _code_ends(uw, u8(8 * lens[3]), codes, zeros):
        return BAD_SECTION, 0
    rpos = u8(0)
    code = 0
    first = u8(0)  # the stream bit where the next tensor's first code starts
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
            if not _rice_section(rb, rpos, zeros[code : code + c], first, b[s], d_s, lo, out[j : j + c]):
                return BAD_SECTION, 0
            rpos += u8(c * b[s])
            code += c
            first = zeros[code - 1] + u8(1)
        j += c
    if not _padding_ok(rb, rpos, u8(8 * lens[2])) or any_bit_set(data, region, 8 * pr):
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
