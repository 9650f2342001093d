"""The hook's round made bucket by bucket (issue #24, item 3; :mod:`sasg.engine.parts`).

Each bucket's tensors are compressed and their exchange started when DDP hands the bucket over,
while the backward pass goes on. The contract checked here, on real gloo ranks with a model cut
into several buckets: the same training as the whole-model round, bit for bit (parameters, error
memory, the server's last messages, the optimizer's state), with momentum SGD, AdamW, dense
warm-up rounds and lossy values; the ledger counting each bucket's message as sent (a few header
bytes more per extra message, the same uploads); a checkpoint of an overlapped run resuming the
same; and a model in one bucket sending exactly the whole round's bytes.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from test_distributed import spawn

STEPS = 7
# (name, codec, optimizer, warm-up rounds, bucket cap in MB; None: a small model, DDP's defaults)
CASES = [
    ("sgd", "rice+fp32", "sgd", 0, 0.25),
    ("momentum", "rice+fp32", "momentum", 2, 0.25),
    ("adamw-sign", "rice+sign", "adamw", 2, 0.25),
    ("paper32", "paper32", "sgd", 0, 0.25),
    ("bf16", "rice+fp32", "bf16", 0, 0.25),  # momentum SGD, the forward pass under bf16 autocast
    ("one-part", "rice+fp32", "momentum", 1, None),  # a small model: one part, the whole round
    ("bucket-view", "rice+fp32", "sgd", 0, 0.25),  # DDP(gradient_as_bucket_view=True): .grad is the bucket
]


def _model(small=False):
    if small:
        return torch.nn.Sequential(torch.nn.Linear(20, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4))
    # 1.6 MB: DDP's first bucket takes up to 1 MB whatever the cap; after the rebuild at the first
    # iteration a cap of 0.25 MB cuts it into three buckets (one before it)
    return torch.nn.Sequential(torch.nn.Linear(20, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))


class _WithSpare(torch.nn.Module):
    """A model with a layer its forward pass never calls (DDP must be told to find it)."""

    def __init__(self, body):
        super().__init__()
        self.body, self.spare = body, torch.nn.Linear(4, 300)

    def forward(self, x):
        return self.body(x)


def _optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1)
    if kind in ("momentum", "bf16"):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return torch.optim.AdamW(params, lr=1e-2)


def _train(rank, codec, opt_kind, warmup, cap, overlap, steps=STEPS, state_in=None, gen=None, unused=False, name=""):
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    torch.manual_seed(0)
    net = _model(small=cap is None) if not unused else _WithSpare(_model())
    model = DistributedDataParallel(net, bucket_cap_mb=cap, find_unused_parameters=unused,
                                    gradient_as_bucket_view=name == "bucket-view")
    opt = _optimizer(opt_kind, model.parameters())
    state = sasg.ddp.register(model, "always+topk", codec, density=0.1, optimizer=opt, warmup=warmup,
                              overlap=overlap)
    if state_in is not None:
        model.module.load_state_dict(state_in["model"])
        opt.load_state_dict(state_in["opt"])
        state.load_state_dict(state_in["hook"])
    gen = gen if gen is not None else torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        x, y = torch.randn(8, 20, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opt_kind == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return model, opt, state


def _snapshot(model, opt, state) -> dict:
    # Tensors, saved with torch.save: as JSON lists these runs' million floats took 25 s to write
    # and read, most of this module's time.
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    moments = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim()]
    last = state.engine.server.last
    return {"params": flat.clone(), "moments": [m.detach().reshape(-1).clone() for m in moments],
            "error": state.error.clone(), "last": [last.indices.clone(), last.values.clone()],
            "totals": state.ledger.totals(), "bits": list(state.engine.ledger.bits_up),
            "parts": len(state._parted._parts) if state._parted is not None else 0,
            "overlapping": state.overlapping, "in_buckets": state._rounds_summed_in_buckets}


def _same(a, b) -> bool:
    """Equal bit for bit: tensors (dtype, shape, every value), or lists of them."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def _rank(rank: int, world: int, out: str) -> None:
    result = {}
    for name, codec, opt_kind, warmup, cap in CASES:
        for overlap in (False, True):
            result[f"{name} {overlap}"] = _snapshot(*_train(rank, codec, opt_kind, warmup, cap, overlap, name=name))
    # DDP finding unused parameters: its own all-reduce of which ones were used comes after the
    # last bucket's hook, when every part's exchange is done
    for overlap in (False, True):
        result[f"unused {overlap}"] = _snapshot(*_train(rank, "rice+fp32", "momentum", 1, 0.25, overlap, unused=True))
        # ... and with plain SGD, whose sums go straight into the buckets (sasg.ddp.bucket_sums)
        result[f"unused-sgd {overlap}"] = _snapshot(*_train(rank, "rice+fp32", "sgd", 0, 0.25, overlap, unused=True))
    # a checkpoint of an overlapped run, taken after 4 steps, continued for 3 more
    # (a new DDP model: its buckets are rebuilt after its first iteration, as after a restart)
    gen = torch.Generator().manual_seed(100 + rank)
    model, opt, state = _train(rank, "rice+fp32", "momentum", 2, 0.25, True, steps=4, gen=gen)
    saved = {"model": model.module.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()}
    result["resumed"] = _snapshot(*_train(rank, "rice+fp32", "momentum", 2, 0.25, True, steps=3, state_in=saved,
                                          gen=gen))
    if rank == 0:
        torch.save(result, out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("overlap") / "runs.pt"
    spawn(_rank, 2, str(out), timeout=150.0)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bucket_by_bucket_trains_as_the_whole_round_bit_for_bit(runs, name):
    whole, parted = runs[f"{name} False"], runs[f"{name} True"]
    assert parted["overlapping"] and not whole["overlapping"]
    for key in ("params", "moments", "error", "last"):
        assert _same(parted[key], whole[key]), key
    assert parted["totals"]["uploads"] == whole["totals"]["uploads"]
    # Without DGC's momentum the compressed rounds' sums went straight into DDP's buckets
    # (sasg.ddp.bucket_sums): the same training as the whole round's step copied in.
    _, _, opt_kind, warmup, _ = next(c for c in CASES if c[0] == name)
    assert whole["in_buckets"] == 0
    assert parted["in_buckets"] == (STEPS - warmup if opt_kind in ("sgd", "adamw") else 0)


def test_ddp_with_gradients_as_bucket_views_trains_the_same(runs):
    # The sums land in the buckets, which are then the parameters' .grad themselves: the same
    # training as DDP copying the buckets into separate gradients.
    for overlap in (False, True):
        for key in ("params", "error", "last"):
            assert _same(runs[f"bucket-view {overlap}"][key], runs[f"sgd {overlap}"][key]), (overlap, key)


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_each_bucket_is_a_message_of_its_own_on_the_ledger(runs, name):
    whole, parted = runs[f"{name} False"], runs[f"{name} True"]
    extra = [p - w for p, w in zip(parted["bits"], whole["bits"])]
    if name == "one-part":
        assert parted["parts"] == 1 and extra == [0] * STEPS  # one part: the whole round's bytes
        return
    assert parted["parts"] == 3, parted["parts"]
    messages = 2 * parted["parts"]  # both ranks send one message per part
    if name == "paper32":
        assert extra == [0] * STEPS  # fixed-size messages without a header: the same bytes
    else:
        # a Golomb-Rice header's stream length (4 bytes) and up to 2 bytes of padding per extra
        # message; never fewer bits than the whole round's messages
        assert all(0 <= e <= 8 * 6 * messages for e in extra), extra
        assert any(e > 0 for e in extra[-3:]), extra


@pytest.mark.parametrize("name", ["unused", "unused-sgd"])
def test_ddp_finding_unused_parameters_overlaps_and_trains_the_same(runs, name):
    whole, parted = runs[f"{name} False"], runs[f"{name} True"]
    assert parted["overlapping"] and parted["parts"] >= 3
    assert parted["in_buckets"] == (STEPS if name == "unused-sgd" else 0)
    for key in ("params", "moments", "error", "last"):
        assert _same(parted[key], whole[key]), key


def test_an_overlapped_checkpoint_resumes_bit_exactly(runs):
    assert _same(runs["resumed"]["params"], runs["momentum True"]["params"])
    assert _same(runs["resumed"]["error"], runs["momentum True"]["error"])
    # The parts are the model's, not DDP's buckets of the moment (the new DDP model's first
    # iteration is one bucket): the same messages, the same ledger.
    assert runs["resumed"]["totals"] == runs["momentum True"]["totals"]
    assert runs["resumed"]["bits"][-3:] == runs["momentum True"]["bits"][-3:]


def test_overlap_where_the_round_cannot_split_says_why():
    import sasg.ddp

    with torch.random.fork_rng():  # the tests leave the global generator as they found it
        model = _model()
    with pytest.raises(ValueError, match="overlap=True: its round needs the whole gradient first"):
        sasg.ddp.HookState(model, "wk1+topk", lr=0.1, overlap=True)._overlaps(_World())
    with pytest.raises(ValueError, match="overlap"):
        sasg.ddp.HookState(model, "always+topk", overlap="yes")


class _World:
    world_size = 2


def _peer_lost(rank: int, world: int, out: str) -> None:
    import os

    model, opt, state = _train(rank, "rice+fp32", "sgd", 0, 0.25, True, steps=2)
    if rank == 1:
        os._exit(0)  # gone before the third round: its sockets close
    x, y = torch.randn(8, 20), torch.randint(0, 4, (8,))
    try:
        F.cross_entropy(model(x), y).backward()
        said = "no error"
    except Exception as e:  # noqa: BLE001 - what the user's loop would see
        said = f"{type(e).__name__}: {e}"
    with open(out, "w") as f:
        f.write(said)
    os._exit(0)  # the group is broken: no barrier to end on


def test_a_peer_lost_mid_round_fails_the_backward_pass_and_says_so(tmp_path):
    """The parts' exchanges run on a thread of their own; a lost peer still surfaces as an error
    from ``loss.backward()`` on the rank left, naming what happened (not a hang)."""
    out = tmp_path / "said.txt"
    spawn(_peer_lost, 2, str(out), timeout=60.0)
    said = out.read_text()
    assert "lost contact with the other workers" in said, said


# ----- the parted round alone, in one process ----------------------------------------------------

LAYOUT = [("norm.w", (8,)), ("norm.b", (8,)), ("w1", (40, 30)), ("b1", (40,)), ("w2", (5, 40)), ("b2", (5,))]


@pytest.mark.parametrize("codec", ["rice+fp32", "rice+sign", "paper32", "auto+bf16"])
@pytest.mark.parametrize("warmup", [0, 2])
def test_a_parted_round_is_the_engines_round(codec, warmup):
    """Against ``RoundEngine.step`` on the same gradients: the same step, error memory and last
    messages, round after round, with a part of tensors sent whole (the leading 1-D ones: all
    their indices implied) and the parts sent out of layout order, as a backward pass sends them."""
    from sasg.core.layout import Layout
    from sasg.ddp.rules import hook_algorithm
    from sasg.engine.parts import PartedRound
    from sasg.runtime import build_algorithm, build_engine

    layout = Layout(LAYOUT)
    spec = hook_algorithm("always+topk", density=0.1, warmup=warmup)
    engines = [build_engine(build_algorithm(spec, layout, codec), workers=1, seed=3) for _ in range(2)]
    parted = PartedRound(engines[1], lambda sub: build_algorithm(spec, sub, codec))
    gen = torch.Generator().manual_seed(0)
    theta = torch.zeros(layout.numel)
    for _ in range(5):
        g = torch.randn(1, layout.numel, generator=gen)
        whole = engines[0].step(theta, g, None, 0.5).step.clone()
        for first, stop in ((4, 6), (2, 4), (0, 2)):  # last tensors first
            parted.send(first, stop, g, 0.5)
        step = parted.finish(theta).step
        assert torch.equal(step, whole)
        assert torch.equal(engines[1].workers.buffer("error"), engines[0].workers.buffer("error"))
        if engines[0].iteration > warmup:
            last = [engines[i].server.last for i in range(2)]
            assert torch.equal(last[0].indices, last[1].indices) and torch.equal(last[0].values, last[1].values)
    assert engines[1].ledger.uploads == engines[0].ledger.uploads


def test_a_parted_round_refuses_what_does_not_split_and_tensors_twice():
    from sasg.core.layout import Layout
    from sasg.ddp.rules import hook_algorithm
    from sasg.engine.parts import PartedRound
    from sasg.runtime import build_algorithm, build_engine

    layout = Layout(LAYOUT)
    lazy = hook_algorithm("wk1+topk", density=0.1)
    with pytest.raises(ValueError, match="cannot be made part by part"):
        PartedRound(build_engine(build_algorithm(lazy, layout, "rice+fp32")), None)
    spec = hook_algorithm("always+topk", density=0.1, warmup=0)
    parted = PartedRound(build_engine(build_algorithm(spec, layout, "rice+fp32")),
                         lambda sub: build_algorithm(spec, sub, "rice+fp32"))
    g = torch.ones(1, layout.numel)
    parted.send(2, 4, g, 1.0)
    with pytest.raises(RuntimeError, match="sent twice in one round"):
        parted.send(3, 6, g, 1.0)
    with pytest.raises(RuntimeError, match="sent 2 of 6 tensors"):
        parted.finish(torch.zeros(layout.numel))
