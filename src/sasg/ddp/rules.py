"""Which algorithms run inside a DDP communication hook.

A hook sees one gradient per rank and round, the one DDP's backward pass just produced, and must
hand back the aggregate before the optimizer steps. Every compressor, memory and codec works on
that. A lazy rule that compares the fresh gradient with a *second* gradient at the worker's
anchor on the same minibatch (``wk2``, so the ``sasg`` and ``lasg`` aliases) does not: the hook
cannot run another forward/backward pass. Those rules declare ``needs_stale_grads = True``
(:func:`sasg.core.triggers.needs_stale_grads`); they run in :class:`sasg.optim.SASG` and
``sasg launch``.
"""

from __future__ import annotations

from ..core.layout import Layout
from ..core.registry import ALIASES, REGISTRIES
from ..core.spec import AlgorithmSettings, AlgorithmSpec
from ..core.triggers import needs_stale_grads

_PROBE = Layout([("probe", (8,))])


def hook_triggers() -> list[str]:
    """The registered triggers that run in a hook (built ones that never ask for a second
    gradient), in registration order: ``always``, ``wk1``, ``ps`` and any plug-in that says so."""
    names = []
    for entry in REGISTRIES["trigger"].entries():
        try:
            trigger = entry.factory(_PROBE, AlgorithmSettings())
        except Exception:  # a plug-in that cannot be built on a probe layout: not offered
            continue
        if not needs_stale_grads(trigger):
            names.append(entry.name)
    return names


def check_runs_in_hook(spec: AlgorithmSpec) -> None:
    """A ``ValueError`` naming the rules that work in a hook when ``spec``'s trigger needs a
    second gradient; nothing otherwise."""
    trigger = REGISTRIES["trigger"].get(spec.trigger).factory(_PROBE, spec.settings)
    if not needs_stale_grads(trigger):
        return
    usable = hook_triggers()
    aliases = [a for a, (comp, _) in ALIASES.items() if comp.split("+")[0] == spec.trigger]
    known_as = f" (the trigger of {', '.join(aliases)})" if aliases else ""
    example = next((t for t in usable if t != "always"), None)
    raise ValueError(
        f"algorithm {spec.name!r} uses the lazy rule {spec.trigger!r}{known_as}, which compares the fresh "
        "gradient with a second gradient at the worker's last upload point on the same minibatch; a DDP "
        "communication hook only sees the gradient DDP computed and cannot run a second backward pass. "
        f"Rules that work in a hook: {', '.join(usable)}"
        + (f" (e.g. algo='{example}+{spec.compressor}', a lazy rule without a second gradient)" if example else "")
        + f". For {spec.trigger!r} itself use sasg.optim.SASG (its closure re-evaluates the loss) or `sasg launch`."
    )


# The hook's defaults for a practitioner's job (the simulator and the presets keep the paper's):
# 1-D and small tensors sent whole, and this many dense rounds first; each where the algorithm's
# members allow it (a compressor that sends tensors whole; the memories ef and none), else off.
DEFAULT_TENSOR_POLICY = "auto"
DEFAULT_WARMUP = 5


def hook_algorithm(algo: str, *, tensor_policy: str | None = None, warmup: int | None = None,
                   **settings) -> AlgorithmSpec:
    """``algo`` parsed with its knobs (``density``, ``window``, ``threshold_scale``,
    ``tensor_policy``, ``warmup``) and checked to run in a hook: the spec, or a ``ValueError``
    saying what is wrong. ``tensor_policy``/``warmup`` left ``None`` take the hook's defaults
    where the members allow them and are off otherwise (``randomk`` sends no tensor whole;
    ``ef21``'s server state leaves no room for dense rounds)."""
    spec = AlgorithmSpec.parse(algo, AlgorithmSettings(**settings))
    check_runs_in_hook(spec)
    if tensor_policy is None:
        compressor = REGISTRIES["compressor"].get(spec.compressor).factory(_PROBE, spec.settings)
        tensor_policy = DEFAULT_TENSOR_POLICY if getattr(compressor, "honours_tensor_policy", False) else "all"
    if warmup is None:
        memory = spec.build(_PROBE).memory.name
        warmup = DEFAULT_WARMUP if memory in ("ef", "none") else 0
    return AlgorithmSpec.parse(algo, AlgorithmSettings(**settings, tensor_policy=tensor_policy, warmup=warmup))
