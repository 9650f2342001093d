"""The hook's side of ``wk2``: the second gradient at a rank's anchor, on the step's minibatch.

A rule that compares the fresh gradient with the gradient at the rank's last upload point on the
*same* minibatch (``wk2``: ``sasg``, ``lasg``) needs one more forward/backward pass that a hook
cannot make. The loop makes it through :meth:`SecondGradient.second_gradient`, on a shadow copy
of the module holding the anchor, only in rounds where the rule checks this rank. A mixin of
:class:`sasg.ddp.HookState`; its state (``_module``, ``_shadow``, ``_stale``, ``_stale_round``,
``_asked``) is set in ``HookState.__init__``.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ..core.capabilities import provided


class SecondGradient:
    def second_gradient(self, loss_fn: Callable[[nn.Module], Tensor]) -> bool:
        """Give a rule that needs it (``wk2``: ``sasg``, ``lasg``) this rank's gradient at its
        anchor on the step's minibatch; call it every step, before ``loss.backward()``.

        ``loss_fn(module)`` must return the loss the step is about to backpropagate, computed with
        the module it is given (e.g. ``lambda m: F.cross_entropy(m(x), y)``; under gradient
        accumulation, the loss of the whole step). Where the rule will check this rank in the coming
        round, it is run on a shadow copy of the module holding the anchor (made at the first call:
        one more copy of the parameters; the module's buffers are copied in every time), and the
        gradient is kept for the round. Elsewhere (warm-up, a forced upload, a rule that needs no
        second gradient, plain all-reduce rounds) nothing is computed. Returns whether it ran.

        The loss is computed as the function says: random layers (dropout) draw from the global
        generator, so the shadow's draws differ from the step's own, as two forward passes do."""
        if not self.algorithm.needs_stale_grads:
            return False
        engine = self.start().engine
        self._asked = True
        if not self._checks_me():
            return False
        if self._module is None:
            raise RuntimeError("second_gradient needs the module: build the HookState from it (or pass module=)")
        if self._shadow is None:
            self._shadow = copy.deepcopy(self._module)
            self._shadow.requires_grad_(False)
            for p in self._shadow.parameters():
                p.grad = None
            self._shadow_params = dict(self._shadow.named_parameters())
            missing = [n for n in self.index.names if n not in self._shadow_params]
            if missing:
                raise RuntimeError(f"second_gradient: the module has no parameter {missing[0]!r} of the hook state")
            self._stale = torch.zeros(self.index.numel, device=self.index.device, dtype=torch.float32)
        anchor = engine.workers.buffer("anchor")[0]
        with torch.no_grad():
            for name, seg in zip(self.index.names, self.index.layout.segments):
                p = self._shadow_params[name]
                p.copy_(anchor[seg.offset:seg.end].view(p.shape))
            for (_, mine), (_, live) in zip(self._shadow.named_buffers(), self._module.named_buffers()):
                mine.copy_(live)
        trained = [self._shadow_params[n] for n in self.index.names]
        for p in trained:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = loss_fn(self._shadow)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError(f"second_gradient: loss_fn must return the step's loss (one number), got "
                                     f"{type(loss).__name__ if not isinstance(loss, Tensor) else tuple(loss.shape)}")
                if not loss.requires_grad:
                    raise ValueError("second_gradient: the loss does not depend on the module's parameters: compute "
                                     "it with the module loss_fn is given, outside torch.no_grad()")
                grads = torch.autograd.grad(loss, trained, allow_unused=True)
        finally:
            for p in trained:
                p.requires_grad_(False)
        for g, seg in zip(grads, self.index.layout.segments):
            if g is None:  # not used by this loss: DDP would hand the hook zeros for it too
                self._stale[seg.offset:seg.end].zero_()
            else:
                self._stale[seg.offset:seg.end].copy_(g.reshape(-1))
        self._stale_round = self.rounds
        return True

    def _checks_me(self) -> bool:
        """Will the coming round's rule check this rank (so that it needs the second gradient)?"""
        engine, alg = self.engine, self.algorithm
        if self.rounds < self.start_iter or engine.iteration < alg.warmup:
            return False  # a plain all-reduce round, or a dense warm-up round: no rule runs
        checked = provided(alg.trigger, "checked_rows")
        if checked is None:
            return True  # a rule that does not say: always have it ready
        return bool(checked(engine.iteration - alg.warmup, engine.workers.staleness, engine.local_workers,
                            engine.num_workers)[0])

    def _second_gradient_of_round(self, rows):
        """The engine's ``stale_grads``: what :meth:`second_gradient` computed for this round."""
        if self._stale is None or self._stale_round != self.rounds:
            raise RuntimeError(
                f"the rule {self.spec.trigger!r} compares the fresh gradient with this rank's gradient at its last "
                "upload point on the same minibatch, which a hook cannot compute: call "
                "state.second_gradient(lambda m: <the step's loss computed with m>) before loss.backward() in "
                "every step (see sasg.ddp.HookState.second_gradient)"
            )
        stale = self._stale
        if self._clipper is not None:  # scaled as the fresh one was, so the rule compares like with like
            stale = stale * self._clipper.factor
        if self.momentum is not None:  # the rule then compares velocities (sasg.ddp.optimizers)
            stale = self.momentum.stale_velocity(self._grads, stale, self._theta,
                                                 self.engine.workers.buffer("anchor")[0])
        return stale.view(1, -1)

