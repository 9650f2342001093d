r"""Whole sparse messages of a ``rice``/``auto`` + ``fp32``/``sign``/``bf16``/``fp16``/``int8`` codec in
one compiled call:
the index part (:mod:`.rice`, :mod:`.rice_read`), the tensors a tensor policy sends whole
(their indices implied: :mod:`sasg.core.codecs.implied`) and the value part (:mod:`.values`).

Why: a message of a few thousand entries went through five compiled calls (split the implied
indices, encode the index part, the value part, then on receipt decode and merge) and some forty
torch and numpy calls around them, each a few microseconds: on FC 784-512-10 the fixed costs
were most of the hook's encode (0.05 ms) and decode (0.09 ms for two messages). Here one call
per batch writes (or reads) every byte; the member (:mod:`sasg.core.codecs.fused`) makes the
arrays and wraps the results.

The bytes are the codec's, as its reference path writes them (``tests/test_codec_fused.py``
compares both): per message ``[index part][value part]``, the index part counting no entry of a
whole tensor. Any error gives a nonzero code and writes nothing the caller keeps: the member then
runs the codec's own path, which raises the error that names the message.

``tables``: ``(4, S)`` int64, rows offsets, numels, ``bmax`` and whether the tensor is sent
whole. Value kinds: :data:`FP32` (float32 values, their bytes), :data:`SIGN`, :data:`BF16`,
:data:`INT8` and :data:`FP16`.
"""

from __future__ import annotations

import numpy as np

from . import jit, on_warm
from .rice import CHOOSE, OK, plan_row, stream_words, write_row
from .rice_read import decode_row
from .values import int8_decode_row, int8_encode_row, sign_decode_row, sign_encode_row
from .words import copy

FP32 = 1
SIGN = 2
BF16 = 3
INT8 = 4
FP16 = 5
BAD = 9  # anything wrong: the caller takes the codec's own path

ieee = jit(error_model="numpy")  # IEEE division, as in sasg.kernels.values


@jit(inline="always")
def value_bytes(kind, K, S):
    """Bytes of a message's value part: ``4 K`` for fp32, ``2 K`` for bf16, ``4 S + K`` for int8,
    ``4 S + ceil(K / 8)`` for sign."""
    if kind == FP32:
        return 4 * K
    if kind == INT8:
        return 4 * S + K
    return 2 * K if kind == BF16 or kind == FP16 else 4 * S + (K + 7) // 8


@jit(inline="always")
def _bf16_encode_row(bits, out, dec):
    """float32 values (their ``bits``) as bfloat16, round to nearest, ties to even, 2 bytes each
    little-endian into ``out``; what they decode to (the bf16 bits shifted up) into ``dec``.
    False where a value is a NaN or a nonzero subnormal: torch's cast of those may depend on the
    CPU (every NaN came out 0xFFFF on the AMD EPYC these were written on; AVX512-BF16's
    conversion instruction keeps NaN payloads and treats subnormal inputs as zero), so the codec's
    own path casts them as torch does."""
    odd = np.uint32(0)
    for t in range(bits.shape[0]):
        x = bits[t]
        a = x & np.uint32(0x7FFFFFFF)
        odd |= np.uint32(a > np.uint32(0x7F800000)) | np.uint32((a != 0) & (a < np.uint32(0x00800000)))
        w = (x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        out[2 * t] = np.uint8(w & np.uint32(0xFF))
        out[2 * t + 1] = np.uint8(w >> np.uint32(8))
        dec[t] = w << np.uint32(16)
    return odd == 0


@jit(inline="always")
def _bf16_decode_row(part, out):
    """2 bytes a value, little-endian bfloat16 -> float32 bits (exact: the bits shifted up)."""
    for t in range(out.shape[0]):
        out[t] = (np.uint32(part[2 * t]) | (np.uint32(part[2 * t + 1]) << np.uint32(8))) << np.uint32(16)


@jit(inline="always")
def _fp16_encode_row(bits, out, dec):
    """float32 values (their ``bits``) as IEEE half, round to nearest, ties to even (subnormal
    halves below 2^-14, ±inf from 65520 up), 2 bytes each little-endian into ``out``; what they
    decode to (float32 bits) into ``dec``. False where a value is a NaN: torch's cast keeps a NaN's
    payload on one CPU path (F16C's conversion) and makes it 0x7E00 on another (its scalar code).
    Everything else is IEEE's rounding on every path (F16C ignores flush-to-zero here, and a float32
    subnormal rounds to a signed zero either way), so the kernel may do it."""
    nan = np.uint32(0)
    for t in range(bits.shape[0]):
        x = bits[t]
        a = x & np.uint32(0x7FFFFFFF)
        nan |= np.uint32(a > np.uint32(0x7F800000))
        e = a >> np.uint32(23)
        # normal halves: rebias the exponent (127 -> 15) and round the 13 bits dropped
        normal = (a - np.uint32(0x38000000) + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        # subnormal halves (units of 2^-24): the significand m * 2^(e - 150) shifted by 126 - e,
        # rounded; below 2^-25 (e < 102) every value rounds to zero (the shift kept in 14..24,
        # where it is defined, for the lanes whose result is not taken)
        m = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        sh = np.uint32(126) - min(max(e, np.uint32(102)), np.uint32(112))
        sub = (m + (np.uint32(1) << (sh - np.uint32(1))) - np.uint32(1) + ((m >> sh) & np.uint32(1))) >> sh
        sub = sub if e >= np.uint32(102) else np.uint32(0)
        h = np.uint32(0x7C00) if a >= np.uint32(0x477FF000) else (normal if a >= np.uint32(0x38800000) else sub)
        h |= (x >> np.uint32(16)) & np.uint32(0x8000)
        out[2 * t] = np.uint8(h & np.uint32(0xFF))
        out[2 * t + 1] = np.uint8(h >> np.uint32(8))
        dec[t] = _half_bits(h)
    return nan == 0


@jit(inline="always")
def _half_bits(h):
    """The float32 bits of IEEE half ``h`` (not a NaN): exact. A subnormal half ``m 2^-24`` is a
    normal float32: its bits from the float product (exact)."""
    a = h & np.uint32(0x7FFF)
    s = (h & np.uint32(0x8000)) << np.uint32(16)
    if a >= np.uint32(0x7C00):
        return s | np.uint32(0x7F800000)
    if a >= np.uint32(0x0400):
        return s | ((a << np.uint32(13)) + np.uint32(0x38000000))
    return s | np.float32(np.float32(a) * np.float32(5.9604644775390625e-08)).view(np.uint32)


@jit(inline="always")
def _fp16_decode_row(part, out):
    """2 bytes a value, little-endian IEEE half -> float32 bits (exact); False on a NaN half (its
    payload is torch's cast's business, as on the way in)."""
    nan = np.uint32(0)
    for t in range(out.shape[0]):
        h = np.uint32(part[2 * t]) | (np.uint32(part[2 * t + 1]) << np.uint32(8))
        nan |= np.uint32((h & np.uint32(0x7FFF)) > np.uint32(0x7C00))
        out[t] = _half_bits(h)
    return nan == 0


@jit(inline="always")
def _sign_values(v, at, mag, dec):
    """What every receiver decodes from a message :func:`.values.sign_encode_row` wrote (its
    magnitudes' bits ``mag``): ``+-m_s``, the sign bit of ``v < 0`` flipped in as the decoder flips
    it in. From the values, not the bytes: one vector pass, where reading the bits back cost 3 us."""
    for s in range(mag.shape[0]):
        vs = v[at[s] : at[s + 1]]
        out = dec[at[s] : at[s + 1]]
        for t in range(vs.shape[0]):
            out[t] = mag[s] ^ (np.uint32(vs[t] < 0) << np.uint32(31))


@ieee
def encode_messages(idx, v, tables, W, tags_on, kind, dec):
    """``(N, K)`` ascending indices and float32 values ``v`` -> (the messages back to back,
    their sizes, error code); for the lossy kinds the values every receiver decodes go to ``dec``
    (``(N, K)`` float32)."""
    N, K = idx.shape
    vb = v.view(np.uint8)  # (N, 4 K)
    dec_bits = dec.view(np.uint32)
    offsets, numels, bmax, skip = tables[0], tables[1], tables[2], tables[3]
    S = offsets.shape[0]
    H = (S + 1) * W + S * (2 if tags_on else 1)
    V = value_bytes(kind, K, S)
    counts = np.zeros((N, S), np.int64)
    full = np.zeros((N, S), np.int64)  # entries per tensor, whole ones included
    b = np.zeros((N, S), np.int64)
    tag = np.zeros((N, S), np.int64)
    lens = np.zeros((N, 4), np.int64)
    sizes = np.zeros(N, np.int64)
    for n in range(N):
        if not plan_row(idx[n], n, offsets, numels, bmax, W, tags_on, CHOOSE, skip, full, counts, b, tag, lens):
            return np.zeros(0, np.uint8), sizes, BAD
    total = 0
    for n in range(N):
        sizes[n] = H + lens[n, 0] + lens[n, 1] + lens[n, 2] + lens[n, 3] + V
        total += sizes[n]
    out = np.zeros(total, np.uint8)
    rw, uw = stream_words(lens)
    at = np.zeros(S + 1, np.int64)
    mag = np.zeros(S, np.float32)
    p = 0
    for n in range(N):
        q = write_row(out, p, idx[n], n, offsets, numels, W, tags_on, full, counts, b, tag, lens, rw, uw)
        if kind == FP32:
            copy(out[q : q + V], vb[n])
        elif kind == BF16:
            if not _bf16_encode_row(v[n].view(np.uint32), out[q : q + V], dec_bits[n]):
                return np.zeros(0, np.uint8), sizes, BAD
        elif kind == FP16:
            if not _fp16_encode_row(v[n].view(np.uint32), out[q : q + V], dec_bits[n]):
                return np.zeros(0, np.uint8), sizes, BAD
        elif kind == INT8:  # (what receivers decode: read back from the bytes, by their code)
            for s in range(S):
                at[s + 1] = at[s] + full[n, s]
            int8_encode_row(v[n], at, out[q : q + V], mag)
            if int8_decode_row(out[q : q + V], at, dec[n], mag) != OK:
                return np.zeros(0, np.uint8), sizes, BAD
        else:
            for s in range(S):
                at[s + 1] = at[s] + full[n, s]
            sign_encode_row(v[n], at, out[q : q + V], mag)
            _sign_values(v[n], at, mag.view(np.uint32), dec_bits[n])
        p = q + V
    return out, sizes, OK


@ieee
def decode_messages(data, sizes, tables, W, tags_on, kind, vals, out, own, own_idx, own_val):
    """The messages of ``data`` (``sizes`` bytes each, back to back) -> ``out`` ``(N, K)``
    indices and ``vals`` ``(N, K)`` float32 values; an error code. Message ``own`` (``-1``:
    none) is the caller's own, whose decoded form it has (``own_idx``, ``own_val``: ``(1, K)``
    indices and float32 values): copied, not parsed."""
    N, K = out.shape
    vbits = vals.view(np.uint32)
    offsets, numels, bmax, skip = tables[0], tables[1], tables[2], tables[3]
    S = offsets.shape[0]
    V = value_bytes(kind, K, S)
    implied = 0
    for s in range(S):
        implied += numels[s] if skip[s] else 0
    total = 0
    for n in range(N):
        if sizes[n] < 0:
            return BAD
        total += sizes[n]
    if total != data.shape[0] or K < implied:
        return BAD
    counts = np.zeros(S, np.int64)
    b = np.zeros(S, np.int64)
    tag = np.zeros(S, np.int64)
    lens = np.zeros(4, np.int64)
    rw = np.empty(sizes.max() // 8 + 2 if N else 0, np.uint64)
    uw = np.empty_like(rw)
    zeros = np.empty(K + 64, np.uint64)
    at = np.zeros(S + 1, np.int64)
    scratch = np.zeros(S, np.float32)
    a = 0
    for n in range(N):
        if n == own:
            if own_idx.shape != (1, K) or own_val.shape != (1, K):
                return BAD
            copy(out[n], own_idx[0])
            copy(vbits[n], own_val[0].view(np.uint32))
            a += sizes[n]
            continue
        err, used = decode_row(data, a, sizes[n], V, K - implied, offsets, numels, bmax, W, tags_on, skip, out[n],
                               counts, b, tag, lens, rw, uw, zeros)
        if err != OK or used + V != sizes[n]:
            return BAD
        part = data[a + used : a + sizes[n]]
        if kind == FP32:
            copy(vals[n].view(np.uint8), part)
        elif kind == BF16:
            _bf16_decode_row(part, vbits[n])
        elif kind == FP16:
            if not _fp16_decode_row(part, vbits[n]):
                return BAD
        elif kind == INT8:
            for s in range(S):
                at[s + 1] = at[s] + (numels[s] if skip[s] else counts[s])
            if int8_decode_row(part, at, vals[n], scratch) != OK:
                return BAD
        else:
            for s in range(S):
                at[s + 1] = at[s] + (numels[s] if skip[s] else counts[s])
            if sign_decode_row(part, at, vbits[n], scratch) != OK:
                return BAD
        a += sizes[n]
    return OK


@on_warm
def _warm() -> None:
    tables = np.array([[0, 6], [6, 10], [2, 3], [0, 1]], np.int64)
    idx = np.array([[1, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]], np.int64)
    v = np.ones(idx.shape, np.float32)
    for kind in (FP32, SIGN, BF16, INT8, FP16):
        for tags_on in (0, 1):
            dec = np.empty(idx.shape, np.float32)
            data, sizes, _ = encode_messages(idx, v, tables, 4, tags_on, kind, dec)
            for own in (-1, 0):
                decode_messages(data, sizes, tables, 4, tags_on, kind, dec, np.empty_like(idx), own, idx, dec)


__all__ = ["BAD", "BF16", "FP16", "FP32", "INT8", "SIGN", "decode_messages", "encode_messages", "value_bytes"]
