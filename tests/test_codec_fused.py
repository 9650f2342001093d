"""The paths issue #24 added to cut a hook round's fixed costs give what the paths before them gave.

* A ``rice``/``auto`` + ``fp32``/``sign`` codec's whole-message kernel
  (:mod:`sasg.core.codecs.fused`) against the same codec's own compiled path (the index code,
  the implied indices and the value format called one by one, as before): same bytes, sizes,
  decoded indices and values bit for bit, same errors on malformed input.
* The top-k kernel's block-maxima threshold for an unsampled segment against the torch
  reference (``tests/test_topk_kernel.py`` covers the rest of that kernel).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sasg.kernels
from sasg.core import Layout
from sasg.core import selection as T
from sasg.core.codecs.composite import make_codec
from sasg.core.spec import AlgorithmSettings
from sasg.kernels import topk as K
from test_codec_kernels import outcome, same
from test_codecs import random_message
from test_topk_kernel import KINDS, reference, rows_of

pytestmark = pytest.mark.skipif(not sasg.kernels.available(), reason="kernels switched off")

LAYOUT = Layout([("w", (30, 20)), ("b", (30,)), ("v", (7, 30)), ("c", (7,))])
NAMES = ["rice+fp32", "rice+sign", "auto+fp32", "auto+sign", "rice+bf16", "auto+bf16", "rice+int8", "auto+int8",
         "rice+fp16", "auto+fp16"]


def unfused(codec, fn):
    """``fn()`` with the codec's whole-message kernel set aside (its parts' kernels still on)."""
    saved = codec._fused
    codec._fused = None
    try:
        return outcome(fn)
    finally:
        codec._fused = saved


def check(codec, idx, vals):
    """Encode, encode-with-decoded-values and decode agree with and without the fused path."""
    assert codec._fused is not None
    for fn in (lambda: codec.encode_sparse(idx, vals), lambda: codec.encode_sparse_sent(idx, vals, torch.float32)):
        fast, ref = outcome(fn), unfused(codec, fn)
        assert fast[0] == ref[0] and same(fast[1], ref[1]), (fast, ref)
    kind, enc = outcome(lambda: codec.encode_sparse(idx, vals))
    if kind != "ok":
        return
    data, sizes = enc
    odd = {"bf16": vals.isnan() | ((vals != 0) & (vals.abs() < torch.finfo(torch.float32).tiny)),
           "fp16": vals.isnan()}.get(codec.value.name)
    if idx.numel() and not (odd is not None and bool(odd.any())):
        # (the fused path itself ran: a batch of messages, none empty; bf16 leaves NaN and
        # subnormal values to torch's cast, fp16 NaN: test_bf16_values_torch_may_cast_alike_on_every_
        # cpu_only, test_fp16_values_round_as_torch_casts_them)
        assert codec._fused.encode(idx, vals) is not None
        assert codec._fused.decode(data, sizes, idx.shape[1], torch.float32) is not None

    def dec():
        return codec.decode_sparse(data, sizes, idx.shape[1], torch.float32)

    fast, ref = outcome(dec), unfused(codec, dec)
    assert fast[0] == ref[0] == "ok" and same(fast[1], ref[1]), (fast, ref)
    assert torch.equal(fast[1][0], idx)
    # Each message as its sender holds it (encoded alone), taken instead of parsed: the same.
    for n in range(idx.shape[0]):
        mine = idx[n : n + 1]
        sent_data, _, sent = codec.encode_sparse_sent(mine, vals[n : n + 1], torch.float32)
        own = (n, sent_data, mine, sent)
        got = outcome(lambda: codec.decode_sparse(data, sizes, idx.shape[1], torch.float32, own=own))
        assert got[0] == "ok" and same(got[1], ref[1]), (n, got, ref)


@pytest.mark.parametrize("name", NAMES)
def test_fused_messages_equal_the_codec_parts(name):
    codec = make_codec(name, LAYOUT)
    for j, k in enumerate((1, 2, 17, 120, 400, LAYOUT.numel - 1, LAYOUT.numel)):
        for n in (1, 3):
            idx, vals = random_message(LAYOUT, n, k, seed=7 * j + n, nonfinite=(j % 2 == 1))
            check(codec, idx, vals)


@pytest.mark.parametrize("name", NAMES)
def test_fused_messages_with_whole_tensors_implied(name):
    codec = make_codec(name, LAYOUT, AlgorithmSettings(density=0.05, tensor_policy="vectors").validate())
    assert codec.implied is not None
    whole = torch.cat([torch.arange(600, 630), torch.arange(840, 847)])
    matrix = torch.cat([torch.arange(0, 600), torch.arange(630, 840)])
    for k, seed in ((0, 1), (1, 2), (40, 3), (810, 4)):
        g = torch.Generator().manual_seed(seed)
        idx = torch.stack([torch.sort(torch.cat([matrix[torch.randperm(810, generator=g)[:k]], whole])).values
                           for _ in range(3)])
        check(codec, idx, random_message(LAYOUT, 3, idx.shape[1], seed)[1])
    # a message without every entry of the whole tensors: the codec's own ValueError
    bad = torch.arange(10).unsqueeze(0)
    fn = lambda: codec.encode_sparse(bad, torch.ones(1, 10))  # noqa: E731
    assert outcome(fn)[0] == unfused(codec, fn)[0] == "ValueError"


@pytest.mark.parametrize("name", NAMES)
def test_fused_decode_turns_away_what_the_codec_turns_away(name):
    """Every single-byte corruption and truncation of a two-message batch: the same outcome."""
    codec = make_codec(name, LAYOUT, AlgorithmSettings(density=0.05, tensor_policy="vectors").validate())
    whole = torch.cat([torch.arange(600, 630), torch.arange(840, 847)])
    g = torch.Generator().manual_seed(11)
    idx = torch.stack([torch.sort(torch.cat([torch.randperm(600, generator=g)[:25], whole])).values for _ in range(2)])
    data, sizes = codec.encode_sparse(idx, random_message(LAYOUT, 2, idx.shape[1], 5)[1])
    cases = []
    for p in range(0, data.numel(), 3):
        for flip in (1, 0x80, 0xFF):
            bad = data.clone()
            bad[p] ^= flip
            cases.append((bad, sizes))
    cases += [(data[:-1], [sizes[0], sizes[1] - 1]), (data, [sizes[0] - 1, sizes[1] + 1]), (data, sizes[:1])]
    for bad, sz in cases:
        fn = lambda: codec.decode_sparse(bad, sz, idx.shape[1], torch.float32)  # noqa: E731
        fast, ref = outcome(fn), unfused(codec, fn)
        assert fast[0] == ref[0] and same(fast[1], ref[1]), (fast, ref)


@pytest.mark.parametrize("name", NAMES)
def test_own_message_is_taken_not_parsed_only_where_the_kernel_wrote_it(name):
    """Decoding with ``own`` takes that message from the caller, its bytes not read (spoilt here:
    the decode still gives the caller's entries, where without ``own`` it fails), but only where
    the caller's bytes came out of the compiled encode with those entries: bytes from another
    path (a copy, a wrapper's) or an ``own`` of the wrong shape are parsed, and spoilt bytes fail."""
    codec = make_codec(name, LAYOUT)
    idx, vals = random_message(LAYOUT, 2, 40, seed=3, specials=0.0)  # (no subnormal: see the bf16 test)
    first = idx[:1]
    mine, _, sent = codec.encode_sparse_sent(first, vals[:1], torch.float32)
    data, sizes = codec.encode_sparse(idx, vals)
    spoilt = data.clone()
    spoilt[: sizes[0]] = 0xFF  # message 0: no longer a message
    assert outcome(lambda: codec.decode_sparse(spoilt, sizes, 40, torch.float32))[0] == "CodecError"
    got = codec.decode_sparse(spoilt, sizes, 40, torch.float32, own=(0, mine, first, sent))
    assert same(got, codec.decode_sparse(data, sizes, 40, torch.float32))
    for own in ((0, mine.clone(), first, sent),  # bytes the kernel did not hand out
                (0, mine, first.clone(), sent),  # entries other than those it encoded
                (0, mine, first[:, :39].contiguous(), sent[:, :39].contiguous())):
        fn = lambda: codec.decode_sparse(spoilt, sizes, 40, torch.float32, own=own)  # noqa: E731
        assert outcome(fn)[0] == "CodecError"
        assert same(codec.decode_sparse(data, sizes, 40, torch.float32, own=own),
                    codec.decode_sparse(data, sizes, 40, torch.float32))


@pytest.mark.parametrize("special", [float("nan"), -float("nan"), 1e-40, -3e-39])
def test_bf16_values_torch_may_cast_alike_on_every_cpu_only(special):
    """``bf16``: the kernel rounds normal values, zeros and infinities itself (every CPU's cast
    agrees on those: round to nearest even) and leaves a message with a NaN or a subnormal to
    torch's cast on the codec's own path, which is what its bytes must then be."""
    codec = make_codec("rice+bf16", LAYOUT)
    idx = torch.tensor([[3, 40, 600, 700, 845]])
    vals = torch.tensor([[1.0000001, -3.4e38, -0.0, float("inf"), 2.5]])
    assert codec._fused.encode(idx, vals) is not None
    ref = unfused(codec, lambda: codec.encode_sparse(idx, vals))
    assert same(codec.encode_sparse(idx, vals), ref[1])
    vals[0, 2] = special
    assert codec._fused.encode(idx, vals) is None
    check(codec, idx, vals)


def test_fp16_values_round_as_torch_casts_them():
    """``fp16``: the kernel rounds every float32 that is not a NaN itself — normal and subnormal
    halves, ties to even, ±inf from 65520 up, float32 subnormals to signed zeros — and decodes
    every half that is not a NaN: here every float32 exponent and sign with many significands
    (all 65,536 upper halves of the bits, each with 20 lower halves that sit on and beside the
    rounding points), bytes and values against torch's cast. NaN is left to torch's cast."""
    lows = [0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2001, 0x3000, 0x7FFF, 0x8000, 0xFFFF]
    lows += torch.randint(0, 1 << 16, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    bits = torch.cat([(torch.arange(1 << 16, dtype=torch.int64) << 16) | low for low in lows])
    vals = torch.from_numpy(bits.numpy().astype(np.uint32).view(np.float32))
    vals = vals[~vals.isnan()].unsqueeze(0).contiguous()
    codec = make_codec("rice+fp16", Layout([("w", (vals.shape[1],))]))
    idx = torch.arange(vals.shape[1]).unsqueeze(0)
    fused = codec._fused.encode(idx, vals)
    assert fused is not None
    data, sizes, decoded = fused
    ref = unfused(codec, lambda: codec.encode_sparse(idx, vals))
    assert ref[0] == "ok" and torch.equal(data, ref[1][0]) and sizes == ref[1][1]
    expected = vals.to(torch.float16).float()
    assert same(decoded, expected)
    assert same(codec._fused.decode(data, sizes, vals.shape[1], torch.float32)[1], expected)
    small = torch.tensor([[1.0, float("nan")]])
    assert codec._fused.encode(torch.tensor([[0, 5]]), small) is None
    check(make_codec("rice+fp16", LAYOUT), torch.tensor([[3, 40]]), small)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_block_threshold_of_unsampled_segments(kind, dtype):
    """Segments too short for a sample but at least 64 k long take the blocks' maxima threshold."""
    gen = torch.Generator().manual_seed(3)
    for n, k in ((5_120, 51), (5_000, 50), (640, 10), (64 * 7 + 5, 7)):
        assert K.sample_plan(n, k) is None and n >= K._BLOCK * k
        x = rows_of(kind, 3, n, gen, dtype)
        idx, val = T.topk_rows(x, k)
        assert torch.equal(idx, reference(x, k)), (kind, n, k)
        assert same(val, torch.gather(x, 1, idx))
