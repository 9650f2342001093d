"""The hook's round part by part, during the backward pass: a mixin of :class:`~sasg.ddp.HookState`.

``overlap``: make the round part by part, each part's exchange running while the backward pass
computes the gradients before it (:mod:`sasg.engine.parts`). Default ``None``: wherever the round
splits along tensors (``always`` with ``topk`` and ``ef`` or no memory: the hook's default
algorithm) and the model is on the CPU (gloo); ``True``: the same, and a ValueError where it
cannot; ``False``: the whole gradient first, then one exchange. The training is the same bit for
bit either way; with several parts each part is a message of its own (a few header bytes each on
the ledger).

The parts are cut as DDP cuts its buckets once it has seen the gradients arrive (last tensors
first; the first part closes at 1 MiB or ``bucket_cap``, the others at ``bucket_cap`` bytes;
:func:`~sasg.ddp.register` passes the DDP model's ``bucket_bytes_cap``, default 25 MiB). They
depend on the model alone, not on DDP's buckets of the moment (one bucket in the first iteration,
or after a restart), so a restart sends the same messages. A part is sent when DDP has handed
over every one of its tensors, parts completed by one bucket in their order, so every rank makes
the same calls in the same order. Measured (``benchmarks/overlap.py``, docs/ddp-hook.md): on
ResNet-18 at 100 Mbit/s, a core per rank, the link's time hides behind the backward pass.
"""

from __future__ import annotations

from .. import validation
from ..engine.parts import PartedRound, separable
from ..runtime import build_algorithm

# DDP's default bucket cap, and the most its first bucket holds (the last tensors' gradients).
DDP_BUCKET_CAP = 25 * 1024 * 1024
DDP_FIRST_BUCKET = 1024 * 1024


class Overlap:
    """A mixin of :class:`~sasg.ddp.HookState` (module docstring); ``self.index``, ``self.spec``,
    ``self.algorithm``, ``self.engine``, ``self.momentum`` are the state's."""

    def _init_overlap(self, overlap, bucket_cap) -> None:
        if overlap is not None:
            validation.flag(overlap, "overlap")
        self._overlap = overlap
        self._parted: PartedRound | None = None  # the round made part by part (start)
        self._filled: set[int] = set()  # the tensors of this round's buckets so far
        self._views: dict = {}  # ... and their gradients where DDP keeps them (HookState._in_place)
        cap = DDP_BUCKET_CAP if bucket_cap is None else validation.integer(bucket_cap, "bucket_cap", ge=1)
        self._parts = self.index.parts(cap, min(cap, DDP_FIRST_BUCKET))
        self._part_of = {i: n for n, (a, b) in enumerate(self._parts) for i in range(a, b)}
        self._left: list[int] = []  # per part, its tensors still to come this round

    def _overlaps(self, transport) -> bool:
        """Does the round go part by part (``overlap``)? Where it can: an algorithm whose round
        splits along tensors (:func:`sasg.engine.parts.separable`: ``always``, ``topk``, ``ef`` or
        no memory), without a GradScaler or clip_grad_norm, on gloo's CPU tensors, with a peer to talk to.
        ``overlap=True`` where it cannot is a ValueError saying why."""
        why = None
        if not separable(self.algorithm):
            why = (f"its round needs the whole gradient first ({self.spec.composition}: only trigger always with "
                   "compressor topk and memory ef or none splits along tensors)")
        elif self._scaling is not None:
            why = ("under a GradScaler every rank's gradient is checked for inf/NaN before anything is sent "
                   "(sasg.ddp.loss_scale)")
        elif self._clip is not None:
            why = ("clip_grad_norm scales the gradients by the mean gradient's norm, known only once every bucket "
                   "is in (sasg.ddp.clipping)")
        elif self.index.device.type != "cpu":
            why = (f"the exchange part by part runs on CPU tensors (gloo) only (untested on GPUs), the model is "
                   f"on {self.index.device}")
        if why is not None and self._overlap:
            raise ValueError(f"overlap=True: {why}; pass overlap=None (where it can) or overlap=False")
        return why is None and self._overlap is not False and transport.world_size > 1

    def _start_overlap(self) -> None:
        self._parted = PartedRound(self.engine, lambda layout: build_algorithm(self.spec, layout, self.codec))

    @property
    def overlapping(self) -> bool:
        """Does each part's exchange start during the backward pass (``overlap``)?"""
        return self.start()._parted is not None

    def _send_bucket(self, bucket) -> None:
        """One bucket of a round made part by part: its gradients in, and every part it completes
        compressed and on its way (parts in a fixed order, so every rank calls alike)."""
        if not self._filled:
            self._round_start()
            self._left = [b - a for a, b in self._parts]
        if self._in_place:  # (read where DDP keeps them: see HookState)
            views = self.index.gradients(bucket, self._filled)
            self._views.update(views)
            tensors = [i for i, _ in views]
            grads = None  # (each part's blocks are read from self._views when it is sent)
            if self.momentum is not None:
                grads = dict(zip(tensors, self.index.blocks(self._views, self._grads, tensors)))
        else:
            tensors = self.index.gather_bucket(bucket, self._grads, self._filled)
            grads = self._grads
        if self.momentum is not None:  # DGC: the velocity of these tensors is what travels
            grads = self.momentum.accumulate(grads, self._theta, tensors)
        ready = []
        for i in tensors:
            n = self._part_of[i]
            self._left[n] -= 1
            if not self._left[n]:
                ready.append(n)
        for n in sorted(ready):
            first, stop = self._parts[n]
            if grads is None:  # the part's own blocks, where DDP keeps them (it may span buckets)
                part = self.index.blocks(self._views, self._grads, range(first, stop))
            else:  # the flat gradient, or DGC's velocity
                part = grads.view(1, -1)
            self._parted.send(first, stop, part, 1.0 / self.engine.num_workers, wait=bucket.is_last())

    def _abandon_parts(self) -> None:
        """A round that failed part-way: its exchanges waited for, its parts forgotten."""
        if self._parted is not None:
            self._parted.abandon()
            self._filled, self._views = set(), {}
