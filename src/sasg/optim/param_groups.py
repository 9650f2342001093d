"""``sasg.optim.SASG``'s parameter groups: which keys a group may hold, their checks, and the
parameters' de-duplication. The defaults give plain SASG, bit for bit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from .. import validation

# What a group may hold besides "params" and "lr": the update's hyperparameters and their defaults
# (the defaults give plain SASG, bit for bit).
UPDATE_DEFAULTS = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
                   "decoupled_weight_decay": False}
# Keys torch.optim or an lr scheduler put into a group for their own bookkeeping; SASG never reads them.
_BOOKKEEPING = ("param_names", "initial_lr")
# Keys other optimizers take, refused with the reason.
_REFUSED = {
    "maximize": "the messages carry lr times the gradient of the loss the closure returns; "
                "to maximize f, return -f from the closure",
    "foreach": "the update is a few operations on one flat vector; there is no per-tensor kernel to choose",
    "fused": "the update is a few operations on one flat vector; there is no per-tensor kernel to choose",
    "differentiable": "step() sends messages and runs under torch.no_grad(); it cannot be differentiated through",
    "capturable": "a round reads the lazy rule's decision and exchanges messages on the host; "
                  "it cannot be captured in a CUDA graph",
}
_ADAPTIVE = ("betas", "eps", "amsgrad", "alpha", "centered", "rho", "lr_decay", "initial_accumulator_value")


def _known_keys() -> str:
    return ", ".join(["params", "lr", *UPDATE_DEFAULTS])


def _check_group_keys(group: Mapping) -> None:
    """Every key of a group SASG is given must be one it uses: anything else is a ValueError
    naming the key, why (where a key is known from another optimizer) and what is supported."""
    for key in group:
        if key in ("params", "lr", *UPDATE_DEFAULTS, *_BOOKKEEPING):
            continue
        if key in _REFUSED:
            why = _REFUSED[key]
        elif key in _ADAPTIVE:
            why = ("SASG's update is SGD with momentum on the aggregated step; adaptive per-coordinate "
                   "scaling (Adam, RMSprop, Adagrad) is not part of it")
        else:
            why = "SASG does not know it"
        raise ValueError(f"SASG parameter groups do not take {key!r}: {why}; a group takes {_known_keys()}")


def _bad_value(key: str, message: str) -> ValueError:
    """A plain ``ValueError`` (what a user's traceback shows) for a group's value SASG cannot use;
    its ``key`` attribute names the value, so a checkpoint load can say where it was."""
    error = ValueError(message)
    error.key = key
    return error


# A group's values and their checks (sasg.validation): each returns the value or raises ValueError.
_UPDATE_CHECKS = (
    ("lr", validation.lr),
    ("momentum", partial(validation.number, ge=0, lt=1, fix="e.g. momentum=0.9")),
    ("dampening", partial(validation.number, ge=0, le=1, fix="e.g. dampening=0")),
    ("weight_decay", partial(validation.number, ge=0, fix="e.g. weight_decay=1e-4")),
    ("nesterov", validation.flag),
    ("decoupled_weight_decay", validation.flag),
)


def _check_update(group: Mapping) -> tuple[float, float, float, float, bool, bool]:
    """``(lr, momentum, dampening, weight_decay, nesterov, decoupled_weight_decay)`` of a group,
    checked (a scheduler or the user may have changed them since the last step)."""
    checked = {}
    for key, check in _UPDATE_CHECKS:
        try:
            checked[key] = check(group[key], key)
        except ValueError as e:
            raise _bad_value(key, str(e)) from None
    lr, momentum, dampening, weight_decay, nesterov, decoupled = (
        checked[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "decoupled_weight_decay"))
    momentum, dampening, weight_decay = float(momentum), float(dampening), float(weight_decay)
    if nesterov and (momentum == 0 or dampening != 0):
        raise _bad_value(
            "nesterov",
            "nesterov needs momentum > 0 and dampening 0: its look-ahead step u + momentum * b is "
            f"defined for undamped heavy-ball momentum (got momentum {momentum:g}, dampening {dampening:g})"
        )
    return lr, momentum, dampening, weight_decay, nesterov, decoupled


def _no_duplicates(params) -> list:
    """``params`` as a list, refused when a tensor comes twice (``params + params[:1]``): torch
    only warns, and its gradient would be sent, and counted, twice."""
    out, seen = [], set()
    for item in params:
        tensors = item.get("params", []) if isinstance(item, Mapping) else [item]
        tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)  # a generator is read once
        out.append({**item, "params": tensors} if isinstance(item, Mapping) else item)
        for t in tensors:
            t = t[1] if isinstance(t, tuple) and len(t) == 2 else t  # named_parameters(): (name, tensor)
            if id(t) in seen:
                shape = tuple(t.shape) if isinstance(t, Tensor) else "?"
                raise ValueError(
                    f"SASG got the same parameter (shape {shape}) twice; pass each tensor once, "
                    "e.g. model.parameters()"
                )
            seen.add(id(t))
    return out


def _buffers_to_restore(restore_buffers) -> list[Tensor]:
    """``restore_buffers`` (e.g. ``model.buffers()``) as a list of tensors; ``None``: none."""
    if restore_buffers is None:
        return []
    restore_buffers = list(restore_buffers)
    bad = next((b for b in restore_buffers if not isinstance(b, Tensor)), None)
    if bad is not None:
        raise ValueError(f"restore_buffers must be tensors (e.g. model.buffers()), got {type(bad).__name__}")
    return restore_buffers


@dataclass
class TrainedTensors:
    """Which of the groups' tensors SASG trains and where each group's part of the flat vector lies.

    Frozen tensors get no gradient and empty ones have nothing to send: they stay out of the
    message layout (torch.optim skips them too), so they cost no bits and no top-k slots."""

    given: list[Tensor]  # all groups' tensors in order, as torch.optim numbers them in state_dict()
    params: list[Tensor]  # the trained ones (requires_grad, not empty), in that order
    indices: list[int]  # their indices in ``given``: the keys of their entries in state_dict()["state"]
    spans: list[tuple[int, int]]  # each group's [start, end) in the flat vector (its tensors lie together)

    @classmethod
    def of(cls, param_groups: list[dict]) -> "TrainedTensors":
        """The groups' tensors, checked: some, all on one device with one floating dtype, some trained."""
        given: list[Tensor] = [p for group in param_groups for p in group["params"]]
        if not given:
            raise ValueError("SASG got no parameters")
        first = given[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in given):
            raise ValueError("SASG needs all parameters on one device with one dtype")
        if not first.is_floating_point():
            raise ValueError(f"SASG needs floating-point parameters, got {first.dtype}")
        indices = [i for i, p in enumerate(given) if _trained(p)]
        if not indices:
            raise ValueError("SASG got no trainable parameters (all have requires_grad=False or are empty)")
        sizes = [sum(p.numel() for p in g["params"] if _trained(p)) for g in param_groups]
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        return cls(given, [given[i] for i in indices], indices,
                   [(end - size, end) for size, end in zip(sizes, ends)])


def _trained(p: Tensor) -> bool:
    return p.requires_grad and p.numel() > 0
