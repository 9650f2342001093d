"""Batch data augmentation in plain torch, reproducible under a caller-owned generator.

torchvision is not available next to the CPU torch wheel, and its transforms work one image at a
time anyway; here every transform acts on a whole batch ``(N, C, H, W)`` at once (or on the
simulator's ``(M, B, C, H, W)``, whose leading dimensions are flattened and restored). All
randomness is drawn from the ``torch.Generator`` passed in, on that generator's device, and then
moved to the data's device, so the same seed gives the same augmented batch on CPU and GPU and
the global RNG is never touched.

The data sets here are stored already normalised, so "zero padding" pads with 0 in normalised
units, i.e. with the per-channel mean colour rather than with black; pass ``fill`` to change it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Augmentation = Callable[[Tensor, torch.Generator], Tensor]

AUGMENTATIONS: tuple[str, ...] = ("none", "crop-flip", "crop-flip-rotate")


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws on the generator's device, moved to ``like``'s device and dtype."""
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _randint(high: int, n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(like.device)


def _as_images(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Flatten leading dimensions to one batch dimension: ``(..., C, H, W)`` -> ``(N, C, H, W)``."""
    if x.dim() < 4:
        raise ValueError(
            f"augmentation needs image batches shaped (N, C, H, W) or (M, B, C, H, W), got {tuple(x.shape)}; "
            f"use --augment none for flat (non-image) data"
        )
    return x.reshape(-1, *x.shape[-3:]), tuple(x.shape)


def random_crop(x: Tensor, generator: torch.Generator, padding: int = 4, fill: float = 0.0) -> Tensor:
    """Pad each image by ``padding`` on every side with ``fill``, then cut a random window of the
    original size from it: a random shift of up to ``padding`` pixels in each direction."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    images, shape = _as_images(x)
    if padding == 0:
        return x
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), value=fill)
    top = _randint(2 * padding + 1, n, generator, images)
    left = _randint(2 * padding + 1, n, generator, images)
    rows = (top[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols].reshape(shape)


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {p}")
    images, shape = _as_images(x)
    flip = _rand((images.shape[0],), generator, images) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images).reshape(shape)


def random_rotation(x: Tensor, generator: torch.Generator, max_degrees: float = 15.0, fill: float = 0.0) -> Tensor:
    """Rotate each image about its centre by an angle uniform in ``[-max_degrees, max_degrees]``
    (bilinear resampling; corners that come from outside the image get ``fill``).

    The rotation is applied in the normalised [-1, 1] coordinates of ``affine_grid``, which is a
    true rotation for square images (all the data sets here) and slightly shears non-square ones.
    """
    images, shape = _as_images(x)
    n = images.shape[0]
    angles = (_rand((n,), generator, images) * 2.0 - 1.0) * math.radians(max_degrees)
    cos, sin, zero = torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if fill == 0.0:
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    else:  # sample (x - fill) with zero padding, then add fill back: outside pixels become fill
        out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.reshape(shape)


def normalize(x: Tensor, mean: tuple[float, ...] | Tensor, std: tuple[float, ...] | Tensor) -> Tensor:
    """``(x - mean) / std`` per channel (channel = dimension -3)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def denormalize(x: Tensor, mean: tuple[float, ...] | Tensor, std: tuple[float, ...] | Tensor) -> Tensor:
    """Inverse of ``normalize``: ``x * std + mean`` per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * s + m


def _identity(x: Tensor, generator: torch.Generator) -> Tensor:
    return x


def _crop_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    return random_flip(random_crop(x, generator, padding=4), generator, p=0.5)


def _crop_flip_rotate(x: Tensor, generator: torch.Generator) -> Tensor:
    return random_rotation(_crop_flip(x, generator), generator, max_degrees=15.0)


def make_augmentation(name: str) -> Augmentation:
    """The training-batch augmentation called ``name``, as a function ``(x, generator) -> x``.

    ``none``: identity (any shape). ``crop-flip``: the standard CIFAR recipe, random crop with
    4-pixel padding then a horizontal flip with p = 0.5. ``crop-flip-rotate``: the same followed by
    a rotation of up to +-15 degrees.
    """
    table: dict[str, Augmentation] = {
        "none": _identity,
        "crop-flip": _crop_flip,
        "crop-flip-rotate": _crop_flip_rotate,
    }
    key = name.strip().lower().replace("_", "-")
    if key not in table:
        raise ValueError(f"unknown augmentation {name!r}; use --augment with one of {', '.join(AUGMENTATIONS)}")
    return table[key]


__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "denormalize",
    "make_augmentation",
    "normalize",
    "random_crop",
    "random_flip",
    "random_rotation",
]
