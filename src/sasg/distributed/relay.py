"""Node-aware payload exchange: every message crosses the link between two nodes once.

A direct ``all_to_all`` sends a rank's message to each of the other ``M - 1`` ranks, so with
``P`` ranks per node the same bytes cross the link to another node ``P`` times. Nodes are usually
joined by the slow link (the reason to compress at all), while ranks of one node share memory or
a fast local fabric. The relay sends each message once to every other node and lets the ranks
there pass it on locally:

1. **across nodes**: sender ``s`` sends its message to one *delegate* on every other node ``B``:
   the rank of ``B`` whose position in ``B`` is ``s``'s position in its own node, modulo ``B``'s
   size (so the ranks of a node share the forwarding);
2. **within a node**: every rank sends its node-mates what it holds for them: its own message and
   the messages it received as a delegate.

Both steps are point-to-point sends and receives (``batch_isend_irecv``) planned from the sizes
every rank already has, so each receive meets its send and a pair with nothing to exchange sends
nothing. Every rank ends with every sender's message, in rank order, byte for byte what the
direct exchange gives: the trajectory is the same. A skipping rank still sends no message of its
own (it may forward others' messages to its node-mates).

:class:`Topology` holds the node of every rank; :func:`node_of_ranks` finds it at start-up (one
small ``all_gather`` of a key per rank: ``GROUP_RANK``, which torchrun sets per node, and the
host name).
"""

from __future__ import annotations

import os
import socket
import zlib
from typing import Callable, Sequence

import torch
from torch import Tensor


class Topology:
    """Which node each rank is on (``nodes[r]``: any hashable id; ranks of a node need not be
    contiguous)."""

    def __init__(self, nodes: Sequence[int]):
        self.nodes = list(nodes)
        self.members: dict = {}
        for r, n in enumerate(self.nodes):
            self.members.setdefault(n, []).append(r)
        self.position = [self.members[n].index(r) for r, n in enumerate(self.nodes)]

    @property
    def relays(self) -> bool:
        """Whether relaying saves link bytes: at least two nodes, one of them with 2+ ranks."""
        return len(self.members) > 1 and any(len(m) > 1 for m in self.members.values())

    def delegate(self, sender: int, node) -> int:
        """The rank of ``node`` that receives ``sender``'s message across the link."""
        ranks = self.members[node]
        return ranks[self.position[sender] % len(ranks)]

    def held_by(self, rank: int, senders: Sequence[int]) -> list[int]:
        """The senders whose messages ``rank`` holds after step 1, ascending: its own (if it sends)
        and those it is the delegate of."""
        node = self.nodes[rank]
        return [s for s in senders if s == rank or (self.nodes[s] != node and self.delegate(s, node) == rank)]


def node_of_ranks(all_gather_int: Callable[[int], list[int]]) -> list[int]:
    """Every rank's node key, from one ``all_gather`` of an integer per rank (a collective: every
    rank calls it). Ranks with the same ``GROUP_RANK`` (torchrun's node index; empty outside
    torchrun) on the same host share a node."""
    key = f"{socket.gethostname()}/{os.environ.get('GROUP_RANK', '')}"
    return all_gather_int(zlib.crc32(key.encode()))


Step = tuple[list[tuple[int, list[int]]], list[tuple[int, list[int]]]]


def relay_plan(topology: Topology, me: int, senders: Sequence[int]) -> list[Step]:
    """The relay's two steps seen from ``me``, for the ranks in ``senders`` (ascending): per step,
    the ``(peer, [senders whose messages go in this piece])`` it sends and receives. Every rank
    computes the same plan from the same senders, so each receive meets its send."""
    nodes, mine = topology.nodes, topology.nodes[me]
    # 1. across nodes: each sender to its delegate on every other node
    sends = [(topology.delegate(me, n), [me]) for n in topology.members if n != mine] if me in senders else []
    recvs = [(s, [s]) for s in senders if nodes[s] != mine and topology.delegate(s, mine) == me]
    # 2. within a node: what each rank holds, to each of its node-mates
    held = topology.held_by(me, senders)
    mates = [t for t in topology.members[mine] if t != me]
    sends2 = [(t, held) for t in mates] if held else []
    recvs2 = [(t, theirs) for t in mates if (theirs := topology.held_by(t, senders))]
    return [(sends, recvs), (sends2, recvs2)]


def relay_copies(topology: Topology, me: int, senders: Sequence[int]) -> tuple[dict[int, int], dict[int, int]]:
    """How many copies of each sender's message ``me`` sends and receives in the relay (what its
    byte counts are made of, whatever the messages' sizes)."""
    out: dict[int, int] = {}
    into: dict[int, int] = {}
    for sends, recvs in relay_plan(topology, me, senders):
        for counts, pieces in ((out, sends), (into, recvs)):
            for _, those in pieces:
                for s in those:
                    counts[s] = counts.get(s, 0) + 1
    return out, into


def relay_exchange(topology: Topology, me: int, own: Tensor, sizes: Sequence[int],
                   p2p: Callable[[list[tuple[int, Tensor]], list[tuple[int, Tensor]]], None]
                   ) -> tuple[Tensor, int, int]:
    """Every sender's message (``sizes[s] > 0``), back to back in rank order, on every rank.

    ``own``: this rank's message (``sizes[me]`` bytes; empty when it skips). ``p2p(sends,
    recvs)`` posts the ``(peer, tensor)`` sends and receives of one step together and waits for
    them (point to point, so a pair with nothing to exchange exchanges nothing, not even a
    header). Returns the messages and the bytes this rank sent to and received from others."""
    senders = [s for s in range(len(sizes)) if sizes[s] > 0]
    pieces: dict[int, Tensor] = {me: own} if sizes[me] > 0 else {}
    sent = recv = 0
    for sends, recvs in relay_plan(topology, me, senders):
        # what this rank holds for each piece it sends (its own message, or all it holds: one
        # block, made once for all its node-mates)
        blocks: dict[tuple[int, ...], Tensor] = {}
        for _, those in sends:
            if tuple(those) not in blocks:
                blocks[tuple(those)] = torch.cat([pieces[s] for s in those]) if len(those) > 1 else pieces[those[0]]
        out = [(peer, blocks[tuple(those)]) for peer, those in sends]
        into = [(peer, own.new_empty(sum(sizes[s] for s in those))) for peer, those in recvs]
        p2p(out, into)
        sent += sum(t.numel() for _, t in out)
        recv += sum(t.numel() for _, t in into)
        for (_, those), (_, buf) in zip(recvs, into):
            pieces.update(zip(those, buf.split([sizes[s] for s in those])))
    if not senders:
        return own.new_empty(0), sent, recv
    return torch.cat([pieces[s] for s in senders]), sent, recv


__all__ = ["Topology", "node_of_ranks", "relay_copies", "relay_exchange", "relay_plan"]
