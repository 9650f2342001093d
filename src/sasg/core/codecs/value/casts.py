r"""``fp32``, ``fp16``, ``bf16`` — every value cast to float32 / float16 / bfloat16 (torch's cast:
round to nearest, ties to even; ``fp16`` overflows to ±inf past 65504), ``n`` x 4 / 2 / 2
bytes. Lossless only ``fp32`` on float32 values; ±0, subnormals (flushed only where the narrow
type has none), ±inf and NaN payloads pass through the cast as torch casts them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..bitstream import as_bytes, from_bytes, itemsize
from .common import Groups, ValueFormat


class _Cast(ValueFormat):
    # No compiled path of its own: one batched torch cast each way, 0.003-0.007 ms for a 4,071-value
    # message, is already at memory speed. (With rice/auto indices, bf16 and fp16 go through the
    # whole-message kernel, sasg.core.codecs.fused: what that saves is the calls around the cast.)
    wire: torch.dtype = torch.float32

    def nbytes(self, n: int) -> int:
        return n * itemsize(self.wire)

    def encode(self, values: Tensor, groups: Groups | None) -> Tensor:
        return as_bytes(values.to(self.wire))

    def decode(self, rows: Tensor, groups: Groups | None, dtype: torch.dtype, who: str) -> Tensor:
        return from_bytes(rows, self.wire).to(dtype)


class Fp32(_Cast):
    """``fp32``: every value as float32 (lossless for float32 values)."""

    name = "fp32"
    lossless = True
    wire = torch.float32


class Fp16(_Cast):
    """``fp16``: every value as IEEE half (round to nearest even; ±inf past 65504)."""

    name = "fp16"
    wire = torch.float16


class Bf16(_Cast):
    """``bf16``: every value as bfloat16 (float32's range, 8 significant bits)."""

    name = "bf16"
    wire = torch.bfloat16
