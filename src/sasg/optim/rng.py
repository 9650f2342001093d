"""The random streams a closure draws from (dropout masks), read and replayed around the lazy
rule's second evaluation at the anchor."""

from __future__ import annotations

import torch
from torch import Tensor

def cuda_rng_device(device: torch.device) -> torch.device | None:
    """The CUDA device whose generator the closure's random draws (dropout) on parameters that
    live on ``device`` use: that device itself, whatever the current device is (a rank that moved
    its model to ``cuda:LOCAL_RANK`` without ``torch.cuda.set_device``). ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def rng_state(cuda: torch.device | None) -> tuple[Tensor, Tensor | None]:
    """The CPU generator's state and, with ``cuda``, that device's generator state."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(cuda) if cuda is not None else None)


def set_rng_state(state: tuple[Tensor, Tensor | None], cuda: torch.device | None) -> None:
    """Put back what :func:`rng_state` read for the same ``cuda`` device."""
    torch.set_rng_state(state[0])
    if cuda is not None:
        torch.cuda.set_rng_state(state[1], cuda)
