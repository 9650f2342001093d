"""What crosses between ranks each round, on ``torch.distributed`` — and a byte count of it.

Two exchanges per round at most, both symmetric (every rank makes the same calls in the same
order, decided only from data every rank already holds, so no rank ever waits on a send that will
not happen):

1. **flags** — one byte from every rank to every rank, "I upload this round", in one
   ``all_to_all_single`` (lazy triggers only; with an always-upload trigger every rank knows the
   answer and nothing is sent), started as soon as the rule has decided (:meth:`TorchTransport.announce`)
   so that it travels while the rank compresses. Messages of varying size send their size
   instead (an int32, 0 = skip), once the message is made;
2. **payloads** — one ``all_to_all_single`` with *uneven* splits computed from the flags: an
   uploader sends its message, packed by its codec (:mod:`sasg.core.codecs`), to each of the
   other M-1 ranks; a skipper's splits are all zero, so it sends **no payload bytes**. When nobody uploads, the call is skipped
   altogether (every rank knows that from the flags). On two or more nodes with several ranks
   each, the messages are relayed instead (:mod:`.relay`: point-to-point sends planned from the
   same sizes; each message crosses the link to another node once and the same bytes arrive).

Messages of varying size that every rank sends (an always-upload trigger) skip the first
exchange after their first round: each size travels at the head of a fixed slot in the payload's
call (:mod:`.slots`).

:class:`TransportCounters` counts the bytes this rank hands to the collectives for other ranks,
by line (flags, payload, and the slots' padding). It implements :class:`sasg.engine.Transport`
with one worker per rank (``local_workers == [rank]``); the one-process case is
:class:`sasg.engine.InProcessTransport`.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ..accounting import FLAG_BITS_PER_WORKER, SIZE_BITS_PER_WORKER
from ..core.codecs import CodecError
from ..core.payloads import Encoded, Payload, SparsePayload
from ..engine.transport import TransportCounters
from .relay import Topology, node_of_ranks, relay_copies, relay_exchange
from .slots import PREFIX, SlotBook, pack, padding_of, read_sizes, tails_of, unpack


# gloo matches point-to-point messages by (peer, tag): the relay's own tag keeps its messages apart
# from any sends of the training script on the same group (the DDP hook shares the user's group).
RELAY_TAG = 0x5A56


def _env_on(name: str) -> bool:
    """A switch in the environment: on unless set to 0, off, false or no."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "off", "false", "no")


def _slot_bytes(copies: dict[int, int], sizes: list[int], slot: int) -> tuple[int, int, int]:
    """What ``copies`` (sender -> copies of its slot) carried: size bytes, message bytes, padding."""
    return (PREFIX * sum(copies.values()), sum(n * sizes[s] for s, n in copies.items()),
            sum(n * padding_of(sizes[s], slot) for s, n in copies.items()))


class PeerFailure(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or the link broke."""


def _first_line(e: BaseException) -> str:
    """The gist of a backend error: first line, without the C++ source location and advice."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", line)
    line = line.split(". This is typically caused", 1)[0]
    return line if len(line) <= 200 else line[:197] + "..."


class TorchTransport:
    """The exchanges of a round over a ``torch.distributed`` process group (gloo or NCCL)."""

    def __init__(self, group=None, device=None, nodes="auto"):
        """``nodes``: the node of every rank, for the relay (:mod:`.relay`: each message crosses
        the link between two nodes once); ``"auto"`` finds them (a collective at start-up:
        torchrun's ``GROUP_RANK`` and the host name) unless the environment says
        ``SASG_RELAY=0``; ``None`` always sends directly."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchTransport needs an initialised process group (torch.distributed.init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if device is None:
            device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        self.device = torch.device(device)
        self.counters = TransportCounters()
        # Varying-size messages everyone sends: their slot, per kind (SASG_SLOTS=0: sizes first,
        # every round, and no padding on the wire).
        self._slots = SlotBook() if _env_on("SASG_SLOTS") else None
        self._fixed_sizes: dict = {}  # the size of a fixed-size kind of message
        self._copies = None  # (sent, received) copies of each rank's slot a round: _slot_copies
        # A lazy round's flags on their way while the rank compresses (announce; SASG_ANNOUNCE=0:
        # they leave with the exchange, after the compression, as before).
        self._announces = _env_on("SASG_ANNOUNCE")
        self._announced = None  # (work, received flags, this rank's answer) of the current round
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        if isinstance(nodes, str) and nodes == "auto":
            relay = _env_on("SASG_RELAY")
            nodes = node_of_ranks(self.all_gather_int) if relay and self.world_size > 1 else None
        elif nodes is not None and len(nodes) != self.world_size:
            raise ValueError(f"nodes: one node per rank ({self.world_size}), got {len(nodes)}")
        topology = Topology(nodes) if nodes is not None else None
        # Relay only where it saves link bytes: 2+ nodes, one of them with 2+ ranks.
        self.topology = topology if topology is not None and topology.relays else None

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as e:  # DistBackendError, gloo/NCCL errors, timeouts
            raise PeerFailure(
                f"rank {self.rank}: lost contact with the other workers during {what} "
                f"(a worker died, hung past the timeout, or the link broke): {_first_line(e)}"
            ) from e

    @property
    def local_workers(self) -> list[int]:
        return [self.rank]

    def flag_bits_per_round(self, lazy: bool, fixed_size: bool) -> int:
        """The first exchange on the ledger: one bit per worker for "I send" (lazy triggers with
        fixed-size messages), a 32-bit size per worker when sizes vary (0 = I skip), nothing when
        everyone knows the answer or there is no one to tell."""
        M = self.world_size
        if M == 1 or (fixed_size and not lazy):
            return 0
        return (FLAG_BITS_PER_WORKER if fixed_size else SIZE_BITS_PER_WORKER) * M

    def _gather(self, what: str, value: int, dtype: torch.dtype) -> list[int]:
        """One small integer from every rank (a collective), counted on the flag line."""
        M = self.world_size
        out = torch.empty(M, dtype=dtype, device=self.device)
        # Each rank sends its value to every rank in one step (an all_to_all of one value per
        # pair) rather than all_gather: gloo's all_gather passes the values round a ring, M - 1
        # steps one after the other, each waiting for the next rank to be scheduled. Same bytes;
        # 4 ranks sharing 2 cores: SASG's round 16.2 -> 14.7 ms (benchmarks/rank_round.py --turns 10).
        t = torch.full((M,), value, dtype=dtype, device=self.device)
        self._call(what, dist.all_to_all_single, out, t, group=self.group)
        width = out.element_size()
        self.counters.flag_rounds += 1
        self.counters.flag_bytes_sent += (M - 1) * width
        self.counters.flag_bytes_recv += (M - 1) * width
        return [int(v) for v in out.tolist()]

    def announce(self, upload: Tensor, template: Payload, codec) -> None:
        """A lazy round's decision, as soon as it is made: where the messages have a fixed size
        (``paper32``) the flags are all that has to travel before the payload, so their
        ``all_to_all_single`` starts now, asynchronously, and :meth:`exchange` waits for it. What
        it buys: the wait for the other ranks' decisions (and gloo's wake-ups) runs while this
        rank compresses its message, instead of after it; the same bytes, the same calls in the
        same order on every rank. Messages of varying size keep their size exchange (the size is
        known only once the message is made): nothing starts here."""
        self._drop_announced()
        M = self.world_size
        if not self._announces or M == 1 or not template.fixed_size(codec):
            return
        mine = bool(upload.reshape(-1)[0]) if upload.numel() else False
        out = torch.empty(M, dtype=torch.uint8, device=self.device)
        t = torch.full((M,), int(mine), dtype=torch.uint8, device=self.device)
        work = self._call("the flag exchange", dist.all_to_all_single, out, t, group=self.group, async_op=True)
        self._announced = (work, out, mine)

    def _drop_announced(self) -> None:
        """Forget an announced decision no exchange took (its round failed part-way): its call is
        waited for, an error in it dropped (the round has already failed)."""
        if self._announced is not None:
            work, self._announced = self._announced[0], None
            try:
                work.wait()
            except (RuntimeError, dist.DistError):
                pass

    def _announced_flags(self, mine: bool) -> list[bool] | None:
        """The flags :meth:`announce` sent for this round (waited for), or None."""
        if self._announced is None:
            return None
        work, out, said = self._announced
        self._announced = None
        self._call("the flag exchange", work.wait)  # (first: the call owns `out` until it is done)
        if said != mine:
            raise ValueError(f"rank {self.rank}: announced upload={said} but exchanged upload={mine}")
        M = self.world_size
        self.counters.flag_rounds += 1
        self.counters.flag_bytes_sent += M - 1
        self.counters.flag_bytes_recv += M - 1
        return [bool(v) for v in out.tolist()]

    def exchange(self, upload: Tensor, sent: Encoded, template: Payload, codec, lazy: bool, *,
                 part=None, opens_round: bool = True) -> tuple[Tensor, Payload, list[int]]:
        """Who sends, and every sender's message in rank order, identical on every rank.

        ``upload`` is this rank's (1,) answer and ``sent`` its encoded message (one, or none when
        it skips). Fixed-size messages: a lazy trigger's flags travel as one byte per rank, and
        every rank knows a message's size. Varying sizes: each rank's size travels instead (an
        int32; 0 = skip). Then one ``all_to_all_single`` with the senders' sizes as splits.
        Varying sizes where everyone sends (``always``): after the first round of a kind, the
        size rides at the head of a slot every rank knows the size of, in one call
        (:mod:`.slots`).

        ``part``: which part of a round made part by part (:mod:`sasg.engine.parts`) the message
        is, named alike on every rank: each part is a kind of message of its own (its own slot
        and fixed size); ``opens_round``: whether this exchange is the round's first."""
        M, me = self.world_size, self.rank
        self.counters.rounds += int(opens_round)
        mine = bool(upload.reshape(-1)[0]) if upload.numel() else False
        home = template.values.device  # where the server replica lives (may differ: gloo + CUDA)
        # A kind of message, named alike on every rank (which of them know a slot must agree).
        key = (type(template).__name__, tuple(template.values.shape[1:]), getattr(codec, "name", str(codec)), part)
        slotted = self._slots is not None and M > 1 and not lazy and not template.fixed_size(codec)
        slot = self._slots.get(key) if slotted else None
        if slot is not None:
            if not mine:
                raise ValueError(f"rank {me}: a rule that always sends skipped a round")
            data, sizes = self._slot_exchange(sent, slot)
            flags = [True] * M
        else:
            flags, sizes, data = self._sized_exchange(mine, sent, template, codec, lazy, key)
        if slotted:
            self._slots.learn(key, sizes)
        data = data.to(home)
        senders = [s for s in range(M) if flags[s]]
        sender_sizes = [sizes[s] for s in senders]
        try:
            if mine and isinstance(template, SparsePayload):
                # This rank's own message decodes to what transmit gave it: the codec may take
                # that instead of parsing the bytes again (where it wrote them itself).
                payload = template.decode(codec, data, sender_sizes, own=(senders.index(me), sent))
            else:
                payload = template.decode(codec, data, sender_sizes)
        except CodecError as e:
            raise CodecError(
                f"rank {me}, round {self.counters.rounds}: the messages of rank(s) {senders} do not decode "
                f"({e}); the link or a peer corrupted them"
            ) from None
        return torch.tensor(flags), payload, sender_sizes

    def _sized_exchange(self, mine: bool, sent: Encoded, template: Payload, codec, lazy: bool, key
                        ) -> tuple[list[bool], list[int], Tensor]:
        """Flags or sizes first (where not every rank knows them), then the senders' messages:
        ``(flags, sizes, the messages back to back)``."""
        M, me = self.world_size, self.rank
        if template.fixed_size(codec):
            size = self._fixed_sizes.get(key)
            if size is None:
                # Once per kind: encoding the template is a whole message's work (a dense sign
                # message of 11.6M values: 60 ms), for a size that never changes.
                size = self._fixed_sizes[key] = template.encode(codec)[1][0]
            if lazy and M > 1:
                flags = self._announced_flags(mine)
                if flags is None:
                    flags = [bool(f) for f in self._gather("the flag exchange", int(mine), torch.uint8)]
            else:
                flags = [True] * M if not lazy else [mine]
            sizes = [size if f else 0 for f in flags]
        else:
            own = sent.sizes[0] if mine else 0
            sizes = self._gather("the size exchange", own, torch.int32) if M > 1 else [own]
            flags = [n > 0 for n in sizes]
        if mine and sizes[me] != sent.sizes[0]:
            raise ValueError(f"rank {me}: message of {sent.sizes[0]} bytes, expected {sizes[me]}")
        if M > 1 and any(flags):  # the flags are the same on every rank: all call, or none
            # Every sender's message to every rank, itself included: the receive buffer is then all
            # the messages in rank order, decoded where it lies (no concatenated copy). The copy a
            # rank sends itself never leaves the process and is not counted.
            own_bytes = sent.data.to(self.device) if mine else torch.empty(0, dtype=torch.uint8, device=self.device)
            recv, nsent, nrecv = self._spread(own_bytes, sizes)
            self.counters.payload_rounds += 1
            self.counters.payload_bytes_sent += nsent
            self.counters.payload_bytes_recv += nrecv
            return flags, sizes, recv
        return flags, sizes, sent.data if mine else torch.empty(0, dtype=torch.uint8)

    def _spread(self, own: Tensor, sizes: list[int]) -> tuple[Tensor, int, int]:
        """Every rank's ``own`` (``sizes[r]`` bytes; 0: none) on every rank, back to back in rank
        order (relayed on several nodes); and the bytes this rank sent and received."""
        M, me = self.world_size, self.rank
        if self.topology is not None:
            return relay_exchange(self.topology, me, own, sizes, self._p2p)
        recv = torch.empty(sum(sizes), dtype=torch.uint8, device=self.device)
        self._all_to_all(recv, own.repeat(M), list(sizes), [sizes[me]] * M)
        return recv, sizes[me] * (M - 1), sum(sizes) - sizes[me]

    def _slot_exchange(self, sent: Encoded, slot: int) -> tuple[Tensor, list[int]]:
        """Every rank's message through fixed slots (:mod:`.slots`): one call, and one more for
        the tails of messages that outgrew theirs. Returns the messages back to back and their
        sizes, as the size exchange would."""
        M, me = self.world_size, self.rank
        own = sent.data.to(self.device)
        head, tail = pack(own, slot)
        heads = self._spread(head, [slot] * M)[0]
        try:
            sizes = read_sizes(heads, M, slot, range(M))
        except CodecError as e:
            raise CodecError(f"rank {me}, round {self.counters.rounds}: {e}; the link or a peer corrupted it") from None
        if sizes[me] != sent.sizes[0]:
            raise ValueError(f"rank {me}: message of {sent.sizes[0]} bytes, expected {sizes[me]}")
        tails = tails_of(sizes, slot)
        rest = self._spread(tail, tails)[0] if any(tails) else heads.new_empty(0)
        # The ledger's lines, as the size exchange would count them, and the slots' padding apart.
        out, into = self._slot_copies()
        c = self.counters
        c.flag_rounds += 1
        c.payload_rounds += 1
        flag, payload, padding = _slot_bytes(out, sizes, slot)
        c.flag_bytes_sent += flag
        c.payload_bytes_sent += payload
        c.padding_bytes_sent += padding
        flag, payload, padding = _slot_bytes(into, sizes, slot)
        c.flag_bytes_recv += flag
        c.payload_bytes_recv += payload
        c.padding_bytes_recv += padding
        return unpack(heads, sizes, slot, rest), sizes

    def _slot_copies(self) -> tuple[dict[int, int], dict[int, int]]:
        """How many copies of each rank's slot this rank sends and receives a round (every rank
        sends one: a property of the topology, worked out once)."""
        if self._copies is None:
            M, me = self.world_size, self.rank
            self._copies = (relay_copies(self.topology, me, range(M)) if self.topology is not None
                            else ({me: M - 1}, {s: 1 for s in range(M) if s != me}))
        return self._copies

    def _all_to_all(self, recv: Tensor, send: Tensor, out_splits: list[int], in_splits: list[int]) -> None:
        self._call("the payload exchange", dist.all_to_all_single, recv, send,
                   output_split_sizes=out_splits, input_split_sizes=in_splits, group=self.group)

    def _p2p(self, sends: list[tuple[int, Tensor]], recvs: list[tuple[int, Tensor]]) -> None:
        """Post these sends and receives (peers are ranks of the group) together; wait for all."""
        ops = [dist.P2POp(dist.isend, t, group=self.group, group_peer=peer, tag=RELAY_TAG) for peer, t in sends]
        ops += [dist.P2POp(dist.irecv, t, group=self.group, group_peer=peer, tag=RELAY_TAG) for peer, t in recvs]
        if ops:
            works = self._call("the payload relay", dist.batch_isend_irecv, ops)
            for w in works:
                self._call("the payload relay", w.wait)

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        """One-time setup broadcast (e.g. initial parameters); not counted per round."""
        self._call("the initial broadcast", dist.broadcast, tensor, src, group=self.group)
        return tensor

    def barrier(self) -> None:
        self._call("a barrier", dist.barrier, group=self.group)

    def all_sum_int(self, values: list[int]) -> list[int]:
        """Sum a few integers over ranks (end-of-run totals of the counters)."""
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        self._call("the final counter reduction", dist.all_reduce, t, group=self.group)
        return [int(v) for v in t.tolist()]

    def all_gather_int(self, value: int) -> list[int]:
        out = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        self._call("a setup exchange", self._all_gather, out, t, group=self.group)
        return [int(v) for v in out.tolist()]


def init_process_group_from_env(backend: str = "auto", timeout_s: float = 120.0, device: str = "cpu") -> TorchTransport:
    """``init_process_group`` from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    ``backend="auto"``: NCCL for a CUDA device, gloo otherwise. ``timeout_s`` bounds every
    collective, so a hung peer makes the others fail instead of waiting forever; a peer that dies
    closes its sockets and the others fail at once.
    """
    dev = torch.device(device)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        import os

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        kwargs = {"backend": backend, "timeout": timedelta(seconds=float(timeout_s))}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(**kwargs)
        except (RuntimeError, ValueError, dist.DistError) as e:
            raise PeerFailure(f"could not join the process group ({backend}): {_first_line(e)}") from e
    return TorchTransport(device=dev)
