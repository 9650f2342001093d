r"""The Compressor protocol: what an upload keeps of the vector it is given.

A compressor maps rows of ``v`` (shape ``(N, d)``, split into segments by a
:class:`~sasg.core.layout.Layout`) to a :class:`~sasg.core.payloads.Payload` ``q = C(v)``, one
message per row. The memory (:mod:`sasg.core.memories`) forms ``v`` and keeps what ``q`` did not
send; the compressor itself is stateless between rounds.

``compress(v, rows, generators=..., donate=...)``:

* ``rows``: which rows of ``v`` to compress, in that order (``None``: all); read where they lie
  (a fast member avoids gathering them);
* ``generators``: one ``torch.Generator`` per entry of ``rows``, owned by that row's worker and
  derived from (seed, worker id); a randomized member draws only from these, so rank ``m`` of a
  real run draws what row ``m`` of the simulator draws;
* ``donate``: ``v`` is a fresh buffer the caller will not touch again, so the payload may keep it
  instead of a copy. Without it, the payload must not alias ``v`` (error feedback then updates
  ``v`` in place).

Optional capabilities (declared where the member registers, :mod:`sasg.core.capabilities`,
which lists them; ``sasg list --verbose`` shows each member's):

``exact_under``: names of lossy codecs (value formats) that nevertheless decode this
member's messages bit for bit (``terngrad`` under ``ternary``), so a run with them is not biased.

``default_memory`` names the memory a composition gets when none is written (``topk``: error
feedback; ``identity``: none); ``default_codec`` the codec it is priced with when none is named
(``qsgd``: ``elias``); ``honours_tensor_policy``: it sends the tensors a tensor policy names whole
(``topk``, ``identity``); ``k_per_segment``: the entries it keeps of every tensor.

Engine capabilities (:mod:`sasg.engine.round` calls them where a compressor has them):

* ``server_buffers(seed, device=..., dtype=...) -> {name: tensor}``: server-side state, created
  the same on every holder and saved with the server's state (``powersgd``: the warm-start Q);
* ``begin_round(link) -> compressor``: a compressor whose messages need an exchange of their own
  first (a linear one: ``powersgd`` sums every uploader's ``P`` before the ``Q`` are computed).
  The returned object is this round's compressor (``compress``, ``empty``, ``layout``); its
  ``compress`` exchanges through ``link.exchange(sent, template, codec)`` (the transport, with the
  round's flags; the engine adds those bits to the ledger), ``close()`` makes that exchange where
  the memory did not call ``compress`` (every holder takes part in every collective), ``empty(1)``
  is the template the engine's own exchange decodes with, and ``received(senders, q_all)`` sees
  every sender's decoded message after it.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..layout import Layout
from ..payloads.protocol import Payload


@runtime_checkable
class Compressor(Protocol):
    name: str
    layout: Layout
    default_memory: str

    def compress(
        self,
        v: Tensor,
        rows: Sequence[int] | None = None,
        *,
        generators: Sequence[torch.Generator] | None = None,
        donate: bool = False,
    ) -> Payload:
        ...

    def empty(self, n: int, device=None, dtype: torch.dtype = torch.float32) -> Payload:
        """``n`` all-zero messages: the server's "last message" before anyone sent, and the shape
        the price of a message is taken from."""

    def describe(self) -> dict:
        """Its settings, for reports."""
