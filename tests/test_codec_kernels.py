"""The codecs' compiled paths (:mod:`sasg.kernels`) write and read the same bytes as the torch
reference (``kernels.ENABLED = False``), and turn away the same bytes with the same error.

Every comparison runs the codec twice, kernels on and off: encoded bytes and sizes identical,
decoded indices identical, decoded values identical bit for bit (NaN payloads and signed zeros
included); on malformed bytes both raise the same exception with the same message (a kernel only
detects, the reference names the message: see :mod:`sasg.kernels.rice`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sasg import kernels
from sasg.core import Layout
from sasg.core.codecs.composite import make_codec
from sasg.core.codecs.index import Auto
from sasg.core.codecs.protocol import CodecError
from sasg.core.spec import AlgorithmSettings
from sasg.kernels import rice as rice_kernel
from test_codecs import random_message

INDEX = ("idx32", "rice", "bitmap", "auto")
VALUE = ("fp32", "bf16", "fp16", "sign", "int8")
NAMES = [f"{i}+{v}" for i in INDEX for v in VALUE]
LAYOUTS = {
    "mixed": Layout([("w", (30, 20)), ("b", (30,)), ("v", (7, 30)), ("c", (7,))]),
    "one": Layout([("x", (1,))]),
    "tiny": Layout([("a", (3,)), ("b", (1,)), ("c", (5, 2)), ("d", (1,)), ("e", (17,))]),
}
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(fn):
    """``fn()`` on the torch reference path."""
    saved = kernels.ENABLED
    kernels.ENABLED = False
    try:
        return fn()
    finally:
        kernels.ENABLED = saved


def outcome(fn):
    """``("ok", result)`` or (exception type, message) for the errors a codec raises."""
    try:
        return "ok", fn()
    except (CodecError, ValueError) as e:
        return type(e).__name__, str(e)


def same(a, b) -> bool:
    """Equal results: tensors equal bit for bit (same dtype), containers element by element."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.is_floating_point():
            width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            a, b = a.contiguous().view(width), b.contiguous().view(width)
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def both(fn):
    """Run ``fn`` with kernels on and off; assert the same outcome; return it."""
    fast, ref = outcome(fn), reference(lambda: outcome(fn))
    assert fast[0] == ref[0] and same(fast[1], ref[1]), (fast, ref)
    return fast


def check_codec(codec, idx, vals, dtype=torch.float32):
    """Encode, encode-with-decoded-values and decode agree on both paths."""
    kind, enc = both(lambda: codec.encode_sparse(idx, vals))
    both(lambda: codec.encode_sparse_sent(idx, vals, dtype))
    if kind == "ok":
        data, sizes = enc
        _, dec = both(lambda: codec.decode_sparse(data, sizes, idx.shape[1], dtype))
        assert torch.equal(dec[0], idx)
        return data, sizes


def sizes_of(layout: Layout) -> list[int]:
    d = layout.numel
    return sorted(k for k in {0, 1, 2, max(1, d // 50), d // 7, d // 2, d - 1, d} if k <= d)


# ---------------------------------------------------------------------------- same bytes
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kernels_write_and_read_the_reference_bytes(name, layout):
    lay = LAYOUTS[layout]
    codec = make_codec(name, lay)
    for j, k in enumerate(sizes_of(lay)):
        for n in (1, 3):
            idx, vals = random_message(lay, n, k, seed=31 * j + n, nonfinite=(j % 3 == 1))
            check_codec(codec, idx, vals)
    idx, vals = random_message(lay, 2, lay.numel // 3, seed=5)
    check_codec(codec, idx, vals.double(), torch.float64)  # float64 values: cast as the reference casts


@pytest.mark.parametrize("name", ["rice+sign", "auto+int8", "idx32+sign", "bitmap+int8", "rice+fp32"])
def test_kernels_agree_with_whole_tensors_implied(name):
    """Under a tensor policy the vectors travel whole: their indices are implied, not written."""
    lay = LAYOUTS["mixed"]
    codec = make_codec(name, lay, AlgorithmSettings(density=0.05, tensor_policy="vectors").validate())
    assert codec.implied is not None
    whole = torch.cat([torch.arange(600, 630), torch.arange(840, 847)])
    for k, seed in ((0, 1), (1, 2), (40, 3), (810, 4)):
        g = torch.Generator().manual_seed(seed)
        matrix = torch.cat([torch.arange(0, 600), torch.arange(630, 840)])
        rows = [torch.sort(torch.cat([matrix[torch.randperm(810, generator=g)[:k]], whole])).values for _ in range(3)]
        idx = torch.stack(rows)
        vals = random_message(lay, 3, idx.shape[1], seed)[1]
        check_codec(codec, idx, vals)
    bad = torch.arange(10).unsqueeze(0)  # holds none of the whole tensors: the same ValueError
    assert both(lambda: codec.encode_sparse(bad, torch.ones(1, 10)))[0] == "ValueError"


@pytest.mark.parametrize("name", ["rice+sign", "auto+fp32", "idx32+int8"])
def test_kernels_agree_on_layouts_past_2_to_the_31(name):
    """Counts and indices in int64 words (W = 8), Rice parameters up to 42 bits."""
    lay = Layout([("huge", (2**21, 2**21)), ("b", (5,)), ("m", (2**16,))])
    g = torch.Generator().manual_seed(3)
    for k in (1, 9, 60):
        idx = torch.stack([torch.sort(torch.cat([torch.randint(0, 2**42, (k,), generator=g),
                                                 torch.tensor([2**42 + 2]),
                                                 torch.randint(2**42 + 5, lay.numel, (2,), generator=g)])).values
                           for _ in range(2)])
        if bool((idx[:, 1:] > idx[:, :-1]).all()):
            check_codec(make_codec(name, lay), idx, torch.randn(idx.shape, generator=g))


@pytest.mark.parametrize("index", ["rice", "auto", "bitmap"])
def test_bad_indices_raise_the_reference_error(index):
    lay = LAYOUTS["mixed"]
    codec = make_codec(f"{index}+sign", lay)
    for bad in ([[3, 3, 9]], [[5, 2, 9]], [[-1, 2, 9]], [[1, 2, lay.numel]]):
        idx = torch.tensor(bad)
        kind, _ = both(lambda: codec.encode_sparse(idx, torch.ones(idx.shape)))
        assert kind == "ValueError" or index == "bitmap"  # bitmap takes repeats and any order


# ---------------------------------------------------------------------------- hostile bytes
def _mutate(data: torch.Tensor, sizes: list[int], how: str, at: int, byte: int):
    """A corrupted copy of the messages: one byte changed, the last message cut or grown, or a
    message swapped for junk of the same size."""
    data = data.clone()
    at = at % max(1, data.numel())
    if how == "byte" and data.numel():
        data[at] = byte
    elif how == "cut" and sizes[-1]:
        cut = 1 + at % sizes[-1]
        data, sizes = data[:-cut], sizes[:-1] + [sizes[-1] - cut]
    elif how == "grow":
        data, sizes = torch.cat([data, torch.tensor([byte], dtype=torch.uint8)]), sizes[:-1] + [sizes[-1] + 1]
    elif how == "junk":
        g = torch.Generator().manual_seed(at)
        data = torch.randint(0, 256, data.shape, generator=g, dtype=torch.uint8)
        data[: min(3, data.numel())] = byte  # small counts, sometimes, so junk gets past a header
    return data, sizes


@HYP
@given(name=st.sampled_from([f"{i}+{v}" for i in INDEX for v in ("fp32", "sign", "int8")]),
       layout=st.sampled_from(list(LAYOUTS)), n=st.integers(1, 3), frac=st.floats(0, 1),
       how=st.sampled_from(["byte", "byte", "cut", "grow", "junk"]), at=st.integers(0, 10**6),
       byte=st.integers(0, 255), seed=st.integers(0, 10**6))
def test_corrupted_messages_fail_alike_on_both_paths(name, layout, n, frac, how, at, byte, seed):
    lay = LAYOUTS[layout]
    codec = make_codec(name, lay)
    k = round(frac * lay.numel)
    idx, vals = random_message(lay, n, k, seed)
    data, sizes = reference(lambda: codec.encode_sparse(idx, vals))
    bad, bad_sizes = _mutate(data, list(sizes), how, at, byte)
    both(lambda: codec.decode_sparse(bad, bad_sizes, k, torch.float32))
    both(lambda: codec.decode_sparse(bad, bad_sizes, k + 1, torch.float32))  # a wrong count
    both(lambda: codec.sparse_nnz(bad, bad_sizes, torch.float32))


@pytest.mark.parametrize("name", [f"{i}+{v}" for i in INDEX for v in ("sign", "int8")])
@pytest.mark.parametrize("layout", ["tiny", "one"])
def test_every_bit_flip_and_cut_fails_alike_on_both_paths(name, layout):
    """Exhaustive over small messages (padding bits, the last remainder and unary bytes included):
    every single-bit flip, every byte set to 0x00 or 0xFF, every truncation of the last message."""
    lay = LAYOUTS[layout]
    codec = make_codec(name, lay)
    for k, seed in sorted({(0, 1), (min(3, lay.numel), 2), (min(11, lay.numel), 3)}):
        idx, vals = random_message(lay, 2, k, seed)
        flip_and_cut(codec, *codec.encode_sparse(idx, vals), k)


def flip_and_cut(codec, data, sizes, k):
    """Both paths decode every single-bit flip, 0x00 and 0xFF byte and cut of ``data`` alike."""
    for pos in range(data.numel()):
        for value in [int(data[pos]) ^ (1 << bit) for bit in range(8)] + [0, 255]:
            bad = data.clone()
            bad[pos] = value
            both(lambda: codec.decode_sparse(bad, sizes, k, torch.float32))
    for cut in range(1, sizes[-1] + 1):
        both(lambda: codec.decode_sparse(data[:-cut], sizes[:-1] + [sizes[-1] - cut], k, torch.float32))


def test_auto_sections_of_every_kind_agree(monkeypatch):
    """``auto``'s idx32 and bitmap sections (rice is nearly always cheaper: tags forced here, in
    the reference through ``choose_tags``, in the kernel through ``forced``)."""
    lay = LAYOUTS["tiny"]
    S, W, d = len(lay.segments), 4, lay.numel
    codec = make_codec("auto+sign", lay)
    for k, seed in ((0, 1), (5, 2), (14, 3), (d, 4)):
        idx, vals = random_message(lay, 2, k, seed)
        tags = torch.randint(0, 3, (2, S), generator=torch.Generator().manual_seed(seed))
        monkeypatch.setattr(Auto, "choose_tags", lambda self, *costs: tags.reshape(-1))
        data, sizes = reference(lambda: codec.encode_sparse(idx, vals))
        part, part_sizes, _, err = rice_kernel.sections_encode(idx.numpy(), *codec.index.tables.arrays(), d, W, 1,
                                                               tags.numpy())
        V = codec.value.nbytes(k)
        assert err == 0 and part_sizes.tolist() == [s - V for s in sizes]
        messages = data.split(sizes)
        assert torch.equal(torch.from_numpy(part), torch.cat([m[: len(m) - V] for m in messages]))
        both(lambda: codec.decode_sparse(data, sizes, k, torch.float32))
        if k < d:  # (the full message's flips add nothing the others do not reach)
            flip_and_cut(codec, data, sizes, k)


@pytest.mark.parametrize("name", ["rice+sign", "auto+int8"])
def test_headers_claiming_huge_sections_are_turned_away(name):
    """Counts, unary lengths and parameters at their extremes: the kernel checks every length
    against the message before reading, so these raise the reference's CodecError."""
    lay = LAYOUTS["mixed"]
    codec = make_codec(name, lay)
    idx, vals = random_message(lay, 1, 40, 9)
    data, sizes = codec.encode_sparse(idx, vals)
    S, W = len(lay.segments), 4
    for pos, value in [(S * W + 3, 0x7F), (S * W, 0xFF), (0, 0xFF), (3, 0x80), ((S + 1) * W, 60), ((S + 1) * W, 1)]:
        bad = data.clone()
        bad[pos] = value
        kind, _ = both(lambda: codec.decode_sparse(bad, sizes, 40, torch.float32))
        assert kind == "CodecError" or pos == (S + 1) * W
    # A unary stream one 0xFF byte longer than its codes need (its length in the header to match).
    tail = codec.value.nbytes(40)
    U = int.from_bytes(bytes(data[S * W : S * W + 4].tolist()), "little")
    longer = torch.cat([data[: sizes[0] - tail], torch.tensor([255], dtype=torch.uint8), data[sizes[0] - tail :]])
    longer[S * W : S * W + 4] = torch.tensor(list((U + 1).to_bytes(4, "little")), dtype=torch.uint8)
    assert both(lambda: codec.decode_sparse(longer, [sizes[0] + 1], 40, torch.float32))[0] == "CodecError"


def test_a_bit_moved_into_the_bitmap_padding_is_turned_away():
    """The count still matches: only the padding check tells."""
    lay = Layout([("w", (30, 20)), ("b", (5,))])  # d = 605: three padding bits
    codec = make_codec("bitmap+fp32", lay)
    idx = torch.tensor([[0, 7, 604]])
    data, sizes = codec.encode_sparse(idx, torch.ones(idx.shape))
    bad = data.clone()
    assert int(bad[75]) == 0b1000
    bad[75] = 0b0100  # entry 604 -> padding bit 605
    assert both(lambda: codec.decode_sparse(bad, sizes, 3, torch.float32))[0] == "CodecError"


# ---------------------------------------------------------------------------- warm-ups
def test_codec_kernels_register_their_warm_ups_on_import():
    import sasg.core.codecs.composite  # noqa: F401  (imports every member, and so their kernels)

    modules = {fn.__module__ for fn in kernels._WARMERS}
    assert {"sasg.kernels.rice", "sasg.kernels.values", "sasg.kernels.bitmap", "sasg.kernels.idx32"} <= modules
    for fn in kernels._WARMERS:
        fn()


def test_the_warm_ups_compile_every_signature_the_codecs_call():
    """After the warm-ups, coding real messages (one or several, float32 or float64 values, a
    tensor policy) compiles nothing more: no JIT compile lands inside a training step."""
    from sasg.kernels import bitmap, idx32, rice, values

    for fn in kernels._WARMERS:
        fn()
    dispatchers = [getattr(m, name) for m in (bitmap, idx32, rice, values) for name in m.__all__
                   if hasattr(getattr(m, name), "signatures")]
    before = {d: len(d.signatures) for d in dispatchers}
    lay = LAYOUTS["mixed"]
    policy = AlgorithmSettings(density=0.05, tensor_policy="vectors").validate()
    for name in NAMES:
        for n, dtype in ((1, torch.float32), (3, torch.float64)):
            idx, vals = random_message(lay, n, 50, 1)
            codec = make_codec(name, lay)
            data, sizes = codec.encode_sparse(idx, vals.to(dtype))
            codec.decode_sparse(data, sizes, 50, dtype)
            codec.encode_sparse_sent(idx, vals, dtype)
    codec = make_codec("rice+sign", lay, policy)
    idx = torch.cat([torch.arange(600, 630), torch.arange(840, 847), torch.tensor([3, 700])]).sort().values
    codec.decode_sparse(*codec.encode_sparse(idx.unsqueeze(0), torch.ones(1, idx.numel())), idx.numel(), torch.float32)
    assert {d: len(d.signatures) for d in dispatchers} == before


@HYP
@given(st.data())
def test_implied_indices_split_and_merge_match_the_reference(data):
    """The tensor policy's implied indices (sasg.kernels.implied): split and merge give the
    reference's tensors, and a message without every whole-tensor entry (or an index outside the
    layout) is turned away with the reference's message."""
    from sasg.core.codecs.implied import ImpliedIndices

    layout = LAYOUTS["tiny"]
    whole = [data.draw(st.booleans()) for _ in layout.segments]
    if not any(whole):
        whole[0] = True
    imp = ImpliedIndices(layout, whole)
    forced = [i for seg, w in zip(layout.segments, whole) if w for i in range(seg.offset, seg.end)]
    free = [i for i in range(layout.numel) if i not in forced]
    rows = data.draw(st.integers(1, 3))
    extra = data.draw(st.integers(0, len(free)))
    msgs = [sorted(forced + data.draw(st.permutations(free))[:extra]) for _ in range(rows)]
    indices = torch.tensor(msgs, dtype=torch.long)
    if data.draw(st.booleans()):  # break it: drop a whole-tensor entry, or point outside the layout
        r = data.draw(st.integers(0, rows - 1))
        if data.draw(st.booleans()) and extra < len(free):
            pos = msgs[r].index(data.draw(st.sampled_from(forced)))
            indices[r, pos] = data.draw(st.sampled_from([i for i in free if i not in msgs[r]]))
            indices[r] = indices[r].sort().values
        else:
            indices[r, -1] = layout.numel + 3
    def split():
        try:
            return "ok", imp.split(indices, "codec")
        except (ValueError, IndexError) as e:  # an index past the end: torch's own IndexError, both ways
            return type(e).__name__, str(e)

    got, want = split(), reference(split)
    if want[0] == "ok" or got[0] == "ok":
        assert got[0] == want[0] and same(got[1], want[1])
        kept = want[1]
        assert same(imp.merge(kept), reference(lambda: imp.merge(kept)))
        assert same(imp.merge(kept.to(torch.int32)), reference(lambda: imp.merge(kept.to(torch.int32))))
    else:
        assert got == want


@HYP
@given(n=st.integers(1, 5000), spread=st.integers(0, 40), low=st.integers(-140, 100), seed=st.integers(0, 2**31),
       zeros=st.booleans())
def test_sign_scales_sum_in_any_order_only_where_every_order_agrees(n, spread, low, seed, zeros):
    """``sign``'s scale sums a tensor's magnitudes in float64; the kernel adds them in any order
    where every partial sum is exact (spread of binades plus log2(n) up to 29), in order
    otherwise. Magnitudes spread over 0-40 binades around that bound, subnormals and zeros
    included: the bytes and the decoded values are the reference's (its sum in order)."""
    g = torch.Generator().manual_seed(seed)
    mant = 1.0 + torch.rand(n, generator=g, dtype=torch.float64)
    exps = low + torch.randint(0, spread + 1, (n,), generator=g)
    vals = (mant * torch.pow(2.0, exps.double())).float() * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    if zeros:
        vals[torch.rand(n, generator=g) < 0.2] = 0.0
    lay = Layout([("w", (n,)), ("b", (3,))])
    idx = torch.arange(n).unsqueeze(0)
    for name in ("rice+sign", "idx32+sign"):
        check_codec(make_codec(name, lay), idx, vals.unsqueeze(0))


def test_sign_scale_summed_out_of_order_would_round_differently():
    """A tensor whose in-order float64 sum differs from other orders in a way float32 sees: 1,
    2^-24 (together a float32 rounding tie, so rounded to even) and 2046 times 2^-53 (each half a
    float64 unit at that sum: lost one by one in order, but worth 2046 units summed first). 2048
    entries: the mean is the sum / 2^11, still the tie. The kernel must take the in-order path
    here and write the reference's scale, 2^-11 (summed otherwise it would round up)."""
    n = 2048
    vals = torch.full((1, n), 2.0**-53)
    vals[0, 0], vals[0, 1] = 1.0, 2.0**-24
    lay = Layout([("w", (n,))])
    idx = torch.arange(n).unsqueeze(0)
    for name in ("rice+sign", "idx32+sign"):
        data, sizes = check_codec(make_codec(name, lay), idx, vals)
        scale = data[sizes[0] - (4 + n // 8) : sizes[0] - n // 8].clone().view(torch.float32)
        assert scale.item() == 2.0**-11


# ---------------------------------------------------------------------------- dense messages
@pytest.mark.parametrize("value", VALUE)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dense_messages_decode_alike_on_both_paths(value, layout):
    """A dense message (the warm-up rounds', a dense compressor's) decodes on the compiled path
    too: the same values bit for bit, and the same errors for every one-byte change and cut."""
    lay = LAYOUTS[layout]
    codec = make_codec(f"rice+{value}", lay)
    g = torch.Generator().manual_seed(11)
    vals = torch.randn(3, lay.numel, generator=g)
    vals[1, :: max(1, lay.numel // 4)] = float("inf")  # non-finite magnitudes decode too
    vals[2, 0] = -0.0
    data, sizes = reference(lambda: codec.encode_dense(vals))
    both(lambda: codec.decode_dense(data, sizes, torch.float32))
    for at in range(0, data.numel(), max(1, data.numel() // 40)):
        bad = data.clone()
        bad[at] ^= 0xA5
        both(lambda: codec.decode_dense(bad, sizes, torch.float32))
    both(lambda: codec.decode_dense(data[:-1], [sizes[0], sizes[1], sizes[2] - 1], torch.float32))
