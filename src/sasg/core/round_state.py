"""Algorithm state: per worker (staleness and the members' buffers) and on the server.

Both carry a leading worker dimension: the simulator holds all ``M`` workers in one
``WorkerState``; a distributed rank holds its own worker (``N = 1``) plus a replica of the
``ServerState``. Everything is reachable through ``state_dict()`` / ``load_state_dict()``; a load
checks everything first and changes nothing when it fails.

Every ``load_state_dict`` in the library is *check, then apply*: ``check_state_dict(state)``
compares the whole saved state with what the object holds (:func:`check_like`) and raises one
``ValueError`` naming the first missing or wrong part (``'engine.server.step_sq' is missing``);
only then is anything copied, by steps that cannot fail on a checked state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Callable

import torch
from torch import Tensor

from .payloads import Payload

Checker = Callable[[Any, str], None]  # (saved part, its name) -> None, or a ValueError


def part_name(where: str, key) -> str:
    """The name of ``key`` inside the part ``where``: ``engine.server`` + ``step_sq``, ``generators`` + 0
    -> ``generators[0]``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _show(where: str) -> str:
    return repr(where) if where else "the state"


def _kind(x) -> str:
    return "a tensor" if isinstance(x, Tensor) else type(x).__name__


def check_like(saved, expected, where: str = "") -> None:
    """Check that ``saved`` (a part of a saved state, named ``where``) is shaped like ``expected``
    (the same part of what this object holds), or raise one ``ValueError`` naming the first part
    that is missing or wrong. Changes nothing.

    ``expected`` is matched by kind:

    * a mapping: the same keys, no more and no fewer, each value matched in turn;
    * a list or tuple: a list or tuple of the same length, item by item;
    * a tensor: a tensor of the same shape and dtype (any floating dtype for a floating one: a
      load casts, as ``torch.optim`` does);
    * a string: the same string (names: algorithm, payload kind); ``None``: ``None``;
    * a bool, an int, a float: a value of that type (an int for a float too); the value is the
      saved state's own;
    * a callable (a :data:`Checker`): called as ``expected(saved, where)`` to check the part itself.
    """
    if isinstance(expected, Mapping):
        if not isinstance(saved, Mapping):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a dict")
        for key, value in expected.items():
            name = part_name(where, key)
            if key not in saved:
                raise ValueError(f"state part {name!r} is missing (saved by another version or algorithm?)")
            check_like(saved[key], value, name)
        extra = [k for k in saved if k not in expected]
        if extra:
            raise ValueError(
                f"state part {part_name(where, extra[0])!r} is not part of this object's state "
                "(saved by another algorithm or model?)"
            )
    elif isinstance(expected, Tensor):
        if not isinstance(saved, Tensor):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a tensor")
        if saved.shape != expected.shape:
            raise ValueError(
                f"state part {_show(where)} has shape {tuple(saved.shape)}, expected {tuple(expected.shape)} "
                "(another model, algorithm or number of workers?)"
            )
        if saved.dtype != expected.dtype and not (saved.is_floating_point() and expected.is_floating_point()):
            raise ValueError(f"state part {_show(where)} has dtype {saved.dtype}, expected {expected.dtype}")
    elif isinstance(expected, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a list")
        if len(saved) != len(expected):
            raise ValueError(f"state part {_show(where)} has {len(saved)} entries, expected {len(expected)}")
        for i, (s, e) in enumerate(zip(saved, expected)):
            check_like(s, e, part_name(where, i))
    elif isinstance(expected, str):
        if saved != expected:
            raise ValueError(f"state part {_show(where)} is {saved!r}, expected {expected!r}")
    elif expected is None:
        if saved is not None:
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected None")
    elif isinstance(expected, bool):
        if not isinstance(saved, bool):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a bool")
    elif isinstance(expected, Integral):
        if isinstance(saved, bool) or not isinstance(saved, Integral):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected an int")
    elif isinstance(expected, Real):
        if isinstance(saved, bool) or not isinstance(saved, Real):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a number")
    elif callable(expected):
        expected(saved, where)
    else:
        raise TypeError(f"check_like: cannot match {type(expected).__name__} (part {where!r})")


def equal_to(value, hint: str = "") -> Checker:
    """A checker for a part that must equal ``value`` (worker ids, counts)."""

    def check(saved, where: str) -> None:
        check_like(saved, value, where)  # the type first: a tensor never compares equal here
        if (list(saved) if isinstance(saved, (list, tuple)) else saved) != value:
            raise ValueError(f"state part {_show(where)} is {saved!r}, expected {value!r}{hint}")

    return check


def at_least(low: int) -> Checker:
    """A checker for an int part that must be ``>= low``."""

    def check(saved, where: str) -> None:
        check_like(saved, 0, where)
        if saved < low:
            raise ValueError(f"state part {_show(where)} is {saved}, expected an int >= {low}")

    return check


def list_of(item: Any) -> Checker:
    """A checker for a list of any length whose entries each match ``item``."""

    def check(saved, where: str) -> None:
        if not isinstance(saved, (list, tuple)):
            raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a list")
        for i, s in enumerate(saved):
            check_like(s, item, part_name(where, i))

    return check


def counts(saved, where: str) -> None:
    """A :data:`Checker` for a list of ints >= 0 (a ledger's per-round counts; fast on long ones)."""
    if not isinstance(saved, (list, tuple)):
        raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a list of counts")
    if not all(type(v) is int and v >= 0 for v in saved):
        list_of(at_least(0))(saved, where)  # names the first bad entry


def optional(expected: Any) -> Checker:
    """A checker for a part that is ``None`` or matches ``expected``."""

    def check(saved, where: str) -> None:
        if saved is not None:
            check_like(saved, expected, where)

    return check


def generator_state(saved, where: str) -> None:
    """A :data:`Checker` for a ``torch.Generator`` state: one that ``set_state`` takes (tried on a
    scratch generator, so that applying it later cannot fail)."""
    if not isinstance(saved, Tensor):
        raise ValueError(f"state part {_show(where)} is {_kind(saved)}, expected a generator state (a uint8 tensor)")
    try:
        torch.Generator().set_state(saved)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"state part {_show(where)} is not a generator state: {e}") from None


@dataclass
class WorkerState:
    """State of ``N`` workers: ``staleness`` and the ``(N, d)`` buffers the members asked for
    (``anchor`` for a lazy trigger, ``error`` for error feedback, ...)."""

    staleness: Tensor  # (N,) int64: rounds since the last upload (1 right after one)
    buffers: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def create(cls, n: int, d: int, names, device=None, dtype=torch.float32) -> "WorkerState":
        """Zero buffers: a name gets an ``(n, d)`` one, a ``(name, width)`` pair an ``(n, width)``
        one (e.g. one number per worker)."""
        specs = [(entry, d) if isinstance(entry, str) else (entry[0], int(entry[1])) for entry in names]
        return cls(
            staleness=torch.ones(n, dtype=torch.long, device=device),
            buffers={name: torch.zeros(n, width, device=device, dtype=dtype) for name, width in specs},
        )

    @property
    def num_workers(self) -> int:
        return self.staleness.shape[0]

    def buffer(self, name: str) -> Tensor:
        return self.buffers[name]

    @property
    def error(self) -> Tensor | None:
        """The error-feedback memory e_m, if the algorithm keeps one."""
        return self.buffers.get("error")

    @property
    def anchor(self) -> Tensor | None:
        """The parameters at each worker's last upload, if the trigger keeps them."""
        return self.buffers.get("anchor")

    def state_dict(self) -> dict:
        return {"staleness": self.staleness.clone(), "buffers": {k: v.clone() for k, v in self.buffers.items()}}

    def check_state_dict(self, state, where: str = "workers") -> None:
        """Raise a ``ValueError`` naming what is missing or wrong in ``state``; changes nothing."""
        saved = state.get("buffers") if isinstance(state, Mapping) else None
        if isinstance(saved, Mapping) and set(saved) != set(self.buffers):
            missing, extra = sorted(set(self.buffers) - set(saved)), sorted(set(saved) - set(self.buffers))
            what = "is missing" if missing else "is not kept by this algorithm"
            raise ValueError(
                f"state part {part_name(part_name(where, 'buffers'), (missing or extra)[0])!r} {what}: the state "
                f"holds buffers {sorted(saved)}, this algorithm keeps {sorted(self.buffers)} (saved by another "
                "algorithm?)"
            )
        check_like(state, {"staleness": self.staleness, "buffers": self.buffers}, where)
        if state["staleness"].numel() and int(state["staleness"].min()) < 1:
            raise ValueError(f"state part {part_name(where, 'staleness')!r} holds a value < 1 (rounds since an upload)")

    def load_state_dict(self, state: dict) -> None:
        self.check_state_dict(state)
        self._apply(state)

    def _apply(self, state: dict) -> None:
        """Copy a checked state in (into these buffers: their dtype and device)."""
        self.staleness.copy_(state["staleness"])
        for k, v in self.buffers.items():
            v.copy_(state["buffers"][k])


@dataclass
class ServerState:
    """What the server holds: the last message of every worker and the recent squared steps.

    ``buffers``: a compressor's server-side state by name (``powersgd``: its warm-start ``Q``),
    saved under ``buffers`` only when there is any (every other algorithm's state is unchanged)."""

    last: Payload  # M messages, q_m (or a memory's own per-worker store: ef21's estimates h_m)
    step_sq: Tensor  # (history,) float64, oldest first: ||theta^{j+1} - theta^j||^2
    iteration: int = 0
    buffers: dict[str, Tensor] = field(default_factory=dict)

    def push_step(self, step_sq: float) -> None:
        if self.step_sq.numel():
            self.step_sq = torch.roll(self.step_sq, -1)
            self.step_sq[-1] = step_sq

    def state_dict(self) -> dict:
        state = {"last": self.last.state_dict(), "step_sq": self.step_sq.clone(), "iteration": self.iteration}
        if self.buffers:
            state["buffers"] = {k: v.clone() for k, v in self.buffers.items()}
        return state

    def check_state_dict(self, state, where: str = "server") -> None:
        """Raise a ``ValueError`` naming what is missing or wrong in ``state``; changes nothing."""
        step_sq = state.get("step_sq") if isinstance(state, Mapping) else None
        if isinstance(step_sq, Tensor) and step_sq.shape != self.step_sq.shape:
            raise ValueError(
                f"state part {part_name(where, 'step_sq')!r}: saved window of {tuple(step_sq.shape)} steps, this "
                f"run keeps {tuple(self.step_sq.shape)} (another window D or --window-sum?)"
            )
        expected = {"last": self.last.state_dict(), "step_sq": self.step_sq, "iteration": at_least(0)}
        if self.buffers:
            expected["buffers"] = self.buffers
        check_like(state, expected, where)

    def load_state_dict(self, state: dict) -> None:
        self.check_state_dict(state)
        self._apply(state)

    def _apply(self, state: dict) -> None:
        # Into the buffers this state already has: a checkpoint saved in another dtype or on
        # another device (CPU -> GPU) takes this run's, as torch.optim's load_state_dict does.
        self.last.load_state_dict(state["last"])
        self.step_sq = state["step_sq"].clone().to(self.step_sq)
        self.iteration = int(state["iteration"])
        for k, v in self.buffers.items():
            v.copy_(state["buffers"][k])
