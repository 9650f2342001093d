"""The compiled top-k (sasg.kernels.topk) gives the torch reference's selection, bit for bit.

The reference is a stable sort by magnitude (NaN largest, ties to the lower index), and the torch
path of the same functions with the kernels switched off (``sasg.kernels.ENABLED = False``, as
``SASG_KERNELS=0`` does): same indices, same values, same dtypes, on every path of the kernel
(sampled candidates, an unlucky sample's fallback, direct selection, k = n, NaN thresholds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sasg.kernels
from sasg.core import Layout, TopK
from sasg.core import selection as T
from sasg.kernels import topk as K

pytestmark = pytest.mark.skipif(not sasg.kernels.available(), reason="kernels switched off")


def reference(x: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.sort(order, dim=-1).values


def torch_path(fn, *args, **kw):
    before = sasg.kernels.ENABLED
    sasg.kernels.ENABLED = False
    try:
        return fn(*args, **kw)
    finally:
        sasg.kernels.ENABLED = before


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        a, b = a.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]), \
            b.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[b.element_size()])
    return torch.equal(a, b)


def rows_of(kind: str, n_rows: int, n: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(n_rows, n, generator=gen, dtype=torch.float64)
    if kind == "ties":  # integer-valued: ties at the boundary in every row, signs mixed
        x = torch.sign(x) * torch.randint(0, 4, x.shape, generator=gen).double()
    elif kind == "sparse":  # mostly exact zeros (+0.0 and -0.0): fewer candidates than k
        x = x * (torch.rand(n_rows, n, generator=gen) < 0.005)
        x[:, ::3] = -x[:, ::3]
    elif kind == "constant":
        x = torch.full((n_rows, n), -2.5, dtype=torch.float64)
    elif kind == "structured":  # whole stretches large
        x[:, : n // 7] *= 50.0
    elif kind == "nan":  # a few NaN, and in the last row NaN everywhere
        x[:, ::97] = float("nan")
        x[-1, :] = float("nan")
    elif kind == "many-nan":  # NaN in a third of each row: the sample's threshold is NaN
        x[:, ::3] = float("nan")
    elif kind == "inf":
        x[:, ::50] = float("inf")
        x[:, 1::50] = -float("inf")
    return x.to(dtype)


KINDS = ["normal", "ties", "sparse", "constant", "structured", "nan", "many-nan", "inf"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_equals_the_reference_on_long_rows(kind, dtype):
    gen = torch.Generator().manual_seed(KINDS.index(kind))
    n = 60_000  # long enough for the sampled candidates at h = 1 %
    x = rows_of(kind, 3, n, gen, dtype)
    assert K.supports(x)
    for k in (1, 37, 600, 6000, n - 1, n):
        idx, val = T.topk_rows(x, k)
        assert torch.equal(idx, reference(x, k)), (kind, k)
        assert same(val, x.gather(1, idx)), (kind, k)
        ref_idx, ref_val = torch_path(T.topk_rows, x, k)
        assert torch.equal(idx, ref_idx) and same(val, ref_val), (kind, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_short_rows_every_k(dtype):
    gen = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 17, 64, 65, 200, 1000):
        for kind in ("normal", "ties", "constant", "nan"):
            x = rows_of(kind, 4, n, gen, dtype)
            for k in sorted({1, min(2, n), n // 3, n // 2, n - 1, n} - {0}):
                idx, val = T.topk_rows(x, k)
                assert torch.equal(idx, reference(x, k)), (n, kind, k)
                assert same(val, x.gather(1, idx)), (n, kind, k)


def test_other_dtypes_take_the_torch_path():
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.bfloat16, torch.float16):
        x = rows_of("ties", 3, 20_000, gen, dtype)
        assert not K.supports(x)
        idx, val = T.topk_rows(x, 200)
        assert torch.equal(idx, reference(x, 200))
        assert val.dtype == dtype
    assert not K.supports(torch.zeros(4, 10)[:, ::2])  # rows not contiguous
    assert not K.supports(torch.zeros(10))


@pytest.mark.parametrize("kind", ["normal", "ties", "sparse", "nan"])
def test_column_slices_and_some_rows(kind):
    """A segment of a wider batch, some rows (any order, repeated): read where they lie."""
    gen = torch.Generator().manual_seed(11)
    wide = rows_of(kind, 5, 130_000, gen)
    x = wide[:, 7:120_007]
    assert K.supports(x) and not x.is_contiguous()
    for rows in ([3, 0, 4], [2], [0, 1, 2, 3, 4], [1, 1], []):
        want = reference(x[rows], 1200)
        idx, values = T.topk_rows(x, 1200, rows)
        assert torch.equal(idx, want), (kind, rows)
        assert same(values, x[rows].gather(1, want)), (kind, rows)
    with pytest.raises(IndexError):
        T.topk_rows(x, 10, [5])
    with pytest.raises(IndexError):
        T.topk_rows(x, 10, [-1])


def test_rows_too_short_for_the_plan_are_refused():
    plan = K.SegmentPlan([0, 10], [10, 100], [1, 5])
    with pytest.raises(ValueError):
        K.select(torch.zeros(2, 99), None, plan)
    with pytest.raises(ValueError):
        K.SegmentPlan([0], [10], [11])
    idx, _ = K.select(torch.arange(200.0).reshape(2, 100), [1], plan)
    assert idx.tolist() == [[9, 95, 96, 97, 98, 99]]


def ragged_layout():
    """Tensors from one entry to long ones: direct, sampled and whole (k = n) segments."""
    return Layout([("a", (1,)), ("w", (300, 400)), ("b", (300,)), ("v", (10, 300)), ("c", (10,)),
                   ("d", (3,)), ("big", (70_000,))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "sparse"])
def test_compressor_equals_its_torch_path(kind, dtype):
    layout = ragged_layout()
    gen = torch.Generator().manual_seed(5)
    v = rows_of(kind, 4, layout.numel, gen, dtype)
    for density in (0.01, 0.2, 1.0):
        comp = TopK(layout, density)
        for rows in (None, [2, 0], torch.tensor([3]), []):
            got = comp.compress(v, rows)
            want = torch_path(comp.compress, v, rows)
            assert torch.equal(got.indices, want.indices), (density, rows)
            assert same(got.values, want.values), (density, rows)
            assert got.numel == want.numel
            # the same layout too: codecs view them as bytes, which needs stride 1 even when empty
            assert got.indices.stride() == want.indices.stride(), rows
            assert got.values.stride() == want.values.stride(), rows


def test_compressor_under_a_tensor_policy_keeps_whole_tensors():
    layout = ragged_layout()
    v = torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(6))
    comp = TopK(layout, 0.01, policy="auto")
    assert any(k == seg.numel > 1 for k, seg in zip(comp.k_per_segment, layout.segments))
    got = comp.compress(v)
    want = torch_path(comp.compress, v)
    assert torch.equal(got.indices, want.indices) and same(got.values, want.values)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=5),
    rows=st.integers(1, 3),
    density=st.floats(0.001, 1.0),
    seed=st.integers(0, 10_000),
    levels=st.integers(0, 5),
    nans=st.integers(0, 3),
    double=st.booleans(),
)
def test_hypothesis_compressor_equals_the_reference(sizes, rows, density, seed, levels, nans, double):
    layout = Layout((f"p{i}", (n,)) for i, n in enumerate(sizes))
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, layout.numel, generator=gen, dtype=torch.float64 if double else torch.float32)
    if levels:  # integer-valued: ties
        v = torch.sign(v) * torch.randint(0, levels + 1, v.shape, generator=gen).to(v.dtype)
    if nans:
        v.view(-1)[torch.randint(0, v.numel(), (nans,), generator=gen)] = float("nan")
    comp = TopK(layout, density)
    q = comp.compress(v)
    col = 0
    for seg, k in zip(layout.segments, comp.k_per_segment):
        got = q.indices[:, col : col + k] - seg.offset
        assert torch.equal(got, reference(v[:, seg.offset : seg.end], k)), seg.name
        col += k
    assert same(q.values, torch.gather(v, 1, q.indices))


def test_unsampled_long_rows_and_sparse_rows_fall_back_exactly():
    """Rows too short for a sample, large k, and rows whose candidates are fewer than k."""
    gen = torch.Generator().manual_seed(8)
    assert K.sample_plan(5_000, 50) is None and T._sample_plan(5_000, 50) is None
    for n, k in ((5_000, 50), (50_000, 20_000), (50_000, 49_000)):
        x = rows_of("ties", 2, n, gen)
        assert torch.equal(T.topk_rows(x, k)[0], reference(x, k))
    sparse = torch.zeros(2, 100_000)
    sparse[:, ::400] = 1.0  # 250 nonzero, k = 1000: the sample's threshold is 0
    assert torch.equal(T.topk_rows(sparse, 1000)[0], reference(sparse, 1000))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_kth_largest_on_awkward_orders(dtype):
    rng = np.random.default_rng(0)
    n = 5000
    arrays = {
        "random": rng.integers(0, 2**30, n),
        "sorted": np.arange(n),
        "reversed": np.arange(n)[::-1].copy(),
        "equal": np.full(n, 7),
        "two values": rng.integers(0, 2, n),
        "organ pipe": np.concatenate([np.arange(n // 2), np.arange(n - n // 2)[::-1]]),
        "sawtooth": np.arange(n) % 31,
    }
    work = np.empty(2 * n, dtype)
    for name, a in arrays.items():
        a = a.astype(dtype)
        want = np.sort(a)[::-1]
        kept = a.copy()
        for k in (1, 2, 97, n // 3, n // 2, n - 1, n):
            got = K._kth_largest(a, np.uint64(n), np.uint64(k), work)
            assert got == want[k - 1], (name, k)
        assert np.array_equal(a, kept), name  # only read: its first partition reads it in place


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_above_bits_is_the_compares_of_64_entries_as_one_word(dtype):
    from numba import njit

    from sasg.kernels.vector import above_bits

    @njit
    def word(a, at, mask, t):
        return above_bits(a, at, mask, t)

    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, 200, dtype=dtype, endpoint=True)
    a[:8] = [info.min, info.max, -1, 0, 1, info.min + 1, info.max - 1, 0]
    masks = [dtype(-1), dtype(info.max)]  # all bits; the sign cleared (top-k's keys)
    for mask in masks:
        for t in [dtype(info.min), dtype(-1), dtype(0), dtype(a[3]), dtype(a[50]), dtype(info.max)]:
            for at in (0, 1, 7, 136):
                want = sum(1 << j for j in range(64) if (a[at + j] & mask) > t)
                assert word(a, np.uint64(at), mask, t) == want, (mask, t, at)


def test_warm_up_compiles_or_loads_every_kernel():
    K._warm()  # what sasg.kernels.warm() runs when a round engine is built
