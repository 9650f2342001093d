"""``dgc`` (Deep Gradient Compression's sampled-threshold top-k): at most K entries a message, the
real count priced by every codec, the selection rule reproduced from the worker's own draws, the
memory invariant, sim == dist, and the CLI."""

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
from sasg.core.payloads import transmit
from sasg.core.payloads.varsparse import VarSparsePayload
from sasg.seeds import worker_seed

from conftest import small_config
from test_distributed import spawn, synth

# h = 5 %: "w" (40,000 entries) and "v" (1,000) are sampled (512 draws each, the sample's 26th
# largest |v| is the threshold); "b" (100) and "c" (10) are their own samples (exact top-k).
LAYOUT = Layout([("w", (100, 400)), ("b", (100,)), ("v", (10, 100)), ("c", (10,))])
D, S, H = LAYOUT.numel, len(LAYOUT.segments), 0.05
CODECS = ["paper32", *(f"{i}+{f}" for i in ("idx32", "rice", "bitmap", "auto")
                       for f in ("fp32", "fp16", "bf16", "int8", "sign", "ternary"))]


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(worker_seed(seed, m, 2)) for m in range(n)]


def gaussian(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def dgc(codec: str = "paper32", algo: str = "always+dgc"):
    return make_algorithm(algo, LAYOUT, density=H, codec=codec)


def per_segment(q: VarSparsePayload, i: int) -> list[torch.Tensor]:
    idx, _ = q.message(i)
    return [idx[(idx >= s.offset) & (idx < s.end)] - s.offset for s in LAYOUT.segments]


# ----- the rule -------------------------------------------------------------------------------------


def test_nnz_is_at_most_k_and_close_to_k_on_gaussian_data():
    """Gaussian rows: nnz <= K always (k_s per tensor), the exact tensors send k_s, and the mean
    nnz / K is 0.930 +- 0.04. Why: in a sampled tensor the share of entries at or above the
    sample's r-th largest (r = round(0.05 * 512) = 26 of n = 512 draws) is Beta(r, n - r + 1)
    (order statistics), so the count passing is X = d_s Beta(26, 487), mean 1.014 k_s, capped at
    k_s: E[min(X / k_s, 1)] = 0.930 (both sampled tensors have d_s / k_s = 20). The mean of 64 rows
    has sd 0.0125: the tolerance is 3 sd. Every message holds at least 0.4 K (X < 0.4 k_s has
    probability 2e-5)."""
    comp = dgc().compressor
    assert comp.default_memory == "ef" and dgc().memory.name == "ef"
    K = comp.nnz
    assert K == sum(comp.k_per_segment) == 2000 + 5 + 50 + 1
    q = comp.compress(gaussian(64), generators=gens(64))
    counts = q.counts
    assert bool((counts <= K).all()) and bool((counts >= 0.4 * K).all())
    assert abs(float(counts.double().mean()) / K - 0.930) < 0.04
    assert len(set(counts.tolist())) > 32  # varies from worker to worker
    for i in range(64):
        got = [p.numel() for p in per_segment(q, i)]
        assert all(1 <= g <= k for g, k in zip(got, comp.k_per_segment))
        assert got[1] == comp.k_per_segment[1] and got[3] == comp.k_per_segment[3]  # unsampled: exact
        idx, val = q.message(i)
        assert bool((idx[1:] > idx[:-1]).all())  # distinct, ascending
        assert torch.equal(val, gaussian(64)[i, idx])  # v's values
    padding = ~q.valid()
    assert not bool(q.indices[padding].any()) and not bool(q.values[padding].any())


def reference(comp, v: torch.Tensor, g: torch.Generator) -> tuple[list[torch.Tensor], list[bool]]:
    """The documented rule, redone from a copy of the worker's generator: per sampled tensor a
    float64 uniform u (one draw of sum n_s for the message), positions floor(u d_s), threshold the
    r_s-th largest |v| of the sample; keep |v| >= t (NaN counts as largest), or the exact top k_s
    (ties to the lower index) when more pass. Returns each tensor's kept positions and whether more
    than k_s passed."""
    sizes = [max(512, math.ceil(0.01 * s.numel)) for s in LAYOUT.segments]
    plan = [None if n >= s.numel else (n, max(1, math.floor(H * n + 0.5))) for n, s in zip(sizes, LAYOUT.segments)]
    assert plan == comp.plan == [(512, 26), None, (512, 26), None]
    u = torch.rand(sum(p[0] for p in plan if p is not None), generator=g, dtype=torch.float64)
    kept, over, col = [], [], 0
    for seg, k, p in zip(LAYOUT.segments, comp.k_per_segment, plan):
        x = v[seg.offset : seg.end]
        mag = torch.where(torch.isnan(x), math.inf, x.abs())  # NaN ranks above every number
        if p is None:
            t = mag.sort(descending=True).values[k - 1]
        else:
            pos = (u[col : col + p[0]] * seg.numel).long()
            col += p[0]
            t = mag[pos].sort(descending=True).values[p[1] - 1]
        passed = (mag >= t).nonzero().squeeze(1)
        over.append(passed.numel() > k)
        if passed.numel() > k:
            order = torch.sort(mag, descending=True, stable=True).indices[:k]
            passed = order.sort().values
        kept.append(passed)
    return kept, over


def test_the_selection_is_the_sampled_threshold_or_the_top_k_of_what_passed_it():
    comp = dgc().compressor
    v = gaussian(6, seed=1)
    v[1] = torch.round(v[1] * 2) / 2  # many ties at every magnitude: more pass, ties to the lower index
    v[2] = 0.0  # threshold 0: everything passes, the top k are the lowest indices
    v[3, ::97] = float("nan")  # NaN: larger than every number
    v[4, :40000] = torch.linspace(-1, 1, 40000)  # spread evenly
    q = comp.compress(v, generators=gens(6))
    overs = []
    for i, g in enumerate(gens(6)):
        kept, over = reference(comp, v[i], g)
        overs += over[0::2]  # the sampled tensors
        for got, want in zip(per_segment(q, i), kept):
            assert torch.equal(got, want), i
    assert any(overs) and not all(overs)  # both branches met
    assert torch.equal(per_segment(q, 2)[0], torch.arange(comp.k_per_segment[0]))
    # row m depends on worker m's generator only: alone, or rows reordered
    g = gens(6)
    again = comp.compress(v, [5, 3], generators=[g[5], g[3]])
    for j, i in enumerate((5, 3)):
        assert all(torch.equal(a, b) for a, b in zip(per_segment(again, j), per_segment(q, i)))
    with pytest.raises(ValueError, match="generators"):
        comp.compress(v)


# ----- the bits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["paper32", "rice+fp32", "bitmap+int8"])
def test_the_bytes_are_those_of_the_real_entries_only(codec):
    """paper32: 64 bits per real entry; every codec writes for a message exactly what it writes
    for its real entries alone (no padding travels), and the ledger counts 8 x those bytes."""
    alg = dgc(codec)
    q = alg.compressor.compress(gaussian(5, seed=2), generators=gens(5))
    sent = transmit(q, alg.codec)
    assert 8 * sent.data.numel() == sent.bits == 8 * sum(sent.sizes)
    for i in range(5):
        idx, val = q.message(i)
        alone, size = alg.codec.encode_sparse(idx.unsqueeze(0), val.unsqueeze(0))
        assert sent.sizes[i] == size[0]
        assert torch.equal(sent.data[sum(sent.sizes[:i]) : sum(sent.sizes[: i + 1])], alone)
        if codec == "paper32":
            assert 8 * sent.sizes[i] == 64 * int(q.counts[i])
    assert not alg.compressor.empty(1).fixed_size(alg.codec)  # sizes vary: they travel


def test_the_ledger_counts_64_bits_per_real_entry_under_paper32_and_the_real_bytes_under_rice():
    for codec in ("paper32", "rice+fp32"):
        sim = Simulator(small_config(codec=codec, eval_every=10), "always+dgc", synth())
        K, seen = sim.algorithm.compressor.nnz, []

        def after(s):  # everyone sends every round: the server's last messages are this round's
            data, sizes = s.server.last.encode(s.algorithm.codec)
            seen.append((s.ledger.bits_up[-1], 8 * sum(sizes), 64 * int(s.server.last.counts.sum())))

        res = sim.run(iterations=10, after_round=after)
        for bits, real, paper in seen:
            assert bits == real and (codec != "paper32" or bits == paper)
        assert sum(res.ledger.bits_up) < 64 * K * sum(res.ledger.uploads)  # fewer than K entries sent
        assert sim.engine.bits_flags_per_round == 0  # one process: no size travels


# ----- codecs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_decodes_a_dgc_message_to_what_its_value_format_makes_of_the_real_entries(codec):
    alg = dgc(codec)
    v = gaussian(4, seed=3)
    v[0, :400] *= 100  # per-tensor scales (int8, sign, ternary) differ between messages
    q = alg.compressor.compress(v, generators=gens(4))
    sent = transmit(q, alg.codec)
    got = alg.compressor.empty(1).decode(alg.codec, sent.data, sent.sizes)  # a receiver's template
    assert torch.equal(got.counts, q.counts) and torch.equal(got.indices, q.indices)
    assert torch.equal(got.values, sent.payload.values)  # the receiver applies what the sender applied
    assert not bool(got.values[~got.valid()].any())
    if alg.codec.lossless:
        assert torch.equal(got.values, q.values)
    else:
        for i in range(4):  # the value format applied to the real entries of this message alone
            idx, val = q.message(i)
            data, sizes = alg.codec.encode_sparse(idx.unsqueeze(0), val.unsqueeze(0))
            want = alg.codec.decode_sparse(data, sizes, idx.numel(), torch.float32)[1][0]
            assert torch.equal(got.message(i)[1], want)
        if codec.endswith(("fp16", "bf16")):
            cast = torch.float16 if codec.endswith("fp16") else torch.bfloat16
            assert torch.equal(got.values, q.values.to(cast).float())


def test_bytes_that_do_not_fit_a_message_raise_codec_errors():
    for codec in ("paper32", "idx32+sign", "rice+fp32", "bitmap+fp32"):
        alg = dgc(codec)
        q = alg.compressor.compress(gaussian(2, seed=4), generators=gens(2))
        sent, template = transmit(q, alg.codec), alg.compressor.empty(1)
        with pytest.raises(CodecError):
            template.decode(alg.codec, sent.data[:-1], [sent.sizes[0], sent.sizes[1] - 1])
    small = make_algorithm("always+dgc", LAYOUT, density=0.01)  # K = 431: room for fewer than q holds
    with pytest.raises(CodecError, match="entries"):
        small.compressor.empty(1).decode(alg.codec, sent.data, sent.sizes)


# ----- memory and server ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec,exact", [("paper32", True), ("rice+bf16", True), ("idx32+int8", False)])
def test_error_feedback_keeps_exactly_what_was_not_sent(codec, exact):
    alg = dgc(codec)
    v = gaussian(4, seed=5)
    workers = WorkerState.create(4, D, alg.worker_buffers, None, torch.float32)
    sent = alg.memory.upload(workers, [0, 1, 2, 3], LAYOUT.as_columns(v), 1.0, alg.compressor, gens(4), alg.codec)
    decoded, e = sent.payload.to_dense(), workers.buffer("error")
    assert torch.equal(e, v - decoded)
    mask = sent.payload.to_dense() != 0
    assert torch.equal(e[~mask], v[~mask])  # what was not sent stays, bit for bit
    if exact:
        assert torch.equal(decoded + e, v)
        if codec == "paper32":
            assert not bool(e[mask].any())  # sent as it is: exactly 0 left
    else:
        torch.testing.assert_close(decoded + e, v, rtol=0, atol=1e-6 * float(v.abs().max()))


def test_the_server_keeps_each_workers_last_message():
    sim = Simulator(small_config(eval_every=12), "wk2+dgc", synth())
    sim.run(iterations=12)
    last = sim.server.last
    assert isinstance(last, VarSparsePayload) and last.num_messages == 4
    assert len(set(last.counts.tolist())) > 1 and bool((last.counts <= sim.algorithm.compressor.nnz).all())
    step = torch.zeros(last.numel)
    assert torch.equal(last.sum(step), last.to_dense().sum(0))
    fresh = sim.algorithm.compressor.empty(4)
    fresh.load_state_dict(last.state_dict())
    assert torch.equal(fresh.to_dense(), last.to_dense()) and torch.equal(fresh.counts, last.counts)
    with pytest.raises(ValueError, match="kind"):
        make_algorithm("sparse", sim.algorithm.layout, density=0.1).compressor.empty(4).load_state_dict(
            last.state_dict())


# ----- sim == dist, CLI ---------------------------------------------------------------------------------

RUNS = (("always+dgc", "paper32"), ("wk2+dgc", "rice+int8"))


def _dgc_rank(rank, world, folder, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    for algo, codec in RUNS:
        run = DistributedRun(small_config(workers=world, codec=codec), algo, synth(), TorchTransport())
        result = run.run(iterations=rounds)
        last = run.server.last
        torch.save({"theta": result.theta, "ledger": result.ledger.state_dict(), "indices": last.indices,
                    "values": last.values, "counts": last.counts,
                    "error": run.workers.state_dict()["buffers"]["error"]},
                   os.path.join(folder, f"{algo}-rank{rank}.pt"))


def test_distributed_run_equals_the_simulator(tmp_path, one_thread):
    """Rank m samples what simulated worker m samples: same messages (counts included),
    parameters, error memories and payload bits; the sizes travel on the flag line."""
    world, rounds = 3, 12
    spawn(_dgc_rank, world, str(tmp_path), rounds)
    for algo, codec in RUNS:
        sim = Simulator(small_config(workers=world, codec=codec), algo, synth())
        ref = sim.run(iterations=rounds)
        for r in range(world):
            out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
            for key in ("indices", "values", "counts"):
                assert torch.equal(out[key], getattr(sim.server.last, key)), (algo, key)
            assert torch.equal(out["theta"], ref.theta)
            assert torch.equal(out["error"][0], sim.workers.error[r])
            for key in ("uploads", "bits_up", "bits_down"):
                assert out["ledger"][key] == ref.ledger.state_dict()[key], (algo, key)
            assert out["ledger"]["bits_flags"] == [32 * world] * rounds  # every size, every round
        assert len(set(sim.server.last.counts.tolist())) > 1


def test_compare_runs_dgc_under_both_triggers(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--algos", "always+dgc,wk2+dgc", "--dataset", "synthetic", "--workers", "2",
                 "--iterations", "20", "--batch-size", "5", "--eval-every", "10", "--density", "0.1",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    records = json.loads((out / "summary.json").read_text())["records"]
    assert [r["algorithm"] for r in records] == ["always+dgc", "wk2+dgc"]
    assert not any(r.get("failed") for r in records)
    from sasg.optim import SASG  # and the optimizer (one worker, in process)

    model = torch.nn.utils.skip_init(torch.nn.Linear, 600, 3)  # a 1,800-entry weight: sampled
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 600, generator=torch.Generator().manual_seed(1)))
        model.bias.zero_()
    opt = SASG(model.parameters(), lr=0.1, density=0.05, algorithm="always+dgc", seed=1)
    x, y = torch.randn(8, 600, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    totals = opt.ledger.totals()
    assert totals["uploads"] == 3 and 0 < totals["bits_up"] < 3 * 64 * (90 + 1)  # K = 90 + 1, fewer sent
