r"""``ef``: error feedback. The worker keeps what it did not send and adds it to its next upload.

.. math:: v = e_m + s\,g, \qquad q_m = C(v), \qquad e_m \leftarrow v - \mathrm{decoded}(q_m)

so that :math:`\mathrm{decoded}(q_m) + e_m = v`: nothing is lost, only delayed, also what a lossy
codec rounds away. For a compressor that keeps values as they are (top-k) and a lossless codec,
:math:`v - q_m` is ``v`` with the sent entries exactly 0; with a lossy value format the sent
entries keep their rounding error ``v_i - decoded_i`` (exact when that difference is
representable, as it is for bf16/fp16 roundings of float32 values; int8/sign leave the float32
rounding of the subtraction).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..payloads.encoded import Encoded, transmit


class ErrorFeedback:
    name = "ef"
    corrects = True  # sends later what the compressor and the codec dropped
    worker_buffers = ("error",)

    def upload(self, workers, rows: Sequence[int], grads: Sequence[Tensor], scale: float, compressor, generators,
               codec) -> Encoded:
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
        sent = transmit(compressor.compress(error, rows, generators=generators), codec)
        sent.payload.subtract_from_(error, rows)
        return sent

    def describe(self) -> dict:
        return {"memory": self.name}
