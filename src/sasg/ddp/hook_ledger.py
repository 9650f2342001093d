"""What a DDP job with the hook sends, as ``hook.ledger`` reports it.

The hook runs the round engine, whose ledger is shared by every runner and keeps, per round,
uploads, ``bits_up`` (8 x the bytes of the messages, plus what the hook sends beside them: Adam's
averaged second moments, a GradScaler's 4-byte check), ``bits_down`` (the parameter-server
convention: a dense fp32 broadcast of θ) and ``bits_flags`` (the first, small exchange). In a
DDP job two of those need another reading, so :class:`HookLedger` gives ``totals()`` in the
job's own terms:

* no ``bits_down``: DDP ranks broadcast nothing; every rank decodes every rank's message, so
  the uplink figure is all that crosses the network (each message goes to the ``M - 1``
  others; ``hook.bits_by_rank`` splits it per rank);
* the first exchange is labelled by what it carries: ``bits_sizes``, a 32-bit size per rank
  before the payloads when message sizes vary (Golomb-Rice, ``always`` rounds included), or
  ``bits_flags``, one "I send" bit per rank when a lazy rule decides and sizes are fixed.

Everything else (``uploads``, ``bits_up`` and the other per-round lists, ``iterations``,
``state_dict()``) is the engine ledger's own, unchanged (its per-round ``bits_flags`` list holds
whichever of the two this codec sends).
"""

from __future__ import annotations

from ..accounting import Ledger


class HookLedger:
    """A view of the engine's :class:`~sasg.accounting.Ledger` for a DDP job."""

    def __init__(self, ledger: Ledger, sizes: bool):
        self._ledger = ledger
        self.first_exchange = "sizes" if sizes else "flags"  # what bits_flags counts per round

    def totals(self, upto: int | None = None) -> dict:
        """``iterations``, ``uploads``, ``skipped``, ``bits_up`` and the first exchange as
        ``bits_sizes`` and ``bits_flags`` (one of them 0); no downlink (see the module)."""
        t = self._ledger.totals(upto)
        first = t["bits_flags"]
        return {"iterations": t["iterations"], "uploads": t["uploads"], "skipped": t["skipped"],
                "bits_up": t["bits_up"],
                "bits_sizes": first if self.first_exchange == "sizes" else 0,
                "bits_flags": first if self.first_exchange == "flags" else 0}

    def __getattr__(self, name: str):
        return getattr(self._ledger, name)
