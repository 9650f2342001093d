r"""``ef``: error feedback. The worker keeps what it did not send and adds it to its next upload.

.. math:: v = e_m + s\,g, \qquad q_m = C(v), \qquad e_m \leftarrow v - q_m

so that :math:`q_m + e_m = v`: nothing is lost, only delayed. For a compressor that sends the
values it keeps as they are (top-k), :math:`v - q_m` is ``v`` with the sent entries exactly 0.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor


class ErrorFeedback:
    name = "ef"
    worker_buffers = ("error",)

    def upload(self, workers, rows: Sequence[int], grads: Sequence[Tensor], scale: float, compressor, generators):
        error = workers.buffer("error")
        segments = compressor.layout.segments
        # v = e + s * g formed in the memory itself: no (N, d) temporaries. The compressor reads
        # the uploaders' rows where they lie and its payload holds copies, so e -= q is in place.
        if len(rows) == error.shape[0]:
            for seg, g in zip(segments, grads):
                error[:, seg.offset : seg.end].add_(g, alpha=scale)
        else:
            for r in rows:  # row by row: no gathered copies of g or e
                for seg, g in zip(segments, grads):
                    error[r, seg.offset : seg.end].add_(g[r], alpha=scale)
        q = compressor.compress(error, rows, generators=generators)
        q.subtract_from_(error, rows)
        return q

    def describe(self) -> dict:
        return {"memory": self.name}
