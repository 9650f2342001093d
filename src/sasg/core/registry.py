"""Named members: triggers, compressors, memories and codecs, and the algorithms' aliases.

Every member registers under a name with a one-line description and a factory
``factory(layout, settings) -> member`` (``settings``: :class:`~sasg.core.spec.AlgorithmSettings`).
A class whose ``__init__`` takes ``(layout, settings)`` is its own factory, so a plug-in is::

    from sasg.core.registry import register

    @register("compressor", "mycomp", "what it keeps, in one line")
    class MyCompressor:
        def __init__(self, layout, settings): ...

A trigger, compressor or memory also declares its optional capabilities here, with
``capabilities={...}`` (its flags with their values, its methods with ``True``;
:mod:`sasg.core.capabilities`), so that what it can do is known without building it.

Algorithms are compositions ``TRIGGER+COMPRESSOR[+MEMORY]`` of registered names
(:mod:`sasg.core.spec`); the paper's four names are aliases of compositions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .capabilities import check_declared

# "index" and "value" are the parts of a composite codec INDEX+VALUE (sasg.core.codecs.composite).
KINDS = ("trigger", "compressor", "memory", "codec", "index", "value")


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    description: str
    factory: Callable[..., Any]
    # The declared optional capabilities ({name: value}; sasg.core.capabilities), or None: not
    # declared (an older plug-in), then read off the class or a built member.
    capabilities: Mapping[str, Any] | None = None


class Registry:
    """The members of one kind, by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, description: str, factory: Callable[..., Any], replace: bool = False,
            capabilities: Mapping[str, Any] | None = None) -> Entry:
        key = _check_name(name, self.kind)
        capabilities = check_declared(self.kind, key, capabilities)
        old = self._entries.get(key)
        if old is not None and not replace and not _same_definition(old.factory, factory):
            raise ValueError(f"a {self.kind} named {key!r} is already registered; choose another name")
        entry = self._entries[key] = Entry(self.kind, key, " ".join(description.split()), factory, capabilities)
        return entry

    def get(self, name: str) -> Entry:
        entry = self._entries.get(name.strip().lower())
        if entry is None:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())} (see `sasg list`)")
        return entry

    def __contains__(self, name: str) -> bool:
        return name.strip().lower() in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}

# alias -> (composition, description)
ALIASES: dict[str, tuple[str, str]] = {}


def _same_definition(a, b) -> bool:
    """The same object, or the same definition imported again (a plug-in loaded twice)."""
    if a is b:
        return True
    name = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return name(a) == name(b) and name(a)[1] is not None and "<lambda>" not in name(a)[1]


# A name becomes part of file names (checkpoints, TensorBoard folders) and of command lines
# (--algos a,b; --density sasg=0.1; TRIGGER+COMPRESSOR): letters, digits, '_' and '-' only, so no
# name can hold a path ('/', '..'), a separator or a space.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _check_name(name: str, kind: str) -> str:
    key = str(name).strip().lower()
    if not _NAME.fullmatch(key):
        raise ValueError(
            f"{kind} name {name!r}: use 1 to 64 letters, digits, '_' or '-', starting with a letter or digit "
            "(e.g. my_topk)"
        )
    return key


def register(kind: str, name: str, description: str, factory: Callable[..., Any] | None = None, *,
             capabilities: Mapping[str, Any] | None = None):
    """Register ``factory`` (or, used as a decorator, the decorated class or function) as the
    ``kind`` member ``name``, with its optional ``capabilities`` (:mod:`sasg.core.capabilities`;
    ``None``: read off the class or a built member). Registering the same factory twice (a
    re-imported plug-in) is fine; another one under a taken name is an error."""
    if kind not in REGISTRIES:
        raise ValueError(f"unknown member kind {kind!r}; choose from {', '.join(KINDS)}")
    if factory is not None:
        REGISTRIES[kind].add(name, description, factory, capabilities=capabilities)
        return factory

    def decorate(obj):
        REGISTRIES[kind].add(name, description, obj, capabilities=capabilities)
        return obj

    return decorate


def register_alias(alias: str, composition: str, description: str) -> None:
    key = _check_name(alias, "algorithm alias")
    if key in ALIASES and ALIASES[key][0] != composition:
        raise ValueError(f"the algorithm alias {key!r} is taken (= {ALIASES[key][0]}); choose another name")
    ALIASES[key] = (composition, " ".join(description.split()))


def listing() -> list[tuple[str, str, str]]:
    """(kind, name, description) of every registered member and alias, for ``sasg list``."""
    rows = [("algorithm", name, f"= {comp}: {desc}") for name, (comp, desc) in ALIASES.items()]
    for kind in KINDS:
        rows += [(kind, e.name, e.description) for e in REGISTRIES[kind].entries()]
    return rows
