r"""The hook under fp16 mixed precision's loss scaling (``torch.amp.GradScaler``).

A job in fp16 multiplies its loss by a scale :math:`s` (``scaler.scale(loss).backward()``), so
the buckets DDP hands the hook hold :math:`s\,g`; ``scaler.step(opt)`` divides ``.grad`` by
:math:`s` and steps only if every entry is finite, and ``scaler.update()`` halves :math:`s` after
a skipped step and doubles it after ``growth_interval`` good ones. The hook's state (error memory,
DGC's velocity, Adam's second moment, a lazy rule's buffers) outlives the step, so two things go
wrong if the hook does not know the scaler (measured on 2 ranks, ``tests/test_loss_scale.py``):

* an overflowed backward pass puts inf into the error memory, which keeps it for good: every later
  aggregate is non-finite, the scaler skips every step and halves its scale to nothing, and the
  job trains no further, silently;
* the state is kept in units of :math:`s`, which change as the scaler grows and backs off: the
  residual of earlier rounds is then weighed 2x too much or too little, and Adam's frozen second
  moment is :math:`s^2` times too large (steps :math:`s` times too small).

With ``register(..., scaler=scaler)`` (:class:`LossScaling`) the hook, in every round:

1. divides its buckets by :math:`s` and notes whether they hold a non-finite entry (one fused pass,
   the op the scaler itself unscales with), and agrees with the other ranks on it (one 4-byte
   all-reduce a round, counted on the round's uplink line, a skipped round's on the round before;
   with ``clip_grad_norm`` the flag rides in the clipping's all-reduce instead, one call less);
2. if any rank's gradient is non-finite, the round does not happen: no state changes, nothing is
   sent, and every rank's buckets are set to NaN, so that every rank's scaler skips the step and
   backs off, as under plain DDP, where the all-reduce spreads one rank's inf to all;
3. else the round runs on :math:`g` in true units, and the aggregate it hands back is multiplied
   by :math:`s`, which ``scaler.step`` divides out again (exactly: the scale is a power of two).

The check needs the whole gradient before anything is sent, so under a scaler the round is not
made part by part during the backward pass (``overlap``; off on GPUs anyway).

Without a scaler, a hook checks the aggregate it hands back every ``CHECK_EVERY`` rounds
(:func:`refuse_non_finite`) and stops the job with an error that says what to do, where a
GradScaler the hook was not told of would otherwise skip every step from then on. (Plain DDP
would step into NaN parameters there; a job without a scaler has diverged.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# How often a hook without a scaler checks its aggregate: soon enough to stop a stalled job within
# seconds, rarely enough to cost next to nothing (one read of the gradient every 16 rounds).
CHECK_EVERY = 16


class LossScaling:
    """The hook's side of a ``torch.amp.GradScaler`` (module docstring). ``of(scaler, group)``
    makes one, or None where there is no enabled scaler."""

    # The check's bytes per rank and round: its found-inf flag, a float32.
    FLAG_BYTES = 4

    def __init__(self, scaler, group):
        self.scaler, self.group = scaler, group
        self.skipped = 0  # backward passes whose round did not happen (a non-finite gradient)
        self.pending_bits = 0  # checks not yet on the ledger (this round's; skipped ones before any round)
        self._scale = 1.0

    @staticmethod
    def of(scaler, group) -> "LossScaling | None":
        if scaler is None:
            return None
        if not isinstance(scaler, torch.amp.GradScaler):
            raise ValueError(f"scaler must be the torch.amp.GradScaler that scales this job's loss, got "
                             f"{type(scaler).__name__}")
        return LossScaling(scaler, group) if scaler.is_enabled() else None

    @property
    def scale(self) -> float:
        """The latest round's loss scale (what its buckets were divided by and multiplied back with)."""
        return self._scale

    @torch.no_grad()
    def unscale(self, buckets) -> torch.Tensor:
        """Divide the round's buckets by the loss scale in place; returns this rank's flag, a
        ``(1,)`` float32 tensor, nonzero where an entry is not finite (:meth:`agree` settles it)."""
        self._scale = float(self.scaler.get_scale())
        buffers = [b.buffer() for b in buckets]
        found = torch.zeros(1, device=buffers[0].device, dtype=torch.float32)
        inv = torch.full((1,), 1.0 / self._scale, device=found.device, dtype=torch.float32)
        by_dtype: dict = {}
        for buf in buffers:
            by_dtype.setdefault(buf.dtype, []).append(buf)
        for same in by_dtype.values():
            # What it buys: divide and check in one pass, as scaler.unscale_ does (not two).
            torch._amp_foreach_non_finite_check_and_unscale_(same, found, inv)
        return found

    @torch.no_grad()
    def agree(self, found: torch.Tensor, buckets, transport, ledger, *, summed: bool = False, sent: int = 0) -> bool:
        """True when every rank's gradient is finite (every rank calls this once a round).
        ``found``: this rank's flag from :meth:`unscale`, which one all-reduce here makes every
        rank's, or (``summed``) every rank's flags summed already by an all-reduce that carried it
        (the clipping's packet: sasg.ddp.clipping), which saves a call. Where one is not, the
        round is skipped: the buckets get NaN, and ``sent`` (bytes each rank sent this round
        besides the flag) goes onto the ledger with the checks."""
        M = transport.world_size
        if M > 1 and not summed:
            dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self.group)
        for m in range(M):
            transport.bits_by_rank[m] += 8 * self.FLAG_BYTES
        self.pending_bits += 8 * self.FLAG_BYTES * M
        if bool(found.item()):
            self.skipped += 1
            self.pending_bits += 8 * sent * M
            if ledger.iterations:  # (before the first round, they wait for it)
                ledger.add_up(self.pending_bits)
                self.pending_bits = 0
            for b in buckets:
                b.buffer().fill_(float("nan"))  # every rank's scaler sees it and skips the step
            return False
        return True

    @torch.no_grad()
    def rescale(self, buckets, ledger) -> None:
        """The round's aggregate back in the units of the scaled loss (``scaler.step`` divides it
        out), and the checks since the last recorded round onto its uplink line."""
        torch._foreach_mul_([b.buffer() for b in buckets], self._scale)
        ledger.add_up(self.pending_bits)
        self.pending_bits = 0


@torch.no_grad()
def refuse_non_finite(buckets, rounds: int) -> None:
    """A RuntimeError, every ``CHECK_EVERY`` rounds, if the aggregate in ``buckets`` (the same on
    every rank, so every rank stops) holds an inf or NaN (module docstring)."""
    if rounds % CHECK_EVERY:
        return
    # A sum is non-finite exactly when an entry is (finite gradients do not add up to 1e38), and
    # it reads the gradient once without writing a mask, as isfinite().all() does.
    if bool(torch.stack([b.buffer().sum(dtype=torch.float32) for b in buckets]).sum().isfinite()):
        return
    raise RuntimeError(
        f"the sasg hook's aggregate holds inf or NaN (round {rounds}): a rank's gradient was not finite, and "
        "its error memory keeps it. Under fp16 with torch.amp.GradScaler pass the scaler: "
        "sasg.ddp.register(model, optimizer=opt, scaler=scaler); without one the run has diverged (lower the lr, "
        "clip the gradients, or use bf16)"
    )
