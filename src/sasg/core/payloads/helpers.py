"""Small helpers the payload classes share."""

from __future__ import annotations

import torch
from torch import Tensor


def all_rows(rows: Tensor, n: int) -> bool:
    """``rows`` is exactly ``0, 1, ..., n-1`` (then assigning them is a plain copy)."""
    if not isinstance(rows, Tensor):
        return False
    if rows.dtype == torch.bool:
        return rows.numel() == n and bool(rows.all())
    if rows.numel() != n or n == 0:
        return False
    return torch.equal(rows.cpu(), torch.arange(n))


def check_state(state: dict, kind: str, mine: dict[str, Tensor]) -> None:
    """A saved payload matches this one's kind and shapes (else: another algorithm or model)."""
    if state.get("kind") != kind or any(state[k].shape != t.shape for k, t in mine.items()):
        raise ValueError("server state 'last': message shape or kind mismatch (another algorithm or model?)")
