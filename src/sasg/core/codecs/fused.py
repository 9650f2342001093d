r"""A :class:`~.composite.SparseCodec`'s compiled whole-message path (``rice`` or ``auto`` indices,
``fp32``, ``sign``, ``bf16``, ``fp16`` or ``int8`` values, with or without a tensor policy's implied
indices).

What it buys: the codec's own path makes five compiled calls a batch (split the implied indices,
the index part, the value part; on receipt the index part and the merge) and some forty small
torch and numpy calls around them, which on FC 784-512-10 (one message of 4,587 entries) cost
more than the coding itself; :mod:`sasg.kernels.messages` writes or reads every byte of a batch
in one call, and this member only makes the arrays: encode 0.05 -> 0.02 ms, decode of two
messages 0.09 -> 0.03 ms (``benchmarks/round_floor.py``); then, with the sender's own message
taken as its encode gave it instead of parsed (see :meth:`FusedMessages.decode`), 0.017 ms.

Same bytes and values as the codec's own path, which stays the reference: it runs whenever this
one does not apply (another device or dtype, kernels off, no messages) or its kernel turns the
input down (bad indices, corrupted bytes), and then raises the error that names the problem.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ... import kernels
from ...kernels import messages as kernel
from .index import Auto, Rice
from .value import Bf16, Fp16, Fp32, Int8, Sign

_VALUE_KINDS = {Fp32: kernel.FP32, Sign: kernel.SIGN, Bf16: kernel.BF16, Fp16: kernel.FP16, Int8: kernel.INT8}
_TAGS = {Rice: 0, Auto: 1}


class FusedMessages:
    """The compiled path of one codec (see the module docstring); :meth:`for_codec` says whether
    it has one."""

    def __init__(self, tables: np.ndarray, W: int, tags_on: int, kind: int):
        self.tables, self.W, self.tags_on, self.kind = tables, W, tags_on, kind

    @classmethod
    def for_codec(cls, codec) -> "FusedMessages | None":
        """The path for ``codec`` (a SparseCodec), or None when its parts have none (exact types:
        a plug-in subclass keeps its own code)."""
        tags_on, kind = _TAGS.get(type(codec.index)), _VALUE_KINDS.get(type(codec.value))
        if tags_on is None or kind is None:
            return None
        t = codec.index.tables
        offsets, numels, bmax = t.arrays()
        whole = codec.implied.whole if codec.implied is not None else [False] * t.S
        tables = np.stack([offsets, numels, bmax, np.asarray(whole, np.int64)]).astype(np.int64)
        return cls(np.ascontiguousarray(tables), t.W, tags_on, kind)

    def encode(self, indices: Tensor, values: Tensor) -> tuple[Tensor, list[int], Tensor] | None:
        """(the messages' bytes, their sizes, the values every receiver decodes), or None where
        the codec's own path must run."""
        # (The cheapest spellings of these checks, on the numpy arrays where those are cheaper
        # than torch's: on FC the checks were a tenth of the call.)
        if not (indices.dtype is torch.long and values.dtype is torch.float32 and indices.is_cpu and values.is_cpu
                and kernels.available()):
            return None
        idx = indices.numpy()
        v = (values.detach() if values.requires_grad else values).numpy()
        if not (idx.ndim == 2 and idx.shape == v.shape and idx.shape[0] and idx.flags.c_contiguous
                and v.flags.c_contiguous):
            return None
        dec = v if self.kind == kernel.FP32 else np.empty(v.shape, np.float32)  # (fp32: unused)
        data, sizes, err = kernel.encode_messages(idx, v, self.tables, self.W, self.tags_on, self.kind, dec)
        if err:
            return None
        decoded = values if self.kind == kernel.FP32 else torch.from_numpy(dec)
        out = torch.from_numpy(data)
        # What these bytes decode to (see decode's own), with their numpy arrays: the decode of
        # this rank's own message then wraps nothing again (two .numpy() calls, 2 of FC's 27 us).
        setattr(out, _PAIRED, (indices, decoded, idx, dec))
        return out, sizes.tolist(), decoded

    def decode(self, data: Tensor, sizes, nnz: int, dtype: torch.dtype, own=None) -> tuple[Tensor, Tensor] | None:
        """``(N, nnz)`` indices and values of the messages, or None where the codec's own path
        must run (it also raises every error). ``own``: ``(n, sent, indices, values)``: message
        ``n`` is the caller's own, whose bytes ``sent`` it encoded into the indices and (decoded)
        values it holds (``(1, nnz)`` each); they are taken as they are where ``sent`` came out of
        :meth:`encode` in one call with these very tensors (so they are what the bytes decode
        to). Bytes from any other path (a wrapper, a plug-in, a copy) or paired with other tensors
        are parsed like every sender's, so bytes that do not decode stop the sender too."""
        if not (dtype is torch.float32 and isinstance(data, Tensor) and data.dtype is torch.uint8 and data.is_cpu
                and data.dim() == 1 and data.is_contiguous() and len(sizes) > 0 and nnz >= 0
                and kernels.available()):
            return None
        row, own_idx, own_val = -1, _NO_INDICES, _NO_VALUES
        if own is not None:
            n, sent, idx, val = own
            pair = getattr(sent, _PAIRED, None)
            if (pair is not None and pair[0] is idx and pair[1] is val and idx.dtype is torch.long and val.dtype is torch.float32 and not val.requires_grad and idx.is_cpu
                    and val.is_cpu and idx.is_contiguous() and val.is_contiguous()):
                row, own_idx, own_val = n, pair[2], pair[3]  # (their memory; shapes: the kernel checks them)
        sizes = np.asarray(sizes, dtype=np.int64)
        N = len(sizes)
        indices = np.empty((N, nnz), np.int64)
        values = np.empty((N, nnz), np.float32)
        if kernel.decode_messages(data.numpy(), sizes, self.tables, self.W, self.tags_on, self.kind, values,
                                  indices, row, own_idx, own_val):
            return None
        return torch.from_numpy(indices), torch.from_numpy(values)


_PAIRED = "_sasg_fused_pair"  # the mark encode leaves on the bytes it returns with their decoded form
_NO_INDICES = np.zeros((0, 0), np.int64)  # (no own message: the kernel reads neither)
_NO_VALUES = np.zeros((0, 0), np.float32)


__all__ = ["FusedMessages"]
