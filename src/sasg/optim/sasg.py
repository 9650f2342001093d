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
the M workers' gradients, as with DDP. The round itself is :class:`sasg.distributed.RankStep`, the
same code the ``sasg launch`` runner uses.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from ..core.algorithms import make_algorithm
from ..core.layout import Layout
from ..distributed.rank import RankStep
from ..distributed.transport import LocalTransport, TorchTransport


class SASG(torch.optim.Optimizer):
    """SASG (or ``algorithm="sgd" | "sparse" | "lasg"``) as a ``torch.optim.Optimizer``.

    Args:
        params: the model's parameters (one parameter group; one lr for all).
        lr: step size on the mean of the workers' gradients (eta).
        density: top-k keeps ``max(1, floor(density * numel))`` entries of every tensor.
        window: D, the lazy rule's window and the most skips in a row.
        c: the lazy rule's threshold scale (larger c: more uploads).
        algorithm: ``sasg`` (default), ``lasg``, ``sparse`` or ``sgd``.
        transport: where messages go; default: the default process group if one is initialised
            (``group`` picks another), else this process alone.
        broadcast_initial: copy rank 0's parameters to every rank once, at construction (as DDP
            does), so ranks start identical even if their models were initialised differently.
        restore_buffers: tensors (e.g. ``model.buffers()``) put back after the anchor evaluation,
            so BatchNorm running statistics only see the fresh forward pass.
        convention: bit convention of the accounting (``paper32``).
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
        convention: str = "paper32",
    ):
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        super().__init__(params, dict(lr=float(lr)))
        if len(self.param_groups) != 1:
            raise ValueError("SASG takes one parameter group (one lr for all parameters; the lazy rule uses it)")
        plist: list[Tensor] = self.param_groups[0]["params"]
        if not plist:
            raise ValueError("SASG got no parameters")
        first = plist[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in plist):
            raise ValueError("SASG needs all parameters on one device with one dtype")
        if not first.is_floating_point():
            raise ValueError(f"SASG needs floating-point parameters, got {first.dtype}")
        self._plist = plist
        self.layout = Layout((str(i), tuple(p.shape)) for i, p in enumerate(plist))
        self.algorithm = make_algorithm(algorithm, self.layout, density, window, c)
        if transport is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                transport = TorchTransport(group=group)
            else:
                transport = LocalTransport(device=first.device)
        self.transport = transport
        self.engine = RankStep(self.algorithm, transport, convention, device=first.device, dtype=first.dtype)
        self._restore = list(restore_buffers) if restore_buffers is not None else []
        if broadcast_initial and transport.world_size > 1:
            with torch.no_grad():
                for p in plist:
                    buf = p.detach().to(transport.device).contiguous()
                    transport.broadcast_(buf, src=0)
                    p.copy_(buf)

    # ----- what the optimizer reports -------------------------------------------------------------
    @property
    def ledger(self):
        """Per-step uploads and bits (uplink, downlink convention, flags): ``ledger.totals()``."""
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
        loss = self._evaluate(closure)
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

        self.engine.step(theta, grad, stale, self.param_groups[0]["lr"])
        self._write(theta)
        self._write(grad, grads=True)
        return loss

    # ----- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The usual optimizer state plus this rank's SASG state under ``"sasg"`` (error memory,
        anchor, staleness, the server replica: every worker's last message and the trigger window,
        the ledger). Parameters are the model's: save ``model.state_dict()`` beside it."""
        state = super().state_dict()
        state["sasg"] = self.engine.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        engine = state_dict.pop("sasg", None)
        super().load_state_dict(state_dict)
        if engine is not None:
            self.engine.load_state_dict(engine)
