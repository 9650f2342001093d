"""``sasg.optim.SASG``'s step: the closure evaluated (twice where the lazy rule needs the gradient at
the anchor), the round run on the engine, and the update made from the round's aggregate: plain
SGD, momentum and weight decay (:func:`~sasg.optim.update.sasg_update`), or DGC's momentum
correction. A mixin of :class:`sasg.optim.SASG`, which holds the maths."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core.momentum import factor_mask_
from .param_groups import _trained
from .rng import rng_state, set_rng_state
from .update import sasg_update


class SASGStep:
    """The round and the update of :class:`sasg.optim.SASG` (flat views of its trained tensors)."""

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
        cuda = self._cuda_rng
        rng = rng_state(cuda)  # read only: the closure's own random draws (dropout) ...
        updates = self._group_updates()  # a scheduler may have set lr (or momentum)
        lr = self._one_lr([u[0] for u in updates])
        loss = self._evaluate(closure)
        self._check_grads()
        theta = self._flat_params()
        grad = self._flat_grads()
        after = rng_state(cuda)
        # Groups with their own lr (no lazy rule: _one_lr): the engine forms (lr/M)·g' with the
        # largest lr, and g' is each group's gradient times its lr / that lr, so every message
        # carries its own group's lr. grad itself stays the fresh gradient (left in .grad).
        sent = grad if lr is not None else grad * self._lr_scale([u[0] for u in updates])
        lr = lr if lr is not None else max(u[0] for u in updates)

        def stale(anchor: Tensor) -> Tensor:
            saved = [b.detach().clone() for b in self._restore]
            self._write(anchor)
            # ... are replayed at the anchor: same minibatch, same masks; afterwards the stream
            # is where the fresh evaluation left it, as if no second evaluation had happened.
            set_rng_state(rng, cuda)
            try:
                self._evaluate(closure)
                return self._flat_grads()
            finally:
                self._write(theta)
                for b, s in zip(self._restore, saved):
                    b.copy_(s)
                set_rng_state(after, cuda)

        anchor = self.engine.workers.anchor
        threshold_lr = self._threshold_lr(lr) if self._lag else None
        if self._velocity is not None:
            if sent is not grad:
                raise ValueError("momentum_correction needs one lr for every parameter group (the velocity is "
                                 "error-fed with it); give the groups the same lr")
            self._corrected_step(theta, grad, stale, anchor, lr, updates, threshold_lr)
            self._write(theta)
            self._write(grad, grads=True)
            return loss
        # The update from theta^k on the round's aggregate s^k (plain: theta^k - s^k, bit for bit the
        # simulator's). With momentum or weight decay a lazy rule's window gets the real
        # ||theta^{k+1} - theta^k||^2; with neither, the aggregate's own norm is the real step.
        moves = self.algorithm.lazy and any(u[1] != 0 or u[3] != 0 for u in updates)
        start = theta.clone() if moves else None
        result = self.engine.step(theta, sent.reshape(1, -1), lambda rows: stale(anchor[0]).reshape(1, -1), lr,
                                  threshold_lr)
        self._update(theta, result.step, updates)
        if start is not None:
            moved = theta.double() - start.double()
            self.engine.record_step(float(torch.dot(moved, moved).item()))
        self._write(theta)
        self._write(grad, grads=True)
        return loss

    def _corrected_step(self, theta, grad, stale, anchor, lr, updates, threshold_lr) -> None:
        r"""DGC's momentum correction (:mod:`sasg.core.momentum`): the velocity
        :math:`u \leftarrow \mu u + g + \lambda\theta` is what the round error-feeds and compresses,
        the engine's :math:`\theta - \sum_m q_m` is the whole update, and the velocity is cleared
        where this worker's message sent a compressed tensor's entry. A lazy rule compares
        velocities: the stale one is :math:`\mu u + g(\hat\theta) + \lambda\hat\theta` with the same
        :math:`u`, so their difference is the gradients' plus the decay term's drift."""
        u = self._velocity

        def velocity(g: Tensor, at: Tensor) -> Tensor:  # g + lambda at + mu u, each group its own
            for (a, b), update in zip(self._spans, updates):
                g[a:b].add_(at[a:b], alpha=update[3]).add_(u[a:b], alpha=update[1])
            return g

        fresh = velocity(grad.clone(), theta)

        def stale_velocity(rows):
            return velocity(stale(anchor[0]), anchor[0]).reshape(1, -1)

        result = self.engine.step(theta, fresh.reshape(1, -1), stale_velocity, lr, threshold_lr)
        theta.sub_(result.step)  # the velocity's messages are the whole update
        flags = result.flags
        u.copy_(fresh)
        me = self.transport.local_workers[0]
        if bool(flags[me]) and self.engine.iteration > self.spec.settings.warmup:
            factor_mask_(u, self.engine.server.last, me, self._compressed)

    def _update(self, theta: Tensor, step: Tensor, updates: list[tuple]) -> None:
        """theta^k -> theta^{k+1} in place by :func:`sasg_update` on the round's aggregated ``step``,
        each group's part with its own hyperparameters (one group: the whole vector at once)."""
        for g, ((a, b), update) in enumerate(zip(self._spans, updates)):
            if a == b:
                continue
            lr, momentum, dampening, weight_decay, nesterov, decoupled = update
            whole = len(self._spans) == 1
            buf = sasg_update(theta if whole else theta[a:b], step if whole else step[a:b], self._buffers[g],
                              lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                              nesterov=nesterov, decoupled_weight_decay=decoupled)
            if buf is not None and buf is not self._buffers[g]:
                self._set_momentum(g, buf)

    def _set_momentum(self, group: int, flat: Tensor | None) -> None:
        """Hold group ``group``'s flat momentum buffer and show it per parameter as
        ``state[p]["momentum_buffer"]`` (views of it, as ``torch.optim.SGD`` keeps them); ``None``:
        no buffer."""
        self._buffers[group] = flat
        offset = 0
        for p in self._plist_of(group):
            if flat is None:
                self.state.pop(p, None)
            else:
                self.state[p]["momentum_buffer"] = flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()

    def _plist_of(self, group: int) -> list[Tensor]:
        return [p for p in self.param_groups[group]["params"] if _trained(p)]
