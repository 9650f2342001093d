"""How many latency-bound collective calls a hook round makes (issue #24, item 4).

Every collective is a round trip at least; on a real link each costs a latency however few bytes
it carries. The contract: a round makes its payload's call, plus at most one call of its own (the
flags of a lazy rule, or the sizes of messages whose size varies), and none where every rank
knows the sizes in advance: a fixed-size codec with a rule that always sends, or (fixed slots,
:mod:`sasg.distributed.slots`) a varying-size codec with a rule that always sends, from the
second round of a kind of message on (the first exchanges sizes to learn the slot). What a job adds
costs one call a round: a GradScaler's finite check, ``clip_grad_norm``'s packet, or both (the
check rides in the packet). A round made
part by part (:mod:`sasg.engine.parts`) makes those calls per part.

Two real gloo ranks train through the hook; the torch.distributed functions the transport calls
are wrapped in counters (they still run: a spy, not a mock), and the calls of the rounds after
the first (set-up: the identity check and node discovery) are counted.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.nn.functional as F

from test_distributed import spawn

# (algo, codec, extra calls per round on top of the payload's, warm-up rounds, parts, options)
CASES = [
    ("always+topk", "paper32", 0, 0, 1, ""),  # fixed sizes, everyone sends: nothing to tell
    ("always+topk", "rice+fp32", 0, 0, 1, ""),  # the hook's default: sizes vary, in slots known in advance
    ("always+topk", "rice+sign", 0, 0, 1, ""),
    ("always+topk", "rice+sign", 0, 2, 1, ""),  # dense rounds first: a second kind of message, a second slot
    ("always+topk", "rice+fp32", 0, 1, 3, ""),  # a round in 3 parts (sasg.engine.parts): a payload call each
    ("wk1+topk", "paper32", 1, 0, 1, ""),  # a lazy rule: one flag byte per rank
    ("wk1+topk", "rice+sign", 1, 0, 1, ""),  # ... which the size exchange carries (0 = skip)
    # what a job adds: a GradScaler's finite check, clip_grad_norm's packet, or both in that one call
    ("always+topk", "paper32", 1, 0, 1, "scaler"),
    ("always+topk", "paper32", 1, 0, 1, "clip"),
    ("always+topk", "paper32", 1, 0, 1, "scaler+clip"),
]
STEPS = 6
COLLECTIVES = ("all_to_all_single", "all_reduce", "all_gather", "all_gather_into_tensor", "broadcast",
               "barrier", "batch_isend_irecv", "reduce_scatter_tensor")


def _rank(rank: int, world: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    import sasg.ddp

    calls: dict[str, int] = {}
    originals = {}
    for name in COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is None:
            continue
        originals[name] = fn

        def spy(*args, _name=name, _fn=fn, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args, **kwargs)

        setattr(dist, name, spy)
    result = {}
    try:
        gen = torch.Generator().manual_seed(rank)
        for algo, codec, _, warmup, parts, options in CASES:
            torch.manual_seed(0)
            if parts == 1:
                model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
                                                                    torch.nn.Linear(16, 4)))
            else:  # 1.6 MB cut at 0.25 MB: 3 parts (test_overlap.py)
                model = DistributedDataParallel(torch.nn.Sequential(
                    torch.nn.Linear(20, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                    torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)), bucket_cap_mb=0.25)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler = torch.amp.GradScaler("cpu", enabled="scaler" in options)
            state = sasg.ddp.register(model, algo, codec, density=0.1, lr=opt, warmup=warmup,
                                      scaler=scaler if "scaler" in options else None,
                                      clip_grad_norm=10.0 if "clip" in options else None)
            per_round = []
            for _ in range(STEPS):
                before = sum(calls.values())
                x, y = torch.randn(8, 20, generator=gen), torch.randint(0, 4, (8,), generator=gen)
                opt.zero_grad()
                scaler.scale(F.cross_entropy(model(x), y)).backward()  # (disabled: the loss as it is)
                scaler.step(opt)
                scaler.update()
                per_round.append(sum(calls.values()) - before)
            payload_rounds = state.transport.counters.payload_rounds
            result[f"{algo} {codec} {warmup} {parts} {options}"] = {
                "per_round": per_round, "payload_rounds": payload_rounds, "uploads": state.ledger.totals()["uploads"],
                "counters": state.transport.counters.to_dict()}
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def test_a_round_makes_its_payload_call_and_at_most_one_more(tmp_path):
    out = tmp_path / "calls.json"
    spawn(_rank, 2, str(out))
    got = json.loads(out.read_text())
    for algo, codec, extra, warmup, parts, options in CASES:
        r = got[f"{algo} {codec} {warmup} {parts} {options}"]
        if parts > 1:
            # each part its own payload call; its sizes in its slot after its first round
            assert r["per_round"] == [parts] * warmup + [2 * parts] + [parts] * (STEPS - warmup - 1), r
            assert r["payload_rounds"] == parts * STEPS and r["counters"]["rounds"] == STEPS, r
            continue
        rounds = r["per_round"][1:]  # the first round also builds the engine (set-up calls)
        assert r["payload_rounds"] == len(r["per_round"]) or algo.startswith("wk1"), (algo, codec, r)
        assert r["payload_rounds"] >= 1, (algo, codec, r)
        slotted = algo.startswith("always") and codec.startswith("rice")
        for n in rounds:
            # the payload's own call when someone sent (a lazy round where nobody sends has none),
            # and in slots the sizes' call in the first round of a kind
            assert n in (extra, extra + 1) or (slotted and n == 2), (algo, codec, r)
        if slotted:
            # The first compressed round exchanges sizes; after it, one call a round. (The dense
            # warm-up rounds' messages have a fixed size: one call each.)
            assert r["per_round"] == [1] * warmup + [2] + [1] * (STEPS - warmup - 1), r
            # every compressed round's sizes travelled, in their own call or in the slots
            assert r["counters"]["flag_rounds"] == STEPS - warmup, r
            assert r["counters"]["padding_bytes_sent"] > 0, r
        elif not algo.startswith("wk1"):
            assert rounds == [extra + 1] * len(rounds), (algo, codec, r)
