"""A runner's round engine, built once: members, codec, transport, seed, device, dtype.

Every runner — the simulator (all ``M`` workers in one process), a rank of a real run (the
simulator over a :class:`~sasg.distributed.TorchTransport`), the optimizer (one worker per
process) and the DDP hook (one worker per rank) — runs the same :class:`sasg.engine.RoundEngine`,
and sets it up here, so the set-up rules are written once:

* the codec: ``None`` or ``"natural"`` is the algorithm's natural one (:mod:`sasg.core.natural`),
  and any codec is checked before anything is built (:func:`engine_codec`);
* the members: the spec built on the runner's parameter layout with that codec
  (:func:`build_algorithm`);
* the transport: a process group's when one is initialised, else all workers in this process;
  under NCCL the messages travel through the parameters' own GPU (``cuda:LOCAL_RANK``), not
  whichever device is current (:func:`process_transport`);
* the seed (checked) that derives every held worker's member generators, and where the state
  lives (:func:`build_engine`).

What differs between runners stays with them: how the spec is parsed (the CLI's settings, the
optimizer's arguments, the hook's defaults), how many workers a runner holds, and what it does
with the round's aggregate (:class:`sasg.engine.RoundResult`): the simulator steps ``theta``,
the optimizer makes its update (momentum, weight decay), the hook hands it to DDP's buckets.
"""

from __future__ import annotations

import torch

from . import validation
from .core.algorithm import Algorithm
from .core.layout import Layout
from .core.natural import resolve_codec
from .core.spec import AlgorithmSpec, check_codec
from .engine import InProcessTransport, RoundEngine


def engine_codec(codec: str | None, algorithm: str) -> str:
    """The codec ``algorithm`` runs with: ``codec`` (lower-cased), or the algorithm's natural one
    where it is ``None`` or ``"natural"``; a ``ValueError`` listing the choices if it names none."""
    return check_codec(resolve_codec(codec, algorithm))


def build_algorithm(spec: AlgorithmSpec, layout: Layout, codec: str | None = None) -> Algorithm:
    """``spec``'s members on ``layout``, pricing their messages with :func:`engine_codec`."""
    return spec.build(layout, engine_codec(codec, spec.name))


def process_transport(device, group=None, transport_class=None):
    """The transport over ``group`` (default: the default process group) when a process group is
    initialised, else ``None``. ``transport_class``: a :class:`~sasg.distributed.TorchTransport`
    subclass (default: that class itself).

    Under NCCL every rank's messages go through the GPU its parameters live on (``device``): the
    current device may be another one (``cuda:0`` on every rank), and NCCL then runs every rank's
    collectives on one GPU. Gloo and the others take the transport's own choice."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    from .distributed.torch_transport import TorchTransport

    device = torch.device(device) if device is not None else torch.device("cpu")
    nccl_here = device.type == "cuda" and dist.get_backend(group) == "nccl"
    cls = TorchTransport if transport_class is None else transport_class
    return cls(group=group, device=device if nccl_here else None)


def build_engine(algorithm: Algorithm, transport=None, *, workers: int = 1, seed: int = 0, device=None,
                 dtype: torch.dtype = torch.float32) -> RoundEngine:
    """The round engine of ``algorithm`` (see :func:`build_algorithm`) over ``transport`` (default:
    all ``workers`` in this process, on ``device``). ``seed`` derives every held worker's member
    generators (rank ``m`` draws what simulated worker ``m`` draws): the same on every rank."""
    if transport is None:
        transport = InProcessTransport(workers, device)
    return RoundEngine(algorithm, transport, seed=validation.seed(seed), device=device, dtype=dtype)


class EngineViews:
    """A runner's engine state under the names a reader expects (a mixin: ``self.engine``)."""

    @property
    def ledger(self):
        """Per round: uploads and bits (uplink: 8 x the bytes sent; downlink: the parameter-server
        convention; flags): ``ledger.totals()``."""
        return self.engine.ledger

    @property
    def iteration(self) -> int:
        """Rounds run so far (warm-up rounds included)."""
        return self.engine.iteration
