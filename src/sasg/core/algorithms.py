r"""The four algorithms as compositions of a trigger, a compressor and (optional) error memory.

=========  =========  ==========  ============
algorithm  trigger    compressor  error memory
=========  =========  ==========  ============
sgd        always     identity    no
sparse     always     top-k       yes
lasg       lazy WK2   identity    no
sasg       lazy WK2   top-k       yes
=========  =========  ==========  ============

One round for worker m that uploads (``eta`` is the lr on the **mean** of the M gradients)::

    v   = (eta / M) * g + e_m
    q_m = compress(v)           # what crosses the network
    e_m = v - q_m               # exactly, see the compressors
    anchor_m = theta ; tau_m = 1

A skipper sends nothing and ``tau_m += 1``. The server steps
:math:`\theta^{k+1} = \theta^k - \sum_m q_m` with the last message of every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .compressors import Identity, TopK
from .layout import Layout
from .payload import DensePayload, Payload
from .state import ServerState, WorkerState
from .scratch import scratch
from .triggers import AlwaysTrigger, LazyTrigger, squared_change

ALGORITHMS = ("sgd", "sparse", "lasg", "sasg")


@dataclass
class Algorithm:
    name: str
    trigger: AlwaysTrigger | LazyTrigger
    compressor: Identity | TopK
    error_feedback: bool

    @property
    def lazy(self) -> bool:
        return self.trigger.lazy

    @property
    def layout(self) -> Layout:
        return self.compressor.layout

    # ----- state ---------------------------------------------------------------------------
    def init_worker_state(self, n: int, device=None, dtype=torch.float32) -> WorkerState:
        d = self.compressor.layout.numel
        return WorkerState(
            staleness=torch.ones(n, dtype=torch.long, device=device),
            error=torch.zeros(n, d, device=device, dtype=dtype) if self.error_feedback else None,
            anchor=torch.zeros(n, d, device=device, dtype=dtype) if self.lazy else None,
        )

    def init_server_state(self, num_workers: int, device=None, dtype=torch.float32) -> ServerState:
        window = max(0, self.trigger.window - 1) if self.lazy else 0
        return ServerState(
            last=self.compressor.empty(num_workers, device=device, dtype=dtype),
            step_sq=torch.zeros(window, dtype=torch.float64),
        )

    # ----- trigger -------------------------------------------------------------------------
    def forced(self, iteration: int, workers: WorkerState) -> Tensor:
        """(N,) bool: who uploads without needing the stale gradient."""
        return self.trigger.forced(iteration, workers.staleness)

    def threshold(self, server: ServerState, num_workers: int, lr: float) -> float:
        return self.trigger.threshold(server.step_sq, num_workers, lr)

    def decide(
        self,
        iteration: int,
        workers: WorkerState,
        server: ServerState,
        num_workers: int,
        lr: float,
        grads: Tensor | Sequence[Tensor],
        stale_grads: Callable[[Tensor], Tensor | Sequence[Tensor]],
    ) -> Tensor:
        """(N,) bool upload mask. ``grads`` are the N fresh gradients; ``stale_grads(rows)``
        returns the gradients at the anchors of those rows on their current minibatches. Both
        come as one flat tensor or as per-segment column blocks (:meth:`Layout.as_columns`).
        ``stale_grads`` is called only for workers the rule must check (never in warm-up, never
        for a forced upload, never for ``always`` triggers)."""
        upload = self.forced(iteration, workers)
        if not self.lazy:
            return upload
        check = (~upload).nonzero().squeeze(1)
        if check.numel():
            stale = self.layout.as_columns(stale_grads(check))
            cols = self.layout.as_columns(grads)
            # ||g - g_stale||^2 per row, formed in a reused (d,) buffer.
            work = scratch(self, "difference", (self.layout.numel,), cols[0])
            diff_sq = squared_change(cols, check, stale, work)
            thr = self.threshold(server, num_workers, lr)
            upload[check] = self.trigger.fires(diff_sq, thr)
        return upload

    # ----- worker side ---------------------------------------------------------------------
    def upload(
        self,
        workers: WorkerState,
        upload: Tensor,
        grads: Tensor | Sequence[Tensor],
        theta: Tensor,
        scale: float,
    ) -> Payload:
        """Apply the round to ``N`` workers given the upload mask; return the payload of the
        uploaders (in worker order). ``grads`` holds all N rows or only the uploaders' rows, as
        one ``(n, d)`` tensor or as per-segment column blocks (:meth:`Layout.as_columns`)."""
        rows = upload.nonzero().squeeze(1)
        n_up = rows.numel()
        everyone = n_up == upload.shape[0]
        segments = self.layout.segments
        cols = self.layout.as_columns(grads)
        all_rows = cols[0].shape[0] == n_up  # grads holds exactly the uploaders' rows
        # A compressor with an in-place error (its payload copies what it sends) lets the error
        # memory be updated where it lies: no (N, d) temporaries at all.
        in_place = self.error_feedback and getattr(self.compressor, "error_", None) is not None
        if in_place and everyone:
            for seg, g in zip(segments, cols):  # v = e + scale * g, in the memory itself
                workers.error[:, seg.offset : seg.end].add_(g, alpha=scale)
            v = workers.error
            q = self.compressor.compress(v)
            self.compressor.error_(v, q)  # v is workers.error
        elif in_place:
            # e_m += scale * g_m row by row in the memory itself (no gathered copies of g or e),
            # the uploaders' rows compressed where they lie, and their sent entries zeroed there.
            rows_list = rows.tolist()
            for i, r in enumerate(rows_list):
                src = i if all_rows else r
                for seg, g in zip(segments, cols):
                    workers.error[r, seg.offset : seg.end].add_(g[src], alpha=scale)
            q = self.compressor.compress(workers.error, rows)
            for i, r in enumerate(rows_list):
                workers.error[r].index_fill_(0, q.indices[i], 0.0)  # = error_(v, q), in place
        elif not self.error_feedback:
            # v = scale * g formed block by block into one fresh (n_up, d) buffer: the message
            # (a dense payload keeps v, so it cannot be a reused buffer).
            v = torch.empty(n_up, self.layout.numel, dtype=cols[0].dtype, device=cols[0].device)
            for seg, g in zip(segments, cols):
                torch.mul(g if all_rows else g[rows], scale, out=v[:, seg.offset : seg.end])
            q = self.compressor.compress(v)
            if isinstance(q, DensePayload) and q.values is v:
                q.owned = True  # v is this round's own buffer: the server may keep it uncopied
        else:  # error feedback with a compressor that has no in-place error: the plain form
            if isinstance(grads, Tensor):
                g = grads if all_rows else grads[rows]
            else:
                g = torch.cat([c if all_rows else c[rows] for c in cols], dim=1)
            v = torch.add(workers.error[rows], g, alpha=scale)
            q = self.compressor.compress(v)
            workers.error[rows] = self.compressor.error(v, q)
        if self.lazy:
            if everyone:
                workers.anchor.copy_(theta.expand_as(workers.anchor))
            else:  # row by row: several times faster than an index_put of a broadcast theta
                for r in rows.tolist():
                    workers.anchor[r].copy_(theta)
        workers.staleness += 1
        workers.staleness[rows] = 1
        return q

    # ----- server side ---------------------------------------------------------------------
    def aggregate(self, server: ServerState, senders: Tensor, payload: Payload, step: Tensor) -> Tensor:
        """Store the senders' fresh messages, write ``sum_m q_m`` into ``step`` and record its
        squared norm for the trigger window. Returns ``step``; the caller does ``theta -= step``."""
        if senders.numel():
            server.last.assign(senders, payload)
        server.last.sum(step)
        server.push_step(float(torch.dot(step, step).item()) if server.step_sq.numel() else 0.0)
        server.iteration += 1
        return step

    def describe(self) -> dict:
        return {
            "algorithm": self.name,
            **self.trigger.describe(),
            **self.compressor.describe(),
            "error_feedback": self.error_feedback,
        }


def make_algorithm(name: str, layout: Layout, density: float = 0.01, window: int = 10, c: float = 2.0) -> Algorithm:
    """Build one of :data:`ALGORITHMS` for a parameter layout."""
    key = name.strip().lower()
    if key not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    lazy = key in ("lasg", "sasg")
    sparse = key in ("sparse", "sasg")
    trigger = LazyTrigger(window, c) if lazy else AlwaysTrigger()
    compressor = TopK(layout, density) if sparse else Identity(layout)
    return Algorithm(key, trigger, compressor, error_feedback=sparse)
