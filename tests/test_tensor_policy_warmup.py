"""The practitioner's settings of every runner: the per-tensor policy and the dense warm-up.

* a tensor policy names the tensors top-k sends whole; every codec writes no index for them,
  decodes the same message back, and the ledger's bits are 8 x the bytes it wrote;
* ``all`` (the default) writes exactly the bytes it wrote before the policy existed;
* a warm-up's rounds are dense SGD (hand-computed), then the algorithm runs as from round 0
  (its lazy rule's own warm-up included) from the warmed-up parameters.
"""

from __future__ import annotations

import pytest
import torch

from sasg.core import Layout
from sasg.core.payloads import transmit
from sasg.core.spec import AlgorithmSettings, AlgorithmSpec, build_codec
from sasg.core.tensor_policy import AUTO_SMALL, TensorPolicy, check_tensor_policy, whole_segments
from sasg.engine import InProcessTransport, RoundEngine

LAYOUT = Layout([("w", (20, 30)), ("b", (20,)), ("w2", (5, 20)), ("b2", (5,)), ("k", (3, 1, 2, 2))])
CODECS = ("paper32", "rice+fp32", "rice+sign", "bitmap+int8", "idx32+bf16", "auto+fp16", "rice+bf16")


def _alg(policy: str, codec: str = "paper32", algo: str = "always+topk", **kw):
    settings = AlgorithmSettings(density=0.05, tensor_policy=policy, **kw).validate()
    return AlgorithmSpec.parse(algo, settings).build(LAYOUT, codec)


def test_policies_parse_to_canonical_names_and_bad_ones_say_how():
    assert check_tensor_policy("all") == "all"
    assert check_tensor_policy("auto") == f"vectors,small={AUTO_SMALL}"
    assert check_tensor_policy(" Small=100 , vectors") == "vectors,small=100"
    assert whole_segments(LAYOUT, "vectors") == [False, True, False, True, False]
    assert whole_segments(LAYOUT, "small=100") == [False, True, True, True, True]
    assert TensorPolicy.parse("auto").whole((512,), 512)  # a vector of any size
    for bad, why in (("some", "unknown tensor policy part"), ("small=x", "whole number"), (3, "must be a string")):
        with pytest.raises(ValueError, match=why):
            check_tensor_policy(bad)
    with pytest.raises(ValueError, match="--tensor-policy auto"):
        AlgorithmSettings(tensor_policy="half").validate()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("policy", ["vectors", "small=100", "auto"])
def test_whole_tensors_travel_without_indices_and_decode_exactly(codec, policy):
    alg = _alg(policy, codec)
    whole = whole_segments(LAYOUT, policy)
    v = torch.randn(3, LAYOUT.numel, generator=torch.Generator().manual_seed(0))
    q = alg.compressor.compress(v)
    for seg, w, k in zip(LAYOUT.segments, whole, alg.compressor.k_per_segment):
        assert k == (seg.numel if w else max(1, int(0.05 * seg.numel)))
    sent = transmit(q, alg.codec)
    back = alg.compressor.empty(1).decode(alg.codec, sent.data, sent.sizes)
    assert torch.equal(back.indices, q.indices)
    assert torch.equal(back.values, sent.payload.values)  # what error feedback subtracted
    # the same message without the policy's help costs more: the implied indices were not written
    # (a bitmap costs one bit per entry of the model whatever it holds)
    plain = sum(build_codec(codec, LAYOUT).encode_sparse(q.indices, q.values)[1])
    assert sum(sent.sizes) < plain or (codec.startswith("bitmap") and sum(sent.sizes) == plain)
    if codec == "paper32":  # K - implied int32 indices, then K fp32 values
        implied = sum(seg.numel for seg, w in zip(LAYOUT.segments, whole) if w)
        assert sent.sizes == [4 * (q.indices.shape[1] - implied) + 4 * q.indices.shape[1]] * 3
        assert alg.codec.sparse_nnz(sent.data, sent.sizes, torch.float32) == [q.indices.shape[1]] * 3


@pytest.mark.parametrize("codec", CODECS)
def test_policy_all_writes_the_bytes_it_always_wrote(codec):
    alg = _alg("all", codec)
    q = alg.compressor.compress(torch.randn(2, LAYOUT.numel, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(alg.codec.encode_sparse(q.indices, q.values)[0],
                       build_codec(codec, LAYOUT).encode_sparse(q.indices, q.values)[0])


@pytest.mark.parametrize("codec", ["paper32", "rice+sign"])
def test_the_ledger_counts_8_times_the_bytes_under_a_policy(codec):
    alg = _alg("auto", codec, algo="always+topk+none")  # no memory: each message is top-k of (lr/M) g
    engine = RoundEngine(alg, InProcessTransport(3), seed=0)
    theta = torch.zeros(LAYOUT.numel)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        grads = torch.randn(3, LAYOUT.numel, generator=g)
        theta -= engine.step(theta, grads, None, 0.3).step
        written = transmit(alg.compressor.compress(grads * 0.1), alg.codec).sizes
        assert engine.ledger.bits_up[-1] == 8 * sum(written) > 0


def test_a_compressor_that_cannot_send_whole_tensors_refuses_a_policy():
    with pytest.raises(ValueError, match="randomk.*does not send tensors whole"):
        _alg("auto", algo="always+randomk")
    _alg("all", algo="always+randomk")


def test_warmup_rounds_are_dense_sgd_then_the_algorithm_starts_from_round_0():
    M, W, D, lr = 2, 3, 2, 0.1
    alg = _alg("all", "paper32", algo="wk1+topk", warmup=W, window=D)
    transport = InProcessTransport(M)
    engine = RoundEngine(alg, transport, seed=0)
    theta = torch.randn(LAYOUT.numel, generator=torch.Generator().manual_seed(3))
    grads = [torch.randn(M, LAYOUT.numel, generator=torch.Generator().manual_seed(10 + k)) for k in range(W + D + 2)]
    ref = theta.clone()
    for k in range(W):
        theta -= engine.step(theta, grads[k], None, lr).step
        ref -= (grads[k] * (lr / M)).sum(0)  # everyone sends (lr / M) g, the server sums
        assert torch.equal(theta, ref)
    assert engine.ledger.uploads == [M] * W
    assert engine.ledger.bits_up == [32 * LAYOUT.numel * M] * W
    assert engine.ledger.bits_flags == [0] * W  # no flags in a dense round: everyone sends
    assert torch.count_nonzero(engine.workers.error) == 0  # nothing was held back
    # Then wk1 + top-k as from round 0: its own warm-up (D rounds) makes everyone upload first.
    fresh = RoundEngine(_alg("all", "paper32", algo="wk1+topk", window=D), InProcessTransport(M), seed=0)
    start = theta.clone()
    for k in range(W, W + D + 2):
        theta -= engine.step(theta, grads[k], None, lr).step
        start -= fresh.step(start, grads[k], None, lr).step
    assert engine.ledger.uploads[W : W + D] == [M] * D
    # the same messages; only the threshold's window still holds the dense rounds' steps
    assert engine.ledger.bits_up[W : W + D] == fresh.ledger.bits_up[:D]


def test_warmup_needs_a_memory_it_can_run_through():
    with pytest.raises(ValueError, match="--warmup 0"):
        _alg("all", algo="always+topk+ef21", warmup=2)
    with pytest.raises(ValueError, match="warmup must be a whole number"):
        AlgorithmSettings(warmup=-1).validate()
