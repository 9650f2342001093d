"""The fast exact top-k (sampled candidates + exact fix-up) against a stable-sort reference."""

import pytest
import torch

from sasg.core import Layout, TopK, topk_indices
from sasg.core import selection as T


def reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """k largest |x| per row, ties to the lower index, ascending: a stable sort says it plainly."""
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.sort(order, dim=-1).values


def rows_of(kind: str, n_rows: int, n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n_rows, n, generator=gen)
    if kind == "ties":  # few distinct magnitudes: ties at the boundary in every row
        return torch.sign(x) * torch.randint(0, 4, x.shape, generator=gen).float()
    if kind == "sparse":  # mostly exact zeros (dead units, zero pixels)
        return x * (torch.rand(n_rows, n, generator=gen) < 0.02)
    if kind == "constant":
        return torch.full((n_rows, n), -2.5)
    if kind == "structured":  # whole stretches large: a block sample would be fooled
        x[:, : n // 7] *= 50.0
        return x
    if kind == "pairs":  # equal magnitudes in pairs with mixed signs (identical pixel columns)
        half = x[:, : n // 2]
        return torch.cat([half, -half, x[:, : n - 2 * (n // 2)]], dim=1)
    return x


@pytest.mark.parametrize("kind", ["normal", "ties", "sparse", "constant", "structured", "pairs"])
@pytest.mark.parametrize("n_rows", [1, 3])
def test_sampled_path_is_exact(kind, n_rows):
    gen = torch.Generator().manual_seed(7)
    n = 60_000  # long enough for the sampled path at h = 1 %
    x = rows_of(kind, n_rows, n, gen)
    for k in (1, 37, 600, 6000, n - 1, n):
        assert torch.equal(topk_indices(x, k), reference(x, k)), (kind, k)


def test_sampled_path_is_taken_on_ordinary_rows():
    x = torch.randn(4, 200_000, generator=torch.Generator().manual_seed(0))
    plan = T._sample_plan(200_000, 2000)
    assert plan is not None
    got = T._select_from_candidates(x, 2000, *plan)
    assert got is not None
    idx, values = got
    assert torch.equal(idx, reference(x, 2000))
    assert torch.equal(values, x.gather(1, idx))  # the signed entries, not magnitudes


@pytest.mark.parametrize("kind", ["normal", "ties", "sparse", "structured"])
def test_rows_read_in_place_from_a_column_slice(kind):
    """A segment of a wider batch, only some rows: the same top k as on a gathered copy."""
    gen = torch.Generator().manual_seed(11)
    wide = rows_of(kind, 5, 130_000, gen)
    x = wide[:, 7:120_007]  # rows of stride 130,000: read where they lie
    for rows in ([3, 0, 4], [2], [0, 1, 2, 3, 4]):
        want = reference(x[rows], 1200)
        idx, values = T.topk_rows(x, 1200, rows)
        assert torch.equal(idx, want), (kind, rows)
        assert torch.equal(values, x[rows].gather(1, want)), (kind, rows)


def test_unlucky_samples_fall_back_and_stay_exact():
    n, k = 60_000, 600
    size, rank = T._sample_plan(n, k)
    pos = T._sample_positions(n, size, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    # (a) only `rank` entries, all in the sample, are huge: the candidate threshold is one of them,
    # far above the row's k-th largest, and a row has fewer than k candidates
    high = torch.rand(2, n, generator=gen)
    high[:, pos[:rank]] = 1e6
    # (b) every sampled entry zero: everything is a candidate, no saving
    low = torch.rand(2, n, generator=gen) + 1.0
    low[:, pos] = 0.0
    for x in (high, low):
        assert T._select_from_candidates(x, k, size, rank) is None
        assert torch.equal(topk_indices(x, k), reference(x, k))


def test_nan_ranks_above_every_number_on_every_path():
    """A diverged run's NaN gradients: no crash, and the same rule (NaN largest, as in torch.sort)
    whether the row goes through sampled candidates or is selected directly."""
    gen = torch.Generator().manual_seed(4)
    for n, k in ((60_000, 600), (60_000, 1), (500, 5)):
        x = torch.randn(3, n, generator=gen)
        x[0, [5, 17, n - 1]] = float("nan")
        x[2, :] = float("nan")
        assert torch.equal(topk_indices(x, k), reference(x, k)), (n, k)


def test_short_rows_and_edge_shapes():
    gen = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 17, 1000):
        x = torch.randint(-3, 4, (5, n), generator=gen).float()
        for k in range(1, min(n, 6) + 1):
            assert torch.equal(topk_indices(x, k), reference(x, k))
    assert topk_indices(torch.zeros(0, 10), 3).shape == (0, 3)
    assert topk_indices(torch.tensor([3.0, -1.0, 3.0, 0.5]), 2).tolist() == [0, 2]
    with pytest.raises(ValueError):
        topk_indices(torch.zeros(2, 5), 6)


def test_compressor_on_a_multi_segment_layout_with_workspace_reuse():
    """Same compressor object, different batch sizes (workspace buffers grow and are reused)."""
    layout = Layout([("w", (300, 400)), ("b", (300,)), ("v", (10, 300)), ("c", (10,))])
    comp = TopK(layout, 0.01)
    gen = torch.Generator().manual_seed(5)
    for n_rows in (4, 1, 7, 0, 3):
        v = torch.randn(n_rows, layout.numel, generator=gen)
        v[:, 5000:9000] = torch.sign(v[:, 5000:9000])  # ties inside the big segment
        q = comp.compress(v)
        col = 0
        for seg, k in zip(layout.segments, comp.k_per_segment):
            got = q.indices[:, col : col + k] - seg.offset
            assert torch.equal(got, reference(v[:, seg.offset : seg.end], k)), (n_rows, seg.name)
            col += k
        assert torch.equal(q.values, torch.gather(v, 1, q.indices))
        e = v.clone()
        q.subtract_from_(e, range(n_rows))
        assert torch.equal(q.to_dense() + e, v)


def test_compressing_some_rows_where_they_lie_equals_compressing_a_gathered_copy():
    layout = Layout([("w", (300, 400)), ("b", (300,)), ("c", (7,))])
    comp = TopK(layout, 0.01)
    gen = torch.Generator().manual_seed(9)
    v = torch.randn(6, layout.numel, generator=gen)
    v[:, 100:4000] = torch.sign(v[:, 100:4000])  # ties
    for rows in ([4, 1, 5], [0], [], [0, 1, 2, 3, 4, 5]):
        idx = torch.tensor(rows, dtype=torch.long)
        got, want = comp.compress(v, idx), comp.compress(v[idx])
        assert torch.equal(got.indices, want.indices) and torch.equal(got.values, want.values), rows


@pytest.mark.parametrize("density", [0.0, 0.001, 0.014, 0.3, 1.0])
def test_word_scan_finds_exactly_the_nonzero_positions(density):
    gen = torch.Generator().manual_seed(int(density * 1000))
    for n in (8, 64, 80_000):
        mask = torch.rand(n, generator=gen) < density
        for m in (mask, mask.to(torch.int8)):
            assert torch.equal(T._nonzero_positions(m), mask.nonzero().squeeze(1)), (density, n)
