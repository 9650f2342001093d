"""Fixed slots (:mod:`sasg.distributed.slots`): varying-size messages that every rank sends move in
one collective call a round, with the same bytes decoded as the size exchange gives, and a tail
call only when a message outgrows its slot."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sasg.core.codecs import CodecError
from sasg.distributed import slots

from test_distributed import spawn


@pytest.mark.parametrize("n", [0, 1, 60, 1000, 22540, 1_000_000])
def test_a_slot_holds_its_message_the_size_and_a_margin(n):
    s = slots.slot_for(n)
    room = s - slots.PREFIX - n
    assert s % slots.ALIGN == 0
    assert max(slots.MIN_MARGIN, n // slots.MARGIN_SHARE) <= room < max(slots.MIN_MARGIN, n // slots.MARGIN_SHARE) + slots.ALIGN


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5), st.integers(slots.PREFIX, 120))
def test_packed_messages_come_back_whole(messages, slot):
    heads, tails = [], []
    for m in messages:
        head, tail = slots.pack(torch.tensor(list(m), dtype=torch.uint8), slot)
        assert head.numel() == slot
        heads.append(head)
        tails.append(tail)
    heads = torch.cat(heads)
    sizes = slots.read_sizes(heads, len(messages), slot, range(len(messages)))
    assert sizes == [len(m) for m in messages]
    assert [t.numel() for t in tails] == slots.tails_of(sizes, slot)
    got = slots.unpack(heads, sizes, slot, torch.cat(tails))
    assert bytes(got.tolist()) == b"".join(messages)
    for m, size in zip(messages, sizes):  # the padding is what is left of the slot
        assert slots.padding_of(size, slot) == max(0, slot - slots.PREFIX - len(m))


def test_a_slot_with_a_negative_size_is_a_codec_error_naming_its_rank():
    head, _ = slots.pack(torch.arange(10, dtype=torch.uint8), 64)
    bad = head.clone()
    bad[:4] = torch.tensor([0xFF, 0xFF, 0xFF, 0xFF], dtype=torch.uint8)  # -1
    with pytest.raises(CodecError, match="slot of rank 3 claims a message of -1 bytes"):
        slots.read_sizes(torch.cat([head, bad]), 2, 64, [2, 3])


# ----- on real gloo ranks -------------------------------------------------------------------------------

K = 400
SPREADS = [(400, 400), (600, 800), (19000, 800), (19000, 19000), (800, 600)]  # per round: rank 0's, the others'


def _message(rnd: int, rank: int, d: int):
    """Rank ``rank``'s message of round ``rnd``: K indices spread over the first ``spread`` entries
    (wider spread, longer Golomb-Rice gaps, a bigger message)."""
    spread = SPREADS[rnd][0 if rank == 0 else 1]
    g = torch.Generator().manual_seed(1000 * rnd + rank)
    idx = torch.randperm(spread, generator=g)[:K].sort().values
    return idx, torch.randn(K, generator=g)


def _slot_rounds(rank, world, folder, nodes):
    import torch.distributed as dist

    from sasg.core.codecs.composite import make_codec
    from sasg.core.layout import Layout
    from sasg.core.payloads.encoded import Encoded, transmit
    from sasg.core.payloads.sparse import SparsePayload
    from sasg.distributed.torch_transport import TorchTransport

    layout = Layout([("w", (100, 190)), ("b", (100,))])
    codec = make_codec("rice+sign", layout)  # the index part sets the size
    template = SparsePayload.zeros(1, K, layout.numel)
    calls = {"n": 0}
    for name in ("all_to_all_single", "batch_isend_irecv"):
        fn = getattr(dist, name)

        def spy(*a, _fn=fn, **k):
            calls["n"] += 1
            return _fn(*a, **k)

        setattr(dist, name, spy)
    slotted, plain = TorchTransport(nodes=nodes), TorchTransport(nodes=nodes)
    out = {"calls": [], "same": [], "sizes": []}
    for rnd in range(len(SPREADS)):
        idx, vals = _message(rnd, rank, layout.numel)
        q = SparsePayload(idx[None], vals[None], layout.numel)
        data, sizes = q.encode(codec)
        sent = Encoded(q, data, list(sizes))
        before = calls["n"]
        flags, got, got_sizes = slotted.exchange(torch.ones(1, dtype=torch.bool), sent, template, codec, False)
        out["calls"].append(calls["n"] - before)
        # the size exchange's path (a lazy rule's, where everyone sends) on the same messages
        _, ref, ref_sizes = plain.exchange(torch.ones(1, dtype=torch.bool), sent, template, codec, True)
        # every rank's message as its sender decodes it (sign values are lossy)
        every = [transmit(SparsePayload(i[None], v[None], layout.numel), codec).payload
                 for i, v in (_message(rnd, m, layout.numel) for m in range(world))]
        out["same"].append(bool(flags.all()) and got_sizes == ref_sizes
                           and torch.equal(got.indices, ref.indices) and torch.equal(got.values, ref.values)
                           and torch.equal(got.indices, torch.cat([e.indices for e in every]))
                           and torch.equal(got.values, torch.cat([e.values for e in every])))
        out["sizes"].append(got_sizes)
    out["slotted"], out["plain"] = slotted.counters.to_dict(), plain.counters.to_dict()
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()


@pytest.mark.parametrize("world,nodes", [(3, None), (4, [0, 0, 1, 1])], ids=["direct", "relay"])
def test_slots_deliver_the_size_exchanges_messages_in_fewer_calls(tmp_path, one_thread, world, nodes):
    spawn(_slot_rounds, world, str(tmp_path), nodes)
    steps = 1 if nodes is None else 2  # the payload's calls: one all_to_all, or the relay's two steps
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert all(out["same"]), out
        sizes = out["sizes"]
        # Round 0 learns the slot (sizes first); round 2 outgrows round 1's slot (its tails follow
        # in one more exchange); round 3 grows again for ranks 1.. and its slot is round 2's largest.
        slot = [None] + [slots.slot_for(max(s)) for s in sizes[:-1]]
        over = [slot[k] is not None and max(sizes[k]) > slot[k] - slots.PREFIX for k in range(len(sizes))]
        assert over == [False, False, True, False, False], (sizes, slot)
        assert out["calls"][0] == 1 + steps  # the sizes, then the messages
        for n, o in zip(out["calls"][1:], over[1:]):
            # the slots; where one overflowed, the tails too (a relay step a rank has no part in
            # makes no call on it)
            assert (steps < n <= 2 * steps) if o else n == steps, out["calls"]
        # the ledger's lines are the size exchange's, byte for byte; the padding is counted apart
        s, p = out["slotted"], out["plain"]
        for k in ("payload_bytes_sent", "payload_bytes_recv", "flag_bytes_sent", "flag_bytes_recv", "flag_rounds",
                  "payload_rounds", "rounds"):
            assert s[k] == p[k], (k, s, p)
        assert p["padding_bytes_sent"] == p["padding_bytes_recv"] == 0
        assert 0 < s["padding_bytes_sent"] and 0 < s["padding_bytes_recv"]
