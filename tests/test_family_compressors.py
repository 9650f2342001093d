"""The compressors of the family (randomk, globaltopk, sign, terngrad): each one's defining
property, checked exactly where the maths allows, and each one run end to end under both
triggers and two codecs."""

from __future__ import annotations

import math
import os

import pytest
import torch

from sasg import Simulator
from sasg.cli.main import main
from sasg.core import Layout, WorkerState, make_algorithm
from sasg.core.codecs.composite import make_codec
from sasg.core.payloads import transmit
from sasg.seeds import worker_seed

from conftest import small_config
from test_distributed import spawn, synth

# Power-of-two tensor sizes keep every mean |v_s| dyadic (used where exact float sums are needed).
LAYOUT = Layout([("w", (16, 32)), ("b", (16,)), ("v", (4, 16)), ("c", (4,))])
D, S = LAYOUT.numel, len(LAYOUT.segments)
MEMBERS = ("randomk", "globaltopk", "sign", "terngrad")


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(worker_seed(seed, m, 2)) for m in range(n)]


def vectors(n: int, seed: int = 0) -> torch.Tensor:
    """Gaussian rows with some exact zeros and magnitudes that differ tensor by tensor."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, D, generator=g) * torch.pow(10.0, torch.randint(-2, 2, (n, D), generator=g).float())
    return torch.where(torch.rand(n, D, generator=g) < 0.05, 0.0, v)


def segment_counts(indices: torch.Tensor) -> torch.Tensor:
    bounds = torch.tensor([s.offset for s in LAYOUT.segments[1:]])
    seg = torch.bucketize(indices, bounds, right=True)
    return torch.stack([(seg == s).sum(1) for s in range(S)], dim=1)


# ----- randomk --------------------------------------------------------------------------------------


def test_randomk_keeps_k_s_distinct_ascending_entries_drawn_from_each_workers_generator():
    comp = make_algorithm("always+randomk", LAYOUT, density=0.1).compressor
    v = vectors(4)
    q = comp.compress(v, generators=gens(4))
    assert torch.equal(segment_counts(q.indices), torch.tensor([comp.k_per_segment] * 4))
    assert bool((q.indices[:, 1:] > q.indices[:, :-1]).all())  # distinct, ascending
    assert torch.equal(q.values, v.gather(1, q.indices))  # v's values, unscaled
    # row m's draw depends on worker m's generator only: alone, with rows reordered, or again
    for m in range(4):
        alone = comp.compress(v, [m], generators=[gens(4)[m]])
        assert torch.equal(alone.indices[0], q.indices[m])
    assert torch.equal(comp.compress(v, [3, 1], generators=[gens(4)[3], gens(4)[1]]).indices, q.indices[[3, 1]])
    # different workers draw different positions
    assert len({tuple(r) for r in q.indices.tolist()}) == 4


@pytest.mark.parametrize("n,k", [(40, 4), (12, 5)])  # by draws with rejection / by a permutation
def test_randomk_positions_are_uniform(n, k):
    from sasg.core.compressors.randomk import uniform_subset

    g, draws = torch.Generator().manual_seed(5), 3000
    hits = torch.zeros(n)
    for _ in range(draws):
        pos = uniform_subset(n, k, g)
        assert pos.numel() == k and bool((pos[1:] > pos[:-1]).all())
        hits[pos] += 1
    p = k / n  # each position is kept with probability k/n; 6 sd of a binomial count
    assert float((hits - draws * p).abs().max()) < 6 * math.sqrt(draws * p * (1 - p))


def _randomk_rank(rank, world, folder, algos, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    for algo in algos:
        run = DistributedRun(small_config(workers=world), algo, synth(), TorchTransport())
        result = run.run(iterations=rounds)
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(), "last": run.server.last.indices,
                    "error": run.workers.state_dict()["buffers"]["error"]},
                   os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_randomk_distributed_run_equals_the_simulator(tmp_path, one_thread):
    """Rank m draws exactly what simulated worker m draws: same messages, parameters and ledger."""
    world, rounds, algos = 3, 16, ("always+randomk", "wk2+randomk")
    spawn(_randomk_rank, world, str(tmp_path), algos, rounds)
    for algo in algos:
        sim = Simulator(small_config(workers=world), algo, synth())
        ref = sim.run(iterations=rounds)
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            assert torch.equal(out["last"], sim.server.last.indices)  # every worker's last draw
            assert torch.equal(out["theta"], ref.theta)
            assert out["error"].shape[0] == 1 and torch.equal(out["error"][0], sim.workers.error[r])
            for key in ("uploads", "bits_up", "bits_down"):
                assert out["ledger"][key] == ref.ledger.state_dict()[key], (algo, key)
        assert len({tuple(row) for row in sim.server.last.indices.tolist()}) == world


# ----- globaltopk -------------------------------------------------------------------------------------


def reference_global_topk(v: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the k largest |v| of each row, ties to the lower index."""
    order = torch.sort(v.abs(), dim=1, descending=True, stable=True).indices[:, :k]
    return order.sort(dim=1).values


def test_globaltopk_keeps_the_largest_magnitudes_of_the_whole_vector():
    alg = make_algorithm("always+globaltopk", LAYOUT, density=0.05)
    comp, topk = alg.compressor, make_algorithm("sparse", LAYOUT, density=0.05).compressor
    assert comp.nnz == topk.nnz  # one k for the model: the sum of topk's k_s
    v = vectors(5, seed=1)
    v[0, LAYOUT.segments[2].offset : LAYOUT.segments[2].end] *= 1000  # tensor "v" holds the largest entries
    v[1] = torch.tensor([1.0, -1.0]).repeat(D // 2)  # all tied: the lowest indices win
    q = comp.compress(v)
    assert torch.equal(q.indices, reference_global_topk(v, comp.nnz))
    assert torch.equal(q.values, v.gather(1, q.indices))
    assert torch.equal(q.indices[1], torch.arange(comp.nnz))
    counts = segment_counts(q.indices)
    assert counts[0].tolist() == [0, 0, comp.nnz, 0]  # topk would keep [25, 1, 3, 1]
    assert len({tuple(c) for c in counts.tolist()}) > 1  # per-tensor counts vary from message to message
    assert bool((counts == 0).any())  # and some tensor sends nothing
    # only the uploaders' rows, read where they lie
    assert torch.equal(comp.compress(v, [4, 2]).indices, q.indices[[4, 2]])


CODECS = ["paper32", *(f"{i}+{f}" for i in ("idx32", "rice", "bitmap", "auto") for f in ("fp32", "int8", "sign"))]


@pytest.mark.parametrize("codec", CODECS)
def test_globaltopk_messages_with_varying_per_tensor_counts_decode_under_every_codec(codec):
    alg = make_algorithm("always+globaltopk", LAYOUT, density=0.05, codec=codec)
    v = vectors(6, seed=2)
    v[0, :16] *= 1e4  # message 0: nearly all entries from tensor "w"'s first row
    q = alg.compressor.compress(v)
    sent = transmit(q, alg.codec)
    template = alg.compressor.empty(1)  # what a receiver decodes with
    got = template.decode(alg.codec, sent.data, sent.sizes)
    assert torch.equal(got.indices, q.indices)
    assert torch.equal(got.values, sent.payload.values)  # the receiver applies what the sender applied
    if alg.codec.lossless:
        assert torch.equal(got.values, q.values)
    if template.fixed_size(alg.codec):  # a fixed size known in advance, whatever the counts
        assert set(sent.sizes) == set(template.encode(alg.codec)[1])


# ----- sign -----------------------------------------------------------------------------------------


def test_sign_is_the_scaled_sign_and_costs_one_bit_per_entry_under_the_sign_codec():
    alg = make_algorithm("always+sign", LAYOUT, codec="sign")
    assert alg.memory.name == "ef"
    v = vectors(3, seed=3)
    q = alg.compressor.compress(v)
    for seg in LAYOUT.segments:
        vs, qs = v[:, seg.offset : seg.end], q.values[:, seg.offset : seg.end]
        m = vs.double().abs().mean(1, keepdim=True)  # ||v_s||_1 / d_s
        torch.testing.assert_close(qs.double(), torch.where(vs < 0, -m, m), rtol=1e-6, atol=0)  # sign(0) = +1
        assert bool((qs.abs() == qs[:, :1].abs()).all())  # one magnitude per tensor
    data, sizes = q.encode(alg.codec)
    assert sizes == [4 * S + math.ceil(D / 8)] * 3  # 1 bit per entry + one float32 per tensor
    assert torch.equal(q.decode(alg.codec, data, sizes).values, q.values)  # decodes to C(v) exactly


@pytest.mark.parametrize("codec", ["paper32", "sign", "int8"])
def test_sign_error_feedback_keeps_what_was_not_sent(codec):
    """decoded(q) + e == v: bit for bit where the arithmetic is exact (dyadic v, power-of-two
    tensors), to float32 rounding of v - decoded(q) otherwise."""
    alg = make_algorithm("always+sign", LAYOUT, codec=codec)
    dyadic = torch.randint(-64, 65, (4, D), generator=torch.Generator().manual_seed(4)).float() / 32
    for v, exact in ((dyadic, codec != "int8"), (vectors(4, seed=4), False)):
        workers = WorkerState.create(4, D, alg.worker_buffers, None, torch.float32)
        sent = alg.memory.upload(workers, [0, 1, 2, 3], LAYOUT.as_columns(v), 1.0, alg.compressor, gens(4),
                                 alg.codec)
        decoded, e = sent.payload.to_dense(), workers.buffer("error")
        assert torch.equal(e, v - decoded)
        if exact:
            assert torch.equal(decoded + e, v)
            assert torch.equal(decoded, alg.compressor.compress(v).values)
        else:
            torch.testing.assert_close(decoded + e, v, rtol=0, atol=1e-6 * float(v.abs().max()))


# ----- terngrad ---------------------------------------------------------------------------------------


def test_terngrad_is_unbiased_within_its_variance():
    comp = make_algorithm("always+terngrad", LAYOUT).compressor
    assert make_algorithm("always+terngrad", LAYOUT).memory.name == "none"
    v = vectors(1, seed=5)
    n = 4000
    g = torch.Generator().manual_seed(11)
    q = comp.compress(v.expand(n, D), generators=[g] * n).values.double()  # n independent draws
    for seg in LAYOUT.segments:
        vs, qs = v[0, seg.offset : seg.end].double(), q[:, seg.offset : seg.end]
        s = vs.abs().max()
        assert bool(((qs == 0) | (qs.abs() == s)).all()) and bool((torch.sign(qs) * torch.sign(vs) >= 0).all())
        assert bool((qs[:, vs.abs() == s] != 0).all())  # the largest entry is always sent
        var = s * vs.abs() - vs**2  # Var C(v)_i
        # mean of n draws: within 5 standard deviations (+ the float32 draws' granularity 2^-24 s)
        assert bool(((qs.mean(0) - vs).abs() <= 5 * torch.sqrt(var / n) + 2**-23 * s).all())
        # and the spread is the stated variance (summed over the tensor: a stable estimate)
        assert float(qs.var(0).sum()) == pytest.approx(float(var.sum()), rel=0.05)


def test_terngrad_messages_decode_exactly_under_ternary_at_two_bits_per_entry():
    for memory in ("", "+ef"):
        alg = make_algorithm(f"always+terngrad{memory}", LAYOUT, codec="ternary")
        v = vectors(4, seed=6)
        q = alg.compressor.compress(v, generators=gens(4))
        data, sizes = q.encode(alg.codec)
        assert sizes == [4 * S + math.ceil(2 * D / 8)] * 4
        got = q.decode(alg.codec, data, sizes).values
        assert torch.equal(got, q.values) and not bool(torch.signbit(got[got == 0]).any())
        workers = WorkerState.create(4, D, alg.worker_buffers, None, torch.float32)
        sent = alg.memory.upload(workers, [0, 1, 2, 3], LAYOUT.as_columns(v), 1.0, alg.compressor, gens(4),
                                 alg.codec)
        assert torch.equal(sent.payload.values, q.values)  # same generators, same draws, exact decode
        if memory:
            assert torch.equal(workers.buffer("error"), v - q.values)
    again = alg.compressor.compress(v, generators=gens(4, seed=1)).values
    assert not torch.equal(again, q.values)  # another seed, other draws


def test_ternary_rejects_bytes_it_never_writes():
    from sasg.core.codecs.protocol import CodecError

    codec = make_codec("idx32+ternary", LAYOUT)
    idx, vals = torch.tensor([[1, 5, 520, 530, 595]]), torch.tensor([[2.0, -4.0, 0.5, -1.0, 3.0]])
    data, sizes = codec.encode_sparse(idx, vals)
    assert sizes == [5 * 4 + 4 * S + 2]  # 5 indices, S scales, 10 bits of digits
    got = codec.decode_sparse(data, sizes, 5, torch.float32)[1]
    assert got.tolist() == [[0.0, -4.0, 0.5, -1.0, 3.0]]  # tensor w: scale 4, 2/4 rounds (half to even) to 0
    first, last = sizes[0] - 2, sizes[0] - 1
    for pos, byte, why in ((first, 0b10000000, "code 10"), (last, int(data[last]) | 1, "padding"),
                           (5 * 4 + 3, int(data[5 * 4 + 3]) | 0x80, "negative")):
        bad = data.clone()
        bad[pos] = byte
        with pytest.raises(CodecError, match=why):
            codec.decode_sparse(bad, sizes, 5, torch.float32)


# ----- end to end -------------------------------------------------------------------------------------

NATURAL = {"randomk": "rice+sign", "globaltopk": "rice+int8", "sign": "sign", "terngrad": "ternary"}


@pytest.mark.parametrize("member", MEMBERS)
def test_every_member_runs_20_rounds_under_both_triggers_and_two_codecs(member):
    data = synth()
    for trigger in ("always", "wk2"):
        for codec in ("paper32", NATURAL[member]):
            sim = Simulator(small_config(codec=codec, eval_every=20), f"{trigger}+{member}", data)
            res = sim.run(iterations=20)
            uploads = sum(res.ledger.uploads)
            assert bool(torch.isfinite(res.theta).all()) and 0 < uploads <= 80
            assert trigger == "wk2" or uploads == 80
            dense = member in ("sign", "terngrad")
            if codec == "paper32":
                per = 32 * sim.algorithm.layout.numel if dense else 64 * sim.algorithm.compressor.nnz
                assert sum(res.ledger.bits_up) == uploads * per
            elif dense:  # sign: 1 bit, ternary: 2 bits per entry, plus a float32 per tensor
                layout = sim.algorithm.layout
                bits = 8 * (4 * len(layout.segments) + math.ceil((1 if member == "sign" else 2) * layout.numel / 8))
                assert sum(res.ledger.bits_up) == uploads * bits
            else:
                assert sum(res.ledger.bits_up) < uploads * 32 * sim.algorithm.compressor.nnz


def test_compare_and_the_optimizer_take_the_new_members(tmp_path):
    import json

    from sasg.optim import SASG

    algos = ",".join(f"{t}+{m}" for t, m in zip(("always", "wk2", "always", "wk2"), MEMBERS))
    out = tmp_path / "cmp"
    assert main(["compare", "--algos", algos, "--dataset", "synthetic", "--workers", "2", "--iterations", "10",
                 "--batch-size", "5", "--eval-every", "5", "--density", "0.1", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    records = json.loads((out / "summary.json").read_text())["records"]
    assert [r["algorithm"] for r in records] == algos.split(",")
    model = torch.nn.utils.skip_init(torch.nn.Linear, 6, 3)  # no draw from the global RNG
    with torch.no_grad():
        model.weight.copy_(torch.arange(18.0).view(3, 6) / 18)
        model.bias.zero_()
    for member in MEMBERS:
        opt = SASG(model.parameters(), lr=0.1, density=0.2, algorithm=f"always+{member}", seed=1)
        x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

        def closure():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        assert opt.ledger.totals()["uploads"] == 1


def test_a_codec_that_decodes_the_members_messages_exactly_is_not_biased():
    layout = Layout([("w", (4, 3)), ("b", (3,))])
    biased = {(a, c): make_algorithm(a, layout, codec=c).biased
              for a, c in [("always+terngrad", "ternary"), ("always+qsgd", "elias"), ("always+terngrad", "int8"),
                           ("always+qsgd", "sign"), ("sgd", "bf16"), ("always+terngrad", "paper32")]}
    assert biased == {("always+terngrad", "ternary"): False, ("always+qsgd", "elias"): False,
                      ("always+terngrad", "int8"): True, ("always+qsgd", "sign"): True,
                      ("sgd", "bf16"): True, ("always+terngrad", "paper32"): False}
