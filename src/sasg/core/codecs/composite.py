r"""``INDEX+VALUE`` codecs: an index code and a value format, as real bytes on the wire.

``make_codec("rice+bf16", layout)`` builds a :class:`SparseCodec` (the :class:`.protocol.Codec`
protocol) from an index code (:mod:`.index`: ``idx32``, ``rice``, ``bitmap``, ``auto``) and a
value format (:mod:`.value`: ``fp32``, ``fp16``, ``bf16``, ``int8``, ``sign``). A value-only name
(``"bf16"``) means ``idx32`` indices for sparse messages; dense messages always use the value
format alone.

Bytes of one sparse message: ``[index part][value part]``. The index part is self-delimiting
(see :mod:`.index`); the value part has a size fixed by ``K`` and the layout (see
:mod:`.value`); the decoder checks that both together fill the message exactly. A dense message
is its value part for ``n = d``. Messages of a batch lie back to back, their sizes alongside.
``idx32+fp32`` on float32 values writes exactly ``paper32``'s bytes.

* ``lossless``: only ``fp32`` values (bit for bit on float32 models; a float64 model's values are
  rounded to float32).
* ``fixed_size``: every message of one payload shape has one size: true when the index code is
  ``idx32`` or ``bitmap`` (every value format has a fixed size given ``K``; dense messages always
  have a fixed size).

Every decode checks sizes and lengths and raises :class:`~.protocol.CodecError` naming the codec
and the message ("rice+sign: message 2 is truncated: 812 bytes, needs at least 900").
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..layout import Layout
from .fused import FusedMessages
from .implied import ImpliedIndices
from .index import INDEX_CODES, IndexCode
from .protocol import CodecError, check_messages
from .value import VALUE_FORMATS, Groups, ValueFormat


def _build(kind: str, name: str, layout: Layout, settings):
    """An index code or value format by its registered name (plug-ins included)."""
    from ..registry import REGISTRIES

    reg = REGISTRIES[kind]
    if name not in reg:
        what = "index code" if kind == "index" else "value format"
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(reg.names())}")
    return reg.get(name).factory(layout, settings)


class SparseCodec:
    """An index code and a value format, for one layout (see the module docstring)."""

    def __init__(self, layout: Layout, index_name: str = "idx32", value_name: str = "fp32", *,
                 name: str | None = None, settings=None):
        self.layout = layout
        self.S = len(layout.segments)
        self.index: IndexCode = _build("index", index_name.strip().lower(), layout, settings)
        self.value: ValueFormat = _build("value", value_name.strip().lower(), layout, settings)
        self.name = name or f"{self.index.name}+{self.value.name}"
        self.dense_name = self.value.name  # a dense message carries the value format alone
        self.lossless = bool(self.value.lossless)
        self.fixed_size = bool(self.index.fixed_size and self.value.fixed_size)
        self.dense_fixed_size = bool(self.value.fixed_size)
        # Tensors a tensor policy sends whole: their indices are implied, not written.
        self.implied = ImpliedIndices.for_settings(layout, settings)
        self._fused = FusedMessages.for_codec(self)  # one compiled call a batch, where the parts allow

    def __repr__(self) -> str:
        return f"SparseCodec({self.name!r}, {self.layout!r})"

    # ------------------------------------------------------------------ sparse
    def encode_sparse(self, indices: Tensor, values: Tensor) -> tuple[Tensor, list[int]]:
        fast = self._fused.encode(indices, values) if self._fused is not None else None
        if fast is not None:
            return fast[0], fast[1]
        data, sizes, _, _ = self._encode_sparse(indices, values)
        return data, sizes

    def encode_sparse_sent(self, indices: Tensor, values: Tensor, dtype: torch.dtype
                           ) -> tuple[Tensor, list[int], Tensor]:
        """:meth:`encode_sparse` plus the values every receiver decodes from those bytes (what
        error feedback must subtract). Every index code is lossless, so the sender decodes only
        the value part it has just written, with the receivers' own decoder: the same numbers bit
        for bit, without the index decode (for ``rice``, most of a decode's time)."""
        fast = self._fused.encode(indices, values) if self._fused is not None and dtype is torch.float32 else None
        if fast is not None:
            return fast
        data, sizes, val, groups = self._encode_sparse(indices, values)
        if not sizes:
            return data, sizes, torch.zeros(values.shape, dtype=dtype, device=values.device)
        return data, sizes, self.value.decode(val, groups, dtype, self.name).to(values.device)

    def _encode_sparse(self, indices: Tensor, values: Tensor):
        """(bytes, sizes, value parts (N, V), groups) of the messages."""
        if indices.dim() != 2 or indices.shape != values.shape:
            raise ValueError(f"{self.name}: expected (N, K) indices and values, got {tuple(indices.shape)} "
                             f"and {tuple(values.shape)}")
        N, K = indices.shape
        if N == 0:
            return torch.zeros(0, dtype=torch.uint8, device=values.device), [], None, None
        indices = indices.to(torch.long)
        if self.implied is not None:
            indices = self.implied.split(indices, self.name)
        idx_part, counts = self.index.encode(indices)
        groups = None
        if self.value.needs_groups:
            counts = counts if counts is not None else self.index.counts_of(indices)
            if self.implied is not None:
                counts = counts + self.implied.counts(counts.device)
            groups = Groups.sparse(counts, K)
        val = self.value.encode(values, groups)  # (N, V)
        if isinstance(idx_part, tuple):  # the index parts back to back, and their sizes
            flat, part_sizes = idx_part
            if N == 1:
                return torch.cat([flat.to(val.device), val[0]]), [part_sizes[0] + val.shape[1]], val, groups
            idx_part = [[p] for p in flat.to(val.device).split(part_sizes)]
        if isinstance(idx_part, Tensor):  # fixed-size index part: (N, B)
            rows = torch.cat([idx_part, val.to(idx_part.device)], dim=1)
            return rows.reshape(-1), [rows.shape[1]] * N, val, groups
        V = val.shape[1]
        pieces: list[Tensor] = []
        sizes: list[int] = []
        for n in range(N):
            pieces += idx_part[n]
            pieces.append(val[n])
            sizes.append(sum(p.numel() for p in idx_part[n]) + V)
        return torch.cat(pieces), sizes, val, groups

    # decode_sparse takes ``own``: a message the caller has decoded already (its own), which the
    # compiled path copies instead of parsing (SparsePayload.decode asks for this attribute).
    decodes_own = True

    def decode_sparse(self, data: Tensor, sizes: Sequence[int], nnz: int, dtype: torch.dtype, own=None
                      ) -> tuple[Tensor, Tensor]:
        """The messages' ``(N, nnz)`` indices and values. ``own``: ``(n, sent, indices,
        values)``, message ``n`` the caller's own: the bytes ``sent`` it encoded and what they
        decode to (``(1, nnz)`` each, from :func:`~sasg.core.payloads.transmit`). The compiled
        path takes them as they are where it wrote those bytes itself (:mod:`.fused`); otherwise,
        and on the reference path, every message is parsed."""
        fast = self._fused.decode(data, sizes, int(nnz), dtype, own) if self._fused is not None else None
        if fast is not None:
            return fast
        sizes = self._check_batch(data, sizes)
        nnz = int(nnz)
        if nnz < 0:
            raise ValueError(f"{self.name}: nnz must be >= 0, got {nnz}")
        N = len(sizes)
        if N == 0:
            return (torch.zeros(0, nnz, dtype=torch.long, device=data.device),
                    torch.zeros(0, nnz, dtype=dtype, device=data.device))
        V = self.value.nbytes(nnz)
        starts = [0] * N
        for n in range(1, N):
            starts[n] = starts[n - 1] + sizes[n - 1]
        implied = self.implied.count if self.implied is not None else 0
        if nnz < implied:
            raise ValueError(f"{self.name}: nnz {nnz} is below the {implied} entries of the tensors sent whole")
        indices, counts, used = self.index.decode(data, starts, sizes, V, nnz - implied, self.name)
        if self.implied is not None:
            indices = self.implied.merge(indices)
            counts = counts + self.implied.counts(counts.device)
        used = [int(u) for u in used.tolist()]
        for n, (u, s) in enumerate(zip(used, sizes)):
            if u + V != s:
                raise CodecError(f"{self.name}: message {n} has {s} bytes, its parts fill {u + V} "
                                 f"({u} index + {V} value bytes): {s - u - V} trailing bytes")
        if all(u == used[0] for u in used) and all(s == sizes[0] for s in sizes):
            rows = data.reshape(N, sizes[0])[:, used[0]:]
        else:
            rows = torch.stack([data[a + u : a + s] for a, u, s in zip(starts, used, sizes)])
        groups = Groups.sparse(counts, nnz) if self.value.needs_groups else None
        return indices, self.value.decode(rows, groups, dtype, self.name)

    def sparse_nnz(self, data: Tensor, sizes: Sequence[int], dtype: torch.dtype) -> list[int]:
        """How many entries each sparse message holds, read from its bytes (for messages of
        varying length; the index code knows: see :meth:`.index.IndexCode.nnz_of`)."""
        sizes = self._check_batch(data, sizes)
        starts = [0] * len(sizes)
        for n in range(1, len(sizes)):
            starts[n] = starts[n - 1] + sizes[n - 1]
        implied = self.implied.count if self.implied is not None else 0
        written = self.index.nnz_of(data, starts, sizes, lambda n: self.value.nbytes(n + implied), self.name)
        return [int(n) + implied for n in written]

    # ------------------------------------------------------------------ dense
    def encode_dense(self, values: Tensor) -> tuple[Tensor, list[int]]:
        if values.dim() != 2 or values.shape[1] != self.layout.numel:
            raise ValueError(f"{self.name}: expected (N, {self.layout.numel}) values, got {tuple(values.shape)}")
        N = values.shape[0]
        if N == 0:
            return torch.zeros(0, dtype=torch.uint8, device=values.device), []
        groups = Groups.dense(self.layout, N, values.device) if self.value.needs_groups else None
        rows = self.value.encode(values, groups)
        return rows.reshape(-1), [rows.shape[1]] * N

    def decode_dense(self, data: Tensor, sizes: Sequence[int], dtype: torch.dtype) -> Tensor:
        sizes = self._check_batch(data, sizes)
        N, d = len(sizes), self.layout.numel
        if N == 0:
            return torch.zeros(0, d, dtype=dtype, device=data.device)
        V = self.value.nbytes(d)
        for n, s in enumerate(sizes):
            if s != V:
                raise CodecError(f"{self.name}: message {n} has {s} bytes, a dense message has {V}"
                                 + (": truncated" if s < V else ""))
        rows = data.reshape(N, V)
        groups = Groups.dense(self.layout, N, data.device) if self.value.needs_groups else None
        return self.value.decode(rows, groups, dtype, self.name)

    # ------------------------------------------------------------------
    def _check_batch(self, data: Tensor, sizes: Sequence[int]) -> list[int]:
        return check_messages(self.name, data, sizes)

    def describe(self) -> dict:
        return {"codec": self.name, "codec_index": self.index.name, "codec_value": self.value.name}


def parse_codec_name(name: str) -> tuple[str, str]:
    """``"INDEX+VALUE"`` or ``"VALUE"`` -> (index code, value format); a value-only name means
    ``idx32`` indices."""
    key = str(name).strip().lower()
    parts = [p.strip() for p in key.split("+")]
    if len(parts) == 1 and parts[0]:
        return "idx32", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ValueError(f"codec name {name!r}: write INDEX+VALUE (e.g. rice+bf16) or VALUE (e.g. fp32)")


def make_codec(name: str, layout: Layout, settings=None) -> SparseCodec:
    """The codec ``name`` (``INDEX+VALUE`` or ``VALUE``) for ``layout``; its ``name`` is the one
    given, normalized (``"sign"`` stays ``"sign"``: idx32+sign sparse, sign dense)."""
    index_name, value_name = parse_codec_name(name)
    return SparseCodec(layout, index_name, value_name, name=str(name).strip().lower(), settings=settings)


def register_parts() -> None:
    """Register the index codes (kind ``index``) and value formats (kind ``value``) with
    :func:`sasg.core.registry.register` (done by :mod:`sasg.core.members`); a name another member
    already took raises ValueError."""
    from ..registry import register

    for name, (cls, description) in INDEX_CODES.items():
        register("index", name, description, cls)
    for name, (cls, description) in VALUE_FORMATS.items():
        register("value", name, description, cls)


__all__ = ["SparseCodec", "make_codec", "parse_codec_name", "register_parts"]
