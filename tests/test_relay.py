"""The node-aware relay (sasg.distributed.relay) on real gloo processes.

The ranks of one machine are told they sit on several "nodes"; the relay must hand every rank
every sender's bytes in rank order exactly as the direct ``all_to_all`` does, count the same
total bytes, and send each message across a node boundary only once. The two-node test
(tests/test_two_nodes.py) runs it across a real shaped link.
"""

from __future__ import annotations

import os

import pytest
import torch

from sasg import Simulator
from sasg.distributed.relay import Topology

from conftest import small_config
from test_distributed import spawn, synth

LAYOUTS = {  # world 4 on 2 nodes, uneven nodes, interleaved ranks, three nodes, one rank per node
    "2x2": [0, 0, 1, 1], "3+1": [0, 0, 0, 1], "interleaved": [0, 1, 0, 1], "1+1+2": [0, 1, 2, 2],
    "flat": [0, 1, 2, 3],
}


def test_topology_delegates_spread_the_forwarding():
    t = Topology([0, 0, 1, 1])
    assert t.relays
    assert [t.delegate(s, 1) for s in (0, 1)] == [2, 3] and [t.delegate(s, 0) for s in (2, 3)] == [0, 1]
    assert t.held_by(2, [0, 1, 2]) == [0, 2] and t.held_by(3, [0, 1, 2]) == [1]
    assert not Topology([0, 1, 2, 3]).relays and not Topology([0, 0, 0, 0]).relays
    u = Topology([0, 0, 0, 1])
    assert [u.delegate(s, 1) for s in (0, 1, 2)] == [3, 3, 3]


def _exchange_cases(rank, world, folder):
    import torch.distributed as dist

    from sasg.distributed.relay import relay_exchange
    from sasg.distributed.torch_transport import TorchTransport

    t = TorchTransport(nodes=None)
    gen = torch.Generator().manual_seed(7)
    results = {}
    for name, nodes in LAYOUTS.items():
        topo = Topology(nodes)
        for case in range(6):
            sizes = torch.randint(0, 40, (world,), generator=gen).tolist()
            if case == 0:
                sizes = [0] * world
            if case == 1:
                sizes = [0] * world
                sizes[case % world] = 5  # one sender
            own = torch.randint(0, 256, (sizes[rank],), dtype=torch.uint8, generator=torch.Generator().manual_seed(
                100 * case + rank))
            got, sent, recv = relay_exchange(topo, rank, own, sizes, t._p2p)
            # the direct exchange, as TorchTransport does it
            direct = torch.empty(sum(sizes), dtype=torch.uint8)
            if any(sizes):
                t._all_to_all(direct, own.repeat(world), list(sizes), [sizes[rank]] * world)
            results[(name, case)] = {"same": torch.equal(got, direct), "sent": sent, "recv": recv,
                                     "sizes": sizes}
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()


def test_relay_delivers_what_the_direct_exchange_delivers(tmp_path, one_thread):
    world = 4
    spawn(_exchange_cases, world, str(tmp_path))
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for key in outs[0]:
        sizes = outs[0][key]["sizes"]
        for r in range(world):
            assert outs[r][key]["same"], (key, r)
        # every message reaches each of the other M-1 ranks by exactly one send
        assert sum(o[key]["sent"] for o in outs) == sum(sizes) * (world - 1), key
        assert sum(o[key]["recv"] for o in outs) == sum(sizes) * (world - 1), key


def test_relay_crosses_each_node_boundary_once_per_message():
    """Count, from the plan alone, the bytes that leave a node: a message to each other node once
    (the direct exchange sends it to every rank there)."""
    nodes = [0, 0, 1, 1]
    topo = Topology(nodes)
    sizes = [3, 0, 5, 7]
    senders = [s for s in range(4) if sizes[s]]
    crossing = 0
    for me in range(4):  # step 1: to delegates; step 2 stays within nodes
        for t in range(4):
            if sizes[me] and nodes[t] != nodes[me] and topo.delegate(me, nodes[t]) == t:
                crossing += sizes[me]
    assert crossing == sum(sizes[s] for s in senders)  # two nodes: once each
    direct = sum(sizes[s] * sum(1 for t in range(4) if nodes[t] != nodes[s]) for s in senders)
    assert direct == 2 * crossing


def _run_relayed(rank, world, folder, algo, codec, rounds):
    from sasg.distributed.runner import DistributedRun
    from sasg.distributed.torch_transport import TorchTransport

    transport = TorchTransport(nodes=[0, 0, 1, 1])
    assert transport.topology is not None
    run = DistributedRun(small_config(workers=world, codec=codec), algo, synth(), transport)
    result = run.run(iterations=rounds)
    torch.save({"theta": result.theta, "uploads": result.ledger.uploads, "bits": result.ledger.bits_up,
                "counted": run.transport_totals()}, os.path.join(folder, f"{algo}-rank{rank}.pt"))


@pytest.mark.parametrize("algo,codec", [("sasg", "paper32"), ("always+topk", "rice+sign"), ("always+powersgd", "paper32"),
                                        ("sasg", "rice+fp16")])
def test_relayed_runner_follows_the_simulator(tmp_path, one_thread, algo, codec):
    from sasg.accounting import replica_payload_bytes

    world, rounds = 4, 16
    spawn(_run_relayed, world, str(tmp_path), algo, codec, rounds)
    ref = Simulator(small_config(workers=world, codec=codec), algo, synth()).run(iterations=rounds)
    for r in range(world):
        out = torch.load(tmp_path / f"{algo}-rank{r}.pt", weights_only=False)
        assert torch.equal(out["theta"], ref.theta), r
        assert out["uploads"] == ref.ledger.uploads and out["bits"] == ref.ledger.bits_up
        # the relay hands over the same total: each message once to each other rank
        assert out["counted"]["payload_bytes_sent"] == replica_payload_bytes(sum(ref.ledger.bits_up), world)
