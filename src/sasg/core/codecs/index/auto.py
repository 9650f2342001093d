r"""``auto`` — per tensor the cheapest of the three (estimated bits: ``8 W c_s`` for idx32,
``c_s (b_s + 1) + sum q`` for rice, ``d_s`` for bitmap; ties to the first of idx32, rice,
bitmap), with a tag per tensor. Bytes of one message::

    counts  S x W   c_s
    U       W       length of the unary stream
    params  S x 1   b_s (0 for tensors not coded by rice)
    tags    S x 1   0 = idx32, 1 = rice, 2 = bitmap
    idx32 section   the indices (global, int32/int64) of the idx32 tensors, in order
    bitmap section  ceil(sum of d_s over the bitmap tensors / 8) bytes: their d_s bits each,
                    back to back; zero-padded
    remainders      as in rice, over the rice tensors only
    unary           U bytes, as in rice

Header: ``(S + 1) W + 2 S`` bytes. Rice with ``b_s = 0`` is itself at most ``d_s`` bits
(``c_s + sum g = l_{c_s} + 1``), so bitmap wins only where the mean-gap rule picks ``b_s > 0``
at high density, and idx32 only for empty tensors or ``d_s >= 2**31``; at 1 % top-k every
nonempty tensor is rice-coded and auto costs ``S`` bytes more than rice.

Notation as in :mod:`sasg.core.codecs.index`; the coding itself is :mod:`.rice`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rice import _Sections


class Auto(_Sections):
    """``auto``: per tensor the cheapest of idx32, rice and bitmap, tagged (module docstring)."""

    name = "auto"
    TAGS = True

    def choose_tags(self, idx32_bits: Tensor, rice_bits: Tensor, bitmap_bits: Tensor) -> Tensor:
        """Every (message, tensor)'s code, from each code's bits for it: the smallest, the first
        of idx32, rice, bitmap on ties (an empty tensor: idx32, 0 bits)."""
        return torch.argmin(torch.stack([idx32_bits, rice_bits, bitmap_bits]), dim=0)
