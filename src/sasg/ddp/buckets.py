"""DDP's gradient buckets and the model's flat vector: gather the gradients, scatter the result.

DDP groups the gradients into buckets of about 25 MB and calls the communication hook once per
bucket, in bucket order, on every rank. Which parameters share a bucket is DDP's business: it
chooses them at construction and chooses again after the first iteration (in the order the
gradients became ready). The algorithm state, by contrast, lives in one flat vector in the
order of ``model.parameters()`` (a :class:`~sasg.core.layout.Layout` with one segment per tensor,
so top-k keeps ``max(1, floor(h d_s))`` of every tensor, as the simulator does). This module maps
one onto the other through the parameters themselves, so a rebuild of the buckets changes
nothing.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from ..core.layout import Layout, Segment


def trained(named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """The ``(name, parameter)`` pairs a hook follows: those with ``requires_grad`` and not empty
    (DDP gives the others no gradient; nothing to send)."""
    return [(n, p) for n, p in named if p.requires_grad and p.numel() > 0]


class ParameterIndex:
    """The trained parameters of a model, in ``model.parameters()`` order, as one flat layout.

    ``named``: ``(name, parameter)`` pairs; only :func:`trained` ones are kept."""

    def __init__(self, named: Iterable[tuple[str, Tensor]]):
        kept = trained(named)
        if not kept:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False or are empty)")
        self.names = [n for n, _ in kept]
        self.params = [p for _, p in kept]
        self.layout = Layout((n, tuple(p.shape)) for n, p in kept)
        self._segment = {id(p): seg for p, seg in zip(self.params, self.layout.segments)}
        self._number = {seg.offset: i for i, seg in enumerate(self.layout.segments)}
        # Parameters laid out other than C-contiguously (a channels_last kernel), whose gradients
        # DDP lays out the same way in its buckets (see _pairs): known once, not asked every round.
        self._strided = {id(p) for p in self.params if not p.is_contiguous() and _dense(p)}
        first = self.params[0]
        self.device = first.device
        self._scratch: Tensor | None = None  # float64, for step_sq_from

    @property
    def numel(self) -> int:
        return self.layout.numel

    def flat_params(self, out: Tensor) -> Tensor:
        """The current parameters as one flat vector (``out``, any float dtype: cast on copy)."""
        for p, seg in zip(self.params, self.layout.segments):
            out[seg.offset : seg.end].copy_(p.detach().reshape(-1))
        return out

    def split(self, flat: Tensor) -> list[Tensor]:
        """``flat`` (layout order) as one view per tensor."""
        return [flat[seg.offset : seg.end] for seg in self.layout.segments]

    def step_sq_from(self, previous: Tensor, metric: Sequence[Tensor | None] | None = None) -> float:
        """``||theta - previous||^2`` of the current parameters (float64 sums): the real step since
        ``previous`` (a flat copy from :meth:`flat_params`), whatever the optimizer did; with
        ``metric`` (per tensor, a tensor of its shape or None), ``||metric * (theta - previous)||^2``."""
        # In one float64 buffer the size of the largest tensor, kept: the same sums as converting
        # each operand with .double() (float32 -> float64 is exact, and the mixed-dtype ops compute
        # in float64), without three fresh float64 temporaries a tensor a round, whose page faults
        # were most of the cost (FC 784-512-10: 0.4-0.8 -> 0.3 ms).
        scratch = self._scratch
        if scratch is None or scratch.device != previous.device:
            scratch = self._scratch = torch.empty(max(p.numel() for p in self.params), dtype=torch.float64,
                                                  device=previous.device)
        total = 0.0
        for i, (p, seg) in enumerate(zip(self.params, self.layout.segments)):
            diff = scratch[: seg.numel].copy_(p.detach().reshape(-1)).sub_(previous[seg.offset : seg.end])
            if metric is not None and metric[i] is not None:
                diff.mul_(metric[i].detach().reshape(-1))
            total += float(torch.dot(diff, diff).item()) if diff.numel() else 0.0
        return total

    def _pairs(self, bucket) -> list[tuple[Segment, Tensor]]:
        pairs = []
        buffer = None
        for p, g in zip(bucket.parameters(), bucket.gradients()):
            seg = self._segment.get(id(p))
            if seg is None:
                if p.numel() == 0:
                    continue
                raise RuntimeError(
                    f"DDP bucket {bucket.index()} holds a parameter of shape {tuple(p.shape)} that the sasg hook "
                    "state does not know: build the state from the model DDP wraps (sasg.ddp.register does)"
                )
            if id(p) in self._strided:
                # GradBucket.gradients() views every gradient C-contiguously, but DDP lays out the
                # gradient of a dense parameter as the parameter is laid out (its "gradient layout
                # contract": a channels_last kernel's gradient is channels_last in the bucket), and
                # reads .grad out of the bucket that way. Through the contiguous view the entries
                # would be permuted: top-k and plain SGD do not notice, but everything that pairs
                # the gradient with the parameter, its momentum buffer or Adam's moments does.
                buffer = bucket.buffer() if buffer is None else buffer
                g = buffer.as_strided(p.shape, p.stride(), g.storage_offset())
            pairs.append((seg, g))
        return pairs

    def numbered_pairs(self, bucket) -> list[tuple[int, Segment, Tensor]]:
        """One bucket's ``(tensor number, segment, gradient view)`` triples, in the bucket's order."""
        return [(self._number[seg.offset], seg, g) for seg, g in self._pairs(bucket)]

    def gradients(self, bucket, filled: set[int]) -> list[tuple[int, Tensor]]:
        """One bucket's gradients where DDP keeps them: ``(tensor number, (1, d_s) view)`` pairs,
        adding the numbers to ``filled`` (the round's so far: a tensor twice is an error)."""
        mine = []
        for seg, g in self._pairs(bucket):
            i = self._number[seg.offset]
            if i in filled:
                raise RuntimeError(f"parameter {seg.name!r} came twice in one round of DDP buckets")
            filled.add(i)
            mine.append((i, g.reshape(1, -1)))
        return mine

    def round_gradients(self, buckets: Sequence) -> dict[int, Tensor]:
        """Every parameter's gradient from the round's ``buckets``, where DDP keeps them (tensor
        number -> ``(1, d_s)`` view); each parameter exactly once."""
        views: dict[int, Tensor] = {}
        filled: set[int] = set()
        for bucket in buckets:
            views.update(self.gradients(bucket, filled))
        self.check_complete(filled)
        return views

    def gather_bucket(self, bucket, out: Tensor, filled: set[int]) -> list[int]:
        """One bucket's gradients into ``out`` (flat, layout order; cast to its dtype), adding their
        tensors' numbers to ``filled`` as :meth:`gradients` does. Returns those numbers."""
        mine = self.gradients(bucket, filled)
        for i, g in mine:
            seg = self.layout.segments[i]
            out[seg.offset : seg.end].view(1, -1).copy_(g)
        return [i for i, _ in mine]

    def gather(self, buckets: Sequence, out: Tensor) -> Tensor:
        """Every parameter's gradient from the round's ``buckets`` into ``out`` (flat, in layout
        order; cast to ``out``'s dtype). Each parameter must come exactly once."""
        filled: set[int] = set()
        for bucket in buckets:
            self.gather_bucket(bucket, out, filled)
        self.check_complete(filled)
        return out

    def blocks(self, gradients: dict[int, Tensor], out: Tensor, numbers: Iterable[int] | None = None
               ) -> list[Tensor]:
        """The numbered tensors (default: all, in layout order) as ``(1, d_s)`` blocks for the
        round engine, read where DDP keeps them (``gradients``: views from :meth:`gradients`)
        where they have ``out``'s dtype and device; any other is cast into its place in ``out``
        (flat, layout order) and read there."""
        numbers = range(len(self.layout.segments)) if numbers is None else numbers
        dtype, device = out.dtype, out.device
        blocks = []
        for i in numbers:
            g = gradients[i]
            if g.dtype != dtype or g.device != device:
                seg = self.layout.segments[i]
                g = out[seg.offset : seg.end].view(1, -1).copy_(g)
            blocks.append(g)
        return blocks

    def parts(self, cap: int, first: int) -> list[tuple[int, int]]:
        """The model cut into runs of tensors ``(first, stop)`` as DDP cuts its buckets once it has
        seen the gradients arrive (last tensors first, for a model run front to back): from the last
        tensor backwards a run closes once it holds ``first`` bytes (the first run) or ``cap``
        bytes (the others). Runs are returned in that order. A run depends on the model alone, not
        on DDP's buckets of the moment (the first iteration's, a restart's), so neither do the
        messages a round made part by part sends."""
        runs: list[tuple[int, int]] = []
        stop, size, limit = len(self.params), 0, first
        for i in reversed(range(len(self.params))):
            size += self.params[i].numel() * self.params[i].element_size()
            if size >= limit:
                runs.append((i, stop))
                stop, size, limit = i, 0, cap
        if stop > 0:
            runs.append((0, stop))
        return runs

    def check_complete(self, filled: set[int]) -> None:
        """Every trained parameter came in the round's buckets (``filled``: their tensor numbers)."""
        if len(filled) != len(self.layout.segments):
            missing = [s.name for i, s in enumerate(self.layout.segments) if i not in filled]
            raise RuntimeError(
                f"{len(missing)} trained parameter(s) reached no DDP bucket this round (e.g. {missing[0]!r}): "
                "parameters DDP ignores must be frozen (requires_grad=False) or left out of the hook state"
            )

    def scatter(self, flat: Tensor, buckets: Sequence) -> None:
        """Write ``flat`` (layout order) into the buckets' buffers, each in its own dtype."""
        for bucket in buckets:
            for seg, g in self._pairs(bucket):
                g.copy_(flat[seg.offset : seg.end].view(g.shape))

    def describe(self) -> list[list]:
        """``[name, numel]`` per tensor: what every rank must agree on."""
        return [[seg.name, seg.numel] for seg in self.layout.segments]


def refuse_sparse_gradients(module, index: ParameterIndex) -> None:
    """A ValueError naming an embedding with ``sparse=True`` among the trained parameters: DDP
    hands its gradient to the hook as a sparse tensor in a bucket of its own, which the round
    (dense flat layout, top-k per tensor) does not take; it failed mid-backward, naming no cause."""
    if module is None:
        return
    trained = {id(p) for p in index.params}
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse and id(m.weight) in trained:
            raise ValueError(
                f"the sasg hook cannot compress {type(m).__name__} {name or '(the model)'!r}: it has sparse=True, "
                "so its gradient reaches the hook as a sparse tensor, which the hook does not take; build it "
                "with sparse=False (the default), or freeze it (requires_grad=False)")


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s entries fill a block of memory once each, in some order of its dimensions
    (c10's ``is_non_overlapping_and_dense``, which DDP asks of a parameter before it lays the
    gradient out like it)."""
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def bucket_nbytes(bucket) -> int:
    buffer = bucket.buffer()
    return buffer.numel() * buffer.element_size()
