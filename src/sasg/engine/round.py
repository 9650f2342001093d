r"""The round engine: one round of every algorithm, written once, over a transport.

For the ``N`` workers it holds (all ``M`` in the simulator, one per rank in a real run, one in
the optimizer) and its copy of the server, a round is::

    upload = trigger.decide(round)                 # (N,) who uploads; may ask for stale gradients
    transport.announce(upload, ...)                # where it can: the decision on its way already
    sent   = memory.upload(workers, rows, g, eta/M, compressor, generators, codec)  # bytes + decoded
    trigger.uploaded(...); tau += 1; tau[rows] = 1
    flags, q_all, sizes = transport.exchange(upload, sent, ...)  # every sender's message, in order
    server.last[senders] = q_all                   # a skipper's last message stands ...
    step   = sum_m server.last[m]                  # ... or, aggregate="senders"/"rotating", the round's
                                                   # messages, scaled by M / |senders|
    ledger.record(...)                             # 8 x the bytes sent: here and nowhere else
    return RoundResult(flags, step)                # the runner updates theta: theta -= step, or
                                                   # its optimizer's update made from step

The engine never changes theta: it reads theta^k (a lazy rule's drift, the anchors it keeps) and
returns the round's aggregate; each runner applies its own update (the simulator and a rank
``theta -= step``, :class:`sasg.optim.SASG` plain SGD, momentum or weight decay on it, the DDP
hook hands it to DDP's buckets for the user's optimizer). A runner whose update moves theta by
something other than ``step`` tells the lazy rules' window with :meth:`RoundEngine.record_step`.

Members' capabilities, called where a member has them (never a switch on a member's type):

* ``memory.server_store(compressor, M, ...)`` / ``memory.receive(store, senders, q_all)``: the
  server keeps the memory's own per-worker state instead of the last messages (``ef21``: the
  estimates, ``h_m += decoded(c_m)``); the step is still ``store.sum``;
* ``compressor.server_buffers(seed, ...)``: server-side buffers of a compressor (saved with the
  server's state; ``powersgd``: the warm-start ``Q``);
* ``transport.announce(upload, template, codec)``: a lazy round's decision handed over as soon
  as it is made, before the messages are compressed (:meth:`sasg.distributed.TorchTransport.announce`
  starts the flags' collective then, where the messages' size is fixed); not called in a round
  whose compressor has an exchange of its own (its link's exchange comes first);
* ``compressor.begin_round(link)``: a compressor whose messages need an exchange of their own
  first (``powersgd``: every uploader's ``P``, summed, orthonormalized, before the ``Q`` are
  computed). It returns the round's compressor; the memory calls its ``compress`` as usual, which
  exchanges through ``link`` (the transport, same flags, bits added to the round's ledger entry);
  ``close()`` makes that exchange on a holder whose memory did not call it; ``empty(1)`` is the
  template the engine's exchange decodes with; ``received(senders, q_all)`` follows it.

Dense warm-up (``algorithm.warmup`` rounds first): every worker sends its whole update through
its memory (``v = e_m + (eta/M) g``, the identity compressor, the same codec: what a lossy value
format rounds away stays in ``e_m``), the server steps by their sum and records the step in the
trigger's window; the trigger, staleness and last messages are untouched, and the trigger sees
round ``k - warmup``, so the algorithm then starts as from round 0 (a lazy rule's own warm-up
included), from the warmed-up parameters.

Members own their fast paths (the error memory updated where it lies, rows compressed where they
lie); the engine only calls them. Same seeds, same members: the same trajectory in every runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..accounting import Ledger
from ..core.aggregate import SCALED
from ..core.algorithm import Algorithm
from ..core.capabilities import provided
from ..core.compressors import Identity
from ..core.layout import Layout
from ..core.round_state import (ServerState, WorkerState, at_least, check_like, equal_to, generator_state,
                          part_name)
from ..core.workspace import Workspace
from .contracts import FirstRoundCompressor, check_decision, check_sent
from .. import kernels
from ..seeds import worker_seed

Blocks = Sequence[Tensor]
DOWNLINK_BITS_PER_VALUE = 32  # the parameter-server convention's dense fp32 broadcast of theta
MEMBER_STREAM = 2  # the per-worker generator stream of randomized members (see sasg.seeds)
SENDERS = "senders"  # the server buffer of aggregate="senders": the latest round's number of senders


@dataclass(frozen=True)
class RoundResult:
    """What one round produced: ``flags`` (M,) bool, who sent; ``step`` (d,), the round's aggregate
    :math:`s^k = \\sum_m q_m` (lr already inside, as the messages have it), by which the plain update
    moves the parameters, :math:`\\theta^{k+1} = \\theta^k - s^k`. ``step`` is the engine's buffer:
    read it (or copy it) before the next round, which overwrites it; None where the round's sums
    went elsewhere (``PartedRound.finish``'s ``into``)."""

    flags: Tensor
    step: Tensor | None


@dataclass
class Round:
    """What a trigger sees of the current round (for the ``N`` workers of this engine)."""

    iteration: int
    lr: float
    num_workers: int  # M, all workers
    worker_ids: list[int]  # the global id of each of the N rows
    layout: Layout
    workers: WorkerState
    server: ServerState
    grads: Blocks  # fresh gradients, one (N, d_s) block per segment
    stale_grads: Callable[[Tensor], Blocks]  # rows -> their gradients at their anchors, same minibatch
    workspace: Workspace
    theta: Tensor  # the current parameters theta^k, (d,), read only (e.g. the drift since an anchor)
    # The lr the lazy threshold divides by: the round's lr (None), or the schedule's lr some rounds
    # earlier when the runner lags it (--threshold-lr-lag).
    threshold_lr: float | None = None

    def __post_init__(self):
        if self.threshold_lr is None:
            self.threshold_lr = self.lr


@dataclass
class Link:
    """The round's own exchange of a compressor that needs one (``begin_round``: PowerSGD sends its
    ``P`` factors before its messages): the held workers' answer ``upload``, the server replica
    (its ``buffers``), the algorithm's ``codec``, and ``exchange(sent, template, codec)`` — the
    transport's, with the same flags — whose bits the engine adds to the round's ledger entry."""

    upload: Tensor
    server: ServerState
    codec: object
    transport: object
    lazy: bool
    bits: int = 0
    flag_bits: int = 0

    def exchange(self, sent, template, codec):
        flags, payload, sizes = self.transport.exchange(self.upload, sent, template, codec, self.lazy)
        self.bits += 8 * sum(sizes)
        self.flag_bits += self.transport.flag_bits_per_round(self.lazy, template.fixed_size(codec))
        return flags, payload, sizes


class RoundEngine:
    """The state of ``N`` workers plus the server (a replica when ``N < M``), and the round.

    ``seed`` derives every held worker's member generator (rank m draws what simulated row m
    draws). ``device``/``dtype``: where the state lives."""

    _members_checked = False  # their answers are checked in the first round this engine runs (contracts)

    def __init__(self, algorithm: Algorithm, transport, *, seed: int = 0, device=None, dtype=torch.float32):
        self.algorithm = algorithm
        self.transport = transport
        self.num_workers = M = transport.world_size
        self.local_workers = list(transport.local_workers)
        d = algorithm.layout.numel
        self.workers = WorkerState.create(len(self.local_workers), d, algorithm.worker_buffers, device, dtype)
        # Members' server-side capabilities: a memory whose server keeps its own state per worker
        # (ef21: the estimates h_m, accumulated) and a compressor's server buffers (powersgd: Q).
        store = provided(algorithm.memory, "server_store")
        own = provided(algorithm.compressor, "server_buffers")
        self.server = ServerState(
            last=(store(algorithm.compressor, M, device=device, dtype=dtype) if store is not None
                  else algorithm.compressor.empty(M, device=device, dtype=dtype)),
            step_sq=torch.zeros(algorithm.trigger.history, dtype=torch.float64),
            buffers=own(seed, device=device, dtype=dtype) if own is not None else {},
        )
        if algorithm.aggregate in SCALED:  # how many sent in the latest round anyone sent in
            self.server.buffers[SENDERS] = torch.zeros(1, dtype=torch.int64)
        self._receive = provided(algorithm.memory, "receive")
        self._announce = provided(transport, "announce")  # a transport that moves decisions early
        self.generators = [
            torch.Generator().manual_seed(worker_seed(seed, m, MEMBER_STREAM)) for m in self.local_workers
        ]
        self.workspace = Workspace()
        self.template = algorithm.compressor.empty(1, device=device, dtype=dtype)
        # The downlink line is the parameter-server convention (a dense fp32 theta to each of the M
        # workers every round), kept so that every runner reports the same figure; the replica
        # runner never broadcasts theta (docs/distributed.md).
        self.bits_down_per_round = DOWNLINK_BITS_PER_VALUE * d * M
        self.bits_flags_per_round = transport.flag_bits_per_round(
            algorithm.lazy, self.template.fixed_size(algorithm.codec)
        )
        self.ledger = Ledger(num_workers=M)
        self._step = torch.zeros(d, device=device, dtype=dtype)
        kernels.warm()  # the members' compiled loops load now, not inside the first round
        if algorithm.warmup:
            self._dense = Identity(algorithm.layout)
            self._dense_template = self._dense.empty(1, device=device, dtype=dtype)

    @property
    def iteration(self) -> int:
        return self.server.iteration

    def step(self, theta: Tensor, grads: Tensor | Blocks, stale_grads: Callable[[Tensor], Tensor | Blocks],
             lr: float, threshold_lr: float | None = None) -> RoundResult:
        """One round at the parameters ``theta`` (d,) = :math:`\\theta^k`, which it reads and never
        changes; ``grads`` are the held workers' fresh gradients (``(N, d)`` or per-segment blocks);
        ``stale_grads(rows)`` returns the gradients at the anchors of those rows on their current
        minibatches (called only when the trigger needs it). ``threshold_lr``: the lr a lazy rule's
        threshold divides by (default ``lr``; a runner passes a lagged one for
        ``--threshold-lr-lag``). Returns the round's :class:`RoundResult`: who sent, and the
        aggregate the runner makes its update from (plain SGD: ``theta -= result.step``)."""
        alg, M, layout = self.algorithm, self.num_workers, self.algorithm.layout
        cols = layout.as_columns(grads)
        if self.iteration < alg.warmup:
            return self._dense_round(cols, lr)
        rnd = Round(self.iteration - alg.warmup, lr, M, self.local_workers, layout, self.workers, self.server, cols,
                    lambda rows: layout.as_columns(stale_grads(rows)), self.workspace, theta,
                    threshold_lr=threshold_lr)
        upload = alg.trigger.decide(rnd)
        first = not self._members_checked
        if first:
            check_decision(alg.trigger, upload, len(self.local_workers))
        rows = upload.nonzero().squeeze(1).tolist()
        compressor, template, link = alg.compressor, self.template, None
        begin = provided(compressor, "begin_round")
        if alg.lazy and begin is None and self._announce is not None:
            # The decision may leave now, while the message is made (TorchTransport.announce).
            self._announce(upload, template, alg.codec)
        if begin is not None:  # a compressor with an exchange of its own (powersgd: P, then Q)
            link = Link(upload, self.server, alg.codec, self.transport, alg.lazy)
            compressor = begin(link)
        sent = alg.memory.upload(self.workers, rows, cols, lr / M,
                                 FirstRoundCompressor(compressor) if first else compressor,
                                 [self.generators[r] for r in rows], alg.codec)
        if first:
            check_sent(alg.memory, sent, rows)
            self._members_checked = True
        if link is not None:
            compressor.close()  # its exchange ran on every holder, also where nobody uploads
            template = compressor.empty(1, device=self.template.values.device, dtype=self.template.values.dtype)
        alg.trigger.uploaded(self.workers, rows, theta)
        self.workers.staleness += 1
        self.workers.staleness[rows] = 1
        flags, payload, sizes = self.transport.exchange(upload, sent, template, alg.codec, alg.lazy)
        senders = flags.nonzero().squeeze(1).to(self._step.device)
        self._aggregate(senders, payload)
        bits, flag_bits = 8 * sum(sizes), self.bits_flags_per_round
        if link is not None:
            compressor.received(senders, payload)
            bits, flag_bits = bits + link.bits, flag_bits + link.flag_bits
        self.ledger.record(int(flags.sum()), bits, self.bits_down_per_round, flag_bits)
        return RoundResult(flags, self._step)

    def _dense_round(self, cols, lr: float) -> RoundResult:
        """A warm-up round (see the module docstring): everyone sends everything."""
        alg, M = self.algorithm, self.num_workers
        n = len(self.local_workers)
        rows = list(range(n))
        sent = alg.memory.upload(self.workers, rows, cols, lr / M, self._dense,
                                 [self.generators[r] for r in rows], alg.codec)
        upload = torch.ones(n, dtype=torch.bool, device=self.workers.staleness.device)
        flags, payload, sizes = self.transport.exchange(upload, sent, self._dense_template, alg.codec, False)
        payload.sum(self._step)
        self._close_round()
        flag_bits = self.transport.flag_bits_per_round(False, self._dense_template.fixed_size(alg.codec))
        self.ledger.record(int(flags.sum()), 8 * sum(sizes), self.bits_down_per_round, flag_bits)
        return RoundResult(flags, self._step)

    @property
    def last_step(self) -> Tensor:
        """The latest round's aggregate, ``sum_m q_m`` (its :attr:`RoundResult.step`; read only, the
        buffer is reused next round), of the latest round that formed one (a round made part by
        part into the DDP hook's buckets does not)."""
        return self._step

    def _aggregate(self, senders: Tensor, payload) -> None:
        """Store the senders' fresh messages, write ``sum_m q_m`` into the step and record its
        squared norm for the trigger's history."""
        server, step = self.server, self._step
        n, M = senders.numel(), self.num_workers
        if self.algorithm.aggregate in SCALED:
            # The round's messages only (sasg.core.aggregate): the skippers' slots are emptied. A
            # round nobody sends in changes nothing on the server and repeats the latest senders'
            # mean (a round with no step at all would be a round of training lost).
            count = server.buffers[SENDERS]
            if n:
                idle = torch.ones(M, dtype=torch.bool)
                idle[senders.cpu()] = False
                idle = idle.nonzero().squeeze(1)
                if idle.numel():
                    server.last.assign(idle.to(step.device), self.template_of(idle.numel()))
                count.fill_(n)
            n = int(count.item())
        if senders.numel():
            if self._receive is not None:  # the memory's server side (ef21: h_m += decoded c_m)
                self._receive(server.last, senders, payload)
            else:
                server.last.assign(senders, payload)
        server.last.sum(step)
        if self.algorithm.aggregate in SCALED and 0 < n < M:
            step.mul_(M / n)  # the mean of the senders' messages, for M workers
        self._close_round()

    def template_of(self, n: int):
        """``n`` empty messages of this algorithm (all zeros: they add nothing to a sum)."""
        values = self.template.values
        return self.algorithm.compressor.empty(n, device=values.device, dtype=values.dtype)

    def record_step(self, step_sq: float) -> None:
        """Replace the latest round's squared step in the lazy rules' window with ``step_sq``: the
        runner's measured :math:`\\|\\theta^{k+1}-\\theta^k\\|^2` where its own update (momentum,
        weight decay, Adam) moved the parameters by something other than the engine's step."""
        if self.server.step_sq.numel() and self.iteration > 0:
            self.server.step_sq[-1] = float(step_sq)

    def _close_round(self) -> None:
        """The round's step is in ``_step``: its squared norm joins the trigger's window."""
        server, step = self.server, self._step
        server.push_step(float(torch.dot(step, step).item()) if server.step_sq.numel() else 0.0)
        server.iteration += 1

    # ----- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "algorithm": self.algorithm.name,
            "num_workers": self.num_workers,
            "local_workers": list(self.local_workers),
            "workers": self.workers.state_dict(),
            "server": self.server.state_dict(),
            "ledger": self.ledger.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "transport": self.transport.counters.to_dict(),
        }

    def check_state_dict(self, state, where: str = "") -> None:
        """Raise one ``ValueError`` naming the first part of ``state`` (a ``state_dict()``; named
        ``where`` inside a larger state) that is missing or does not fit this engine: another
        algorithm, other workers, other shapes. Changes nothing."""
        saved = state.get("algorithm") if isinstance(state, Mapping) else None
        if isinstance(saved, str) and saved != self.algorithm.name:
            raise ValueError(
                f"state part {part_name(where, 'algorithm')!r}: the state is for {saved!r}, not {self.algorithm.name!r}"
            )
        check_like(state, {
            "algorithm": self.algorithm.name,
            "num_workers": equal_to(self.num_workers, " (saved by a run with another number of workers?)"),
            "local_workers": equal_to(self.local_workers, " (saved by another rank?)"),
            "workers": self.workers.check_state_dict,
            "server": self.server.check_state_dict,
            "ledger": self._check_ledger,
            "generators": [generator_state] * len(self.generators),
            "transport": {k: at_least(0) for k in self.transport.counters.to_dict()},
        }, where)
        rounds, iteration = len(state["ledger"]["uploads"]), state["server"]["iteration"]
        if rounds != iteration:
            raise ValueError(
                f"state part {part_name(where, 'ledger')!r} records {rounds} rounds but "
                f"{part_name(where, 'server.iteration')!r} is {iteration}"
            )

    def _check_ledger(self, state, where: str) -> None:
        self.ledger.check_state_dict(state, where)
        equal_to(self.num_workers)(state["num_workers"], part_name(where, "num_workers"))

    def load_state_dict(self, state: dict) -> None:
        """All or nothing: :meth:`check_state_dict` first, then every part."""
        self.check_state_dict(state)
        self._apply_state(state)

    def _apply_state(self, state: dict) -> None:
        """Copy a state that :meth:`check_state_dict` passed (nothing here can fail on one)."""
        self.workers._apply(state["workers"])
        self.server._apply(state["server"])
        self.ledger.load_state_dict(state["ledger"])
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        self.transport.counters.load(state["transport"])
