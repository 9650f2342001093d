"""Parameters that DDP leaves out of a step, and what the hook gives back for them.

With ``find_unused_parameters=True``, DDP fills an unused parameter's place in its bucket with
zeros and calls the hook as usual. At the end of the backward pass it counts, over the ranks,
who used each parameter, and leaves the ``.grad`` of a parameter that no rank used untouched:
``None`` after ``zero_grad()``, so the optimizer skips it (PyTorch's "globally unused"
parameters). Whatever the hook's aggregate held for it never reaches the step.

Under error feedback that aggregate is not empty: each rank's memory of the tensor still holds
what earlier rounds did not send, top-k picks some of it, and the memory subtracts it as sent. A
multi-task head or an expert that sits out a step would lose that part of its gradient for good
(``benchmarks/user_models.py`` shows what it cost). So after DDP's end of the backward pass, every
rank gives its memory back what its own message held for those tensors, which it then still has
to send. No rank's gradient of such a tensor is anything but zero, so the memory is then what it
was before the round: ``e - decoded(q) + decoded(q)`` is ``e`` bit for bit where the message sent
values as they are (top-k, a lossless codec), as if the round had not touched the tensor, which is
what DDP and the optimizer did.

Not under DGC's momentum correction (momentum SGD): there the memory has also taken in the
velocity, which keeps moving while the optimizer freezes the tensor, and giving the sent part
back trained an idle head worse (``benchmarks/user_models.py``, ``heads-momentum``) than losing
it, as before. Undoing the round there needs the memory and velocity from before it.

The count is DDP's own (``reducer._get_local_used_map()``, a private method: where it is gone, the
hook warns once at ``register`` and trains as before). Under ``gradient_as_bucket_view=True`` an
unused parameter whose ``.grad`` is already its bucket view does take the aggregate (its
``.grad`` *is* the bucket), so it is not counted as dropped.
"""

from __future__ import annotations

import warnings
import weakref

import torch


class UnusedParameters:
    """Which of the hook's tensors DDP left without a gradient in the backward pass that just ended
    (:meth:`dropped`), for one DDP model with ``find_unused_parameters=True``."""

    def __init__(self, ddp_model, index, variables: list[int]):
        self._ddp = weakref.ref(ddp_model)  # (the model holds the hook that holds this)
        self._bucket_view = bool(getattr(ddp_model, "gradient_as_bucket_view", False))
        self._params = index.params
        self._variables = variables  # tensor number -> DDP's variable index

    @classmethod
    def of(cls, ddp_model, index) -> "UnusedParameters | None":
        """The watcher for ``ddp_model``, or None where DDP hands every parameter its gradient
        (``find_unused_parameters=False``) or where its count cannot be read (a warning says so)."""
        if not getattr(ddp_model, "find_unused_parameters", False):
            return None
        reducer = getattr(ddp_model, "reducer", None)
        variables = _variable_numbers(ddp_model, index)
        if reducer is None or not hasattr(reducer, "_get_local_used_map") or variables is None:
            warnings.warn(
                "sasg.ddp: cannot read which parameters DDP left unused (find_unused_parameters=True) in this "
                "torch version; a parameter that no rank uses in a step loses what its error memory sent then",
                RuntimeWarning, stacklevel=3)
            return None
        return cls(ddp_model, index, variables)

    def dropped(self) -> list[int]:
        """The hook's tensor numbers whose aggregate DDP did not put into ``.grad`` this backward
        pass (call after DDP's end of the backward pass)."""
        ddp = self._ddp()
        if ddp is None:
            return []
        used = ddp.reducer._get_local_used_map()
        if bool(used.all()):
            return []
        counts = used.tolist()
        return [i for i, (p, v) in enumerate(zip(self._params, self._variables))
                if v < len(counts) and counts[v] == 0 and (p.grad is None or not self._bucket_view)]

    def after_round(self, state, sent: bool) -> None:
        """At the end of a hook round of ``state`` (a HookState; ``sent``: did this rank send):
        once DDP has ended the backward pass, give back what it left out of the step."""
        queue = torch.autograd.Variable._execution_engine.queue_callback
        # DDP queues its end of the backward pass, where it leaves the parameters no rank used
        # alone, after the hook returns; a callback queued from a callback runs after it.
        queue(lambda: queue(lambda: self._give_back(state, sent)))

    def _give_back(self, state, sent: bool) -> None:
        dropped = self.dropped()
        state.dropped_by_ddp += len(dropped)
        if state._watch is not None:  # (their .grad is not the hook's: sasg.ddp.clipping.GradientWatch)
            state._watch.left_out(dropped)
        engine = state.engine
        error = engine.workers.buffers.get("error")
        # (Not under DGC: the module docstring says why.)
        if not (dropped and sent and state.momentum is None and error is not None
                and getattr(state.algorithm.memory, "name", None) == "ef"):
            return
        own = engine.server.last.to_dense()[state.transport.rank]  # this rank's message, decoded
        for i in dropped:
            seg = state.index.layout.segments[i]
            error[0, seg.offset : seg.end].add_(own[seg.offset : seg.end].to(error.dtype))


def _variable_numbers(ddp_model, index) -> list[int] | None:
    """Each of the hook's tensors' place among DDP's variables: the trained parameters module by
    module, each once, as DDP numbers them (``_build_params_for_reducer``); None where one has
    no place."""
    ignored = set(getattr(ddp_model, "parameters_to_ignore", ()) or ())
    number: dict[int, int] = {}
    for module_name, module in ddp_model.module.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and f"{module_name}.{name}" not in ignored and id(p) not in number:
                number[id(p)] = len(number)
    variables = [number.get(id(p)) for p in index.params]
    return None if any(v is None for v in variables) else variables


__all__ = ["UnusedParameters"]
