"""The round's aggregate summed straight into DDP's buckets, not into a flat step first.

Why: the hook hands DDP the round's aggregate in the buckets' buffers. Formed in a flat step of
the model and then copied, it costs three passes over the model a round (zero the step, read it,
write the buckets) besides the messages' entries; written where it lands, one (zero the buckets).
``benchmarks/bucket_sums.py`` measures both: on one core of a 2-core AMD EPYC the sum of 2 ranks'
messages into ResNet-18's buckets took 12.6 ms one way and 6.1 ms the other (FC: 0.145 and
0.064 ms).

The sums are the same bit for bit: every place receives the same additions in the same order
(:mod:`sasg.kernels.bucket_sum`). Only where DDP's buckets are fp32 CPU buffers with each
gradient a view inside its bucket (what DDP makes on the CPU; :meth:`BucketSums.of` checks it)
and the compiled kernels are on; elsewhere the hook forms the step and copies it (the reference).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from ..core.payloads import SparsePayload, VarSparsePayload
from ..kernels import bucket_sum as kernel


class BucketSums:
    """One round's buckets as the target of the parts' sums: :meth:`zero` them once every part's
    gradient has been read, then :meth:`add` each part's messages (``PartedRound.finish``'s
    ``into``)."""

    def __init__(self, key, buffers: list[Tensor], views: list[Tensor], home: np.ndarray, where: np.ndarray,
                 offsets: np.ndarray, ends: np.ndarray):
        self._key = key  # what the buckets were (see of)
        self._buffers = buffers  # each bucket's flat fp32 buffer
        self._arrays = [b.numpy() for b in buffers]
        self._views = views  # per tensor (layout order): its gradient's view in its bucket
        self._home, self._where = home, where  # per tensor: its bucket, and bucket place - layout index
        self._offsets, self._ends = offsets, ends  # per tensor: its layout range
        self._parts: dict[tuple[int, int, int], tuple] = {}  # (first, stop, lo) -> the kernel's arrays

    @classmethod
    def of(cls, index, buckets: Sequence, previous: "BucketSums | None" = None) -> "BucketSums | None":
        """The sums into ``buckets`` (the round's, every trained tensor once, as
        ``ParameterIndex.round_gradients`` checks), or None where they cannot go there directly.

        ``previous``: an earlier round's, returned as it is where the buckets are the same: the same
        buffers (it holds them, so no new buffer can take their place in memory while it lives)
        holding the same parameters in the same order, so their views sit where they sat. It saves
        reading every view's place again each round (a Python loop over the tensors)."""
        if not kernels.available():
            return None
        key = tuple((buf.data_ptr(), buf.numel(), tuple(map(id, bucket.parameters())))
                    for bucket, buf in ((b, b.buffer()) for b in buckets))
        if previous is not None and previous._key == key:
            return previous
        S = len(index.layout.segments)
        views: list[Tensor | None] = [None] * S
        home = np.full(S, -1, np.int64)
        where = np.zeros(S, np.int64)
        buffers = []
        for b, bucket in enumerate(buckets):
            buf = bucket.buffer()
            if not (buf.dtype is torch.float32 and buf.is_cpu and buf.dim() == 1 and buf.is_contiguous()
                    and not buf.requires_grad):
                return None
            base, storage = buf.data_ptr(), buf.untyped_storage().data_ptr()
            for i, seg, g in index.numbered_pairs(bucket):
                if not (g.dtype is torch.float32 and g.is_contiguous() and g.numel() == seg.numel
                        and g.untyped_storage().data_ptr() == storage):
                    return None
                place, rest = divmod(g.data_ptr() - base, 4)
                if rest or place < 0 or place + seg.numel > buf.numel() or views[i] is not None:
                    return None
                views[i], home[i], where[i] = g, b, place - seg.offset
            buffers.append(buf)
        if any(v is None for v in views):
            return None
        segs = index.layout.segments
        offsets = np.array([s.offset for s in segs], np.int64)
        ends = np.array([s.end for s in segs], np.int64)
        return cls(key, buffers, views, home, where, offsets, ends)

    def zero(self) -> None:
        """Empty the buckets (their gradients must have been read: the sums land in them)."""
        for buf in self._buffers:
            buf.zero_()

    def add(self, first: int, stop: int, lo: int, payload) -> None:
        """Add the messages of tensors ``first`` to ``stop - 1`` (``payload``: indices from ``lo``,
        the part's first layout index) where their tensors sit in the buckets."""
        arrays = _sparse(payload)
        if arrays is None:  # another kind of message (a dense warm-up round's): sum, then copy
            flat = torch.zeros(int(self._ends[stop - 1] - lo), dtype=torch.float32)
            payload.sum(flat)
            for i in range(first, stop):
                a, b = self._offsets[i] - lo, self._ends[i] - lo
                self._views[i].view(-1).copy_(flat[a:b])
            return
        indices, values, counts = arrays
        part = self._parts.get((first, stop, lo))
        if part is None:
            home = self._home[first:stop]
            part = self._parts[(first, stop, lo)] = (
                self._offsets[first:stop] - lo, self._ends[first:stop] - lo, self._where[first:stop] + lo, home,
                [int(b) for b in np.unique(home)])
        starts, ends, shift, home, targets = part
        for b in targets:
            if kernel.add_into(self._arrays[b], indices, values, counts, starts, ends, shift, home, b):
                raise ValueError(f"a message of tensors {first}..{stop - 1} holds an index outside them: "
                                 "its bytes decoded to a place the model does not have")


def _sparse(payload):
    """``(indices, values, counts)`` as numpy arrays where ``payload`` is a sparse message batch
    the kernel reads (int64 indices, fp32 values, C-contiguous, on the CPU), else None."""
    if not isinstance(payload, (SparsePayload, VarSparsePayload)):
        return None
    indices, values = payload.indices, payload.values
    if not (indices.dim() == 2 and indices.shape == values.shape and indices.dtype is torch.int64
            and values.dtype is torch.float32 and indices.is_cpu and values.is_cpu and indices.is_contiguous()
            and values.is_contiguous() and not values.requires_grad):
        return None
    if isinstance(payload, VarSparsePayload):
        counts = np.ascontiguousarray(payload.counts.to(torch.int64).numpy())
        if counts.shape != (indices.shape[0],) or (counts > indices.shape[1]).any() or (counts < 0).any():
            return None
    else:
        counts = np.full(indices.shape[0], indices.shape[1], np.int64)
    return indices.numpy(), values.numpy(), counts


__all__ = ["BucketSums"]
