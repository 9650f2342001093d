"""``SASG``: a ``torch.optim`` optimizer that runs one worker of SASG (or a baseline) per process.

Drop it into a training loop in place of ``torch.optim.SGD`` + DDP::

    opt = sasg.optim.SASG(model.parameters(), lr=0.05, density=0.01, window=10, c=2.0)
    for x, y in loader:                      # this rank's minibatches
        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        loss = opt.step(closure)

Like ``torch.optim.LBFGS``, ``step`` takes a closure: it evaluates it at the current parameters
and, when the lazy rule needs it, once more at this worker's *anchor* (its parameters at its last
upload) on the same minibatch — the second gradient of the LASG-WK2 rule. ``step`` clears
``.grad`` before each evaluation (the closure need not) and leaves the fresh gradient in ``.grad``.

Under ``torchrun`` (an initialised default process group) it is one of M workers: flags and
payloads go through :class:`sasg.distributed.TorchTransport`, each rank keeps a replica of the
server, so all ranks hold the same parameters after every step without broadcasting them. In a
single process (no process group) it is one worker (M = 1). ``lr`` is the step on the **mean** of
the M workers' gradients, as with DDP. The round itself is :class:`sasg.engine.RoundEngine`, the
same code the simulator and the ``sasg launch`` runner use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Iterable

import torch
from torch import Tensor

from .. import validation
from ..validation import MAX_ROUNDS
from ..core.layout import Layout
from ..core.momentum import compressed_entries
from ..core.spec import AlgorithmSettings, AlgorithmSpec
from ..runtime import EngineViews, build_algorithm, build_engine, process_transport
from .learning_rates import LearningRates
from .param_groups import TrainedTensors, _buffers_to_restore, _check_group_keys, _check_update, _no_duplicates
from .optimizer_state import SASGCheckpoint
from .rng import cuda_rng_device
from .stepping import SASGStep


class SASG(SASGCheckpoint, SASGStep, LearningRates, EngineViews, torch.optim.Optimizer):
    r"""SASG (or ``algorithm="sgd" | "sparse" | "lasg"``) as a ``torch.optim.Optimizer``.

    One step of worker :math:`m` of :math:`M` (one per process), with :math:`\eta` = ``lr``,
    :math:`D` = ``window``, :math:`c` = ``c``, :math:`\tau_m` the rounds since its last upload,
    :math:`\hat\theta_m` the parameters at its last upload and :math:`e_m` its error memory:

    .. math::
        g &= \nabla \ell(\theta^k; \xi_m^k) \quad\text{(the closure)} \\
        \text{upload} &\iff k < D \;\lor\; \tau_m > D \;\lor\;
            \|g - \nabla\ell(\hat\theta_m; \xi_m^k)\|^2 >
            \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2 \\
        \text{on upload:}\quad v &= \tfrac{\eta}{M} g + e_m,\quad q_m = \mathrm{TopK}(v),
            \quad e_m = v - q_m,\quad \hat\theta_m = \theta^k \\
        s^k &= \textstyle\sum_{m} q_m
            \quad\text{(a skipper's last message stands in for it)} \\
        \theta^{k+1} &= \theta^k - s^k \quad\text{(the defaults; the update in general is below)}

    ``TopK`` keeps ``max(1, floor(density * numel))`` entries of every parameter tensor. The
    baselines switch parts off: ``sgd`` always uploads and sends dense, ``sparse`` always uploads,
    ``lasg`` sends dense.

    **Momentum and weight decay** act on the aggregated step :math:`s^k`, which every rank holds
    alike (each keeps a replica of the server): they are never sent, compressed, error-fed or
    skipped. With :math:`\mu` = ``momentum``, :math:`\delta` = ``dampening``, :math:`\lambda` =
    ``weight_decay`` and :math:`b` the momentum buffer (in ``state[p]["momentum_buffer"]``):

    .. math::
        u &= s^k + \eta\lambda\,\theta^k \quad\text{(coupled, the default; } u = s^k
            \text{ when decoupled)} \\
        b^k &= \begin{cases} u & \text{the first step with } \mu > 0 \\
                              \mu\, b^{k-1} + (1-\delta)\, u & \text{after} \end{cases} \qquad
        d = \begin{cases} u + \mu\, b^k & \text{nesterov} \\ b^k & \text{else} \end{cases}
            \qquad (d = u \text{ when } \mu = 0) \\
        \theta^{k+1} &= \theta^k - d \quad\text{(coupled)}, \qquad
        \theta^{k+1} = (1 - \eta\lambda)\,\theta^k - d \quad\text{(decoupled)}

    With one worker, ``algorithm="sgd"`` and a constant lr this is ``torch.optim.SGD`` with the
    same momentum, dampening, nesterov and weight_decay (``decoupled_weight_decay=True``: SGDW),
    to float rounding, since :math:`s^k = \eta g`. The buffer is kept in step units (lr already
    inside, as the messages have it, error memory included): :math:`s^k/\eta` is not a gradient
    once the error memory holds residuals made at other lrs, nor defined at lr = 0. So when a
    scheduler changes lr, the change reaches the step through the buffer over a few steps, and at
    lr = 0 the parameters coast on the buffer, which decays by :math:`\mu` per step. With the
    defaults (:math:`\mu = \lambda = 0`) every number is the plain update above, bit for bit.

    Weight decay and the lazy rule: the decay term is computed from the current
    :math:`\theta^k` every round, on every rank, whether or not anyone uploaded; a skipper's stale
    message carries its old loss gradient only, never an old decay term. The lazy rule's window
    sums the parameters' real steps :math:`\|\theta^{j+1}-\theta^j\|^2`, the ones momentum and
    decay make (with neither, the aggregated message steps :math:`\|s^j\|^2`, bit for bit). L2 *inside* the messages is not offered: :math:`\lambda\theta` is dense and the same on
    every rank, so sending it would spend top-k slots on it, error feedback would delay it and a
    skipper's message would carry it from its anchor. To have it anyway, add
    :math:`\tfrac{\lambda}{2}\|\theta\|^2` to the loss in the closure: it is then part of the
    gradient, compressed and skipped like the rest.

    **Recipes.** ``step`` may evaluate the closure twice on the same minibatch (the lazy rule's
    gradient at the anchor), replaying the CPU generator and that of the parameters' CUDA device
    (dropout masks), so everything the closure uses must be fixed before ``step`` (capture the
    batch, never draw it inside). Mixed precision: run the forward pass under autocast inside the
    closure and ``backward()`` outside it; bf16 needs no loss scaling, and parameters, gradients,
    messages and error memory stay in the parameters' dtype (``torch.amp.GradScaler`` cannot
    step an optimizer with a closure, so fp16 is not a recipe here)::

        def closure():
            with torch.autocast("cuda", dtype=torch.bfloat16):   # "cpu" on the CPU
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

    Gradient accumulation: split the batch inside the closure and call ``backward()`` once per
    micro-batch; the gradients add up in ``.grad`` (``step`` clears it before each evaluation).
    Divide each loss by the number of micro-batches to get the mean over the whole batch::

        def closure():
            total = 0.0
            for xb, yb in zip(x.chunk(k), y.chunk(k)):
                loss = F.cross_entropy(model(xb), yb) / k
                loss.backward()
                total += loss.detach()
            return total

    Args:
        params: the model's parameters, or parameter groups (dicts with ``params`` and any of
            ``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``nesterov``,
            ``decoupled_weight_decay``; any other key is a ``ValueError`` that names it). Each
            group's momentum and weight decay act on its part of the aggregated step (e.g. no weight
            decay on biases and norms). Groups may have their own lr unless the trigger is lazy: a
            lazy rule's threshold divides by one lr, so it refuses lrs that differ, at construction
            or at the step where a scheduler makes them differ. With differing lrs each message
            carries its group's lr (the engine scales by the largest, the gradient of a group by its
            lr over that one). Tensors with ``requires_grad=False``
            (frozen) and empty tensors are left alone and never sent; the set of trained tensors
            is fixed here, as every rank must agree on the message layout.
        lr: step size on the **mean** of the workers' gradients (eta), as with DDP. The paper's
            alpha on the sum is ``lr / M``. A scheduler may change it, down to 0.
        density: top-k keeps ``max(1, floor(density * numel))`` entries of every tensor.
        window: D, the lazy rule's window and the most skips in a row.
        c: the lazy rule's threshold scale (larger c: lower threshold, more uploads).
        algorithm: ``sasg`` (default), ``lasg``, ``sparse``, ``sgd``, or any composition
            ``TRIGGER+COMPRESSOR[+MEMORY]`` of registered members (``sasg list``; a plug-in
            registers its own by being imported).
        transport: where messages go; default: the default process group if one is initialised
            (``group`` picks another), else this process alone.
        broadcast_initial: copy rank 0's parameters to every rank once, at construction (as DDP
            does), so ranks start identical even if their models were initialised differently.
            Buffers are not copied: pass identically initialised models if they matter.
        restore_buffers: tensors (e.g. ``model.buffers()``) put back after the anchor evaluation,
            so BatchNorm running statistics only see the fresh forward pass.
        codec: how messages become bytes, and so what the ledger counts (default: the algorithm's
            natural codec, ``paper32`` for the paper's four, ``elias`` for QSGD; ``paper32``: int32 index +
            32-bit value; or ``INDEX+VALUE`` such as ``rice+sign``, see ``sasg list``). With a lossy
            value format the parameters move by the decoded message and error feedback keeps the
            rest.
        seed: derives this worker's generator for randomized members, from (seed, rank): use the
            same seed on every rank, as the simulator does.
        window_sum: ``"D-1"`` (default, the paper's formula) or ``"D"``: how many of the last
            server steps the lazy threshold sums (``--window-sum``).
        threshold_lr_lag: the lazy threshold divides by the lr this optimizer used that many
            **steps** earlier (the lr of step ``max(0, k - lag)``; default 0: this step's lr). An
            optimizer knows no epochs: for the CLI's ``--threshold-lr-lag 1`` pass the steps of one
            epoch (e.g. ``len(loader)``). It matters only when a scheduler changes the lr.
        momentum: heavy-ball momentum on the aggregated step, in [0, 1) (default 0: none).
        dampening: dampening of the momentum buffer's new term, in [0, 1] (default 0).
        weight_decay: lambda >= 0 (default 0), applied on the aggregated step, never sent.
        nesterov: Nesterov's look-ahead (needs momentum > 0 and dampening 0).
        decoupled_weight_decay: False (default): the decay term joins the step before momentum, as
            in ``torch.optim.SGD``; True: the parameters shrink by ``1 - lr * weight_decay``
            outside momentum (SGDW / AdamW style).
        aggregate: what the round steps by when workers skip: ``"last"`` (default, the paper's:
            every worker's last message), ``"senders"`` (the round's messages scaled to all M
            workers) or ``"rotating"`` (``"senders"``, with worker k mod M uploading in round k so
            that no round is empty; :mod:`sasg.core.aggregate`).

    Example (under ``torchrun``; in one process it is the single worker M = 1)::

        >>> opt = SASG(model.parameters(), lr=0.05, density=0.01, window=10, c=2.0)
        >>> def closure():
        ...     loss = F.cross_entropy(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.ledger.totals()["uploads"]          # what this run has sent so far
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        density: float = 0.01,
        window: int = 10,
        c: float = 2.0,
        *,
        algorithm: str = "sasg",
        transport=None,
        group=None,
        broadcast_initial: bool = True,
        restore_buffers: Iterable[Tensor] | None = None,
        codec: str | None = None,
        seed: int = 0,
        window_sum: str = "D-1",
        threshold_lr_lag: int = 0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        decoupled_weight_decay: bool = False,
        tensor_policy: str = "all",
        warmup: int = 0,
        momentum_correction: bool = False,
        aggregate: str = "last",
    ):
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "decoupled_weight_decay": decoupled_weight_decay}
        _check_update(defaults)
        validation.seed(seed)
        self._lag = validation.integer(threshold_lr_lag, "threshold_lr_lag", ge=0, le=MAX_ROUNDS, unit="optimizer steps",
                                       fix="e.g. threshold_lr_lag=len(loader) for one epoch")
        self._lrs: deque = deque()  # (step, lr) where the lr changed, back to step k - lag
        validation.flag(broadcast_initial, "broadcast_initial")
        self._restore = _buffers_to_restore(restore_buffers)
        super().__init__(_no_duplicates(params), {**defaults, "lr": float(lr)})
        self._group_updates()  # every group's own values, where it set any
        trained = TrainedTensors.of(self.param_groups)
        self._plist, self._trained, self._spans = trained.params, trained.indices, trained.spans
        first = trained.params[0]
        # One flat momentum buffer b per group (None until its first step with momentum);
        # state[p]["momentum_buffer"] are views of it.
        self._buffers: list[Tensor | None] = [None] * len(self.param_groups)
        self._cuda_rng = cuda_rng_device(first.device)  # the generator dropout on these parameters uses
        self.layout = Layout((str(i), tuple(p.shape)) for i, p in enumerate(self._plist))
        # One validated spec (the CLI's): every algorithm checks all three knobs, also those it
        # ignores, so a typo fails the same way whichever algorithm it was written for.
        self.spec = AlgorithmSpec.parse(algorithm, AlgorithmSettings(density, window, c, window_sum,
                                                                     tensor_policy=tensor_policy, warmup=warmup,
                                                                     aggregate=aggregate))
        validation.flag(momentum_correction, "momentum_correction")
        if momentum_correction and any(g["nesterov"] or g["dampening"] or g["decoupled_weight_decay"]
                                       for g in self.param_groups):
            raise ValueError("momentum_correction works with plain heavy-ball momentum and coupled weight decay: "
                             "nesterov, dampening and decoupled_weight_decay must be off")
        # DGC's local velocity (gradient units), when momentum is corrected (see step)
        self._velocity = torch.zeros(self.layout.numel, device=first.device, dtype=first.dtype) \
            if momentum_correction else None
        self._compressed = compressed_entries(self.layout, self.spec.settings.tensor_policy, first.device) \
            if momentum_correction else None
        self.algorithm = build_algorithm(self.spec, self.layout, codec)
        self._one_lr([u[0] for u in self._group_updates()])
        if transport is None:  # the default process group's, if one is initialised (else this process alone)
            transport = process_transport(first.device, group)
        elif group is not None:
            raise ValueError("pass either transport or group, not both")
        if transport is not None and len(transport.local_workers) != 1:
            raise ValueError("SASG runs one worker per process: its transport must hold exactly one worker")
        self.engine = build_engine(self.algorithm, transport, seed=seed, device=first.device, dtype=first.dtype)
        self.transport = self.engine.transport
        if broadcast_initial:
            self._broadcast_initial(trained.given)

    def _broadcast_initial(self, given: list[Tensor]) -> None:
        """Copy rank 0's parameters to every rank (frozen ones too: every rank starts from the same
        model), as DDP does at construction."""
        if self.transport.world_size == 1:
            return
        with torch.no_grad():
            for p in given:
                buf = p.detach().to(self.transport.device).contiguous()
                self.transport.broadcast_(buf, src=0)
                p.copy_(buf)

    def add_param_group(self, param_group: dict) -> None:
        # torch.optim.Optimizer.__init__ adds the groups through here; afterwards the message
        # layout is fixed (every rank must agree on it), so a new group cannot join.
        if getattr(self, "engine", None) is not None:
            raise ValueError(
                "SASG cannot add a parameter group after construction: the message layout is fixed; "
                "build a new SASG over all parameters instead"
            )
        if isinstance(param_group, Mapping):
            _check_group_keys(param_group)
        super().add_param_group(param_group)

    # ----- what the optimizer reports (also ledger and iteration, sasg.runtime.EngineViews) -------
    @property
    def num_workers(self) -> int:
        return self.engine.num_workers
