"""INDEX+VALUE codecs: real bytes, round trips, expected quantization, and corrupted input.

How non-finite values are handled (checked below):
* ``fp32`` passes every float32 bit pattern through, NaN payloads and ±inf included (lossless);
  ``fp16``/``bf16`` cast as torch casts (NaN stays NaN, fp16 overflows to ±inf).
* ``int8``: a tensor (of one message) holding ±inf or NaN gets a non-finite scale and decodes to
  NaN throughout; the other tensors of the message are unaffected.
* ``sign``: a tensor holding ±inf or NaN has a non-finite mean magnitude; each of its values
  decodes to ±that (sign(NaN) = +). ``sign(±0) = +``.

Which corruptions a decoder can detect (there is no checksum): any change of a message's length
(truncation, trailing bytes), counts, unary lengths, out-of-range Rice parameters or tags, a
single flipped bit in a bitmap or in a unary stream, padding bits, int8 -128 and negative
scales/magnitudes, indices leaving their tensor or no longer ascending. Not detectable: a flipped
bit of a value, or of a Rice remainder / an idx32 index that still yields ascending in-range
indices; such bytes decode to another valid message (checked: never another exception type).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sasg.core import Layout, TopK
from sasg.core.codecs import bitstream
from sasg.core.codecs.bitstream import pack_bits, pack_fields, unpack_bits, unpack_fields
from sasg.core.codecs.composite import SparseCodec, make_codec, parse_codec_name
from sasg.core.codecs.index import INDEX_CODES, Auto
from sasg.core.codecs.paper32 import Paper32
from sasg.core.codecs.protocol import Codec, CodecError
from sasg.core.codecs.value import VALUE_FORMATS

INDEX = list(INDEX_CODES)
VALUE = list(VALUE_FORMATS)
FC = [("1.weight", (512, 784)), ("1.bias", (512,)), ("3.weight", (10, 512)), ("3.bias", (10,))]
SPECIALS = [0.0, -0.0, 1e-45, -1e-45, 1.17e-38, -5e-39, 3.4e38, -3.4e38, 1.0, -1.0]

HYP = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- helpers
def same_floats(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN == NaN, and the same sign of zero."""
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    eq = (a == b) | (torch.isnan(a) & torch.isnan(b))
    zero = (a == 0) & (b == 0)
    return bool(eq.all()) and bool((torch.signbit(a[zero]) == torch.signbit(b[zero])).all())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def random_message(layout: Layout, n: int, k: int, seed: int, specials: float = 0.1, nonfinite: bool = False):
    """``n`` messages of ``k`` random distinct ascending indices (so per-tensor counts vary) and
    float32 values of many magnitudes, some of them ±0 and subnormals (± inf/NaN if asked)."""
    g = torch.Generator().manual_seed(seed)
    d = layout.numel
    idx = torch.stack([torch.sort(torch.randperm(d, generator=g)[:k]).values for _ in range(n)]) if n else \
        torch.zeros(0, k, dtype=torch.long)
    scale = torch.pow(10.0, torch.randint(-6, 6, (n, k), generator=g).float())
    vals = torch.randn(n, k, generator=g) * scale
    pool = SPECIALS + ([math.inf, -math.inf, math.nan] if nonfinite else [])
    mask = torch.rand(n, k, generator=g) < specials
    picks = torch.tensor(pool, dtype=torch.float32)[torch.randint(0, len(pool), (n, k), generator=g)]
    vals = torch.where(mask, picks, vals)
    return idx, vals


def segments_of(layout: Layout, idx: torch.Tensor) -> torch.Tensor:
    bounds = torch.tensor([s.offset for s in layout.segments][1:], dtype=torch.long)
    return torch.bucketize(idx, bounds, right=True)


def expected_values(fmt: str, layout: Layout, seg: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The decoded values a format must give (float32), computed tensor by tensor in plain torch."""
    v = v.float()
    if fmt == "fp32":
        return v
    if fmt == "fp16":
        return v.to(torch.float16).float()
    if fmt == "bf16":
        return v.to(torch.bfloat16).float()
    out = torch.empty_like(v)
    for n in range(v.shape[0]):
        for s in range(len(layout.segments)):
            m = seg[n] == s
            if not bool(m.any()):
                continue
            vs = v[n][m]
            if fmt == "int8":
                scale = vs.abs().max() / 127
                q = torch.nan_to_num(vs / scale, nan=0.0, posinf=0.0, neginf=0.0).round().clamp(-127, 127)
                out[n][m] = q.to(torch.int8).float() * scale  # an int8 has no -0
            elif fmt == "ternary":
                scale = vs.abs().max()
                t = torch.nan_to_num(vs / scale, nan=0.0, posinf=0.0, neginf=0.0).round()
                out[n][m] = (t + 0.0) * scale  # -1, 0 or +1 times the scale; no -0 digit
            else:  # sign
                mag = (vs.double().abs().sum() / vs.numel()).float()
                out[n][m] = torch.where(vs < 0, -mag, mag)
    return out


layouts = st.lists(
    st.lists(st.integers(1, 9), min_size=1, max_size=3).filter(lambda s: math.prod(s) <= 120),
    min_size=1, max_size=5,
).map(lambda shapes: Layout((f"t{i}", tuple(s)) for i, s in enumerate(shapes)))


# ---------------------------------------------------------------------------- bit helpers
def test_bit_order_is_big_endian_within_a_byte():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert pack_bits(bits).tolist() == [0x81, 0x80]
    assert unpack_bits(torch.tensor([0x81, 0x80], dtype=torch.uint8), 9).tolist() == bits.tolist()


@HYP
@given(st.lists(st.integers(0, 48), min_size=0, max_size=60), st.integers(0, 2**31))
def test_fields_round_trip(widths, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor(widths, dtype=torch.long)
    vals = (torch.rand(len(widths), generator=g, dtype=torch.float64) * torch.pow(2.0, w.double())).long()
    vals = torch.minimum(vals, (1 << w) - 1)
    starts = torch.cumsum(w, 0) - w + 3  # start 3 bits into the stream
    nbytes = (3 + int(w.sum()) + 7) // 8
    data = pack_fields(vals, w, starts, nbytes)
    assert data.numel() == nbytes
    assert torch.equal(unpack_fields(data, w, starts), vals)
    # the same bits as writing every field MSB first, bit by bit
    ref = [0, 0, 0] + [int(b) for x, k in zip(vals.tolist(), widths) for b in (format(x, f"0{k}b") if k else "")]
    assert unpack_bits(data, len(ref)).int().tolist() == ref


# ---------------------------------------------------------------------------- round trips
@HYP
@given(layouts, st.integers(1, 4), st.floats(0.0, 1.0), st.integers(0, 2**31), st.sampled_from(INDEX))
def test_lossless_round_trip(layout, n, density, seed, index):
    k = round(density * layout.numel)
    idx, vals = random_message(layout, n, k, seed, nonfinite=True)
    codec = make_codec(f"{index}+fp32", layout)
    assert isinstance(codec, Codec) and codec.lossless
    data, sizes = codec.encode_sparse(idx, vals)
    assert data.dtype == torch.uint8 and data.dim() == 1 and sum(sizes) == data.numel() and len(sizes) == n
    got_idx, got_vals = codec.decode_sparse(data, sizes, k, torch.float32)
    assert torch.equal(got_idx, idx) and got_idx.dtype == torch.long
    assert same_bits(got_vals, vals)  # bit for bit: ±0, subnormals, ±inf, NaN payloads
    if codec.fixed_size:
        assert len(set(sizes)) <= 1


@HYP
@given(layouts, st.integers(1, 3), st.floats(0.0, 1.0), st.integers(0, 2**31), st.sampled_from(INDEX),
       st.sampled_from(VALUE), st.booleans())
def test_lossy_values_are_the_expected_quantization(layout, n, density, seed, index, fmt, nonfinite):
    k = round(density * layout.numel)
    idx, vals = random_message(layout, n, k, seed, nonfinite=nonfinite)
    codec = make_codec(f"{index}+{fmt}", layout)
    assert codec.lossless == (fmt == "fp32")
    data, sizes = codec.encode_sparse(idx, vals)
    got_idx, got = codec.decode_sparse(data, sizes, k, torch.float32)
    assert torch.equal(got_idx, idx)
    want = expected_values(fmt, layout, segments_of(layout, idx), vals)
    if fmt == "sign":  # the mean is summed in another order: equal up to float32 rounding
        torch.testing.assert_close(got, want, rtol=2e-7, atol=0, equal_nan=True)
        assert torch.equal(torch.signbit(got) & ~torch.isnan(got), (vals < 0) & ~torch.isnan(got))
    else:
        assert same_floats(got, want), (fmt, got, want)
    # deterministic: the same bytes give the same values, bit for bit, on every call
    again = codec.decode_sparse(data.clone(), list(sizes), k, torch.float32)[1]
    assert torch.equal(again.view(torch.int32), got.view(torch.int32))
    # other dtypes: the same numbers, cast
    as64 = codec.decode_sparse(data, sizes, k, torch.float64)[1]
    assert as64.dtype == torch.float64 and same_floats(as64, got.double())


@HYP
@given(layouts, st.integers(0, 3), st.floats(0.0, 1.0), st.integers(0, 2**31), st.sampled_from(INDEX),
       st.sampled_from(VALUE), st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_sender_knows_what_receivers_decode(layout, n, density, seed, index, fmt, nonfinite, dtype):
    """``transmit`` (what error feedback subtracts) takes the sender's shortcut, which decodes only
    the value part; it must give what a receiver decodes from the bytes, bit for bit."""
    from sasg.core.payloads import SparsePayload, transmit

    k = round(density * layout.numel)
    idx, vals = random_message(layout, n, k, seed, nonfinite=nonfinite)
    codec = make_codec(f"{index}+{fmt}", layout)
    q = SparsePayload(idx, vals.to(dtype), layout.numel)
    sent = transmit(q, codec)
    data, sizes = codec.encode_sparse(idx, vals.to(dtype))
    assert torch.equal(sent.data, data) and sent.sizes == list(sizes)
    got_idx, got = codec.decode_sparse(data, sizes, k, dtype)
    assert torch.equal(sent.payload.indices, got_idx) and sent.payload.values.dtype == dtype
    assert torch.equal(sent.payload.values.view(torch.int64 if dtype == torch.float64 else torch.int32),
                       got.view(torch.int64 if dtype == torch.float64 else torch.int32))
    if idx.numel() and not (codec.lossless and dtype == torch.float32):
        # decoded values of their own (q's stay as they were); the indices, which decode to
        # themselves, may be q's (nothing changes a payload's indices in place)
        assert sent.payload.values.data_ptr() != q.values.data_ptr()
        assert same_floats(q.values, vals.to(dtype))


@HYP
@given(layouts, st.integers(1, 3), st.integers(0, 2**31), st.sampled_from(["fp32", "bf16", "fp16"]))
def test_memory_invariant_decoded_plus_residual(layout, n, seed, fmt):
    """Error feedback keeps v - decoded; for casts the residual is exact, so adding it back gives v."""
    idx, vals = random_message(layout, n, layout.numel, seed, specials=0.0)
    vals = vals.clamp(-60000, 60000)  # inside fp16's range: no overflow to inf
    codec = make_codec(f"rice+{fmt}", layout)
    data, sizes = codec.encode_sparse(idx, vals)
    dec = codec.decode_sparse(data, sizes, layout.numel, torch.float32)[1]
    assert torch.equal(dec + (vals - dec), vals)


@HYP
@given(layouts, st.integers(0, 3), st.integers(0, 2**31), st.sampled_from(VALUE))
def test_dense_round_trip(layout, n, seed, fmt):
    _, vals = random_message(layout, n, layout.numel, seed, nonfinite=fmt in ("fp32", "bf16"))
    codec = make_codec(fmt, layout)
    data, sizes = codec.encode_dense(vals)
    assert len(set(sizes)) <= 1 and len(sizes) == n
    got = codec.decode_dense(data, sizes, torch.float32)
    seg = torch.repeat_interleave(torch.arange(len(layout.segments)),
                                  torch.tensor([s.numel for s in layout.segments])).expand(n, -1)
    want = expected_values(fmt, layout, seg, vals)
    if fmt == "fp32":
        assert same_bits(got, vals)
    elif fmt == "sign":
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)
    else:
        assert same_floats(got, want)


def test_values_only_name_means_idx32_and_dense_alone():
    layout = Layout(FC)
    assert parse_codec_name("bf16") == ("idx32", "bf16")
    assert parse_codec_name(" Rice+Sign ") == ("rice", "sign")
    c = make_codec("bf16", layout)
    assert c.name == "bf16" and c.index.name == "idx32" and c.fixed_size and not c.lossless
    assert make_codec("rice+fp32", layout).describe() == {"codec": "rice+fp32", "codec_index": "rice",
                                                         "codec_value": "fp32"}
    for bad in ("", "rice+", "a+b+c", "nope", "rice+nope", "nope+fp32"):
        with pytest.raises(ValueError):
            make_codec(bad, layout)
    fixed = {f"{i}+{v}": make_codec(f"{i}+{v}", layout).fixed_size for i in INDEX for v in VALUE}
    assert fixed == {name: name.split("+")[0] in ("idx32", "bitmap") for name in fixed}


def test_parts_are_registered():
    from sasg.core.registry import REGISTRIES

    assert set(INDEX) <= set(REGISTRIES["index"].names())
    assert set(VALUE) <= set(REGISTRIES["value"].names())
    assert REGISTRIES["index"].get("rice").factory(Layout(FC), None).name == "rice"


def test_idx32_fp32_is_paper32_bytes():
    layout = Layout(FC)
    v = torch.randn(5, layout.numel, generator=torch.Generator().manual_seed(3))
    q = TopK(layout, 0.01).compress(v)
    ours, paper = make_codec("idx32+fp32", layout), Paper32(layout.numel)
    data, sizes = ours.encode_sparse(q.indices, q.values)
    pdata, psizes = paper.encode_sparse(q.indices, q.values)
    assert torch.equal(data, pdata) and sizes == psizes
    assert [torch.equal(a, b) for a, b in zip(ours.decode_sparse(pdata, psizes, q.indices.shape[1], torch.float32),
                                              (q.indices, q.values))] == [True, True]
    ddata, dsizes = ours.encode_dense(v)
    pd, ps = paper.encode_dense(v)
    assert torch.equal(ddata, pd) and dsizes == ps


def test_empty_batches_and_messages():
    layout = Layout([("a", (4,)), ("b", (3,))])
    for index in INDEX:
        for fmt in VALUE:
            c = make_codec(f"{index}+{fmt}", layout)
            data, sizes = c.encode_sparse(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3))
            assert data.numel() == 0 and sizes == []
            i, v = c.decode_sparse(data, sizes, 3, torch.float32)
            assert i.shape == (0, 3) and v.shape == (0, 3)
            data, sizes = c.encode_sparse(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0))
            i, v = c.decode_sparse(data, sizes, 0, torch.float32)
            assert i.shape == (2, 0) and v.shape == (2, 0)


def test_fixed_size_codecs_encode_an_all_zero_template():
    """A fixed-size transport sizes messages by encoding an empty payload (indices all 0)."""
    layout = Layout(FC)
    for name in ("idx32+fp32", "idx32+int8", "idx32+sign", "bitmap+bf16"):
        c = make_codec(name, layout)
        data, sizes = c.encode_sparse(torch.zeros(1, 50, dtype=torch.long), torch.zeros(1, 50))
        real = c.encode_sparse(*random_message(layout, 1, 50, 1))[1]
        assert sizes == real


def test_encoders_reject_indices_that_do_not_ascend():
    layout = Layout(FC)
    idx = torch.tensor([[5, 3, 9]])
    for name in ("rice+fp32", "auto+sign"):
        with pytest.raises(ValueError, match="ascend"):
            make_codec(name, layout).encode_sparse(idx, torch.ones(1, 3))
    with pytest.raises(ValueError, match="outside"):
        make_codec("rice+fp32", layout).encode_sparse(torch.tensor([[1, layout.numel]]), torch.ones(1, 2))


@HYP
@given(layouts, st.integers(1, 4), st.floats(0.0, 1.0), st.integers(0, 2**31), st.sampled_from(VALUE))
def test_auto_decodes_every_mix_of_tags(layout, n, density, seed, fmt):
    """Whatever tag each tensor gets (forced at random here), auto's bytes decode exactly."""

    class Forced(Auto):
        def choose_tags(self, idx32_bits, rice_bits, bitmap_bits):
            return torch.randint(0, 3, idx32_bits.shape, generator=torch.Generator().manual_seed(seed))

    k = round(density * layout.numel)
    idx, vals = random_message(layout, n, k, seed)
    codec = make_codec(f"auto+{fmt}", layout)
    codec.index = Forced(layout)
    data, sizes = codec.encode_sparse(idx, vals)
    got_idx, _ = make_codec(f"auto+{fmt}", layout).decode_sparse(data, sizes, k, torch.float32)
    assert torch.equal(got_idx, idx)


def test_auto_is_never_larger_than_its_parts_by_more_than_the_header():
    layout = Layout([("a", (40, 10)), ("b", (64,)), ("c", (1000,))])
    for density in (0.005, 0.05, 0.3, 0.9):
        k = round(density * layout.numel)
        idx, vals = random_message(layout, 3, k, 7)
        size = {i: sum(make_codec(f"{i}+fp32", layout).encode_sparse(idx, vals)[1]) for i in INDEX}
        header = make_codec("auto+fp32", layout).index.header_bytes()
        assert size["auto"] <= min(size.values()) + 3 * (header + 3)  # + its header and byte padding


def test_torch_bit_paths_write_the_same_bytes_as_numpy(monkeypatch):
    """Off the CPU the bit routines are torch ops; forced on the CPU here, they must agree."""
    layout = Layout([("w", (30, 20)), ("b", (30,)), ("v", (7, 30)), ("c", (7,))])
    cases = [random_message(layout, 3, k, 5 + k) for k in (0, 9, 120, 700)]
    names = [f"{i}+{v}" for i in INDEX for v in ("fp32", "sign")]
    ref = {(n, j): make_codec(n, layout).encode_sparse(*case) for n in names for j, case in enumerate(cases)}
    monkeypatch.setattr(bitstream, "NUMPY_ON_CPU", False)
    for (name, j), (data, sizes) in ref.items():
        codec = make_codec(name, layout)
        again, again_sizes = codec.encode_sparse(*cases[j])
        assert torch.equal(again, data) and again_sizes == sizes, name
        idx, vals = codec.decode_sparse(data, sizes, cases[j][0].shape[1], torch.float32)
        assert torch.equal(idx, cases[j][0]), name
    dense = random_message(layout, 2, layout.numel, 1)[1]
    assert torch.equal(make_codec("sign", layout).encode_dense(dense)[0], ref_dense_sign(layout, dense))


def ref_dense_sign(layout, dense):
    bitstream.NUMPY_ON_CPU = True
    try:
        return make_codec("sign", layout).encode_dense(dense)[0]
    finally:
        bitstream.NUMPY_ON_CPU = False


def test_layouts_past_2_to_the_31_use_int64_words_and_wide_rice_parameters():
    layout = Layout([("huge", (2**21, 2**21)), ("b", (5,)), ("m", (2**16,))])  # d > 2**42: nothing allocated
    g = torch.Generator().manual_seed(0)
    for k in (1, 7, 100):
        idx = torch.stack([
            torch.sort(torch.cat([torch.randint(0, 2**42, (k,), generator=g), torch.tensor([2**42 + 2]),
                                  torch.randint(2**42 + 5, layout.numel, (2,), generator=g)])).values
            for _ in range(3)
        ])
        idx = torch.cummax(idx, 1).values + torch.arange(idx.shape[1])  # strictly ascending
        idx = idx.clamp(max=layout.numel - 1)
        if not bool((idx[:, 1:] > idx[:, :-1]).all()):
            continue
        vals = torch.randn(idx.shape, generator=g)
        for name in ("idx32+fp32", "rice+sign", "auto+int8"):
            codec = make_codec(name, layout)
            assert codec.index.tables.W == 8
            data, sizes = codec.encode_sparse(idx, vals)
            assert torch.equal(codec.decode_sparse(data, sizes, idx.shape[1], torch.float32)[0], idx), name
    rice = make_codec("rice+fp32", layout)
    data, sizes = rice.encode_sparse(idx[:1], vals[:1])
    assert int(data[3 * 8 + 8]) > 30  # the huge tensor's Rice parameter (after 3 counts and U)


def test_idx32_rejects_indices_out_of_order_or_range():
    layout = Layout(FC)
    codec = make_codec("idx32+fp32", layout)
    idx = torch.tensor([[3, 9, 700, 405000]])
    data, sizes = codec.encode_sparse(idx, torch.ones(1, 4))
    swapped = data.clone()
    swapped[0:4], swapped[4:8] = data[4:8], data[0:4]
    with pytest.raises(CodecError, match="do not ascend"):
        codec.decode_sparse(swapped, sizes, 4, torch.float32)
    high = _with(data, 15, 0x7F)  # index 3 -> past d
    with pytest.raises(CodecError, match="outside"):
        codec.decode_sparse(high, sizes, 4, torch.float32)


# ---------------------------------------------------------------------------- real messages
def test_rice_bits_per_entry_on_an_fc_top1_message():
    layout = Layout(FC)
    v = torch.randn(10, layout.numel, generator=torch.Generator().manual_seed(0))
    q = TopK(layout, 0.01).compress(v)
    K = q.indices.shape[1]
    assert K == 4071
    codec = make_codec("rice+fp32", layout)
    data, sizes = codec.encode_sparse(q.indices, q.values)
    index_bits = [8 * (s - 4 * K) / K for s in sizes]
    assert all(7.5 <= b <= 9.5 for b in index_bits), index_bits
    i, vals = codec.decode_sparse(data, sizes, K, torch.float32)
    assert torch.equal(i, q.indices) and torch.equal(vals, q.values)
    sign = make_codec("rice+sign", layout).encode_sparse(q.indices, q.values)[1]
    assert all(8 * s / K < 10.5 for s in sign)  # ~8.2 index + 1 sign bit + 16 bytes of magnitudes


# ---------------------------------------------------------------------------- corrupted bytes
def _batch(name: str, n: int = 3, density: float = 0.05):
    layout = Layout([("w", (30, 20)), ("b", (30,)), ("v", (7, 30)), ("c", (7,))])
    k = round(density * layout.numel)
    idx, vals = random_message(layout, n, k, 11, specials=0.0)
    codec = make_codec(name, layout)
    data, sizes = codec.encode_sparse(idx, vals)
    return codec, data, sizes, k


def _decode(codec, data, sizes, k):
    codec.decode_sparse(data, sizes, k, torch.float32)


def _with(data: torch.Tensor, pos: int, value: int) -> torch.Tensor:
    out = data.clone()
    out[pos] = value
    return out


CODECS = ["idx32+fp32", "rice+sign", "rice+int8", "auto+bf16", "bitmap+fp16", "rice+fp32"]


@pytest.mark.parametrize("name", CODECS)
def test_truncated_or_padded_messages_raise(name):
    codec, data, sizes, k = _batch(name)
    first = sizes[0]
    cases = 0
    for cut in sorted({0, 1, 2, 3, 5, 8, first // 4, first // 2, first - 5, first - 1}):
        if 0 <= cut < first:  # message 0 cut short, the others intact: a consistent batch
            with pytest.raises(CodecError, match=re.escape(f"{name}: message 0")):
                _decode(codec, torch.cat([data[:cut], data[first:]]), [cut] + sizes[1:], k)
            cases += 1
    for extra in (1, 7):  # trailing bytes after message 1
        end1 = sizes[0] + sizes[1]
        longer = torch.cat([data[:end1], torch.zeros(extra, dtype=torch.uint8), data[end1:]])
        with pytest.raises(CodecError, match=re.escape(f"{name}: message 1")):
            _decode(codec, longer, [sizes[0], sizes[1] + extra, *sizes[2:]], k)
        cases += 1
    with pytest.raises(CodecError, match="sum to"):
        _decode(codec, data[:-1], sizes, k)  # sizes disagreeing with the data
    with pytest.raises(CodecError):
        _decode(codec, data.to(torch.int32), sizes, k)
    assert cases >= 10


@pytest.mark.parametrize("name", ["rice+sign", "auto+int8"])
def test_corrupted_headers_raise(name):
    """Every byte of a count or of the unary length, flipped; high bits of Rice parameters and
    tags: always detectable (sizes and sums no longer add up, or values out of range)."""
    codec, data, sizes, k = _batch(name)
    t = codec.index.tables
    S, W = t.S, t.W
    start = sizes[0]  # corrupt message 1
    positions = [(p, 0xFF) for p in range(S * W + W)]  # counts and U: xor all bits
    positions += [((S + 1) * W + s, 0x80) for s in range(S)]  # Rice parameters: +128
    if name.startswith("auto"):
        positions += [((S + 1) * W + S + s, 0x80) for s in range(S)]  # tags: +128
    for p, x in positions:
        bad = _with(data, start + p, int(data[start + p]) ^ x)
        with pytest.raises(CodecError, match=re.escape(f"{name}: message 1")):
            _decode(codec, bad, sizes, k)
    assert len(positions) >= 20


def test_flipped_bitmap_and_unary_bits_raise():
    """One flipped bit changes a bitmap's popcount or a unary stream's number of codes."""
    n_cases = 0
    codec, data, sizes, k = _batch("bitmap+fp32")
    for p in range(0, (codec.layout.numel + 7) // 8, 11):
        for bit in (0, 5):
            with pytest.raises(CodecError):
                _decode(codec, _with(data, p, int(data[p]) ^ (1 << bit)), sizes, k)
            n_cases += 1
    codec, data, sizes, k = _batch("rice+fp32", n=1)
    H = codec.index.header_bytes()
    c = codec.index.tables
    counts = data[: c.S * c.W].view(torch.int32).long()
    hdr = data[:H]
    b = hdr[(c.S + 1) * c.W:].long()
    U = int(data[c.S * c.W:(c.S + 1) * c.W].view(torch.int32))
    Rb = (int((counts * b).sum()) + 7) // 8
    unary_start = H + Rb
    for p in range(unary_start, unary_start + U):
        for bit in (0, 3, 7):
            with pytest.raises(CodecError):
                _decode(codec, _with(data, p, int(data[p]) ^ (1 << bit)), sizes, k)
            n_cases += 1
    assert n_cases >= 30


def test_corrupted_values_raise_where_checkable():
    codec, data, sizes, k = _batch("rice+int8")
    V = codec.value.nbytes(k)
    end = sizes[0]
    q0 = end - k  # first int8 value of message 0
    with pytest.raises(CodecError, match="-128"):
        _decode(codec, _with(data, q0, 0x80), sizes, k)
    scale0 = end - V  # first float32 scale: flip its sign bit
    with pytest.raises(CodecError, match="negative"):
        _decode(codec, _with(data, scale0 + 3, int(data[scale0 + 3]) ^ 0x80), sizes, k)
    codec, data, sizes, k = _batch("idx32+sign")
    assert k % 8, "needs padding bits"
    with pytest.raises(CodecError, match="padding"):
        _decode(codec, _with(data, sizes[0] - 1, int(data[sizes[0] - 1]) | 1), sizes, k)


@pytest.mark.parametrize("name", CODECS + ["auto+sign", "bitmap+int8"])
def test_random_corruptions_raise_codec_error_or_decode_validly(name):
    """Random single-byte changes anywhere: CodecError, or (undetectable without a checksum) a
    valid message: ascending in-range indices, values of the right shape. Never another error."""
    codec, data, sizes, k = _batch(name)
    g = torch.Generator().manual_seed(5)
    detected = 0
    trials = 60
    for _ in range(trials):
        p = int(torch.randint(0, data.numel(), (1,), generator=g))
        x = int(torch.randint(1, 256, (1,), generator=g))
        bad = _with(data, p, int(data[p]) ^ x)
        try:
            idx, vals = codec.decode_sparse(bad, sizes, k, torch.float32)
        except CodecError:
            detected += 1
            continue
        assert idx.shape == vals.shape == (len(sizes), k)
        assert bool((idx[:, 1:] > idx[:, :-1]).all()) and int(idx.min()) >= 0 and int(idx.max()) < codec.layout.numel
    assert detected >= 1 or name.endswith(("fp32", "bf16", "fp16"))


def test_dense_size_mismatch_raises():
    layout = Layout(FC)
    codec = make_codec("int8", layout)
    data, sizes = codec.encode_dense(torch.randn(2, layout.numel, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(CodecError, match="int8: message 1 has"):
        codec.decode_dense(data[:-3], [sizes[0], sizes[1] - 3], torch.float32)
    bad = data.clone()
    bad[sizes[0] + 4 * len(layout.segments)] = 0x80  # an int8 value of -128 in message 1
    with pytest.raises(CodecError, match="message 1"):
        codec.decode_dense(bad, sizes, torch.float32)


def test_float64_inputs_round_to_float32_and_come_back_as_float64():
    layout = Layout([("a", (10,)), ("b", (5,))])
    idx, vals = random_message(layout, 2, 6, 3, specials=0.0)
    vals = vals.double() + 1e-12
    codec = SparseCodec(layout, "rice", "fp32")
    data, sizes = codec.encode_sparse(idx, vals)
    assert sizes == [s for s in make_codec("rice+fp32", layout).encode_sparse(idx, vals.float())[1]]
    got = codec.decode_sparse(data, sizes, 6, torch.float64)[1]
    assert got.dtype == torch.float64 and torch.equal(got, vals.float().double())
