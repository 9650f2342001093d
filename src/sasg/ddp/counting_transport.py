"""The hook's transport: :class:`sasg.distributed.TorchTransport`, plus each rank's bits.

The exchange itself is the distributed runner's, unchanged: flags or sizes first where ranks may
skip (one byte or one int32 from every rank to every rank in one ``all_to_all_single``), then one
``all_to_all_single`` with the senders' byte counts as splits (on several nodes relayed point to
point instead, :mod:`sasg.distributed.relay`), so a skipping rank sends no payload at all. Where
every rank sends (``always``) and sizes vary (Golomb-Rice), the sizes ride at the head of fixed
slots in the payload's one call instead (:mod:`sasg.distributed.slots`). Every rank ends up with
every sender's bytes and decodes them itself.

What this subclass adds: every rank learns every sender's message size in that exchange, so it
keeps ``bits_by_rank[m]`` = 8 x the bytes of all messages rank ``m`` has sent (each message
counted once, as the ledger counts it; on the wire it goes to each of the ``M - 1`` others).
"""

from __future__ import annotations

from ..distributed.torch_transport import TorchTransport


class CountingTransport(TorchTransport):
    """A :class:`TorchTransport` that also counts the bits each rank has sent."""

    def __init__(self, group=None, device=None, nodes="auto"):
        super().__init__(group=group, device=device, nodes=nodes)
        self.bits_by_rank = [0] * self.world_size

    def exchange(self, upload, sent, template, codec, lazy, **kwargs):
        flags, payload, sizes = super().exchange(upload, sent, template, codec, lazy, **kwargs)
        senders = [m for m, f in enumerate(flags.tolist()) if f]
        for m, size in zip(senders, sizes):
            self.bits_by_rank[m] += 8 * int(size)
        return flags, payload, sizes

    def count_dense(self, nbytes: int) -> None:
        """A plain all-reduce round (``start_iter``): every rank's gradient, counted like a
        dense message of its own dtype."""
        for m in range(self.world_size):
            self.bits_by_rank[m] += 8 * int(nbytes)
