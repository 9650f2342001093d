"""The communication hook and the one call that installs it.

No ``from __future__ import annotations`` here: DDP checks the hook's annotations against the
real ``dist.GradBucket`` and ``torch.futures.Future[torch.Tensor]`` types.
"""

import inspect

import torch
import torch.distributed as dist

from .rules import hook_algorithm
from .buckets import trained
from .hook_state import DEFAULT_CODEC, HookState
from .unused import UnusedParameters


def comm_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook running the sasg round (install it with :func:`register`, or hand
    it to a framework with a :class:`HookState`: ``DDPStrategy(ddp_comm_hook=comm_hook,
    ddp_comm_state=state)``).

    DDP calls it once per gradient bucket, in bucket order. The buckets of one backward pass are
    one round: each bucket's future completes when the last bucket has arrived, the whole
    model's gradient has been compressed, exchanged and aggregated, and every bucket holds its
    part of the aggregate (the mean of the decompressed messages). Where the round splits along
    tensors (``always+topk``, the default; ``HookState``'s ``overlap``), each part of the model is
    compressed and its exchange started as soon as its buckets are in, while the backward pass
    goes on."""
    return state.on_bucket(bucket)


def register(
    ddp_model,
    algo: str = "always+topk",
    codec: str = DEFAULT_CODEC,
    *,
    process_group=None,
    **options,
) -> HookState:
    """Install the sasg hook on a ``DistributedDataParallel`` model; returns its state.

    Args (``options``: every keyword :class:`HookState` takes, passed on to it; listed here):
        ddp_model: the DDP-wrapped model (call on every rank, after ``init_process_group``).
        algo: ``TRIGGER+COMPRESSOR[+MEMORY]``: ``always`` (every round), the lazy rules ``wk1``,
            ``ps``, ``clag``, or ``wk2`` (``sasg``, ``lasg``), which also needs the loop to call
            ``state.second_gradient(loss_fn)`` before each backward pass (see there).
        codec: how messages become bytes, and so what crosses the network and what the ledger
            counts: default ``rice+fp32`` (lossless, Golomb-Rice index gaps), ``paper32`` (the
            paper's count) or ``INDEX+VALUE`` such as ``rice+sign`` (see ``sasg list``).
        density, window, threshold_scale: the algorithm's knobs (top-k density h; the lazy rule's
            window D and threshold scale c).
        lr: lazy rules only: the optimizer's learning rate, as a number, a function returning the
            current one, or the optimizer itself (its first group's lr, read every round).
        start_iter: rounds of plain all-reduce before the first compressed round. Default 0: the
            state follows the model's parameters, not DDP's buckets, so the bucket rebuild after
            the first iteration needs no dense rounds, and the run is the simulator's from round 0.
        seed: derives each rank's generator for randomized members from (seed, rank), as the
            simulator does; the same on every rank.
        process_group: default: the DDP model's own group.
        optimizer: the optimizer that steps the model. Pass it: with ``torch.optim.SGD`` and
            momentum the hook applies DGC's momentum correction, with Adam/AdamW it freezes the
            second moment after the warm-up (``sasg.ddp.optimizers`` says why); it is also the lr
            source of the lazy rules when ``lr`` is not given.
        tensor_policy: which tensors travel whole inside the message (default ``auto``: 1-D
            tensors and tensors of at most 256 entries, where the compressor honours a policy;
            ``all``: compress every tensor, the paper's choice; see ``sasg.core.tensor_policy``).
        warmup: dense rounds first (every rank sends its whole gradient through the codec), then
            the algorithm starts as from round 0 (default 5, where the memory is ``ef`` or
            ``none``; 0 is the paper's setting).
        momentum_correction, freeze_variance: switch the optimizer-specific handling off.
        aggregate: what a round steps by where ranks skip (lazy rules): ``"rotating"`` (default for
            a lazy rule: the round's messages, scaled to all ranks, with rank k mod M sending in
            round k so that no round is empty), ``"senders"`` (the same without the turns; the
            default under Adam/AdamW, which coasts through a round nobody sent in) or ``"last"``
            (the paper's: every rank's last message stands; ``sasg.core.aggregate`` measures them).
        overlap: each part of the model compressed and exchanged as soon as its gradients are in,
            during the backward pass (default ``None``: wherever the algorithm allows, ``always``
            with ``topk``, on CPU/gloo; ``True`` insists, ``False`` waits for the whole gradient;
            the training is the same bit for bit; :class:`HookState` says more).
        step_metric: how a lazy rule measures the parameters' real steps: ``"auto"`` (in the units
            of what the rule compares: Adam's metric under Adam/AdamW, ``1 - momentum`` where
            momentum SGD meets a rule that compares gradients; ``sasg.ddp.HookState``) or
            ``"euclidean"``.
        scaler: the ``torch.amp.GradScaler`` of an fp16 job (``scaler.scale(loss).backward()``).
            Pass it: the hook then works on the unscaled gradient and lets a round with an inf or
            NaN on any rank not happen, so every rank's scaler skips that step and the hook's state
            stays finite (:mod:`sasg.ddp.loss_scale`; one 4-byte all-reduce a round, no overlap).
        clip_grad_norm: gradient clipping, in place of your own ``clip_grad_norm_`` call (drop
            it: it would clip the hook's aggregate, whose norm is several times the gradient's;
            the hook warns once if the gradients change between it and the step). Every rank's
            gradient is scaled, before it is compressed, by the factor ``clip_grad_norm_`` gives
            the mean gradient under DDP, its norm estimated from one all-reduce of a 1 KB sketch a
            round; ``state.grad_norm`` is that norm, ``state.clipped_rounds`` counts the rounds
            that clipped (:mod:`sasg.ddp.clipping`; no overlap). Under momentum SGD with a
            threshold that clips most rounds, ``momentum_correction=False`` did better
            (docs/ddp-hook.md, "Gradient clipping").

    The state keeps one rank's worker state in fp32 (also under bf16/fp16 autocast), exposes
    ``ledger`` and ``bits_by_rank``, and ``state_dict()``/``load_state_dict()`` for checkpoints.
    """
    # The algorithm first: a bad name or knob is refused before the model is looked at.
    _check_options(algo, options)
    named = _synced_parameters(ddp_model)
    group = process_group if process_group is not None else getattr(ddp_model, "process_group", None)
    state = HookState(named, algo, codec, process_group=group, module=ddp_model.module,
                      bucket_cap=getattr(ddp_model, "bucket_bytes_cap", None), **options)
    state.start()
    attach(state, ddp_model)
    ddp_model.register_comm_hook(state, comm_hook)
    return state


def attach(state: HookState, ddp_model) -> HookState:
    """Tell a hook installed by hand which DDP model calls it, as :func:`register` does for its own
    (``ddp_model.register_comm_hook(state, sasg.ddp.comm_hook)``, or Lightning's
    ``DDPStrategy(ddp_comm_hook=..., ddp_comm_state=state)``: ``examples/lightning_ddp.py``).

    Under ``find_unused_parameters=True`` the hook then sees which parameters DDP left out of a
    step: their error memory gets back what the round sent of them, which never reached the step
    (:mod:`sasg.ddp.unused`), and the gradient watch does not compare their old ``.grad``. Without
    it such a hook loses that part. ``state`` must follow ``ddp_model``'s trained parameters (those
    with ``requires_grad``, not empty), the same tensors (a ValueError otherwise). Returns ``state``."""
    named = trained(_synced_parameters(ddp_model, "sasg.ddp.attach"))  # (frozen ones have no gradient to follow)
    mine = state.index.params
    if len(named) != len(mine) or any(p is not q for (_, p), q in zip(named, mine)):
        raise ValueError(f"sasg.ddp.attach: the hook's state follows {len(mine)} parameter tensors that are not the "
                         f"{len(named)} trained ones this DDP model synchronises; make the state from the model DDP "
                         "wraps (HookState(ddp_model.module, ...)) and attach it to that DDP model")
    state._unused = UnusedParameters.of(ddp_model, state.index)  # (None where DDP hands every parameter over)
    return state


def _synced_parameters(ddp_model, caller: str = "sasg.ddp.register") -> list:
    """The ``(name, parameter)`` pairs DDP synchronises (its ``parameters_to_ignore`` left out):
    the hook's state follows exactly these. A model that is not DDP-wrapped is a TypeError saying
    how to wrap it, since a plain module has no buckets to hook."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(ddp_model, DistributedDataParallel):
        raise TypeError(
            f"{caller} needs a torch.nn.parallel.DistributedDataParallel model, "
            f"got {type(ddp_model).__name__}; "
            "wrap it first: model = DistributedDataParallel(model)"
        )
    ignored = set(getattr(ddp_model, "parameters_to_ignore", ()) or ())
    return [(n, p) for n, p in ddp_model.module.named_parameters() if n not in ignored]


# Set by register itself, not by its caller's options.
_REGISTER_SETS = ("model", "algo", "codec", "process_group", "module", "bucket_cap")


def _check_options(algo: str, options: dict) -> None:
    """What :func:`register` checks before it looks at the model: that ``options`` are keywords of
    :class:`HookState` (a TypeError naming the unknown ones and the valid ones) and that the
    algorithm and its knobs are valid (ValueError), with HookState's defaults."""
    params = inspect.signature(HookState.__init__).parameters
    valid = [k for k in params if k != "self" and k not in _REGISTER_SETS]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"sasg.ddp.register got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it takes algo, codec, process_group and {', '.join(valid)}")
    knob = {k: options.get(k, params[k].default)
            for k in ("density", "window", "threshold_scale", "tensor_policy", "warmup", "aggregate")}
    hook_algorithm(algo, **knob)
