r"""Compiled sum of sparse messages straight into DDP's gradient buckets.

``add_into`` adds every entry of ``(N, K)`` messages (indices in a layout's order, values) to
its place in one bucket's flat buffer: the entry of tensor ``s`` at layout index ``x`` lands at
``x + shift[s]`` when ``home[s]`` is that bucket (DDP keeps tensors in its own order, a bucket
at a time). Messages are added one after the other, each entry in turn, as ``index_add_`` on the
flattened messages adds them: every place receives the same additions in the same order, so the
sum is bit for bit the engine's ``payload.sum`` followed by a copy into the buckets.

What it buys (:class:`sasg.ddp.bucket_sums.BucketSums`): the hook's round used to zero a flat
step of the whole model, sum the messages into it (``index_add_``) and copy it into the buckets:
three passes over the model besides the entries; now the buckets are zeroed and the entries
added where they land. ``benchmarks/bucket_sums.py`` (2-core AMD EPYC, AVX2, one thread, the two
taking turns): ResNet-18's layout with 2 / 4 messages 12.6 / 15.7 ms -> 6.1 / 9.9 ms, FC's
0.145 / 0.158 -> 0.064 / 0.075 ms.

A message's entries come tensor by tensor in layout order (per-tensor top-k; Golomb-Rice
messages are sorted), so the running tensor is the one to check first; any other is looked up.
An index outside the layout returns ``BAD_INDEX`` before anything past it is written.
"""

from __future__ import annotations

import numpy as np

from . import jit, on_warm

OK = 0
BAD_INDEX = 1  # an index outside the layout's [starts[0], ends[-1])


@jit
def add_into(out, indices, values, counts, starts, ends, shift, home, bucket):
    """``out[x + shift[s]] += values[n, j]`` for the first ``counts[n]`` entries ``x = indices[n, j]``
    of each message ``n`` in turn whose tensor ``s`` (``starts[s] <= x < ends[s]``; tensors back
    to back, ascending) has ``home[s] == bucket``. Returns an error code."""
    S = starts.shape[0]
    lo_all, hi_all = starts[0], ends[S - 1]
    for n in range(indices.shape[0]):
        # The running tensor's range, place and bucket in locals: read from the arrays on every
        # entry they made the loop 3-4x slower (every store to ``out`` may alias them for LLVM).
        a, b, sh, mine = np.int64(1), np.int64(0), np.int64(0), False
        for j in range(counts[n]):
            x = indices[n, j]
            if x < a or x >= b:
                if x < lo_all or x >= hi_all:
                    return BAD_INDEX
                s = np.searchsorted(starts, x, side="right") - 1  # not the running tensor: look it up
                a, b, sh, mine = starts[s], ends[s], shift[s], home[s] == bucket
            if mine:
                out[x + sh] += values[n, j]
    return OK


@on_warm
def _warm() -> None:
    out = np.zeros(8, np.float32)
    one = np.ones(2, np.int64)
    add_into(out, np.array([[1, 5]], np.int64), np.ones((1, 2), np.float32), one[:1] * 2,
             np.array([0, 4], np.int64), np.array([4, 8], np.int64), np.zeros(2, np.int64), one * 0, 0)


__all__ = ["BAD_INDEX", "OK", "add_into"]
