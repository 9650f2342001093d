import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sasg.core import Identity, Layout, TopK, kept_per_segment, topk_indices
from sasg.core import SparsePayload


def layout_of(*sizes):
    return Layout((f"p{i}", (n,)) for i, n in enumerate(sizes))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    rows=st.integers(1, 4),
    density=st.floats(0.001, 1.0),
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_error_memory_invariant_is_exact(sizes, rows, density, seed, ties):
    layout = layout_of(*sizes)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, layout.numel, generator=gen)
    if ties:  # many equal magnitudes, signs mixed
        v = torch.sign(v) * torch.randint(0, 3, v.shape, generator=gen).float()
    comp = TopK(layout, density)
    q = comp.compress(v)
    e = v.clone()
    q.subtract_from_(e, range(rows))  # what error feedback keeps: v - q
    assert torch.equal(q.to_dense() + e, v)  # bit for bit, not allclose
    # ... and every entry is either sent or kept, never both.
    assert torch.equal((q.to_dense() != 0) & (e != 0), torch.zeros_like(v, dtype=torch.bool))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=4),
    density=st.floats(0.001, 1.0),
    seed=st.integers(0, 10_000),
)
def test_topk_keeps_exactly_k_largest_per_segment(sizes, density, seed):
    layout = layout_of(*sizes)
    v = torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(seed))
    comp = TopK(layout, density)
    q = comp.compress(v)
    dense = q.to_dense()
    for seg, k in zip(layout.segments, comp.k_per_segment):
        assert k == max(1, math.floor(density * seg.numel + 1e-9))
        part_v, part_q = v[:, seg.offset : seg.end], dense[:, seg.offset : seg.end]
        kept = part_q != 0
        assert (kept.sum(dim=1) == k).all()
        # every kept magnitude >= every dropped magnitude
        for r in range(3):
            mags = part_v[r].abs()
            if k < seg.numel:
                assert mags[kept[r]].min() >= mags[~kept[r]].max()
            assert torch.equal(part_q[r][kept[r]], part_v[r][kept[r]])


def test_kept_per_segment_formula():
    layout = layout_of(100, 1000, 5, 250)
    assert kept_per_segment(layout, 0.01) == [1, 10, 1, 2]
    assert kept_per_segment(layout, 0.29) == [29, 290, 1, 72]  # 0.29*100 is 28.999... in floats
    assert kept_per_segment(layout, 1.0) == [100, 1000, 5, 250]
    with pytest.raises(ValueError, match="density"):
        kept_per_segment(layout, 0.0)
    with pytest.raises(ValueError, match="density"):
        kept_per_segment(layout, 1.5)


def test_topk_ties_go_to_lower_index_and_indices_ascend():
    x = torch.tensor([[1.0, -3.0, 3.0, 0.5, -3.0, 2.0]])
    assert topk_indices(x, 2).tolist() == [[1, 2]]
    assert topk_indices(x, 3).tolist() == [[1, 2, 4]]
    assert topk_indices(x, 4).tolist() == [[1, 2, 4, 5]]
    flat = torch.ones(2, 7)
    assert topk_indices(flat, 3).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_topk_matches_sort_reference_on_random_and_tied_rows():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-4, 5, (5, 300), generator=gen).float()
    for k in (1, 7, 150, 299, 300):
        ref = torch.sort(torch.sort(x.abs(), dim=1, descending=True, stable=True).indices[:, :k], dim=1).values
        assert torch.equal(topk_indices(x, k), ref)


def test_topk_message_layout_and_size():
    layout = layout_of(10, 200)
    comp = TopK(layout, 0.05)
    assert comp.k_per_segment == [1, 10] and comp.nnz == 11
    q = comp.compress(torch.randn(2, 210, generator=torch.Generator().manual_seed(1)))
    assert isinstance(q, SparsePayload) and q.indices.shape == (2, 11)
    assert (q.indices[:, :1] < 10).all() and (q.indices[:, 1:] >= 10).all()


def test_identity_sends_everything():
    layout = layout_of(5, 3)
    v = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    comp = Identity(layout)
    q = comp.compress(v)
    e = v.clone()
    q.subtract_from_(e, [0, 1])
    assert torch.equal(q.to_dense() + e, v) and e.abs().max() == 0
    assert torch.equal(q.to_dense(), v) and q.values.data_ptr() != v.data_ptr()  # a copy: v may change


def test_sparse_and_dense_payload_sums_agree():
    layout = layout_of(30, 20)
    v = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    q = TopK(layout, 0.2).compress(v)
    out = torch.empty(50)
    torch.testing.assert_close(q.sum(out), q.to_dense().sum(0))
