r"""What the server steps by when some workers skip: ``aggregate`` ``"last"`` or ``"senders"``.

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

With a rule that never skips (``always``) both are the same round, bit for bit. ``senders``
needs a server that keeps messages (a memory whose server keeps state of its own, ``ef21``,
cannot drop a worker's slot).
"""

from __future__ import annotations

AGGREGATES = ("last", "senders")


def check_aggregate(aggregate) -> str:
    """``"last"`` or ``"senders"`` (case and spaces ignored), normalized."""
    key = str(aggregate).strip().lower() if isinstance(aggregate, str) else None
    if key not in AGGREGATES:
        raise ValueError(
            f"aggregate must be 'last' (a skipper's last message stands, the paper's) or 'senders' (the mean of "
            f"the round's messages, scaled to M workers), got {aggregate!r}"
        )
    return key
