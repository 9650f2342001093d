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

from collections.abc import Mapping
from numbers import Integral
from typing import Callable, Iterable

import torch
from torch import Tensor

from ..config import MAX_SEED
from ..core.layout import Layout
from ..core.spec import AlgorithmSettings, AlgorithmSpec, check_codec
from ..core.state import check_like, part_name
from ..engine import InProcessTransport, RoundEngine


def _check_lr(lr) -> float:
    """A finite lr >= 0 (a scheduler may take it down to 0), as a float."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 <= lr < float("inf")):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    return float(lr)


class SASG(torch.optim.Optimizer):
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
        \theta^{k+1} &= \theta^k - \textstyle\sum_{m} q_m
            \quad\text{(a skipper's last message stands in for it)}

    ``TopK`` keeps ``max(1, floor(density * numel))`` entries of every parameter tensor. The
    baselines switch parts off: ``sgd`` always uploads and sends dense, ``sparse`` always uploads,
    ``lasg`` sends dense.

    Args:
        params: the model's parameters (one parameter group; one lr for all). Tensors with
            ``requires_grad=False`` (frozen) and empty tensors are left alone and never sent; the
            set of trained tensors is fixed here, as every rank must agree on the message layout.
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
        codec: how messages become bytes, and so what the ledger counts (``paper32``: int32 index +
            32-bit value; or ``INDEX+VALUE`` such as ``rice+sign``, see ``sasg list``). With a lossy
            value format the parameters move by the decoded message and error feedback keeps the
            rest.
        seed: derives this worker's generator for randomized members, from (seed, rank): use the
            same seed on every rank, as the simulator does.

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
        codec: str = "paper32",
        seed: int = 0,
    ):
        _check_lr(lr)
        if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
        if not isinstance(broadcast_initial, bool):
            raise ValueError(f"broadcast_initial must be True or False, got {broadcast_initial!r}")
        if restore_buffers is not None:
            restore_buffers = list(restore_buffers)
            bad = next((b for b in restore_buffers if not isinstance(b, Tensor)), None)
            if bad is not None:
                raise ValueError(f"restore_buffers must be tensors (e.g. model.buffers()), got {type(bad).__name__}")
        super().__init__(params, dict(lr=float(lr)))
        if len(self.param_groups) != 1:
            raise ValueError("SASG takes one parameter group (one lr for all parameters; the lazy rule uses it)")
        given: list[Tensor] = self.param_groups[0]["params"]
        if not given:
            raise ValueError("SASG got no parameters")
        first = given[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in given):
            raise ValueError("SASG needs all parameters on one device with one dtype")
        if not first.is_floating_point():
            raise ValueError(f"SASG needs floating-point parameters, got {first.dtype}")
        # Frozen tensors get no gradient and empty ones have nothing to send: they stay out of the
        # message layout (torch.optim skips them too), so they cost no bits and no top-k slots.
        plist = [p for p in given if p.requires_grad and p.numel() > 0]
        if not plist:
            raise ValueError("SASG got no trainable parameters (all have requires_grad=False or are empty)")
        self._plist = plist
        self.layout = Layout((str(i), tuple(p.shape)) for i, p in enumerate(plist))
        # One validated spec (the CLI's): every algorithm checks all three knobs, also those it
        # ignores, so a typo fails the same way whichever algorithm it was written for.
        self.spec = AlgorithmSpec.parse(algorithm, AlgorithmSettings(density, window, c))
        self.algorithm = self.spec.build(self.layout, check_codec(codec))
        if transport is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                from ..distributed.transport import TorchTransport

                # NCCL: messages go through this rank's own GPU (cuda:LOCAL_RANK), not the current one.
                nccl_here = first.is_cuda and dist.get_backend(group) == "nccl"
                transport = TorchTransport(group=group, device=first.device if nccl_here else None)
            else:
                transport = InProcessTransport(1, device=first.device)
        elif group is not None:
            raise ValueError("pass either transport or group, not both")
        if len(transport.local_workers) != 1:
            raise ValueError("SASG runs one worker per process: its transport must hold exactly one worker")
        self.transport = transport
        self.engine = RoundEngine(self.algorithm, transport, seed=int(seed), device=first.device, dtype=first.dtype)
        self._restore = list(restore_buffers) if restore_buffers is not None else []
        if broadcast_initial and transport.world_size > 1:
            with torch.no_grad():
                for p in given:  # frozen ones too: every rank starts from the same model
                    buf = p.detach().to(transport.device).contiguous()
                    transport.broadcast_(buf, src=0)
                    p.copy_(buf)

    def add_param_group(self, param_group: dict) -> None:
        # torch.optim.Optimizer.__init__ adds the groups through here; afterwards the message
        # layout is fixed (every rank must agree on it), so a new group cannot join.
        if getattr(self, "engine", None) is not None:
            raise ValueError(
                "SASG cannot add a parameter group after construction: the message layout is fixed; "
                "build a new SASG over all parameters instead"
            )
        super().add_param_group(param_group)

    # ----- what the optimizer reports -------------------------------------------------------------
    @property
    def ledger(self):
        """Per-step uploads and bits (uplink: 8 x the bytes sent; downlink: parameter-server
        convention; flags): ``ledger.totals()``."""
        return self.engine.ledger

    @property
    def num_workers(self) -> int:
        return self.engine.num_workers

    @property
    def iteration(self) -> int:
        return self.engine.iteration

    # ----- flat views of the parameters -----------------------------------------------------------
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._plist])

    def _flat_grads(self) -> Tensor:
        return torch.cat([
            (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self._plist
        ])

    def _write(self, flat: Tensor, grads: bool = False) -> None:
        views = self.layout.views(flat)
        for i, p in enumerate(self._plist):
            if grads:
                p.grad = views[str(i)].clone()
            else:
                p.copy_(views[str(i)])

    def _evaluate(self, closure: Callable[[], Tensor]):
        for p in self._plist:
            p.grad = None
        with torch.enable_grad():
            return closure()

    def _check_grads(self) -> None:
        """Before anything is sent: the closure must have left gradients, and dense ones."""
        grads = [p.grad for p in self._plist if p.grad is not None]
        if not grads:
            raise RuntimeError(
                "SASG.step: the closure left no gradients; it must call loss.backward() itself "
                "(step clears .grad before each evaluation, so a backward() done before step is lost)"
            )
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                "SASG does not support sparse gradients (e.g. nn.Embedding(sparse=True)); use dense ones"
            )

    # ----- the round ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):  # type: ignore[override]
        """One round: evaluate ``closure`` (forward + backward on this worker's minibatch), decide,
        send or skip, aggregate, update the parameters. Returns the closure's loss."""
        if closure is None:
            raise RuntimeError(
                "SASG.step needs a closure that recomputes the loss and calls backward() (like "
                "torch.optim.LBFGS): the lazy rule re-evaluates it at the worker's last upload point"
            )
        devices = [torch.cuda.current_device()] if self._plist[0].is_cuda else []
        rng = torch.get_rng_state()  # read only: the closure's own random draws (dropout) ...
        cuda_rng = torch.cuda.get_rng_state() if devices else None
        lr = _check_lr(self.param_groups[0]["lr"])  # a scheduler may have set it
        loss = self._evaluate(closure)
        self._check_grads()
        theta = self._flat_params()
        grad = self._flat_grads()
        after = torch.get_rng_state()
        cuda_after = torch.cuda.get_rng_state() if devices else None

        def stale(anchor: Tensor) -> Tensor:
            saved = [b.detach().clone() for b in self._restore]
            self._write(anchor)
            # ... are replayed at the anchor: same minibatch, same masks; afterwards the stream
            # is where the fresh evaluation left it, as if no second evaluation had happened.
            torch.set_rng_state(rng)
            if devices:
                torch.cuda.set_rng_state(cuda_rng)
            try:
                self._evaluate(closure)
                return self._flat_grads()
            finally:
                self._write(theta)
                for b, s in zip(self._restore, saved):
                    b.copy_(s)
                torch.set_rng_state(after)
                if devices:
                    torch.cuda.set_rng_state(cuda_after)

        anchor = self.engine.workers.anchor
        self.engine.step(theta, grad.reshape(1, -1), lambda rows: stale(anchor[0]).reshape(1, -1), lr)
        self._write(theta)
        self._write(grad, grads=True)
        return loss

    # ----- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The usual optimizer state plus this rank's SASG state under ``"sasg"`` (error memory,
        anchor, staleness, the server replica: every worker's last message and the trigger window,
        the ledger). Parameters are the model's: save ``model.state_dict()`` beside it."""
        state = super().state_dict()
        state["sasg"] = {**self.engine.state_dict(), "settings": self._settings()}
        return state

    def _settings(self) -> dict:
        s = self.spec.settings
        return {"density": s.density, "window": s.window, "c": s.threshold_scale}

    def load_state_dict(self, state_dict: dict) -> None:
        """All or nothing: the whole state is checked first (the ``torch.optim`` part, the settings
        and every part of the SASG state: the worker's anchor, error memory and staleness, the
        server replica with the trigger's step window, the ledger, the generator); a state with a
        part missing or wrong is one ``ValueError`` naming it, and this optimizer is left as it was."""
        check_like(state_dict, {
            "state": _a_dict,  # torch.optim's per-parameter state (SASG keeps none there)
            "param_groups": [self._check_group],
            "sasg": self._check_sasg,
        })
        state_dict = dict(state_dict)
        engine = {k: v for k, v in state_dict.pop("sasg").items() if k != "settings"}
        super().load_state_dict(state_dict)  # checked: takes it whole
        self.engine._apply_state(engine)

    def _check_sasg(self, saved, where: str) -> None:
        """The SASG part: the settings it was saved with (these, or a clear error), then the engine's."""
        _a_dict(saved, where)
        if "settings" not in saved:
            raise ValueError(f"state part {part_name(where, 'settings')!r} is missing (saved by another version?)")
        settings, mine = saved["settings"], self._settings()
        check_like(settings, {k: 0.0 for k in mine}, part_name(where, "settings"))
        if settings != mine:
            differ = ", ".join(f"{k} {settings[k]} (saved) vs {mine[k]}" for k in mine if settings[k] != mine[k])
            raise ValueError(f"optimizer state was saved with other settings: {differ}; build SASG with the saved ones")
        self.engine.check_state_dict({k: v for k, v in saved.items() if k != "settings"}, where)

    def _check_group(self, group, where: str) -> None:
        """The saved parameter group: this one's parameters (as many) and a usable lr."""
        if not isinstance(group, Mapping) or "params" not in group or "lr" not in group:
            raise ValueError(f"state part {where!r} must be a parameter group with 'params' and 'lr'")
        n = len(self.param_groups[0]["params"])
        check_like(group["params"], [0] * n, part_name(where, "params"))
        try:
            _check_lr(group["lr"])
        except ValueError as e:
            raise ValueError(f"state part {part_name(where, 'lr')!r}: {e}") from None


def _a_dict(saved, where: str) -> None:
    if not isinstance(saved, Mapping):
        raise ValueError(f"state part {where!r} is {type(saved).__name__}, expected a dict")
