r"""The Trigger protocol: who uploads this round.

``decide(rnd) -> (N,) bool`` answers for the ``N`` workers this engine holds, from what the round
offers (:class:`~sasg.engine.round.Round`: the iteration, lr, the current parameters ``theta``,
the workers' state, their fresh gradients, the server's recent squared steps, and
``rnd.stale_grads(rows)`` — a second gradient at each checked worker's anchor on the same
minibatch, which only a rule that needs it calls: ``wk2`` does, ``wk1`` and ``ps`` never do).
The answer is final (the engine sends exactly the flagged rows), so a rule that keeps something
of the uploaders' fresh gradients records it in ``decide``, the only place that sees them.

* ``lazy``: ``False`` means everyone uploads every round (then no flag needs to travel);
* ``history``: how many of the latest squared server steps :math:`\|\theta^{j+1}-\theta^j\|^2`
  the server keeps for the rule;
* ``worker_buffers``: the ``(N, d)`` buffers it keeps per worker, by name (e.g. ``anchor``), or
  ``(name, width)`` for an ``(N, width)`` one (e.g. ``("lipschitz", 1)``: one number per worker);
* ``uploaded(workers, rows, theta)``: bookkeeping after the ``rows`` uploaded at ``theta``.

Optional capabilities, declared where the trigger registers (:mod:`sasg.core.capabilities`, which
lists them; ``sasg list --verbose`` shows each trigger's), so that they are known without building it:

* ``needs_stale_grads``: ``True`` if ``decide`` may call ``rnd.stale_grads`` (``wk2``),
  ``False`` if it never does (``always``, ``wk1``, ``ps``). Runners that cannot evaluate the loss a
  second time (the DDP communication hook, :mod:`sasg.ddp`) run only triggers that never do. A
  trigger that says nothing is answered by :func:`needs_stale_grads` (see there).
* ``window``: it uses the window ``D`` (uploads every round for the first ``D``); ``default_memory``:
  the memory its compositions get when none is written (``clag``: ``ef21``); ``check_algorithm``:
  a method that refuses the members it cannot work with;
* ``checked_rows(iteration, staleness, worker_ids, num_workers)`` (for rules that need stale
  gradients): the ``(N,)`` bool mask of the rows ``decide`` will ask ``rnd.stale_grads`` for this
  round, known before the round (the rows' global ids and M: a rule that takes turns, aggregate
  ``"rotating"``, forces the designated row). A runner holding one worker then computes the fresh and the stale gradient in
  one pass (``wk2``).

Staleness :math:`\tau_m` (rounds since worker m's last upload, 1 right after one) is kept by the
engine for every trigger.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor

from ..capabilities import flag


@runtime_checkable
class Trigger(Protocol):
    name: str
    lazy: bool
    history: int
    worker_buffers: tuple  # names, or (name, width) pairs

    def decide(self, rnd) -> Tensor:
        ...

    def uploaded(self, workers, rows: Sequence[int], theta: Tensor) -> None:
        ...

    def describe(self) -> dict:
        ...


def needs_stale_grads(trigger) -> bool:
    """Whether ``trigger`` may ask for a second gradient at the anchor (``rnd.stale_grads``).

    Its own ``needs_stale_grads`` attribute when it has one. (A trigger built from the registry
    answers as its registration declares: :attr:`sasg.core.Algorithm.needs_stale_grads`.) A trigger
    without it (a plug-in
    written before the attribute existed; it is optional, so such plug-ins keep working in every
    runner that offers the second gradient) is taken to need it exactly when it is lazy: a rule
    that uploads every round never compares gradients, and a lazy one that is wrongly assumed not
    to need it would fail in the middle of a round on some ranks only."""
    return bool(flag(trigger, "needs_stale_grads"))
