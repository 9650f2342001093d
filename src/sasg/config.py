"""Run configuration with validation that names the problem and the fix.

Defaults are the SASG paper's MNIST setting: M = 10 workers, batch 10 per worker, lr 0.05 on the
mean of the gradients (the paper's alpha = 0.005 on their sum: alpha = lr / M), density 1 %,
window D = 10, threshold scale c = 2, 20 epochs, evaluation every 10 iterations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .core.algorithms import ALGORITHMS


class ConfigError(ValueError):
    """A bad setting; the message says which one and how to fix it."""


@dataclass
class RunConfig:
    algorithms: tuple[str, ...] = ALGORITHMS
    dataset: str = "mnist5k"
    model: str = "fc"
    workers: int = 10
    batch_size: int = 10
    lr: float = 0.05
    density: float = 0.01
    window: int = 10
    threshold_scale: float = 2.0
    epochs: float = 20
    eval_every: int = 10
    seed: int = 0
    target_acc: float | None = None
    backend: str = "auto"
    device: str = "cpu"
    convention: str = "paper32"
    extra: dict = field(default_factory=dict)

    @property
    def paper_alpha(self) -> float:
        """The paper's step size on the *sum* of worker gradients: alpha = lr / M."""
        return self.lr / self.workers

    def validate(self) -> "RunConfig":
        from .accounting import CONVENTIONS
        from .data import DATASETS
        from .models import MODELS

        algos = tuple(a.strip().lower() for a in self.algorithms if a.strip())
        if not algos:
            raise ConfigError("no algorithm given; choose from " + ", ".join(ALGORITHMS))
        for a in algos:
            if a not in ALGORITHMS:
                raise ConfigError(f"unknown algorithm {a!r}; choose from {', '.join(ALGORITHMS)}")
        if len(set(algos)) != len(algos):
            raise ConfigError(f"algorithm listed twice in {','.join(algos)}; list each once")
        self.algorithms = algos
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown data set {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(sorted(MODELS))}")
        _int_at_least("workers", self.workers, 1, "--workers")
        _int_at_least("batch size", self.batch_size, 1, "--batch-size")
        _int_at_least("window D", self.window, 1, "--window")
        _int_at_least("eval interval", self.eval_every, 1, "--eval-every")
        _int_at_least("seed", self.seed, 0, "--seed")
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}; e.g. --lr 0.05")
        if not _finite(self.density) or not 0 < self.density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {self.density}; e.g. --density 0.01 for 1 %")
        if not _finite(self.threshold_scale) or self.threshold_scale <= 0:
            raise ConfigError(
                f"threshold scale c must be a finite number > 0, got {self.threshold_scale}; e.g. --threshold-scale 2"
            )
        if not _finite(self.epochs) or self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}; e.g. --epochs 20")
        if self.target_acc is not None and (not _finite(self.target_acc) or not 0 <= self.target_acc <= 100):
            raise ConfigError(f"target accuracy is in percent, 0..100; got {self.target_acc}")
        if self.backend not in ("auto", "vmap", "loop"):
            raise ConfigError(f"unknown backend {self.backend!r}; choose from auto, vmap, loop")
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"unknown bit convention {self.convention!r}; choose from {', '.join(CONVENTIONS)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"unknown device {self.device!r}; use cpu or cuda")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda asked for, but no CUDA device is available; use --device cpu")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["algorithms"] = list(self.algorithms)
        d["paper_alpha"] = self.paper_alpha
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_at_least(what: str, value, low: int, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}; e.g. {flag} {max(low, 1)}")
    if value < low:
        raise ConfigError(f"{what} must be >= {low}, got {value}; e.g. {flag} {max(low, 1)}")
