"""The SASG paper's three experiments as presets.

All use M = 10 workers, batch 10 per worker, plain SGD, density 1 % per layer and D = 10. The
paper writes the step alpha on the *sum* of gradients; here lr = alpha * M (alpha = 0.005 -> 0.05,
alpha = 0.01 -> 0.1). Seeds of the paper: 1, 19, 31, 42, 80 (pass ``--seeds`` to run them).

The threshold scale c is the paper's per experiment: 2 on MNIST, 1 on CIFAR-10, and on CIFAR-100
0.8 for SASG and 0.2 for LASG (``per_algorithm``; other algorithms keep 1).
"""

from __future__ import annotations

PAPER_SEEDS = (1, 19, 31, 42, 80)

# codec: the paper's count for every algorithm a preset runs, whatever its natural codec.
_COMMON = dict(workers=10, batch_size=10, density=0.01, window=10, partition="iid", codec="paper32")

PRESETS: dict[str, dict] = {
    "paper-mnist": dict(
        _COMMON, dataset="mnist", model="fc", lr=0.05, threshold_scale=2.0, epochs=20, eval_every=60,
        lr_decay_epochs=(), augment="none", target_acc=98.0, target_metric="top1",
    ),
    "paper-cifar10": dict(
        _COMMON, dataset="cifar10", model="resnet18", lr=0.1, threshold_scale=1.0, epochs=30, eval_every=500,
        lr_decay_epochs=(20,), lr_decay_factor=0.1, augment="crop-flip", target_acc=92.0,
        target_metric="top1",
    ),
    "paper-cifar100": dict(
        _COMMON, dataset="cifar100", model="resnet18", lr=0.1, threshold_scale=1.0, epochs=50, eval_every=500,
        lr_decay_epochs=(30,), lr_decay_factor=0.1, augment="crop-flip-rotate", target_acc=92.0,
        target_metric="top5", per_algorithm={"sasg": {"threshold_scale": 0.8}, "lasg": {"threshold_scale": 0.2}},
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    if "per_algorithm" in values:  # a copy the caller may change
        values["per_algorithm"] = {k: dict(v) for k, v in values["per_algorithm"].items()}
    return values
