r"""An algorithm: a trigger, a compressor, a memory and a codec, composed.

=========  =========  ==========  ======
alias      trigger    compressor  memory
=========  =========  ==========  ======
sgd        always     identity    none
sparse     always     topk        ef
lasg       wk2        identity    none
sasg       wk2        topk        ef
=========  =========  ==========  ======

One round for worker m that uploads (``eta`` is the lr on the **mean** of the M gradients)::

    v   = (eta / M) * g + e_m       # the memory (ef: e_m; none: nothing)
    q_m = compress(v)               # what crosses the network, priced by the codec
    e_m = v - q_m
    anchor_m = theta ; tau_m = 1    # the trigger's and the engine's bookkeeping

A skipper sends nothing and ``tau_m += 1``. The server steps
:math:`\theta^{k+1} = \theta^k - \sum_m q_m` with the last message of every worker (or, with
``aggregate="senders"``, the round's messages scaled to M: :mod:`sasg.core.aggregate`). The round
itself is :class:`sasg.engine.RoundEngine`; this object only holds the members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .aggregate import ROTATING, SCALED
from .capabilities import flag as member_flag, provided
from .codecs.protocol import Codec
from .compressors.protocol import Compressor
from .layout import Layout
from .memories.protocol import Memory
from .triggers.protocol import Trigger


@dataclass
class Algorithm:
    name: str
    trigger: Trigger
    compressor: Compressor
    memory: Memory
    codec: Codec
    # Dense warm-up: the first ``warmup`` rounds every worker sends its whole (error-fed) update
    # through the same memory and codec (:class:`sasg.engine.RoundEngine`); 0: none, the paper's.
    warmup: int = 0
    # What the server steps by when workers skip: every worker's last message ("last", the
    # paper's) or the round's messages scaled to M ("senders"; "rotating": and worker k mod M
    # uploads in round k); see sasg.core.aggregate.
    aggregate: str = "last"
    # Each member's optional flags as its registration declares them ({"trigger": {...}, ...};
    # sasg.core.capabilities), filled by AlgorithmSpec.build; None (an algorithm composed by
    # hand): read off the members.
    capabilities: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.aggregate in SCALED and provided(self.memory, "server_store") is not None:
            raise ValueError(
                f"{self.name}: aggregate {self.aggregate!r} empties a skipper's slot on the server, but the memory "
                f"{self.memory.name!r} keeps a running state there instead of messages; use aggregate 'last'"
            )
        if (self.aggregate == ROTATING and getattr(self.trigger, "lazy", False)
                and not getattr(self.trigger, "rotates", False)):
            raise ValueError(
                f"{self.name}: aggregate 'rotating' has worker k mod M upload in round k, but the rule "
                f"{self.trigger.name!r} does not take turns; use aggregate 'senders', or a rule with a window D "
                "(wk2, wk1, ps)"
            )
        # A member that works only with certain others says so (clag needs the ef21 estimate):
        # its check_algorithm(algorithm) raises a ValueError that names the fix (sasg.core.capabilities).
        for member in (self.trigger, self.compressor, self.memory):
            check = provided(member, "check_algorithm")
            if callable(check):
                check(self)

    @property
    def layout(self) -> Layout:
        return self.compressor.layout

    def flag(self, role: str, name: str):
        """The flag ``name`` of the member in ``role`` (``"trigger"``, ``"compressor"``,
        ``"memory"``): as declared where it registered, else as the member says
        (:mod:`sasg.core.capabilities`)."""
        declared = (self.capabilities or {}).get(role)
        return declared[name] if declared is not None else member_flag(getattr(self, role), name)

    @property
    def lazy(self) -> bool:
        return bool(self.flag("trigger", "lazy"))

    @property
    def needs_stale_grads(self) -> bool:
        """Whether the trigger may ask for a second gradient at the anchor (``wk2``)."""
        return bool(self.flag("trigger", "needs_stale_grads"))

    @property
    def worker_buffers(self) -> tuple:
        """The members' per-worker buffers: names of ``(N, d)`` ones, ``(name, width)`` pairs."""
        entries = (*self.trigger.worker_buffers, *self.memory.worker_buffers)
        names = [e if isinstance(e, str) else e[0] for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: the trigger and the memory both keep a buffer named in {tuple(names)}")
        return entries

    @property
    def codec_name(self) -> str:
        """The codec as it applies to this algorithm's messages (a dense algorithm under
        ``rice+sign`` sends ``sign`` values)."""
        return self.compressor.empty(1).codec_name(self.codec)

    @property
    def biased(self) -> bool:
        """A lossy codec and a memory that does not send what was dropped later: the applied
        updates are biased (the report says so). Not when the compressor's messages are exactly
        representable in that codec (``exact_under``: e.g. terngrad's under ``ternary``)."""
        exact = self.codec_name in self.flag("compressor", "exact_under")
        return not self.codec.lossless and not self.memory.corrects and not exact

    def describe(self) -> dict:
        return {
            "algorithm": self.name,
            **self.trigger.describe(),
            **self.compressor.describe(),
            **self.memory.describe(),
            **self.codec.describe(),
        }
