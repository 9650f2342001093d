r"""Low-rank messages: per matrix-shaped tensor a basis :math:`\hat P` and coefficients :math:`Q`
whose product :math:`\hat P Q^\top` is the message; vector-shaped tensors travel as they are.

A :class:`LowRankGeometry` says, for every segment ``s`` of a model's layout, whether it is sent
as a rank-``r_s`` product (``r_s >= 1``: the segment read as an ``(n_s, m_s)`` matrix, row-major,
so a conv kernel ``(out, in, kh, kw)`` is ``(out, in*kh*kw)``) or as it is (``r_s = 0``). A
message ``i`` of a :class:`LowRankPayload` holds

* ``bases[i]``: per product segment, :math:`\hat P_s` (``n_s x r_s``, row-major), back to back;
* ``coefficients[i]``: per segment in layout order, :math:`Q_s` (``m_s x r_s``, row-major) or
  the segment's values.

and decodes to :math:`\hat P_s Q_s^\top` on product segments, the values elsewhere. Only the
coefficients are this payload's bytes (``values``): the basis of a round is known to every
receiver before its coefficients travel (PowerSGD computes it from the round's first exchange,
:mod:`sasg.core.compressors.powersgd`). Hence :meth:`LowRankPayload.decode` gives every decoded
message the basis of the payload it is called on (a round's template, whose one basis all of
that round's messages share). The server's store of last messages keeps each worker's own basis:
a worker that skips keeps being applied with the basis of its last upload.

The coefficients are encoded densely with the run's codec rebuilt for the coefficients' own
layout (``Q_s`` as an ``(m_s, r_s)`` tensor, vectors as they are), so a per-tensor value format
(``int8``, ``sign``) keeps one scale per factor; the price is ``8 x`` the bytes it writes.

Every product is computed message by message with the same 2-D matrix products, so a message
decodes to the same bits whether it is one of many (the simulator) or alone (a rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..layout import Layout, Segment
from ..spec import build_codec
from .helpers import all_rows, check_state


@dataclass(frozen=True)
class Block:
    """Where one segment's part lies: in the flat ``d``-vector (``segment``), in a message's
    bases row (``basis``, product segments only) and in its coefficients row (``coef``)."""

    segment: Segment
    rows: int  # n_s (the segment's first dimension); 0 for a segment sent as it is
    cols: int  # m_s (the product of the others)
    rank: int  # r_s; 0: sent as it is
    basis: int
    coef: int

    @property
    def basis_end(self) -> int:
        return self.basis + self.rows * self.rank

    @property
    def coef_end(self) -> int:
        return self.coef + (self.cols * self.rank if self.rank else self.segment.numel)


class LowRankGeometry:
    """The blocks of a layout for ranks ``ranks[s]`` (0: the segment is sent as it is), with the
    layouts of the bases (``P_s``) and of the coefficients (``Q_s`` and the vectors) that codecs are
    built for."""

    def __init__(self, layout: Layout, ranks: Sequence[int]):
        if len(ranks) != len(layout.segments):
            raise ValueError(f"{len(ranks)} ranks for {len(layout.segments)} tensors")
        blocks, basis, coef, p_shapes, c_shapes = [], 0, 0, [], []
        for seg, r in zip(layout.segments, ranks):
            r = int(r)
            if r:
                n = seg.shape[0] if seg.shape else 1
                m = seg.numel // n
                if not (1 <= r <= min(n, m)):
                    raise ValueError(f"tensor {seg.name!r} {seg.shape}: rank {r} is not in 1..min({n}, {m})")
                blocks.append(Block(seg, n, m, r, basis, coef))
                p_shapes.append((f"{seg.name}.P", (n, r)))
                c_shapes.append((f"{seg.name}.Q", (m, r)))
                basis += n * r
                coef += m * r
            else:
                blocks.append(Block(seg, 0, 0, 0, basis, coef))
                c_shapes.append((seg.name, (seg.numel,)))
                coef += seg.numel
        self.layout = layout
        self.blocks: tuple[Block, ...] = tuple(blocks)
        self.products: tuple[Block, ...] = tuple(b for b in blocks if b.rank)
        self.basis_width, self.coef_width = basis, coef
        # A layout needs a tensor: a model without matrices has no bases (and no first exchange).
        self.basis_layout = Layout(p_shapes) if p_shapes else None
        self.coef_layout = Layout(c_shapes)
        self._codecs: dict[tuple[str, str], object] = {}

    def codec(self, codec, part: str = "coef"):
        """``codec`` (built for the model) rebuilt for the ``"coef"`` or ``"basis"`` layout, by name
        (so a plug-in codec works too); one per name and part."""
        key = (codec.name, part)
        built = self._codecs.get(key)
        if built is None:
            layout = self.coef_layout if part == "coef" else self.basis_layout
            built = self._codecs[key] = build_codec(codec.name, layout)
        return built

    def decode_row(self, basis: Tensor, coef: Tensor, out: Tensor) -> Tensor:
        """One message into ``out`` (``(d,)``): ``P_s Q_s^T`` per product block, values elsewhere."""
        for b in self.blocks:
            seg = out[b.segment.offset : b.segment.end]
            if b.rank:  # fresh operands and result: BLAS bits can depend on memory alignment
                p = basis[b.basis : b.basis_end].clone().view(b.rows, b.rank)
                q = coef[b.coef : b.coef_end].clone().view(b.cols, b.rank)
                seg.copy_(torch.mm(p, q.t()).view(-1))
            else:
                seg.copy_(coef[b.coef : b.coef_end])
        return out


@dataclass
class LowRankPayload:
    """``N`` low-rank messages: ``bases`` ``(N, basis_width)`` (may be an expanded view of one
    round's basis) and ``coefficients`` ``(N, coef_width)``, for ``geometry``."""

    bases: Tensor
    coefficients: Tensor
    geometry: LowRankGeometry = field(compare=False, repr=False)

    @property
    def num_messages(self) -> int:
        return self.coefficients.shape[0]

    @property
    def numel(self) -> int:
        return self.geometry.layout.numel

    @property
    def values(self) -> Tensor:
        """What crosses the network: the coefficients."""
        return self.coefficients

    def to_dense(self) -> Tensor:
        out = self.coefficients.new_empty(self.num_messages, self.numel)
        for i in range(self.num_messages):
            self.geometry.decode_row(self.bases[i], self.coefficients[i], out[i])
        return out

    def sum(self, out: Tensor) -> Tensor:
        """Per product block one matrix product over all messages,
        :math:`[\\hat P_1 \\ldots \\hat P_N]\\,[Q_1 \\ldots Q_N]^\\top = \\sum_i \\hat P_i Q_i^\\top`
        (with one shared basis: :math:`\\hat P (\\sum_i Q_i)^\\top`, PowerSGD's aggregate)."""
        n = self.num_messages
        for b in self.geometry.blocks:
            seg = out[b.segment.offset : b.segment.end]
            coef = self.coefficients[:, b.coef : b.coef_end]
            if not b.rank:
                torch.sum(coef, dim=0, out=seg)
            elif n == 0:
                seg.zero_()
            else:
                p = self.bases[:, b.basis : b.basis_end].reshape(n, b.rows, b.rank).transpose(0, 1)
                q = coef.reshape(n, b.cols, b.rank).permute(0, 2, 1)
                seg.copy_(torch.mm(p.reshape(b.rows, n * b.rank), q.reshape(n * b.rank, b.cols)).view(-1))
        return out

    def assign(self, rows: Tensor, other: "LowRankPayload") -> None:
        if all_rows(rows, self.num_messages):
            self.bases.copy_(other.bases)
            self.coefficients.copy_(other.coefficients)
        else:
            self.bases[rows] = other.bases
            self.coefficients[rows] = other.coefficients

    def subtract_from_(self, target: Tensor, rows: Sequence[int]) -> None:
        work = self.coefficients.new_empty(self.numel)
        for i, r in enumerate(rows):
            target[r].sub_(self.geometry.decode_row(self.bases[i], self.coefficients[i], work))

    def codec_name(self, codec) -> str:
        return codec.dense_name

    def fixed_size(self, codec) -> bool:
        return codec.dense_fixed_size

    def encode(self, codec) -> tuple[Tensor, list[int]]:
        return self.geometry.codec(codec).encode_dense(self.coefficients.contiguous())

    def decode(self, codec, data: Tensor, sizes: Sequence[int]) -> "LowRankPayload":
        coef = self.geometry.codec(codec).decode_dense(data, sizes, self.coefficients.dtype)
        coef = coef.to(self.coefficients.device)
        return LowRankPayload(self.bases[:1].expand(coef.shape[0], -1), coef, self.geometry)

    def state_dict(self) -> dict:
        return {"kind": "lowrank", "bases": self.bases.clone(memory_format=torch.contiguous_format),
                "coefficients": self.coefficients.clone()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, "lowrank", {"bases": self.bases, "coefficients": self.coefficients})
        self.bases.copy_(state["bases"])
        self.coefficients.copy_(state["coefficients"])
