r"""``sign`` — one bit per value (1 = negative, ``v < 0``; so ``sign(+0) = sign(-0) = sign(NaN) =
+``) and per tensor one float32 magnitude ``m_s`` = mean ``|v_j|`` over that tensor's values in
the message (0 for an empty tensor; a tensor whose values all have one magnitude sends exactly
it, see :meth:`.common.Groups.mean`); decoded value ``-m_s`` or ``+m_s``. Bytes: ``S`` x float32
magnitudes, then ``ceil(n / 8)`` bytes of sign bits, zero-padded. A tensor holding ±inf or NaN
has a non-finite magnitude, which every value of it decodes to (with its sign).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ....kernels import values as kernel
from ..bitstream import as_bytes, from_bytes, pack_bits, unpack_bits
from ..protocol import CodecError
from .common import Groups, ValueFormat, _check_scales, _first_row, kernel_decode, kernel_encode


class Sign(ValueFormat):
    """``sign``: one bit per value (1 = negative) and the mean magnitude of every tensor."""

    name = "sign"
    needs_groups = True

    def nbytes(self, n: int) -> int:
        return 4 * self.S + (n + 7) // 8

    def encode(self, values: Tensor, groups: Groups) -> Tensor:
        v = values.to(torch.float32)
        rows = kernel_encode(kernel.sign_encode, v, groups, self.nbytes(v.shape[1]), zeroed=True)
        if rows is not None:
            return rows
        mag = groups.mean(v.abs())
        bits = pack_bits(v < 0).to(v.device)
        return torch.cat([as_bytes(mag), bits], dim=1)

    def decode(self, rows: Tensor, groups: Groups, dtype: torch.dtype, who: str) -> Tensor:
        out = kernel_decode(kernel.sign_decode, rows, groups, np.uint32)
        if out is not None:
            return torch.from_numpy(out.view(np.float32)).to(dtype)
        S, n = self.S, groups.n
        mag = from_bytes(rows[:, : 4 * S], torch.float32)
        packed = rows[:, 4 * S :]
        if n % 8:
            i = _first_row((packed[:, -1] & ((1 << (8 - n % 8)) - 1)) != 0)
            if i is not None:
                raise CodecError(f"{who}: message {i} has a padding bit set after its sign bits: corrupted")
        _check_scales(mag, groups, who, "sign magnitude")
        neg = unpack_bits(packed, n).to(rows.device)
        m = groups.expand(mag)
        return torch.where(neg, -m, m).to(dtype)
