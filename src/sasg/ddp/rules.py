"""Which algorithms run inside a DDP communication hook, and with what help.

A hook sees one gradient per rank and round, the one DDP's backward pass just produced, and must
hand back the aggregate before the optimizer steps. Every compressor, memory and codec works on
that, and so do the lazy rules that compare the fresh gradient with one the worker kept
(``wk1``, ``ps``, ``clag``). A rule that compares it with a *second* gradient at the worker's
anchor on the same minibatch (``wk2``: the ``sasg`` and ``lasg`` aliases; a trigger that declares
``needs_stale_grads = True``) needs the training loop's help: a hook cannot run another
forward/backward pass, so the loop calls :meth:`sasg.ddp.HookState.second_gradient` with its
loss before ``loss.backward()`` (docs/ddp-hook.md, "SASG in a DDP job").
"""

from __future__ import annotations

from ..core.declared import capability, default_memory
from ..core.layout import Layout
from ..core.registry import REGISTRIES
from ..core.spec import AlgorithmSettings, AlgorithmSpec

_PROBE = Layout([("probe", (8,))])


def hook_triggers(second_gradient: bool = False) -> list[str]:
    """The registered triggers that run in a hook on DDP's gradient alone (``always``, ``wk1``,
    ``ps``, ``clag`` and any plug-in that says so), in registration order; with
    ``second_gradient=True`` also those that need the loop's :meth:`~sasg.ddp.HookState.second_gradient`
    (``wk2``). Read from what each trigger declares where it registers (its ``needs_stale_grads``,
    :mod:`sasg.core.capabilities`): nothing is built."""
    names = []
    for entry in REGISTRIES["trigger"].entries():
        try:
            needs = capability(entry, "needs_stale_grads")
        except Exception:  # an older plug-in that declares nothing and cannot be built on a small layout
            continue
        if second_gradient or not needs:
            names.append(entry.name)
    return names


# The hook's defaults for a practitioner's job (the simulator and the presets keep the paper's):
# 1-D and small tensors sent whole, and this many dense rounds first; each where the algorithm's
# members allow it (a compressor that sends tensors whole; the memories ef and none), else off.
DEFAULT_TENSOR_POLICY = "auto"
DEFAULT_WARMUP = 5
# ... and, for a lazy rule, the round's messages scaled to M where a rank skips: repeating a
# skipper's last top-k message every skipped round cost 3-15 points with momentum SGD and AdamW
# (sasg.core.aggregate, benchmarks/hook_lazy.py); where the members allow it, else "last". With
# ranks taking turns so that no round is empty ("rotating"), where the rule can; under Adam/AdamW
# without (the hook lets Adam coast through an empty round instead, which skips twice as often
# for the same accuracy).
DEFAULT_LAZY_AGGREGATE = "rotating"


def hook_algorithm(algo: str, *, tensor_policy: str | None = None, warmup: int | None = None,
                   aggregate: str | None = None, adam: bool = False, **settings) -> AlgorithmSpec:
    """``algo`` parsed with its knobs (``density``, ``window``, ``threshold_scale``,
    ``tensor_policy``, ``warmup``, ``aggregate``): the spec, or a ``ValueError`` saying what is
    wrong. ``tensor_policy``/``warmup``/``aggregate`` left ``None`` take the hook's defaults where
    the members allow them and are off otherwise (``randomk`` sends no tensor whole; ``ef21``'s
    server state leaves no room for dense rounds nor for dropping a skipper's slot; a plug-in rule
    that cannot take turns gets ``"senders"``). ``adam``: the job's optimizer is Adam/AdamW (a lazy
    rule's default aggregate is then ``"senders"``)."""
    spec = AlgorithmSpec.parse(algo, AlgorithmSettings(**settings))
    spec.build(_PROBE)  # members that refuse each other (clag without ef21) say so now
    # The defaults follow what the members declare where they register (sasg.core.capabilities).
    if tensor_policy is None:
        honours = capability(REGISTRIES["compressor"].get(spec.compressor), "honours_tensor_policy")
        tensor_policy = DEFAULT_TENSOR_POLICY if honours else "all"
    memory = default_memory(spec)
    if warmup is None:
        warmup = DEFAULT_WARMUP if memory in ("ef", "none") else 0
    if aggregate is None:
        lazy = capability(REGISTRIES["trigger"].get(spec.trigger), "lazy")
        keeps_messages = not capability(REGISTRIES["memory"].get(memory), "server_store")
        aggregate = "last"
        if lazy and keeps_messages:  # no turns under Adam, nor for a plug-in rule that cannot take them
            turns = not adam and _takes_turns(spec, settings, tensor_policy, warmup)
            aggregate = DEFAULT_LAZY_AGGREGATE if turns else "senders"
    return AlgorithmSpec.parse(algo, AlgorithmSettings(**settings, tensor_policy=tensor_policy, warmup=warmup,
                                                       aggregate=aggregate))


def _takes_turns(spec: AlgorithmSpec, settings: dict, tensor_policy: str, warmup: int) -> bool:
    """Does the rule of ``spec`` take turns under aggregate ``"rotating"`` (a plug-in may not)?"""
    rotating = AlgorithmSpec.parse(spec.name, AlgorithmSettings(**settings, tensor_policy=tensor_policy,
                                                                warmup=warmup, aggregate=DEFAULT_LAZY_AGGREGATE))
    try:
        rotating.build(_PROBE)
    except ValueError:
        return False
    return True
