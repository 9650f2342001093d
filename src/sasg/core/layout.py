"""Flat per-segment layout of a model's parameters.

Every piece of algorithm state (gradients, error memories, anchors, messages) lives in one flat
buffer of length ``d`` per worker, shape ``(N, d)`` with a leading worker dimension. A *segment*
is the slice that belongs to one parameter tensor of ``model.parameters()``; top-k is applied per
segment, as in the paper (density h per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int

    @property
    def end(self) -> int:
        return self.offset + self.numel


class Layout:
    """Names, shapes and offsets of the segments of a flat parameter buffer."""

    def __init__(self, named_shapes: Iterable[tuple[str, tuple[int, ...]]]):
        segments = []
        offset = 0
        for name, shape in named_shapes:
            numel = 1
            for s in shape:
                numel *= int(s)
            segments.append(Segment(name, tuple(int(s) for s in shape), offset, numel))
            offset += numel
        if not segments:
            raise ValueError("a layout needs at least one parameter tensor")
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.numel: int = offset

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> "Layout":
        return cls((n, tuple(p.shape)) for n, p in module.named_parameters())

    def __len__(self) -> int:
        return len(self.segments)

    def __repr__(self) -> str:
        return f"Layout(segments={len(self.segments)}, numel={self.numel})"

    def flatten(self, tensors: Mapping[str, Tensor], batch_dims: int = 0) -> Tensor:
        """Concatenate named tensors into a flat buffer, keeping ``batch_dims`` leading dims."""
        parts = []
        for seg in self.segments:
            t = tensors[seg.name]
            lead = t.shape[:batch_dims]
            parts.append(t.reshape(*lead, seg.numel))
        return torch.cat(parts, dim=batch_dims)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Named views into ``flat`` (shape ``(..., d)``); writing to ``flat`` updates them."""
        lead = flat.shape[:-1]
        return {
            seg.name: flat[..., seg.offset : seg.end].view(*lead, *seg.shape) for seg in self.segments
        }

    def columns(self, flat: Tensor) -> tuple[Tensor, ...]:
        """Per-segment column views ``(..., d_s)`` of ``flat`` (shape ``(..., d)``); no copy."""
        return tuple(flat[..., seg.offset : seg.end] for seg in self.segments)

    def as_columns(self, rows: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Rows of flat buffers as per-segment column blocks.

        ``rows`` is either one ``(N, d)`` tensor (split into views) or already one ``(N, d_s)``
        tensor per segment in layout order (what a vectorized gradient backend returns; taking
        them as they are saves copying them into a flat buffer)."""
        if isinstance(rows, Tensor):
            if rows.shape[-1] != self.numel:
                raise ValueError(f"expected rows of length {self.numel}, got shape {tuple(rows.shape)}")
            return self.columns(rows)
        blocks = tuple(rows)
        if len(blocks) != len(self.segments) or any(
            b.dim() != 2 or b.shape[1] != seg.numel or b.shape[0] != blocks[0].shape[0]
            for b, seg in zip(blocks, self.segments)
        ):
            raise ValueError(
                f"expected {len(self.segments)} column blocks of widths "
                f"{[seg.numel for seg in self.segments][:8]}... with one row count, got "
                f"{[tuple(b.shape) for b in blocks][:8]}"
            )
        return blocks
