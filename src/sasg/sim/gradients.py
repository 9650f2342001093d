"""Per-worker gradients of the training loss, for a batch of workers at once.

``VmapGradients`` vectorises over workers with ``torch.func.vmap`` + ``functional_call``;
``LoopGradients`` computes the same thing one worker at a time (needed for models whose forward
pass mixes samples of a batch, e.g. BatchNorm, and kept as the reference). Calling either returns
a flat ``(N, d)`` buffer in the layout's order; ``blocks(...)`` returns the same numbers as one
``(N, d_s)`` block per parameter (:meth:`sasg.core.layout.Layout.as_columns`), which the
algorithm core takes as they are: vmap's per-parameter outputs are never copied into a flat
buffer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..core.layout import Layout
from ..core.workspace import Workspace


def _import_what_torch_func_imports_on_first_call() -> None:
    """torch.func's ``grad`` imports ``torch._dynamo`` the first time it runs (1.4 s of imports
    on a 2-core machine). Importing it when the gradient function is built puts that one-time
    cost at set-up, where it belongs, instead of inside the first training round (where it made
    up a third of a short run's time to accuracy)."""
    import torch._dynamo  # noqa: F401


def _loss_fn(model: nn.Module):
    def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (x,))
        # F.cross_entropy(logits, y) spelled out: the same gradient bit for bit (tested), and
        # under vmap it avoids nll_loss's batching rule, which cost about 0.5 ms of a 3.5 ms
        # call for the default FC setting.
        return -torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).mean()

    return loss


def flatten_into(layout: Layout, tensors: dict[str, Tensor], out: Tensor) -> Tensor:
    """Write named tensors into the flat row ``out`` (shape ``(d,)``) in the layout's order."""
    return torch.cat([tensors[s.name].reshape(s.numel) for s in layout.segments], out=out)


class LoopGradients:
    """One worker at a time. Models with buffers (BatchNorm) get the semantics of M separate
    workers sharing the server's parameters: worker m normalises with its own minibatch's
    statistics and keeps its **own** running statistics (no SyncBN), updated only by its fresh
    gradient's forward pass — the trigger's re-evaluation at the anchor leaves them alone."""

    backend = "loop"

    def __init__(self, model: nn.Module, layout: Layout):
        self.model = model
        self.layout = layout
        _import_what_torch_func_imports_on_first_call()
        self._grad = grad(_loss_fn(model))
        self._template = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.worker_buffers: list[dict[str, Tensor]] = []

    def buffers_of(self, worker: int) -> dict[str, Tensor]:
        """Worker ``worker``'s running statistics (created on first use)."""
        while len(self.worker_buffers) <= worker:
            self.worker_buffers.append({n: b.clone() for n, b in self._template.items()})
        return self.worker_buffers[worker]

    def __call__(
        self,
        params: Tensor,
        x: Tensor,
        y: Tensor,
        workers: Tensor | None = None,
        update_stats: bool = True,
        out: Tensor | None = None,
    ) -> Tensor:
        """``params``: ``(d,)`` shared by all workers or ``(N, d)`` one row each;
        ``x``: ``(N, B, ...)``; ``y``: ``(N, B)``; ``workers``: the worker index of each row
        (default ``0..N-1``); ``out``: an optional contiguous ``(N, d)`` buffer to write into.
        Returns ``(N, d)``."""
        n = x.shape[0]
        if out is None:
            out = torch.empty(n, self.layout.numel, dtype=params.dtype, device=params.device)
        worker_ids = None if workers is None else (workers.tolist() if isinstance(workers, Tensor) else list(workers))
        for row in range(n):
            p = params if params.dim() == 1 else params[row]
            m = row if worker_ids is None else int(worker_ids[row])
            buffers = self.buffers_of(m)
            if not update_stats and buffers:
                buffers = {k: b.clone() for k, b in buffers.items()}
            g = self._grad(self.layout.views(p), buffers, x[row], y[row])
            flatten_into(self.layout, g, out[row])
        return out

    def blocks(self, params: Tensor, x: Tensor, y: Tensor, workers: Tensor | None = None,
               update_stats: bool = True) -> tuple[Tensor, ...]:
        """The gradients as per-segment column blocks: views of one fresh ``(N, d)`` buffer."""
        return self.layout.columns(self(params, x, y, workers=workers, update_stats=update_stats))

    def state_dict(self) -> dict:
        return {"worker_buffers": [{k: b.clone() for k, b in d.items()} for d in self.worker_buffers]}

    def load_state_dict(self, state: dict) -> None:
        self.worker_buffers = [{k: b.clone() for k, b in d.items()} for d in state["worker_buffers"]]


# Row stride of fresh_and_stale's two parameter rows, in elements: a multiple of 64 bytes for every
# dtype up to 8 bytes wide.
ROW_ALIGN = 64


class VmapGradients:
    backend = "vmap"

    def __init__(self, model: nn.Module, layout: Layout):
        self.model = model
        self.layout = layout
        self.workspace = Workspace()  # fresh_and_stale's two parameter rows
        _import_what_torch_func_imports_on_first_call()
        self._grad = vmap(grad(_loss_fn(model)), in_dims=(0, None, 0, 0))

    def buffers_of(self, worker: int) -> dict[str, Tensor]:
        return {}  # models with buffers run on the loop backend

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _per_parameter(self, params: Tensor, x: Tensor, y: Tensor) -> list[Tensor]:
        if params.dim() == 1:
            # Shared parameters: a stride-0 expand (no copy) batched like per-worker ones is
            # faster under vmap than in_dims=None, whose weight gradients reduce differently.
            params = params.expand(x.shape[0], -1)
        grads = self._grad(self.layout.views(params), {}, x, y)
        n = x.shape[0]
        return [grads[s.name].reshape(n, s.numel) for s in self.layout.segments]

    def __call__(
        self,
        params: Tensor,
        x: Tensor,
        y: Tensor,
        workers: Tensor | None = None,
        update_stats: bool = True,
        out: Tensor | None = None,
    ) -> Tensor:
        parts = self._per_parameter(params, x, y)
        # Concatenate straight into the caller's buffer (no fresh (N, d) allocation per call).
        return torch.cat(parts, dim=1) if out is None else torch.cat(parts, dim=1, out=out)

    def blocks(self, params: Tensor, x: Tensor, y: Tensor, workers: Tensor | None = None,
               update_stats: bool = True) -> tuple[Tensor, ...]:
        """The gradients as one ``(N, d_s)`` block per parameter, as vmap returns them (no
        copy into a flat buffer)."""
        return tuple(self._per_parameter(params, x, y))

    def fresh_and_stale(self, theta: Tensor, anchor: Tensor, x: Tensor, y: Tensor
                        ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """``blocks(theta, x, y)`` and ``blocks(anchor, x, y)`` (``anchor``: ``(1, d)``, one
        worker) from one vmap call over the two parameter rows.

        What it buys: vmap's fixed cost per call (wrapping, functional_call, pytrees) is paid
        once instead of twice, less the copy of two rows. A 4-rank SASG round of the default FC
        setting on 2 cores went from 16.5 to 15.1 ms (``benchmarks/rank_round.py --compare
        gradients --turns 10``).

        The same bits as two calls: vmap batches the rows without mixing them, but a kernel's
        rounding can depend on where its data starts in memory (a vectorized loop peels a
        different number of leading elements), so each row is copied to a 64-byte boundary, as a
        tensor of its own starts. Tested bit for bit against two calls, float32 and float64, with one
        intra-op thread (as a rank runs)."""
        if anchor.dim() != 2 or anchor.shape[0] != 1 or x.shape[0] != 1:
            raise ValueError("fresh_and_stale takes one worker: anchor (1, d) and a batch x of shape (1, B, ...)")
        d = anchor.shape[1]
        stride = -(-d // ROW_ALIGN) * ROW_ALIGN  # d rounded up: every row starts 64-byte aligned
        rows = self.workspace.buffer("pair-rows", (2, stride), anchor)[:, :d]  # starts its allocation
        rows[0].copy_(theta.reshape(-1))
        rows[1].copy_(anchor[0])
        both = self._per_parameter(rows, x.expand(2, *x.shape[1:]), y.expand(2, *y.shape[1:]))
        return tuple(b[:1] for b in both), tuple(b[1:] for b in both)


def make_gradients(model: nn.Module, layout: Layout, backend: str = "auto"):
    """``auto`` picks ``vmap`` unless the model has BatchNorm (then ``loop``)."""
    from ..models import has_batchnorm

    key = backend.strip().lower()
    if key == "auto":
        key = "loop" if has_batchnorm(model) or any(True for _ in model.buffers()) else "vmap"
    if key == "vmap":
        if any(True for _ in model.buffers()):
            raise ValueError("the vmap backend cannot run models with buffers (BatchNorm); use --backend loop or auto")
        return VmapGradients(model, layout)
    if key == "loop":
        return LoopGradients(model, layout)
    raise ValueError(f"unknown backend {backend!r}; choose from auto, vmap, loop")
