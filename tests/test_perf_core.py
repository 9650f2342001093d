"""The allocation-free hot path (in-place error memory, workspace buffers, row-wise updates) gives
bit-for-bit the state the straightforward formulation gives, for every algorithm and mask."""

import itertools

import pytest
import torch

from sasg.core import Layout, WK2, make_algorithm
from sasg.core.memories import NoMemory
from sasg.core.payloads import DensePayload, SparsePayload
from sasg.core.selection import _mask_of_magnitudes, _mask_to_indices
from sasg.core.triggers.wk2 import squared_change
from sasg.engine import InProcessTransport, RoundEngine


class Scripted(WK2):
    """WK2, except that on some rounds the test dictates who uploads (every kind of partial
    upload); the rule itself still runs, so its stale-gradient calls happen as usual."""

    def __init__(self, window, c, masks):
        super().__init__(window, c)
        self.masks = iter(masks)

    def decide(self, rnd):
        upload = super().decide(rnd)
        forced = next(self.masks)
        return upload if forced is None else forced.clone()


def plain_compress(alg, v):
    """Per segment: the reference rule (threshold, mask, tie fix-up), no sampling."""
    comp = alg.compressor
    if not hasattr(comp, "k_per_segment"):
        return DensePayload(v.clone())
    parts = []
    for seg, k in zip(comp.layout.segments, comp.k_per_segment):
        idx = _mask_to_indices(_mask_of_magnitudes(v[:, seg.offset : seg.end].abs(), k), k)
        parts.append(idx.reshape(v.shape[0], k) + seg.offset)
    indices = torch.cat(parts, dim=1)
    return SparsePayload(indices, torch.gather(v, 1, indices), comp.layout.numel)


class Plain:
    """The round written out as in DESIGN.md, on plain tensors."""

    def __init__(self, alg, n, d):
        self.alg, self.n = alg, n
        self.error = torch.zeros(n, d)
        self.anchor = torch.zeros(n, d)
        self.tau = torch.ones(n, dtype=torch.long)
        self.last = alg.compressor.empty(n)
        self.steps = []
        self.k = 0

    def round(self, theta, grads, stale, lr, forced):
        alg, n, D = self.alg, self.n, getattr(self.alg.trigger, "window", 0)
        if alg.lazy:
            upload = torch.full((n,), self.k < D) | (self.tau > D)
            thr = sum(self.steps[-(D - 1):] if D > 1 else []) / (alg.trigger.c * n * lr)
            check = ~upload
            upload[check] = (grads[check] - stale[check]).square().sum(dim=1) > thr
        else:
            upload = torch.ones(n, dtype=torch.bool)
        if forced is not None:
            upload = forced.clone()
        rows = upload.nonzero().squeeze(1)
        ef = alg.memory.name == "ef"
        if ef:  # the engine adds in place with alpha: the same rounding as e + s*g
            v = torch.add(self.error[rows], grads[rows], alpha=lr / n)
        else:
            v = torch.mul(grads[rows], lr / n)
        q = plain_compress(alg, v)
        if ef:
            self.error[rows] = v - q.to_dense()
        self.anchor[rows] = theta
        self.tau += 1
        self.tau[rows] = 1
        if rows.numel():
            self.last.assign(rows, q)
        step = self.last.sum(torch.zeros_like(theta))
        self.steps.append(float(torch.dot(step, step)))
        self.k += 1
        return upload, q, step


@pytest.mark.parametrize("name", ["sgd", "sparse", "lasg", "sasg"])
def test_rounds_match_the_plain_formulation_bit_for_bit(name):
    layout = Layout([("w", (40, 300)), ("b", (40,)), ("v", (3, 40)), ("c", (3,))])
    d, n, lr = layout.numel, 5, 0.1
    gen = torch.Generator().manual_seed(11)
    masks = [None] * 6 + [torch.tensor(m, dtype=torch.bool) for m in itertools.product([0, 1], repeat=n)][::3]
    fast = make_algorithm(name, layout, density=0.05, window=3, c=0.5)
    if fast.lazy:
        fast.trigger = Scripted(3, 0.5, masks)
    engine = RoundEngine(fast, InProcessTransport(n))
    plain = Plain(make_algorithm(name, layout, density=0.05, window=3, c=0.5), n, d)
    theta_f = torch.randn(d, generator=gen)
    theta_s = theta_f.clone()
    for k, forced in enumerate(masks):
        if not fast.lazy:
            forced = None
        grads = torch.randn(n, d, generator=gen) * 0.1
        grads[:, 100:200] = grads[:, 100:100 + 1]  # equal magnitudes: ties in the big segment
        stale = torch.randn(n, d, generator=gen) * 0.1
        # Gradients as one flat (n, d) tensor or as per-segment column blocks (a vmap backend's
        # outputs, no flat copy), on alternate rounds, for the fresh and the stale ones.
        blocks = k % 2 == 1
        as_blocks = lambda t: tuple(c.clone() for c in layout.columns(t)) if blocks else t.clone()  # noqa: E731
        result = engine.step(theta_f, as_blocks(grads), lambda rows: as_blocks(stale[rows]), lr)
        theta_f -= result.step
        flags = result.flags
        upload, q, step = plain.round(theta_s, grads, stale, lr, forced)
        theta_s = theta_s - step
        assert torch.equal(flags, upload)
        assert torch.equal(engine.workers.staleness, plain.tau)
        if fast.memory.name == "ef":
            assert torch.equal(engine.workers.error, plain.error)
        if fast.lazy:
            assert torch.equal(engine.workers.anchor[upload], plain.anchor[upload])
        assert torch.equal(engine.server.last.to_dense(), plain.last.to_dense())
        assert torch.equal(theta_f, theta_s)
        h = engine.server.step_sq.numel()  # the window keeps the last D - 1 squared steps
        assert engine.server.step_sq.tolist() == ([0.0] * h + plain.steps)[len(plain.steps):]


def test_payload_survives_the_next_round():
    """Workspace buffers are reused round after round; a returned payload must not point into them."""
    layout = Layout([("w", (50, 60))])
    alg = make_algorithm("sasg", layout, density=0.1, window=1, c=1.0)
    engine = RoundEngine(alg, InProcessTransport(4))
    gen = torch.Generator().manual_seed(2)
    cols = lambda: layout.columns(torch.randn(4, 3000, generator=gen))  # noqa: E731
    q1 = alg.memory.upload(engine.workers, [0, 2], cols(), 0.1, alg.compressor, None, alg.codec).payload
    kept = (q1.indices.clone(), q1.values.clone())
    alg.memory.upload(engine.workers, [1, 2, 3], cols(), 0.1, alg.compressor, None, alg.codec)
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
    assert isinstance(alg.memory, NoMemory)
    engine = RoundEngine(alg, InProcessTransport(3))
    cols = layout.columns(torch.randn(3, 20, generator=torch.Generator().manual_seed(1)))
    q = alg.memory.upload(engine.workers, [0, 1, 2], cols, 0.5, alg.compressor, None, alg.codec).payload
    assert q.owned  # the memory gave its fresh v away
    server = engine.server
    server.last.assign(torch.arange(3), q)
    assert server.last.values is q.values and not q.owned  # taken once, then shared
    # a payload somebody else holds (a transport's receive buffer) is copied
    received = DensePayload(torch.full((3, 20), 2.0))
    server.last.assign(torch.arange(3), received)
    assert server.last.values is not received.values and server.last.values.eq(2).all()
    # all rows in another order: a scatter, never a hand-over
    other = DensePayload(torch.arange(3.0).repeat_interleave(20).view(3, 20), owned=True)
    server.last.assign(torch.tensor([2, 0, 1]), other)
    assert server.last.values is not other.values
    assert server.last.values[:, 0].tolist() == [1.0, 2.0, 0.0]
    # error feedback hands the compressor its own memory: the payload must be a copy
    ef = make_algorithm("always+identity+ef", layout)
    e_engine = RoundEngine(ef, InProcessTransport(3))
    q = ef.memory.upload(e_engine.workers, [0, 1, 2], cols, 0.5, ef.compressor, None, ef.codec).payload
    assert q.values.data_ptr() != e_engine.workers.error.data_ptr()
    assert e_engine.workers.error.abs().max() == 0 and torch.equal(q.values, cols[0] * 0.5)
