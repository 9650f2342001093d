"""PyTorch's PowerSGD DDP hook as the benchmarks' rival, on gloo, one process group per bucket.

    from powersgd_rows import register_powersgd     # benchmarks/ on sys.path
    register_powersgd(ddp_model, rank=2, seed=0)     # after init_process_group, on every rank

Why a group per bucket: ``powerSGD_hook`` issues a bucket's first all-reduce (its uncompressed
tensors) from the hook, and the next two (P, then Q) from the callbacks of the one before, on
gloo's threads. When a later bucket's hook runs while an earlier bucket's callbacks are still
going, the order in which these calls reach the process group depends on timing, and two ranks
can see different orders: gloo then fails ("Received data size doesn't match expected size") or
hangs. It happened here with every gradient ready at once (benchmarks/crossover.py) and with an
MLP of 11.6M parameters in 3 buckets (time_to_accuracy.py --setting comm-heavy). A bucket's own
calls always come in the same order, so each bucket index gets its own gloo group: the hook reads
``state.process_group`` once, when it starts, and the wrapper sets it just before. The hook and
its state are PyTorch's, unchanged (one state, its error feedback and warm start per bucket).

This gives PowerSGD's buckets their own connections, so they may overlap more than DDP's buckets
(one group) or sasg's hook (one group) can: if anything, it favours PowerSGD.
"""

from __future__ import annotations

import math

BUCKET_MIB, FIRST_BUCKET_MIB = 25, 1  # DDP's default bucket caps


def bucket_bound(model) -> int:
    """How many buckets DDP can make at most with its default caps: a bucket is closed once it
    holds at least its cap, so all but the last hold >= 25 MiB, the first >= 1 MiB."""
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 2 + math.ceil(nbytes / (BUCKET_MIB << 20))


def register_powersgd(ddp_model, rank: int, seed: int, start_iter: int = 2):
    """PowerSGD rank ``rank`` (error feedback and warm start on) on ``ddp_model``; its state."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

    groups = [dist.new_group(backend="gloo") for _ in range(bucket_bound(ddp_model.module))]
    state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                   start_powerSGD_iter=start_iter, random_seed=seed)

    def hook(state, bucket):
        state.process_group = groups[bucket.index()]  # an IndexError if bucket_bound were wrong
        return powersgd.powerSGD_hook(state, bucket)

    ddp_model.register_comm_hook(state, hook)
    return state
