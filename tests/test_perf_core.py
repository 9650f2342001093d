"""The allocation-free hot path (in-place error memory, scratch buffers, row-wise updates) gives
bit-for-bit the state the straightforward formulation gives, for every algorithm and mask."""

import itertools

import pytest
import torch

from sasg.core import Layout, make_algorithm
from sasg.core.payload import DensePayload, SparsePayload
from sasg.core.topk import _mask_of_magnitudes, _mask_to_indices


def plain_decide(alg, iteration, workers, server, n, lr, grads, stale_grads):
    upload = alg.forced(iteration, workers)
    if not alg.lazy:
        return upload
    check = (~upload).nonzero().squeeze(1)
    if check.numel():
        diff_sq = (grads[check] - stale_grads(check)).square().sum(dim=1)
        upload[check] = alg.trigger.fires(diff_sq, alg.threshold(server, n, lr))
    return upload


def plain_compress(comp, v):
    """Per segment: the reference rule (threshold, mask, tie fix-up), no sampling."""
    if not hasattr(comp, "k_per_segment"):
        return comp.compress(v)
    parts = []
    for seg, k in zip(comp.layout.segments, comp.k_per_segment):
        idx = _mask_to_indices(_mask_of_magnitudes(v[:, seg.offset : seg.end].abs(), k), k)
        parts.append(idx.reshape(v.shape[0], k) + seg.offset)
    indices = torch.cat(parts, dim=1) if parts else torch.zeros(0, 0, dtype=torch.long)
    return SparsePayload(indices, torch.gather(v, 1, indices), comp.layout.numel)


def plain_upload(alg, workers, upload, grads, theta, scale):
    rows = upload.nonzero().squeeze(1)
    g = grads if grads.shape[0] == rows.numel() else grads[rows]
    v = torch.add(workers.error[rows], g, alpha=scale) if alg.error_feedback else g * scale
    q = plain_compress(alg.compressor, v)
    if alg.error_feedback:
        workers.error[rows] = alg.compressor.error(v, q)
    if alg.lazy:
        workers.anchor[rows] = theta
    workers.staleness += 1
    workers.staleness[rows] = 1
    return q


def same_state(a, b):
    for key in ("staleness", "error", "anchor"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y), key


@pytest.mark.parametrize("name", ["sgd", "sparse", "lasg", "sasg"])
def test_rounds_match_the_plain_formulation_bit_for_bit(name):
    layout = Layout([("w", (40, 300)), ("b", (40,)), ("v", (3, 40)), ("c", (3,))])
    d, n = layout.numel, 5
    gen = torch.Generator().manual_seed(11)
    fast = make_algorithm(name, layout, density=0.05, window=3, c=0.5)
    slow = make_algorithm(name, layout, density=0.05, window=3, c=0.5)
    wf, ws = fast.init_worker_state(n), slow.init_worker_state(n)
    sf, ss = fast.init_server_state(n), slow.init_server_state(n)
    theta = torch.randn(d, generator=gen)
    step_f, step_s = torch.zeros(d), torch.zeros(d)
    masks = [None] * 6 + [torch.tensor(m, dtype=torch.bool) for m in itertools.product([0, 1], repeat=n)][::3]
    for k, forced_mask in enumerate(masks):
        grads = torch.randn(n, d, generator=gen) * 0.1
        grads[:, 100:200] = grads[:, 100:100 + 1]  # equal magnitudes: ties in the big segment
        stale = torch.randn(n, d, generator=gen) * 0.1
        stale_fn = lambda rows: stale[rows]  # noqa: E731
        # The fast path also takes gradients as per-segment column blocks (a vmap backend's
        # outputs, no flat copy): every third round, for both the fresh and the stale ones.
        blocks = k % 3 == 2
        as_blocks = lambda t: tuple(c.clone() for c in layout.columns(t)) if blocks else t  # noqa: E731
        uf = fast.decide(k, wf, sf, n, 0.1, as_blocks(grads), lambda rows: as_blocks(stale_fn(rows)))
        us = plain_decide(slow, k, ws, ss, n, 0.1, grads, stale_fn)
        assert torch.equal(uf, us)
        if forced_mask is not None:  # exercise every kind of partial upload, too
            uf = us = forced_mask.clone()
        # Both call styles on alternate rounds: all N rows of gradients, or the uploaders' only.
        g = grads[us] if k % 2 else grads
        qf = fast.upload(wf, uf, as_blocks(g.clone()), theta, 0.01)
        qs = plain_upload(slow, ws, us, g.clone(), theta, 0.01)
        assert type(qf) is type(qs)
        assert torch.equal(qf.values, qs.values)
        if isinstance(qf, SparsePayload):
            assert torch.equal(qf.indices, qs.indices)
        same_state(wf, ws)
        senders = us.nonzero().squeeze(1)
        fast.aggregate(sf, senders, qf, step_f)
        slow.aggregate(ss, senders, qs, step_s)
        assert torch.equal(step_f, step_s)
        assert torch.equal(sf.step_sq, ss.step_sq)
        theta = theta - step_f


def test_payload_survives_the_next_round():
    """Scratch buffers are reused round after round; a returned payload must not point into them."""
    layout = Layout([("w", (50, 60))])
    alg = make_algorithm("sasg", layout, density=0.1, window=1, c=1.0)
    workers = alg.init_worker_state(4)
    gen = torch.Generator().manual_seed(2)
    q1 = alg.upload(workers, torch.tensor([True, False, True, False]), torch.randn(4, 3000, generator=gen), torch.zeros(3000), 0.1)
    kept = (q1.indices.clone(), q1.values.clone())
    alg.upload(workers, torch.tensor([False, True, True, True]), torch.randn(4, 3000, generator=gen), torch.zeros(3000), 0.1)
    assert torch.equal(q1.indices, kept[0]) and torch.equal(q1.values, kept[1])


def test_assign_with_all_rows_in_another_order_is_not_a_plain_copy():
    last = DensePayload(torch.zeros(3, 2))
    last.assign(torch.tensor([2, 0, 1]), DensePayload(torch.tensor([[1.0, 1], [2, 2], [3, 3]])))
    assert last.values.tolist() == [[2, 2], [3, 3], [1, 1]]
    last.assign(torch.tensor([True, True, True]), DensePayload(torch.ones(3, 2) * 7))
    assert last.values.eq(7).all()
    sparse = SparsePayload(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), 4)
    sparse.assign(torch.tensor([1, 0]), SparsePayload(torch.tensor([[3], [2]]), torch.tensor([[5.0], [6.0]]), 4))
    assert sparse.indices.tolist() == [[2], [3]] and sparse.values.tolist() == [[6.0], [5.0]]


def test_a_rows_trigger_norm_does_not_depend_on_the_other_rows():
    """Each checked row is reduced on its own: a distributed rank checking itself alone gets the
    same bits as the simulator checking it among M workers (large rows, where a batched
    reduction would split differently)."""
    from sasg.core.triggers import squared_change

    layout = Layout([("w", (700, 600)), ("b", (700,))])
    gen = torch.Generator().manual_seed(4)
    g, s = torch.randn(6, layout.numel, generator=gen), torch.randn(6, layout.numel, generator=gen)
    work = torch.empty(layout.numel)
    rows = torch.arange(6)
    together = squared_change(layout.columns(g), rows, layout.columns(s), work)
    for r in range(6):
        alone = squared_change(layout.columns(g[r : r + 1]), torch.tensor([0]), layout.columns(s[r : r + 1]), work)
        assert torch.equal(alone, together[r : r + 1])
    some = torch.tensor([4, 1])
    assert torch.equal(squared_change(layout.columns(g), some, layout.columns(s[some]), work), together[some])
    assert torch.allclose(together, (g - s).double().square().sum(dim=1).float(), rtol=1e-5)


def test_column_blocks_are_checked():
    layout = Layout([("w", (3, 4)), ("b", (3,))])
    assert [tuple(c.shape) for c in layout.as_columns(torch.zeros(2, 15))] == [(2, 12), (2, 3)]
    with pytest.raises(ValueError, match="rows of length 15"):
        layout.as_columns(torch.zeros(2, 14))
    with pytest.raises(ValueError, match="column blocks"):
        layout.as_columns((torch.zeros(2, 12),))
    with pytest.raises(ValueError, match="column blocks"):
        layout.as_columns((torch.zeros(2, 12), torch.zeros(3, 3)))


def test_server_keeps_an_owned_dense_payload_instead_of_copying_it():
    """sgd/lasg: when everyone sends a fresh buffer, the server's last messages become that buffer
    (no (M, d) copy); anything else (another holder, another order) is copied as before."""
    layout = Layout([("w", (4, 5))])
    alg = make_algorithm("sgd", layout)
    workers, server = alg.init_worker_state(3), alg.init_server_state(3)
    everyone = torch.ones(3, dtype=torch.bool)
    q = alg.upload(workers, everyone, torch.randn(3, 20, generator=torch.Generator().manual_seed(1)), torch.zeros(20), 0.5)
    assert q.owned
    step = torch.zeros(20)
    alg.aggregate(server, everyone.nonzero().squeeze(1), q, step)
    assert server.last.values is q.values and not q.owned  # taken once, then shared
    assert torch.equal(step, q.values.sum(dim=0))
    # a payload somebody else holds (a transport's receive buffer) is copied
    received = DensePayload(torch.full((3, 20), 2.0))
    server.last.assign(torch.arange(3), received)
    assert server.last.values is not received.values and server.last.values.eq(2).all()
    # all rows in another order: a scatter, never a hand-over
    other = DensePayload(torch.arange(3.0).repeat_interleave(20).view(3, 20), owned=True)
    server.last.assign(torch.tensor([2, 0, 1]), other)
    assert server.last.values is not other.values
    assert server.last.values[:, 0].tolist() == [1.0, 2.0, 0.0]
