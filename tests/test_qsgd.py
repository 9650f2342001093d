"""``qsgd`` (stochastic quantization to s levels) and the ``elias`` codec of its levels: unbiased,
within the paper's variance bound, decoded bit for bit, priced as counted by hand, the same in the
simulator and in a real run, and end to end from the command line."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from sasg import Simulator
from sasg.cli.main import main
from sasg.core import Layout, WorkerState, make_algorithm
from sasg.core.codecs.protocol import CodecError
from sasg.core.codecs.value.elias import Elias
from sasg.core.compressors.qsgd import QSGD
from sasg.core.payloads import DensePayload, transmit
from sasg.seeds import worker_seed

from conftest import small_config
from test_distributed import spawn, synth

LAYOUT = Layout([("w", (16, 32)), ("b", (16,)), ("v", (4, 16)), ("c", (4,))])
D, S = LAYOUT.numel, len(LAYOUT.segments)


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(worker_seed(seed, m, 2)) for m in range(n)]


def vectors(n: int, seed: int = 100) -> torch.Tensor:
    """Gaussian rows with exact zeros and magnitudes that differ tensor by tensor (drawn from a
    seed the workers' generators never use, so the draws and the data are unrelated)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, D, generator=g) * torch.pow(10.0, torch.randint(-2, 2, (n, D), generator=g).float())
    return torch.where(torch.rand(n, D, generator=g) < 0.05, 0.0, v)


def units_of(v: torch.Tensor, levels: int) -> torch.Tensor:
    """``(N, S)`` float64: ||v_s|| / s rounded up as qsgd does (checked against the plain ratio)."""
    from sasg.core.compressors.qsgd import level_unit

    norms = torch.stack([v[:, s.offset : s.end].double().norm(dim=1) for s in LAYOUT.segments], dim=1)
    u = level_unit(norms, levels)
    assert bool(((u >= norms / levels) & (u <= norms / levels * (1 + 2.0**-17))).all())
    return u


def exact_variance(v: torch.Tensor, levels: int) -> torch.Tensor:
    """``(d,)`` Var C(v)_i = u^2 p (1 - p), p the fractional part of |v_i| / u (one row v)."""
    u = torch.cat([units_of(v[None], levels)[0, k].expand(s.numel) for k, s in enumerate(LAYOUT.segments)])
    x = v.double().abs() / u
    p = x - x.floor()
    return u**2 * p * (1 - p), u


# ----- the compressor -----------------------------------------------------------------------------


def test_qsgd_sends_integer_levels_of_its_unit_drawn_from_each_workers_generator():
    alg = make_algorithm("always+qsgd", LAYOUT)
    assert alg.memory.name == "none" and alg.compressor.describe() == {"compressor": "qsgd", "levels": 16}
    v = vectors(4)
    v[1, LAYOUT.segments[1].offset : LAYOUT.segments[1].end] = 0.0  # a tensor of zeros
    q = alg.compressor.compress(v, generators=gens(4)).values
    u = units_of(v, 16)
    for k, seg in enumerate(LAYOUT.segments):
        qs, vs = q[:, seg.offset : seg.end].double(), v[:, seg.offset : seg.end]
        level = qs.abs() / u[:, k : k + 1].clamp(min=1e-300)
        assert torch.equal(level, level.round()) and bool((level <= 16).all())
        assert bool((torch.sign(qs) * torch.sign(vs) >= 0).all())  # the sign of v
        assert not bool(torch.signbit(qs[qs == 0]).any())  # +0, never -0
    assert bool((q[1, LAYOUT.segments[1].offset : LAYOUT.segments[1].end] == 0).all())
    for m in range(4):  # row m depends on worker m's generator only
        assert torch.equal(alg.compressor.compress(v, [m], generators=[gens(4)[m]]).values[0], q[m])
    assert not torch.equal(alg.compressor.compress(v, generators=gens(4, seed=1)).values, q)
    bad = v.clone()
    bad[0, 3] = math.nan
    bad[2, LAYOUT.segments[2].offset] = math.inf
    out = alg.compressor.compress(bad, generators=gens(4)).values
    assert bool(out[0, : LAYOUT.segments[0].end].isnan().all()) and bool(out[2, LAYOUT.segments[2].offset :
                                                                             LAYOUT.segments[2].end].isnan().all())
    assert bool(out[0, LAYOUT.segments[0].end :].isfinite().all())
    with pytest.raises(ValueError, match="levels"):
        QSGD(LAYOUT, levels=0)
    with pytest.raises(ValueError, match="generators"):
        alg.compressor.compress(v)


@pytest.mark.parametrize("levels", [1, 4, 16])
def test_qsgd_is_unbiased_and_within_the_papers_variance_bound(levels):
    """n independent draws of C(v) for one v.

    Unbiased: each C(v)_i - v_i has mean 0, variance var_i = u^2 p (1 - p) and |C(v)_i - v_i| <= u,
    so by Bernstein's inequality the mean of n draws is within
    t_i = (2uL/3 + sqrt((2uL/3)^2 + 8 n var_i L)) / (2n), L = ln(2/delta), with probability
    1 - delta each; delta = 1e-6 / d, plus u 2^-23 for the float32 draws' granularity.

    Variance: the mean over draws of ||C(v) - v||^2 is within 5 % of sum_i var_i (d terms, each
    bounded: a stable estimate) and that sum is at most min(d/s^2, sqrt(d)/s) ||v||^2 (the paper's
    Lemma 3.1, which holds per tensor and hence for the whole vector)."""
    comp = QSGD(LAYOUT, levels=levels)
    v = vectors(1, seed=105)[0]
    n = 3000
    g = torch.Generator().manual_seed(11)
    q = comp.compress(v.expand(n, D), generators=[g] * n).values.double()  # n independent draws
    var, u = exact_variance(v, levels)
    L = math.log(2 / (1e-6 / D))
    t = (2 * u * L / 3 + torch.sqrt((2 * u * L / 3) ** 2 + 8 * n * var * L)) / (2 * n)
    err = (q.mean(0) - v.double()).abs()
    assert bool((err <= t + 2.0**-23 * u).all()), float((err / t).max())
    sq = ((q - v.double()) ** 2).sum(1)  # ||C(v) - v||^2 of every draw
    assert float(sq.mean()) == pytest.approx(float(var.sum()), rel=0.05)
    bound = min(D / levels**2, math.sqrt(D) / levels) * float(v.double().norm() ** 2)
    assert float(var.sum()) <= bound and float(sq.mean()) <= bound
    for seg in LAYOUT.segments:  # and tensor by tensor
        dv = seg.numel
        tb = min(dv / levels**2, math.sqrt(dv) / levels) * float(v[seg.offset : seg.end].double().norm() ** 2)
        assert float(var[seg.offset : seg.end].sum()) <= tb * (1 + 2.0**-16)


# ----- the elias codec ------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1, 3, 16, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qsgd_messages_decode_exactly_under_elias(levels, dtype):
    codec = Elias(LAYOUT)
    v = vectors(5, seed=101 + levels).to(dtype)
    v[1, LAYOUT.segments[0].offset : LAYOUT.segments[0].end] = 0.0  # a tensor of zeros
    v[2, :] *= 1e-30  # tiny, still normal float32 units
    v[3, LAYOUT.segments[3].offset] = math.nan  # decodes to NaN throughout that tensor
    q = QSGD(LAYOUT, levels=levels).compress(v, generators=gens(5))
    data, sizes = q.encode(codec)
    got = q.decode(codec, data, sizes).values
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), q.values.isnan()) and bool(got[3, LAYOUT.segments[3].offset :].isnan().all())
    ok = ~q.values.isnan()
    assert torch.equal(got[ok], q.values[ok]) and not bool(torch.signbit(got[got == 0]).any())
    assert len(set(sizes)) > 1  # sizes follow the levels
    # the sender applies what receivers decode, bit for bit
    assert torch.equal(transmit(q, codec).payload.values[ok], q.values[ok])


def test_elias_finds_the_grid_of_other_messages_and_rounds_the_rest():
    codec = Elias(LAYOUT)
    v = vectors(3, seed=7)
    for member in ("terngrad", "sign"):  # on a grid: exact
        q = make_algorithm(f"always+{member}", LAYOUT).compressor.compress(v, generators=gens(3))
        assert torch.equal(q.decode(codec, *q.encode(codec)).values, q.values)
    # no level-1 value: the unit is the gcd of the first values (3u, 6u, ...), or of them all
    grid = torch.zeros(2, D)
    w = LAYOUT.segments[0]
    u = 205 / 2048  # a unit of few significant bits: every k u below is exact in float32
    grid[0, w.offset : w.offset + 5] = torch.tensor([3.0, -6.0, 9.0, 12.0, 0.0], dtype=torch.float64) * u
    grid[1, w.offset : w.offset + 20] = torch.tensor([2.0] * 16 + [4.0, 6.0, 3.0, 8.0], dtype=torch.float64) * u
    p = DensePayload(grid)
    assert torch.equal(p.decode(codec, *p.encode(codec)).values, grid)
    # values on no grid: the nearest of 0, u, .., 16 u with u = max|v_s| / 16 (rounded up)
    p = DensePayload(v)
    got = p.decode(codec, *p.encode(codec)).values
    for seg in LAYOUT.segments:
        vs, gs = v[:, seg.offset : seg.end], got[:, seg.offset : seg.end]
        u = vs.abs().amax(1, keepdim=True) / 16
        assert bool(((gs - vs).abs() <= u / 2 * (1 + 1e-5)).all())
    again = DensePayload(got)
    assert torch.equal(again.decode(codec, *again.encode(codec)).values, got)  # lossy once only


def test_bits_per_message_match_a_hand_count():
    layout = Layout([("a", (4,)), ("b", (3,))])
    codec = Elias(layout)
    q = DensePayload(torch.tensor([[0.0, 0.5, -1.0, 1.5, 0.0, -0.0, 0.0]]))  # levels 0 1 2 3 | 0 0 0, u = 0.5
    data, sizes = q.encode(codec)
    # Elias gamma of l + 1 and a sign bit for l > 0: 1 | 010 0 | 011 1 | 00100 0 | 1 | 1 | 1 = 18 bits;
    # as two streams: unary 1 01 01 001 1 1 1 (11 bits -> 2 bytes), remainder 00 11 000 (7 -> 1)
    assert sizes == [2 * 4 + 2 + 1]
    assert data[:8].view(torch.float32).tolist() == [0.5, 0.0]
    assert data[8:].tolist() == [0b10101001, 0b11100000, 0b00110000]
    assert torch.equal(q.decode(codec, data, sizes).values, q.values)
    # on the FC 784-512-10: 32 per tensor plus 2 floor(log2(l + 1)) + 1 + [l > 0] per entry, padded
    fc = Layout([("w1", (512, 784)), ("b1", (512,)), ("w2", (10, 512)), ("b2", (10,))])
    v = torch.randn(1, fc.numel, generator=torch.Generator().manual_seed(3)) * 0.01
    q = QSGD(fc).compress(v, generators=gens(1))
    u = torch.stack([level_unit_of(v[0, s.offset : s.end]) for s in fc.segments])
    level = (q.values[0].double() / torch.repeat_interleave(u, torch.tensor([s.numel for s in fc.segments]))).abs()
    level = level.round().long()
    zeros = torch.floor(torch.log2((level + 1).double())).long()
    unary, rem = int((zeros + 1).sum()), int((zeros + (zeros > 0)).sum())
    _, sizes = q.encode(Elias(fc))
    assert 8 * sizes[0] == 32 * 4 + 8 * math.ceil(unary / 8) + 8 * math.ceil(rem / 8)
    assert 8 * sizes[0] < 1.1 * fc.numel  # about one bit per entry at s = 16


def level_unit_of(x: torch.Tensor) -> torch.Tensor:
    from sasg.core.compressors.qsgd import level_unit

    return level_unit(x.double().norm(), 16)


def test_elias_rejects_truncated_and_corrupted_bytes():
    codec = Elias(LAYOUT)
    q = QSGD(LAYOUT).compress(vectors(2, seed=9), generators=gens(2))
    data, sizes = q.encode(codec)
    first = data[: sizes[0]]
    for cut in (1, 2, 5, sizes[0] // 2, sizes[0] - 4 * S + 1, sizes[0] - 1):
        with pytest.raises(CodecError, match="elias: message 0"):
            codec.decode_dense(first[:cut].clone(), [cut], torch.float32)
    with pytest.raises(CodecError, match="trailing"):
        codec.decode_dense(torch.cat([first, first.new_zeros(1)]), [sizes[0] + 1], torch.float32)
    with pytest.raises(CodecError, match="sum to"):
        codec.decode_dense(data, [sizes[0], sizes[1] - 1], torch.float32)
    bad = first.clone()
    bad[3] |= 0x80  # the first unit's sign bit
    with pytest.raises(CodecError, match="negative unit"):
        codec.decode_dense(bad, sizes[:1], torch.float32)
    bad = first.clone()
    bad[4 * S : 4 * S + 3] = 0  # 24 zero bits: a code longer than any level the encoder writes
    with pytest.raises(CodecError, match="leading zeros"):
        codec.decode_dense(bad, sizes[:1], torch.float32)
    # sparse messages: idx32 indices, then the value part
    alg = make_algorithm("always+topk", LAYOUT, density=0.05, codec="elias")
    p = alg.compressor.compress(vectors(3, seed=10))
    sent = transmit(p, alg.codec)
    got = alg.compressor.empty(1).decode(alg.codec, sent.data, sent.sizes)
    assert torch.equal(got.indices, p.indices) and torch.equal(got.values, sent.payload.values)
    with pytest.raises(CodecError, match="elias: message 0"):
        alg.codec.decode_sparse(sent.data[: sent.sizes[0] - 1].clone(), [sent.sizes[0] - 1], p.nnz_per_message,
                                torch.float32)


def test_elias_under_error_feedback_keeps_what_rounding_dropped():
    alg = make_algorithm("always+topk", LAYOUT, density=0.1, codec="elias")
    v = vectors(4, seed=12)
    workers = WorkerState.create(4, D, alg.worker_buffers, None, torch.float32)
    sent = alg.memory.upload(workers, [0, 1, 2, 3], LAYOUT.as_columns(v), 1.0, alg.compressor, gens(4), alg.codec)
    assert torch.equal(workers.buffer("error"), v - sent.payload.to_dense())


# ----- end to end ------------------------------------------------------------------------------------


def _qsgd_rank(rank, world, folder, algos, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    for algo in algos:
        run = DistributedRun(small_config(workers=world, codec="elias"), algo, synth(), TorchTransport())
        result = run.run(iterations=rounds)
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(), "last": run.server.last.values},
                   os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_qsgd_under_elias_distributed_run_equals_the_simulator(tmp_path, one_thread):
    """Rank m draws what simulated worker m draws; the messages' sizes vary and travel."""
    world, rounds, algos = 3, 12, ("always+qsgd", "wk2+qsgd")
    spawn(_qsgd_rank, world, str(tmp_path), algos, rounds)
    for algo in algos:
        sim = Simulator(small_config(workers=world, codec="elias"), algo, synth())
        ref = sim.run(iterations=rounds)
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            assert torch.equal(out["last"], sim.server.last.values)
            assert torch.equal(out["theta"], ref.theta)
            for key in ("uploads", "bits_up", "bits_down"):
                assert out["ledger"][key] == ref.ledger.state_dict()[key], (algo, key)
        assert len(set(ref.ledger.bits_up)) > 1  # message sizes vary round to round


def test_compare_runs_qsgd_under_elias_from_the_command_line(tmp_path, one_thread):
    out = tmp_path / "cmp"
    assert main(["compare", "--algos", "always+qsgd,wk2+qsgd,always+terngrad", "--codec",
                 "always+qsgd=elias,wk2+qsgd=elias,always+terngrad=ternary", "--dataset", "synthetic",
                 "--workers", "2", "--iterations", "20", "--batch-size", "5", "--eval-every", "10",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    records = {r["algorithm"]: r for r in json.loads((out / "summary.json").read_text())["records"]}
    qsgd, tern = records["always+qsgd"], records["always+terngrad"]
    assert qsgd["codec"] == "elias" and qsgd["uploads"] == 40 and not qsgd["failed"] and not qsgd["diverged"]
    d = qsgd["num_parameters"]
    assert 40 * d < qsgd["bits_up"] < tern["bits_up"] < 40 * 2.1 * d  # about 1.4 bits per entry, ternary 2
    assert records["wk2+qsgd"]["uploads"] <= 40 and records["wk2+qsgd"]["final_test_acc"] > 50
