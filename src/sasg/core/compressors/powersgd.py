r"""``powersgd``: rank-``r`` PowerSGD (Vogels, Karimireddy and Jaggi, "PowerSGD: Practical Low-Rank
Gradient Compression for Distributed Optimization", NeurIPS 2019, arXiv 1905.13727), aggregated as
in the paper: the workers' ``P`` factors are summed first, the ``Q`` factors are computed against
the orthonormalized sum.

Every tensor with at least two dimensions is read as a matrix :math:`M_s \in \mathbb{R}^{n_s
\times m_s}` (its first dimension against the others: a conv kernel ``(out, in, kh, kw)`` is
``(out, in*kh*kw)``) and sent at rank :math:`r_s = \min(r, n_s, m_s)`; a tensor with one
dimension, or a matrix with a dimension 1 (a vector in disguise), is sent as it is (the paper's
biases). For the workers ``U`` that upload this round, each with ``v_m`` (its memory's vector,
e.g. :math:`e_m + \frac{\eta}{M} g_m`; :math:`M_{m,s}` its segment ``s``):

.. math::

    \tilde Q_s &= \mathrm{orth}(Q_s^{\text{warm}}) \\
    P_{m,s} &= M_{m,s} \tilde Q_s                      &&\text{first exchange: every uploader's } P \\
    \hat P_s &= \mathrm{orth}\Big(\sum_{m \in U} P_{m,s}\Big)  &&\text{on every holder of the server} \\
    Q_{m,s} &= M_{m,s}^\top \hat P_s                   &&\text{second exchange (the engine's): every uploader's } Q \\
    \mathrm{decoded}(q_m)_s &= \hat P_s Q_{m,s}^\top, \qquad
    \sum_{m \in U} \mathrm{decoded}(q_m)_s = \hat P_s \Big(\sum_{m\in U} Q_{m,s}\Big)^\top
      = \hat P_s \hat P_s^\top \sum_{m \in U} M_{m,s}

and the warm start of the next round is :math:`Q_s^{\text{warm}} \leftarrow \sum_{m \in U}
Q_{m,s}` (unchanged in a round nobody uploads), starting from i.i.d. standard normal entries drawn
from the run seed (the same on every holder). ``orth`` is a reduced QR (Householder: orthonormal
columns also where its argument is rank-deficient).

Relation to the paper's Algorithm 1: with every worker uploading this is its compress+aggregate
with all-reduced sums instead of means (the orthogonalization removes the scale) and the step is
the sum of the decoded messages, as for every compressor here. Error feedback (``ef``, the
default memory) keeps :math:`e_m = v_m - \hat P Q_m^\top`, the worker's own residual; the paper
keeps :math:`v_m - \frac1M\sum_j \hat P Q_j^\top`. The two memories differ worker by worker but
have the same sum, and the sum is all the next round depends on (:math:`\sum_m P_m` and
:math:`\sum_m Q_m` are linear in :math:`\sum_m v_m`): the parameters follow the same trajectory.
One addition: the warm start is orthonormalized before use. :math:`\hat P\hat P^\top` depends
only on the column span of :math:`M\tilde Q`, which an invertible change of basis of ``Q`` leaves
as it is, so this changes nothing where :math:`Q^{\text{warm}}` has full column rank; where it
has lost rank (a sum of gradients of rank below ``r``, e.g. a layer whose inputs are always 0)
it restores it, so that at full rank (:math:`r \ge \min(n_s, m_s)`) the aggregate is exactly
:math:`\sum_m M_m` (up to float rounding) and PowerSGD equals dense SGD.

A lazy trigger: only the uploaders take part in both exchanges; a skipper's last message
(:math:`\hat P Q^\top` of its last upload, with that round's basis) stays on the server.

Bits: an uploader sends :math:`\sum_s r_s n_s` values in the first exchange and
:math:`\sum_s r_s m_s` plus the vectors' entries in the second, each encoded by the run's codec
for its own layout (``paper32``: 32 bits each); the ledger counts both (and, for a lazy trigger,
the first exchange's flags too). The rank is ``rank`` (default 2, the paper's main setting); the
registered ``powersgd`` uses the default, and another rank is a plug-in one line long
(``register("compressor", "powersgd4", "...", lambda layout, s: PowerSGD(layout, rank=4))``).

Engine capabilities used (see :mod:`.protocol`): ``server_buffers`` (the warm start, saved in
checkpoints with the server's state) and ``begin_round`` (the first exchange).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...seeds import worker_seed
from ..layout import Layout
from ..payloads.dense import DensePayload
from ..payloads.encoded import transmit
from ..payloads.lowrank import LowRankGeometry, LowRankPayload

DEFAULT_RANK = 2
WARM_START = "powersgd_q"  # the server buffer of the warm-start Q factors
SHARED_STREAM = 3  # seed stream of the initial Q (drawn once, the same on every holder)


def own(t: Tensor) -> Tensor:
    """A fresh contiguous copy: BLAS results can depend on where an operand lies in memory (its
    alignment), so every product here reads fresh copies and writes a fresh result. A row then
    gives the same bits alone on a rank as among the simulator's rows."""
    return t.clone(memory_format=torch.contiguous_format)


def orthonormal(a: Tensor) -> Tensor:
    """Orthonormal columns spanning (at least) the columns of ``a`` (``k x r``, ``r <= k``): the Q
    factor of a reduced QR. Half precision is factored in float32 (LAPACK has no half QR)."""
    work = own(a) if a.dtype in (torch.float32, torch.float64) else a.float()
    return torch.linalg.qr(work, mode="reduced").Q.to(a.dtype)


def ranks_for(layout: Layout, rank: int) -> list[int]:
    """``min(rank, n_s, m_s)`` for every matrix-shaped tensor, 0 for one sent as it is."""
    out = []
    for seg in layout.segments:
        n = seg.shape[0] if len(seg.shape) >= 2 else 1
        m = seg.numel // n
        out.append(min(rank, n, m) if len(seg.shape) >= 2 and n > 1 and m > 1 else 0)
    return out


class PowerSGD:
    """Rank-``rank`` PowerSGD; ``seed`` offsets the initial ``Q`` draw from the run seed."""

    name = "powersgd"
    default_memory = "ef"

    def __init__(self, layout: Layout, rank: int = DEFAULT_RANK, seed: int = 0):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"powersgd: rank must be an integer >= 1, got {rank!r}")
        self.layout = layout
        self.rank = rank
        self.seed = int(seed)
        self.geometry = LowRankGeometry(layout, ranks_for(layout, rank))

    # ----- engine capabilities ---------------------------------------------------------------
    def server_buffers(self, seed: int = 0, device=None, dtype=torch.float32) -> dict[str, Tensor]:
        """The warm start: every product block's ``Q`` (``m_s x r_s``, row-major, back to back),
        i.i.d. standard normal from (run seed, ``seed``), the same on every holder."""
        gen = torch.Generator().manual_seed(worker_seed(int(seed) + self.seed, 0, SHARED_STREAM))
        parts = [torch.randn(b.cols * b.rank, generator=gen) for b in self.geometry.products]
        q = torch.cat(parts) if parts else torch.zeros(0)
        return {WARM_START: q.to(device=device, dtype=dtype)}

    def begin_round(self, link) -> "PowerSGDRound":
        """This round's compressor: its first exchange goes through ``link``."""
        return PowerSGDRound(self, link)

    # ----- the protocol without an engine: rows as the only senders, the initial Q --------------
    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> LowRankPayload:
        """The messages of ``rows`` as if they were a round's only uploaders (their ``P`` summed in
        this process) with the initial ``Q`` of run seed 0: for inspecting the compressor alone;
        the engine's rounds use :meth:`begin_round`."""
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        warm = self.server_buffers(0, v.device, v.dtype)[WARM_START]
        p = self.project(v, rows, warm)
        basis = self.basis(p.sum(0, keepdim=True) if p.shape[0] else p.new_zeros(1, p.shape[1]))
        return self.messages(v, rows, basis)

    def empty(self, n: int, device=None, dtype=torch.float32) -> LowRankPayload:
        g = self.geometry
        return LowRankPayload(torch.zeros(n, g.basis_width, device=device, dtype=dtype),
                              torch.zeros(n, g.coef_width, device=device, dtype=dtype), g)

    def describe(self) -> dict:
        return {"compressor": self.name, "rank": self.rank}

    # ----- the maths, message by message (the same bits alone on a rank or among many) ---------
    def project(self, v: Tensor, rows: Sequence[int], warm: Tensor) -> Tensor:
        """``(n, basis_width)``: :math:`P_{m,s} = M_{m,s}\\,\\mathrm{orth}(Q_s^{warm})` for every row."""
        out = v.new_empty(len(rows), self.geometry.basis_width)
        q_off = 0
        for b in self.geometry.products:
            q = orthonormal(warm[q_off : q_off + b.cols * b.rank].view(b.cols, b.rank))
            q_off += b.cols * b.rank
            for i, r in enumerate(rows):
                m = own(v[r, b.segment.offset : b.segment.end]).view(b.rows, b.cols)
                out[i, b.basis : b.basis_end].copy_(torch.mm(m, q).view(-1))
        return out

    def basis(self, p_sum: Tensor) -> Tensor:
        """``(1, basis_width)``: :math:`\\hat P_s = \\mathrm{orth}(\\sum_m P_{m,s})` per block."""
        out = torch.empty_like(p_sum)
        for b in self.geometry.products:
            p = p_sum[0, b.basis : b.basis_end].view(b.rows, b.rank)
            out[0, b.basis : b.basis_end].view(b.rows, b.rank).copy_(orthonormal(p))
        return out

    def messages(self, v: Tensor, rows: Sequence[int], basis: Tensor) -> LowRankPayload:
        """:math:`Q_{m,s} = M_{m,s}^\\top \\hat P_s` per product block, the values elsewhere."""
        coef = v.new_empty(len(rows), self.geometry.coef_width)
        for b in self.geometry.blocks:
            p = own(basis[0, b.basis : b.basis_end]).view(b.rows, b.rank) if b.rank else None
            for i, r in enumerate(rows):
                seg = v[r, b.segment.offset : b.segment.end]
                if b.rank:
                    coef[i, b.coef : b.coef_end].copy_(torch.mm(own(seg).view(b.rows, b.cols).t(), p).view(-1))
                else:
                    coef[i, b.coef : b.coef_end].copy_(seg)
        return LowRankPayload(basis.expand(len(rows), -1), coef, self.geometry)


class PowerSGDRound:
    """PowerSGD for one round of a :class:`~sasg.engine.RoundEngine`: ``compress`` makes the first
    exchange (every uploader's ``P``) through the engine's link, ``close`` makes it for a holder
    whose memory did not call ``compress``, ``empty`` is the template the engine decodes the
    second exchange with (this round's basis), ``received`` updates the warm start."""

    def __init__(self, compressor: PowerSGD, link):
        self.compressor = compressor
        self.link = link
        self.layout = compressor.layout
        self.name = compressor.name
        self.default_memory = compressor.default_memory
        self._basis: Tensor | None = None

    @property
    def warm(self) -> Tensor:
        return self.link.server.buffers[WARM_START]

    def compress(self, v: Tensor, rows=None, *, generators=None, donate: bool = False) -> LowRankPayload:
        if self._basis is not None:
            raise RuntimeError("powersgd: compress was called twice in one round (its exchange runs once)")
        c, g = self.compressor, self.compressor.geometry
        rows = list(range(v.shape[0])) if rows is None else list(rows)
        if g.basis_layout is None:  # nothing to factor: no first exchange on any holder
            self._basis = v.new_zeros(1, 0)
        else:
            codec = g.codec(self.link.codec, "basis")
            sent = transmit(DensePayload(c.project(v, rows, self.warm), owned=True), codec)
            template = DensePayload(v.new_zeros(1, g.basis_width))
            _, p_all, _ = self.link.exchange(sent, template, codec)  # every uploader's P, in worker order
            total = p_all.values.sum(0, keepdim=True) if p_all.num_messages else v.new_zeros(1, g.basis_width)
            self._basis = c.basis(total)
        return c.messages(v, rows, self._basis)

    def close(self) -> None:
        """The first exchange happens on every holder, every round (a collective)."""
        if self._basis is None:
            if bool(self.link.upload.any()):
                raise RuntimeError("powersgd: the memory sent messages without calling compress")
            d = self.layout.numel
            self.compress(self.warm.new_zeros(0, d), [])

    def empty(self, n: int, device=None, dtype=torch.float32) -> LowRankPayload:
        if self._basis is None:
            raise RuntimeError("powersgd: the round's basis is not known before its first exchange")
        g = self.compressor.geometry
        return LowRankPayload(self._basis.to(device=device, dtype=dtype).expand(n, -1),
                              torch.zeros(n, g.coef_width, device=device, dtype=dtype), g)

    def received(self, senders: Tensor, payload: LowRankPayload) -> None:
        """Warm start of the next round: :math:`Q_s \\leftarrow \\sum_{m\\ \\text{sent}} Q_{m,s}`."""
        if not senders.numel():
            return
        warm, off = self.warm, 0
        for b in self.compressor.geometry.products:
            width = b.cols * b.rank
            torch.sum(payload.coefficients[:, b.coef : b.coef_end], dim=0, out=warm[off : off + width])
            off += width

    def describe(self) -> dict:
        return self.compressor.describe()
