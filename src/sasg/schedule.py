"""Learning-rate schedules: step decay of eta at given epochs.

The lazy trigger's threshold divides by the lr **in force at round k** (the one used for that
round's update). The authors' code updates the lr it hands the trigger one epoch late; we do not
copy that lag: right after a decay, steps shrink by the decay factor and so does the threshold's
denominator, keeping the rule scale-consistent.
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
