"""What the round engine checks of its members' answers, once, in the first round it runs.

Members may come from plug-ins. One that answers in the wrong form fails later, deep inside a
payload or torch, with a traceback that names neither it nor what it did (a compressor returning a
bare tensor), or not at all (a trigger answering with floats or the wrong number of flags runs to
the end). The engine checks the first round's answers — their type, shape and dtype — and a wrong
one is a :class:`MemberError`: one line naming the member and what it returned. Later rounds are
not checked (a member answers in one form), so the check costs nothing per round.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import ConfigError
from ..core.payloads import Payload


class MemberError(ConfigError):
    """A member (trigger, compressor, memory) answered the engine in a form its protocol does not
    allow: a bug of that member, named with what it returned."""


def member_name(kind: str, member) -> str:
    name = getattr(member, "name", None)
    return f"{kind} {name!r}" if isinstance(name, str) else f"{kind} {type(member).__name__}"


def what(value) -> str:
    """A returned value described in a few words: its type, and a tensor's dtype and shape."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def check_decision(trigger, upload, n: int) -> None:
    """``trigger.decide`` must answer with an ``(n,)`` bool tensor: one flag per worker held."""
    if isinstance(upload, Tensor) and upload.dtype == torch.bool and tuple(upload.shape) == (n,):
        return
    raise MemberError(
        f"{member_name('trigger', trigger)}: decide() returned {what(upload)}; a trigger must return a bool "
        f"tensor of shape ({n},), one flag per worker (fix the member)"
    )


def check_sent(memory, sent, rows) -> None:
    """``memory.upload`` must answer with the uploaders' encoded messages (an ``Encoded``: the
    decoded payload, the bytes as a 1-D uint8 tensor, one size per uploading row)."""
    payload, data, sizes = (getattr(sent, k, None) for k in ("payload", "data", "sizes"))
    ok = (isinstance(payload, Payload) and isinstance(data, Tensor) and data.dtype == torch.uint8
          and data.dim() == 1 and isinstance(sizes, (list, tuple)) and len(sizes) == len(rows))
    if not ok:
        raise MemberError(
            f"{member_name('memory', memory)}: upload() returned {what(sent)}; a memory must return the "
            f"{len(rows)} uploaders' messages as sasg.core.payloads.transmit(...) does (fix the member)"
        )


class FirstRoundCompressor:
    """The round's compressor, as the memory sees it in the engine's first round: every call is
    passed on, and what ``compress`` returns is checked to be a payload of one message per row."""

    def __init__(self, compressor):
        self._inner = compressor

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def compress(self, v, rows=None, **kwargs):
        q = self._inner.compress(v, rows, **kwargs)
        expected = len(rows) if rows is not None else (v.shape[0] if isinstance(v, Tensor) else None)
        count = getattr(q, "num_messages", None) if isinstance(q, Payload) else None
        if count is None or (expected is not None and count != expected):
            got = what(q) if count is None else f"a payload of {count} message(s)"
            raise MemberError(
                f"{member_name('compressor', self._inner)}: compress() returned {got}; a compressor must "
                f"return a payload (sasg.core.payloads) of {expected} message(s), one per row (fix the member)"
            )
        values = getattr(q, "values", None)
        if not (isinstance(values, Tensor) and values.is_floating_point()):
            raise MemberError(
                f"{member_name('compressor', self._inner)}: compress() returned a payload whose values are "
                f"{what(values)}; a message's values must be a floating-point tensor (fix the member)"
            )
        return q
