r"""``int8`` — per tensor one float32 scale ``a_s = max_j |v_j| / 127`` then every value as
``round(v / a_s)`` (ties to even) clamped to ``[-127, 127]``; decoded value ``q a_s`` (values
rounding to 0, -0 included, decode to +0). Bytes:
``S`` x float32 scales, then ``n`` x int8. ``a_s = 0`` (all zeros, or an empty tensor) sends
``q = 0``. A tensor holding ±inf or NaN gets a non-finite scale and decodes to NaN throughout
(a diverged run stays visibly diverged). -128 is never written (a decoder rejects it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ....kernels import values as kernel
from ..bitstream import as_bytes, from_bytes
from ..protocol import CodecError
from .common import Groups, ValueFormat, _check_scales, _first_row, kernel_decode, kernel_encode


class Int8(ValueFormat):
    """``int8``: per tensor a float32 scale max|v|/127, values round(v/scale) in [-127, 127]."""

    name = "int8"
    needs_groups = True

    def nbytes(self, n: int) -> int:
        return 4 * self.S + n

    def encode(self, values: Tensor, groups: Groups) -> Tensor:
        v = values.to(torch.float32)
        rows = kernel_encode(kernel.int8_encode, v, groups, self.nbytes(v.shape[1]), zeroed=False)
        if rows is not None:
            return rows
        scale = groups.amax(v.abs()) / 127
        # x/0 (a zero scale) and inf/inf, NaN/x (non-finite tensors) all write 0.
        q = torch.nan_to_num(v / groups.expand(scale), nan=0.0, posinf=0.0, neginf=0.0)
        q = torch.round(q).clamp_(-127, 127).to(torch.int8)
        return torch.cat([as_bytes(scale), q.view(torch.uint8)], dim=1)

    def decode(self, rows: Tensor, groups: Groups, dtype: torch.dtype, who: str) -> Tensor:
        out = kernel_decode(kernel.int8_decode, rows, groups, np.float32)
        if out is not None:
            return torch.from_numpy(out).to(dtype)
        S = self.S
        scale = from_bytes(rows[:, : 4 * S], torch.float32)
        q = rows[:, 4 * S :].contiguous().view(torch.int8)
        i = _first_row(q == -128)
        if i is not None:
            raise CodecError(f"{who}: message {i} has the int8 value -128, which int8 codes never write: corrupted")
        _check_scales(scale, groups, who, "int8 scale")
        return (q.to(torch.float32) * groups.expand(scale)).to(dtype)
