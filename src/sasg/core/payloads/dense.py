"""Dense messages: every worker sends all ``d`` values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .helpers import all_rows, check_state


@dataclass
class DensePayload:
    """``N`` dense messages, ``values`` of shape ``(N, d)``.

    ``owned``: nothing else refers to ``values`` (a buffer made for this payload alone, see the
    ``donate`` argument of :meth:`Compressor.compress`). When every worker sends, the server's
    store of last messages may then take the buffer itself instead of copying it (a full
    ``(M, d)`` copy per round saved for dense algorithms)."""

    values: Tensor
    owned: bool = field(default=False, compare=False)

    @property
    def num_messages(self) -> int:
        return self.values.shape[0]

    @property
    def numel(self) -> int:
        return self.values.shape[1]

    def to_dense(self) -> Tensor:
        return self.values

    def sum(self, out: Tensor) -> Tensor:
        return torch.sum(self.values, dim=0, out=out)

    def assign(self, rows: Tensor, other: "DensePayload") -> None:
        if all_rows(rows, self.values.shape[0]):
            mine, theirs = self.values, other.values
            same = (theirs.shape, theirs.dtype, theirs.device) == (mine.shape, mine.dtype, mine.device)
            if other.owned and same:
                # Everyone sent and nobody else holds the buffer: keep it, the old one is dead.
                self.values, other.owned = other.values, False
            else:
                self.values.copy_(other.values)  # everyone sent: a plain copy, no scatter
        else:
            self.values[rows] = other.values

    def subtract_from_(self, target: Tensor, rows: Sequence[int]) -> None:
        for i, r in enumerate(rows):
            target[r].sub_(self.values[i])

    def codec_name(self, codec) -> str:
        return codec.dense_name

    def fixed_size(self, codec) -> bool:
        return codec.dense_fixed_size

    def encode(self, codec) -> tuple[Tensor, list[int]]:
        return codec.encode_dense(self.values)

    def decode(self, codec, data: Tensor, sizes: Sequence[int]) -> "DensePayload":
        values = codec.decode_dense(data, sizes, self.values.dtype)
        return DensePayload(values.to(self.values.device), owned=True)

    def state_dict(self) -> dict:
        return {"kind": "dense", "values": self.values.clone()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, "dense", {"values": self.values})
        self.values.copy_(state["values"])
