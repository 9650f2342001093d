"""What a registered member can do, answered without building it (:mod:`sasg.core.capabilities`).

The command line (``sasg list --verbose``), the DDP hook (:func:`sasg.ddp.hook_triggers`, its
defaults) and the composition of an algorithm (its default memory, its natural codec) ask here.
A member's answers are its registration's ``capabilities=``; a plug-in registered without them is
read off its class when the class is its own factory, and otherwise built once on a small layout
(the older probe, kept for such plug-ins only) and read off the member.
"""

from __future__ import annotations

from typing import Any

from .capabilities import complete, read
from .layout import Layout
from .registry import REGISTRIES
from .spec import AlgorithmSettings, AlgorithmSpec

_PROBE = Layout([("probe", (4, 4)), ("bias", (4,))])
_PROBED: dict[int, tuple[Any, dict]] = {}  # id(entry) -> (entry, what its probe-built member said)


def capabilities_of(entry) -> dict[str, Any]:
    """Every optional capability of a registered member (``entry``: a
    :class:`~sasg.core.registry.Entry`), ``{name: value}`` (methods: ``True``/``False``)."""
    if entry.capabilities is not None:
        found = entry.capabilities
    elif isinstance(entry.factory, type):
        found = read(entry.kind, entry.factory)
    else:
        found = _probed(entry)
    return complete(entry.kind, found)


def capability(entry, name: str):
    """One capability of a registered member: :func:`capabilities_of` ``[name]``."""
    return capabilities_of(entry)[name]


def default_memory(spec: AlgorithmSpec) -> str:
    """The memory of ``spec``: as written, else the trigger's default if it reads a memory's state
    (clag: ef21), else the compressor's (what :meth:`AlgorithmSpec.build` builds)."""
    return (spec.memory or capability(REGISTRIES["trigger"].get(spec.trigger), "default_memory")
            or capability(REGISTRIES["compressor"].get(spec.compressor), "default_memory") or "none")


def _probed(entry) -> dict:
    cached = _PROBED.get(id(entry))
    if cached is None or cached[0] is not entry:
        member = entry.factory(_PROBE, AlgorithmSettings())
        cached = _PROBED[id(entry)] = (entry, read(entry.kind, member))
    return cached[1]
