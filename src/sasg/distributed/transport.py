"""What crosses between ranks each round, on ``torch.distributed`` — and a byte count of it.

Two exchanges per round, both symmetric (every rank makes the same calls in the same order, decided
only from data every rank already holds, so no rank ever waits on a send that will not happen):

1. **flags** — ``all_gather`` of one byte per rank: "I upload this round" (lazy triggers only;
   with an always-upload trigger every rank knows the answer and nothing is sent);
2. **payloads** — one ``all_to_all_single`` with *uneven* splits computed from the flags: an
   uploader sends its message, packed by its codec (:mod:`sasg.core.codecs`), to each of the
   other M-1 ranks; a skipper's splits are all zero, so it sends **no payload bytes**. When nobody uploads, the call is skipped
   altogether (every rank knows that from the flags).

:class:`TransportCounters` counts the bytes this rank hands to the collectives for other ranks,
by line (flags, payload). It implements :class:`sasg.engine.Transport` with one worker per rank
(``local_workers == [rank]``); the one-process case is :class:`sasg.engine.InProcessTransport`.
"""

from __future__ import annotations

import re
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ..accounting import FLAG_BITS_PER_WORKER
from ..core.payloads import Payload
from ..engine.transport import TransportCounters


class PeerFailure(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or the link broke."""


def _first_line(e: BaseException) -> str:
    """The gist of a backend error: first line, without the C++ source location and advice."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", line)
    line = line.split(". This is typically caused", 1)[0]
    return line if len(line) <= 200 else line[:197] + "..."


class TorchTransport:
    """The exchanges of a round over a ``torch.distributed`` process group (gloo or NCCL)."""

    def __init__(self, group=None, device=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchTransport needs an initialised process group (torch.distributed.init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if device is None:
            device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        self.device = torch.device(device)
        self.counters = TransportCounters()
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistError) as e:  # DistBackendError, gloo/NCCL errors, timeouts
            raise PeerFailure(
                f"rank {self.rank}: lost contact with the other workers during {what} "
                f"(a worker died, hung past the timeout, or the link broke): {_first_line(e)}"
            ) from e

    @property
    def local_workers(self) -> list[int]:
        return [self.rank]

    def flag_bits_per_round(self) -> int:
        """One bit per worker on the ledger (sent as one byte per rank and peer); nothing when
        there is no one to tell."""
        return FLAG_BITS_PER_WORKER * self.world_size if self.world_size > 1 else 0

    def gather_flags(self, mine: Tensor) -> Tensor:
        """(M,) bool on CPU: who uploads this round, from this rank's (1,) answer. Costs one byte
        per rank and peer."""
        M = self.world_size
        out = torch.empty(M, dtype=torch.uint8, device=self.device)
        t = mine.reshape(1).to(device=self.device, dtype=torch.uint8)
        self._call("the flag exchange", self._all_gather, out, t, group=self.group)
        self.counters.flag_rounds += 1
        self.counters.flag_bytes_sent += M - 1
        self.counters.flag_bytes_recv += M - 1
        return out.to("cpu", torch.bool)

    def exchange(self, flags: Tensor, mine: Payload, template: Payload, codec) -> Payload:
        """The senders' messages (``flags`` True), in rank order, identical on every rank.

        ``mine`` holds this rank's message (one row) if it uploads, zero rows otherwise; each
        message is ``template.message_bytes(codec)`` bytes, so no header is needed.
        """
        M, me, nb = self.world_size, self.rank, template.message_bytes(codec)
        flags = [bool(f) for f in flags.tolist()]
        self.counters.rounds += 1
        own = mine.encode(codec).reshape(-1).to(self.device) if flags[me] else None
        if flags[me] and own.numel() != nb:
            raise ValueError(f"rank {me}: message of {own.numel()} bytes, expected {nb}")
        rows: list[Tensor] = []
        if M > 1 and any(flags):  # the flags are the same on every rank: all call, or none
            in_splits = [nb if flags[me] and s != me else 0 for s in range(M)]
            out_splits = [nb if flags[s] and s != me else 0 for s in range(M)]
            send = own.repeat(M - 1) if flags[me] else torch.empty(0, dtype=torch.uint8, device=self.device)
            recv = torch.empty(sum(out_splits), dtype=torch.uint8, device=self.device)
            self._call(
                "the payload exchange", dist.all_to_all_single, recv, send,
                output_split_sizes=out_splits, input_split_sizes=in_splits, group=self.group,
            )
            self.counters.payload_rounds += 1
            self.counters.payload_bytes_sent += sum(in_splits)
            self.counters.payload_bytes_recv += sum(out_splits)
            chunks = iter(recv.split(nb)) if nb else iter(())
            for s in range(M):
                if flags[s]:
                    rows.append(own if s == me else next(chunks))
        elif flags[me]:
            rows.append(own)
        home = mine.values.device  # where the server replica lives (may differ: gloo + CUDA)
        if not rows:
            return template.decode(codec, torch.empty(0, nb, dtype=torch.uint8, device=home))
        return template.decode(codec, torch.stack(rows).to(home))

    def broadcast_(self, tensor: Tensor, src: int = 0) -> Tensor:
        """One-time setup broadcast (e.g. initial parameters); not counted per round."""
        self._call("the initial broadcast", dist.broadcast, tensor, src, group=self.group)
        return tensor

    def barrier(self) -> None:
        self._call("a barrier", dist.barrier, group=self.group)

    def all_sum_int(self, values: list[int]) -> list[int]:
        """Sum a few integers over ranks (end-of-run totals of the counters)."""
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        self._call("the final counter reduction", dist.all_reduce, t, group=self.group)
        return [int(v) for v in t.tolist()]

    def all_gather_int(self, value: int) -> list[int]:
        out = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        self._call("a setup exchange", self._all_gather, out, t, group=self.group)
        return [int(v) for v in out.tolist()]


def init_process_group_from_env(backend: str = "auto", timeout_s: float = 120.0, device: str = "cpu") -> TorchTransport:
    """``init_process_group`` from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    ``backend="auto"``: NCCL for a CUDA device, gloo otherwise. ``timeout_s`` bounds every
    collective, so a hung peer makes the others fail instead of waiting forever; a peer that dies
    closes its sockets and the others fail at once.
    """
    dev = torch.device(device)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        import os

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        kwargs = {"backend": backend, "timeout": timedelta(seconds=float(timeout_s))}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        try:
            dist.init_process_group(**kwargs)
        except (RuntimeError, ValueError, dist.DistError) as e:
            raise PeerFailure(f"could not join the process group ({backend}): {_first_line(e)}") from e
    return TorchTransport(device=dev)
