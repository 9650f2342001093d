r"""Compiled encode and decode of the per-tensor value formats ``sign`` and ``int8`` (sparse
messages: a row's values come tensor by tensor, ``counts[r, s]`` of them in tensor ``s``).

The bytes are :mod:`sasg.core.codecs.value.sign`'s and :mod:`~sasg.core.codecs.value.int8`'s,
whose torch code is the reference; the arithmetic is the same IEEE arithmetic in the same order:

* ``sign``: ``m_s`` = float32 of (the float64 sum of ``|v_j|``, summed in order, divided by
  ``c_s``), then one bit per value (``v < 0``); decoded ``±m_s``, the minus a flip of the sign bit
  (as torch's ``neg``, NaN included).
* ``int8``: ``a_s = max |v_j| / 127`` in float32 (a NaN propagates: the last NaN of the tensor,
  as torch's ``segment_reduce``), ``q = clamp(rint(v / a_s), -127, 127)`` with a non-finite
  quotient written as 0; decoded ``float32(q) a_s``.

What they buy (FC 784-512-10, one message of 4,071 entries, median ms on 2 loaded cores,
torch -> kernel; torch: segment_reduce, packbits, repeat_interleave, where, the scale checks):
``sign`` encode 0.05-0.10 -> 0.012-0.019, decode 0.11-0.13 -> 0.012-0.019; ``int8`` encode
0.05 -> 0.02, decode 0.08-0.13 -> 0.011-0.017. ``fp32``/``fp16``/``bf16`` stay one batched
torch cast each here (0.003-0.007 ms a message, encode or decode: nothing for a kernel to buy);
the whole-message kernel (:mod:`.messages`) writes fp32, bf16 and fp16 values itself, and calls
the row functions of sign and int8 below.

Errors (decode): a padding bit set, the int8 value -128, a negative scale or a nonzero scale for
an empty tensor give a nonzero code; the member then reruns the reference, which raises the
existing error. Rows are read only within their ``4 S + ...`` bytes.
"""

from __future__ import annotations

import numpy as np

from . import jit, on_warm

OK = 0
BAD_SHAPE = 1  # counts that do not fit the row (a caller's bug, never the bytes)
BAD_VALUE = 2  # padding bit, -128, or a scale no encoder writes

_SIGN = np.uint32(0x80000000)
u4 = np.uint32

# IEEE float division, as torch's (x / 0 is inf or NaN), never Python's ZeroDivisionError.
ieee = jit(error_model="numpy")


@jit
def _check_scale(bits, c):
    """A scale's float32 bits are valid: not negative (NaN aside), and 0 for an empty tensor."""
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if (bits >> np.uint32(31)) == 1 and not nan:
        return False
    return not (c == 0 and (bits & np.uint32(0x7FFFFFFF)) != 0)


@jit
def _groups(counts, n):
    """``(N, S + 1)``: where each row's tensors start (the last column ``n``); a float32 scratch
    of ``S`` scales; and whether the counts are all ``>= 0`` and sum to ``n`` in every row (else
    nothing may be read by them)."""
    N, S = counts.shape
    at = np.zeros((N, S + 1), np.int64)
    scale = np.zeros(S, np.float32)
    for r in range(N):
        for s in range(S):
            if counts[r, s] < 0:
                return at, scale, False
            at[r, s + 1] = at[r, s] + counts[r, s]
        if at[r, S] != n:
            return at, scale, False
    return at, scale, True


@jit(fastmath={"reassoc"})
def _scan_signs(vs, bits, neg):
    """One tensor's values ``vs`` (``bits``: the same, as uint32) in one vector pass: each one's
    ``v < 0`` into ``neg`` (a byte 0/1 each), the float64 sum of their magnitudes in whatever
    order the vector units like, and whether that sum is exact, i.e. the in-order sum bit for bit.

    Exact when every partial sum is: no inf or NaN, and ``log2(n) + e_max - e_min <= 29`` over
    the nonzero magnitudes (each a multiple of the smallest one's unit in the last place,
    ``2^(e_min - 150)``; every sum stays below ``n 2^(e_max - 126)``, which then has at most 53
    bits of those units). Top-k values of one tensor span a few binades: exact in practice. A
    chain of ``n`` dependent float64 adds took ~3.5 us on FC's 4,587 values.

    ``e_max`` and ``e_min`` come from the largest and the smallest nonzero magnitude's bits (the
    exponent grows with them): the smallest as the minimum of ``|bits| - 1``, where a zero wraps
    to the top. Every step is cast back to uint32: numba widens uint32 arithmetic to 64 bits,
    and AVX2 has no 64-bit unsigned min or max, so the widened loop ran ~10x slower (FC's 4,015
    values: 1.6 us for the exponents, against 0.17 in 32-bit lanes).

    Only reassociation is allowed here (no fast NaN or inf assumptions), and the sign test is
    on the bits: ``v < 0`` holds for the bits ``0x80000001 .. 0xFF800000`` (not -0, not NaN)."""
    n = bits.shape[0]
    amax = u4(0)
    amin = u4(0xFFFFFFFF)  # the smallest nonzero magnitude's bits, minus one
    tot = 0.0
    for t in range(n):
        x = bits[t]
        neg[t] = np.uint8((x - u4(0x80000001)) <= u4(0x7F7FFFFF))
        a = u4(x & u4(0x7FFFFFFF))
        amax = max(amax, a)
        amin = min(amin, u4(a - u4(1)))
        tot += abs(np.float64(vs[t]))
    hi = np.int64(amax >> u4(23))  # (255: an inf or NaN)
    # a subnormal's unit in the last place is the smallest normal's; no nonzero magnitude: 255
    lo = np.int64(255) if amin == u4(0xFFFFFFFF) else max(np.int64((amin + u4(1)) >> u4(23)), np.int64(1))
    width = np.int64(0)
    while (np.int64(1) << width) <= n:  # the bits of n: above log2(n)
        width += 1
    return tot, hi < 255 and (hi < lo or width + hi - lo <= 29)


@jit(inline="always")
def _le64(b, k):
    """The 8 bytes ``b[k : k + 8]`` as a little-endian word (on any machine; one load where it
    is little-endian)."""
    g = b[k : k + 8]
    x = np.uint64(0)
    for j in range(8):
        x |= np.uint64(g[j]) << np.uint64(8 * j)
    return x


@jit(inline="always")
def sign_encode_row(v, at, out, mag):
    """One message: its values ``v``, tensor ``s`` at ``v[at[s]:at[s + 1]]``, into ``out``
    (``4 S + ceil(n / 8)`` bytes); ``mag``: ``S`` float32 of scratch.

    Vector passes only (:func:`_scan_signs`, then the packing below); slices indexed from 0
    spare numba's negative-index fix-up."""
    S = mag.shape[0]
    vbits = v.view(np.uint32)
    n = v.shape[0]
    m = (n + 7) // 8
    neg = np.zeros(8 * m, np.uint8)  # v < 0, a byte each (the last byte's padding: zeros)
    for s in range(S):
        a, b = at[s], at[s + 1]
        tot, exact = _scan_signs(v[a:b], vbits[a:b], neg[a:b])
        if not exact:
            vs = v[a:b]
            tot = 0.0
            for t in range(vs.shape[0]):  # (in order, in float64: the reference's sum)
                tot += abs(np.float64(vs[t]))
        mag[s] = np.float32(tot / (b - a)) if b > a else np.float32(0.0)
    mb = mag.view(np.uint8)
    for t in range(4 * S):
        out[t] = mb[t]
    # Eight of those bytes, read as one little-endian word, times 0x8040201008040201: byte j
    # lands on bit 63 - j and no two terms overlap, so the top byte is the eight sign bits, first
    # value first. (A byte built from eight compares: 2.2 us on FC's 4,587 values; this, 0.4.)
    bits = out[4 * S : 4 * S + m]
    for i in range(m):
        bits[i] = np.uint8((_le64(neg, 8 * i) * np.uint64(0x8040201008040201)) >> np.uint64(56))


@ieee
def sign_encode(v, counts, out):
    """``(N, n)`` float32 values -> ``out``, zeroed ``(N, 4 S + ceil(n / 8))`` bytes; an error code."""
    at, mag, ok = _groups(counts, v.shape[1])
    if not ok:
        return BAD_SHAPE
    for r in range(v.shape[0]):
        sign_encode_row(v[r], at[r], out[r], mag)
    return OK


@jit(inline="always")
def sign_decode_row(row, at, out, scratch):
    """One message's ``4 S + ceil(n / 8)`` bytes ``row`` (tensor ``s``: values
    ``at[s]:at[s + 1]``) -> ``out``, ``n`` float32 bits (as uint32); an error code.
    ``scratch``: ``S`` float32."""
    S, n, V = scratch.shape[0], out.shape[0], row.shape[0]
    mag, mb = scratch.view(np.uint32), scratch.view(np.uint8)
    for t in range(4 * S):
        mb[t] = row[t]
    if n % 8 and (row[V - 1] & ((1 << (8 - n % 8)) - 1)) != 0:
        return BAD_VALUE
    for s in range(S):
        if not _check_scale(mag[s], at[s + 1] - at[s]):
            return BAD_VALUE
    # Two vector passes, no branch (a sign is a coin flip to predict): every value's sign bit, a
    # byte of bits at a time; then each tensor's magnitude flipped in (2.6 -> 0.5 us on FC).
    bits = row[4 * S :]
    for i in range(n // 8):
        group = out[8 * i : 8 * i + 8]
        byte = np.uint32(bits[i])
        for j in range(8):
            group[j] = ((byte >> np.uint32(7 - j)) & np.uint32(1)) << np.uint32(31)
    for t in range(n - n % 8, n):
        out[t] = ((np.uint32(bits[t >> 3]) >> np.uint32(7 - (t & 7))) & np.uint32(1)) << np.uint32(31)
    for s in range(S):
        vals = out[at[s] : at[s + 1]]
        for t in range(vals.shape[0]):
            vals[t] ^= mag[s]
    return OK


@ieee
def sign_decode(rows, counts, n, out):
    """``(N, 4 S + ceil(n / 8))`` bytes -> ``out``: ``(N, n)`` float32 bits (as uint32); an error code."""
    (N, V), S = rows.shape, counts.shape[1]
    at, scratch, ok = _groups(counts, n)
    if not ok or V != 4 * S + (n + 7) // 8:
        return BAD_SHAPE
    for r in range(N):
        err = sign_decode_row(rows[r], at[r], out[r], scratch)
        if err != OK:
            return err
    return OK


@jit(inline="always")
def int8_encode_row(v, at, out, scale):
    """One message: its float32 values ``v`` (tensor ``s`` at ``v[at[s]:at[s + 1]]``) into
    ``out`` (``4 S + n`` bytes: the scales, then a byte a value); ``scale``: ``S`` float32 of
    scratch.

    Each tensor's largest magnitude is the largest of its magnitudes' bits (the order of
    non-negative floats, inf included), a vector max in 32-bit lanes; only a tensor with a NaN
    (bits above inf's) takes the loop in order that finds the reference's NaN. With a compare
    and a branch per value for the maximum, this row took 6.2 us on FC's 4,589 values; now 1.3,
    the quotients also converted through int32 (AVX2 has no vector conversion to int64)."""
    S = scale.shape[0]
    q = out[4 * S :]
    vb = v.view(np.uint32)
    top = np.zeros(1, np.uint32)
    for s in range(S):
        vs = v[at[s] : at[s + 1]]
        bs = vb[at[s] : at[s + 1]]
        most = u4(0)
        for t in range(bs.shape[0]):
            most = max(most, u4(bs[t] & u4(0x7FFFFFFF)))
        top[0] = most
        m = top.view(np.float32)[0]
        if most > u4(0x7F800000):  # a NaN: the reference's, the last one, found in order
            m = np.float32(0.0)
            for t in range(vs.shape[0]):
                a = abs(vs[t])
                if np.isnan(a) or m < a:
                    m = a
        a_s = m / np.float32(127.0)
        scale[s] = a_s
        qs = q[at[s] : at[s + 1]]
        for t in range(vs.shape[0]):
            x = vs[t] / a_s
            if not np.isfinite(x):
                x = np.float32(0.0)
            x = min(max(np.rint(x), np.float32(-127.0)), np.float32(127.0))
            qs[t] = np.uint8(np.int32(x) & np.int32(0xFF))
    sb = scale.view(np.uint8)
    for t in range(4 * S):
        out[t] = sb[t]


@jit(inline="always")
def int8_decode_row(row, at, out, scale):
    """One message's ``4 S + n`` bytes ``row`` -> ``out``, ``n`` float32 values; an error code.
    ``scale``: ``S`` float32 of scratch."""
    S = scale.shape[0]
    sb, sbits = scale.view(np.uint8), scale.view(np.uint32)
    for t in range(4 * S):
        sb[t] = row[t]
    q = row[4 * S :]
    for s in range(S):
        if not _check_scale(sbits[s], at[s + 1] - at[s]):
            return BAD_VALUE
        qs = q[at[s] : at[s + 1]]
        dst = out[at[s] : at[s + 1]]
        a_s = scale[s]
        bad = np.int32(0)
        for t in range(qs.shape[0]):  # (no exit inside: a vector loop, FC's 4,589 values 3.0 -> 0.95 us)
            b = np.int32(np.int8(qs[t]))
            bad |= np.int32(b == np.int32(-128))
            dst[t] = np.float32(b) * a_s
        if bad:
            return BAD_VALUE
    return OK


@ieee
def int8_encode(v, counts, out):
    """``(N, n)`` float32 values -> ``out``: ``(N, 4 S + n)`` bytes; an error code."""
    at, scale, ok = _groups(counts, v.shape[1])
    if not ok:
        return BAD_SHAPE
    for r in range(v.shape[0]):
        int8_encode_row(v[r], at[r], out[r], scale)
    return OK


@ieee
def int8_decode(rows, counts, n, out):
    """``(N, 4 S + n)`` bytes -> ``out``: ``(N, n)`` float32 values; an error code."""
    (N, V), S = rows.shape, counts.shape[1]
    at, scale, ok = _groups(counts, n)
    if not ok or V != 4 * S + n:
        return BAD_SHAPE
    for r in range(N):
        err = int8_decode_row(rows[r], at[r], out[r], scale)
        if err != OK:
            return err
    return OK


@on_warm
def _warm() -> None:
    v = np.array([[0.5, -1.0, 2.0]], np.float32)
    counts = np.array([[2, 1]], np.int64)
    rows = np.zeros((1, 9), np.uint8)
    sign_encode(v, counts, rows)
    sign_decode(rows, counts, 3, np.empty((1, 3), np.uint32))
    rows = np.zeros((1, 11), np.uint8)
    int8_encode(v, counts, rows)
    int8_decode(rows, counts, 3, np.empty((1, 3), np.float32))


__all__ = ["int8_decode", "int8_decode_row", "int8_encode", "int8_encode_row", "sign_decode", "sign_decode_row",
           "sign_encode", "sign_encode_row"]
