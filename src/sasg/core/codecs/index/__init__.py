r"""Index codes: the kept positions of a sparse message as bytes, and back.

A sparse message keeps ``K`` entries of a flat buffer of ``d`` entries laid out in tensors
(:class:`~sasg.core.layout.Layout` segments ``s`` of ``d_s`` entries from ``offset_s``); its
indices ascend (within each tensor, tensors in layout order: so the whole row ascends) and never
repeat. Every code here writes the index part of one message so that it is **self-delimiting**:
given the layout and ``K`` the decoder learns where the part ends (the value part follows it).
All messages of a batch are coded together with tensor ops (no Python loop over entries).

Notation: ``c_s`` kept entries in tensor ``s`` (``sum_s c_s = K``); their positions inside the
tensor ``l_1 < l_2 < ... < l_{c_s}``; the **gaps** ``g_1 = l_1``, ``g_j = l_j - l_{j-1} - 1``
(so ``g >= 0`` and ``sum_j g_j = l_{c_s} + 1 - c_s``). ``W`` is the width of a count or an index:
4 bytes (int32) when ``d < 2**31``, else 8 (int64); every multi-byte number is little-endian and
bit streams are big-endian within a byte (:mod:`..bitstream`).

One code a file, its bytes described there: ``idx32`` (:mod:`.idx32`), ``rice`` (:mod:`.rice`),
``bitmap`` (:mod:`.bitmap`), ``auto`` (:mod:`.auto`); the base class and the helpers they share
in :mod:`.common`.

Decoders check everything a corrupted message can get wrong without a checksum: lengths
(truncated or trailing bytes), counts (in range, summing to ``K``), parameters and tags in range,
padding bits, the number of unary codes, and that decoded indices stay inside their tensor and
ascend. A corruption that yields another valid message (e.g. a flipped remainder bit moving one
index) cannot be detected without a checksum and decodes to that message.
"""

from .auto import Auto
from .bitmap import Bitmap
from .common import IndexCode, LayoutTables, message_rows
from .idx32 import Idx32
from .rice import Rice

INDEX_CODES = {
    "idx32": (Idx32, "every index as int32 (int64 when d >= 2**31): 32 bits per kept entry, the paper's bytes"),
    "rice": (Rice, "Golomb-Rice coded gaps between kept indices, one Rice parameter per tensor "
                   "(~log2(1/density) + 2 bits per kept entry)"),
    "bitmap": (Bitmap, "one bit per entry of the model (d bits), cheaper than idx32 above ~3 % density"),
    "auto": (Auto, "per tensor the smallest of idx32, rice and bitmap, with a tag per tensor"),
}

__all__ = ["Auto", "Bitmap", "INDEX_CODES", "Idx32", "IndexCode", "LayoutTables", "Rice", "message_rows"]
