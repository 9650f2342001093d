r"""A round made part by part: each part's messages leave while the rest of the gradient is made.

Where every worker sends every round (the ``always`` trigger) and the compressor and the memory
act on each tensor alone (``topk`` keeps :math:`k_s` entries of every tensor; error feedback or no
memory), a message is the concatenation of its tensors' pieces: the message of a run of tensors
is the round's message restricted to them (the same entries, values and error-memory update).
A runner that learns its gradient a run of tensors at a time — the DDP hook, bucket by bucket
during the backward pass — can then compress a part, start its exchange and go on computing
while the link carries it, as DDP's all-reduce and PowerSGD's hook do with their buckets.

What stays the same as :meth:`RoundEngine.step`: the selection, the values decoded, the error
memory, the server's copy of every worker's last message, and the aggregate, summed entry by entry
in rank order — the step is bit for bit the engine's. What differs is the bytes: each part is a
message of its own, with its own header (a Golomb–Rice message's stream length and byte padding:
a few bytes) and its own size on the flag line; the ledger counts what was sent. A round that is
one part (a model in one DDP bucket) sends exactly the engine's bytes.

The exchanges run one after the other on one thread of their own, in the order the parts were
sent, which is the same on every rank (every rank gets DDP's buckets in the same order); the runner
must make no other collective call on the group until :meth:`PartedRound.finish` returns.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from ..core.aggregate import SCALED
from ..core.capabilities import provided
from ..core.compressors import Identity
from ..core.layout import Layout
from .contracts import check_sent
from .round import SENDERS, RoundResult

# The members whose message over a run of tensors is the round's message restricted to it.
SEPARABLE = {"trigger": ("always",), "compressor": ("topk",), "memory": ("ef", "none")}


def separable(algorithm) -> bool:
    """Can ``algorithm``'s round be made part by part (see the module docstring)?"""
    return (algorithm.trigger.name in SEPARABLE["trigger"]
            and algorithm.compressor.name in SEPARABLE["compressor"]
            and algorithm.memory.name in SEPARABLE["memory"]
            and provided(algorithm.compressor, "begin_round") is None
            and provided(algorithm.memory, "server_store") is None)


class _Columns:
    """The engine's worker buffers restricted to a part's columns (views: the memory updates the
    engine's own error buffer where it lies)."""

    def __init__(self, workers, lo: int, hi: int):
        self._workers, self._lo, self._hi = workers, lo, hi

    def buffer(self, name: str) -> Tensor:
        return self._workers.buffer(name)[:, self._lo:self._hi]


class Part:
    """Tensors ``first`` to ``stop - 1`` of the layout, with the algorithm's members built on them."""

    def __init__(self, build, layout: Layout, first: int, stop: int, kept: list[int] | None, device, dtype):
        segments = layout.segments[first:stop]
        self.first, self.stop = first, stop
        self.lo, self.hi = segments[0].offset, segments[-1].end
        self.layout = Layout((s.name, s.shape) for s in segments)
        self.algorithm = build(self.layout)
        self.template = self.algorithm.compressor.empty(1, device=device, dtype=dtype)
        self.dense = Identity(self.layout)
        self.dense_template = self.dense.empty(1, device=device, dtype=dtype)
        # where this part's entries sit in the server's copy of a whole message (layout order)
        self.columns = (sum(kept[:first]), sum(kept[:stop])) if kept is not None else None
        self.checked = False


class PartedRound:
    """The rounds of ``engine`` made part by part (:func:`separable` algorithms only).

    Per round: :meth:`send` for every run of tensors as it becomes known (each tensor once),
    then :meth:`finish`. ``build(layout)``: the engine's algorithm built on another layout (each
    part's members are built alike on the part's tensors)."""

    def __init__(self, engine, build):
        if not separable(engine.algorithm):
            raise ValueError(f"{engine.algorithm.name}: its round cannot be made part by part "
                             f"(needs trigger always, compressor topk, memory ef or none)")
        self.engine, self._build = engine, build
        self._parts: dict[tuple[int, int], Part] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._sent: list[tuple[Part, object, Future | None]] = []
        self._done: set[int] = set()

    def _part(self, first: int, stop: int) -> Part:
        part = self._parts.get((first, stop))
        if part is None:
            engine = self.engine
            kept = getattr(engine.algorithm.compressor, "k_per_segment", None)
            part = self._parts[(first, stop)] = Part(self._build, engine.algorithm.layout, first, stop, kept,
                                                     engine._step.device, engine._step.dtype)
        return part

    @property
    def dense(self) -> bool:
        """Is this round one of the algorithm's dense warm-up rounds?"""
        return self.engine.iteration < self.engine.algorithm.warmup

    def send(self, first: int, stop: int, grads, scale: float, *, wait: bool = False) -> None:
        """Compress tensors ``first`` to ``stop - 1`` of ``grads`` (``(N, d)``, the whole layout's
        buffer: only their columns are read; or those tensors' own ``(N, d_s)`` blocks, in layout
        order) with step ``scale`` (``lr / M``) and start their
        exchange. ``wait``: exchange now, on this thread, after every part sent before (the
        round's last parts: nothing is left to overlap)."""
        engine = self.engine
        if any(s in self._done for s in range(first, stop)):
            raise RuntimeError(f"tensors {first}..{stop - 1}: sent twice in one round")
        self._done.update(range(first, stop))
        part = self._part(first, stop)
        members = part.algorithm
        rows = list(range(len(engine.local_workers)))
        compressor = part.dense if self.dense else members.compressor
        cols = part.layout.as_columns(grads[:, part.lo:part.hi] if isinstance(grads, Tensor) else grads)
        sent = members.memory.upload(_Columns(engine.workers, part.lo, part.hi), rows, cols, scale, compressor,
                                     [engine.generators[r] for r in rows], members.codec)
        if not part.checked:
            check_sent(members.memory, sent, rows)
            part.checked = True
        template = part.dense_template if self.dense else part.template
        job = (self._exchange, part, sent, template, not self._sent)
        if wait or engine.num_workers == 1:
            for _, _, pending in self._sent:  # the parts before go first, on every rank
                if pending is not None:
                    pending.result()
            self._sent.append((part, job[0](*job[1:]), None))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sasg-exchange")
        self._sent.append((part, None, self._pool.submit(*job)))

    def _exchange(self, part: Part, sent, template, opens: bool):
        engine = self.engine
        upload = torch.ones(len(engine.local_workers), dtype=torch.bool, device=engine.workers.staleness.device)
        return engine.transport.exchange(upload, sent, template, part.algorithm.codec, False,
                                         part=(part.first, part.stop), opens_round=opens)

    def finish(self, theta: Tensor, into=None) -> RoundResult:
        """Wait for every part's exchange; the round's aggregate, ledger entry and state, as
        :meth:`RoundEngine.step` leaves them. Every tensor must have been sent.

        ``into``: where the parts' sums go instead of the engine's step, an object whose
        ``add(first, stop, lo, payload)`` adds a part's messages (indices from layout column
        ``lo``) to the caller's own zeroed buffers (the DDP hook's buckets:
        :class:`sasg.ddp.bucket_sums.BucketSums`). The round's step is then not formed:
        ``RoundResult.step`` is None and :attr:`RoundEngine.last_step` keeps an older round's."""
        engine = self.engine
        if into is not None and engine.server.step_sq.numel():
            raise ValueError("the trigger keeps the steps' norms: the round's step must be formed (into=None)")
        sent, self._sent = self._sent, []
        done, self._done = self._done, set()
        results = [(part, result if pending is None else pending.result()) for part, result, pending in sent]
        if len(done) != len(engine.algorithm.layout.segments):
            raise RuntimeError(f"a round made part by part sent {len(done)} of "
                               f"{len(engine.algorithm.layout.segments)} tensors")
        step, server, M = engine._step, engine.server, engine.num_workers
        bits = flag_bits = 0
        for part, (flags, payload, sizes) in results:
            if into is None:
                payload.sum(step[part.lo:part.hi])
            else:
                into.add(part.first, part.stop, part.lo, payload)
            bits += 8 * sum(sizes)
            template = part.dense_template if self.dense else part.template
            flag_bits += engine.transport.flag_bits_per_round(False, template.fixed_size(part.algorithm.codec))
            if not self.dense:
                self._store(part, payload)
        if not self.dense:
            rows = list(range(len(engine.local_workers)))
            engine.algorithm.trigger.uploaded(engine.workers, rows, theta)
            engine.workers.staleness.fill_(1)  # everyone sent
            if engine.algorithm.aggregate in SCALED:
                server.buffers[SENDERS].fill_(M)
        engine._close_round()
        engine.ledger.record(M, bits, engine.bits_down_per_round, flag_bits)
        return RoundResult(torch.ones(M, dtype=torch.bool), step if into is None else None)

    def _store(self, part: Part, payload) -> None:
        """The part's messages into the server's copy of every worker's last message, where the
        round's whole messages put them."""
        last = self.engine.server.last
        a, b = part.columns
        last.indices[:, a:b] = payload.indices + part.lo
        last.values[:, a:b] = payload.values

    def abandon(self) -> None:
        """Forget a round that failed part-way (its exchanges are waited for, errors dropped)."""
        for _, _, pending in self._sent:
            if pending is not None:
                try:
                    pending.result()
                except BaseException:  # noqa: BLE001 - the round has already failed
                    pass
        self._sent, self._done = [], set()


__all__ = ["Part", "PartedRound", "SEPARABLE", "separable"]
