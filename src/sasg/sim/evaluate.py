"""Evaluation of the server's parameters: test accuracy and training loss, in large batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..core.layout import Layout
from ..data.dataset import ArrayDataset


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    layout: Layout,
    theta: Tensor,
    data: ArrayDataset,
    batch_size: int = 2000,
    buffers: dict[str, Tensor] | None = None,
) -> dict:
    """Mean cross-entropy loss, top-1 and top-5 accuracy (in percent) of ``theta`` on ``data``.

    ``buffers`` are the running statistics to evaluate with (BatchNorm); default: the model's."""
    was_training = model.training
    model.eval()
    params = layout.views(theta)
    buffers = dict(model.named_buffers()) if not buffers else buffers
    total_loss, correct, correct5 = 0.0, 0, 0
    try:
        for start in range(0, len(data), batch_size):
            x = data.x[start : start + batch_size]
            y = data.y[start : start + batch_size]
            logits = functional_call(model, (params, buffers), (x,))
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct5 += int((top == y[:, None]).any(dim=1).sum())
    finally:
        model.train(was_training)
    n = len(data)
    return {"loss": total_loss / n, "acc": 100.0 * correct / n, "acc5": 100.0 * correct5 / n}
