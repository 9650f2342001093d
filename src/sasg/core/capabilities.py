r"""What a member can do beyond its protocol: its optional capabilities, declared where it registers.

A trigger, compressor or memory has the few attributes and methods of its protocol
(:mod:`.triggers.protocol`, :mod:`.compressors.protocol`, :mod:`.memories.protocol`) and may have
some of the optional ones below. There are two sorts:

* **flags**, values known before anything is built (``lazy``, ``needs_stale_grads``,
  ``default_memory``, ``honours_tensor_policy``, ``default_codec``, ``exact_under``, ``window``):
  the command line, the DDP hook and the composition of an algorithm ask them of the *registry*;
* **methods** (and one layout-dependent attribute, ``k_per_segment``) that a built member
  provides (``server_store``, ``receive``, ``server_buffers``, ``begin_round``, ``checked_rows``,
  ``check_algorithm``): the round engine and the runners call them on the member. Each is a small
  :class:`typing.Protocol` here (:class:`ServerStore`, :class:`BeginsRound`, ...), which says what
  it is called with.

Design: **declared on the registry entry**, checked against the member when an algorithm is built.
``register(kind, name, description, factory, capabilities={...})`` names the member's flags with
their values and its methods with ``True``; :func:`sasg.core.declared.capabilities_of` answers for
an entry without building anything (a factory is usually a lambda, and a member needs a model's layout to exist,
so asking the member would mean building it on a made-up "probe" layout, as sasg once did).
:meth:`sasg.core.AlgorithmSpec.build` then checks that every member keeps its entry's word
(:func:`check_member`): a declared method it lacks, a method it has but did not declare, or a flag
it answers differently is a ``ValueError`` naming the member, the capability and the fix. So the
registry is the one place that says what a member can do before it exists, and the member the one
that does it afterwards, and the two cannot drift apart. Protocols alone could not be asked before
building; flags alone would not say what a method takes.

Plug-ins registered the older way (no ``capabilities=``) keep working: a class registered as its
own factory is read off the class (its class attributes and methods); any other undeclared factory
is built once on a small layout, the old probe, and read off the member (:mod:`sasg.core.declared`,
which answers for a registered member; this module knows no registry and no spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

# ----- the method capabilities, as protocols --------------------------------------------------------


@runtime_checkable
class ServerStore(Protocol):
    """A memory whose server keeps a state of its own per worker instead of their last messages
    (``ef21``: the estimates :math:`h_m`); the step is still ``store.sum``."""

    def server_store(self, compressor, n: int, device=None, dtype=None):
        """The server's state for ``n`` workers before anyone sent (a payload)."""


@runtime_checkable
class Receives(Protocol):
    """A memory that updates its server store from the senders' decoded messages (``ef21``:
    :math:`h_m \\mathrel{+}= \\mathrm{decoded}(c_m)`) instead of replacing their messages."""

    def receive(self, store, senders, payload) -> None:
        ...


@runtime_checkable
class ServerBuffers(Protocol):
    """A compressor with server-side state, created the same on every holder and saved with the
    server's state (``powersgd``: the warm-start Q)."""

    def server_buffers(self, seed: int = 0, device=None, dtype=None) -> dict:
        ...


@runtime_checkable
class BeginsRound(Protocol):
    """A compressor whose messages need an exchange of their own first (``powersgd``): returns this
    round's compressor (:mod:`.compressors.protocol` says what it must do)."""

    def begin_round(self, link):
        ...


@runtime_checkable
class KeepsPerSegment(Protocol):
    """A sparsifier that keeps a known number of entries of every tensor (``topk``: the DDP hook
    reports the kept fraction per tensor from it)."""

    k_per_segment: Sequence[int]


@runtime_checkable
class ChecksRows(Protocol):
    """A rule that needs second gradients and says before the round which rows it will check
    (``wk2``), so that a one-worker runner computes the fresh and the stale gradient in one pass."""

    def checked_rows(self, iteration: int, staleness, worker_ids, num_workers):
        ...


@runtime_checkable
class ChecksAlgorithm(Protocol):
    """A member that works only with certain others (``clag`` needs the ``ef21`` estimate): raises
    a ``ValueError`` that names the fix when the algorithm is built."""

    def check_algorithm(self, algorithm) -> None:
        ...


# ----- the table --------------------------------------------------------------------------------------

FLAG, METHOD = "flag", "method"
_UNSET = object()  # needs_stale_grads' default: the trigger's lazy flag


@dataclass(frozen=True)
class Capability:
    name: str
    kinds: tuple[str, ...]
    sort: str  # FLAG (a value, known before building) or METHOD (the built member provides it)
    summary: str
    default: Any = None  # a flag's value where a member says nothing
    protocol: type | None = None  # a method's protocol

    def fix(self) -> str:
        where = f" (see sasg.core.capabilities.{self.protocol.__name__})" if self.protocol else ""
        return f"define {self.name} on the member{where}"


CAPABILITIES: dict[str, Capability] = {c.name: c for c in (
    Capability("lazy", ("trigger",), FLAG, "some workers may skip a round (the flags travel)", True),
    Capability("needs_stale_grads", ("trigger",), FLAG,
               "may ask for a second gradient at the anchor (a DDP hook needs the loop's help)", _UNSET),
    Capability("window", ("trigger",), FLAG, "uses the window D: uploads every round for the first D", False),
    Capability("checked_rows", ("trigger",), METHOD, "says before the round which rows it checks",
               protocol=ChecksRows),
    Capability("default_memory", ("trigger", "compressor"), FLAG,
               "the memory a composition gets when none is written", None),
    Capability("honours_tensor_policy", ("compressor",), FLAG, "sends the tensors --tensor-policy names whole",
               False),
    Capability("default_codec", ("compressor",), FLAG, "the codec it is priced with when none is named", None),
    Capability("exact_under", ("compressor",), FLAG, "lossy codecs that still decode its messages exactly", ()),
    Capability("k_per_segment", ("compressor",), METHOD, "keeps a known number of entries of every tensor",
               protocol=KeepsPerSegment),
    Capability("server_buffers", ("compressor",), METHOD, "keeps server-side buffers", protocol=ServerBuffers),
    Capability("begin_round", ("compressor",), METHOD, "runs an exchange of its own first", protocol=BeginsRound),
    Capability("server_store", ("memory",), METHOD, "its server keeps a state per worker, not messages",
               protocol=ServerStore),
    Capability("receive", ("memory",), METHOD, "updates that server state from the senders' messages",
               protocol=Receives),
    Capability("check_algorithm", ("trigger", "compressor", "memory"), METHOD,
               "refuses the members it cannot work with", protocol=ChecksAlgorithm),
)}


def for_kind(kind: str) -> list[Capability]:
    """The optional capabilities a member of ``kind`` may have (none for codecs and their parts)."""
    return [c for c in CAPABILITIES.values() if kind in c.kinds]


def check_declared(kind: str, name: str, declared: Mapping[str, Any] | None) -> dict | None:
    """A registration's ``capabilities=`` checked: known names for the kind, methods as ``True``."""
    if declared is None:
        return None
    if not isinstance(declared, Mapping):
        raise ValueError(f"{kind} {name!r}: capabilities must be a dict such as {{'lazy': True}}, "
                         f"got {type(declared).__name__}")
    known = {c.name: c for c in for_kind(kind)}
    out = {}
    for key, value in declared.items():
        cap = known.get(key)
        if cap is None:
            raise ValueError(f"{kind} {name!r}: unknown capability {key!r}; a {kind} may declare "
                             f"{', '.join(known) or 'none'} (sasg.core.capabilities)")
        if cap.sort == METHOD and not isinstance(value, bool):
            raise ValueError(f"{kind} {name!r}: declare the method capability {key!r} as True (or leave it out), "
                             f"got {value!r}")
        out[key] = tuple(value) if key == "exact_under" else value
    return out


def complete(kind: str, found: Mapping[str, Any]) -> dict[str, Any]:
    """Every capability of a ``kind`` member, from those ``found`` (declared or read): the rest
    take their defaults (methods: ``False``)."""
    out = {}
    for cap in for_kind(kind):
        value = found.get(cap.name, False if cap.sort == METHOD else cap.default)
        if value is _UNSET:  # needs_stale_grads: a lazy rule is taken to need it (triggers.protocol)
            value = bool(found.get("lazy", CAPABILITIES["lazy"].default))
        out[cap.name] = value
    return out


def read(kind: str, obj) -> dict:
    """What ``obj`` (a member or its class) says of itself."""
    found = {}
    for cap in for_kind(kind):
        value = getattr(obj, cap.name, None)
        if cap.sort == METHOD:
            found[cap.name] = value is not None if cap.name == "k_per_segment" else callable(value)
        elif value is not None:
            found[cap.name] = tuple(value) if cap.name == "exact_under" else value
    if kind == "trigger" and "window" in found:
        found["window"] = found["window"] is not None
    return found


# ----- a built member against its entry ------------------------------------------------------------------


def check_member(entry, member) -> dict[str, Any]:
    """Refuse a built member that breaks its entry's declaration (a ``ValueError`` naming the
    member, the capability and the fix); return its capabilities: as declared, or, for an entry
    that declares none, as the member itself says (what the runners then go by)."""
    has = read(entry.kind, member)
    if entry.capabilities is None:
        return complete(entry.kind, has)
    declared = complete(entry.kind, dict(entry.capabilities))
    where = f"the {entry.kind} {entry.name!r}"
    for cap in for_kind(entry.kind):
        said = declared[cap.name]
        if cap.sort == METHOD:
            if said and not has[cap.name]:
                raise ValueError(f"{where} declares the capability {cap.name!r} but its member "
                                 f"({type(member).__name__}) has no {cap.name}: {cap.fix()}, or drop "
                                 f"{cap.name!r} from the capabilities it registers with")
            if has[cap.name] and not said:
                raise ValueError(f"{where} has {cap.name} ({cap.summary}) but does not declare it: add "
                                 f"{cap.name!r}: True to the capabilities it registers with")
        elif cap.name in has and has[cap.name] != said:
            raise ValueError(f"{where} declares {cap.name}={said!r} but its member ({type(member).__name__}) "
                             f"says {cap.name}={has[cap.name]!r}: make them agree (or leave {cap.name!r} out of "
                             "the capabilities it registers with)")
    return declared


# ----- on a built member (hand-composed algorithms too) -----------------------------------------------------


def provided(member, name: str):
    """``member``'s method (or attribute) capability ``name``, or ``None`` where it has none."""
    return getattr(member, name, None)


def flag(member, name: str):
    """``member``'s flag ``name``, or its default where it says nothing."""
    cap = CAPABILITIES[name]
    value = getattr(member, name, None)
    if value is not None:
        return tuple(value) if name == "exact_under" else value
    if cap.default is _UNSET:
        return bool(getattr(member, "lazy", True))
    return cap.default


def describe(found: Mapping[str, Any]) -> str:
    """A member's capabilities (``{name: value}``, as :func:`sasg.core.declared.capabilities_of`
    answers) in one line, for ``sasg list --verbose``: the methods and true flags by name, other
    flags that are set as ``name=value`` (``lazy=False``); ``-`` for none."""
    parts = []
    for name, value in found.items():
        default = CAPABILITIES[name].default
        if value is True:
            parts.append(name)
        elif value is False and (default is True or default is _UNSET and found["lazy"]):
            parts.append(f"{name}=False")  # not what a member that says nothing would be
        elif value not in (False, None, ()):
            parts.append(f"{name}={','.join(value) if isinstance(value, tuple) else value}")
    return ", ".join(parts) or "-"
