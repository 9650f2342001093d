r"""``ternary`` — per tensor one float32 scale ``s = max_j |v_j|`` (as in TernGrad) then every value
as a ternary digit ``t = round(v / s)`` in ``{-1, 0, +1}`` (ties to even: ``|v| = s/2`` gives 0);
decoded value ``t s`` (``0 s = +0``; ``-0`` sends 0). Exact for a message of ``0`` and ``±s``
(``terngrad``'s); lossy for other values (error feedback keeps the rest). Bytes: ``S`` x float32
scales, then ``ceil(2 n / 8)`` bytes of 2-bit codes, four values a byte, first value in the top
bits, zero-padded; a code is (negative, nonzero): ``00`` = 0, ``01`` = +1, ``11`` = -1; ``10`` is
never written (a decoder rejects it). ``s = 0`` (all zeros, or an empty tensor) sends ``t = 0``;
a tensor holding ±inf or NaN gets a non-finite scale and decodes to NaN throughout (every digit
writes 0, and ``0 s`` is NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bitstream import as_bytes, from_bytes, pack_bits, unpack_bits
from ..protocol import CodecError
from .common import Groups, ValueFormat, _check_scales, _first_row


class Ternary(ValueFormat):
    """``ternary``: per tensor a float32 scale max|v|, values round(v/scale) in {-1, 0, 1}, 2 bits each."""

    name = "ternary"
    needs_groups = True

    def nbytes(self, n: int) -> int:
        return 4 * self.S + (2 * n + 7) // 8

    def encode(self, values: Tensor, groups: Groups) -> Tensor:
        v = values.to(torch.float32)
        scale = groups.amax(v.abs())
        t = torch.nan_to_num(v / groups.expand(scale), nan=0.0, posinf=0.0, neginf=0.0).round_()
        bits = torch.stack([t < 0, t != 0], dim=2).reshape(v.shape[0], -1)  # (negative, nonzero) per value
        return torch.cat([as_bytes(scale), pack_bits(bits).to(v.device)], dim=1)

    def decode(self, rows: Tensor, groups: Groups, dtype: torch.dtype, who: str) -> Tensor:
        S, n = self.S, groups.n
        scale = from_bytes(rows[:, : 4 * S], torch.float32)
        packed = rows[:, 4 * S :]
        if (2 * n) % 8:
            i = _first_row((packed[:, -1] & ((1 << (8 - (2 * n) % 8)) - 1)) != 0)
            if i is not None:
                raise CodecError(f"{who}: message {i} has a padding bit set after its ternary codes: corrupted")
        _check_scales(scale, groups, who, "ternary scale")
        code = unpack_bits(packed, 2 * n).to(rows.device).view(rows.shape[0], n, 2)
        neg, nonzero = code[..., 0], code[..., 1]
        i = _first_row(neg & ~nonzero)
        if i is not None:
            raise CodecError(f"{who}: message {i} has the ternary code 10, which is never written: corrupted")
        t = nonzero.to(torch.float32) - 2 * neg.to(torch.float32)  # 0, +1 or -1
        return (t * groups.expand(scale)).to(dtype)
