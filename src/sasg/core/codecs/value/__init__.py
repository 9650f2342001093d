r"""Value formats: the values of a message as bytes, and back.

A message's ``n`` values (the ``K`` kept values of a sparse message, or the ``d`` values of a
dense one) belong to tensors (layout segments): a sparse message's value ``j`` to the tensor of
its index, a dense message's values to the segments in order. "Per tensor" below means per
segment, within one message. Every format has a fixed size given ``n`` and the number of
tensors ``S``, so the value part of a message is self-delimiting. Multi-byte numbers are
little-endian, bit streams big-endian within a byte (:mod:`..bitstream`).

Formats, their bytes described in their files: ``fp32``, ``fp16``, ``bf16`` (:mod:`.casts`),
``int8`` (:mod:`.int8`), ``sign`` (:mod:`.sign`), ``ternary`` (:mod:`.ternary`); the base class,
:class:`Groups` and the checks they share in :mod:`.common`.

Values are cast to float32 before ``int8``/``sign``/``ternary`` arithmetic, and decoded values
come back in the requested dtype. Decoding is a pure function of the bytes: the same values on every call.
"""

from .casts import Bf16, Fp16, Fp32
from .common import Groups, ValueFormat
from .int8 import Int8
from .sign import Sign
from .ternary import Ternary

VALUE_FORMATS = {
    "fp32": (Fp32, "values as float32 (lossless for float32 models)"),
    "fp16": (Fp16, "values as IEEE float16, round to nearest even (lossy; error feedback keeps the rest)"),
    "bf16": (Bf16, "values as bfloat16, round to nearest even (lossy; error feedback keeps the rest)"),
    "int8": (Int8, "values as int8 with one float32 scale max|v|/127 per tensor (lossy)"),
    "sign": (Sign, "one sign bit per value and one float32 mean magnitude per tensor (lossy)"),
    "ternary": (Ternary, "two bits per value (-1, 0, +1) and one float32 scale max|v| per tensor (lossy; "
                         "exact for terngrad)"),
}

__all__ = ["Bf16", "Fp16", "Fp32", "Groups", "Int8", "Sign", "Ternary", "VALUE_FORMATS", "ValueFormat"]
