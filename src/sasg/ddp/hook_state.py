r"""The hook's state: one worker of the algorithm per rank, over the whole model.

Every rank holds what a rank of the distributed runner holds: its worker's state (error memory,
the lazy rule's buffers, staleness), a replica of the server (every worker's last message, the
recent squared steps), its member generators (seeded from ``(seed, rank)`` as in the simulator)
and the ledger. All of it is a :class:`sasg.engine.RoundEngine` over one flat
:class:`~sasg.core.layout.Layout` of the model's trained parameters in ``model.parameters()``
order: not per bucket, so DDP rebuilding its buckets after the first iteration changes nothing
and top-k is per tensor exactly as in the simulator. Where the round splits along tensors
(``overlap``), it is made in parts of that layout (runs of tensors fixed by the model, not by
DDP's buckets of the moment) whose exchanges run during the backward pass
(:class:`sasg.engine.parts.PartedRound`); the engine's state and step are the same.

Scale. The hook gets each rank's own gradient :math:`g_m` (DDP leaves the averaging to the hook)
and hands back, on every rank,

.. math:: G = \sum_m \mathrm{decoded}(q_m), \qquad q_m = C(v_m), \qquad
          v_m = \tfrac{1}{M} g_m + e_m, \qquad e_m \leftarrow v_m - \mathrm{decoded}(q_m)

— the engine's round with ``lr = 1``: the mean of the decompressed messages, in gradient units,
which is what DDP's own all-reduce hook returns (the mean gradient) when nothing is compressed.
The user's optimizer then steps on :math:`G`; with plain SGD at lr :math:`\eta` that is the
simulator's :math:`\theta \leftarrow \theta - \sum_m q_m` with its messages (formed from
:math:`\tfrac{\eta}{M} g`) written in units of :math:`\eta`. The error memory is fp32 whatever
the gradients' dtype (bf16/fp16 buckets are cast for compression and the result cast back).

Lazy rules (``wk1``, ``ps``, ``wk2``) compare against
:math:`thr_k = \frac{1}{cM\eta}\sum_j \|\theta^{j+1}-\theta^j\|^2` with the parameters' *real*
steps, whatever the optimizer made of the aggregate (momentum, weight decay, Adam): at the start of
round k+1 the hook measures :math:`\|\theta^{k+1}-\theta^k\|^2` from the parameters and its copy of
:math:`\theta^k`, and puts it in the rule's window in place of the engine's own step
(:meth:`sasg.engine.RoundEngine.record_step`). With plain SGD the step is :math:`\eta G_k`, the
same number up to float rounding. It needs the lr (``lr=``: a number, a function returning the
current one, or the optimizer, whose first group's lr is read every round).

Under Adam/AdamW (``step_metric="auto"``) the step is measured in Adam's own metric,
:math:`\|\sqrt{\hat v}\odot(\theta^{j+1}-\theta^j)\|^2` (:math:`\hat v` the optimizer's bias-corrected
second moment). Why: the rule compares *gradient* differences with :math:`thr_k`, and with SGD
:math:`(\theta^{j+1}-\theta^j)/\eta` is a gradient; Adam's step over its lr is
:math:`\hat m/\sqrt{\hat v}`, a number of order 1 per entry whatever the gradients' scale, and
times :math:`\sqrt{\hat v}` it is :math:`\hat m`, a gradient again. Measured (FC 784-512-10, AdamW
1e-3, ``wk1+topk``, 2 ranks, 2 epochs, seeds 0-2, ``benchmarks/hook_lazy.py``): the Euclidean step
makes the threshold so large that the rule skips all it may (76 % of uploads) and ends 0.8 points
below ``always+topk``; Adam's metric skips 47 % and ends level with it. For the same reason, where
momentum SGD's steps (a velocity, ~1/(1-mu) times the gradient) meet a rule that compares
*gradients* — without DGC's correction, or ``wk2``, whose fresh and stale velocities differ by a
gradient difference — the step is measured times :math:`1-\mu`. Measured (momentum 0.9, lr 0.02,
``sasg``, same runs): without it ``wk2`` skipped 72 % and lost 14 points; with it, it skips 6 %
and ends 1 point above ``always+topk``. ``wk1`` and ``ps`` under DGC compare velocities and take
the plain step. ``step_metric="euclidean"`` keeps the plain :math:`\|\theta^{j+1}-\theta^j\|^2`
everywhere.

Where a rank skips, a lazy rule's round steps by the round's messages scaled to M ranks rather
than by every rank's last message (``"last"``, the paper's): :mod:`sasg.core.aggregate` says why.
By default (``aggregate="rotating"``) rank k mod M also sends in round k whatever its rule says,
so no round goes without a fresh gradient: with momentum SGD the empty rounds were what the lazy
rules lost to (each repeated the latest senders' aggregate into the velocity). Under Adam/AdamW
the default is ``"senders"`` (no turns): a round in which no rank sends holds no new gradient,
and the hook hands the optimizer a zero gradient there, so it coasts on its moments instead of
taking the latest senders' aggregate again (which fed the same gradient into both moments twice).
Coasting kept AdamW as close to ``always+topk`` as the turns did, with twice the skips. With
``aggregate="senders"`` under SGD or momentum SGD an empty round repeats the aggregate (with
plain SGD a zero would lose the round). Measured: :mod:`sasg.core.aggregate`, docs/ddp-hook.md.

SASG's rule ``wk2`` compares the fresh gradient with :math:`\nabla\ell(\hat\theta_m;\xi_m^k)`, the
gradient at the rank's anchor (its parameters at its last upload) on the *same* minibatch. The
loop provides it: :meth:`HookState.second_gradient` (called with the step's loss before
``loss.backward()``) runs that forward/backward on a shadow copy of the module holding the anchor,
and only in rounds where the rule will check this rank (not in its warm-up, not when the staleness
bound forces an upload), which is what the simulator computes.
"""

from __future__ import annotations

import json
import zlib
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import validation
from ..engine import RoundEngine
from ..runtime import build_engine, process_transport
from .bucket_sums import BucketSums
from .buckets import ParameterIndex, bucket_nbytes, refuse_sparse_gradients
from .clipping import MeanNormClip, max_norm_of
from .hook_checkpoint import HookCheckpoint
from .hook_optimizer import OptimizerLink, lr_value
from .hook_overlap import Overlap
from .loss_scale import LossScaling, refuse_non_finite
from .second_gradient import SecondGradient
from .counting_transport import CountingTransport

# The hook's default codec: lossless, with Golomb-Rice index gaps (~10 bits an index, not 32).
DEFAULT_CODEC = "rice+fp32"


class HookState(SecondGradient, HookCheckpoint, OptimizerLink, Overlap):
    """One rank's state of the sasg communication hook (:func:`sasg.ddp.register` makes it).

    ``model``: the module DDP wraps (or its ``(name, parameter)`` pairs). The algorithm is
    checked at once; the round engine is built
    when the process group exists: in :func:`~sasg.ddp.register`, or at the first bucket when
    the state is handed to a framework that registers the hook itself (Lightning's
    ``DDPStrategy(ddp_comm_hook=..., ddp_comm_state=...)``).

    After that: ``ledger`` (per round: uploads, bits; ``ledger.totals()``), ``bits_by_rank``
    (8 x the bytes each rank has sent), ``rounds`` (hook rounds so far, plain all-reduce ones
    included), ``state_dict()`` / ``load_state_dict()`` for checkpoints.

    ``module``: the module whose shadow copy :meth:`second_gradient` runs (``wk2`` only; default
    ``model`` when that is a module; :func:`~sasg.ddp.register` passes the DDP model's module).
    ``overlap``, ``bucket_cap``: the round part by part during the backward pass
    (:class:`~sasg.ddp.hook_overlap.Overlap` says how and when). ``scaler``: an fp16 job's
    ``torch.amp.GradScaler`` (:mod:`sasg.ddp.loss_scale`). ``clip_grad_norm``: gradient
    clipping, in place of the job's own ``clip_grad_norm_`` call: every rank's gradient scaled
    by DDP's clipping factor of the mean gradient, whose norm is estimated
    (:mod:`sasg.ddp.clipping`; ``grad_norm``). ``optimizer``: also linked later by
    :meth:`use_optimizer`, where a framework builds it after the state (Lightning).
    """

    def __init__(
        self,
        model: nn.Module | Iterable[tuple[str, Tensor]],
        algo: str = "always+topk",
        codec: str = DEFAULT_CODEC,
        *,
        density: float = 0.01,
        window: int = 10,
        threshold_scale: float = 2.0,
        lr=None,
        start_iter: int = 0,
        seed: int = 0,
        process_group=None,
        tensor_policy: str | None = None,
        warmup: int | None = None,
        optimizer=None,
        momentum_correction: bool = True,
        freeze_variance: bool = True,
        module: nn.Module | None = None,
        aggregate: str | None = None,
        step_metric: str = "auto",
        overlap: bool | None = None,
        bucket_cap: int | None = None,
        scaler=None,
        clip_grad_norm: float | None = None,
    ):
        start_iter = validation.integer(start_iter, "start_iter", ge=0,
                                        fix="start_iter is the rounds of plain all-reduce first, e.g. start_iter=0")
        seed = validation.seed(seed)
        named = model.named_parameters() if isinstance(model, nn.Module) else model
        self._module = module if module is not None else (model if isinstance(model, nn.Module) else None)
        self._shadow: nn.Module | None = None  # wk2: the module at this rank's anchor (second_gradient)
        self._stale: Tensor | None = None  # ... and the gradient it gave, for the round numbered:
        self._stale_round = -1
        self._asked = False  # has the loop ever called second_gradient?
        self.index = ParameterIndex(named)
        refuse_sparse_gradients(self._module, self.index)
        # What the optimizer decides (the algorithm, the lr, its corrections) is made from these, now
        # and again where the optimizer comes later (use_optimizer: sasg.ddp.hook_optimizer).
        self._choices = {"algo": algo, "codec": codec, "lr": lr, "momentum_correction": momentum_correction,
                         "freeze_variance": freeze_variance, "step_metric": step_metric,
                         "knobs": {"density": density, "window": window, "threshold_scale": threshold_scale,
                                   "tensor_policy": tensor_policy, "warmup": warmup, "aggregate": aggregate}}
        self._link(optimizer)
        self._theta_round = -1  # the engine round whose theta^k self._theta holds (-1: none)
        self.start_iter = int(start_iter)
        self.seed = int(seed)
        self.group = process_group
        self.rounds = 0  # hook rounds so far, plain all-reduce ones (start_iter) included
        self.engine: RoundEngine | None = None
        self.transport: CountingTransport | None = None
        self._pending: list[tuple[object, torch.futures.Future]] = []
        self._rounds_summed_in_buckets = 0  # rounds whose aggregate went straight into the buckets
        self._sums: BucketSums | None = None  # ... and where the latest one went (BucketSums.of)
        self._unused, self.dropped_by_ddp = None, 0  # find_unused_parameters: sasg.ddp.unused (register sets it)
        self._scaling = LossScaling.of(scaler, process_group)  # fp16's GradScaler: sasg.ddp.loss_scale
        self._clip = max_norm_of(clip_grad_norm)  # the gradients clipped first: sasg.ddp.clipping
        if self._clip is not None and start_iter:
            raise ValueError("clip_grad_norm: the start_iter rounds are DDP's own all-reduce, which the hook does not "
                             "clip; pass start_iter=0 (warmup= gives dense rounds through the hook, clipped)")
        self._clipper: MeanNormClip | None = None  # (start)
        self._init_overlap(overlap, bucket_cap)

    # ----- setup -------------------------------------------------------------------------------------
    def start(self) -> "HookState":
        """Build the round engine on the process group (once; every rank at the same point: it
        checks that all ranks registered the same algorithm, settings and parameter shapes)."""
        if self.engine is not None:
            return self
        self._require_lr()
        transport = process_transport(self.index.params[0].device, self.group, CountingTransport)
        if transport is None:
            raise RuntimeError(
                "the sasg hook needs an initialised process group (torch.distributed.init_process_group)"
            )
        overlaps = self._overlaps(transport)  # an overlap that cannot be is refused before the identity check
        identity = dict(self._identity(), overlap=overlaps)
        fingerprint = zlib.crc32(json.dumps(identity, sort_keys=True).encode()) & 0x7FFFFFFF
        seen = transport.all_gather_int(fingerprint)
        if len(set(seen)) != 1:
            raise ValueError(
                f"rank {transport.rank}: the ranks registered the sasg hook differently (algorithm, codec, "
                "settings, seed or the model's parameter shapes differ): every rank must make the same call"
            )
        d, device = self.index.numel, self.index.device
        self.engine = build_engine(self.algorithm, transport, seed=self.seed, device=device, dtype=torch.float32)
        self.transport = transport
        if overlaps:
            self._start_overlap()
        if self._clip is not None:
            self._clipper = MeanNormClip(self._clip, self.index, self.seed)
        # fp32 whatever the gradients' dtype: the round's gradient, parameters and aggregate.
        self._grads = torch.zeros(d, device=device, dtype=torch.float32)
        self._theta = torch.zeros(d, device=device, dtype=torch.float32)
        return self

    def _identity(self) -> dict:
        return {"algorithm": self.spec.composition, "codec": self.codec, "settings": self._settings(),
                "parameters": self.index.describe(), "start_iter": self.start_iter, "seed": self.seed,
                "momentum_correction": self.momentum is not None, "freeze_variance": self.variance is not None,
                "scaler": self._scaling is not None,  # (with a scaler every round makes one more call)
                "clip_grad_norm": self._clip}

    def _settings(self) -> dict:
        return self.spec.settings.to_dict()

    # ----- what it reports ---------------------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        return self.start().engine.num_workers

    @property
    def ledger(self):
        """Per compressed round, uploads and bits, in a DDP job's terms (:mod:`sasg.ddp.hook_ledger`:
        ``totals()`` has no parameter-server downlink and labels the sizes or flags exchange)."""
        from .hook_ledger import HookLedger

        engine = self.start().engine
        return HookLedger(engine.ledger, sizes=not engine.template.fixed_size(self.algorithm.codec))

    @property
    def bits_by_rank(self) -> list[int]:
        """8 x the bytes each rank has sent so far (each message once; plain all-reduce rounds
        count each rank's gradient as it is)."""
        return list(self.start().transport.bits_by_rank)

    @property
    def grad_norm(self) -> Tensor | None:
        """With ``clip_grad_norm``: the latest round's mean gradient 2-norm before clipping, what
        ``clip_grad_norm_`` returns under DDP (estimated, the same on all ranks); else None."""
        return None if self._clipper is None else self._clipper.grad_norm

    @property
    def clipped_rounds(self) -> int | None:
        """With ``clip_grad_norm``: the rounds that clipped (saved as ``rounds`` is), else None."""
        return None if self._clipper is None else int(self._clipper.clipped)

    @property
    def error(self) -> Tensor | None:
        """This rank's error memory (flat, fp32, layout order), or None without error feedback."""
        error = self.start().engine.workers.buffers.get("error")
        return None if error is None else error[0]

    # ----- the hook ----------------------------------------------------------------------------------
    def on_bucket(self, bucket) -> torch.futures.Future:
        """The hook's body for one bucket (see :func:`sasg.ddp.comm_hook`)."""
        self.start()
        if self.rounds < self.start_iter:
            return self._allreduce(bucket)
        fut: torch.futures.Future = torch.futures.Future()
        self._pending.append((bucket, fut))
        waiting = self._pending
        try:
            if self._parted is not None:
                # This bucket's tensors compressed and on their way now, while the backward pass
                # computes the buckets after it (module docstring of sasg.engine.parts).
                self._send_bucket(bucket)
            if not bucket.is_last():
                # The round needs every bucket: this future completes when the last one arrives
                # (DDP waits for all of them only after the backward pass).
                return fut
            self._pending = []
            self._round([b for b, _ in waiting])
        except BaseException as e:
            # No bucket is left waiting; the error itself surfaces from loss.backward() on this rank.
            self._pending = []
            self._abandon_parts()
            for _, f in waiting[:-1]:
                f.set_exception(e)
            raise
        for b, f in waiting:
            f.set_result(b.buffer())
        return fut

    def _allreduce(self, bucket) -> torch.futures.Future:
        """A plain round: the mean gradient, as DDP's default hook computes it."""
        buffer = bucket.buffer()
        M = self.engine.num_workers
        self.transport.count_dense(bucket_nbytes(bucket))
        if bucket.is_last():
            self.rounds += 1
        if M == 1:
            fut: torch.futures.Future = torch.futures.Future()
            fut.set_result(buffer)
            return fut
        buffer.div_(M)
        work = dist.all_reduce(buffer, group=self.group, async_op=True)
        return work.get_future().then(lambda f: f.value()[0])

    def _round_start(self) -> None:
        """What a round reads before its gradients: theta^k where someone needs it."""
        engine, index = self.engine, self.index
        if self._needs_theta:  # theta^k: lazy rules measure drift from their anchors, DGC's decay reads it
            if self.algorithm.lazy and self._theta_round == engine.iteration - 1 >= 0:
                # The real step of the round before, whatever the optimizer made of it.
                engine.record_step(index.step_sq_from(self._theta, self._step_metric()))
            index.flat_params(self._theta)
            self._theta_round = engine.iteration

    def _round(self, buckets) -> None:
        engine, index = self.engine, self.index
        parted = self._parted
        # bytes each rank sends this round besides its message (the clipping's sketch, Adam's second
        # moment now and then): on the ledger's uplink line too
        extra = 0
        if parted is None:
            found = None if self._scaling is None else self._scaling.unscale(buckets)
            if self._in_place:
                grads = index.blocks(index.round_gradients(buckets), self._grads)
            else:
                grads = index.gather(buckets, self._grads).view(1, -1)
            if self._clipper is not None:  # before anything of the round reads them (sasg.ddp.clipping)
                extra = self._clipper.clip_(grads if self._in_place else index.split(self._grads),
                                            engine.num_workers, self.group, flag=found)
                self.transport.count_dense(extra)
            if found is not None and not self._scaling.agree(found, buckets, self.transport, engine.ledger,
                                                             summed=self._clipper is not None, sent=extra):
                self.rounds += 1  # a non-finite gradient: the scaler skips the step, no round (loss_scale)
                return
            if not self._asked and self.algorithm.needs_stale_grads and self.rounds >= self.start_iter:
                self._second_gradient_of_round(None)  # never asked for: say how, at once (not rounds later)
            self._round_start()
        else:
            self.index.check_complete(self._filled)
            self._filled, self._views = set(), {}
        threshold_lr = None
        if self.algorithm.lazy:
            threshold_lr = lr_value(self._lr())  # thr_k = sum of real squared steps / (c M eta)
        compressed = engine.iteration >= self.algorithm.warmup
        if self.variance is not None:  # Adam: the local second moment, averaged now and then
            moment = self.variance.observe(self._grads, self._average)
            if moment:
                self.transport.count_dense(moment)
                extra += moment
        sums = None  # the aggregate straight into the buckets, where it can go there (BucketSums)
        if parted is not None:
            if self.momentum is None and not parted.dense:
                sums = self._sums = BucketSums.of(index, buckets, self._sums)
                if sums is not None:
                    sums.zero()  # (every part's gradient has been read: the parts were all sent)
                    self._rounds_summed_in_buckets += 1
            result = parted.finish(self._theta, into=sums)
        else:
            if self.momentum is not None:  # DGC: the velocity is what travels (sasg.ddp.optimizers)
                grads = self.momentum.accumulate(grads if self._in_place else self._grads, self._theta).view(1, -1)
            result = engine.step(self._theta, grads, self._second_gradient_of_round, 1.0, threshold_lr=threshold_lr)
        if extra:  # every rank's
            engine.ledger.add_up(8 * extra * engine.num_workers)
        if sums is None:  # (with sums, the buckets hold the aggregate already: every rank sent, no coasting)
            self._hand_back(result, compressed, buckets)
        if self._scaling is not None:
            self._scaling.rescale(buckets, engine.ledger)
        else:
            refuse_non_finite(buckets, self.rounds)
        if self._watch is not None:
            self._watch.after_round(buckets, self.rounds, 1.0 if self._scaling is None else self._scaling.scale)
        if self._unused is not None:  # (find_unused_parameters: sasg.ddp.unused; it tells the watch too)
            self._unused.after_round(self, bool(result.flags[self.transport.rank]))
        self._compressed_round = compressed
        self.rounds += 1

    def _hand_back(self, result, compressed: bool, buckets) -> None:
        """The round's aggregate (or what the optimizer takes instead) into the buckets."""
        engine, flags = self.engine, result.flags
        step = result.step  # sum_m decoded(q_m): the round's aggregate, for the user's optimizer
        if self.momentum is not None:
            me = self.transport.rank
            self.momentum.mask(engine.server.last, me, compressed and bool(flags[me]))
            step = self.momentum.to_gradient(step, self._grads)
        if self._coasts and not bool(flags.any()):
            # Nobody sent: the round holds no new gradient, and Adam coasts on its moments given a
            # zero one; the engine's repeat of the latest senders' aggregate would feed the same
            # gradient into both moments twice. (SGD and momentum SGD take turns by default, so
            # no round is empty; under "senders" they keep the repeat: with plain SGD a zero would
            # lose the round, under DGC the repeat is the velocity's step again.)
            step = self._grads.zero_()
        self.index.scatter(step, buckets)
