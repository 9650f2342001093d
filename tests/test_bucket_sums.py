"""The round's sums straight into DDP's buckets (:mod:`sasg.ddp.bucket_sums`): bit for bit what the
hook's reference gives (the messages summed into a flat step, then copied into the buckets), for
buckets holding tensors in any order, parts of the layout, messages in any order, messages of
varying length, and dense warm-up messages; and the cases it refuses. The hook itself is checked
on real gloo ranks in ``test_overlap.py`` (the same training as the whole round, bit for bit)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sasg import kernels
from sasg.core.payloads import DensePayload, SparsePayload, VarSparsePayload
from sasg.ddp.bucket_sums import BucketSums
from sasg.ddp.buckets import ParameterIndex

SHAPES = [(7, 5), (3,), (40,), (6, 6), (1,), (25,)]  # 35 + 3 + 40 + 36 + 1 + 25 = 140 entries


class _Bucket:
    """What the hook reads of a ``dist.GradBucket``: one flat buffer, each gradient a view in it."""

    def __init__(self, params, dtype=torch.float32):
        self._params = list(params)
        self._buffer = torch.full((sum(p.numel() for p in self._params),), 3.0, dtype=dtype)  # stale contents
        self._views, at = [], 0
        for p in self._params:
            self._views.append(self._buffer[at:at + p.numel()].view(p.shape))
            at += p.numel()

    def parameters(self):
        return self._params

    def gradients(self):
        return self._views

    def buffer(self):
        return self._buffer


def _setup(order, cuts, dtype=torch.float32):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    index = ParameterIndex((f"p{i}", p) for i, p in enumerate(params))
    ordered = [params[i] for i in order]  # DDP's order (last tensors first, or as the gradients came)
    bounds = [0, *cuts, len(ordered)]
    buckets = [_Bucket(ordered[a:b], dtype) for a, b in zip(bounds, bounds[1:]) if b > a]
    return index, buckets


def _reference(index, buckets, parts):
    """The hook's reference: each part's messages summed into a flat step, then copied in."""
    step = torch.zeros(index.numel)
    for (first, stop), payload in parts:
        lo, hi = index.layout.segments[first].offset, index.layout.segments[stop - 1].end
        payload.sum(step[lo:hi])
    copies = [_clone(b) for b in buckets]
    index.scatter(step, copies)
    return [b.buffer() for b in copies]


def _clone(bucket):
    new = _Bucket(bucket.parameters(), bucket.buffer().dtype)
    new._buffer.copy_(bucket.buffer())
    return new


def _messages(index, first, stop, M, gen, shuffle):
    """``M`` messages over tensors first..stop-1, indices from the part's first column: a few
    entries of every tensor, tensor by tensor (as per-tensor top-k makes them), each tensor's in
    random order; with ``shuffle`` the whole message in random order. Values of many magnitudes,
    so that adding them in another order would change the sums' last bits."""
    segs = index.layout.segments[first:stop]
    lo = segs[0].offset
    rows = []
    for _ in range(M):
        picked = [seg.offset - lo + torch.randperm(seg.numel, generator=gen)[: max(1, seg.numel // 3)] for seg in segs]
        row = torch.cat(picked)
        if shuffle:
            row = row[torch.randperm(row.numel(), generator=gen)]
        rows.append(row)
    indices = torch.stack(rows)
    exps = torch.randint(-20, 20, indices.shape, generator=gen).float()
    values = torch.randn(indices.shape, generator=gen) * torch.exp2(exps)
    return indices, values


def _buffers(buckets):
    return [b.buffer() for b in buckets]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), M=st.integers(1, 5), split=st.integers(1, 5),
       shuffle=st.booleans(), kind=st.sampled_from(["sparse", "varsparse", "dense"]))
def test_the_sums_in_the_buckets_are_the_references_bit_for_bit(seed, M, split, shuffle, kind):
    gen = torch.Generator().manual_seed(seed)
    S = len(SHAPES)
    order = torch.randperm(S, generator=gen).tolist()
    cuts = sorted(set(torch.randint(1, S, (2,), generator=gen).tolist()))
    index, buckets = _setup(order, cuts)
    parts = []
    for first, stop in ((0, split), (split, S)):  # the layout in two parts (as PartedRound cuts it)
        lo, hi = index.layout.segments[first].offset, index.layout.segments[stop - 1].end
        indices, values = _messages(index, first, stop, M, gen, shuffle)
        if kind == "sparse":
            payload = SparsePayload(indices, values, hi - lo)
        elif kind == "varsparse":  # shorter messages, the rest of each row junk that must be left out
            counts = torch.randint(0, indices.shape[1] + 1, (M,), generator=gen)
            junk = torch.arange(indices.shape[1]).unsqueeze(0) >= counts.unsqueeze(1)
            indices = indices.masked_fill(junk, 0)
            payload = VarSparsePayload(indices, values.masked_fill(junk, 1e30), counts, hi - lo)
        else:
            payload = DensePayload(torch.randn(M, hi - lo, generator=gen))
        parts.append(((first, stop), payload))
    expected = _reference(index, buckets, parts)
    sums = BucketSums.of(index, buckets)
    assert sums is not None
    sums.zero()
    for (first, stop), payload in parts:
        sums.add(first, stop, index.layout.segments[first].offset, payload)
    for got, want in zip(_buffers(buckets), expected):
        assert torch.equal(got, want)


def test_an_index_outside_the_part_is_refused():
    index, buckets = _setup(list(range(len(SHAPES)))[::-1], [2])
    sums = BucketSums.of(index, buckets)
    sums.zero()
    bad = SparsePayload(torch.tensor([[0, 3, index.numel]]), torch.ones(1, 3), index.numel)
    with pytest.raises(ValueError, match="outside"):
        sums.add(0, len(SHAPES), 0, bad)
    with pytest.raises(ValueError, match="outside"):  # a part's messages index from its first column
        sums.add(1, 2, index.layout.segments[1].offset, SparsePayload(torch.tensor([[-1]]), torch.ones(1, 1), 3))


def test_buckets_it_cannot_write_leave_the_reference_path(monkeypatch):
    order = list(range(len(SHAPES)))[::-1]
    index, buckets = _setup(order, [3], dtype=torch.bfloat16)
    assert BucketSums.of(index, buckets) is None  # bf16 buckets: the step is formed and cast on copy
    index, buckets = _setup(order, [3])
    buckets[1]._views[0] = torch.zeros(buckets[1]._views[0].shape)  # a gradient outside its bucket
    assert BucketSums.of(index, buckets) is None
    index, buckets = _setup(order, [3])
    assert BucketSums.of(index, buckets[:1]) is None  # tensors that reached no bucket
    monkeypatch.setattr(kernels, "ENABLED", False)  # SASG_KERNELS=0: the torch path
    assert BucketSums.of(*_setup(order, [3])) is None


def test_the_last_rounds_map_is_taken_again_only_for_the_same_buckets():
    order = list(range(len(SHAPES)))[::-1]
    index, buckets = _setup(order, [3])
    first = BucketSums.of(index, buckets)
    assert BucketSums.of(index, buckets, first) is first
    # DDP's rebuild: new buffers, or the same tensors in another order (their views elsewhere)
    rebuilt = [_Bucket(b.parameters()) for b in buckets]
    assert BucketSums.of(index, rebuilt, first) is not first
    reordered = [_Bucket(buckets[0].parameters()[::-1]), buckets[1]]
    again = BucketSums.of(index, reordered, first)
    assert again is not first
    payload = SparsePayload(torch.arange(index.numel).unsqueeze(0), torch.arange(index.numel).float().unsqueeze(0),
                            index.numel)
    again.zero()
    again.add(0, len(SHAPES), 0, payload)  # every entry its own layout index: each view holds its tensor's
    for p, seg in zip(index.params, index.layout.segments):
        bucket = next(b for b in reordered if any(q is p for q in b.parameters()))
        view = bucket.gradients()[next(i for i, q in enumerate(bucket.parameters()) if q is p)]
        assert torch.equal(view.reshape(-1), torch.arange(seg.offset, seg.end).float())
