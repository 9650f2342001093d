"""Learning-rate schedules: step decay of eta at given epochs.

The lazy trigger's threshold divides by the lr **in force at round k** (the one used for that
round's update) by default: right after a decay, steps shrink by the decay factor and so does the
threshold's denominator, keeping the rule scale-consistent. The authors' code hands the trigger a
lagging lr (their notebook one epoch late, their distributed code 0.4 epoch late); to match their
numbers, ``--threshold-lr-lag EPOCHS`` gives the threshold :func:`lagged` lr.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence


def step_decay(
    lr: float, decay_epochs: Sequence[float], factor: float, rounds_per_epoch: int
) -> Callable[[int], float]:
    """lr(k) = lr * factor ** (number of decay epochs e with e * rounds_per_epoch <= k)."""
    boundaries = sorted(round(e * rounds_per_epoch) for e in decay_epochs)

    def lr_at(iteration: int) -> float:
        return lr * factor ** bisect.bisect_right(boundaries, iteration)

    return lr_at


def lagged(lr_at: Callable[[int], float], lag_epochs: float, rounds_per_epoch: int) -> Callable[[int], float]:
    """The schedule ``lr_at`` seen ``lag_epochs`` late: ``k -> lr_at(max(0, k - L))`` with
    ``L = round(lag_epochs * rounds_per_epoch)`` rounds. A lag of 0 returns ``lr_at`` itself."""
    lag = round(lag_epochs * rounds_per_epoch)
    if lag <= 0:
        return lr_at

    def lr_late(iteration: int) -> float:
        return lr_at(max(0, iteration - lag))

    return lr_late
