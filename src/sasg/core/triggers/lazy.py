r"""What the lazy rules (``wk2``, ``wk1``, ``ps``) share: forced uploads, the threshold and the
anchor.

Each rule uploads worker m when warm-up or the staleness bound forces it (:func:`forced_uploads`),
or when its own measure of change exceeds

.. math:: thr_k = \frac{1}{c\,M\,\eta} \sum_{j=k-D+1}^{k-1} \|\theta^{j+1} - \theta^j\|^2

(:func:`lazy_threshold`, over the last ``D - 1`` server steps the server keeps: ``history``).

Two variants of the authors' code, for matching published numbers (both off by default):

* ``window_sum="D"`` sums the last ``D`` squared steps (``j = k-D .. k-1``) instead of ``D - 1``;
  the server's ``history`` follows (:data:`WINDOW_SUMS`).
* the lr in the threshold may lag the schedule (``--threshold-lr-lag EPOCHS``): the runner passes
  it as ``Round.threshold_lr`` (the round's own lr unless a lag is set) and
  :meth:`LazyRule.threshold` divides by it. A rule that calls :meth:`LazyRule.threshold` gets
  both variants.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def check_window(window) -> int:
    if (
        isinstance(window, bool)
        or not isinstance(window, (int, float))
        or not math.isfinite(window)
        or int(window) != window
        or window < 1
    ):
        raise ValueError(f"window D must be an integer >= 1, got {window!r}")
    return int(window)


# --window-sum: how many of the last server steps thr_k sums -> how many the server keeps.
WINDOW_SUMS = {"D-1": -1, "D": 0}


def check_window_sum(window_sum) -> str:
    """``"D-1"`` or ``"D"`` (case and spaces ignored: ``"d - 1"``), normalized."""
    key = "".join(str(window_sum).split()).upper() if isinstance(window_sum, str) else None
    if key not in WINDOW_SUMS:
        raise ValueError(
            f"window sum must be 'D-1' or 'D' (how many recent server steps thr_k sums), got {window_sum!r}"
        )
    return key


def check_threshold_scale(c) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not (c > 0) or math.isinf(c):
        raise ValueError(f"threshold scale c must be a finite number > 0, got {c!r}")
    return float(c)


def lazy_threshold(recent_step_sq: Tensor, c: float, num_workers: int, lr: float) -> float:
    """thr_k = sum(recent squared steps) / (c * M * lr); ``recent_step_sq`` holds the last D-1
    (the last D with ``window_sum="D"``).

    ``lr = 0`` (a schedule that ends at 0) takes the limit lr -> 0+: an infinite threshold (nobody
    needs to send, nothing would move) unless the recent steps were all 0, where it stays 0."""
    total = float(recent_step_sq.sum().item())
    if lr == 0:
        return math.inf if total > 0 else 0.0
    return total / (c * num_workers * lr)


def forced_uploads(iteration: int, staleness: Tensor, window: int, turn: Tensor | None = None) -> Tensor:
    """Workers that upload without looking at gradients: warm-up or staleness bound reached, or
    (``turn``, aggregate ``"rotating"``) the round's designated sender."""
    if iteration < window:
        return torch.ones_like(staleness, dtype=torch.bool)
    forced = staleness > window
    return forced if turn is None else forced | turn


def designated(iteration: int, worker_ids: Sequence[int], num_workers: int, device=None) -> Tensor:
    """``(N,)`` bool: which of the rows ``worker_ids`` (global ids of M workers) must upload in
    round ``iteration`` under aggregate ``"rotating"``: worker ``iteration mod M``. Every worker
    knows both numbers, so no round is empty and the turn costs no communication."""
    turn = iteration % num_workers
    return torch.tensor([m == turn for m in worker_ids], dtype=torch.bool, device=device)


def set_anchor(workers, rows: Sequence[int], theta: Tensor) -> None:
    """``anchor[r] = theta`` for the workers ``rows`` that just uploaded."""
    anchor = workers.buffer("anchor")
    if len(rows) == anchor.shape[0]:
        anchor.copy_(theta.expand_as(anchor))
    else:  # row by row: several times faster than an index_put of a broadcast theta
        for r in rows:
            anchor[r].copy_(theta)


class LazyRule:
    """The window ``D``, threshold scale ``c`` and window sum (``"D-1"``: the last D - 1 server
    steps, ``"D"``: the last D) of a lazy rule, checked; its server history (that many steps)."""

    lazy = True

    def __init__(self, window: int, c: float, window_sum: str = "D-1", rotates: bool = False):
        self.window = check_window(window)
        self.c = check_threshold_scale(c)
        self.window_sum = check_window_sum(window_sum)
        self.history = self.window + WINDOW_SUMS[self.window_sum]
        self.rotates = bool(rotates)  # aggregate "rotating": worker k mod M uploads in round k

    def forced(self, iteration: int, staleness: Tensor, worker_ids: Sequence[int] | None,
               num_workers: int | None) -> Tensor:
        """The rows that upload this round whatever the rule's measure says (:func:`forced_uploads`;
        the designated sender too where the rule takes turns: ``worker_ids`` and ``num_workers``
        are then needed)."""
        turn = None
        if self.rotates:
            if worker_ids is None or num_workers is None:
                raise TypeError(f"{self.name} takes turns (aggregate 'rotating'): pass the rows' worker ids and M")
            turn = designated(iteration, worker_ids, num_workers, staleness.device)
        return forced_uploads(iteration, staleness, self.window, turn)

    def forced_in(self, rnd) -> Tensor:
        """:meth:`forced` for the round ``rnd`` (its worker ids are read only where the rule takes turns)."""
        if not self.rotates:
            return forced_uploads(rnd.iteration, rnd.workers.staleness, self.window)
        return self.forced(rnd.iteration, rnd.workers.staleness, rnd.worker_ids, rnd.num_workers)

    def threshold(self, rnd) -> float:
        """thr_k of round ``rnd``: the server's recent squared steps over ``c M eta``, with eta the
        round's ``threshold_lr`` (its lr unless the runner lags it)."""
        return lazy_threshold(rnd.server.step_sq, self.c, rnd.num_workers, rnd.threshold_lr)

    def describe(self) -> dict:
        out = {"trigger": self.name, "window": self.window, "threshold_scale": self.c, "window_sum": self.window_sum}
        if self.rotates:
            out["rotates"] = True
        return out
