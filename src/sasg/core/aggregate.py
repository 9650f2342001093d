r"""What the server steps by when some workers skip: ``aggregate`` ``"last"``, ``"senders"`` or
``"rotating"``.

``last`` (the default; LAG, LASG and SASG): every worker's last message stands until it sends a
new one,

.. math:: s^k = \sum_{m=1}^{M} q_m^{\text{last}},

so a skipper's contribution this round is the message it sent at its last upload. That is the
lazy-aggregation idea: a rule lets worker m skip when its fresh gradient is close to the one it
last sent, so the old one stands in for it. It fits messages that *are* gradients (``lasg``: the
identity compressor). An error-fed top-k message is not one: it is the few largest entries of
the worker's error memory, i.e. of many rounds' worth of gradient, and repeating it on every
skipped round applies those entries again and again.

``senders`` (the DDP hook's default for lazy rules): the round's messages only, scaled to M
workers,

.. math:: s^k = \frac{M}{|S^k|} \sum_{m \in S^k} q_m^k ,

with :math:`S^k` the workers that sent in round k. A skipper's slot is emptied; its fresh gradient
is dropped and its error memory kept, exactly as under ``last``. The skipper is treated as a
worker that did not take part (the mean over the participants, as partial participation does in
federated averaging): with workers drawing minibatches from one distribution, each message
estimates the same mean update. A round in which nobody sends changes nothing on the server and
steps by the latest senders' mean again (:math:`s^k = s^{k-1}`): a round with no step at all
would be a round of training lost, and with few workers such rounds are common (two ranks both
skip about a third of the rounds).

Measured in the DDP hook (``examples/ddp_hook.py``, FC 784-512-10, 2 ranks, ``wk1+topk``,
``rice+sign``, seeds 0-2, 2 epochs; ``benchmarks/hook_lazy.py``, ``docs/results/hook_lazy*.json``),
accuracy against ``always+topk``: momentum SGD ``last`` -3.1 points, ``senders`` -0.5; AdamW
``last`` -3.2, ``senders`` +0.3. A first version of ``senders`` that stepped by 0 where nobody
sent gave -0.9 and -0.0 (same runs). What we tried and measured worse
(momentum SGD, a random half of the uploads skipped, seed 1): deferring (the skipper's gradient
joins its error memory, its slot is empty and unscaled) lost 11.7 points against 4.3 for ``last``
and 2.2 for ``senders``; predicting with its last message and correcting the error memory by it
lost 11.0.

``rotating`` (the DDP hook's default for lazy rules, but under Adam/AdamW): ``senders``, and no
round is empty. In round k worker :math:`k \bmod M` uploads whatever its rule says (a forced
upload, as in warm-up: :func:`sasg.core.triggers.lazy.designated`), so every round steps by at
least one fresh message. Every worker knows k and its own id, so the turn costs no communication,
and it is one upload in M (with M = 2 a rank may skip at most half its rounds). Why: with
momentum SGD the empty rounds were what ``senders`` lost to. Two ranks' lazy decisions come
together (a third of the rounds had no sender, against a fifth for a control skipping at random
at the same rate), and each repeat feeds the same step into the velocity again. Measured in the
hook (``benchmarks/hook_lazy.py``, ``wk1+topk``, FC 784-512-10, 2 ranks, 2 epochs; points
against ``always+topk``, docs/ddp-hook.md): momentum SGD ``senders`` -0.53 on seeds 0-2 and -3.32
on seeds 3-7, ``rotating`` -0.17 and -0.90 (a small CNN: -3.55 and -0.45; four ranks: -2.90 and
-1.13); plain SGD over the eight seeds -0.91 and -0.19, at 54 % and 31 % skipped. Under Adam/AdamW
the hook keeps ``senders`` and lets the optimizer coast through an empty round (a zero gradient,
:mod:`sasg.ddp.hook_state`): that measured as close to ``always+topk`` with twice the skips.

With a rule that never skips (``always``) the three are the same round, bit for bit. ``senders``
and ``rotating`` need a server that keeps messages (a memory whose server keeps state of its own,
``ef21``, cannot drop a worker's slot); ``rotating`` needs a rule that takes turns (the lazy rules
with a window D: ``wk2``, ``wk1``, ``ps`` and their plain variants).
"""

from __future__ import annotations

AGGREGATES = ("last", "senders", "rotating")
ROTATING = "rotating"
# The aggregates that step by the round's senders only, scaled to M workers.
SCALED = ("senders", ROTATING)


def check_aggregate(aggregate) -> str:
    """``"last"``, ``"senders"`` or ``"rotating"`` (case and spaces ignored), normalized."""
    key = str(aggregate).strip().lower() if isinstance(aggregate, str) else None
    if key not in AGGREGATES:
        raise ValueError(
            f"aggregate must be 'last' (a skipper's last message stands, the paper's) or 'senders' (the mean of "
            f"the round's messages, scaled to M workers) or 'rotating' (senders, with worker k mod M uploading "
            f"in round k), got {aggregate!r}"
        )
    return key
